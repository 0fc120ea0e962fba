//! Services on a node with a kube-proxy: the seed cluster with Services,
//! Node objects and pods on another node, and an nft DNAT in the node
//! namespace standing in for kube-proxy's iptables and ip6tables rules.
//! The cgroup hooks see the Service address (the DNAT happens later, on
//! the node), so these prove that a Service is judged by its backends,
//! with real connections and a listener on the far side: through
//! ClusterIPs, NodePorts on the node's own addresses (beside a port the
//! node itself serves), external IPs and load balancer IPs.
//!
//! - [`ipv4`]: the seed cluster as it is, with kube-dns behind its
//!   ClusterIP (real DNS answers) and every kind of Service address.
//! - [`dual_stack`]: the seed made dual-stack, with IPv6 and dual-stack
//!   Services (`clusterIPs: [v4, v6]`, an EndpointSlice per family) and
//!   NodePorts on the node's IPv6 address.

mod dual_stack;
mod ipv4;

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context as _};
use egress_policy::model::ObjectId;
use integration_tests::{
    netns::Netns,
    nftns::nft_script,
    node::SimNode,
    require_root,
    scenario::{copy_seed, id, Running},
    target_bin, Client, Listener, Outcome, Proto,
};

const ARRIVAL: Duration = Duration::from_millis(700);

fn test_egress() -> ObjectId {
    id("test-egress/sleep")
}

fn kube_dns() -> ObjectId {
    id("kube-system/kube-dns")
}

fn apps_client() -> ObjectId {
    id("apps/client")
}

fn client<'a>(sim: &'a SimNode, who: &ObjectId) -> anyhow::Result<Client<'a>> {
    sim.client(who).with_context(|| format!("{who} is placed"))
}

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A node built from the seed, each file passed through `edit`, and
/// `services` (the Services, slices, Nodes and extra workloads).
fn sim_node(edit: impl Fn(&str) -> String, services: &str) -> anyhow::Result<SimNode> {
    let dir = std::env::temp_dir().join(integration_tests::names::unique("egress-svc"));
    copy_seed(&dir, edit)?;
    fs::write(dir.join("services.yaml"), services)?;
    let sim = SimNode::new(std::slice::from_ref(&dir))?;
    fs::remove_dir_all(&dir)?;
    Ok(sim)
}

/// One of kube-proxy's DNAT rules: `frontend` over `proto` to `backend`.
struct Dnat {
    frontend: SocketAddr,
    proto: Proto,
    backend: SocketAddr,
}

impl Dnat {
    fn new(frontend: SocketAddr, proto: Proto, backend: SocketAddr) -> Self {
        Self {
            frontend,
            proto,
            backend,
        }
    }
}

/// kube-proxy's iptables mode, reduced to its effect: DNAT of each
/// Service address and port, and of each NodePort on a node address, to
/// its (single) backend, in the node; one table per family, as kube-proxy
/// programs iptables and ip6tables apart.
fn kube_proxy(node: &Netns, rules: &[Dnat]) -> anyhow::Result<()> {
    let mut script = String::new();
    for (family, match_, v6) in [("ip", "ip", false), ("ip6", "ip6", true)] {
        script.push_str(&format!(
            "table {family} sim-kube-proxy {{\n  chain prerouting {{\n    \
             type nat hook prerouting priority dstnat; policy accept;\n"
        ));
        for r in rules.iter().filter(|r| r.frontend.is_ipv6() == v6) {
            let proto = match r.proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            };
            script.push_str(&format!(
                "    {match_} daddr {} {proto} dport {} dnat to {}\n",
                r.frontend.ip(),
                r.frontend.port(),
                r.backend
            ));
        }
        script.push_str("  }\n}\n");
    }
    nft_script(node, &script)
}

/// What `egress-agent explain` says of `from` → `to` (`IP:PORT/proto`,
/// IPv6 as `[ADDR]:PORT/proto`) on the running node's policies.
fn explain(node: &Running, from: &str, to: &str) -> anyhow::Result<String> {
    let out = Command::new(target_bin(
        "egress-agent",
        "CARGO_BIN_EXE_egress-agent",
        "cargo build -p egress-agent",
    ))
    .arg("explain")
    .arg(node.sim.policies_dir())
    .args(["--from", from, "--to", to])
    .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `c` connects to `to` over TCP, and `backend` sees the connection.
fn connects(
    c: &Client,
    to: SocketAddr,
    backend: &Listener,
    within: Duration,
) -> anyhow::Result<()> {
    ensure!(c.connect_tcp(to)? == Outcome::Ok, "{to}: connect");
    let seen = backend.next_event(within);
    ensure!(seen.is_some(), "{to}: nothing reached {}", backend.addr());
    Ok(())
}

/// `c` is refused `to` (EPERM) by `connect` over TCP, by an unconnected
/// UDP `sendto` and by a raw socket's datagram.
fn refused_every_way(c: &Client, to: SocketAddr) -> anyhow::Result<()> {
    ensure!(c.connect_tcp(to)? == Outcome::Eperm, "{to}: connect");
    ensure!(c.sendto(to)? == Outcome::Eperm, "{to}: sendto");
    ensure!(c.raw_udp(to)? == Outcome::Eperm, "{to}: raw");
    Ok(())
}

/// Fails unless `text` (explain's) says each of `lines`.
fn says(text: &str, lines: &[&str]) -> anyhow::Result<()> {
    for line in lines {
        ensure!(text.contains(line), "{line:?} is not in:\n{text}");
    }
    Ok(())
}

/// None of `backends` sees anything (within [`ARRIVAL`]).
fn nothing_reached(backends: &[&Listener]) -> anyhow::Result<()> {
    for b in backends {
        ensure!(b.next_event(ARRIVAL).is_none(), "{} saw it", b.addr());
    }
    Ok(())
}

/// The agent running on a node that `fixture` builds (`extra`: its
/// flags), once `baseline` has shown every path open without it.
fn started<L>(
    fixture: impl FnOnce() -> anyhow::Result<(SimNode, L)>,
    baseline: impl FnOnce(&SimNode, &L) -> anyhow::Result<()>,
    extra: &[&str],
) -> anyhow::Result<(Running, L)> {
    require_root();
    let (sim, listeners) = fixture()?;
    baseline(&sim, &listeners)?;
    Ok((Running::start(sim, extra)?, listeners))
}
