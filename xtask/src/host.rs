//! Facts about this machine that setup and the test preflight share.
//!
//! The mount-table scan duplicates a little of `egress_agent::sys` on
//! purpose: xtask must build before the eBPF toolchain exists, so it cannot
//! depend on the agent.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use crate::run;

/// The exact bpf-linker release the eBPF build is verified with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The cargo-fuzz release the fuzz smoke stage runs (`cargo xtask setup`
/// installs it).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The rustup toolchain name that `egress-agent/build.rs` builds eBPF with.
pub const EBPF_TOOLCHAIN: &str = "debian-rustc-web";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn euid() -> u32 {
    // SAFETY: as above.
    unsafe { libc::geteuid() }
}

/// The mount point of the first visible mount of `fs_type` in
/// `/proc/self/mountinfo`.
pub fn mount_of(fs_type: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_in(&text, fs_type)
}

fn mount_in(mountinfo: &str, fs_type: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = before.split(' ').nth(4)?;
        (after.split(' ').next()? == fs_type).then(|| mount_point.replace("\\040", " "))
    })
}

/// The version `bpf-linker --version` reports, if it runs.
pub fn bpf_linker_version() -> Option<String> {
    run::output("bpf-linker", ["--version"]).and_then(|v| parse_bpf_linker_version(&v))
}

fn parse_bpf_linker_version(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .nth(1)
        .map(|v| v.trim_start_matches('v').to_owned())
}

/// The version `cargo fuzz --version` reports (`cargo-fuzz 0.13.2`), if
/// cargo-fuzz is installed.
pub fn cargo_fuzz_version() -> Option<String> {
    let out = run::cargo().args(["fuzz", "--version"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

/// What every task that loads the eBPF programs needs besides root: a
/// cgroup2 mount, bpffs and the pinned bpf-linker. Adds what is missing.
pub fn missing_kernel_prerequisites(missing: &mut Vec<String>) {
    if mount_of("cgroup2").is_none() {
        missing.push("no cgroup2 mount in /proc/self/mountinfo".to_owned());
    }
    if mount_of("bpf").is_none() {
        missing.push("bpffs is not mounted".to_owned());
    }
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => {}
        Some(v) => missing.push(format!(
            "bpf-linker is {v}, not {BPF_LINKER_VERSION} (it builds the eBPF programs)"
        )),
        None => missing.push("bpf-linker is not on PATH (it builds the eBPF programs)".to_owned()),
    }
}

/// What a task that runs the simulated node needs (the demo, the
/// benchmarks): root, for `why`; the eBPF prerequisites; and `tools`,
/// given as `(tool, Debian package)`. Every missing piece is listed.
pub fn node_task_prerequisites(why: &str, tools: &[(&str, &str)]) -> Result<(), Vec<String>> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push(format!("not root (euid {}): {why}", euid()));
    }
    missing_kernel_prerequisites(&mut missing);
    missing_tools(tools, &mut missing);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// Adds each `(tool, Debian package)` that is not on `PATH`.
fn missing_tools(tools: &[(&str, &str)], missing: &mut Vec<String>) {
    for (tool, package) in tools {
        if !on_path(tool) {
            missing.push(format!(
                "`{tool}` is not on PATH (Debian package {package})"
            ));
        }
    }
}

/// Bytes free to an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `st` is a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether `program` is an executable on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The workspace's root directory (xtask's parent).
pub fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_owned()
}

/// Builds `bin` of the test crate (`integration-tests`), the programs the
/// cluster steps run beside the agent, and returns its path.
pub fn test_binary(bin: &str, release: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let mut build = crate::run::cargo();
    build
        .args(["build", "-p", "integration-tests", "--bin", bin])
        .current_dir(&root);
    if release {
        build.arg("--release");
    }
    crate::run::check(&mut build)?;
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir(&root).join(profile).join(bin))
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                root.join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| root.join("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_by_type_in_hybrid_and_unified_tables() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:3 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_in(hybrid, "cgroup2").as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        assert_eq!(mount_in(hybrid, "bpf"), None);
        let unified = "26 22 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                       27 22 0:25 / /sys/fs/bpf rw - bpf bpf rw,mode=700\n";
        assert_eq!(mount_in(unified, "bpf").as_deref(), Some("/sys/fs/bpf"));
    }

    #[test]
    fn reads_the_bpf_linker_version() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0").as_deref(),
            Some("0.13.0")
        );
        assert_eq!(parse_bpf_linker_version("bpf-linker"), None);
    }
}
