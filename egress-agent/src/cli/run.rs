//! `egress-agent run`: enforce the policy directory until stopped.

use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::Context as _;
use egress_agent::{
    agent::{
        kernel::KernelEnforcer,
        run::{run as run_agent, RunOptions},
        Reloader,
    },
    resolve::{ResolverSettings, Upstream},
};

use super::args::{LogFormat, RunArgs};

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let enforcer = KernelEnforcer::open(
            &args.bpffs,
            args.cgroup_root.as_deref(),
            args.audit,
            !args.no_nft,
        )?
        .with_dns_capture(args.capture_dns);
        let reloader = Reloader::new(args.policies.clone(), enforcer, args.audit);
        let resolver = ResolverSettings {
            upstream: if args.dns_servers.is_empty() {
                Upstream::System
            } else {
                Upstream::Servers(args.dns_servers.clone())
            },
            ..ResolverSettings::default()
        };
        run_agent(
            reloader,
            &args.policies,
            RunOptions {
                resolver,
                ..RunOptions::default()
            },
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Logs go to stderr, as text or one JSON object per line.
pub(super) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
