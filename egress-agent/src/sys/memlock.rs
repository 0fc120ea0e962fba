//! The `RLIMIT_MEMLOCK` limit, which kernels before 5.11 charge eBPF maps to.

use std::io;

/// Lifts `RLIMIT_MEMLOCK` to infinity.
///
/// Since 5.11 the kernel charges eBPF memory to the memory cgroup instead,
/// and a root without `CAP_SYS_RESOURCE` (as in some containers) cannot
/// raise the limit at all. Callers should therefore treat an error as a
/// hint to report if loading later fails, not as fatal.
pub fn raise_memlock_limit() -> io::Result<()> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer to an initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
