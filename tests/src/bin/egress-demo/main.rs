//! `egress-demo`: the live demo behind `cargo xtask demo`.
//!
//! It builds a simulated Kubernetes node from the policy files
//! ([`integration_tests::node::SimNode`]: one network namespace per pod, a
//! forwarding node, an "internet", the Workloads' cgroups, dnsmasq as
//! kube-dns), runs the real `egress-agent` on it, and then tries each flow
//! the policies say something about with a real connection, from inside
//! the right cgroup and pod. Each flow's expectation, and the rule behind
//! it, come from `egress_agent::compile::decide` on the plan the agent
//! enforces, so a table line is `explain` checked against the kernel.
//!
//! Then it shows that enforcement fails closed: SIGKILL the agent, the
//! flow is still denied; a new agent adopts the pinned links; `egress-agent
//! uninstall` removes everything and the flow passes. It removes what it
//! built on every exit path, Ctrl-C included, and exits non-zero if any
//! observation contradicts the plan.
//!
//! `--no-agent` shows the unenforced baseline instead: the same flows, all
//! of which connect.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand};
use egress_agent::compile::{
    decide, Decision, Destination, Egress, Plan, Reason, Verdict, WorkloadPlan,
};
use egress_policy::{
    model::{AllowedHost, HostName, ObjectId},
    ports::Protocol,
};
use integration_tests::{
    internet::{HTTPS_PORT, HTTP_PORT},
    mesh::Mesh,
    node::{self, dns, Served, SimNode},
    probe::CONNECT_TIMEOUT,
    Client, Outcome, Proto,
};
use ipnet::IpNet;

mod web;

#[derive(Parser)]
#[command(
    name = "egress-demo",
    about = "Builds a simulated node from policy files, runs the real agent on it, and checks \
             every flow the policies decide with a real connection"
)]
struct Args {
    /// Policy files or directories (repeatable).
    #[arg(long, default_value = "policies")]
    policies: Vec<PathBuf>,
    /// Do not start the agent: show the unenforced baseline, where every
    /// flow connects.
    #[arg(long)]
    no_agent: bool,
    /// The egress-agent binary [default: next to this one].
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The egress-probe binary [default: next to this one].
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Print the agent's whole log at the end.
    #[arg(long)]
    agent_log: bool,
    #[command(subcommand)]
    helper: Option<Helper>,
}

#[derive(Subcommand)]
enum Helper {
    /// Internal: one DNS query from inside a cgroup and a network namespace.
    #[command(hide = true)]
    DnsQuery {
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long)]
        netns: String,
        #[arg(long)]
        server: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        name: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Helper::DnsQuery {
        cgroup,
        netns,
        server,
        timeout_ms,
        name,
    }) = &args.helper
    {
        return dns_query_helper(cgroup, netns, *server, *timeout_ms, name);
    }
    signals::install();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            if let Some(signal) = signals::received() {
                println!("interrupted by signal {signal}; everything was removed");
                return ExitCode::from(128u8.saturating_add(signal as u8));
            }
            eprintln!("egress-demo: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the node, runs the demo on it, and always tears it down.
fn run(args: &Args) -> anyhow::Result<bool> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        bail!("egress-demo needs root (network namespaces, cgroups, eBPF, nftables)");
    }
    let here = std::env::current_exe().context("current_exe")?;
    let dir = here.parent().context("the demo's directory")?.to_owned();
    let probe = args
        .probe
        .clone()
        .unwrap_or_else(|| dir.join("egress-probe"));
    let agent = args
        .agent
        .clone()
        .unwrap_or_else(|| dir.join("egress-agent"));
    for (what, path) in [("egress-probe", &probe), ("egress-agent", &agent)] {
        let needed = what == "egress-probe" || !args.no_agent;
        if needed && !path.exists() {
            bail!(
                "{what} not found at {}: build it with `cargo build -p egress-agent -p \
                 integration-tests --bins` (cargo xtask demo does)",
                path.display()
            );
        }
    }
    // Read by `integration_tests::probe` each time it starts a probe;
    // nothing else runs yet.
    std::env::set_var("EGRESS_PROBE", &probe);

    let started = Instant::now();
    let shown: Vec<String> = args
        .policies
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    println!("egress-demo: a simulated node from {}", shown.join(", "));
    let sim = SimNode::new(&args.policies).context("building the simulated node")?;
    println!("node built in {} ms", started.elapsed().as_millis());
    print_layout(&sim);

    let mut report = Report::default();
    let result = Demo {
        sim: &sim,
        agent_exe: &agent,
        helper_exe: &here,
        baseline: args.no_agent,
        print_agent_log: args.agent_log,
    }
    .run(&mut report);
    if let Err(err) = &result {
        if signals::received().is_none() {
            println!("\nthe demo stopped: {err:#}");
        }
    }

    let began = Instant::now();
    println!();
    println!("Cleanup:");
    let teardown = sim.teardown();
    for what in &teardown.removed {
        println!("  removed {what}");
    }
    for what in &teardown.left_behind {
        println!("  ✗ LEFT BEHIND: {what}");
    }
    if teardown.left_behind.is_empty() {
        println!(
            "  ✓ nothing left behind ({} ms)",
            began.elapsed().as_millis()
        );
    }
    result?;
    println!();
    let ok = report.failed == 0 && teardown.left_behind.is_empty();
    println!(
        "Result: {} {} as expected, {} failed; total {:.1} s",
        report.passed,
        if report.passed == 1 {
            "check"
        } else {
            "checks"
        },
        report.failed,
        started.elapsed().as_secs_f32()
    );
    Ok(ok)
}

fn print_layout(sim: &SimNode) {
    let dns = sim.dns();
    let names: Vec<String> = dns
        .records
        .iter()
        .map(|(name, addrs)| format!("{name} = {}", join(addrs)))
        .collect();
    let mut rows = vec![
        (
            sim.node().name().to_owned(),
            sim.node_cluster_address()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            "the node: forwards between pods and the internet; the agent runs here".to_owned(),
        ),
        (
            sim.internet().name().to_owned(),
            SimNode::INTERNET_NET_V4.to_owned(),
            if names.is_empty() {
                "the internet".to_owned()
            } else {
                format!("the internet: {}", names.join("; "))
            },
        ),
    ];
    for pod in sim.pods() {
        let who: Vec<String> = pod.workloads.iter().map(ToString::to_string).collect();
        let addrs = if pod.addresses.is_empty() {
            "(loopback)".to_owned()
        } else {
            join(&pod.addresses)
        };
        rows.push((
            pod.netns.name().to_owned(),
            addrs,
            format!("pod: {}", who.join(", ")),
        ));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    println!();
    println!("  {:<w0$}  {:<w1$}  ROLE", "NETNS", "ADDRESS");
    for (netns, addr, role) in rows {
        println!("  {netns:<w0$}  {addr:<w1$}  {role}");
    }
    println!(
        "  DNS: dnsmasq on {}{}",
        dns.address,
        dns.workload
            .as_ref()
            .map(|w| format!(", in the pod and cgroup of {w}"))
            .unwrap_or_else(|| ", on the node".to_owned())
    );
    println!(
        "  cgroups: {} workloads under {} (the agent's --cgroup-root)",
        sim.workloads().len(),
        sim.cgroup_root().display()
    );
}

fn join(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Counts of checks.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn mark(&mut self, mark: Mark) -> &'static str {
        match mark {
            Mark::Pass => {
                self.passed += 1;
                "✓"
            }
            Mark::Fail => {
                self.failed += 1;
                "✗"
            }
        }
    }

    fn check(&mut self, ok: bool) -> &'static str {
        self.mark(if ok { Mark::Pass } else { Mark::Fail })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Pass,
    Fail,
}

struct Demo<'a> {
    sim: &'a SimNode,
    agent_exe: &'a Path,
    helper_exe: &'a Path,
    baseline: bool,
    print_agent_log: bool,
}

impl Demo<'_> {
    fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let flows = derive_flows(self.sim);
        let mut listeners = start_listeners(self.sim, &flows)?;
        signals::check()?;

        let mut agent = None;
        if !self.baseline {
            let mut started = AgentProc::start(self.sim, self.agent_exe)?;
            let outcome = started.wait_ready(self.sim);
            agent = Some(started);
            outcome?;
        }
        let result = self.flows_and_fail_closed(&flows, &mut listeners, agent.as_mut(), report);
        if let Some(agent) = &agent {
            if self.print_agent_log || report.failed > 0 || result.is_err() {
                println!();
                println!("Agent log ({}):", agent.log.display());
                for line in agent.log().lines() {
                    println!("  {}", trim_timestamp(line));
                }
            }
        }
        result
    }

    fn flows_and_fail_closed(
        &self,
        flows: &[Flow],
        listeners: &mut Listeners,
        agent: Option<&mut AgentProc>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        println!();
        if self.baseline {
            println!(
                "Flows without the agent (the baseline: nothing is enforced, so everything \
                 connects):"
            );
        } else {
            println!(
                "Flows (expected: `egress-agent explain` on the agent's plan; observed: a real \
                 connection from the workload's cgroup and pod):"
            );
        }
        println!();
        let width = flows
            .iter()
            .map(|f| f.title().chars().count())
            .max()
            .unwrap_or(0);
        println!("   {:<width$}  {:<9} OBSERVED", "FLOW", "EXPECTED");
        let began = Instant::now();
        for flow in flows {
            signals::check()?;
            let seen = self.observe(flow, listeners)?;
            let mark = flow.judge(&seen, self.baseline);
            let sign = report.mark(mark);
            println!(
                "{sign}  {:<width$}  {:<9} {}",
                flow.title(),
                flow.expected_word(self.baseline),
                seen.describe()
            );
            for line in flow.explanation(self.baseline) {
                println!("     {line}");
            }
        }
        println!(
            "({} flows in {:.1} s)",
            flows.len(),
            began.elapsed().as_secs_f32()
        );
        // The real mesh takes the listeners' places for the requests (the
        // proxy's address, the gateway's ports), then gives them back.
        if self.baseline {
            web::show(self.sim, None, report)?;
        } else {
            *listeners = Listeners::default();
            let mesh = Mesh::start(self.sim, self.agent_exe)
                .context("starting the sidecars and the gateway")?;
            web::show(self.sim, Some(&mesh), report)?;
            drop(mesh);
            *listeners = start_listeners(self.sim, flows)?;
        }
        let Some(agent) = agent else {
            return Ok(());
        };
        self.fail_closed(flows, listeners, agent, report)
    }

    /// SIGKILL → still denied → restart adopts → uninstall → passes.
    fn fail_closed(
        &self,
        flows: &[Flow],
        listeners: &Listeners,
        agent: &mut AgentProc,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let Some(deny) = flows.iter().find(|f| {
            !f.outside_cgroup
                && matches!(&f.expect, Expect::Decided(d) if d.verdict == Verdict::Deny)
                && matches!(f.action, Action::Connect(Proto::Tcp))
        }) else {
            println!("\n(no denied TCP flow to show fail-closed behaviour with)");
            return Ok(());
        };
        let allow = flows.iter().find(|f| {
            !f.outside_cgroup
                && f.from == deny.from
                && matches!(&f.expect, Expect::Decided(d) if d.verdict == Verdict::Allow)
        });
        let pin_dir = self.sim.pin_dir();
        println!();
        println!("Fail closed (flow: {}):", deny.title());

        signals::check()?;
        let links = pinned_link_ids(pin_dir);
        let pid = agent.pid();
        agent.kill()?;
        let seen = self.observe(deny, listeners)?;
        let sign = report.check(seen.outcome == Outcome::Eperm);
        println!(
            "{sign}  SIGKILL the agent (pid {pid}): still {} with no agent running ({} links \
             still pinned)",
            seen.describe(),
            pinned_link_ids(pin_dir).len()
        );

        signals::check()?;
        let began = Instant::now();
        agent.restart(self.sim)?;
        let adopted = pinned_link_ids(pin_dir);
        let sign = report.check(!links.is_empty() && adopted == links);
        println!(
            "{sign}  restart the agent (pid {}): it adopted the pinned links (ids {} unchanged) \
             and re-applied the policy in {} ms",
            agent.pid(),
            adopted
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            began.elapsed().as_millis()
        );
        let seen = self.observe(deny, listeners)?;
        let mut line = format!("{}: {}", deny.title(), seen.describe());
        let mut ok = seen.outcome == Outcome::Eperm;
        if let Some(allow) = allow {
            let seen = self.observe(allow, listeners)?;
            ok &= allow.judge(&seen, false) == Mark::Pass;
            let _ = write!(line, "; {}: {}", allow.title(), seen.describe());
        }
        let sign = report.check(ok);
        println!("{sign}  {line}");

        signals::check()?;
        let status = agent.terminate()?;
        let sign = report.check(status.success());
        println!("{sign}  SIGTERM the agent: exited ({status}); enforcement stays pinned");

        signals::check()?;
        let output = agent.uninstall(self.sim)?;
        let gone = !pin_dir.exists() && !self.sim.has_backstop_table();
        let sign = report.check(gone);
        println!("{sign}  egress-agent uninstall:");
        for line in output.lines() {
            println!("       {line}");
        }
        let seen = self.observe(deny, listeners)?;
        let sign = report.check(seen.outcome == Outcome::Ok);
        println!(
            "{sign}  {}: {} once uninstalled: the denials came from the agent",
            deny.title(),
            seen.describe()
        );
        Ok(())
    }

    /// Runs one flow for real.
    fn observe(&self, flow: &Flow, listeners: &Listeners) -> anyhow::Result<Seen> {
        let sim = self.sim;
        let workload = sim
            .workload(&flow.from)
            .ok_or_else(|| anyhow!("no Workload {}", flow.from))?;
        let pod = &sim.pods()[workload.pod];
        let client = if flow.outside_cgroup {
            Client::outside(&pod.netns)
        } else {
            Client::in_cgroup(&pod.netns, &workload.cgroup)
        };
        let counters_before = flow
            .outside_cgroup
            .then(|| sim.backstop_counters().ok())
            .flatten();
        if let Some(proxy) = &flow.proxy {
            if let Some(l) = listeners.proxies.get(proxy) {
                l.drain();
            }
        }
        let mut seen = Seen {
            outcome: Outcome::Ok,
            answer: None,
            backstop_drops: None,
            proxied: false,
        };
        let probe = |result: anyhow::Result<Outcome>| -> anyhow::Result<Outcome> {
            result.map_err(|e| match signals::received() {
                Some(_) => anyhow!("interrupted"),
                None => e,
            })
        };
        match &flow.action {
            Action::Connect(proto) => {
                seen.outcome = probe(client.connect(flow.dst, *proto, CONNECT_TIMEOUT))?;
            }
            Action::Sendto => seen.outcome = probe(client.sendto(flow.dst))?,
            Action::DnsQuery(name) => {
                let (outcome, answer) = self.dns_query(&workload.cgroup, &pod.netns, flow, name)?;
                seen.outcome = outcome;
                seen.answer = answer;
            }
        }
        if flow.outside_cgroup {
            if let Ok(after) = sim.backstop_counters() {
                let packets = |c: &egress_agent::dataplane::nft::BackstopCounts| -> u64 {
                    c.iter().map(|(_, v)| v.packets).sum()
                };
                let before = counters_before.as_ref().map_or(0, packets);
                let after = packets(&after);
                // An apply restarts the counters; then everything is new.
                seen.backstop_drops = Some(after.checked_sub(before).unwrap_or(after));
            }
        }
        if let Some(proxy) = &flow.proxy {
            seen.proxied = listeners
                .proxies
                .get(proxy)
                .is_some_and(|l| l.next_peer(Duration::from_millis(200)).is_some());
        }
        Ok(seen)
    }

    fn dns_query(
        &self,
        cgroup: &Path,
        netns: &integration_tests::Netns,
        flow: &Flow,
        name: &str,
    ) -> anyhow::Result<(Outcome, Option<String>)> {
        let out = Command::new(self.helper_exe)
            .arg("dns-query")
            .arg("--cgroup")
            .arg(cgroup)
            .args(["--netns", netns.name()])
            .args(["--server", &flow.dst.to_string()])
            .arg(name)
            .stderr(Stdio::inherit())
            .output()
            .context("running the DNS query helper")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(result) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            if signals::received().is_some() {
                bail!("interrupted");
            }
            bail!("the DNS query helper failed ({})", out.status);
        };
        let mut words = result.split_whitespace();
        let outcome = match words.next() {
            Some("ok") => Outcome::Ok,
            Some("eperm") => Outcome::Eperm,
            Some("timeout") => Outcome::Timeout,
            Some("refused") => Outcome::Refused,
            other => Outcome::Other(other.unwrap_or_default().to_owned()),
        };
        let answer = words.collect::<Vec<_>>().join(" ");
        Ok((outcome, (!answer.is_empty()).then_some(answer)))
    }
}

/// The `dns-query` helper: join the cgroup, then the namespace (the order
/// matters: the cgroup2 mount is only reachable before), then ask.
fn dns_query_helper(
    cgroup: &Path,
    netns: &str,
    server: SocketAddr,
    timeout_ms: u64,
    name: &str,
) -> ExitCode {
    let setup = node::enter_cgroup(cgroup).and_then(|()| node::enter_netns(netns));
    if let Err(err) = setup {
        eprintln!("egress-demo dns-query: {err:#}");
        return ExitCode::FAILURE;
    }
    let timeout = Duration::from_millis(timeout_ms);
    let line = match dns::query(server, name, dns::RecordType::A, timeout) {
        Ok(answer) if answer.rcode == 0 => {
            let ttl = answer.ttl.map(|t| format!(" ttl {t}s")).unwrap_or_default();
            format!("ok {name} → {}{ttl}", join(&answer.addresses))
        }
        Ok(answer) => format!("ok rcode={}", answer.rcode),
        Err(err) => match err.raw_os_error() {
            Some(libc::EPERM) => "eperm".to_owned(),
            _ if err.kind() == std::io::ErrorKind::TimedOut => "timeout".to_owned(),
            Some(libc::ECONNREFUSED) => "refused".to_owned(),
            _ => format!("errno={} {err}", err.raw_os_error().unwrap_or(0)),
        },
    };
    println!("RESULT {line}");
    ExitCode::SUCCESS
}

/// What a flow does.
#[derive(Clone, Debug)]
enum Action {
    /// TCP connect, or UDP connect + send.
    Connect(Proto),
    /// An unconnected UDP sendto.
    Sendto,
    /// A real DNS question for this name (UDP).
    DnsQuery(String),
}

/// What should happen.
#[derive(Clone, Debug)]
enum Expect {
    /// What the plan decides.
    Decided(Decision),
    /// Forwarded by the node from a workload address that is not a
    /// gateway's to outside the cluster: the nftables backstop drops it.
    Backstop,
}

struct Flow {
    from: ObjectId,
    /// Run from the pod's namespace but in no workload's cgroup.
    outside_cgroup: bool,
    action: Action,
    dst: SocketAddr,
    protocol: Protocol,
    /// How the destination is named: a DNS name or a workload.
    to: String,
    expect: Expect,
    /// Extra words for the rule line.
    note: Option<String>,
    /// The proxy a captured flow would be redirected to.
    proxy: Option<SocketAddr>,
}

impl Flow {
    fn title(&self) -> String {
        let proto = match (&self.action, self.protocol) {
            (Action::DnsQuery(_), _) => "udp DNS query".to_owned(),
            (Action::Sendto, _) => "udp sendto".to_owned(),
            (_, p) => p.to_string().to_ascii_lowercase(),
        };
        let from = if self.outside_cgroup {
            format!("{} pod, no cgroup", self.from)
        } else {
            self.from.to_string()
        };
        format!("{from} → {} {}/{proto}", self.to, self.dst)
    }

    fn expected_word(&self, baseline: bool) -> &'static str {
        if baseline {
            return "ok";
        }
        match &self.expect {
            Expect::Decided(d) => verdict_word(&d.verdict),
            Expect::Backstop => "nft drop",
        }
    }

    fn explanation(&self, baseline: bool) -> Vec<String> {
        let mut lines = Vec::new();
        let with_agent = |what: String| {
            if baseline {
                format!("with the agent: {what}")
            } else {
                what
            }
        };
        match &self.expect {
            Expect::Decided(d) => {
                let mut line = if baseline {
                    format!("{}, {}", verdict_word(&d.verdict), d.reason)
                } else {
                    d.reason.to_string()
                };
                if let Some(note) = &self.note {
                    let _ = write!(line, "; {note}");
                }
                lines.push(with_agent(line));
            }
            Expect::Backstop => lines.push(with_agent(
                "nftables backstop: forwarded from a workload address that is not a gateway's \
                 to outside clusterCIDRs"
                    .to_owned(),
            )),
        }
        lines
    }

    fn judge(&self, seen: &Seen, baseline: bool) -> Mark {
        if baseline {
            return if seen.outcome == Outcome::Ok {
                Mark::Pass
            } else {
                Mark::Fail
            };
        }
        let matches = |d: &Decision| match d.verdict {
            Verdict::Allow => {
                seen.outcome == Outcome::Ok
                    && match &self.action {
                        // A DNS answer must be what the node's DNS serves.
                        Action::DnsQuery(_) => seen.answer.is_some(),
                        _ => true,
                    }
            }
            Verdict::Deny => seen.outcome == Outcome::Eperm,
            Verdict::Redirect { .. } => seen.outcome == Outcome::Ok && seen.proxied,
        };
        match &self.expect {
            Expect::Decided(d) => {
                if matches(d) {
                    Mark::Pass
                } else {
                    Mark::Fail
                }
            }
            Expect::Backstop => {
                if seen.outcome == Outcome::Timeout && seen.backstop_drops.unwrap_or(0) > 0 {
                    Mark::Pass
                } else {
                    Mark::Fail
                }
            }
        }
    }
}

fn verdict_word(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Redirect { .. } => "redirect",
    }
}

/// What a flow did.
struct Seen {
    outcome: Outcome,
    /// A DNS query's answer.
    answer: Option<String>,
    /// Packets the backstop dropped meanwhile.
    backstop_drops: Option<u64>,
    /// Whether the redirect proxy saw the connection.
    proxied: bool,
}

impl Seen {
    fn describe(&self) -> String {
        let mut text = match &self.outcome {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Eperm => "EPERM".to_owned(),
            Outcome::Refused => "ECONNREFUSED".to_owned(),
            Outcome::Timeout => "timeout".to_owned(),
            Outcome::Other(other) => other.clone(),
        };
        if let Some(answer) = &self.answer {
            let _ = write!(text, " ({answer})");
        }
        if let Some(drops) = self.backstop_drops {
            let _ = write!(
                text,
                " (nft counter forward_denied +{drops} packet{})",
                if drops == 1 { "" } else { "s" }
            );
        }
        if self.proxied {
            text.push_str(" (reached the proxy)");
        }
        text
    }
}

/// The plan with every `allowedHosts` name replaced by the addresses the
/// node's DNS gives it: what the agent programs once it has resolved them.
fn resolved_plan(plan: &Plan, records: &BTreeMap<String, Vec<IpAddr>>) -> Plan {
    let mut resolved = plan.clone();
    for w in &mut resolved.workloads {
        let Some(hosts) = w.gateway.as_mut().and_then(|g| g.allowed_hosts.as_mut()) else {
            continue;
        };
        *hosts = hosts
            .iter()
            .flat_map(|h| match &h.host {
                HostName::Dns(name) => records
                    .get(name)
                    .into_iter()
                    .flatten()
                    .map(|a| AllowedHost {
                        host: HostName::Net(IpNet::from(*a)),
                        ports: h.ports.clone(),
                    })
                    .collect::<Vec<_>>(),
                HostName::Net(_) => vec![h.clone()],
            })
            .collect();
    }
    resolved
}

/// The flows the plan says something about, in the order a reader wants
/// them: isolated workloads (those a NetworkPolicy selects) first, then
/// gateways, captured workloads, the rest, and the node backstop.
fn derive_flows(sim: &SimNode) -> Vec<Flow> {
    let plan = sim.plan();
    let model = sim.model();
    let records = &sim.dns().records;
    let resolved = resolved_plan(plan, records);
    let (ext_name, ext) = records
        .iter()
        .find_map(|(name, addrs)| {
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .map(|a| (name.clone(), *a))
        })
        .unwrap_or_else(|| ("internet".to_owned(), IpAddr::V4(SimNode::INTERNET_V4)));
    let decide_on = |p: &Plan, w: &WorkloadPlan, dst: SocketAddr, protocol| {
        let wp = p.workload(&w.id).unwrap_or(w);
        let mut d = decide(
            p,
            wp,
            Destination {
                ip: dst.ip(),
                port: dst.port(),
                protocol,
            },
        );
        // Name the allowed hosts as the policy does, not as resolved.
        if let Reason::GatewayAllowList { hosts, .. } = &mut d.reason {
            if let Some(names) = plan
                .workload(&w.id)
                .and_then(|o| o.gateway.as_ref())
                .and_then(|g| g.allowed_hosts.as_ref())
            {
                *hosts = names.iter().map(|h| h.host.to_string()).collect();
            }
        }
        d
    };
    let placed = |w: &&WorkloadPlan| {
        sim.pod_of(&w.id)
            .is_some_and(|pod| !pod.addresses.is_empty())
    };
    let flow = |w: &WorkloadPlan, action: Action, dst: SocketAddr, protocol, to: String| Flow {
        from: w.id.clone(),
        outside_cgroup: false,
        action,
        dst,
        protocol,
        to,
        expect: Expect::Decided(decide_on(&resolved, w, dst, protocol)),
        note: None,
        proxy: None,
    };
    let internet = |port| SocketAddr::new(ext, port);
    let ext6 = records
        .get(&ext_name)
        .and_then(|addrs| addrs.iter().find(|a| a.is_ipv6()).copied())
        .unwrap_or(IpAddr::V6(SimNode::INTERNET_V6));
    let mut flows = Vec::new();

    let isolated: Vec<&WorkloadPlan> = plan
        .workloads
        .iter()
        .filter(placed)
        .filter(|w| {
            w.gateway.is_none()
                && w.capture.is_none()
                && w.proxy_for.is_empty()
                && matches!(w.egress, Egress::Isolated { .. })
        })
        .collect();
    for w in &isolated {
        flows.push(flow(
            w,
            Action::Connect(Proto::Tcp),
            internet(443),
            Protocol::Tcp,
            ext_name.clone(),
        ));
        // Over IPv6 too (connect6), when the pod has an IPv6 address.
        if w.addresses.iter().any(IpAddr::is_ipv6) {
            flows.push(flow(
                w,
                Action::Connect(Proto::Tcp),
                SocketAddr::new(ext6, 443),
                Protocol::Tcp,
                ext_name.clone(),
            ));
        }
        let own = sim
            .pod_of(&w.id)
            .map(|p| p.addresses.clone())
            .unwrap_or_default();
        for peer in plan.workloads.iter().filter(|p| !p.addresses.is_empty()) {
            let Some(addr) = peer.addresses.first().copied() else {
                continue;
            };
            if own.contains(&addr) {
                continue;
            }
            let ports = model
                .workload(&peer.id)
                .map(|m| m.ports.clone())
                .unwrap_or_default();
            for port in ports {
                let dst = SocketAddr::new(addr, port.port);
                let is_dns = sim.dns().address == dst && port.protocol == Protocol::Udp;
                let action = match port.protocol {
                    _ if is_dns => Action::DnsQuery(ext_name.clone()),
                    Protocol::Tcp => Action::Connect(Proto::Tcp),
                    Protocol::Udp => Action::Connect(Proto::Udp),
                    Protocol::Sctp => continue,
                };
                flows.push(flow(w, action, dst, port.protocol, peer.id.to_string()));
            }
        }
        flows.push(flow(
            w,
            Action::Sendto,
            internet(443),
            Protocol::Udp,
            ext_name.clone(),
        ));
    }

    for w in plan.workloads.iter().filter(placed) {
        let Some(role) = &w.gateway else { continue };
        match &role.allowed_hosts {
            None => {
                for port in [443, 22] {
                    flows.push(flow(
                        w,
                        Action::Connect(Proto::Tcp),
                        internet(port),
                        Protocol::Tcp,
                        ext_name.clone(),
                    ));
                }
            }
            Some(hosts) => {
                let mut first = None;
                for host in hosts {
                    let (addr, label, note) = match &host.host {
                        HostName::Dns(name) => {
                            let Some(addr) = sim.host_address(name) else {
                                continue;
                            };
                            let note = format!(
                                "allowedHosts {name}, resolved by the node's DNS ({})",
                                sim.dns().address
                            );
                            (addr, name.clone(), Some(note))
                        }
                        HostName::Net(net) => {
                            let addr = if net.prefix_len() == net.max_prefix_len() {
                                net.addr()
                            } else {
                                net.hosts().next().unwrap_or(net.addr())
                            };
                            (addr, net.to_string(), Some(format!("allowedHosts {net}")))
                        }
                    };
                    first.get_or_insert((addr, label.clone()));
                    let ports: Vec<(Protocol, u16)> = if host.ports.is_empty() {
                        vec![(Protocol::Tcp, 443)]
                    } else {
                        host.ports.clone()
                    };
                    for (protocol, port) in ports {
                        let proto = match protocol {
                            Protocol::Tcp => Proto::Tcp,
                            Protocol::Udp => Proto::Udp,
                            Protocol::Sctp => continue,
                        };
                        let dst = SocketAddr::new(addr, port);
                        let mut f = flow(w, Action::Connect(proto), dst, protocol, label.clone());
                        f.note = note.clone();
                        flows.push(f);
                    }
                }
                if let Some((addr, label)) = first {
                    let dst = SocketAddr::new(addr, 22);
                    flows.push(flow(
                        w,
                        Action::Connect(Proto::Tcp),
                        dst,
                        Protocol::Tcp,
                        label,
                    ));
                }
            }
        }
    }

    for w in plan.workloads.iter().filter(placed) {
        let Some(capture) = &w.capture else { continue };
        let dst = internet(443);
        let redirected = matches!(
            decide_on(&resolved, w, dst, Protocol::Tcp).verdict,
            Verdict::Redirect { .. }
        );
        let mut f = flow(
            w,
            Action::Connect(Proto::Tcp),
            dst,
            Protocol::Tcp,
            ext_name.clone(),
        );
        if redirected {
            // The kernel rewrites the connect: the proxy must see it.
            f.proxy = Some(capture.proxy);
        }
        flows.push(f);
    }

    let rest = plan.workloads.iter().filter(|w| {
        sim.pod_of(&w.id).is_some()
            && w.gateway.is_none()
            && w.capture.is_none()
            && !isolated.iter().any(|i| i.id == w.id)
    });
    for w in rest {
        flows.push(flow(
            w,
            Action::Connect(Proto::Tcp),
            internet(443),
            Protocol::Tcp,
            ext_name.clone(),
        ));
    }

    // The backstop: a process in a pod but in no workload's cgroup, so no
    // eBPF program decides for it; the node still drops what it forwards.
    let node_rules = &plan.node;
    let source = isolated
        .iter()
        .copied()
        .chain(plan.workloads.iter().filter(placed))
        .find(|w| {
            w.gateway.is_none()
                && w.addresses
                    .iter()
                    .any(|a| a.is_ipv4() && node_rules.workload_addresses.contains(a))
        });
    if let Some(w) = source {
        if !node_rules.cluster_cidrs.is_empty() {
            let mut f = flow(
                w,
                Action::Connect(Proto::Tcp),
                internet(443),
                Protocol::Tcp,
                ext_name.clone(),
            );
            f.outside_cgroup = true;
            f.expect = Expect::Backstop;
            flows.push(f);
        }
    }
    flows
}

/// The listeners the flows connect to, killed on drop.
#[derive(Default)]
struct Listeners {
    _servers: Vec<Served>,
    proxies: BTreeMap<SocketAddr, Served>,
}

fn start_listeners(sim: &SimNode, flows: &[Flow]) -> anyhow::Result<Listeners> {
    let mut wanted: BTreeMap<(String, SocketAddr, bool), ()> = BTreeMap::new();
    let dns = sim.dns().address;
    for flow in flows {
        let tcp = match flow.action {
            Action::Connect(Proto::Tcp) => true,
            Action::Connect(Proto::Udp) | Action::Sendto => false,
            Action::DnsQuery(_) => continue,
        };
        if flow.dst.ip() == dns.ip() && flow.dst.port() == dns.port() {
            continue; // dnsmasq answers on both protocols
        }
        let owner = sim
            .pods()
            .iter()
            .find(|p| p.addresses.contains(&flow.dst.ip()));
        let (netns, bind) = match owner {
            Some(pod) => (pod.netns.name().to_owned(), flow.dst),
            // The internet's web sites already take these.
            None if tcp && [HTTP_PORT, HTTPS_PORT].contains(&flow.dst.port()) => continue,
            None => {
                // `[::]` is dual-stack: it takes IPv4 as well.
                (
                    sim.internet().name().to_owned(),
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), flow.dst.port()),
                )
            }
        };
        wanted.insert((netns, bind, tcp), ());
    }
    let mut servers = Vec::new();
    for (netns, bind, tcp) in wanted.into_keys() {
        let ns = std::iter::once(sim.internet())
            .chain(sim.pods().iter().map(|p| &p.netns))
            .find(|n| n.name() == netns)
            .expect("a namespace of the node");
        let proto = if tcp { Proto::Tcp } else { Proto::Udp };
        servers.push(
            sim.listen(ns, bind, proto)
                .with_context(|| format!("listening on {bind} in {netns}"))?,
        );
    }
    let mut proxies = BTreeMap::new();
    for flow in flows {
        let Some(proxy) = flow.proxy else { continue };
        if proxies.contains_key(&proxy) {
            continue;
        }
        let Some(pod) = sim.pod_of(&flow.from) else {
            continue;
        };
        proxies.insert(
            proxy,
            sim.listen(&pod.netns, proxy, Proto::Tcp)
                .with_context(|| format!("listening as the proxy on {proxy}"))?,
        );
    }
    Ok(Listeners {
        _servers: servers,
        proxies,
    })
}

/// The agent, run on the node as a DaemonSet would be; killed on drop.
struct AgentProc {
    exe: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProc {
    fn start(sim: &SimNode, exe: &Path) -> anyhow::Result<Self> {
        if sim.pin_dir().exists() {
            bail!("{} exists already", sim.pin_dir().display());
        }
        let mut agent = Self {
            exe: exe.to_owned(),
            child: None,
            log: sim.scratch_dir().join("agent.log"),
        };
        agent.spawn(sim)?;
        Ok(agent)
    }

    fn args(&self, sim: &SimNode) -> Vec<String> {
        vec![
            "run".into(),
            "--policies".into(),
            sim.policies_dir().display().to_string(),
            "--bpffs".into(),
            sim.pin_dir().display().to_string(),
            "--cgroup-root".into(),
            sim.cgroup_root().display().to_string(),
            "--dns-server".into(),
            sim.dns().address.to_string(),
        ]
    }

    fn spawn(&mut self, sim: &SimNode) -> anyhow::Result<()> {
        let first = !self.log.exists();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let args = self.args(sim);
        let child = sim
            .node_command(&self.exe)?
            .args(&args)
            // The resolver's debug line tells when allowedHosts resolved.
            .env("EGRESS_LOG", "info,egress_agent::agent::run=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting egress-agent")?;
        if first {
            println!();
            println!(
                "agent: started (pid {}) in {}: egress-agent {}",
                child.id(),
                sim.node().name(),
                args.join(" ")
            );
        }
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the first `policy applied` and, when the gateways have
    /// DNS names, for the allow-list that has them resolved.
    fn wait_ready(&mut self, sim: &SimNode) -> anyhow::Result<()> {
        let began = Instant::now();
        let line = self.wait_for("policy applied", 1, Duration::from_secs(30))?;
        println!(
            "agent: {} ({} ms)",
            trim_log_line(&line),
            began.elapsed().as_millis()
        );
        let allowed = egress_agent::resolve::dns_names(sim.plan());
        if allowed.is_empty() {
            return Ok(());
        }
        // The agent resolves before its first apply when it can (bounded
        // wait); otherwise the allow-list follows the first answer.
        let log = self.log();
        let resolved_first = match (
            log.find("allowedHosts addresses changed"),
            log.find("data plane programmed"),
        ) {
            (Some(resolved), Some(programmed)) => resolved < programmed,
            _ => false,
        };
        let resolved = if resolved_first {
            Ok(String::new())
        } else {
            self.wait_for("allowedHosts addresses changed", 1, Duration::from_secs(15))
                .and_then(|_| {
                    // Logged before the new allow-list is written; this follows.
                    let programmed = self.log().matches("data plane programmed").count();
                    self.wait_for(
                        "data plane programmed",
                        programmed + 1,
                        Duration::from_secs(5),
                    )
                })
        };
        let names: Vec<String> = allowed
            .iter()
            .map(|n| match sim.dns().records.get(n) {
                Some(a) => format!("{n} → {}", join(a)),
                None => format!("{n} → (not served here)"),
            })
            .collect();
        match resolved {
            Ok(_) => println!(
                "agent: allowedHosts resolved through {} and programmed: {} ({} ms)",
                sim.dns().address,
                names.join(", "),
                began.elapsed().as_millis()
            ),
            Err(err) => println!("agent: allowedHosts not resolved yet: {err:#}"),
        }
        Ok(())
    }

    /// Waits until the log has `needle` `count` times; returns the last
    /// such line.
    fn wait_for(&mut self, needle: &str, count: usize, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            signals::check()?;
            let log = self.log();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
            if lines.len() >= count {
                return Ok(lines.last().copied().unwrap_or_default().to_owned());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("egress-agent exited ({status}) before logging {needle:?}");
                }
            }
            if Instant::now() > deadline {
                bail!("egress-agent did not log {needle:?} within {within:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid()).context("pid")?;
        if pid == 0 {
            bail!("the agent is not running");
        }
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGKILL)?;
        if let Some(mut child) = self.child.take() {
            child.wait()?;
        }
        Ok(())
    }

    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let mut child = self.child.take().context("the agent is not running")?;
        Ok(child.wait()?)
    }

    fn restart(&mut self, sim: &SimNode) -> anyhow::Result<()> {
        let before = self.log().matches("policy applied").count();
        self.spawn(sim)?;
        self.wait_for("policy applied", before + 1, Duration::from_secs(30))?;
        Ok(())
    }

    fn uninstall(&self, sim: &SimNode) -> anyhow::Result<String> {
        let out = sim
            .node_command(&self.exe)?
            .arg("uninstall")
            .arg("--bpffs")
            .arg(sim.pin_dir())
            .output()
            .context("running egress-agent uninstall")?;
        if !out.status.success() {
            bail!(
                "egress-agent uninstall failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `2026-01-01T00:00:00.000000Z  INFO target: message k=v` → `message k=v`.
fn trim_log_line(line: &str) -> String {
    let line = trim_timestamp(line);
    let line = line
        .trim_start_matches(|c: char| c.is_ascii_uppercase())
        .trim_start();
    match line.split_once(": ") {
        Some((target, rest)) if !target.contains(' ') => rest.to_owned(),
        _ => line.to_owned(),
    }
}

fn trim_timestamp(line: &str) -> &str {
    match line.split_once(' ') {
        Some((first, rest)) if first.contains('T') && first.ends_with('Z') => rest.trim_start(),
        _ => line,
    }
}

/// The ids of the links pinned under `<pin_dir>/links`, sorted.
fn pinned_link_ids(pin_dir: &Path) -> Vec<u32> {
    let mut ids: Vec<u32> = fs::read_dir(pin_dir.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| link_id(&e.path()))
        .collect();
    ids.sort_unstable();
    ids
}

/// A pinned bpf_link's id: `BPF_OBJ_GET`, then the fd's `link_id` in
/// `/proc/self/fdinfo`.
fn link_id(pin: &Path) -> Option<u32> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = CString::new(pin.as_os_str().as_bytes()).ok()?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `attr` is a valid prefix of `union bpf_attr` for BPF_OBJ_GET
    // and `path` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a descriptor the kernel just gave us, owned from here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("link_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// SIGINT, SIGTERM and SIGHUP set a flag; the demo checks it between steps
/// and unwinds, so that every `Drop` runs and nothing is left behind.
mod signals {
    use super::*;

    static RECEIVED: AtomicI32 = AtomicI32::new(0);

    extern "C" fn on_signal(signal: libc::c_int) {
        RECEIVED.store(signal, Ordering::SeqCst);
    }

    pub fn install() {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only stores to an atomic, which is
            // async-signal-safe; the sigaction struct is fully initialised.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    }

    pub fn received() -> Option<i32> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    pub fn check() -> anyhow::Result<()> {
        match received() {
            Some(signal) => {
                let _ = std::io::stdout().flush();
                bail!("interrupted by signal {signal}")
            }
            None => Ok(()),
        }
    }
}
