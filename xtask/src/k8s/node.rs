//! The node: containerd (cgroupfs driver), the CNI bridge, and the kubelet.

use std::{fs, path::PathBuf, process::Child, time::Duration};

use anyhow::Context as _;

use super::{
    control_plane::strings,
    images,
    kubectl::Kubectl,
    layout::{
        self, cache_bin, containerd_socket, CGROUP_ROOT, DNS_IP, FIRST_POD_IP, NODE_IP, NODE_NAME,
        NODE_NETNS, POD_SUBNET,
    },
    procs,
};

pub struct Node {
    pub children: Vec<(&'static str, Child)>,
    pub ready_after: Duration,
}

/// The mount points of the cgroup v1 hierarchies (`cgroup` filesystems),
/// and of the v2 one if mounted.
pub fn cgroup_mounts() -> (Vec<PathBuf>, Option<PathBuf>) {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v1 = Vec::new();
    let mut v2 = None;
    for line in text.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = before.split(' ').nth(4) else {
            continue;
        };
        match after.split(' ').next() {
            Some("cgroup") => v1.push(PathBuf::from(point)),
            Some("cgroup2") if v2.is_none() => v2 = Some(PathBuf::from(point)),
            _ => {}
        }
    }
    (v1, v2)
}

/// Creates the kubelet's `--cgroup-root` in every hierarchy. On a hybrid
/// host the kubelet (cgroupfs driver) creates its cgroups only where they
/// are missing and expects the root itself to exist in each v1 hierarchy;
/// a new cpuset cgroup starts with no CPUs or memory nodes, so the
/// parent's are copied or no task could join it.
fn create_cgroup_root() -> anyhow::Result<()> {
    let (v1, v2) = cgroup_mounts();
    for hierarchy in v1.iter().chain(v2.as_ref()) {
        let dir = hierarchy.join(CGROUP_ROOT);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let parent = hierarchy.join(file);
            if parent.exists() && v2.as_ref().is_none_or(|v2| v2 != hierarchy) {
                let value = fs::read_to_string(&parent)
                    .with_context(|| format!("reading {}", parent.display()))?;
                fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("writing {}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

fn write_containerd_config() -> anyhow::Result<PathBuf> {
    let config = layout::state("containerd.toml");
    let cni_conf_dir = layout::state("cni/net.d");
    // restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so runc
    // cannot lower a score below its own; without it runc fails with
    // "can't get final child's PID from pipe". netns_mounts_under_state_dir
    // keeps the pods' netns mounts inside RUN_DIR, for the teardown.
    let text = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
"#,
        root = layout::state("containerd").display(),
        state = layout::run("containerd").display(),
        socket = containerd_socket().display(),
        opt = layout::state("containerd-opt").display(),
        cni_conf_dir = cni_conf_dir.display(),
        pause = images::PAUSE,
    );
    fs::write(&config, text).context("writing containerd's config")?;

    // host-local hands out addresses in order from rangeStart, from a data
    // dir that is fresh every run: kube-dns, the first pod with a pod
    // network, gets FIRST_POD_IP.
    fs::create_dir_all(&cni_conf_dir).context("creating the CNI conf dir")?;
    let conflist = format!(
        r#"{{
  "cniVersion": "0.4.0",
  "name": "egk8s",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{POD_SUBNET}", "rangeStart": "{FIRST_POD_IP}", "gateway": "{NODE_IP}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}],
        "dataDir": "{ipam}"
      }}
    }}
  ]
}}
"#,
        ipam = layout::state("cni/ipam").display()
    );
    fs::write(cni_conf_dir.join("10-egk8s.conflist"), conflist)
        .context("writing the CNI config")?;
    Ok(config)
}

/// Starts containerd, returning once its socket answers.
pub fn start_containerd() -> anyhow::Result<(&'static str, Child)> {
    create_cgroup_root()?;
    let config = write_containerd_config()?;
    let mut child = procs::spawn(
        NODE_NETNS,
        "containerd",
        std::path::Path::new("/usr/bin/containerd"),
        &strings(&["--config", &config.display().to_string()]),
    )?;
    procs::wait_until(
        "containerd's socket",
        Duration::from_secs(30),
        Some(("containerd", &mut child)),
        || {
            std::process::Command::new("ctr")
                .arg("--address")
                .arg(containerd_socket())
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        },
    )?;
    Ok(("containerd", child))
}

/// Starts the kubelet and waits until the node is Ready.
pub fn start_kubelet(kubectl: &Kubectl) -> anyhow::Result<Node> {
    let resolv = layout::state("resolv.conf");
    fs::write(&resolv, format!("nameserver {DNS_IP}\n")).context("writing resolv.conf")?;
    let mut child = procs::spawn(
        NODE_NETNS,
        "kubelet",
        &cache_bin("kubelet"),
        &strings(&[
            &format!("--kubeconfig={}", layout::kubeconfig().display()),
            "--container-runtime=remote",
            &format!(
                "--container-runtime-endpoint=unix://{}",
                containerd_socket().display()
            ),
            "--runtime-request-timeout=2m",
            "--cgroup-driver=cgroupfs",
            &format!("--cgroup-root=/{CGROUP_ROOT}"),
            &format!("--root-dir={}", layout::state("kubelet").display()),
            &format!(
                "--volume-plugin-dir={}",
                layout::state("kubelet-plugins").display()
            ),
            &format!("--hostname-override={NODE_NAME}"),
            &format!("--node-ip={NODE_IP}"),
            &format!("--cluster-dns={DNS_IP}"),
            "--cluster-domain=cluster.local",
            &format!("--resolv-conf={}", resolv.display()),
            &format!("--pod-infra-container-image={}", images::PAUSE),
            "--fail-swap-on=false",
            "--anonymous-auth=true",
            "--authorization-mode=AlwaysAllow",
            "--read-only-port=0",
            "--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%",
            "--image-gc-high-threshold=100",
            "--image-gc-low-threshold=99",
            "--serialize-image-pulls=false",
            "--v=1",
        ]),
    )?;
    let ready_after = procs::wait_until(
        "the node to be Ready",
        Duration::from_secs(120),
        Some(("kubelet", &mut child)),
        || {
            kubectl
                .output(&[
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
                ])
                .is_ok_and(|s| s.trim() == "True")
        },
    )?;
    Ok(Node {
        children: vec![("kubelet", child)],
        ready_after,
    })
}
