//! The cgroup v2 hierarchy.

use std::path::{Path, PathBuf};

use super::{mountinfo, mountinfo::Mount, statfs, SysError};

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where the unified (v2) cgroup hierarchy is mounted in this process's
/// mount namespace.
///
/// cgroup eBPF programs only attach to v2 directories. On hybrid hosts the
/// v2 hierarchy sits beside the v1 controllers (often at
/// `/sys/fs/cgroup/unified`), so it is looked up, never assumed.
pub fn cgroup2_mount() -> Result<PathBuf, SysError> {
    cgroup2_mount_entry().map(|m| m.mount_point)
}

/// The mountinfo entry of the cgroup2 mount: [`cgroup2_mount`] and the
/// cgroup mounted there ([`Mount::root`]), which shifts every level.
pub fn cgroup2_mount_entry() -> Result<Mount, SysError> {
    let mounts = mountinfo::read_self()?;
    mountinfo::find(&mounts, "cgroup2").ok_or_else(|| SysError::NoCgroup2Mount {
        mountinfo: PathBuf::from(mountinfo::SELF_MOUNTINFO),
    })
}

/// Whether `path` is a directory of a cgroup v2 filesystem.
///
/// Checked before attaching because the kernel's answer for a v1 or plain
/// directory (EBADF from `bpf_link_create`) does not say what is wrong.
pub fn is_cgroup2_dir(path: &Path) -> Result<bool, SysError> {
    let f_type = statfs::fs_type(path).map_err(|source| SysError::Stat {
        path: path.to_owned(),
        source,
    })?;
    Ok(f_type == CGROUP2_SUPER_MAGIC && path.is_dir())
}
