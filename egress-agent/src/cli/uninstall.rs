//! `egress-agent uninstall`: remove everything the agent put in the kernel.

use std::process::ExitCode;

use egress_agent::dataplane::{nft::Backstop, Dataplane};

use super::args::UninstallArgs;

/// Removes the pinned programs, links and maps under `--bpffs`, and the
/// agent's nftables tables, and nothing else. Safe to run twice.
pub fn run(args: &UninstallArgs) -> anyhow::Result<ExitCode> {
    let report = Dataplane::uninstall(&args.bpffs)?;
    if report.is_empty() {
        println!("eBPF: nothing pinned under {}", args.bpffs.display());
    } else {
        println!(
            "eBPF: removed {} link(s) (programs detached), {} map(s), {} director(ies) under {}",
            report.links.len(),
            report.maps.len(),
            report.directories.len(),
            args.bpffs.display()
        );
    }
    for kept in &report.kept {
        println!(
            "eBPF: left alone (not created by the agent): {}",
            kept.display()
        );
    }
    if !args.no_nft {
        Backstop::new().uninstall()?;
        println!(
            "nftables: tables inet and bridge {} removed (if present)",
            egress_agent::dataplane::nft::TABLE
        );
    }
    Ok(ExitCode::SUCCESS)
}
