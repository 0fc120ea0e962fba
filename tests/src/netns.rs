//! Network namespaces joined by a veth pair.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::names;

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(name: String) -> anyhow::Result<Self> {
        ip(&["netns", "add", &name])?;
        Ok(Self { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <self> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth end inside it, and
        // with it the peer.
        if let Err(err) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: cleaning up netns {}: {err:#}", self.name);
        }
    }
}

/// Two namespaces, `client` and `server`, joined by a veth pair, with
/// private addresses that exist only inside them.
///
/// The server has two IPv4 addresses so that a test can deny one and show
/// that the other, in the same /24, stays reachable.
#[derive(Debug)]
pub struct TestNet {
    pub client: Netns,
    pub server: Netns,
}

impl TestNet {
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
    pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
    pub const SERVER_V4_NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 3);
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
    pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);

    pub fn new() -> anyhow::Result<Self> {
        let base = names::unique(names::NETNS_PREFIX);
        // Built field by field so that whatever was created is dropped if a
        // later step fails.
        let client = Netns::new(format!("{base}-c"))?;
        let server = Netns::new(format!("{base}-s"))?;
        let net = Self { client, server };
        net.wire().context("wiring the test namespaces")?;
        Ok(net)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let (c, s) = (&self.client, &self.server);
        // Created inside the client namespace with its peer placed directly
        // in the server's: neither end ever exists in the root namespace.
        c.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            s.name(),
        ])?;
        for (ns, addrs) in [
            (
                c,
                vec![IpAddr::V4(Self::CLIENT_V4), IpAddr::V6(Self::CLIENT_V6)],
            ),
            (
                s,
                vec![
                    IpAddr::V4(Self::SERVER_V4),
                    IpAddr::V4(Self::SERVER_V4_NEIGHBOUR),
                    IpAddr::V6(Self::SERVER_V6),
                ],
            ),
        ] {
            for addr in addrs {
                match addr {
                    IpAddr::V4(a) => ns.ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"])?,
                    // `nodad`: otherwise the address stays tentative (not
                    // bindable) for about a second.
                    IpAddr::V6(a) => ns.ip(&[
                        "-6",
                        "addr",
                        "add",
                        &format!("{a}/64"),
                        "dev",
                        "eth0",
                        "nodad",
                    ])?,
                }
            }
            ns.ip(&["link", "set", "lo", "up"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
        }
        Ok(())
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
