//! Real node layouts: the kubelet's cgroup trees under the cgroupfs and
//! systemd drivers and on kind's nodes, built under a test root in the real
//! cgroup2 hierarchy. For each: the pods root is found (and guarded), a
//! pod's container is mapped from its UID and container id, and the agent,
//! run as a DaemonSet container does (in its pod's cgroup, in a private
//! cgroup namespace where `/proc/self/cgroup` says only `/`, with its pod
//! UID from the downward API), finds and exempts its own pod. Every check
//! is a real connection's verdict.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use egress_agent::kubernetes::cgroups;
use integration_tests::{
    agent::{Agent, InPod},
    cgroup::TestCgroup,
    names,
    netns::TestNet,
    pins::PinDir,
    probe::{Client, Listener, Outcome, Proto},
    require_root,
};

const PORT: u16 = 8080;
const KNOWN_UID: &str = "0b6a3c1e-8a52-4f1e-9c1a-2f4d5e6a7b8c";
const AGENT_UID: &str = "a9e1f6c2-7d3b-4c5a-8e9f-0a1b2c3d4e5f";
const NEW_UID: &str = "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a";
const CID: &str = "4f2c0a9d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f";

/// One kubelet layout: where the pods root is, and how a pod's and a
/// container's directories are named.
struct Layout {
    name: &'static str,
    root: &'static str,
    pod: fn(&str) -> String,
    container: &'static str,
}

fn under(uid: &str) -> String {
    uid.replace('-', "_")
}

const LAYOUTS: &[Layout] = &[
    Layout {
        name: "cgroupfs (containerd)",
        root: "k8stest/kubepods",
        pod: |uid| format!("k8stest/kubepods/burstable/pod{uid}"),
        container: "{id}",
    },
    Layout {
        name: "cgroupfs (CRI-O)",
        root: "kubepods",
        pod: |uid| format!("kubepods/besteffort/pod{uid}"),
        container: "crio-{id}",
    },
    Layout {
        name: "systemd (containerd)",
        root: "kubepods.slice",
        pod: |uid| {
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                under(uid)
            )
        },
        container: "cri-containerd-{id}.scope",
    },
    Layout {
        name: "systemd (CRI-O)",
        root: "kubepods.slice",
        pod: |uid| format!("kubepods.slice/kubepods-pod{}.slice", under(uid)),
        container: "crio-{id}.scope",
    },
    Layout {
        name: "kind",
        root: "kubelet.slice/kubelet-kubepods.slice",
        pod: |uid| {
            format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
                 kubelet-kubepods-besteffort-pod{}.slice",
                under(uid)
            )
        },
        container: "cri-containerd-{id}.scope",
    },
];

fn internet() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), PORT)
}

fn cluster() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(TestNet::SERVER_V6), PORT)
}

/// A gateway (so that the internet is outside the cluster) and the known
/// pod, isolated to nothing but the cluster address.
fn policy(known_container: &str) -> String {
    format!(
        r#"apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{podSelector: {{matchLabels: {{istio: egressgateway}}}}}}
  clusterCIDRs: ["{cluster}/128"]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: known, namespace: shop, labels: {{app: known}}}}
spec: {{cgroup: {known_container}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: none, namespace: shop}}
spec: {{podSelector: {{}}, policyTypes: [Egress]}}
"#,
        cluster = TestNet::SERVER_V6
    )
}

fn check_layout(layout: &Layout) -> anyhow::Result<()> {
    let net = TestNet::new()?;
    let top = TestCgroup::new()?;
    let rel = top.relative();
    let container = |uid: &str| {
        format!(
            "{}/{}",
            (layout.pod)(uid),
            layout.container.replace("{id}", CID)
        )
    };
    for uid in [KNOWN_UID, AGENT_UID] {
        top.child(&container(uid))?;
    }
    // Besides the container, the runtime's own cgroups sit in the tree.
    top.child("system.slice/containerd.service")?;
    let mount = egress_agent::sys::cgroup2_mount()?;

    // The pods root and the pods, found by walking the real tree.
    let index = cgroups::scan(&mount, &rel, cgroups::MAX_DEPTH);
    assert_eq!(
        index.roots,
        [format!("{rel}/{}", layout.root)],
        "{}",
        layout.name
    );
    let known_pod = index.pods.get(KNOWN_UID).cloned();
    assert_eq!(
        known_pod,
        Some(format!("{rel}/{}", (layout.pod)(KNOWN_UID))),
        "{}",
        layout.name
    );
    let known_container = cgroups::container_dir(&mount, &known_pod.unwrap_or_default(), CID);
    assert_eq!(
        known_container,
        Some(format!("{rel}/{}", container(KNOWN_UID))),
        "{}",
        layout.name
    );

    let dir = std::env::temp_dir().join(names::unique("egress-layout"));
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("policy.yaml"),
        policy(&known_container.unwrap_or_default()),
    )?;
    let _internet = Listener::start(&net.server, internet(), Proto::Tcp)?;
    let _cluster = Listener::start(&net.server, cluster(), Proto::Tcp)?;
    let pins = PinDir::new()?;
    let policies = dir.to_string_lossy().into_owned();
    let cgroup_root = top.path().to_string_lossy().into_owned();
    let guard = index.roots[0].clone();
    let agent = Agent::start_in_pod(
        &net.client,
        pins.path(),
        &[
            "--policies",
            &policies,
            "--cgroup-root",
            &cgroup_root,
            "--guard-cgroup",
            &guard,
            "--no-nft",
        ],
        InPod {
            cgroup: top.path().join(container(AGENT_UID)),
            pod_uid: AGENT_UID.to_owned(),
        },
    )?;
    let log = agent.log();
    let agent_pod = format!("{rel}/{}", (layout.pod)(AGENT_UID));
    assert!(
        log.contains("exempt") && log.contains(&agent_pod),
        "{}: the agent found its own pod {agent_pod} through its UID:\n{log}",
        layout.name
    );

    // The agent's pod is exempt: a sibling container of the agent reaches
    // what pending would refuse.
    let sibling = top.child(&format!("{}/sidecar", (layout.pod)(AGENT_UID)))?;
    let agents_pod = Client::in_cgroup(&net.client, &sibling);
    assert_eq!(
        agents_pod.connect_tcp(cluster())?,
        Outcome::Ok,
        "{}",
        layout.name
    );

    // The known pod has its own policy: isolated, nothing allowed.
    let known = Client::in_cgroup(&net.client, &top.path().join(container(KNOWN_UID)));
    assert_eq!(
        known.connect_tcp(cluster())?,
        Outcome::Eperm,
        "{}",
        layout.name
    );

    // A pod the agent does not know yet is pending from its first connect.
    let new: PathBuf = top.child(&container(NEW_UID))?;
    let new = Client::in_cgroup(&net.client, &new);
    assert_eq!(
        new.connect_tcp(cluster())?,
        Outcome::Eperm,
        "{}",
        layout.name
    );
    assert_eq!(
        new.connect_tcp(internet())?,
        Outcome::Eperm,
        "{}",
        layout.name
    );

    drop(agent);
    fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn every_kubelet_layout_is_guarded_mapped_and_exempts_the_agent() -> anyhow::Result<()> {
    require_root();
    for layout in LAYOUTS {
        println!("layout: {}", layout.name);
        check_layout(layout)?;
    }
    Ok(())
}
