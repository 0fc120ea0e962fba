//! The nodes' and the internet's network namespaces.
//!
//! ```text
//!  pods ─veth─ cni0 10.244.0.1/24 ┐                           ┌ edition.cnn.com 203.0.113.10
//!                  egk8s-a  eth0 172.18.0.2 ──┐               ├ httpbin.org     203.0.113.11
//!                                             ├─ lan0 172.18.0.1 (egk8s-internet)
//!  pods ─veth─ cni0 10.244.1.1/24 ┐           │
//!                  egk8s-b  eth0 172.18.0.3 ──┘
//! ```
//!
//! The nodes share a LAN (a bridge in the internet namespace, whose
//! address is their default route), and each routes the other's pod
//! subnet to it directly, as a host-gw CNI (kindnet, flannel host-gw)
//! does. The internet routes each pod subnet to its node (no SNAT), so a
//! connection that leaves is seen with the pod's own address. Nothing is
//! connected to the host's own namespace: nothing here can reach the real
//! network.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use super::layout::{
    self, NodeSpec, INTERNET_HOSTS, INTERNET_NETNS, LAN_PREFIX, LAN_ROUTER, NODES,
};
use crate::run;

/// Creates the namespaces, the LAN, each node's bridge and the routes.
pub fn create() -> anyhow::Result<()> {
    for netns in NODES.iter().map(|n| n.name).chain([INTERNET_NETNS]) {
        ip(&["netns", "add", netns])?;
        in_ns(netns, &["link", "set", "lo", "up"])?;
    }
    let internet = |args: &[&str]| in_ns(INTERNET_NETNS, args);
    internet(&["link", "add", "lan0", "type", "bridge"])?;
    internet(&[
        "addr",
        "add",
        &format!("{LAN_ROUTER}/{LAN_PREFIX}"),
        "dev",
        "lan0",
    ])?;
    internet(&["link", "set", "lan0", "up"])?;
    for (_, addr) in INTERNET_HOSTS {
        internet(&["addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
    }
    sysctl(INTERNET_NETNS, "net.ipv4.ip_forward=1")?;
    for node in NODES {
        create_node(node)?;
        internet(&["route", "add", node.pod_subnet, "via", node.ip])?;
    }
    Ok(())
}

fn create_node(node: &NodeSpec) -> anyhow::Result<()> {
    let n = |args: &[&str]| in_ns(node.name, args);
    // The bridge the CNI `bridge` plugin joins pods to. Created here, with
    // the gateway address, so that routes to it exist before any pod.
    n(&["link", "add", "cni0", "type", "bridge"])?;
    // A fixed address: a bridge with a random one takes the lowest of its
    // ports', so a new pod's veth could change the MAC of the pods'
    // default gateway, and every pod that had it cached would send its
    // off-node traffic (replies included) to the old one for seconds.
    n(&[
        "link",
        "set",
        "cni0",
        "address",
        &gateway_mac(node.pod_gateway),
    ])?;
    n(&[
        "addr",
        "add",
        &format!("{}/24", node.pod_gateway),
        "dev",
        "cni0",
    ])?;
    n(&["link", "set", "cni0", "up"])?;
    n(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        node.lan_port,
        "netns",
        INTERNET_NETNS,
    ])?;
    n(&[
        "addr",
        "add",
        &format!("{}/{LAN_PREFIX}", node.ip),
        "dev",
        "eth0",
    ])?;
    n(&["link", "set", "eth0", "up"])?;
    in_ns(
        INTERNET_NETNS,
        &["link", "set", node.lan_port, "master", "lan0", "up"],
    )?;
    n(&["route", "add", "default", "via", LAN_ROUTER])?;
    for other in NODES.iter().filter(|o| o.name != node.name) {
        n(&["route", "add", other.pod_subnet, "via", other.ip])?;
    }
    sysctl(node.name, "net.ipv4.ip_forward=1")?;
    // kube-proxy's DNAT must see pod → ClusterIP → pod on the same
    // bridge, and the reply's un-DNAT too: bridged frames through
    // iptables, as br_netfilter does on every kube-proxy node. It is a
    // per-namespace setting.
    sysctl(node.name, "net.bridge.bridge-nf-call-iptables=1")?;
    Ok(())
}

/// A web root per internet host whose index names the host, for the
/// internet's busybox httpd listeners.
pub fn web_roots() -> anyhow::Result<Vec<(String, PathBuf)>> {
    INTERNET_HOSTS
        .iter()
        .map(|(host, addr)| {
            let dir = layout::state(&format!("www/{host}"));
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::write(dir.join("index.html"), format!("{host}\n"))
                .with_context(|| format!("writing {host}'s index"))?;
            Ok(((*addr).to_owned(), dir))
        })
        .collect()
}

/// The test's namespaces that exist.
pub fn existing() -> Vec<&'static str> {
    NODES
        .iter()
        .map(|n| n.name)
        .chain([INTERNET_NETNS])
        .filter(|n| layout::netns_path(n).exists())
        .collect()
}

/// Deletes the namespaces (and with them every veth, route, nft table and
/// iptables rule in them); absent ones are fine.
pub fn delete() {
    for netns in existing() {
        let _ = run::status(Command::new("ip").args(["netns", "del", netns]));
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run::check(Command::new("ip").args(args))
}

fn in_ns(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    ip(&full)
}

fn sysctl(netns: &str, setting: &str) -> anyhow::Result<()> {
    run::check(
        Command::new("nsenter")
            .arg(format!("--net={}", layout::netns_path(netns).display()))
            .args(["sysctl", "-q", "-w", setting]),
    )
}

/// A locally administered unicast MAC (`02:00:` + the four octets) for the
/// bridge that holds `gateway`, an IPv4 address.
fn gateway_mac(gateway: &str) -> String {
    let octets: Vec<u8> = gateway.split('.').filter_map(|o| o.parse().ok()).collect();
    let mut mac = String::from("02:00");
    for octet in octets.iter().chain(std::iter::repeat(&0)).take(4) {
        mac.push_str(&format!(":{octet:02x}"));
    }
    mac
}
