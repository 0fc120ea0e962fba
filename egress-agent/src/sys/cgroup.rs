//! The cgroup v2 hierarchy.

use std::{
    ffi::CString,
    io,
    mem::MaybeUninit,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use super::{mountinfo, SysError};

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where the unified (v2) cgroup hierarchy is mounted in this process's
/// mount namespace.
///
/// cgroup eBPF programs only attach to v2 directories. On hybrid hosts the
/// v2 hierarchy sits beside the v1 controllers (often at
/// `/sys/fs/cgroup/unified`), so it is looked up, never assumed.
pub fn cgroup2_mount() -> Result<PathBuf, SysError> {
    let mounts = mountinfo::read_self()?;
    mountinfo::find(&mounts, "cgroup2")
        .map(|m| m.mount_point)
        .ok_or_else(|| SysError::NoCgroup2Mount {
            mountinfo: PathBuf::from(mountinfo::SELF_MOUNTINFO),
        })
}

/// Whether `path` is a directory of a cgroup v2 filesystem.
///
/// Checked before attaching because the kernel's answer for a v1 or plain
/// directory (EBADF from `bpf_link_create`) does not say what is wrong.
pub fn is_cgroup2_dir(path: &Path) -> Result<bool, SysError> {
    let stat_err = |source| SysError::Stat {
        path: path.to_owned(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| stat_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut buf = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `buf` is large enough; the
    // kernel fills it when the call succeeds.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(stat_err(io::Error::last_os_error()));
    }
    // SAFETY: statfs returned 0, so `buf` is initialised.
    let stat = unsafe { buf.assume_init() };
    #[allow(clippy::unnecessary_cast, reason = "f_type's type differs by arch")]
    let f_type = stat.f_type as i64;
    Ok(f_type == CGROUP2_SUPER_MAGIC && path.is_dir())
}
