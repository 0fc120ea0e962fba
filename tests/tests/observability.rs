//! Scenarios: what operators see. The real agent on the simulated seed
//! node, observed through its own CLI (`events`, `status`) and its
//! `/metrics` endpoint, while pods connect for real.
//!
//! Nothing here asserts on timing: waits are bounded polls for something
//! to appear, and "nothing more appeared" is proven by a later marker event
//! (the ring is FIFO), not by waiting.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use integration_tests::{
    agent::agent_exe,
    names, require_root,
    scenario::{id, Running},
    Outcome, Proto,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);
/// Long enough that a test never sees a second event for the same key.
const ONE_PER_TEST: &str = "600000";
const METRICS_PORT: u16 = 9464;

/// The real agent on the seed node, with its socket in a temp dir.
struct Observed {
    node: Running,
    socket: PathBuf,
}

impl std::ops::Deref for Observed {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.node
    }
}

impl std::ops::DerefMut for Observed {
    fn deref_mut(&mut self) -> &mut Running {
        &mut self.node
    }
}

impl Observed {
    fn seed(extra: &[&str]) -> anyhow::Result<Self> {
        let socket = std::env::temp_dir()
            .join(names::unique("egress-sock"))
            .join("agent.sock");
        let sock = socket.display().to_string();
        let mut args = vec!["--socket", sock.as_str()];
        args.extend_from_slice(extra);
        let node = Running::seed(&args)?;
        Ok(Self { node, socket })
    }

    fn connect(&self, who: &str, to: &str) -> anyhow::Result<Outcome> {
        let addr: SocketAddr = to.parse()?;
        self.sim
            .client(&id(who))
            .context("no such pod")?
            .connect_tcp(addr)
    }

    /// `egress-agent ARGS --socket S`, its stdout.
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(agent_exe())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()?;
        ensure!(
            out.status.success(),
            "egress-agent {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The buffered events, as NDJSON parsed.
    fn events(&self, filter: &[&str]) -> anyhow::Result<Vec<Value>> {
        let mut args = vec!["events", "-o", "json"];
        args.extend_from_slice(filter);
        self.cli(&args)?
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect()
    }

    /// Waits until some event to `destination` is buffered; returns all of
    /// them to it.
    fn wait_event(&self, destination: &str) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let to: Vec<Value> = self
                .events(&[])?
                .into_iter()
                .filter(|e| e["destination"] == destination)
                .collect();
            if !to.is_empty() {
                return Ok(to);
            }
            if Instant::now() > deadline {
                bail!(
                    "no event to {destination} within {WAIT:?}; events: {:?}\nagent log:\n{}",
                    self.events(&[])?,
                    self.agent.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A denied connect to a fresh destination, and its event: everything
    /// emitted before it is in the agent's buffer once it is.
    fn marker(&self, port: u16) -> anyhow::Result<()> {
        let to = format!("203.0.113.99:{port}");
        self.connect("test-egress/sleep", &to)?;
        self.wait_event(&to).map(drop)
    }

    fn status(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.cli(&["status", "-o", "json"])?)?)
    }

    /// `curl` inside the node's network namespace, where the agent runs.
    fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.sim.node().name()))
            .args(["curl", "-sS", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{METRICS_PORT}{path}"))
            .output()?;
        ensure!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        let (body, code) = text.rsplit_once('\n').context("no status code")?;
        Ok((code.trim().parse()?, body.to_owned()))
    }
}

/// A denied connect from test-egress produces exactly one event, naming
/// the workload, the destination, the verdict and the rule.
#[test]
fn a_denied_connect_is_one_event_naming_workload_destination_and_rule() -> anyhow::Result<()> {
    require_root();
    let node = Observed::seed(&["--event-interval-ms", ONE_PER_TEST])?;
    let to = "203.0.113.10:443";
    ensure!(node.connect("test-egress/sleep", to)? == Outcome::Eperm);
    // DNS over TCP is denied by the NetworkPolicy (only UDP 53 is allowed).
    ensure!(node.connect("test-egress/sleep", "10.244.0.10:53")? == Outcome::Eperm);
    node.wait_event("10.244.0.10:53")?;
    node.marker(1)?;

    let events = node.wait_event(to)?;
    ensure!(events.len() == 1, "exactly one event: {events:#?}");
    let e = &events[0];
    ensure!(e["workload"] == "test-egress/sleep", "{e}");
    ensure!(e["verdict"] == "deny", "{e}");
    ensure!(e["protocol"] == "tcp", "{e}");
    ensure!(e["rule"] == "gateway exclusivity", "{e}");
    ensure!(e["hook"] == "egress_connect4", "{e}");
    let dns = &node.wait_event("10.244.0.10:53")?[0];
    ensure!(dns["rule"] == "default deny", "{dns}");
    ensure!(dns["reason"] == "default-deny", "{dns}");

    // Filters, and the text form.
    let denied = node.events(&["--workload", "test-egress/sleep", "--verdict", "deny"])?;
    ensure!(denied.len() == 3, "{denied:#?}");
    ensure!(node.events(&["--workload", "default/sleep"])?.is_empty());
    ensure!(node.events(&["--verdict", "audit"])?.is_empty());
    println!(
        "$ egress-agent events -o json --verdict deny\n{}",
        node.cli(&["events", "-o", "json", "--verdict", "deny"])?
    );
    let text = node.cli(&["events", "--workload", "test-egress/sleep"])?;
    println!("$ egress-agent events --workload test-egress/sleep\n{text}");
    ensure!(
        text.lines().any(|l| l.contains("test-egress/sleep")
            && l.contains("-> 203.0.113.10:443 tcp DENY by gateway exclusivity")),
        "{text}"
    );
    Ok(())
}

/// With `--sample-allow 1`, allowed connects are reported too, with the
/// NetworkPolicy rule that allowed them.
#[test]
fn sampled_allows_name_the_network_policy_rule() -> anyhow::Result<()> {
    require_root();
    let node = Observed::seed(&["--sample-allow", "1", "--event-interval-ms", ONE_PER_TEST])?;
    let gateway = node
        .sim
        .pod_of(&id("istio-system/istio-egressgateway"))
        .context("gateway pod")?;
    let listener = integration_tests::Listener::start(
        &gateway.netns,
        SocketAddr::new(gateway.addresses[0], 443),
        Proto::Tcp,
    )?;
    let to = listener.addr().to_string();
    ensure!(node.connect("test-egress/sleep", &to)? == Outcome::Ok);
    let allowed: Vec<Value> = node
        .wait_event(&to)?
        .into_iter()
        .filter(|e| e["verdict"] == "allow")
        .collect();
    ensure!(!allowed.is_empty());
    let e = allowed
        .iter()
        .find(|e| e["hook"] == "egress_connect4")
        .context("the connect's own event")?;
    ensure!(
        e["rule"]
            == "NetworkPolicy test-egress/allow-egress-to-istio-system-and-kube-dns egress[1]",
        "{e}"
    );
    ensure!(e["policy"] == "test-egress/allow-egress-to-istio-system-and-kube-dns");
    Ok(())
}

/// In audit mode, a would-deny passes and is reported as an audit event.
#[test]
fn audit_mode_reports_a_would_deny_and_lets_it_pass() -> anyhow::Result<()> {
    require_root();
    let node = Observed::seed(&["--audit", "--event-interval-ms", ONE_PER_TEST])?;
    let to = "203.0.113.10:443";
    ensure!(
        node.connect("test-egress/sleep", to)? == Outcome::Ok,
        "audit mode blocks nothing"
    );
    let events = node.wait_event(to)?;
    ensure!(
        events.iter().all(|e| e["verdict"] == "audit"),
        "{events:#?}"
    );
    let e = events
        .iter()
        .find(|e| e["hook"] == "egress_connect4")
        .context("the connect's event")?;
    ensure!(e["workload"] == "test-egress/sleep" && e["rule"] == "gateway exclusivity");
    ensure!(node.events(&["--verdict", "deny"])?.is_empty());
    ensure!(node.status()?["audit"] == true);
    Ok(())
}

/// A flood of denied connects to one destination yields one event; the
/// rest are counted as suppressed, in `status` and in `/metrics`.
#[test]
fn a_flood_of_denied_connects_stays_within_the_rate_limit() -> anyhow::Result<()> {
    require_root();
    let port = METRICS_PORT.to_string();
    let addr = format!("127.0.0.1:{port}");
    let node = Observed::seed(&["--event-interval-ms", ONE_PER_TEST, "--metrics-addr", &addr])?;
    let to: SocketAddr = "203.0.113.10:443".parse()?;
    let flood = node
        .sim
        .client(&id("test-egress/sleep"))
        .context("pod")?
        .flood_tcp(to, 500)?;
    ensure!(flood.ok == 0 && flood.failed == 500, "{flood:?}");
    node.marker(2)?;
    let events = node.wait_event(&to.to_string())?;
    ensure!(events.len() == 1, "one event for the flood: {events:#?}");
    let status = node.status()?;
    let suppressed = status["kernelEvents"]["suppressed"]
        .as_u64()
        .context("suppressed")?;
    ensure!(suppressed >= 499, "suppressed {suppressed}: {status:#}");
    ensure!(status["kernelEvents"]["ringFull"] == 0);
    let metrics = scrape(&node)?;
    ensure!(
        sample(
            &metrics,
            "egress_kernel_events_total",
            &[("outcome", "suppressed")]
        )? >= 499.0
    );
    Ok(())
}

fn scrape(node: &Observed) -> anyhow::Result<prometheus_parse::Scrape> {
    let (code, body) = node.http_get("/metrics")?;
    ensure!(code == 200, "/metrics: {code}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).context("/metrics is not Prometheus text")
}

/// The value of the one sample of `name` whose labels include `labels`.
fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<f64> {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .collect();
    match found.as_slice() {
        [v] => Ok(*v),
        _ => bail!("{name}{labels:?}: {} samples", found.len()),
    }
}

/// `/metrics` parses as Prometheus text, and its counters match the
/// connects made; `/healthz` and `/readyz` answer.
#[test]
fn metrics_parse_and_count_the_traffic_sent() -> anyhow::Result<()> {
    require_root();
    let addr = format!("127.0.0.1:{METRICS_PORT}");
    let node = Observed::seed(&["--metrics-addr", &addr])?;
    for _ in 0..5 {
        ensure!(node.connect("test-egress/sleep", "203.0.113.10:443")? == Outcome::Eperm);
    }
    for _ in 0..3 {
        ensure!(node.connect("test-egress/sleep", "10.244.0.10:53")? == Outcome::Eperm);
    }
    ensure!(node.http_get("/healthz")?.0 == 200);
    ensure!(node.http_get("/readyz")?.0 == 200);
    println!(
        "$ curl http://{addr}/metrics\n{}",
        node.http_get("/metrics")?.1
    );
    let m = scrape(&node)?;
    let workload = [
        ("namespace", "test-egress"),
        ("workload", "sleep"),
        ("verdict", "deny"),
    ];
    let exclusivity = [
        &workload[..],
        &[
            ("reason", "gateway-exclusivity"),
            ("policy", "gateway-exclusivity"),
        ],
    ]
    .concat();
    ensure!(sample(&m, "egress_verdicts_total", &exclusivity)? == 5.0);
    let default_deny = [&workload[..], &[("reason", "default-deny")]].concat();
    ensure!(sample(&m, "egress_verdicts_total", &default_deny)? == 3.0);
    ensure!(
        sample(
            &m,
            "egress_decisions_total",
            &[
                ("program", "egress_connect4"),
                ("verdict", "deny"),
                ("reason", "gateway-exclusivity")
            ]
        )? == 5.0
    );
    ensure!(sample(&m, "egress_reloads_total", &[])? >= 1.0);
    ensure!(sample(&m, "egress_policy_generation", &[])? == 1.0);
    ensure!(sample(&m, "egress_map_entries", &[("map", "workloads")])? >= 5.0);
    ensure!(
        sample(&m, "egress_programs_attached", &[])?
            == egress_agent::dataplane::supported_hooks().len() as f64
    );
    ensure!(
        m.samples
            .iter()
            .all(|s| !s.labels.values().any(|v| v.contains("203.0.113"))),
        "no addresses in labels"
    );
    Ok(())
}

/// `status -o json` shows what is attached and in force, and a reload
/// that failed, with its errors; the generation in force stays.
#[test]
fn status_reflects_a_failed_reload() -> anyhow::Result<()> {
    require_root();
    let mut node = Observed::seed(&[])?;
    let before = node.status()?;
    ensure!(before["generation"]["number"] == 1, "{before:#}");
    ensure!(before["lastReload"]["result"] == "applied");
    ensure!(
        before["programs"].as_array().map(Vec::len)
            == Some(egress_agent::dataplane::supported_hooks().len())
    );
    ensure!(before["workloads"].as_array().map(Vec::len) == Some(5));
    ensure!(before["nft"]["installed"] == true);
    let sleep = before["workloads"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["workload"] == "test-egress/sleep"))
        .context("test-egress/sleep")?;
    ensure!(
        sleep["policies"][0] == "test-egress/allow-egress-to-istio-system-and-kube-dns",
        "{sleep}"
    );
    println!("$ egress-agent status\n{}", node.cli(&["status"])?);

    let bad = node.sim.policies_dir().join("zz-broken.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: broken, namespace: test-egress}\n\
         spec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/33}\n",
    )?;
    node.agent
        .wait_for_log("the previous generation stays in force", WAIT)?;
    let after = node.status()?;
    ensure!(after["lastReload"]["result"] == "rejected", "{after:#}");
    let errors = after["lastReload"]["errors"].as_array().context("errors")?;
    ensure!(
        errors.iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.contains("zz-broken.yaml") && e.contains("10.0.0.0/33"))),
        "{errors:?}"
    );
    ensure!(after["failedReloads"].as_u64() >= Some(1));
    ensure!(after["generation"]["number"] == 1, "still in force");
    println!(
        "$ egress-agent status   # after a rejected reload\n{}",
        node.cli(&["status"])?
    );
    Ok(())
}

/// Traffic the programs never see (a process of the pod outside every
/// cgroup) is dropped by the nftables backstop; the agent polls its
/// counters and reports the drops as an event, with the count.
#[test]
fn backstop_drops_are_reported_as_events() -> anyhow::Result<()> {
    require_root();
    let node = Observed::seed(&[])?;
    let pod = node
        .sim
        .pod_of(&id("test-egress/sleep"))
        .context("test-egress pod")?;
    let escaped = integration_tests::Client::outside(&pod.netns);
    let outcome = escaped.connect(
        "203.0.113.10:443".parse()?,
        Proto::Tcp,
        Duration::from_millis(700),
    )?;
    ensure!(
        outcome == Outcome::Timeout,
        "dropped at the node: {outcome:?}"
    );
    let events = node
        .wait_event("outside clusterCIDRs")
        .with_context(|| format!("status: {:#}", node.status().unwrap_or_default()))?;
    ensure!(
        events
            .iter()
            .all(|e| e["hook"] == "nftables" && e["verdict"] == "deny"),
        "{events:#?}"
    );
    let dropped: u64 = events.iter().filter_map(|e| e["count"].as_u64()).sum();
    ensure!(dropped >= 1, "{events:#?}");
    let status = node.status()?;
    let counted: u64 = status["nft"]["droppedPackets"]
        .as_array()
        .context("droppedPackets")?
        .iter()
        .filter_map(|pair| pair[1].as_u64())
        .sum();
    ensure!(counted >= dropped, "{status:#}");
    Ok(())
}

/// `events --follow` streams events that happen after it started.
#[test]
fn events_follow_streams_new_events() -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    require_root();
    let node = Observed::seed(&[])?;
    let mut follower = Command::new(agent_exe())
        .args([
            "events",
            "--follow",
            "-o",
            "json",
            "--verdict",
            "deny",
            "--socket",
        ])
        .arg(&node.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = follower.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The follower may connect after the first connect; connect until a
    // line arrives (each to a new port, so none is rate-limited).
    let deadline = Instant::now() + WAIT;
    let mut port = 1000;
    let line = loop {
        ensure!(
            node.connect("test-egress/sleep", &format!("203.0.113.10:{port}"))? == Outcome::Eperm
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            break line;
        }
        ensure!(
            Instant::now() < deadline,
            "nothing streamed within {WAIT:?}"
        );
        port += 1;
    };
    let _ = follower.kill();
    let _ = follower.wait();
    let e: Value = serde_json::from_str(&line)?;
    ensure!(
        e["workload"] == "test-egress/sleep" && e["verdict"] == "deny",
        "{e}"
    );
    ensure!(
        e["destination"]
            .as_str()
            .is_some_and(|d| d.starts_with("203.0.113.10:")),
        "{e}"
    );
    Ok(())
}

/// A captured connect is reported as a redirect, with the destination the
/// workload named (the event is emitted before the address is rewritten
/// to the proxy).
#[test]
fn a_redirect_is_reported_with_its_original_destination() -> anyhow::Result<()> {
    require_root();
    let node = Observed::seed(&["--event-interval-ms", ONE_PER_TEST])?;
    let to = "203.0.113.10:443";
    // No sidecar listens here: the redirected connect is refused by the
    // proxy's address, not denied.
    let outcome = node.connect("default/sleep", to)?;
    ensure!(
        outcome == Outcome::Refused,
        "redirected to 127.0.0.1:15001: {outcome:?}"
    );
    let events = node.wait_event(to)?;
    ensure!(events.len() == 1, "exactly one event: {events:#?}");
    let e = &events[0];
    ensure!(e["workload"] == "default/sleep", "{e}");
    ensure!(e["verdict"] == "redirect", "{e}");
    ensure!(e["hook"] == "egress_connect4", "{e}");
    ensure!(
        node.events(&["--verdict", "redirect"])?.len() == 1,
        "the filter finds it"
    );
    Ok(())
}
