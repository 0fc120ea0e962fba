//! `cargo xtask setup`: install what building and testing need.
//!
//! Every step first checks whether its piece is already there and only acts
//! when it is not, so a second run takes seconds and changes nothing. Why
//! each piece is needed: docs/toolchain.md.

use std::{fs, process::Command, time::Instant};

use anyhow::{bail, Context as _};

use crate::{
    host::{self, BPF_LINKER_VERSION, CARGO_FUZZ_VERSION, EBPF_TOOLCHAIN},
    run,
};

/// Debian packages: the eBPF compiler pair (rustc-web with its matching
/// library sources), the LLVM that bpf-linker links against, and the tools
/// the agent, the tests and the demo drive (`dnsmasq-base` is the
/// simulated node's kube-dns; nginx, openssl and curl its internet's web
/// sites and their clients; Squid and redsocks the unmodified proxies the
/// redirect is tested with, Python the upstream they reach; g++ builds
/// libFuzzer for the fuzz targets).
pub const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "nftables",
    "iproute2",
    "iperf3",
    "bpftool",
    "iptables",
    "dnsmasq-base",
    "nginx-light",
    "openssl",
    "curl",
    "squid",
    "redsocks",
    "python3",
    "g++",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

#[derive(clap::Args)]
pub struct SetupArgs {
    /// Only report what is present and what is missing; change nothing.
    #[arg(long)]
    check: bool,
}

/// A setup step: given whether it may act, what it found or did.
type Step = fn(bool) -> anyhow::Result<Outcome>;

/// What one step found or did.
enum Outcome {
    Present(String),
    Missing(String),
    Done(String),
}

pub fn run(args: &SetupArgs) -> anyhow::Result<std::process::ExitCode> {
    let start = Instant::now();
    // Acting needs root; looking does not. Without root, fail only if
    // something actually has to change.
    let act = !args.check && host::is_root();
    let steps: [(&str, Step); 5] = [
        ("apt packages", apt_packages),
        ("eBPF toolchain", ebpf_toolchain),
        ("bpf-linker", bpf_linker),
        ("cargo-fuzz", cargo_fuzz),
        ("bpffs", bpffs),
    ];
    let mut missing = Vec::new();
    for (name, step) in steps {
        let began = Instant::now();
        let outcome = step(act).with_context(|| format!("setup step `{name}`"))?;
        let took = began.elapsed().as_secs_f32();
        match outcome {
            Outcome::Present(what) => println!("setup: {name}: present: {what}"),
            Outcome::Done(what) => println!("setup: {name}: {what} ({took:.1}s)"),
            Outcome::Missing(what) => {
                println!("setup: {name}: MISSING: {what}");
                missing.push(name);
            }
        }
    }
    let took = start.elapsed().as_secs_f32();
    if missing.is_empty() {
        println!("setup: everything present ({took:.1}s)");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if args.check {
        println!("setup: missing: {}", missing.join(", "));
        return Ok(std::process::ExitCode::FAILURE);
    }
    bail!(
        "not root (euid {}): cannot install {}; re-run `cargo xtask setup` as root",
        host::euid(),
        missing.join(", ")
    )
}

fn apt_packages(act: bool) -> anyhow::Result<Outcome> {
    let missing = missing_packages(APT_PACKAGES);
    if missing.is_empty() {
        return Ok(Outcome::Present(APT_PACKAGES.join(" ")));
    }
    if !act {
        return Ok(Outcome::Missing(missing.join(" ")));
    }
    apt_install(APT_PACKAGES, &missing)?;
    Ok(Outcome::Done(format!("installed {}", missing.join(" "))))
}

/// `apt-get update`, then installs `missing` (a subset of `wanted`) and
/// checks that all of `wanted` is now installed.
pub fn apt_install(wanted: &[&str], missing: &[String]) -> anyhow::Result<()> {
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing.iter().map(String::as_str));
    apt(&install)?;
    let still = missing_packages(wanted);
    if !still.is_empty() {
        bail!("apt-get reported success but {still:?} are still not installed");
    }
    Ok(())
}

/// Runs `apt-get ARGS` non-interactively.
pub fn apt(args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    run::check(&mut cmd)
}

/// The packages of `wanted` that dpkg does not report as installed.
pub fn missing_packages(wanted: &[&str]) -> Vec<String> {
    // dpkg-query exits non-zero when a package is unknown but still prints
    // the ones it knows, so its status is ignored.
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
        .args(wanted)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    wanted
        .iter()
        .filter(|pkg| {
            !output.lines().any(|line| {
                let mut words = line.split_whitespace();
                // Multi-arch packages print as `name:arch`.
                let name = words.next().unwrap_or("");
                let name = name.split(':').next().unwrap_or("");
                name == **pkg && words.next() == Some("installed")
            })
        })
        .map(|pkg| (*pkg).to_owned())
        .collect()
}

fn ebpf_toolchain(act: bool) -> anyhow::Result<Outcome> {
    if !host::on_path("rustup") {
        bail!("rustup not found on PATH: aya-build runs the eBPF toolchain through rustup");
    }
    let linked = run::output("rustup", ["toolchain", "list"]).is_some_and(|list| {
        list.lines()
            .any(|l| l.split_whitespace().next() == Some(EBPF_TOOLCHAIN))
    });
    let version = || run::output("rustup", ["run", EBPF_TOOLCHAIN, "rustc", "--version"]);
    if linked {
        return Ok(Outcome::Present(format!(
            "rustup toolchain {EBPF_TOOLCHAIN} ({})",
            version().unwrap_or_else(|| "rustc does not run!".into())
        )));
    }
    if !act {
        return Ok(Outcome::Missing(format!(
            "rustup toolchain {EBPF_TOOLCHAIN}"
        )));
    }
    run::check(Command::new("rustup").args(["toolchain", "link", EBPF_TOOLCHAIN, "/usr"]))?;
    let version = version().context("the linked toolchain's rustc does not run")?;
    Ok(Outcome::Done(format!(
        "linked rustup toolchain {EBPF_TOOLCHAIN} -> /usr ({version})"
    )))
}

fn bpf_linker(act: bool) -> anyhow::Result<Outcome> {
    let found = host::bpf_linker_version();
    if found.as_deref() == Some(BPF_LINKER_VERSION) {
        return Ok(Outcome::Present(format!("bpf-linker {BPF_LINKER_VERSION}")));
    }
    let what = match &found {
        Some(v) => format!("bpf-linker {BPF_LINKER_VERSION} (found {v})"),
        None => format!("bpf-linker {BPF_LINKER_VERSION}"),
    };
    if !act {
        return Ok(Outcome::Missing(what));
    }
    // Built against Debian's LLVM 22, the same LLVM major as rustc-web, so
    // the bitcode rustc emits is bitcode bpf-linker can read.
    run::check(
        run::cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )?;
    match host::bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => Ok(Outcome::Done(format!("installed {what}"))),
        _ => bail!(
            "bpf-linker was installed but `bpf-linker --version` does not report \
             {BPF_LINKER_VERSION}: is ~/.cargo/bin on PATH?"
        ),
    }
}

/// cargo-fuzz runs the fuzz targets in fuzz/ (`cargo xtask test`'s fuzz
/// smoke stage). Pinned, so every machine fuzzes with the same driver.
fn cargo_fuzz(act: bool) -> anyhow::Result<Outcome> {
    let found = host::cargo_fuzz_version();
    if found.as_deref() == Some(CARGO_FUZZ_VERSION) {
        return Ok(Outcome::Present(format!("cargo-fuzz {CARGO_FUZZ_VERSION}")));
    }
    let what = match &found {
        Some(v) => format!("cargo-fuzz {CARGO_FUZZ_VERSION} (found {v})"),
        None => format!("cargo-fuzz {CARGO_FUZZ_VERSION}"),
    };
    if !act {
        return Ok(Outcome::Missing(what));
    }
    run::check(run::cargo().args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
        "--force",
    ]))?;
    match host::cargo_fuzz_version() {
        Some(v) if v == CARGO_FUZZ_VERSION => Ok(Outcome::Done(format!("installed {what}"))),
        _ => bail!(
            "cargo-fuzz was installed but `cargo fuzz --version` does not report \
             {CARGO_FUZZ_VERSION}: is ~/.cargo/bin on PATH?"
        ),
    }
}

fn bpffs(act: bool) -> anyhow::Result<Outcome> {
    if let Some(at) = host::mount_of("bpf") {
        return Ok(Outcome::Present(format!("mounted at {at}")));
    }
    if !act {
        return Ok(Outcome::Missing(format!("bpf filesystem at {BPFFS}")));
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    run::check(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    Ok(Outcome::Done(format!("mounted at {BPFFS}")))
}
