//! A node: its containerd (cgroupfs driver), the CNI bridge config, its
//! kubelet and its kube-proxy, all in the node's network namespace.
//!
//! Each node has its own containerd (own root, state and socket): the
//! kubelet kills every pod its runtime knows that it did not create
//! itself (`HandlePodCleanups`), so two kubelets sharing one containerd
//! would kill each other's pods.

use std::{fs, path::PathBuf, process::Child, time::Duration};

use anyhow::Context as _;

use super::{
    control_plane::strings,
    images,
    kubectl::Kubectl,
    layout::{
        self, cache_bin, containerd_socket, node_cgroup, NodeSpec, CLUSTER_CIDR, DNS_SERVICE_IP,
    },
    procs,
};

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

/// Creates the kubelet's `--cgroup-root` (and its parents) in every
/// hierarchy. On a hybrid
/// host the kubelet (cgroupfs driver) creates its cgroups only where they
/// are missing and expects the root itself to exist in each v1 hierarchy;
/// a new cpuset cgroup starts with no CPUs or memory nodes, so the
/// parent's are copied or no task could join it.
fn create_cgroup_root(node: &NodeSpec) -> anyhow::Result<()> {
    let (v1, v2) = cgroup_mounts();
    let root = node_cgroup(node);
    for hierarchy in v1.iter().chain(v2.as_ref()) {
        let mut parent = hierarchy.clone();
        for component in root.split('/') {
            let dir = parent.join(component);
            if !dir.exists() {
                fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let from = parent.join(file);
                if from.exists() && v2.as_ref().is_none_or(|v2| v2 != hierarchy) {
                    let value = fs::read_to_string(&from)
                        .with_context(|| format!("reading {}", from.display()))?;
                    fs::write(dir.join(file), value.trim())
                        .with_context(|| format!("writing {}", dir.join(file).display()))?;
                }
            }
            parent = dir;
        }
    }
    Ok(())
}

fn write_containerd_config(node: &NodeSpec) -> anyhow::Result<PathBuf> {
    let dir = layout::node_state(node, "");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = layout::node_state(node, "containerd.toml");
    let cni_conf_dir = layout::node_state(node, "cni/net.d");
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
        root = layout::node_state(node, "containerd").display(),
        state = layout::node_run(node, "containerd").display(),
        socket = containerd_socket(node).display(),
        opt = layout::node_state(node, "containerd-opt").display(),
        cni_conf_dir = cni_conf_dir.display(),
        pause = images::PAUSE,
    );
    fs::write(&config, text).context("writing containerd's config")?;

    // host-local hands out addresses in order from rangeStart, from a data
    // dir that is fresh every run.
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
        "ranges": [[{{"subnet": "{subnet}", "rangeStart": "{first}", "gateway": "{gateway}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}],
        "dataDir": "{ipam}"
      }}
    }}
  ]
}}
"#,
        ipam = layout::node_state(node, "cni/ipam").display(),
        subnet = node.pod_subnet,
        first = node.first_pod_ip,
        gateway = node.pod_gateway,
    );
    fs::write(cni_conf_dir.join("10-egk8s.conflist"), conflist)
        .context("writing the CNI config")?;
    Ok(config)
}

/// Starts the node's containerd, returning once its socket answers.
pub fn start_containerd(node: &NodeSpec) -> anyhow::Result<(&'static str, Child)> {
    create_cgroup_root(node)?;
    let config = write_containerd_config(node)?;
    let log = format!("containerd-{}", node.name);
    let mut child = procs::spawn(
        node.name,
        &log,
        std::path::Path::new("/usr/bin/containerd"),
        &strings(&["--config", &config.display().to_string()]),
    )?;
    procs::wait_until(
        "containerd's socket",
        Duration::from_secs(30),
        Some((&log, &mut child)),
        || {
            std::process::Command::new("ctr")
                .arg("--address")
                .arg(containerd_socket(node))
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        },
    )?;
    Ok(("containerd", child))
}

/// Starts the node's kubelet (not waiting for it: see [`wait_ready`]).
pub fn start_kubelet(node: &NodeSpec) -> anyhow::Result<(&'static str, Child)> {
    // Pods with dnsPolicy Default (and the DNS pod's upstream) get this;
    // ClusterFirst pods get --cluster-dns, the kube-dns Service.
    let resolv = layout::node_state(node, "resolv.conf");
    fs::write(&resolv, format!("nameserver {DNS_SERVICE_IP}\n")).context("writing resolv.conf")?;
    let child = procs::spawn(
        node.name,
        &format!("kubelet-{}", node.name),
        &cache_bin("kubelet"),
        &strings(&[
            &format!("--kubeconfig={}", layout::kubeconfig().display()),
            "--container-runtime=remote",
            &format!(
                "--container-runtime-endpoint=unix://{}",
                containerd_socket(node).display()
            ),
            "--runtime-request-timeout=2m",
            "--cgroup-driver=cgroupfs",
            &format!("--cgroup-root=/{}", node_cgroup(node)),
            &format!(
                "--root-dir={}",
                layout::node_state(node, "kubelet").display()
            ),
            &format!(
                "--volume-plugin-dir={}",
                layout::node_state(node, "kubelet-plugins").display()
            ),
            &format!("--hostname-override={}", node.name),
            &format!("--node-ip={}", node.ip),
            &format!("--cluster-dns={DNS_SERVICE_IP}"),
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
            // The default (5/s, bursts of 10) is shared by status updates,
            // events and the node lease; on a loaded 2-core machine a pod's
            // deletion then waited in that queue for over a minute.
            "--kube-api-qps=50",
            "--kube-api-burst=100",
            "--v=1",
        ]),
    )?;
    Ok(("kubelet", child))
}

/// Waits until `node` is Ready; `kubelet` is checked on each round, so
/// one that died fails at once with its log.
pub fn wait_ready(
    kubectl: &Kubectl,
    node: &NodeSpec,
    kubelet: &mut Child,
) -> anyhow::Result<Duration> {
    let log = format!("kubelet-{}", node.name);
    procs::wait_until(
        &format!("node {} to be Ready", node.name),
        Duration::from_secs(120),
        Some((&log, kubelet)),
        || {
            kubectl
                .output(&[
                    "get",
                    "node",
                    node.name,
                    "-o",
                    r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
                ])
                .is_ok_and(|s| s.trim() == "True")
        },
    )
}

/// Records the node's pod subnet in its Node object (`spec.podCIDR`, set
/// once, as the controller-manager's IPAM would), so that the API says
/// where each node's pods live.
pub fn set_pod_cidr(kubectl: &Kubectl, node: &NodeSpec) -> anyhow::Result<()> {
    let patch = format!(
        r#"{{"spec":{{"podCIDR":"{0}","podCIDRs":["{0}"]}}}}"#,
        node.pod_subnet
    );
    kubectl
        .output(&["patch", "node", node.name, "--type=merge", "-p", &patch])
        .map(|_| ())
}

/// Starts kube-proxy in iptables mode in the node's namespace: it
/// programs the node's own nat table for every Service (ClusterIP,
/// kube-dns, selector-less ones); the rules go with the namespace.
pub fn start_kube_proxy(node: &NodeSpec) -> anyhow::Result<(&'static str, Child)> {
    let child = procs::spawn(
        node.name,
        &format!("kube-proxy-{}", node.name),
        &cache_bin("kube-proxy"),
        &strings(&[
            &format!("--kubeconfig={}", layout::kubeconfig().display()),
            &format!("--hostname-override={}", node.name),
            "--proxy-mode=iptables",
            &format!("--cluster-cidr={CLUSTER_CIDR}"),
            &format!("--bind-address={}", node.ip),
            "--metrics-bind-address=127.0.0.1:10249",
            "--healthz-bind-address=127.0.0.1:10256",
            // 0 leaves nf_conntrack_max and the TCP timeouts alone: they
            // are the host's (shared by every namespace), not the node's.
            "--conntrack-max-per-core=0",
            "--conntrack-min=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--v=1",
        ]),
    )?;
    Ok(("kube-proxy", child))
}
