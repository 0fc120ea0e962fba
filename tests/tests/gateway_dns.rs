//! Scenario: the gateway's allow-list follows the DNS answers the gateway
//! itself gets (`run --follow-gateway-dns`), for a name whose server hands
//! every asker a different address, as CDNs do.
//!
//! The seed node, with `cdn.rotating.test` added to the gateway's
//! `allowedHosts` (port 80), and a DNS server that answers each A question
//! for it with the next of 40 internet addresses (TTL 1 s). The agent and
//! the gateway both use that server. The gateway runs `curl`, as a proxy
//! resolving per request would.
//!
//! - Without the relay the agent's own answers hold one or two addresses
//!   at a time, and the gateway's curls are refused (EPERM): the drift the
//!   relay closes.
//! - With it, every one of the gateway's requests succeeds, across many
//!   addresses; an address the gateway was given is dropped once its TTL
//!   and the grace have passed.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Stdio,
    thread,
    time::Duration,
};

use anyhow::Context as _;
use egress_policy::model::ObjectId;
use integration_tests::{
    agent::{status_json, Agent, APPLY_WAIT},
    names,
    node::SimNode,
    rotating_dns::RotatingDns,
    scenario::{copy_seed, id},
};

const NAME: &str = "cdn.rotating.test";
const GRACE_SECS: u64 = 1;

/// 203.0.113.100-139: inside the sim internet's local /24, where nginx
/// answers on every address; none is a seed host's.
fn pool() -> Vec<Ipv4Addr> {
    (100..140).map(|d| Ipv4Addr::new(203, 0, 113, d)).collect()
}

fn gateway() -> ObjectId {
    id("istio-system/istio-egressgateway")
}

struct Scene {
    sim: SimNode,
    dns: RotatingDns,
}

impl Scene {
    fn new() -> anyhow::Result<Self> {
        let policies = std::env::temp_dir().join(names::unique("egress-policies"));
        copy_seed(&policies, |text| {
            text.replace(
                "  - host: edition.cnn.com\n    ports: [80, 443]",
                &format!("  - host: edition.cnn.com\n    ports: [80, 443]\n  - host: {NAME}\n    ports: [80]"),
            )
        })?;
        let sim = SimNode::new(std::slice::from_ref(&policies));
        // The node keeps its own copy.
        let _ = std::fs::remove_dir_all(&policies);
        let sim = sim?;
        assert!(
            sim.plan().workloads.iter().any(|w| w
                .gateway
                .as_ref()
                .and_then(|g| g.allowed_hosts.as_ref())
                .is_some_and(|h| h.iter().any(|h| h.host.to_string() == NAME))),
            "the seed's gateway did not get {NAME}"
        );
        // On the node's own cluster address: a DNS server the gateway may
        // reach directly (inside the cluster CIDRs), on port 53 as
        // resolv.conf needs.
        let node = sim.node_cluster_address().context("node address")?;
        let dns = RotatingDns::start(
            sim.node(),
            SocketAddr::new(node.into(), 53),
            NAME,
            pool(),
            1,
        )?;
        Ok(Self { sim, dns })
    }

    fn socket(&self) -> std::path::PathBuf {
        self.sim.scratch_dir().join("agent.sock")
    }

    /// `egress-agent status -o json`'s `gatewayDns`.
    fn relay_status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(status_json(&self.socket())?["gatewayDns"].clone())
    }

    fn agent(&self, extra: &[&str]) -> anyhow::Result<Agent> {
        let socket = self.socket().display().to_string();
        let policies = self.sim.policies_dir().display().to_string();
        let root = self.sim.cgroup_root().display().to_string();
        let dns = self.dns.address.to_string();
        let grace = GRACE_SECS.to_string();
        let mut args = vec![
            "--policies",
            &policies,
            "--cgroup-root",
            &root,
            "--dns-server",
            &dns,
            "--gateway-dns-grace",
            &grace,
            "--socket",
            &socket,
        ];
        args.extend_from_slice(extra);
        let mut agent = Agent::start(self.sim.node(), self.sim.pin_dir(), &args)?;
        agent.wait_for_log("policy applied", APPLY_WAIT)?;
        Ok(agent)
    }

    /// What `getent` finds for the name from `who`'s pod, asking the
    /// rotating server.
    fn lookup(&self, who: &ObjectId) -> anyhow::Result<Vec<IpAddr>> {
        let out = self
            .sim
            .pod_command_resolving_with(who, "getent", self.dns.address.ip())?
            .args(["ahostsv4", NAME])
            .stdin(Stdio::null())
            .output()?;
        let mut found: Vec<IpAddr> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        found.dedup();
        Ok(found)
    }

    /// `n` requests from the gateway's pod, each resolving the name afresh
    /// (curl has no DNS cache across runs); `(http code, address, curl
    /// exit)` per request.
    fn requests(&self, n: usize, extra: &str) -> anyhow::Result<Vec<(u16, String, i32)>> {
        let script = format!(
            "for i in $(seq {n}); do curl --silent --output /dev/null --connect-timeout 3 \
             --max-time 5 {extra} --write-out '%{{http_code}} %{{remote_ip}} %{{exitcode}}\\n' \
             http://{NAME}/; done"
        );
        let output = self
            .sim
            .pod_command_resolving_with(&gateway(), "sh", self.dns.address.ip())?
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<(u16, String, i32)> = stdout
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let code = f.next()?.parse().ok()?;
                let (ip, exit) = match (f.next(), f.next()) {
                    (Some(ip), Some(exit)) => (ip.to_owned(), exit.parse().ok()?),
                    (Some(exit), None) => (String::new(), exit.parse().ok()?),
                    _ => return None,
                };
                Some((code, ip, exit))
            })
            .collect();
        anyhow::ensure!(
            lines.len() == n,
            "{} of {n} requests reported:\n{stdout}\n{}",
            lines.len(),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(lines)
    }
}

#[test]
fn the_gateways_allow_list_follows_its_own_rotating_dns_answers() -> anyhow::Result<()> {
    let scene = Scene::new()?;

    // Without the relay: the agent's answers and the gateway's differ.
    let mut agent = scene.agent(&[])?;
    let before = scene.requests(20, "")?;
    let refused = before
        .iter()
        .filter(|(code, _, exit)| *code != 200 && *exit == 7)
        .count();
    assert!(
        refused > 0,
        "without the relay some requests must be refused (the drift): {before:?}"
    );
    agent.kill()?;

    // With it: every request succeeds, on many addresses.
    let mut agent = scene.agent(&["--follow-gateway-dns"])?;
    agent.wait_for_log("DNS relay started", APPLY_WAIT)?;
    let asked = scene.dns.answered();
    let results = scene.requests(200, "")?;
    let failed: Vec<_> = results.iter().filter(|(code, _, _)| *code != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}\n{}",
        failed.len(),
        results.len(),
        agent.log()
    );
    let addresses: BTreeSet<&str> = results.iter().map(|(_, ip, _)| ip.as_str()).collect();
    assert!(
        addresses.len() >= 20,
        "the name must have rotated: {addresses:?}"
    );
    assert!(
        scene.dns.answered() >= asked + 200,
        "every request must have been a fresh DNS answer"
    );
    let relay = scene.relay_status()?;
    assert_eq!(relay["relays"], 1, "{relay}");
    let counted = |k: &str| relay[k].as_u64().unwrap_or(0);
    assert!(
        counted("programmed") + counted("late") >= 200,
        "every answer for the name is counted, programmed (or late): {relay}"
    );

    // An address handed out is dropped after its TTL (clamped to 5 s) and
    // the grace: connecting to it without asking again is refused.
    let (_, last, _) = results.last().context("results")?;
    let last: IpAddr = last.parse()?;
    thread::sleep(Duration::from_secs(5 + GRACE_SECS + 2));
    let stale = scene.requests(1, &format!("--resolve {NAME}:80:{last}"))?;
    assert_eq!(
        (stale[0].0, stale[0].2),
        (0, 7),
        "a connect to {last} after its TTL and grace must be refused: {stale:?}"
    );

    // SIGTERM hands the gateway's DNS back to its own server before the
    // relay closes: its lookups keep answering with no agent.
    agent.terminate()?;
    let resolved = scene.lookup(&gateway())?;
    assert!(
        resolved.len() == 1 && pool().iter().any(|p| IpAddr::V4(*p) == resolved[0]),
        "with the agent stopped the gateway must still resolve {NAME}: {resolved:?}\n{}",
        agent.log()
    );
    Ok(())
}
