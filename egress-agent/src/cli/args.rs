//! The command line, as a clap derive tree.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Per-node egress enforcer: cgroup eBPF and nftables, driven by
/// NetworkPolicy-style YAML.
#[derive(Debug, Parser)]
#[command(name = "egress-agent", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policy files; print every error, not only the first.
    Check(CheckArgs),
    /// Show what would be programmed, per workload.
    Plan(PlanArgs),
    /// Give the verdict for one connection and the rule that decided it.
    Explain(ExplainArgs),
    /// Print shell completions.
    #[command(hide = true)]
    Completions(CompletionsArgs),
}

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy files or directories (searched recursively for *.yaml, *.yml).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Policy files or directories (searched recursively for *.yaml, *.yml).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Policy files or directories (searched recursively for *.yaml, *.yml).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The workload that connects, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/WORKLOAD")]
    pub from: String,
    /// The destination, as IP:PORT[/tcp|/udp|/sctp]; IPv6 as [ADDR]:PORT.
    #[arg(long, value_name = "IP:PORT[/PROTO]")]
    pub to: String,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}
