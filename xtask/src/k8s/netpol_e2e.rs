//! `cargo xtask netpol-e2e`: the upstream NetworkPolicy e2e suite
//! (`test/e2e/network/network_policy.go`, `[Feature:NetworkPolicy]`) from
//! the same Kubernetes source as the cluster, run against the local
//! cluster with the agent as the enforcer.

use std::process::ExitCode;

use anyhow::bail;

use super::{kube_build, packages, step};
use crate::host;

#[derive(clap::Args)]
pub struct NetpolE2eArgs {
    /// Only build (or find cached) `e2e.test` and `agnhost`.
    #[arg(long)]
    build_only: bool,
}

pub fn run(args: &NetpolE2eArgs) -> anyhow::Result<ExitCode> {
    if !host::is_root() {
        bail!(
            "netpol-e2e needs root (euid {}): it runs a local cluster",
            host::euid()
        );
    }
    step("packages", packages::ensure)?;
    step("e2e binaries", kube_build::ensure_e2e)?;
    if args.build_only {
        return Ok(ExitCode::SUCCESS);
    }
    bail!("running the suite on the local cluster is not implemented yet; use --build-only")
}
