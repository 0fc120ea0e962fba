//! Startup checks: refuse to run, with a message that says what to fix,
//! rather than fail later with a bare errno from the kernel.

use std::{fs, io, path::Path, process::Command};

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
    #[error("bpffs is not mounted at {path} and mounting it failed: {source}")]
    Bpffs {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Checks privileges and, when the backstop is wanted, the nft binary.
pub fn check(nft: bool) -> Result<(), PreflightError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let missing = missing_caps(&status);
    if !missing.is_empty() {
        return Err(PreflightError::Privileges {
            missing: missing.join(", "),
        });
    }
    if nft {
        Command::new("nft")
            .arg("--version")
            .output()
            .map_err(|source| PreflightError::NoNft { source })?;
    }
    Ok(())
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
