//! Scenario: one apply, one outcome. The nftables backstop's transaction
//! fails in the middle of a reload, after the new eBPF generation has been
//! written (an `nft` on the agent's `PATH` fails it on demand). The
//! previous generation must stay in force in the eBPF maps *and* the
//! backstop, connections must keep their previous verdicts, and the log,
//! `status` and `/metrics` must say that generation, and why the reload
//! failed. Once nft works again, the same policy applies.

use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, ensure, Context as _};
use integration_tests::{
    agent::{agent_exe, status_json},
    names,
    nftshim::NftShim,
    node::SimNode,
    require_root,
    scenario::{id, seed_policies, Running, NEW_POD_ADDRESS},
    Listener, Outcome, Proto,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);
const ARRIVAL: Duration = Duration::from_millis(500);
const METRICS_PORT: u16 = 9464;

/// The agent on the seed node, observed through its CLI and `/metrics`.
struct Node {
    running: Running,
    socket: PathBuf,
}

impl Node {
    fn start(shim: &NftShim) -> anyhow::Result<Self> {
        let socket = std::env::temp_dir()
            .join(names::unique("egress-sock"))
            .join("agent.sock");
        let sock = socket.display().to_string();
        let metrics = format!("127.0.0.1:{METRICS_PORT}");
        let path = shim.path();
        let running = Running::start_with_env(
            SimNode::new(&[seed_policies()])?,
            &["--socket", &sock, "--metrics-addr", &metrics],
            &[("PATH", &path)],
        )?;
        Ok(Self { running, socket })
    }

    fn status(&self) -> anyhow::Result<Value> {
        status_json(&self.socket)
    }

    fn status_text(&self) -> anyhow::Result<String> {
        let out = Command::new(agent_exe())
            .args(["status", "--socket"])
            .arg(&self.socket)
            .output()?;
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `name value` of a metric sample, from `/metrics` in the node.
    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let out = Command::new("nsenter")
            .arg(format!(
                "--net=/run/netns/{}",
                self.running.sim.node().name()
            ))
            .args(["curl", "-sS"])
            .arg(format!("http://127.0.0.1:{METRICS_PORT}/metrics"))
            .output()?;
        let text = String::from_utf8(out.stdout)?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no {name} in /metrics:\n{text}"))
    }

    /// Entries of each generation map, from `status`.
    fn generation_maps(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let status = self.status()?;
        let maps = status["maps"].as_array().context("maps")?;
        Ok(maps
            .iter()
            .filter(|m| {
                [
                    "workloads",
                    "policies",
                    "allow",
                    "port_sets",
                    "cluster",
                    "gateway",
                ]
                .contains(&m["name"].as_str().unwrap_or_default())
            })
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().to_owned(),
                    m["entries"].as_u64().unwrap_or_default(),
                )
            })
            .collect())
    }
}

/// What test-egress/sleep gets: to the gateway pod (generation 1 allows
/// it, generation 2 does not) and to the internet (neither allows it).
fn verdicts(
    node: &Node,
    gateway: &Listener,
    site: SocketAddr,
) -> anyhow::Result<(Outcome, Outcome)> {
    let sleep = node.running.client(&id("test-egress/sleep"))?;
    let to_gateway = sleep.connect_tcp(gateway.addr())?;
    if to_gateway == Outcome::Ok {
        ensure!(
            gateway.next_event(ARRIVAL).is_some(),
            "the gateway pod saw the connection"
        );
    }
    Ok((to_gateway, sleep.connect_tcp(site)?))
}

#[test]
fn a_failed_nftables_transaction_leaves_the_previous_generation_in_force_everywhere(
) -> anyhow::Result<()> {
    require_root();
    let shim = NftShim::new()?;
    let mut node = Node::start(&shim)?;
    let gateway =
        node.running
            .listen_in(&id("istio-system/istio-egressgateway"), 443, Proto::Tcp)?;
    let site = node.running.site("edition.cnn.com", false, 443)?;

    // Generation 1: the seed.
    let v = verdicts(&node, &gateway, site)?;
    ensure!(
        v == (Outcome::Ok, Outcome::Eperm),
        "generation 1's verdicts: {v:?}"
    );
    let before = node.status()?;
    ensure!(before["generation"]["number"] == 1, "{before:#}");
    ensure!(before["nft"]["installed"] == true);
    let maps_before = node.generation_maps()?;
    ensure!(!node.running.backstop_workloads()?.contains(NEW_POD_ADDRESS));

    // Generation 2, while nft refuses every transaction.
    shim.fail(true)?;
    node.running.apply_seed_generation_2()?;
    node.running
        .agent
        .wait_for_log("cannot program the kernel", WAIT)?;
    ensure!(shim.failures() == 1, "the agent ran the transaction once");

    // The kernel: generation 1 in both layers.
    let v = verdicts(&node, &gateway, site)?;
    ensure!(
        v == (Outcome::Ok, Outcome::Eperm),
        "generation 1's verdicts after the failed apply: {v:?}"
    );
    ensure!(
        !node.running.backstop_workloads()?.contains(NEW_POD_ADDRESS),
        "the backstop keeps generation 1's rules"
    );
    ensure!(
        node.generation_maps()? == maps_before,
        "no entry of the discarded generation is left: {:?} before, {:?} now",
        maps_before,
        node.generation_maps()?
    );

    // The log.
    let log = node.running.agent.log();
    let failed = log
        .lines()
        .find(|l| l.contains("cannot program the kernel"))
        .context("the error line")?;
    for needle in [
        "the previous generation stays in force",
        "generation=1",
        "trigger=reload",
        "injected fault",
        "discarded before it took effect",
    ] {
        ensure!(failed.contains(needle), "{needle:?} in {failed}");
    }
    ensure!(
        log.matches("policy applied").count() == 1,
        "nothing else was applied:\n{log}"
    );

    // status and /metrics.
    let after = node.status()?;
    ensure!(after["generation"]["number"] == 1, "{after:#}");
    ensure!(after["ready"] == true);
    ensure!(after["lastReload"]["result"] == "failed", "{after:#}");
    let errors = after["lastReload"]["errors"].to_string();
    ensure!(errors.contains("injected fault"), "{errors}");
    ensure!(after["failedReloads"] == 1);
    ensure!(after["applyFailures"] == 1);
    ensure!(after["lastApplyFailure"]["generation"] == 1, "{after:#}");
    ensure!(after["lastApplyFailure"]["trigger"] == "reload");
    ensure!(after["nft"]["installed"] == true);
    println!(
        "$ egress-agent status   # after the failed apply\n{}",
        node.status_text()?
    );
    ensure!(node.metric("egress_policy_generation")? == 1.0);
    ensure!(node.metric("egress_apply_failures_total")? == 1.0);
    ensure!(node.metric("egress_reload_failures_total")? == 1.0);

    // nft works again: the same policy applies, in both layers.
    shim.fail(false)?;
    node.running.agent.sighup()?;
    node.running.wait_applied(2)?;
    let v = verdicts(&node, &gateway, site)?;
    ensure!(
        v == (Outcome::Eperm, Outcome::Eperm),
        "generation 2's verdicts: {v:?}"
    );
    ensure!(
        node.running.backstop_workloads()?.contains(NEW_POD_ADDRESS),
        "the backstop has generation 2's rules"
    );
    let applied = node.status()?;
    ensure!(applied["generation"]["number"] == 2, "{applied:#}");
    ensure!(applied["lastReload"]["result"] == "applied");
    ensure!(applied["applyFailures"] == 1);
    ensure!(node.metric("egress_policy_generation")? == 2.0);
    ensure!(shim.failures() == 1);
    if gateway.next_event(Duration::ZERO).is_some() {
        bail!("a refused connection reached the gateway pod");
    }
    Ok(())
}
