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
    /// At boot, before the kubelet: put the pending policy in force from
    /// the state the last agent saved (`run --boot-state`), then exit.
    BootGuard(BootGuardArgs),
    /// Run the built-in transparent proxy: a sidecar for redirected
    /// connections, or the egress gateway (routes by SNI/Host).
    Proxy(ProxyArgs),
    /// Print the running agent's recent verdict events, or follow them.
    Events(EventsArgs),
    /// Show what the running agent has attached, in force, and how full.
    Status(StatusArgs),
    /// Print the CustomResourceDefinitions of EgressGateway and Redirect
    /// (deploy/base/crds.yaml), generated from the agent's types.
    Crds,
    /// Print shell completions.
    #[command(hide = true)]
    Completions(CompletionsArgs),
}

/// Output format, as kubectl's `-o`: `text` (the default), `wide` (text
/// with more columns where there are more), `json` or `yaml`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Wide,
    Json,
    Yaml,
}

/// The proxy's access-log format: one line per connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogLine {
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
    /// /etc/resolv.conf), as IP or IP:PORT (port 53 by default).
    /// Repeatable.
    #[arg(long = "dns-server", value_name = "IP[:PORT]", value_parser = parse_dns_server)]
    pub dns_servers: Vec<SocketAddr>,
    /// Do not install the nftables backstop.
    #[arg(long)]
    pub no_nft: bool,
    /// How long one run of nft may take (applying the backstop, reading
    /// its counters); one that takes longer is killed, and its apply fails
    /// with the previous generation left in force.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub nft_timeout: std::time::Duration,
    /// Carry out `captureDNS` of Redirects: captured workloads' UDP
    /// queries to port 53 go to the proxy's DNS port (Istio's DNS
    /// proxying). Off by default.
    #[arg(long)]
    pub capture_dns: bool,
    /// Make the gateways' allow-lists follow the DNS answers the gateways
    /// themselves get: their UDP queries go to a relay of the agent's on
    /// their loopback at this port (15054 when the flag is given alone),
    /// which asks the agent's DNS servers and programs the addresses of
    /// their `allowedHosts` names before passing the answer on.
    #[arg(
        long,
        value_name = "PORT",
        num_args = 0..=1,
        default_missing_value = "15054",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub follow_gateway_dns: Option<u16>,
    /// How long past its TTL an address a gateway was given stays allowed
    /// (with --follow-gateway-dns).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub gateway_dns_grace: u64,
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Unix socket for `events` and `status` (mode 0600).
    #[arg(long, value_name = "PATH", default_value = egress_agent::observe::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics, plus /healthz and
    /// /readyz. A comma-separated list (repeatable) of `IP:PORT`,
    /// `[IPv6]:PORT` or a bare IP (port 9464), so that the DaemonSet can
    /// bind exactly the pod's addresses with `$(POD_IPS)`.
    #[arg(long, value_name = "ADDR[,ADDR]", value_parser = parse_metrics_addrs)]
    pub metrics_addr: Vec<MetricsAddrs>,
    /// Report one allowed decision in N as an event (0: none).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub sample_allow: u32,
    /// At most one event per workload, destination and verdict per this
    /// many milliseconds (0: no limit).
    #[arg(long, value_name = "MS", default_value_t = egress_common::EventConfig::DEFAULT_INTERVAL_MS)]
    pub event_interval_ms: u32,
    /// The programs' own debug log (aya-log), forwarded to the agent's log
    /// with target `ebpf`. Takes effect when this run loads the programs;
    /// adopted ones keep the level they were loaded with.
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t)]
    pub ebpf_log: egress_agent::dataplane::EbpfLogLevel,
    /// Prefixes the allow tries hold, per address family (IPv4 and IPv6
    /// each): summed over distinct policies (workloads with equal rules
    /// share one) and over the two generations an apply holds at once, so
    /// a policy of N CIDRs needs 2N while it changes. Sizes the maps when
    /// they are created (first start, or after `uninstall`); an agent
    /// restarted with another value than the pinned maps have refuses to
    /// start. Unused room costs no kernel memory.
    #[arg(long, value_name = "N", default_value_t = egress_common::capacity::ALLOW)]
    pub max_cidrs: u32,
    /// Kubernetes mode: Pods on this node, Namespaces and NetworkPolicies
    /// from the API server (in-cluster configuration unless --kubeconfig),
    /// with --policies for EgressGateways, Redirects and local Workloads.
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubeconfig to use instead of the in-cluster configuration.
    #[arg(long, value_name = "PATH", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (default: $NODE_NAME, from the downward API).
    #[arg(long, value_name = "NAME", requires = "kubernetes")]
    pub node_name: Option<String>,
    /// The container that is a pod's proxy: exempt from its Redirect.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "istio-proxy",
        requires = "kubernetes"
    )]
    pub sidecar_container: String,
    /// A guarded cgroup root: every cgroup below it that is not a known
    /// workload gets the pending policy (loopback, DNS to the cluster
    /// CIDRs and the Kubernetes API server only). Repeatable. With
    /// --kubernetes the default is every kubelet pods root (`kubepods`,
    /// `kubepods.slice`) found below --cgroup-root.
    #[arg(long = "guard-cgroup", value_name = "PATH")]
    pub guard_cgroups: Vec<PathBuf>,
    /// Save what the next boot needs (the guarded roots, the cluster CIDRs
    /// and the API server's addresses) to this file after every apply,
    /// for `egress-agent boot-guard`. Keep it on storage that survives a
    /// reboot.
    #[arg(long, value_name = "FILE")]
    pub boot_state: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct BootGuardArgs {
    /// The state saved by `run --boot-state`.
    #[arg(long, value_name = "FILE")]
    pub boot_state: PathBuf,
    /// Where programs, links and maps are pinned (the agent's --bpffs).
    #[arg(long, value_name = "PATH", default_value = egress_agent::dataplane::DEFAULT_PIN_DIR)]
    pub bpffs: PathBuf,
    /// cgroup v2 directory to attach the programs at (the agent's
    /// --cgroup-root; default: the cgroup2 mount's root).
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// A root to guard besides the saved ones (created if missing); with
    /// no saved state, the only ones. Repeatable.
    #[arg(long = "guard-cgroup", value_name = "PATH")]
    pub guard_cgroups: Vec<PathBuf>,
    /// The agent's --max-cidrs: the guard creates the maps the agent
    /// adopts, so both must size them alike.
    #[arg(long, value_name = "N", default_value_t = egress_common::capacity::ALLOW)]
    pub max_cidrs: u32,
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
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
    /// Every node's agent, through the API server: the agents behind the
    /// metrics Service (`--service`), each asked for its `/metrics` and
    /// `/readyz`. Uses the pod's service account in a pod, else
    /// `--kubeconfig` or the usual kubeconfig.
    #[arg(long)]
    pub all_nodes: bool,
    /// With --all-nodes: the agents' metrics Service, `NAMESPACE/NAME`.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        default_value = "egress-enforcer/egress-agent-metrics",
        requires = "all_nodes"
    )]
    pub service: String,
    /// With --all-nodes: kubeconfig file (default: in-cluster, then
    /// $KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "FILE", requires = "all_nodes")]
    pub kubeconfig: Option<PathBuf>,
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

/// Which proxy `egress-agent proxy` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// Redirected connections (Istio's 15001): SO_ORIGINAL_DST, then
    /// direct or through the gateway.
    Sidecar,
    /// Route by TLS SNI or HTTP Host, to allowedHosts only.
    Gateway,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ProxyArgs {
    #[arg(long, value_enum)]
    pub mode: ProxyMode,
    /// Address to accept on; repeatable. Default for the sidecar:
    /// 127.0.0.1:15001.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Sidecar: send every connection to this egress gateway, with a PROXY
    /// v2 header carrying the original destination.
    #[arg(long, value_name = "HOST:PORT")]
    pub via_gateway: Option<egress_proxy::sidecar::GatewayAddr>,
    /// Gateway: policy files or directories holding the EgressGateway
    /// (re-read on SIGHUP).
    #[arg(long, value_name = "DIR", requires = "gateway")]
    pub policies: Vec<PathBuf>,
    /// Gateway: the EgressGateway whose allowedHosts apply, as
    /// NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "policies")]
    pub gateway: Option<String>,
    /// Gateway: also allow HOST[:PORT] (`*.example.com`, an IP or a CIDR);
    /// repeatable.
    #[arg(long = "allow", value_name = "HOST[:PORT]")]
    pub allow: Vec<egress_proxy::allow::Rule>,
    /// Gateway: forward to any host (ALLOW_ANY) when no EgressGateway is
    /// given.
    #[arg(long, conflicts_with_all = ["allow", "gateway"])]
    pub allow_any: bool,
    /// Answer HOST with these addresses instead of DNS (static setups and
    /// tests, like curl --resolve); repeatable.
    #[arg(long = "resolve", value_name = "HOST=IP[,IP...]")]
    pub resolve: Vec<egress_proxy::upstream::StaticEntry>,
    /// Serve Envoy-style /stats and Prometheus /metrics here.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Append access-log lines to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub access_log: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub access_log_format: LogLine,
    /// Connections handled at once (1 to 1048576); more are closed on
    /// accept.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections one source address may have open at once; more are
    /// closed on accept.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections_per_source: usize,
    /// Gateway: believe PROXY headers only from these peers (the
    /// sidecars), as CIDR or IP; repeatable. Default: none, so every
    /// PROXY header is refused.
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Gateway: time from accept to the client's first bytes.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub first_byte_timeout: std::time::Duration,
    /// Gateway: time from accept to the end of the PROXY header and the
    /// ClientHello or request head.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub sniff_timeout: std::time::Duration,
    /// Resolving an upstream name (or --via-gateway's); a timeout is a 502.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub resolve_timeout: std::time::Duration,
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: std::time::Duration,
    /// No byte either way for this long closes the connection.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// On SIGTERM/SIGINT, how long open connections may finish.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
}

/// `10.244.0.0/16`, or a bare address as its /32 or /128.
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("expected a CIDR or an IP address, got {s:?}"))
}

/// `250ms`, `5s`, `2m`, `1h`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 500ms, 5s, 2m or 1h, got {s:?}"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .filter(|&ms| ms > 0)
    .ok_or_else(|| format!("expected a positive duration like 500ms, 5s, 2m or 1h, got {s:?}"))?;
    Ok(std::time::Duration::from_millis(ms))
}

/// `--dns-server`: an address queries can actually be sent to, checked
/// when the arguments are parsed, before anything else happens.
fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    let addr = s
        .parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| {
            format!("expected IP or IP:PORT (e.g. 10.96.0.10 or [fd00::a]:53), got {s:?}")
        })?;
    if addr.port() == 0 {
        return Err(format!("port 0 in {s:?}: queries cannot be sent to it"));
    }
    let ip = addr.ip();
    if ip.is_unspecified() || ip.is_multicast() || ip == std::net::Ipv4Addr::BROADCAST {
        return Err(format!("{ip} is not a server's address"));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::{parse_dns_server, parse_duration};
    use std::time::Duration;

    #[test]
    fn dns_servers() {
        assert_eq!(
            parse_dns_server("10.96.0.10"),
            Ok("10.96.0.10:53".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("fd00::a"),
            Ok("[fd00::a]:53".parse().unwrap())
        );
        for bad in [
            "dns.example",
            "1.2.3.4:0",
            "0.0.0.0:53",
            "[::]:53",
            "224.0.0.1",
            "1.2.3.4:99999",
            "",
        ] {
            assert!(parse_dns_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn the_nft_timeout_defaults_to_the_backstops() {
        use clap::Parser as _;
        let cli =
            super::Cli::try_parse_from(["egress-agent", "run", "--policies", "p"]).expect("parses");
        let super::Command::Run(run) = cli.command else {
            panic!("run");
        };
        assert_eq!(
            run.nft_timeout,
            egress_agent::dataplane::nft::DEFAULT_TIMEOUT
        );
    }
}

/// One `--metrics-addr` value: its addresses.
#[derive(Clone, Debug)]
pub struct MetricsAddrs(pub Vec<SocketAddr>);

/// `IP:PORT`, `[IPv6]:PORT` or a bare IP (IPv4 or IPv6, with the default
/// port), comma-separated. A bare IPv6 address cannot carry a port: its
/// last group would be read as one, so a port needs the brackets.
fn parse_metrics_addrs(value: &str) -> Result<MetricsAddrs, String> {
    value
        .split(',')
        .map(str::trim)
        .map(|one| {
            if one.is_empty() {
                return Err(format!("{value:?}: an empty address"));
            }
            one.parse::<SocketAddr>()
                .or_else(|_| {
                    one.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, DEFAULT_METRICS_PORT))
                })
                .map_err(|_| format!("{one:?} is neither IP:PORT, [IPv6]:PORT nor an IP address"))
        })
        .collect::<Result<_, _>>()
        .map(MetricsAddrs)
}

/// The port of a bare-IP `--metrics-addr`.
pub const DEFAULT_METRICS_PORT: u16 = 9464;

#[cfg(test)]
mod metrics_addr_tests {
    use super::*;

    #[test]
    fn pod_ips_bind_both_families_on_the_default_port() {
        let MetricsAddrs(addrs) = parse_metrics_addrs("10.244.1.5,fd00:10:244:1::5").unwrap();
        assert_eq!(
            addrs,
            [
                "10.244.1.5:9464".parse::<SocketAddr>().unwrap(),
                "[fd00:10:244:1::5]:9464".parse().unwrap()
            ]
        );
        let MetricsAddrs(addrs) = parse_metrics_addrs("0.0.0.0:9100, [::1]:9101").unwrap();
        assert_eq!(addrs[1], "[::1]:9101".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn bad_addresses_are_named() {
        let err = parse_metrics_addrs("10.0.0.1,nope:80").unwrap_err();
        assert!(err.contains("\"nope:80\""), "{err}");
        assert!(parse_metrics_addrs("10.0.0.1,")
            .unwrap_err()
            .contains("empty"));
        // An unexpanded $(POD_IPS) (the env var is missing) is refused.
        assert!(parse_metrics_addrs("$(POD_IPS)").is_err());
    }
}
