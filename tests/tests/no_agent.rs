//! Scenario: allowed traffic does not depend on the agent being alive.
//!
//! The agent resolves the egress gateway's `allowedHosts` and follows each
//! answer's TTL: the node's DNS serves them with a TTL of 5 s, which is
//! also the shortest the agent keeps (`ResolverSettings::ttl_min`), so with
//! an agent running they are asked again every few seconds. That
//! bookkeeping lives in the agent: what the kernel holds is the gateway's
//! entries of the generation in force, pinned, with no expiry. With no agent
//! running, that generation keeps deciding, whatever time passes: the
//! gateway reaches its allowed host by address and by name long past every
//! TTL the agent saw, and everything else stays denied. Checked after
//! SIGTERM (how a DaemonSet's pod is stopped) and after SIGKILL (a crash).

use std::{thread, time::Duration};

use anyhow::{ensure, Context as _};
use egress_policy::model::ObjectId;
use integration_tests::{
    node::SimNode,
    require_root,
    scenario::{id, Running},
    Outcome,
};

/// Three DNS TTLs: past the expiry of every answer the agent was given
/// before it stopped, and of every refresh it would have made.
const PAST_TTL: Duration = Duration::from_secs(3 * SimNode::DNS_TTL as u64);

fn gateway() -> ObjectId {
    id("istio-system/istio-egressgateway")
}

/// What the gateway and test-egress/sleep may and may not reach, checked
/// for real.
fn check(node: &Running, when: &str) -> anyhow::Result<()> {
    let gw = node.client(&gateway())?;
    for v6 in [false, true] {
        let site = node.site("edition.cnn.com", v6, 443)?;
        let got = gw.connect_tcp(site)?;
        ensure!(got == Outcome::Ok, "{when}: gateway → {site}: {got:?}");
    }
    // By name: the gateway's own lookup through kube-dns, then HTTP.
    let curl = node.sim.curl(&gateway(), "http://edition.cnn.com/")?;
    ensure!(
        curl.ok(),
        "{when}: gateway → http://edition.cnn.com/: {curl:?}"
    );
    let uplink = &node.sim.pod_of(&gateway()).context("pod")?.uplink;
    let seen = node.sim.web().requests();
    let last = seen.last().context("the site logged the request")?;
    ensure!(
        uplink.contains(&last.client) && last.host == "edition.cnn.com",
        "{when}: the site saw {last:?}"
    );
    // Fail closed for everything else.
    for (who, host, port) in [
        (gateway(), "httpbin.org", 443),
        (gateway(), "edition.cnn.com", 22),
        (id("test-egress/sleep"), "edition.cnn.com", 443),
    ] {
        let to = node.site(host, false, port)?;
        let got = node.client(&who)?.connect_tcp(to)?;
        ensure!(got == Outcome::Eperm, "{when}: {who} → {to}: {got:?}");
    }
    Ok(())
}

#[test]
fn with_no_agent_the_gateway_keeps_its_allowed_host_past_every_dns_ttl() -> anyhow::Result<()> {
    require_root();
    let mut node = Running::seed(&[])?;
    check(&node, "with the agent")?;

    let exit = node.agent.terminate()?;
    ensure!(exit.success(), "the agent exits cleanly on SIGTERM: {exit}");
    check(&node, "just after SIGTERM")?;
    thread::sleep(PAST_TTL);
    check(&node, &format!("{PAST_TTL:?} after SIGTERM"))?;

    node.agent.restart()?;
    check(&node, "after a restart")?;
    node.agent.kill()?;
    thread::sleep(PAST_TTL);
    check(&node, &format!("{PAST_TTL:?} after SIGKILL"))?;
    Ok(())
}
