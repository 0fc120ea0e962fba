//! Which filesystem a path is on (statfs(2)).

use std::{ffi::CString, io, mem::MaybeUninit, os::unix::ffi::OsStrExt as _, path::Path};

/// `f_type` of the filesystem `path` is on: a `*_MAGIC` of `linux/magic.h`.
pub(super) fn fs_type(path: &Path) -> io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `buf` is large enough; the
    // kernel fills it when the call succeeds.
    if unsafe { libc::statfs(c_path.as_ptr(), buf.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so `buf` is initialised.
    let stat = unsafe { buf.assume_init() };
    #[allow(clippy::unnecessary_cast, reason = "f_type's type differs by arch")]
    Ok(stat.f_type as i64)
}
