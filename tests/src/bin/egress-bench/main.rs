//! `egress-bench`: the benchmarks of issue 6, run by `cargo xtask bench`.
//!
//! It builds a simulated node ([`node::Bench`]), runs the real agent on it,
//! measures P1–P5 against their baselines side by side, and writes every
//! raw sample as JSON (`--out`). It prints nothing but progress: `cargo
//! xtask bench` turns the samples into `docs/benchmarks.md` and the plots.
//!
//! Needs root, and `iptables-legacy`, `nft`, `iperf3`, `ip`, `nsenter`,
//! `dnsmasq` and `nginx` (the simulated node's). Everything it creates
//! (namespaces with their rules, cgroups, pins) is removed on exit, also
//! after an error; Ctrl-C is turned into an orderly stop.

mod baselines;
mod measures;
mod node;
mod samples;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Context as _};
use clap::Parser;

use crate::{
    measures::Plan,
    samples::{Meta, Samples},
};

#[derive(Parser)]
#[command(about = "Benchmarks of the egress enforcer against its baselines")]
struct Args {
    /// Where to write the raw samples (JSON).
    #[arg(long)]
    out: PathBuf,
    /// The reduced run (about a minute).
    #[arg(long)]
    quick: bool,
    /// Repetitions of every measure [default: 5; quick: 1].
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per P1 and P2 run [default: 2; quick: 0.5].
    #[arg(long)]
    seconds: Option<f64>,
    /// P2's CIDR counts (the largest is also P3's, P4's and P5's)
    /// [default: 0,1000,10000,100000; quick: 0,1000,10000].
    #[arg(long, value_delimiter = ',')]
    cidrs: Vec<usize>,
    /// Only these measures (p1 … p5) [default: all].
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

static STOP: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("egress-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        bail!("egress-bench needs root (network namespaces, cgroups, eBPF, iptables)");
    }
    locate_binaries()?;
    on_interrupt_stop();
    let mut plan = if args.quick {
        Plan {
            reps: args.reps.unwrap_or(1),
            seconds: args.seconds.unwrap_or(0.5),
            cidr_counts: vec![0, 1_000, 10_000],
            idle_seconds: 1.0,
        }
    } else {
        Plan {
            reps: args.reps.unwrap_or(5),
            seconds: args.seconds.unwrap_or(2.0),
            cidr_counts: vec![0, 1_000, 10_000, 100_000],
            idle_seconds: 10.0,
        }
    };
    if !args.cidrs.is_empty() {
        plan.cidr_counts.clone_from(&args.cidrs);
    }
    let started = Instant::now();
    let mut samples = Samples {
        meta: Meta {
            quick: args.quick,
            reps: plan.reps,
            seconds_per_run: plan.seconds,
            cidr_counts: plan.cidr_counts.clone(),
            ..Meta::collect()
        },
        samples: Vec::new(),
    };
    eprintln!(
        "egress-bench: {} reps, {} s per run, CIDR counts {:?}; load average {}",
        plan.reps, plan.seconds, plan.cidr_counts, samples.meta.loadavg_start
    );
    let mut bench = node::Bench::start()?;
    eprintln!(
        "egress-bench: node and agent up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let wanted = |m: &str| args.only.is_empty() || args.only.iter().any(|o| o == m);
    type Measure = fn(&mut node::Bench, &Plan, &mut Samples) -> anyhow::Result<()>;
    let all: [(&str, Measure); 5] = [
        ("p1", |b, p, s| measures::p1(b, p, s)),
        ("p2", measures::p2),
        ("p3", measures::p3),
        ("p4", measures::p4),
        ("p5", measures::p5),
    ];
    for (name, measure) in all {
        if !wanted(name) {
            continue;
        }
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let began = Instant::now();
        measure(&mut bench, &plan, &mut samples).with_context(|| format!("measure {name}"))?;
        eprintln!(
            "egress-bench: {name} done in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        // Written after every measure, so an interrupted run keeps what it
        // measured.
        samples.meta.loadavg_end = samples::loadavg();
        samples.meta.duration_s = started.elapsed().as_secs_f64();
        samples.write(&args.out)?;
    }
    drop(bench);
    samples.meta.duration_s = started.elapsed().as_secs_f64();
    samples.write(&args.out)?;
    eprintln!(
        "egress-bench: {} samples in {:.1} s → {}",
        samples.samples.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// The agent and the probe are this binary's siblings (`target/<profile>/`);
/// the fixtures find them through these variables.
fn locate_binaries() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe.parent().context("the binary's directory")?;
    for (var, name) in [
        ("EGRESS_AGENT", "egress-agent"),
        ("EGRESS_PROBE", "egress-probe"),
    ] {
        if std::env::var_os(var).is_some() {
            continue;
        }
        let path = dir.join(name);
        if !path.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p egress-agent -p \
                 integration-tests --bins` (cargo xtask bench does)",
                path.display()
            );
        }
        // Nothing else runs yet: no thread reads the environment.
        std::env::set_var(var, path);
    }
    Ok(())
}

/// SIGINT and SIGTERM set [`STOP`]: the run stops after the current
/// measure and its fixtures clean up. A second signal kills at once.
fn on_interrupt_stop() {
    extern "C" fn handler(_: libc::c_int) {
        if STOP.swap(true, Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(130) };
        }
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
