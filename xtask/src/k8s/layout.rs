//! Where the local cluster lives: names, directories and addresses.
//!
//! Everything is fixed rather than per-run unique, so that a run killed
//! half-way is swept by the next run's teardown, and so that the teardown
//! can be run on its own (`cargo xtask k8s-test --teardown`).

use std::path::{Path, PathBuf};

/// The Kubernetes release Debian bookworm's `kubernetes` source package
/// builds (1.20.5+really1.20.2).
pub const K8S_VERSION: &str = "v1.20.2";

/// Built binaries, keyed by version, kept between runs and outside the
/// repository (a cold build takes minutes); `EGRESS_K8S_CACHE` overrides it.
pub const CACHE_DIR: &str = "/var/cache/egress-enforcer/k8s";

pub fn cache_dir() -> PathBuf {
    std::env::var_os("EGRESS_K8S_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CACHE_DIR))
}

/// The cluster's persistent state: etcd, certificates, the kubelet's root
/// dir, containerd's root, CNI state. Removed by the teardown.
pub const STATE_DIR: &str = "/var/lib/egress-k8s-test";
/// Sockets, containerd's state and the pods' netns mounts. Removed by the
/// teardown.
pub const RUN_DIR: &str = "/run/egress-k8s-test";
/// Logs of every process, kept after the teardown for a post-mortem; each
/// run starts with an empty one.
pub const LOG_DIR: &str = "/tmp/egress-k8s-test";

/// The simulated internet, and the router of the nodes' LAN: the nodes
/// reach it (and each other) through its bridge `lan0`.
pub const INTERNET_NETNS: &str = "egk8s-internet";

/// One node: a network namespace named after it, with its own pod subnet
/// on its CNI bridge, its own containerd, kubelet and kube-proxy.
pub struct NodeSpec {
    /// The node's name in the API, and its network namespace's.
    pub name: &'static str,
    /// Its address on the LAN (`eth0`): the kubelet's `--node-ip`.
    /// Outside the clusterCIDRs, as on a real cluster.
    pub ip: &'static str,
    /// The pods' bridge subnet (inside the seed's clusterCIDRs
    /// 10.244.0.0/16), and the node's address on it.
    pub pod_subnet: &'static str,
    pub pod_gateway: &'static str,
    /// host-local IPAM hands out addresses from here, in order, from a
    /// fresh data dir.
    pub first_pod_ip: &'static str,
    /// `eth0`'s peer in the internet namespace, on `lan0`.
    pub lan_port: &'static str,
}

/// Node A: the control plane (etcd, kube-apiserver, controller-manager,
/// scheduler), kube-dns and the egress gateway, the seed's dedicated
/// egress node.
pub const NODE_A: NodeSpec = NodeSpec {
    name: "egk8s-a",
    ip: "172.18.0.2",
    pod_subnet: "10.244.0.0/24",
    pod_gateway: "10.244.0.1",
    first_pod_ip: "10.244.0.10",
    lan_port: "lan-a",
};
/// Node B: the applications (test-egress, sleep).
pub const NODE_B: NodeSpec = NodeSpec {
    name: "egk8s-b",
    ip: "172.18.0.3",
    pod_subnet: "10.244.1.0/24",
    pod_gateway: "10.244.1.1",
    first_pod_ip: "10.244.1.10",
    lan_port: "lan-b",
};
pub const NODES: [&NodeSpec; 2] = [&NODE_A, &NODE_B];

/// The nodes' LAN (a kind-like private subnet, only inside the test's
/// namespaces) and the router's address on it, in the internet namespace.
pub const LAN_ROUTER: &str = "172.18.0.1";
pub const LAN_PREFIX: u8 = 24;
/// Every node's pod subnet is inside it (kube-proxy's `--cluster-cidr`).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// The kubelets' `--cgroup-root` is `/<CGROUP_ROOT>/<node>`: pods land
/// under `<hierarchy>/egk8s/<node>/kubepods`, one subtree per node.
pub const CGROUP_ROOT: &str = "egk8s";
/// The agents' pin directories are `<BPFFS_DIR>/<node>` on the host's
/// bpffs (both nodes share this host's bpffs).
pub const BPFFS_DIR: &str = "/sys/fs/bpf/egk8s";

/// The `kubernetes` Service's ClusterIP (first of the service range):
/// kube-proxy sends it to the API server on node A.
pub const API_SERVICE_IP: &str = "10.96.0.1";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The kube-dns Service's ClusterIP: the kubelets' `--cluster-dns`.
pub const DNS_SERVICE_IP: &str = "10.96.0.10";

/// The seed's hosts, in the internet namespace (documentation addresses;
/// 192.0.2.0/24 is never used: it is the machine's real uplink).
pub const INTERNET_HOSTS: &[(&str, &str)] = &[
    ("edition.cnn.com", "203.0.113.10"),
    ("httpbin.org", "203.0.113.11"),
];

/// The agent's Prometheus port (hostNetwork, so on each node's addresses).
pub const METRICS_PORT: u16 = 9464;

/// `cgroup_root` of `node`, relative to a hierarchy's mount point.
pub fn node_cgroup(node: &NodeSpec) -> String {
    format!("{CGROUP_ROOT}/{}", node.name)
}

/// Per-node state (containerd's root, the kubelet's root dir, CNI).
pub fn node_state(node: &NodeSpec, rel: &str) -> PathBuf {
    state(&format!("{}/{rel}", node.name))
}

/// Per-node runtime dir (containerd's state and sockets).
pub fn node_run(node: &NodeSpec, rel: &str) -> PathBuf {
    run(&format!("{}/{rel}", node.name))
}

pub fn state(rel: &str) -> PathBuf {
    Path::new(STATE_DIR).join(rel)
}

pub fn run(rel: &str) -> PathBuf {
    Path::new(RUN_DIR).join(rel)
}

pub fn log(name: &str) -> PathBuf {
    Path::new(LOG_DIR).join(format!("{name}.log"))
}

/// The cached binaries of [`K8S_VERSION`].
pub fn cache_bin(name: &str) -> PathBuf {
    cache_dir().join(K8S_VERSION).join("bin").join(name)
}

pub fn kubeconfig() -> PathBuf {
    state("admin.kubeconfig")
}

pub fn containerd_socket(node: &NodeSpec) -> PathBuf {
    node_run(node, "containerd/containerd.sock")
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}
