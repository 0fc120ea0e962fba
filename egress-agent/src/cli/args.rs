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
    /// As `run --capture-dns`: Redirects with `captureDNS` capture UDP/53.
    #[arg(long)]
    pub capture_dns: bool,
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
    /// Carry out `captureDNS` of Redirects: captured workloads' UDP
    /// queries to port 53 go to the proxy's DNS port (Istio's DNS
    /// proxying). Off by default.
    #[arg(long)]
    pub capture_dns: bool,
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
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
