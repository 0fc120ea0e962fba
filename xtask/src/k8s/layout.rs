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

/// The node: control plane, containerd, kubelet and the agent run here.
pub const NODE_NETNS: &str = "egk8s-node";
/// The simulated internet, reachable only through the node.
pub const INTERNET_NETNS: &str = "egk8s-internet";

/// The kubelet's `--cgroup-root`: pods land under `<hierarchy>/egk8s/kubepods`.
pub const CGROUP_ROOT: &str = "egk8s";
/// The agent's pin directory on the host's bpffs.
pub const BPFFS_DIR: &str = "/sys/fs/bpf/egk8s";

/// The node's address on the pods' bridge: the API server advertises it.
pub const NODE_IP: &str = "10.244.0.1";
/// The pods' bridge subnet (inside the seed's clusterCIDRs 10.244.0.0/16).
pub const POD_SUBNET: &str = "10.244.0.0/24";
/// host-local IPAM hands out addresses from here, in order, from a fresh
/// data dir: the first pod with a pod network (kube-dns) gets exactly this.
pub const FIRST_POD_IP: &str = "10.244.0.10";
/// kube-dns: the first pod created, at [`FIRST_POD_IP`]; the kubelet's
/// `--cluster-dns`.
pub const DNS_IP: &str = FIRST_POD_IP;
/// The `kubernetes` Service's ClusterIP (first of 10.96.0.0/12). With no
/// kube-proxy it is an address of the node itself, where the API server
/// listens on 443, so in-cluster clients work unchanged.
pub const API_SERVICE_IP: &str = "10.96.0.1";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// The node ↔ internet link, in a documentation range. 192.0.2.0/24 is
/// never used: it is the machine's real uplink.
pub const UPLINK_NODE: &str = "198.51.100.1";
pub const UPLINK_INTERNET: &str = "198.51.100.2";
/// The seed's hosts, in the internet namespace.
pub const INTERNET_HOSTS: &[(&str, &str)] = &[
    ("edition.cnn.com", "203.0.113.10"),
    ("httpbin.org", "203.0.113.11"),
];
pub const INTERNET_SUBNET: &str = "203.0.113.0/24";

/// The node's name in the API.
pub const NODE_NAME: &str = "egk8s-node";
/// The agent's Prometheus port (hostNetwork, so on the node's addresses).
pub const METRICS_PORT: u16 = 9464;

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

pub fn containerd_socket() -> PathBuf {
    run("containerd/containerd.sock")
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}
