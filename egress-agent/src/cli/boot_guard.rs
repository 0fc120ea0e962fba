//! `egress-agent boot-guard`: the pending policy in force before the
//! kubelet starts any pod.
//!
//! A reboot empties bpffs, so nothing the agent pinned survives it, and
//! the agent is itself a pod: without this, every pod the kubelet starts
//! at boot would run unenforced until the agent is up and has listed the
//! cluster. The node runs this once per boot, before the kubelet (see
//! deploy/boot/): it attaches the programs and writes a generation of
//! guards alone, restored from what the last agent saved (`run
//! --boot-state`), and exits. The agent adopts the pins when it starts,
//! exactly as after a restart.

use std::{fs, io, path::Path, process::ExitCode};

use anyhow::Context as _;
use egress_agent::{
    agent::{kernel::KernelEnforcer, reload::Enforcer as _},
    compile::guard::BootState,
    dataplane::{cgroup_relative, Capacities, EbpfLogLevel},
    resolve::ResolvedHosts,
    sys,
};
use egress_common::EventConfig;

use super::args::BootGuardArgs;

pub fn run(args: &BootGuardArgs) -> anyhow::Result<ExitCode> {
    super::run::init_logging(args.log_format);
    // Pins present means this boot already has enforcement (an agent ran,
    // or this ran twice): its generation is better than guards alone.
    if has_pinned_links(&args.bpffs) {
        println!(
            "boot-guard: enforcement is pinned under {} already; left in force",
            args.bpffs.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mount = sys::cgroup2_mount().context("cannot find the cgroup2 mount")?;
    let mut state = match BootState::read(&args.boot_state) {
        Ok(state) => state,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !args.guard_cgroups.is_empty() => {
            println!(
                "boot-guard: no boot state at {} (no agent has run on this node): guarding --guard-cgroup with loopback only until the agent is ready",
                args.boot_state.display()
            );
            BootState::default()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            println!(
                "boot-guard: no boot state at {} (no agent has run on this node): nothing to guard; pods are enforced once the agent is ready",
                args.boot_state.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) if args.guard_cgroups.is_empty() => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read the boot state {} and no --guard-cgroup is given (remove the file to boot unguarded until the agent is ready)",
                    args.boot_state.display()
                )
            });
        }
        Err(e) => {
            println!(
                "boot-guard: cannot read the boot state {} ({e}): guarding --guard-cgroup with loopback only until the agent is ready",
                args.boot_state.display()
            );
            BootState::default()
        }
    };
    for extra in &args.guard_cgroups {
        let rel = cgroup_relative(&mount, &extra.to_string_lossy());
        if !state.pending.contains(&rel) {
            state.pending.push(rel);
        }
    }
    // The kubelet creates its pods root only if it is missing, and keeps
    // one that exists; creating it here gives the guard a cgroup id to key
    // on before the first pod does.
    for root in &state.pending {
        let dir = mount.join(root);
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the guarded root {}", dir.display()))?;
    }
    // No backstop: it is keyed on the pods' addresses and interfaces,
    // which a boot has not assigned yet; the agent installs it.
    let mut enforcer = KernelEnforcer::open(
        &args.bpffs,
        args.cgroup_root.as_deref(),
        false,
        None,
        EventConfig::default(),
        EbpfLogLevel::Off,
        Capacities {
            allow: args.max_cidrs,
        },
    )?;
    enforcer
        .enforce(&state.plan(), &ResolvedHosts::default())
        .context("cannot program the boot guard")?;
    println!(
        "boot-guard: pending policy in force below [{}]: loopback, DNS to [{}], the API server at [{}]; the agent takes over when it starts",
        state.pending.join(", "),
        join(&state.cluster_cidrs),
        join(&state.api_server),
    );
    Ok(ExitCode::SUCCESS)
}

fn has_pinned_links(pin_dir: &Path) -> bool {
    fs::read_dir(pin_dir.join("links")).is_ok_and(|mut entries| entries.next().is_some())
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
