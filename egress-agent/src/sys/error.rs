//! Errors from host inspection.

use std::{io, path::PathBuf};

/// Why a host fact could not be established.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}, line {line}: {reason}")]
    MalformedMountinfo {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    /// cgroup-attached eBPF programs need the unified (v2) hierarchy; a
    /// v1-only host cannot run the agent.
    #[error("no cgroup2 filesystem is mounted (searched {mountinfo}); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup`")]
    NoCgroup2Mount { mountinfo: PathBuf },
    #[error("no bpf filesystem is mounted (searched {mountinfo}); mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NoBpffsMount { mountinfo: PathBuf },
    #[error("inspecting {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
