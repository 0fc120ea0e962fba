//! A forwarding node between pods and an "internet", for the nftables
//! backstop, and running things (nft, sockets) inside a namespace.
//!
//! ```text
//!  gateway pod  eth0 ── gw0                       10.244.1.0/24  fd00:244:1::/64
//!  workload pod eth0 ── wl0   node (forwards)     10.244.2.0/24  fd00:244:2::/64
//!                       inet0 ── eth0 internet    203.0.113.0/24 2001:db8:113::/64
//! ```
//!
//! The pods route everything through the node; the internet routes the
//! cluster CIDRs back through it unless a test removes those routes to make
//! masquerading necessary.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    panic,
    process::{Command, Stdio},
    thread,
};

use anyhow::{bail, Context as _};

use crate::{names, Netns};

/// Runs `f` on a fresh thread that has joined `netns`'s network namespace.
///
/// Namespaces are per thread, and a child process starts in the namespace
/// of the thread that spawned it, so `f` may create sockets or run `nft`
/// there while the rest of the test process stays in the root namespace.
/// A panic in `f` is propagated.
pub fn in_netns<T: Send>(netns: &Netns, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{}", netns.name());
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    thread::scope(|scope| {
        let joined = scope.spawn(move || -> io::Result<T> {
            // SAFETY: plain syscall on a descriptor we own. It moves only
            // this thread, which ends with `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        });
        match joined.join() {
            Ok(result) => result.with_context(|| format!("setns {path}")),
            Err(panic) => panic::resume_unwind(panic),
        }
    })
}

/// Runs `nft <args>` in `netns` and returns its stdout.
pub fn nft(netns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    nft_with_input(netns, args, None)
}

/// Loads an nft script (`nft -f -`) in `netns`, as another tool would.
pub fn nft_script(netns: &Netns, script: &str) -> anyhow::Result<()> {
    nft_with_input(netns, &["-f", "-"], Some(script)).map(drop)
}

fn nft_with_input(netns: &Netns, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let output = in_netns(netns, || -> io::Result<_> {
        let mut child = Command::new("nft")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("nft's stdin was not piped"))?;
        if let Some(input) = input {
            stdin.write_all(input.as_bytes())?;
        }
        drop(stdin);
        child.wait_with_output()
    })?
    .context("running nft (is nftables installed?)")?;
    if !output.status.success() {
        bail!(
            "`nft {}` in {} failed: {}",
            args.join(" "),
            netns.name(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Writes a sysctl of `netns` (`/proc/sys/net/...` is per namespace, looked
/// up in the namespace of the thread that opens it).
pub fn sysctl(netns: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(netns, || fs::write(&path, value))?
        .with_context(|| format!("writing {path} in {}", netns.name()))
}

/// Four namespaces, wired as in the module doc. Every one is deleted on
/// drop, which also removes the veth pairs.
#[derive(Debug)]
pub struct ForwardingNet {
    pub node: Netns,
    pub gateway: Netns,
    pub workload: Netns,
    pub internet: Netns,
}

impl ForwardingNet {
    pub const CLUSTER_V4: &str = "10.244.0.0/16";
    pub const CLUSTER_V6: &str = "fd00:244::/32";
    pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);
    pub const WORKLOAD_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
    pub const WORKLOAD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 2);
    pub const INTERNET_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    pub const INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x10);
    /// The node's address on the internet side: what masquerading
    /// rewrites the pods' sources to.
    pub const NODE_INTERNET_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    pub const NODE_INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 1);
    /// The node's interface towards the internet.
    pub const NODE_INTERNET_IF: &str = "inet0";
    /// The node's ends of the pods' veths (their ports; routed, no bridge).
    pub const GATEWAY_IF: &str = "gw0";
    pub const WORKLOAD_IF: &str = "wl0";

    pub fn new() -> anyhow::Result<Self> {
        let base = names::unique(names::NETNS_PREFIX);
        // Built one by one so that whatever exists is dropped if a later
        // step fails.
        let node = Netns::new(format!("{base}-node"))?;
        let gateway = Netns::new(format!("{base}-gw"))?;
        let workload = Netns::new(format!("{base}-wl"))?;
        let internet = Netns::new(format!("{base}-inet"))?;
        let net = Self {
            node,
            gateway,
            workload,
            internet,
        };
        net.wire().context("wiring the forwarding topology")?;
        Ok(net)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let node = &self.node;
        for ns in [node, &self.gateway, &self.workload, &self.internet] {
            // Before any interface exists, so that every link-local address
            // is usable at once: `nodad` only covers the addresses we add,
            // and NDP through a router stalls while its link-local address
            // is still tentative.
            sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")?;
            sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")?;
        }
        node.ip(&["link", "set", "lo", "up"])?;
        sysctl(node, "net.ipv4.ip_forward", "1")?;
        sysctl(node, "net.ipv6.conf.all.forwarding", "1")?;

        let node_gw_v4 = Ipv4Addr::new(10, 244, 1, 1);
        let node_gw_v6 = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 1);
        let node_wl_v4 = Ipv4Addr::new(10, 244, 2, 1);
        let node_wl_v6 = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 1);
        for (peer, node_if, node_v4, node_v6, peer_v4, peer_v6) in [
            (
                &self.gateway,
                Self::GATEWAY_IF,
                node_gw_v4,
                node_gw_v6,
                Self::GATEWAY_V4,
                Self::GATEWAY_V6,
            ),
            (
                &self.workload,
                Self::WORKLOAD_IF,
                node_wl_v4,
                node_wl_v6,
                Self::WORKLOAD_V4,
                Self::WORKLOAD_V6,
            ),
            (
                &self.internet,
                Self::NODE_INTERNET_IF,
                Self::NODE_INTERNET_V4,
                Self::NODE_INTERNET_V6,
                Self::INTERNET_V4,
                Self::INTERNET_V6,
            ),
        ] {
            // Created in the node with the peer placed directly in the
            // other namespace: neither end ever exists in the root one.
            node.ip(&[
                "link",
                "add",
                node_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                peer.name(),
            ])?;
            add_addresses(node, node_if, node_v4, node_v6)?;
            add_addresses(peer, "eth0", peer_v4, peer_v6)?;
            peer.ip(&["link", "set", "lo", "up"])?;
            for (ns, dev) in [(node, node_if), (peer, "eth0")] {
                ns.ip(&["link", "set", dev, "up"])?;
            }
            if peer.name() != self.internet.name() {
                peer.ip(&["route", "add", "default", "via", &node_v4.to_string()])?;
                peer.ip(&["-6", "route", "add", "default", "via", &node_v6.to_string()])?;
            }
        }
        for (family, cluster, via) in [
            ("-4", Self::CLUSTER_V4, IpAddr::V4(Self::NODE_INTERNET_V4)),
            ("-6", Self::CLUSTER_V6, IpAddr::V6(Self::NODE_INTERNET_V6)),
        ] {
            self.internet
                .ip(&[family, "route", "add", cluster, "via", &via.to_string()])?;
        }
        Ok(())
    }

    /// Leaves the internet without a way back to pod addresses, as on a
    /// real one: only traffic the node masquerades gets answers.
    pub fn remove_internet_return_routes(&self) -> anyhow::Result<()> {
        self.internet
            .ip(&["-4", "route", "del", Self::CLUSTER_V4])?;
        self.internet.ip(&["-6", "route", "del", Self::CLUSTER_V6])
    }
}

fn add_addresses(ns: &Netns, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> anyhow::Result<()> {
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
    // `nodad`: otherwise the address stays tentative for about a second.
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        dev,
        "nodad",
    ])
}
