//! The node's and the internet's network namespaces.
//!
//! ```text
//!  pods ──veth── cni0 10.244.0.1/24 ┐                     ┌ edition.cnn.com 203.0.113.10
//!                lo 10.96.0.1      ├─ node ── uplink ── internet
//!                                  ┘ 198.51.100.1  .2    └ httpbin.org     203.0.113.11
//! ```
//!
//! Neither namespace has a default route, and nothing is connected to the
//! host's own namespace: nothing here can reach the real network.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use super::layout::{
    self, API_SERVICE_IP, INTERNET_HOSTS, INTERNET_NETNS, INTERNET_SUBNET, NODE_IP, NODE_NETNS,
    UPLINK_INTERNET, UPLINK_NODE,
};
use crate::run;

/// Creates both namespaces, the node's bridge and the uplink.
pub fn create() -> anyhow::Result<()> {
    for netns in [NODE_NETNS, INTERNET_NETNS] {
        ip(&["netns", "add", netns])?;
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
    }
    // The bridge the CNI `bridge` plugin joins pods to. Created here, with
    // the gateway address, so that the API server can bind to it before
    // any pod exists.
    let node = |args: &[&str]| {
        let mut full = vec!["-n", NODE_NETNS];
        full.extend_from_slice(args);
        ip(&full)
    };
    node(&["link", "add", "cni0", "type", "bridge"])?;
    node(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "cni0"])?;
    node(&["link", "set", "cni0", "up"])?;
    node(&["addr", "add", &format!("{API_SERVICE_IP}/32"), "dev", "lo"])?;
    node(&[
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "uplink",
        "netns",
        INTERNET_NETNS,
    ])?;
    node(&["addr", "add", &format!("{UPLINK_NODE}/30"), "dev", "uplink"])?;
    node(&["link", "set", "uplink", "up"])?;
    node(&["route", "add", INTERNET_SUBNET, "via", UPLINK_INTERNET])?;
    sysctl(NODE_NETNS, "net.ipv4.ip_forward=1")?;

    let internet = |args: &[&str]| {
        let mut full = vec!["-n", INTERNET_NETNS];
        full.extend_from_slice(args);
        ip(&full)
    };
    internet(&[
        "addr",
        "add",
        &format!("{UPLINK_INTERNET}/30"),
        "dev",
        "uplink",
    ])?;
    internet(&["link", "set", "uplink", "up"])?;
    for (_, addr) in INTERNET_HOSTS {
        internet(&["addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
    }
    internet(&["route", "add", "10.244.0.0/16", "via", UPLINK_NODE])?;
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

/// Deletes both namespaces (and with them every veth, route and nft table
/// in them); absent ones are fine.
pub fn delete() {
    for netns in [NODE_NETNS, INTERNET_NETNS] {
        if layout::netns_path(netns).exists() {
            let _ = run::status(Command::new("ip").args(["netns", "del", netns]));
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run::check(Command::new("ip").args(args))
}

fn sysctl(netns: &str, setting: &str) -> anyhow::Result<()> {
    run::check(
        Command::new("nsenter")
            .arg(format!("--net={}", layout::netns_path(netns).display()))
            .args(["sysctl", "-q", "-w", setting]),
    )
}
