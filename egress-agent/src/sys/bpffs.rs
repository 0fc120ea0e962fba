//! The BPF filesystem, where maps and links are pinned to outlive the agent.

use std::path::PathBuf;

use super::{mountinfo, SysError};

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
