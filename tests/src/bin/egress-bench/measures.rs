//! The five measures (see the issue: P1 redirect cost, P2 per-packet and
//! per-connection enforcement, P3 apply latency, P4 time to enforce a new
//! workload, P5 the agent's footprint). Each runs its variants side by
//! side, one repetition of every variant after the other, so that load
//! from elsewhere on the machine spreads over all of them alike.

use std::{fs, net::SocketAddr, process::Stdio, time::Duration};

use anyhow::{anyhow, bail, Context as _};
use integration_tests::{
    loadgen::{monotonic_ns, Rate, Until},
    scenario::id,
};

use crate::{
    baselines::{self, IPTABLES, IPTABLES_RESTORE},
    node::{
        self, in_pod, probe, run_in_netns, Bench, CLIENT, IPERF_PORT, OTHER_ACCEPT_PORT,
        PROXY_PORT, SERVER_ACCEPT_PORT, SERVER_OTHER_V4, SERVER_V4, SERVICE_DST,
    },
    samples::{Sample, Samples},
};

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub reps: usize,
    /// Seconds per P1 and P2 run.
    pub seconds: f64,
    /// P2's CIDR counts; the last is also P3's, P4's and P5's.
    pub cidr_counts: Vec<usize>,
    /// Seconds the agent idles for P5's CPU figure.
    pub idle_seconds: f64,
}

impl Plan {
    pub fn max_cidrs(&self) -> usize {
        self.cidr_counts.iter().copied().max().unwrap_or(0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    /// No mechanism at all: the limit.
    Bare,
    Ours,
    Iptables,
    /// P2 only: [`Variant::Iptables`]' list behind the conntrack
    /// `ESTABLISHED,RELATED` shortcut.
    IptablesEstablished,
    Nftables,
}

impl Variant {
    /// P1's: a redirect has no conntrack-shortcut variant.
    const REDIRECT: [Variant; 4] = [Self::Bare, Self::Ours, Self::Iptables, Self::Nftables];
    /// P2's.
    const FILTER: [Variant; 5] = [
        Self::Bare,
        Self::Ours,
        Self::Iptables,
        Self::IptablesEstablished,
        Self::Nftables,
    ];
}

// ---------------------------------------------------------------- P1

/// P1: TCP connects/s and latency from the client pod to a destination that
/// lands on the local accept-and-close proxy.
pub fn p1(bench: &Bench, plan: &Plan, out: &mut Samples) -> anyhow::Result<()> {
    eprintln!("P1 redirect: connects/s to the proxy on :{PROXY_PORT}");
    let netns = bench.pod_netns(CLIENT)?;
    let ours = bench.workload_cgroup(CLIENT)?;
    for run in 0..plan.reps {
        for variant in Variant::REDIRECT {
            let (cgroup, target) = match variant {
                Variant::Bare => (
                    bench.bare.path().to_owned(),
                    SocketAddr::from(([127, 0, 0, 1], PROXY_PORT)),
                ),
                Variant::Ours => (ours.clone(), SERVICE_DST),
                Variant::Iptables | Variant::IptablesEstablished | Variant::Nftables => {
                    (bench.bare.path().to_owned(), SERVICE_DST)
                }
            };
            match variant {
                Variant::Iptables => {
                    run_in_netns(&netns, IPTABLES_RESTORE, &[], Some(&baselines::istio_nat()))?;
                }
                Variant::Nftables => {
                    run_in_netns(
                        &netns,
                        "nft",
                        &["-f", "-"],
                        Some(&baselines::nft_redirect()),
                    )?;
                }
                Variant::Bare | Variant::Ours | Variant::IptablesEstablished => {}
            }
            let rate = connect_rate(&cgroup, &netns, target, plan.seconds);
            match variant {
                Variant::Iptables => {
                    run_in_netns(&netns, IPTABLES_RESTORE, &[], Some(&baselines::flush_nat()))?;
                }
                Variant::Nftables => {
                    run_in_netns(&netns, "nft", &["-f", "-"], Some(&baselines::nft_delete()))?;
                }
                Variant::Bare | Variant::Ours | Variant::IptablesEstablished => {}
            }
            let rate = rate.with_context(|| format!("P1 {variant:?}"))?;
            expect_connected(&rate, &format!("P1 {variant:?}"), "the proxy")?;
            let name = match variant {
                Variant::Bare => "direct",
                v => name(v),
            };
            for (metric, unit, value) in [
                ("connect_rate", "conn/s", rate.per_second()),
                ("connect_p50", "µs", rate.p50_us),
                ("connect_p99", "µs", rate.p99_us),
            ] {
                out.push(Sample {
                    measure: "p1",
                    metric,
                    unit,
                    variant: name,
                    cidrs: 0,
                    run,
                    value,
                });
            }
        }
    }
    Ok(())
}

fn name(v: Variant) -> &'static str {
    match v {
        Variant::Bare => "none",
        Variant::Ours => "ours",
        Variant::Iptables => "iptables",
        Variant::IptablesEstablished => "iptables-est",
        Variant::Nftables => "nftables",
    }
}

/// Fails unless (nearly) every connect of `rate` succeeded: otherwise the
/// figure would measure timeouts or refusals, not connects.
fn expect_connected(rate: &Rate, what: &str, destination: &str) -> anyhow::Result<()> {
    if rate.ok == 0 || rate.failed * 100 > rate.ok {
        bail!(
            "{what}: {} connects failed, {} succeeded (first error: {:?}): the destination does \
             not reach {destination}",
            rate.failed,
            rate.ok,
            rate.first_error
        );
    }
    Ok(())
}

fn connect_rate(
    cgroup: &std::path::Path,
    netns: &str,
    target: SocketAddr,
    seconds: f64,
) -> anyhow::Result<Rate> {
    let out = probe(cgroup, netns)
        .args(["connect-rate", &target.to_string()])
        .args(["--seconds", &seconds.to_string(), "--timeout-ms", "1000"])
        .stdin(Stdio::null())
        .output()
        .context("running egress-probe connect-rate")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().find_map(Rate::parse).ok_or_else(|| {
        anyhow!(
            "connect-rate printed no RATE line: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

// ---------------------------------------------------------------- P2

/// P2: from the client pod to the server pod (through the node, as between
/// two pods), with N CIDR rules: TCP throughput and small-packet UDP rate
/// on established flows, and new TCP connections per second to the
/// server's address, the last of the N (where a linear rule list pays on
/// every connection, shortcut or not).
pub fn p2(bench: &mut Bench, plan: &Plan, out: &mut Samples) -> anyhow::Result<()> {
    eprintln!("P2 enforcement per packet: iperf3 TCP and 64-byte UDP, new connections/s");
    let netns = bench.pod_netns(CLIENT)?;
    let ours = bench.workload_cgroup(CLIENT)?;
    let bare = bench.bare.path().to_owned();
    let server = SocketAddr::from((SERVER_V4, SERVER_ACCEPT_PORT));
    for &n in &plan.cidr_counts {
        let cidrs = node::cidrs(n);
        // The agent's rules stay loaded for the whole N: they only act on
        // the Workload's cgroup. The baselines' act on the whole pod, so
        // they are loaded around each of their runs.
        bench.set_cidrs(&cidrs)?;
        if n > 0 {
            expect_denied(bench, &ours, &netns)?;
        }
        let ipt = baselines::iptables_cidrs(&cidrs);
        let ipt_est = baselines::iptables_cidrs_established(&cidrs);
        let nft = baselines::nft_cidrs(&cidrs);
        for run in 0..plan.reps {
            for variant in Variant::FILTER {
                let cgroup = if variant == Variant::Ours {
                    &ours
                } else {
                    &bare
                };
                match variant {
                    Variant::Iptables => {
                        run_in_netns(&netns, IPTABLES_RESTORE, &[], Some(&ipt))?;
                    }
                    Variant::IptablesEstablished => {
                        run_in_netns(&netns, IPTABLES_RESTORE, &[], Some(&ipt_est))?;
                    }
                    Variant::Nftables => {
                        run_in_netns(&netns, "nft", &["-f", "-"], Some(&nft))?;
                    }
                    Variant::Bare | Variant::Ours => {}
                }
                let measured = iperf_pair(cgroup, &netns, plan.seconds).and_then(|pair| {
                    let rate = connect_rate(cgroup, &netns, server, plan.seconds)?;
                    Ok((pair, rate))
                });
                match variant {
                    Variant::Iptables | Variant::IptablesEstablished => {
                        run_in_netns(
                            &netns,
                            IPTABLES_RESTORE,
                            &[],
                            Some(&baselines::flush_filter()),
                        )?;
                    }
                    Variant::Nftables => {
                        run_in_netns(&netns, "nft", &["-f", "-"], Some(&baselines::nft_delete()))?;
                    }
                    Variant::Bare | Variant::Ours => {}
                }
                let what = format!("P2 {variant:?} n={n}");
                let ((gbits, kpps), rate) = measured.with_context(|| what.clone())?;
                expect_connected(&rate, &what, "the server")?;
                for (metric, unit, value) in [
                    ("tcp_throughput", "Gbit/s", gbits),
                    ("udp_rate", "kpkt/s", kpps),
                    ("connect_rate", "conn/s", rate.per_second()),
                    ("connect_p50", "µs", rate.p50_us),
                    ("connect_p99", "µs", rate.p99_us),
                ] {
                    out.push(Sample {
                        measure: "p2",
                        metric,
                        unit,
                        variant: name(variant),
                        cidrs: n,
                        run,
                        value,
                    });
                }
            }
        }
    }
    Ok(())
}

/// A sanity check: with the CIDR list in force, the agent must refuse the
/// server's other address, or the figures would measure nothing.
fn expect_denied(bench: &Bench, cgroup: &std::path::Path, netns: &str) -> anyhow::Result<()> {
    let target = SocketAddr::from((SERVER_OTHER_V4, OTHER_ACCEPT_PORT));
    let out = probe(cgroup, netns)
        .args(["connect", &format!("{target}/tcp"), "--timeout-ms", "1000"])
        .output()
        .context("running egress-probe connect")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("RESULT eperm") {
        bail!(
            "the agent does not enforce the CIDR list: {target} gave {:?}\nagent log:\n{}",
            text.trim(),
            tail(&bench.running.agent.log(), 20)
        );
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One TCP throughput run and one 64-byte UDP run: (Gbit/s, kpkt/s
/// received).
fn iperf_pair(cgroup: &std::path::Path, netns: &str, seconds: f64) -> anyhow::Result<(f64, f64)> {
    let tcp = iperf(cgroup, netns, seconds, &[])?;
    let gbits = tcp
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| anyhow!("iperf3 TCP: no end.sum_received.bits_per_second"))?
        / 1e9;
    let udp = iperf(
        cgroup,
        netns,
        seconds,
        &["--udp", "--bitrate", "0", "--length", "64"],
    )?;
    let sum = udp
        .pointer("/end/sum_received")
        .or_else(|| udp.pointer("/end/sum"))
        .ok_or_else(|| anyhow!("iperf3 UDP: no end.sum"))?;
    let field = |name: &str| sum.get(name).and_then(serde_json::Value::as_f64);
    let packets = field("packets").ok_or_else(|| anyhow!("iperf3 UDP: no packets"))?;
    let lost = field("lost_packets").unwrap_or(0.0);
    let secs = field("seconds").filter(|s| *s > 0.0).unwrap_or(seconds);
    Ok((gbits, (packets - lost).max(0.0) / secs / 1000.0))
}

/// [`iperf_once`], tried again after a failure: an iperf3 server may still
/// be closing the previous test when the next one connects.
fn iperf(
    cgroup: &std::path::Path,
    netns: &str,
    seconds: f64,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let mut attempt = 1;
    loop {
        match iperf_once(cgroup, netns, seconds, extra) {
            Ok(json) => return Ok(json),
            Err(e) if attempt < 3 => {
                eprintln!("  iperf3 failed ({e:#}); again");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => return Err(e),
        }
    }
}

fn iperf_once(
    cgroup: &std::path::Path,
    netns: &str,
    seconds: f64,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    // iperf3 takes whole seconds, and 0 means forever.
    let whole = seconds.round().max(1.0);
    let out = in_pod(cgroup, netns, "iperf3")?
        .args(["--client", &SERVER_V4.to_string()])
        .args(["--port", &IPERF_PORT.to_string()])
        .args(["--time", &format!("{whole}"), "--json"])
        .args(["--connect-timeout", "3000"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .context("running iperf3")?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing iperf3 --json")?;
    if let Some(error) = json.get("error").and_then(serde_json::Value::as_str) {
        bail!("iperf3: {error}");
    }
    if !out.status.success() {
        bail!("iperf3 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(json)
}

// ---------------------------------------------------------------- P3

/// P3: time from a policy change to enforcement, for N CIDRs: loading all
/// of them, and removing one (the server's).
pub fn p3(bench: &mut Bench, plan: &Plan, out: &mut Samples) -> anyhow::Result<()> {
    let n = plan.max_cidrs().max(2);
    eprintln!("P3 apply latency: {n} CIDRs, full and one-CIDR change");
    let netns = bench.pod_netns(CLIENT)?;
    let ours = bench.workload_cgroup(CLIENT)?;
    let full = node::cidrs(n);
    // The same list without the server: one CIDR removed.
    let minus_one: Vec<String> = full[..full.len() - 1].to_vec();
    let server = SocketAddr::from((SERVER_V4, SERVER_ACCEPT_PORT));
    let server_cidr = full.last().cloned().unwrap_or_default();
    for run in 0..plan.reps {
        // Ours: from the rename of the policy file into the watched
        // directory to the first connect with the new verdict.
        bench.set_cidrs(&full[..1])?;
        let full_ms = time_verdict(bench, &ours, &netns, server, Want::Ok, &full)?;
        let one_ms = time_verdict(bench, &ours, &netns, server, Want::Eperm, &minus_one)?;
        for (metric, value) in [("apply_full", full_ms), ("apply_one", one_ms)] {
            out.push(sample_ms("p3", metric, "ours", n, run, value));
        }

        // iptables: until iptables-restore (which replaces the table) has
        // returned; the one-CIDR change is one `iptables -D`.
        let took = run_in_netns(
            &netns,
            IPTABLES_RESTORE,
            &[],
            Some(&baselines::iptables_cidrs(&full)),
        )?;
        out.push(sample_ms("p3", "apply_full", "iptables", n, run, ms(took)));
        let args = [
            "-D",
            baselines::CIDR_CHAIN,
            "-d",
            &server_cidr,
            "-j",
            "ACCEPT",
        ];
        let took = run_in_netns(&netns, IPTABLES, &args, None)?;
        out.push(sample_ms("p3", "apply_one", "iptables", n, run, ms(took)));
        run_in_netns(
            &netns,
            IPTABLES_RESTORE,
            &[],
            Some(&baselines::flush_filter()),
        )?;

        // nftables: one `nft -f` transaction; the change is one `delete
        // element`.
        let took = run_in_netns(
            &netns,
            "nft",
            &["-f", "-"],
            Some(&baselines::nft_cidrs(&full)),
        )?;
        out.push(sample_ms("p3", "apply_full", "nftables", n, run, ms(took)));
        let delete = format!(
            "delete element ip {} allowed {{ {server_cidr} }}\n",
            baselines::NFT_TABLE
        );
        let took = run_in_netns(&netns, "nft", &["-f", "-"], Some(&delete))?;
        out.push(sample_ms("p3", "apply_one", "nftables", n, run, ms(took)));
        run_in_netns(&netns, "nft", &["-f", "-"], Some(&baselines::nft_delete()))?;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sample_ms(
    measure: &'static str,
    metric: &'static str,
    variant: &'static str,
    cidrs: usize,
    run: usize,
    value: f64,
) -> Sample {
    Sample {
        measure,
        metric,
        unit: "ms",
        variant,
        cidrs,
        run,
        value,
    }
}

#[derive(Clone, Copy)]
enum Want {
    Ok,
    Eperm,
}

/// Starts a probe in `cgroup` waiting for `want` on `target`, then writes
/// the NetworkPolicy with `cidrs`: milliseconds from the write to the
/// wanted verdict. Waits for the agent to finish applying before
/// returning.
fn time_verdict(
    bench: &mut Bench,
    cgroup: &std::path::Path,
    netns: &str,
    target: SocketAddr,
    want: Want,
    cidrs: &[String],
) -> anyhow::Result<f64> {
    let before = bench.applied();
    let waiter = waiter(cgroup, netns, target, want)?;
    let t0 = monotonic_ns();
    bench.put_policy(node::CIDR_POLICY_FILE, &node::cidr_policy(cidrs))?;
    let reached = waiter.wait()?;
    bench.wait_applied_after(before)?;
    Ok(reached.saturating_sub(t0) as f64 / 1e6)
}

/// A running `egress-probe until` in `cgroup` and `netns`, whose first
/// attempt did not have the wanted outcome yet.
fn waiter(
    cgroup: &std::path::Path,
    netns: &str,
    target: SocketAddr,
    want: Want,
) -> anyhow::Result<Until> {
    let want = match want {
        Want::Ok => "ok",
        Want::Eperm => "eperm",
    };
    Until::before_change(probe(cgroup, netns), &target.to_string(), want)
}

// ---------------------------------------------------------------- P4

/// P4: from creating a new Workload's cgroup and object to its first
/// denied connect, with `n` CIDRs already in force.
pub fn p4(bench: &mut Bench, plan: &Plan, out: &mut Samples) -> anyhow::Result<()> {
    let netns = bench.pod_netns(CLIENT)?;
    let target = SocketAddr::from((SERVER_OTHER_V4, OTHER_ACCEPT_PORT));
    let mut counts = vec![1, plan.max_cidrs()];
    counts.dedup();
    eprintln!("P4 time to enforce a new workload, with {counts:?} CIDRs in force");
    let mut serial = 0;
    for n in counts {
        bench.set_cidrs(&node::cidrs(n))?;
        for run in 0..plan.reps {
            serial += 1;
            let name = format!("newcomer-{serial}");
            // The probe waits in the staging cgroup (no Workload's: its
            // connects succeed), and is moved into the new cgroup at t0.
            let staging = bench.staging.path().to_owned();
            let waiter = waiter(&staging, &netns, target, Want::Eperm)?;
            let before = bench.applied();
            let t0 = monotonic_ns();
            let cgroup = bench.running.sim.add_workload(
                id(&format!("bench/{name}")),
                &format!("bench/{name}"),
                &id(CLIENT),
            )?;
            let dir = bench.workload_cgroup(&format!("bench/{name}"))?;
            fs::write(dir.join("cgroup.procs"), waiter.pid().to_string())
                .with_context(|| format!("moving the probe into {}", dir.display()))?;
            let yaml = format!(
                "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
                 metadata: {{name: {name}, namespace: bench, labels: {{app: client}}}}\n\
                 spec: {{cgroup: {cgroup}}}\n"
            );
            let file = format!("950-{name}.yaml");
            bench.put_policy(&file, &yaml)?;
            let reached = waiter.wait()?;
            bench.wait_applied_after(before)?;
            // Each run starts from the same state: the newcomer goes again
            // (its empty cgroup stays until the node is removed; the probe
            // ended with `wait`).
            let before = bench.applied();
            bench.remove_policy(&file)?;
            bench.wait_applied_after(before)?;
            out.push(sample_ms(
                "p4",
                "time_to_enforce",
                "ours",
                n,
                run,
                reached.saturating_sub(t0) as f64 / 1e6,
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- P5

/// P5: the agent's peak and steady RSS and its idle CPU, freshly started
/// with `n` CIDRs in force (SIGKILLed and restarted: it adopts its pins).
pub fn p5(bench: &mut Bench, plan: &Plan, out: &mut Samples) -> anyhow::Result<()> {
    let mut counts = vec![1, plan.max_cidrs()];
    counts.dedup();
    eprintln!("P5 footprint with {counts:?} CIDRs");
    for n in counts {
        bench.set_cidrs(&node::cidrs(n))?;
        bench.running.agent.kill()?;
        bench.running.agent.restart()?;
        let pid = bench
            .running
            .agent
            .pid()
            .ok_or_else(|| anyhow!("the agent is not running"))?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "egress-agent" {
            bail!("pid {pid} is {comm:?}, not egress-agent");
        }
        // Let start-up work (DNS, event readers) settle before idling.
        std::thread::sleep(Duration::from_millis(500));
        let ticks_before = cpu_ticks(pid)?;
        let idle = Duration::from_secs_f64(plan.idle_seconds);
        std::thread::sleep(idle);
        let ticks = cpu_ticks(pid)?.saturating_sub(ticks_before);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpu_percent = ticks as f64 / hz / idle.as_secs_f64() * 100.0;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let kib = |field: &str| -> anyhow::Result<f64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
        };
        let peak = kib("VmHWM:")? / 1024.0;
        let steady = kib("VmRSS:")? / 1024.0;
        for (metric, unit, value) in [
            ("rss_peak", "MiB", peak),
            ("rss_steady", "MiB", steady),
            ("idle_cpu", "% of a core", cpu_percent),
        ] {
            out.push(Sample {
                measure: "p5",
                metric,
                unit,
                variant: "ours",
                cidrs: n,
                run: 0,
                value,
            });
        }
    }
    Ok(())
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces; fields resume after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11, 12.
    let at = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))
    };
    Ok(at(11)? + at(12)?)
}
