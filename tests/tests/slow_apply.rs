//! Scenario: an apply that takes long, or never ends, stalls nothing.
//!
//! The agent applies on a worker of its own (`agent::worker`). Here its
//! `nft` (a shim first on its `PATH`, `integration_tests::nftshim`) holds
//! the backstop's transaction in the middle of a reload, for as long as
//! the test wants: meanwhile `status`, `/metrics` and `events` must answer
//! and say which generation is in force and that an apply is under way,
//! and SIGHUPs must be taken, then applied once, together, after the held
//! apply. Then the shim hangs a transaction for good: nft must be killed
//! at `--nft-timeout`, with what it started, and the apply fail closed
//! with an error that names the command and the timeout.
//!
//! No step depends on how fast anything is: the held apply lasts until the
//! test lets it go, and the timeout is long against a real nft run.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use integration_tests::{
    agent::agent_exe,
    names,
    nftshim::NftShim,
    node::SimNode,
    require_root,
    scenario::{id, seed_policies, Running, NEW_POD_ADDRESS},
    Listener, Outcome, Proto, SILENCE,
};
use serde_json::Value;

/// A bound on a hang, not a timing: every wait ends as soon as its
/// condition holds.
const WAIT: Duration = Duration::from_secs(60);
const ARRIVAL: Duration = Duration::from_millis(500);
const METRICS_PORT: u16 = 9464;

/// The agent on the seed node with the shim's `nft`, observed through its
/// CLI and `/metrics`.
struct Node {
    running: Running,
    socket: PathBuf,
}

impl Node {
    fn start(shim: &NftShim, nft_timeout: &str) -> anyhow::Result<Self> {
        let socket = std::env::temp_dir()
            .join(names::unique("egress-sock"))
            .join("agent.sock");
        let sock = socket.display().to_string();
        let metrics = format!("127.0.0.1:{METRICS_PORT}");
        let path = shim.path();
        let running = Running::start_with_env(
            SimNode::new(&[seed_policies()])?,
            &[
                "--socket",
                &sock,
                "--metrics-addr",
                &metrics,
                "--nft-timeout",
                nft_timeout,
            ],
            &[("PATH", &path)],
        )?;
        Ok(Self { running, socket })
    }

    /// `egress-agent ARGS --socket SOCKET`, which must succeed, and answer
    /// within [`WAIT`]: an agent that stalls fails the test, not hangs it.
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("timeout")
            .arg(WAIT.as_secs().to_string())
            .arg(agent_exe())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()?;
        ensure!(
            out.status.code() != Some(124),
            "egress-agent {args:?}: no answer within {WAIT:?}"
        );
        ensure!(
            out.status.success(),
            "egress-agent {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    fn status(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.cli(&["status", "-o", "json"])?)?)
    }

    /// `/metrics`, from inside the node.
    fn metrics(&self) -> anyhow::Result<String> {
        let out = Command::new("nsenter")
            .arg(format!(
                "--net=/run/netns/{}",
                self.running.sim.node().name()
            ))
            .args(["curl", "-sS", "--fail", "--max-time"])
            .arg(WAIT.as_secs().to_string())
            .arg(format!("http://127.0.0.1:{METRICS_PORT}/metrics"))
            .output()?;
        ensure!(
            out.status.success(),
            "/metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// What test-egress/sleep gets: to the gateway pod (generation 1 allows
    /// it, generation 2 does not) and to the internet (neither does).
    fn verdicts(&self, gateway: &Listener, site: SocketAddr) -> anyhow::Result<(Outcome, Outcome)> {
        let sleep = self.running.client(&id("test-egress/sleep"))?;
        let to_gateway = sleep.connect_tcp(gateway.addr())?;
        if to_gateway == Outcome::Ok {
            ensure!(
                gateway.next_event(ARRIVAL).is_some(),
                "the gateway pod saw the connection"
            );
        }
        Ok((to_gateway, sleep.connect_tcp(site)?))
    }
}

/// `name value` of a metric sample.
fn metric(text: &str, name: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in /metrics:\n{text}"))
}

/// Waits until `check` holds.
fn wait_until(what: &str, check: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !check() {
        ensure!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ")?.1.chars().next())
        .is_some_and(|state| state != 'Z' && state != 'X')
}

#[test]
fn status_metrics_and_events_answer_while_an_apply_is_held_in_nft() -> anyhow::Result<()> {
    require_root();
    let shim = NftShim::new()?;
    // Far longer than the test holds the apply: nothing times out here.
    let mut node = Node::start(&shim, "10m")?;
    let gateway =
        node.running
            .listen_in(&id("istio-system/istio-egressgateway"), 443, Proto::Tcp)?;
    let site = node.running.site("edition.cnn.com", false, 443)?;
    ensure!(node.verdicts(&gateway, site)? == (Outcome::Ok, Outcome::Eperm));

    // Generation 2's apply stops in nft's transaction, after the new eBPF
    // generation is written and before the flip.
    shim.hold(true)?;
    node.running.apply_seed_generation_2()?;
    wait_until("the transaction is held", || shim.entered().len() == 1)?;

    // The agent answers, and says what is in force and what is under way.
    let status = node.status()?;
    ensure!(status["generation"]["number"] == 1, "{status:#}");
    ensure!(status["ready"] == true, "{status:#}");
    ensure!(status["applying"]["trigger"] == "reload", "{status:#}");
    let text = node.cli(&["status"])?;
    ensure!(text.contains("applying now: reload since"), "{text}");
    let metrics = node.metrics()?;
    ensure!(metric(&metrics, "egress_apply_in_progress")? == 1.0);
    ensure!(metric(&metrics, "egress_policy_generation")? == 1.0);
    node.cli(&["events", "-o", "json"])?;
    // The kernel still has generation 1.
    ensure!(
        node.verdicts(&gateway, site)? == (Outcome::Ok, Outcome::Eperm),
        "generation 1's verdicts while generation 2 is held"
    );

    // Triggers are taken meanwhile, each one as it comes.
    for n in 1..=3 {
        node.running.agent.sighup()?;
        node.running
            .agent
            .wait_for_count("SIGHUP: reloading", n, WAIT)?;
    }
    ensure!(
        node.running.agent.log().matches("policy applied").count() == 1,
        "nothing applied past the held transaction"
    );

    // Let go: generation 2, then the three SIGHUPs as one reload.
    shim.hold(false)?;
    node.running.wait_applied(3)?;
    node.running
        .agent
        .expect_no_log("policy applied", SILENCE)?;
    let status = node.status()?;
    ensure!(status["generation"]["number"] == 3, "{status:#}");
    ensure!(status.get("applying").is_none(), "{status:#}");
    ensure!(status["lastReload"]["result"] == "applied", "{status:#}");
    ensure!(metric(&node.metrics()?, "egress_apply_in_progress")? == 0.0);
    ensure!(shim.entered().len() == 1, "only the first was held");
    ensure!(
        node.verdicts(&gateway, site)? == (Outcome::Eperm, Outcome::Eperm),
        "generation 2's verdicts"
    );
    ensure!(node.running.backstop_workloads()?.contains(NEW_POD_ADDRESS));
    Ok(())
}

#[test]
fn a_hung_nft_is_killed_at_its_timeout_and_the_previous_generation_stays() -> anyhow::Result<()> {
    require_root();
    let shim = NftShim::new()?;
    // Long against a real nft run on a loaded machine (milliseconds), short
    // for the test.
    let mut node = Node::start(&shim, "5s")?;
    let gateway =
        node.running
            .listen_in(&id("istio-system/istio-egressgateway"), 443, Proto::Tcp)?;
    let site = node.running.site("edition.cnn.com", false, 443)?;
    ensure!(node.verdicts(&gateway, site)? == (Outcome::Ok, Outcome::Eperm));

    shim.hang(true)?;
    node.running.apply_seed_generation_2()?;
    node.running
        .agent
        .wait_for_log("cannot program the kernel", WAIT)?;

    // The log names the command and the timeout, and the generation kept.
    let log = node.running.agent.log();
    let failed = log
        .lines()
        .find(|l| l.contains("cannot program the kernel"))
        .context("the error line")?;
    for needle in [
        "`nft -j -f -` did not finish within 5s; it was killed",
        "the previous generation stays in force",
        "generation=1",
        "trigger=reload",
        "discarded before it took effect",
    ] {
        ensure!(failed.contains(needle), "{needle:?} in {failed}");
    }

    // nft was killed with what it started.
    let entered = shim.entered();
    ensure!(entered.len() == 1, "one transaction hung: {entered:?}");
    for pid in &entered[0] {
        wait_until(&format!("process {pid} of the hung nft is gone"), || {
            !alive(*pid)
        })?;
    }

    // Generation 1 in both layers, and everywhere the agent reports.
    ensure!(
        node.verdicts(&gateway, site)? == (Outcome::Ok, Outcome::Eperm),
        "generation 1's verdicts after the timeout"
    );
    ensure!(!node.running.backstop_workloads()?.contains(NEW_POD_ADDRESS));
    let status = node.status()?;
    ensure!(status["generation"]["number"] == 1, "{status:#}");
    ensure!(status["lastReload"]["result"] == "failed", "{status:#}");
    let errors = status["lastReload"]["errors"].to_string();
    ensure!(errors.contains("did not finish within 5s"), "{errors}");
    ensure!(status["applyFailures"] == 1, "{status:#}");
    ensure!(status.get("applying").is_none(), "{status:#}");
    let metrics = node.metrics()?;
    ensure!(metric(&metrics, "egress_policy_generation")? == 1.0);
    ensure!(metric(&metrics, "egress_apply_failures_total")? == 1.0);

    // nft works again: the next reload applies, in both layers.
    shim.hang(false)?;
    node.running.agent.sighup()?;
    node.running.wait_applied(2)?;
    ensure!(
        node.verdicts(&gateway, site)? == (Outcome::Eperm, Outcome::Eperm),
        "generation 2's verdicts"
    );
    ensure!(node.running.backstop_workloads()?.contains(NEW_POD_ADDRESS));
    Ok(())
}
