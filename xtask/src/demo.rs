//! `cargo xtask demo`: the live demo on a simulated node.
//!
//! 1. checks that this machine can run it (root, cgroup2, bpffs, the eBPF
//!    toolchain, and the tools the demo drives), saying what to do if not;
//! 2. builds `egress-agent`, `egress-probe` and `egress-demo`;
//! 3. runs `egress-demo --policies <dir>` (see
//!    `tests/src/bin/egress-demo.rs`) and exits with its status.
//!
//! The demo removes what it builds on every exit path; this task only waits
//! for it, so Ctrl-C reaches the demo, which cleans up before the prompt
//! comes back.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, ExitCode},
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{bail, Context as _};

use crate::{
    host::{self, target_dir, workspace_root},
    run,
};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Policy files or directories [default: the workspace's `policies/`].
    #[arg(long)]
    policies: Vec<PathBuf>,
    /// Build and run the release profile.
    #[arg(long)]
    release: bool,
    /// Further arguments for egress-demo, after `--` (for example
    /// `--no-agent` for the unenforced baseline, `--agent-log`).
    #[arg(last = true)]
    args: Vec<OsString>,
}

/// The tools the demo runs, and the package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("nsenter", "util-linux"),
    ("dnsmasq", "dnsmasq-base"),
    ("nginx", "nginx-light"),
    ("openssl", "openssl"),
    ("curl", "curl"),
];

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if let Err(missing) = preconditions() {
        bail!(
            "the demo cannot run on this machine:\n  - {}\nrun `cargo xtask setup` as root first",
            missing.join("\n  - ")
        );
    }
    let root = workspace_root();
    let mut build = run::cargo();
    build
        .args([
            "build",
            "-p",
            "egress-agent",
            "-p",
            "integration-tests",
            "--bins",
        ])
        .current_dir(&root);
    if args.release {
        build.arg("--release");
    }
    run::check(&mut build)?;

    let profile = if args.release { "release" } else { "debug" };
    let demo = target_dir(&root).join(profile).join("egress-demo");
    // `cargo xtask demo -- --policies DIR` works as well as `--policies DIR`.
    let passed_on = args
        .args
        .iter()
        .any(|a| a.to_str().is_some_and(|a| a.starts_with("--policies")));
    let policies = if args.policies.is_empty() && !passed_on {
        vec![root.join("policies")]
    } else {
        args.policies.clone()
    };
    let mut cmd = Command::new(&demo);
    for p in &policies {
        cmd.arg("--policies").arg(p);
    }
    cmd.args(&args.args);

    forward_signals_while_waiting();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", demo.display()))?;
    DEMO_PID.store(i32::try_from(child.id()).unwrap_or(0), Ordering::SeqCst);
    let status = child.wait().context("waiting for egress-demo")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Everything the demo needs, each checked directly.
fn preconditions() -> Result<(), Vec<String>> {
    host::node_task_prerequisites(
        "the demo creates network namespaces, cgroups, eBPF programs \
             and nftables tables",
        TOOLS,
    )
}

/// The running demo's pid, for the signal handler.
static DEMO_PID: AtomicI32 = AtomicI32::new(0);

/// Ctrl-C goes to the whole foreground process group, and the demo handles
/// it: it cleans up, then exits. This process must outlive it rather than
/// give the shell back mid-cleanup, and pass on a SIGTERM or SIGHUP meant
/// for it. A handler, unlike SIG_IGN, is reset in the child by exec.
fn forward_signals_while_waiting() {
    extern "C" fn forward(signal: libc::c_int) {
        let pid = DEMO_PID.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe.
            unsafe { libc::kill(pid, signal) };
        }
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only makes async-signal-safe calls; the
        // sigaction struct is fully set.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
