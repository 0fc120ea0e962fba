//! `egress-agent proxy`: the built-in transparent proxy, sidecar or
//! gateway; see `egress_proxy`.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use egress_policy::model::ObjectId;
use egress_proxy::{
    access_log::{self, AccessLog},
    allow::{AllowList, SharedAllowList},
    gateway::Gateway,
    sidecar::Sidecar,
    Config, Limits, Mode, Proxy,
};

use super::args::{LogLine, ProxyArgs, ProxyMode};

pub fn run(args: &ProxyArgs) -> anyhow::Result<ExitCode> {
    super::run::init_logging(args.log_format);
    let mut reloadable = None;
    let mode = match args.mode {
        ProxyMode::Sidecar => {
            if !args.policies.is_empty()
                || !args.allow.is_empty()
                || args.allow_any
                || !args.proxy_protocol_from.is_empty()
            {
                bail!("--policies, --gateway, --allow, --allow-any and --proxy-protocol-from are for --mode gateway");
            }
            Mode::Sidecar(Sidecar {
                via_gateway: args.via_gateway.clone(),
            })
        }
        ProxyMode::Gateway => {
            if args.via_gateway.is_some() {
                bail!("--via-gateway is for --mode sidecar");
            }
            let allow = SharedAllowList::new(allow_list(args)?);
            reloadable = Some(allow.clone());
            Mode::Gateway(Gateway {
                allow,
                proxy_protocol_from: args.proxy_protocol_from.clone(),
            })
        }
    };
    let listen = match (args.listen.is_empty(), args.mode) {
        (false, _) => args.listen.clone(),
        (true, ProxyMode::Sidecar) => vec![([127, 0, 0, 1], 15001).into()],
        (true, ProxyMode::Gateway) => bail!("--mode gateway needs at least one --listen"),
    };
    let format = match args.access_log_format {
        LogLine::Text => access_log::Format::Text,
        LogLine::Json => access_log::Format::Json,
    };
    let access_log = match &args.access_log {
        None => AccessLog::stdout(format).context("cannot start the access log")?,
        Some(path) => AccessLog::file(format, path)
            .with_context(|| format!("cannot open the access log {}", path.display()))?,
    };
    let config = Config {
        mode,
        listen,
        admin: args.admin,
        limits: Limits {
            max_connections: args.max_connections,
            max_connections_per_source: args.max_connections_per_source,
            first_byte_timeout: args.first_byte_timeout,
            sniff_timeout: args.sniff_timeout,
            resolve_timeout: args.resolve_timeout,
            connect_timeout: args.connect_timeout,
            idle_timeout: args.idle_timeout,
            drain_timeout: args.drain_timeout,
        },
        resolve: args.resolve.clone(),
        access_log,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let proxy = Proxy::bind(config).await?;
        let addrs: Vec<String> = proxy.local_addrs().iter().map(|a| a.to_string()).collect();
        tracing::info!(
            mode = ?args.mode,
            listen = addrs.join(" "),
            admin = proxy.admin_addr().map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            "proxy listening"
        );
        if let Some(allow) = reloadable {
            reload_on_sighup(args, allow)?;
        }
        proxy.serve(shutdown_signal()?).await;
        tracing::info!("proxy stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The allow-list: the EgressGateway's allowedHosts plus `--allow`, or
/// ALLOW_ANY only when asked for explicitly.
fn allow_list(args: &ProxyArgs) -> anyhow::Result<AllowList> {
    let from_policy = match &args.gateway {
        None => None,
        Some(id) => {
            let id: ObjectId = id.parse().map_err(|e| anyhow!("--gateway: {e}"))?;
            let Ok(loaded) = super::load_or_report(&args.policies) else {
                bail!("policy rejected");
            };
            let gateway = loaded
                .model
                .gateways
                .iter()
                .find(|g| g.id == id)
                .ok_or_else(|| anyhow!("no EgressGateway {id} in the policies"))?;
            let allow = AllowList::from_gateway(gateway)
                .map_err(|e| anyhow!("EgressGateway {id}: allowedHosts: {e}"))?;
            Some(allow)
        }
    };
    let allow = match (from_policy, args.allow_any) {
        (Some(policy), _) => policy.with(args.allow.clone()),
        (None, true) => AllowList::Any,
        (None, false) if !args.allow.is_empty() => AllowList::Only(args.allow.clone()),
        (None, false) => {
            bail!("--mode gateway needs --policies DIR --gateway NS/NAME, --allow HOST[:PORT], or --allow-any")
        }
    };
    tracing::info!(allowed = allow.describe(), "gateway allow-list");
    Ok(allow)
}

/// On SIGHUP, re-reads the policies and `--allow` flags. A rejected policy
/// is logged and the previous allow-list stays in force, as with `run`.
fn reload_on_sighup(args: &ProxyArgs, allow: SharedAllowList) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let args = args.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let reloaded = tokio::task::block_in_place(|| allow_list(&args));
            match reloaded {
                Ok(new) => {
                    allow.replace(new);
                    tracing::info!(allowed = allow.describe(), "SIGHUP: allow-list reloaded");
                }
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "SIGHUP: reload rejected; the previous allow-list stays in force"
                ),
            }
        }
    });
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}
