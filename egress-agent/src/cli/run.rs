//! `egress-agent run`: enforce the policy directory until stopped.

use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::Context as _;
use egress_agent::{
    agent::{
        kernel::KernelEnforcer,
        preflight,
        reload::format_chain,
        run::{run as run_agent, Observing, RunOptions},
        Reloader,
    },
    dataplane::{nft::Backstop, Capacities, EbpfLogLevel},
    observe::{self, EventHub},
    resolve::{ResolverSettings, Upstream},
};
use egress_agent::{
    compile::{guard::GUARD_NAMESPACE, Guards},
    dataplane::cgroup_relative,
    inventory::Inventory,
    kubernetes::{self, KubeSettings},
    sys,
};
use egress_common::EventConfig;
use egress_policy::model::ObjectId;
use std::path::PathBuf;

use super::args::{LogFormat, RunArgs};

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    // The programs filter by `--ebpf-log` themselves: what they send, show.
    let ebpf = (args.ebpf_log != EbpfLogLevel::Off).then_some("ebpf=trace");
    init_logging_with(args.log_format, ebpf);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Every argument and input is checked before anything touches the
        // kernel: a refused start leaves nothing attached or pinned.
        let metrics_addrs: Vec<_> = args
            .metrics_addr
            .iter()
            .flat_map(|a| a.0.iter().copied())
            .collect();
        let checked = preflight::check_inputs(&preflight::Inputs {
            policies: &args.policies,
            kubernetes: args.kubernetes,
            pin_dir: &args.bpffs,
            cgroup_root: args.cgroup_root.as_deref(),
            socket: &args.socket,
            metrics_addrs: &metrics_addrs,
        })?;
        // Kubernetes settings are checked before anything is attached; the
        // client connects only once the watchers start (after the agent
        // has exempted its own cgroup).
        let kube = if args.kubernetes {
            let node = kubernetes::node_name(args.node_name.as_deref())?;
            Some((node, kubernetes::client(args.kubeconfig.as_deref()).await?))
        } else {
            None
        };
        if let Some(state) = &args.boot_state {
            let dir = state.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                anyhow::bail!(
                    "--boot-state {}: its directory does not exist",
                    state.display()
                );
            }
        }
        let mut enforcer = KernelEnforcer::open(
            &args.bpffs,
            args.cgroup_root.as_deref(),
            args.audit,
            (!args.no_nft).then(|| Backstop::new().with_timeout(args.nft_timeout)),
            EventConfig {
                sample_allow: args.sample_allow,
                interval_ms: args.event_interval_ms,
            },
            args.ebpf_log,
            Capacities {
                allow: args.max_cidrs,
            },
        )?
        .with_dns_capture(args.capture_dns)
        .with_gateway_dns(args.follow_gateway_dns)
        .with_boot_state(args.boot_state.clone());
        let guards = guards(args, &mut enforcer)?;
        let mut observing = observe(args, checked.metrics, &mut enforcer).await?;
        let mut reloader = Reloader::new(args.policies.clone(), enforcer, args.audit);
        let feed = if let Some((node_name, client)) = kube {
            // Quarantined API objects are reported on themselves, as
            // Events; in file mode there is no API server to write to.
            let reports = kubernetes::events::spawn(client.clone(), node_name.clone());
            let verdicts = reports.subscribe();
            observing.rejections = Some(reports);
            let settings = KubeSettings {
                kubeconfig: args.kubeconfig.clone(),
                node_name,
                sidecar: args.sidecar_container.clone(),
                mount: guards.mount.clone(),
                search_base: guards.base.clone(),
                guarded: guards.guards.pending.clone(),
                exempt: guards.guards.exempt.clone(),
            };
            tracing::info!(node = %settings.node_name, sidecar = %settings.sidecar, "Kubernetes mode: watching Pods on this node, Namespaces and NetworkPolicies");
            let node = settings.node_name.clone();
            let (inventory, custom) = kubernetes::spawn(client.clone(), settings);
            // Each node's verdict on every EgressGateway and Redirect, in
            // the object's status.
            kubernetes::status::spawn(client, node, verdicts, custom);
            Some(inventory)
        } else {
            reloader.set_inventory(Inventory {
                guards: guards.guards,
                ..Inventory::default()
            });
            None
        };
        let resolver = ResolverSettings {
            upstream: if args.dns_servers.is_empty() {
                Upstream::System
            } else {
                Upstream::Servers(args.dns_servers.clone())
            },
            learn_grace: std::time::Duration::from_secs(args.gateway_dns_grace),
            ..ResolverSettings::default()
        };
        run_agent(
            reloader,
            &args.policies,
            RunOptions {
                resolver,
                ..RunOptions::default()
            },
            Some(observing),
            feed,
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The agent's own pod UID, from the downward API (`metadata.uid`).
const POD_UID_ENV: &str = "POD_UID";

/// The guard entries of this run, and where pods' cgroups are searched.
struct RunGuards {
    mount: PathBuf,
    /// The cgroup root, relative to the mount.
    base: String,
    guards: Guards,
}

/// Works out the guarded roots (`--guard-cgroup`, or in Kubernetes mode
/// the kubelet's pods roots found below the cgroup root) and, when the
/// agent itself runs below one (a DaemonSet pod), exempts its own cgroup
/// at once: the pinned pending policy would otherwise keep it from the API
/// server it needs to learn anything.
fn guards(args: &RunArgs, enforcer: &mut KernelEnforcer) -> anyhow::Result<RunGuards> {
    let mount = sys::cgroup2_mount().context("cannot find the cgroup2 mount")?;
    let root = args.cgroup_root.clone().unwrap_or_else(|| mount.clone());
    let base = cgroup_relative(&mount, &root.to_string_lossy());
    let mut pending: Vec<String> = args
        .guard_cgroups
        .iter()
        .map(|p| cgroup_relative(&mount, &p.to_string_lossy()))
        .collect();
    if args.kubernetes && pending.is_empty() {
        pending = kubernetes::cgroups::scan(&mount, &base, kubernetes::cgroups::MAX_DEPTH).roots;
        if pending.is_empty() {
            tracing::warn!(root = %root.display(), "no kubelet pods cgroup (kubepods, kubepods.slice) below the cgroup root: new pods are enforced once known, with no pending policy before; pass --guard-cgroup");
        }
    }
    for p in &pending {
        tracing::info!(cgroup = %p, "guarded root: unknown cgroups below it get the pending policy");
    }
    let mut exempt = Vec::new();
    if !pending.is_empty() {
        // In a private cgroup namespace /proc/self/cgroup says `/`; the
        // pod UID (downward API) then finds the agent's pod like any pod.
        let pod_uid = std::env::var(POD_UID_ENV).ok().filter(|u| !u.is_empty());
        // The root cgroup is below no guarded root, so a real `/` needs no
        // exemption; a namespaced `/` does, and says so here.
        let own = kubernetes::cgroups::own_cgroup_in(&mount, &base, pod_uid.as_deref())
            .unwrap_or_else(|| {
                tracing::warn!(
                    pod_uid = pod_uid.as_deref().unwrap_or("(unset)"),
                    "cannot tell which cgroup the agent runs in (/proc/self/cgroup says `/`: the root, or a private cgroup namespace); if it runs below a guarded root, set {POD_UID_ENV} from the downward API (metadata.uid), or the pending policy will keep it from the API server"
                );
                String::new()
            });
        let below = |root: &String| own == *root || own.starts_with(&format!("{root}/"));
        if pending.iter().any(below) {
            let id = ObjectId::new(GUARD_NAMESPACE, "agent:self");
            let cgroup_id = enforcer
                .dataplane_mut()
                .exempt_now(&id, &own)
                .with_context(|| format!("cannot exempt the agent's own cgroup {own}"))?;
            tracing::info!(cgroup = %own, cgroup_id, "the agent's own cgroup is below a guarded root: exempt");
            exempt.push((id, own));
        }
    }
    Ok(RunGuards {
        mount,
        base,
        guards: Guards { pending, exempt },
    })
}

/// Starts the event reader, the agent socket and the metrics server.
async fn observe(
    args: &RunArgs,
    metrics: Vec<std::net::TcpListener>,
    enforcer: &mut KernelEnforcer,
) -> anyhow::Result<Observing> {
    let hub = EventHub::new(observe::RECENT_EVENTS);
    enforcer.report_to(hub.clone());
    match enforcer.dataplane_mut().take_event_ring() {
        Some(ring) => {
            tokio::spawn(observe::reader::run(
                ring,
                hub.clone(),
                enforcer.shared_names(),
            ));
        }
        None => tracing::warn!("the event ring is already taken; no verdict events"),
    }
    if args.ebpf_log != EbpfLogLevel::Off {
        match enforcer
            .dataplane_mut()
            .ebpf_logger(observe::ebpf_log::ToTracing)
        {
            Ok(logger) => {
                tokio::spawn(async move {
                    if let Err(e) = observe::ebpf_log::forward(logger).await {
                        tracing::warn!(error = %e, "the programs' log stopped");
                    }
                });
                tracing::info!(level = ?args.ebpf_log, "forwarding the programs' aya-log records (target ebpf)");
            }
            Err(e) => tracing::warn!(error = %format_chain(&e), "no eBPF log"),
        }
    }
    let (queries_tx, queries) = tokio::sync::mpsc::channel(16);
    observe::server::start(&args.socket, hub.clone(), queries_tx.clone())?;
    tracing::info!(socket = %args.socket.display(), "serving events and status");
    let (ready, ready_rx) = tokio::sync::watch::channel(false);
    for listener in metrics {
        let addr = listener.local_addr().ok();
        let bound = observe::http::start(listener, queries_tx.clone(), ready_rx.clone())
            .with_context(|| format!("cannot serve metrics on {addr:?}"))?;
        tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    }
    Ok(Observing {
        queries,
        hub,
        ready,
        rejections: None,
    })
}

/// Logs go to stderr, as text or one JSON object per line.
pub(super) fn init_logging(format: LogFormat) {
    init_logging_with(format, None);
}

/// [`init_logging`], plus a directive that `EGRESS_LOG` cannot hide, such
/// as `ebpf=trace` when `--ebpf-log` asks for the programs' records.
fn init_logging_with(format: LogFormat, always: Option<&str>) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("EGRESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if let Some(directive) = always.and_then(|d| d.parse().ok()) {
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
