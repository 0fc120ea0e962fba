//! The command line, as a clap derive tree.

use std::{net::SocketAddr, path::PathBuf};

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
    /// Enforce the policies in the kernel until stopped (SIGTERM keeps
    /// enforcement pinned; see `uninstall`).
    Run(RunArgs),
    /// Remove every program, link, pinned map and nft table the agent
    /// created, and nothing else.
    Uninstall(UninstallArgs),
    /// Print the running agent's recent verdict events, or follow them.
    Events(EventsArgs),
    /// Show what the running agent has attached, in force, and how full.
    Status(StatusArgs),
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

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Policy directory or files, watched for changes (reloads also on
    /// SIGHUP).
    #[arg(long, required = true, value_name = "DIR")]
    pub policies: Vec<PathBuf>,
    /// Enforce nothing: count and log what would have been denied.
    #[arg(long)]
    pub audit: bool,
    /// Where programs, links and maps are pinned.
    #[arg(long, value_name = "PATH", default_value = egress_agent::dataplane::DEFAULT_PIN_DIR)]
    pub bpffs: PathBuf,
    /// cgroup v2 directory to attach the programs at (default: the
    /// cgroup2 mount's root).
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// DNS server for EgressGateway allowedHosts (default:
    /// /etc/resolv.conf). Repeatable.
    #[arg(long = "dns-server", value_name = "IP:PORT")]
    pub dns_servers: Vec<SocketAddr>,
    /// Do not install the nftables backstop.
    #[arg(long)]
    pub no_nft: bool,
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Unix socket for `events` and `status` (mode 0600).
    #[arg(long, value_name = "PATH", default_value = egress_agent::observe::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics, plus /healthz and
    /// /readyz.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Report one allowed decision in N as an event (0: none).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub sample_allow: u32,
    /// At most one event per workload, destination and verdict per this
    /// many milliseconds (0: no limit).
    #[arg(long, value_name = "MS", default_value_t = egress_common::EventConfig::DEFAULT_INTERVAL_MS)]
    pub event_interval_ms: u32,
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing new events until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this workload's events, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub workload: Option<String>,
    #[arg(long, value_enum)]
    pub verdict: Option<egress_agent::observe::Verdict>,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    /// The agent's socket.
    #[arg(long, value_name = "PATH", default_value = egress_agent::observe::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    /// The agent's socket.
    #[arg(long, value_name = "PATH", default_value = egress_agent::observe::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// Where programs, links and maps are pinned.
    #[arg(long, value_name = "PATH", default_value = egress_agent::dataplane::DEFAULT_PIN_DIR)]
    pub bpffs: PathBuf,
    /// Leave the nftables table alone.
    #[arg(long)]
    pub no_nft: bool,
}
