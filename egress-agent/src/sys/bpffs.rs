//! The BPF filesystem, where maps and links are pinned to outlive the agent.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::{mountinfo, statfs, SysError};

/// Where bpffs is conventionally mounted; `cargo xtask setup` mounts it
/// there when it is missing.
pub const BPFFS_DEFAULT_PATH: &str = "/sys/fs/bpf";

/// Where a bpf filesystem is mounted in this process's mount namespace.
pub fn bpffs_mount() -> Result<PathBuf, SysError> {
    let mounts = mountinfo::read_self()?;
    mountinfo::find(&mounts, "bpf")
        .map(|m| m.mount_point)
        .ok_or_else(|| SysError::NoBpffsMount {
            mountinfo: PathBuf::from(mountinfo::SELF_MOUNTINFO),
        })
}

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a bpf filesystem, where objects can be pinned.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    Ok(statfs::fs_type(path)? == BPF_FS_MAGIC)
}
