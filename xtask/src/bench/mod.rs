//! `cargo xtask bench`: the benchmarks against the baselines (issue 6).
//!
//! 1. checks that this machine can run them (root, cgroup2, bpffs, the
//!    eBPF toolchain, iptables, nft, iperf3 and the simulated node's tools);
//! 2. builds `egress-agent`, `egress-probe` and `egress-bench` in release
//!    mode;
//! 3. runs `egress-bench`, which measures and writes the raw samples;
//! 4. where the API server binary is cached, starts a real kube-apiserver
//!    (`cargo xtask k8s-pod-memory`'s code) with 10k pods and 1k
//!    NetworkPolicies (500 and 50 with `--quick`) and measures there the
//!    slim Pod cache and the agent's RSS (P5), P3 from an API watch event,
//!    and the churn (P6) ([`pod_cache`]; with `--quick` about 25 s once
//!    built, 5 s of churn); adds them to the samples;
//! 5. writes the report (`benchmarks.md`) and one SVG plot per measure.
//!
//! A full run writes `docs/benchmarks.md`, `docs/bench/*.svg` and
//! `docs/bench/samples.json`. `--quick` is a smoke run (under three
//! minutes) that writes the same files under `target/bench/`, so CI leaves
//! the repository clean. `--from FILE` only regenerates the report from
//! saved samples.

mod cluster;
mod plot;
mod pod_cache;
mod report;
mod samples;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _};

use crate::{
    host::{self, target_dir, workspace_root},
    run,
};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The reduced run (under three minutes); writes to target/bench/.
    #[arg(long)]
    quick: bool,
    /// Do not measure: regenerate the report and plots from these samples.
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// Repetitions per figure (default: 5, quick: 1).
    #[arg(long)]
    reps: Option<usize>,
    /// Only these measures, e.g. `--only p1,p3` (the report then has only
    /// them).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// The tools the benchmark drives, and the package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("iptables-legacy", "iptables"),
    ("iptables-legacy-restore", "iptables"),
    ("iperf3", "iperf3"),
    ("nsenter", "util-linux"),
    ("dnsmasq", "dnsmasq-base"),
    ("nginx", "nginx-light"),
    ("openssl", "openssl"),
];

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let root = workspace_root();
    let quick_dest = target_dir(&root).join("bench");
    if let Some(from) = &args.from {
        let mut samples = samples::Samples::read(from)?;
        pod_cache::migrate(&mut samples);
        let dest_dir = if args.quick || samples.meta.quick {
            quick_dest
        } else {
            root.join("docs")
        };
        write_report(&root, &samples, &dest_dir, args.quick || samples.meta.quick)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(missing) = preconditions() {
        bail!(
            "the benchmarks cannot run on this machine:\n  - {}\nrun `cargo xtask setup` as \
             root first",
            missing.join("\n  - ")
        );
    }
    run::check(
        run::cargo()
            .args([
                "build",
                "--release",
                "-p",
                "egress-agent",
                "-p",
                "integration-tests",
            ])
            .args([
                "--bin",
                "egress-agent",
                "--bin",
                "egress-probe",
                "--bin",
                "egress-bench",
            ])
            .current_dir(&root),
    )?;
    let (dest_dir, raw) = if args.quick {
        (quick_dest.clone(), quick_dest.join("samples.json"))
    } else {
        // Measured into target/ first: an interrupted full run must not
        // leave half a result in docs/.
        (root.join("docs"), quick_dest.join("full-samples.json"))
    };
    // P6, and the API server's parts of P3 and P5, are measured here, not
    // by egress-bench.
    let wants = |m: &str| args.only.is_empty() || args.only.iter().any(|o| o == m);
    let others: Vec<&String> = args.only.iter().filter(|o| *o != "p6").collect();
    let mut samples = if args.only.is_empty() || !others.is_empty() {
        let bench = target_dir(&root).join("release").join("egress-bench");
        let mut cmd = Command::new(&bench);
        cmd.arg("--out").arg(&raw);
        if args.quick {
            cmd.arg("--quick");
        }
        if let Some(reps) = args.reps {
            cmd.arg("--reps").arg(reps.to_string());
        }
        if !others.is_empty() {
            let names: Vec<&str> = others.iter().map(|s| s.as_str()).collect();
            cmd.arg("--only").arg(names.join(","));
        }
        run::check(&mut cmd)?;
        samples::Samples::read(&raw)?
    } else {
        samples::Samples::default()
    };
    let wanted = pod_cache::Wanted {
        cache: wants("p5"),
        agent: wants("p3") || wants("p5") || wants("p6"),
        p3: wants("p3"),
        p6: wants("p6"),
    };
    if wanted.agent {
        let cluster = if args.quick {
            pod_cache::QUICK
        } else {
            pod_cache::FULL
        };
        let began = std::time::Instant::now();
        if let Some(more) = pod_cache::measure(&cluster, &wanted, &quick_dest)? {
            samples.samples.extend(more);
        }
        println!(
            "bench: the API server measures took {:.0} s",
            began.elapsed().as_secs_f64()
        );
        samples.meta.quick = args.quick;
        samples.write(&raw)?;
    }
    if !args.quick {
        let keep = root.join("docs").join("bench").join("samples.json");
        if let Some(dir) = keep.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::copy(&raw, &keep).with_context(|| format!("copying to {}", keep.display()))?;
    }
    write_report(&root, &samples, &dest_dir, args.quick)?;
    Ok(ExitCode::SUCCESS)
}

/// `docs/benchmarks.md` + `docs/bench/` for a full run; for a quick one,
/// `target/bench/benchmarks.md` with the plots beside it.
fn write_report(
    root: &Path,
    samples: &samples::Samples,
    dir: &Path,
    quick: bool,
) -> anyhow::Result<()> {
    let (doc, plots) = if quick {
        (dir.join("benchmarks.md"), dir.to_owned())
    } else {
        (dir.join("benchmarks.md"), dir.join("bench"))
    };
    report::write(
        samples,
        &report::Dest {
            doc: &doc,
            plots: &plots,
            notes: &root.join("docs").join("bench").join("notes.md"),
        },
    )?;
    println!(
        "bench: {} samples → {} and {}/*.svg",
        samples.samples.len(),
        doc.display(),
        plots.display()
    );
    Ok(())
}

/// Everything the benchmark needs, each checked directly.
fn preconditions() -> Result<(), Vec<String>> {
    host::node_task_prerequisites(
        "the benchmark creates network namespaces, cgroups, eBPF \
             programs, iptables and nftables rules",
        TOOLS,
    )
}
