//! The raw samples a run writes, and the facts about the machine it ran on.
//!
//! `cargo xtask bench` reads this file (`--from FILE` regenerates the report
//! from it), so its shape is the contract between the two: keep the field
//! names in step with `xtask/src/bench/samples.rs`.

use std::{fs, path::Path, process::Command};

use anyhow::Context as _;
use serde::Serialize;

/// One measured value.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// `p1` … `p5`.
    pub measure: &'static str,
    /// What was measured, e.g. `connect_rate`, `tcp_throughput`.
    pub metric: &'static str,
    pub unit: &'static str,
    /// `direct`/`none`, `ours`, `iptables`, `iptables-est` (P2: behind the
    /// conntrack shortcut), `nftables`.
    pub variant: &'static str,
    /// CIDR rules in force.
    pub cidrs: usize,
    /// Repetition number, from 0.
    pub run: usize,
    pub value: f64,
}

/// The machine, the load on it, and the run's parameters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Meta {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub quick: bool,
    pub reps: usize,
    pub seconds_per_run: f64,
    pub cidr_counts: Vec<usize>,
    pub tools: Vec<String>,
    pub duration_s: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Samples {
    pub meta: Meta,
    pub samples: Vec<Sample>,
}

impl Samples {
    pub fn push(&mut self, sample: Sample) {
        eprintln!(
            "  {} {} {:>9} n={:<6} run {}: {:.3} {}",
            sample.measure,
            sample.metric,
            sample.variant,
            sample.cidrs,
            sample.run,
            sample.value,
            sample.unit
        );
        self.samples.push(sample);
    }

    /// Writes the samples as JSON (atomically: a temporary file renamed).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }
}

impl Meta {
    /// What the machine is, and how loaded it is right now.
    pub fn collect() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let memory_mib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        let mut tools = Vec::new();
        for (program, args) in [
            ("iptables-legacy", &["--version"][..]),
            ("nft", &["--version"][..]),
            ("iperf3", &["--version"][..]),
        ] {
            if let Some(v) = first_line(program, args) {
                tools.push(v);
            }
        }
        Self {
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            kernel: first_line("uname", &["-r"]).unwrap_or_default(),
            cpu,
            cores,
            memory_mib,
            loadavg_start: loadavg(),
            tools,
            ..Self::default()
        }
    }
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}
