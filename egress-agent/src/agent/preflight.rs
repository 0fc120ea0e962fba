//! Startup checks: refuse to run, with a message that says what to fix,
//! rather than fail later with a bare errno from the kernel.
//!
//! [`check_inputs`] runs before anything is loaded, attached or pinned: a
//! start that fails on a bad argument must leave the kernel exactly as it
//! found it (a missing `--policies` used to be noticed only after ten
//! programs were attached and 36 pins written, all left behind).

use std::{
    fs, io,
    net::SocketAddr,
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
};

use tracing::{error, warn};

use crate::dataplane::nft::{Backstop, NftError};
use egress_policy::{Rejected, Severity};

/// Capabilities `run` needs, as bit numbers of `CapEff`.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "egress-agent run needs root, or the capabilities CAP_BPF, CAP_NET_ADMIN and \
         CAP_SYS_ADMIN; missing: {missing}"
    )]
    Privileges { missing: String },
    #[error("the nft binary was not found ({source}); install nftables or pass --no-nft")]
    NoNft {
        #[source]
        source: io::Error,
    },
    #[error("nft does not work ({source}); fix nftables or pass --no-nft")]
    Nft {
        #[source]
        source: NftError,
    },
    #[error("bpffs is not mounted at {path} and mounting it failed: {source}")]
    Bpffs {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("--policies {}: cannot read it", path.display())]
    Policies {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "--policies: the policy set is rejected ({} error(s), listed above) and no earlier \
         generation is pinned under {} (--bpffs): refusing to start, since nothing would be \
         enforced; fix the policy and start again",
        rejected.error_count(),
        pin_dir.display()
    )]
    FirstPolicyRejected {
        rejected: Rejected,
        pin_dir: PathBuf,
    },
    #[error(transparent)]
    Cgroup2(crate::sys::SysError),
    #[error("--cgroup-root {}: {reason}", path.display())]
    CgroupRoot { path: PathBuf, reason: String },
    #[error("--socket {}: {reason}", path.display())]
    Socket { path: PathBuf, reason: String },
    #[error("--metrics-addr {addr}: cannot listen there")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// What `run` was given, as far as it can be checked without the kernel.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub policies: &'a [PathBuf],
    /// In Kubernetes mode the files are only part of the set (the API
    /// server supplies the rest), so they are checked to exist, not loaded.
    pub kubernetes: bool,
    pub pin_dir: &'a Path,
    /// `None`: the cgroup2 mount's root.
    pub cgroup_root: Option<&'a Path>,
    pub socket: &'a Path,
    pub metrics_addrs: &'a [SocketAddr],
}

/// What [`check_inputs`] found and holds for the start.
#[derive(Debug)]
pub struct Checked {
    /// `--metrics-addr`, already bound: binding is the only real test that
    /// the address is usable, and keeping the socket means nothing can take
    /// it between the check and the start.
    pub metrics: Vec<std::net::TcpListener>,
    /// The policy set is rejected but an earlier run's generation is
    /// pinned: it stays in force, and the agent reports not-ready until a
    /// valid set is applied.
    pub start_not_ready: bool,
}

/// Checks every argument and input of `run` that can be checked without
/// touching the kernel. Policy findings are logged, each naming its file,
/// object and field.
pub fn check_inputs(inputs: &Inputs<'_>) -> Result<Checked, PreflightError> {
    for path in inputs.policies {
        fs::metadata(path).map_err(|source| PreflightError::Policies {
            path: path.clone(),
            source,
        })?;
    }
    check_cgroup_root(inputs.cgroup_root)?;
    check_socket(inputs.socket)?;
    let metrics = inputs
        .metrics_addrs
        .iter()
        .map(|&addr| {
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| PreflightError::Metrics { addr, source })
        })
        .collect::<Result<_, _>>()?;
    let mut start_not_ready = false;
    if !inputs.kubernetes {
        if let Err(rejected) = egress_policy::load(inputs.policies) {
            for d in &rejected.diagnostics {
                match d.severity {
                    Severity::Error => error!(target: "policy", "{d}"),
                    Severity::Warning => warn!(target: "policy", "{d}"),
                }
            }
            // Fail closed: without an earlier generation the programs
            // would be attached with nothing to enforce.
            if !crate::dataplane::Dataplane::is_pinned(inputs.pin_dir) {
                return Err(PreflightError::FirstPolicyRejected {
                    rejected,
                    pin_dir: inputs.pin_dir.to_owned(),
                });
            }
            warn!(
                pin_dir = %inputs.pin_dir.display(),
                "the policy set is rejected; the generation pinned by an earlier run stays in \
                 force, and the agent is not ready until a valid policy set is applied"
            );
            start_not_ready = true;
        }
    }
    Ok(Checked {
        metrics,
        start_not_ready,
    })
}

/// `--cgroup-root` must be a directory of the cgroup2 hierarchy: the
/// kernel's answer for anything else (EBADF from `bpf_link_create`) names
/// nothing.
fn check_cgroup_root(root: Option<&Path>) -> Result<(), PreflightError> {
    // Without a cgroup2 mount no root can do; say that, not that the
    // given root is missing.
    crate::sys::cgroup2_mount().map_err(PreflightError::Cgroup2)?;
    let Some(path) = root else {
        return Ok(()); // the mount itself
    };
    let fail = |reason: String| PreflightError::CgroupRoot {
        path: path.to_owned(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    match crate::sys::is_cgroup2_dir(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(fail("not a cgroup v2 directory".into())),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// `--socket`: what the server will do (create the parent directory,
/// replace a stale socket) must be possible, without doing it yet: another
/// agent may still own the socket, and only the pin directory's lock,
/// taken later, tells.
fn check_socket(path: &Path) -> Result<(), PreflightError> {
    let fail = |reason: String| PreflightError::Socket {
        path: path.to_owned(),
        reason,
    };
    if path.file_name().is_none() {
        return Err(fail("not a file path".into()));
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {}
        Ok(_) => {
            return Err(fail(
                "exists and is not a socket (the agent replaces only a stale socket)".into(),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    // The nearest existing ancestor must be a directory the agent can
    // create the rest in.
    let parent = path.parent().unwrap_or(Path::new("/"));
    let existing = parent
        .ancestors()
        .find(|p| p.as_os_str().is_empty() || p.exists())
        .unwrap_or(Path::new("/"));
    if existing.as_os_str().is_empty() {
        return Ok(()); // relative to the working directory
    }
    match fs::metadata(existing) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(fail(format!("{} is not a directory", existing.display()))),
        Err(e) => Err(fail(format!("{}: {e}", existing.display()))),
    }
}

/// Checks privileges and, when the backstop is wanted, that its nft runs
/// (within its timeout).
pub fn check(backstop: Option<&Backstop>) -> Result<(), PreflightError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let missing = missing_caps(&status);
    if !missing.is_empty() {
        return Err(PreflightError::Privileges {
            missing: missing.join(", "),
        });
    }
    match backstop.map(Backstop::version) {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(NftError::Run { source, .. })) => Err(PreflightError::NoNft { source }),
        Some(Err(source)) => Err(PreflightError::Nft { source }),
    }
}

/// Mounts bpffs at the standard `/sys/fs/bpf` when the pin directory is
/// under it and nothing is mounted there yet (systemd does this at boot;
/// minimal hosts and containers may not). Any other location is left to the
/// data plane's own check, which refuses a pin directory off bpffs: the
/// agent never mounts over a path it was merely given.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), PreflightError> {
    let standard = Path::new(crate::sys::BPFFS_DEFAULT_PATH);
    if !pin_dir.starts_with(standard) {
        return Ok(());
    }
    let mounted = crate::sys::mountinfo::read_self()
        .map(|mounts| {
            mounts
                .iter()
                .any(|m| m.fs_type == "bpf" && m.mount_point == standard)
        })
        .unwrap_or(false);
    if mounted {
        return Ok(());
    }
    let fail = |source| PreflightError::Bpffs {
        path: standard.display().to_string(),
        source,
    };
    fs::create_dir_all(standard).map_err(fail)?;
    // SAFETY: mount(2) with NUL-terminated static strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    Ok(())
}

/// The needed capabilities that `CapEff` in `/proc/self/status` lacks.
fn missing_caps(status: &str) -> Vec<&'static str> {
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    [
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| eff & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_capeff() {
        assert!(
            missing_caps("CapEff:\t000001ffffffffff\n").is_empty(),
            "root"
        );
        assert_eq!(
            missing_caps("CapEff:\t0000000000000000\n"),
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
        );
        let bpf_and_net = (1u64 << CAP_BPF) | (1 << CAP_NET_ADMIN);
        assert_eq!(
            missing_caps(&format!("CapEff: {bpf_and_net:016x}\n")),
            ["CAP_SYS_ADMIN"]
        );
        assert_eq!(missing_caps("garbage").len(), 3, "unreadable means missing");
    }
}
