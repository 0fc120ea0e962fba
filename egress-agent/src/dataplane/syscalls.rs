//! The few bpf(2) and membarrier(2) calls aya 0.14 does not expose, and
//! the programs' clock.
//!
//! aya 0.14 attaches `cgroup/getsockopt` with a bpf_link but cannot hand
//! that link out as an `FdLink` to pin, so that link is created here; nor
//! does it wrap `BPF_PROG_TEST_RUN`, which the program-level tests use.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
    thread,
    time::Duration,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
/// `BPF_CGROUP_GETSOCKOPT` of `enum bpf_attach_type`.
pub(super) const BPF_CGROUP_GETSOCKOPT: u32 = 21;
/// `BPF_CGROUP_SETSOCKOPT`.
pub(super) const BPF_CGROUP_SETSOCKOPT: u32 = 22;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_CGROUP: u32 = 3;
/// `MEMBARRIER_CMD_GLOBAL` (formerly `MEMBARRIER_CMD_SHARED`).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// What the kernel says about a pinned link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LinkInfo {
    pub(super) id: u32,
    pub(super) prog_id: u32,
    /// The cgroup the link is attached to; `None` for other link types.
    pub(super) cgroup_id: Option<u64>,
    pub(super) attach_type: u32,
}

/// `struct bpf_link_info` up to the cgroup member of its union.
#[repr(C)]
#[derive(Default)]
struct RawLinkInfo {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _rest: [u32; 13],
}

/// Opens the object pinned at `path`.
pub(super) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = ObjAttr::new(&path, 0);
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for this command and
    // `path` outlives the call.
    unsafe { bpf_new_fd(BPF_OBJ_GET, &mut attr) }
}

/// `BPF_LINK_CREATE`: attaches `prog` to the cgroup `cgroup` with a new
/// bpf_link (multi-attach, as every cgroup link is).
pub(super) fn cgroup_link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        _pad: [u32; 12],
    }
    let mut attr = Attr {
        prog_fd: fd_u32(prog)?,
        target_fd: fd_u32(cgroup)?,
        attach_type,
        flags: 0,
        _pad: [0; 12],
    };
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for this command.
    unsafe { bpf_new_fd(BPF_LINK_CREATE, &mut attr) }
}

/// `BPF_OBJ_PIN`: pins the object `fd` at `path` (on bpffs).
pub(super) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = ObjAttr::new(&path, fd_u32(fd)?);
    // SAFETY: as for BPF_OBJ_GET; `path` outlives the call.
    unsafe { bpf(BPF_OBJ_PIN, &mut attr) }?;
    Ok(())
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
pub(super) fn link_info(fd: &OwnedFd) -> io::Result<LinkInfo> {
    let mut info = RawLinkInfo::default();
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
        _pad: [u32; 12],
    }
    let mut attr = Attr {
        bpf_fd: fd_u32(fd.as_fd())?,
        info_len: size_of::<RawLinkInfo>() as u32,
        info: &mut info as *mut RawLinkInfo as u64,
        _pad: [0; 12],
    };
    // SAFETY: `attr` points at `info`, which is as large as `info_len` says
    // and lives across the call.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(LinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        cgroup_id: (info.type_ == BPF_LINK_TYPE_CGROUP).then_some(info.cgroup_id),
        attach_type: info.attach_type,
    })
}

/// `BPF_PROG_GET_FD_BY_ID`: a descriptor of the loaded program `id`.
pub(super) fn prog_get_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
        _pad: [u32; 13],
    }
    let mut attr = Attr {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
        _pad: [0; 13],
    };
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for this command.
    unsafe { bpf_new_fd(BPF_PROG_GET_FD_BY_ID, &mut attr) }
}

/// `BPF_PROG_TEST_RUN`: runs `prog` once on `data` (no context in or
/// out, no data copied back) and returns the program's return value.
pub(super) fn prog_test_run(prog: BorrowedFd<'_>, data: &[u8]) -> io::Result<u32> {
    #[repr(C)]
    struct Attr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut attr = Attr {
        prog_fd: fd_u32(prog)?,
        retval: 0,
        data_size_in: u32::try_from(data.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        data_size_out: 0,
        data_in: data.as_ptr() as u64,
        data_out: 0,
        repeat: 1,
        duration: 0,
        ctx_size_in: 0,
        ctx_size_out: 0,
        ctx_in: 0,
        ctx_out: 0,
        flags: 0,
        cpu: 0,
        batch_size: 0,
        _pad: 0,
    };
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for this command;
    // `data_in` points at `data`, which outlives the call, and no output
    // buffer is given.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok(attr.retval)
}

/// `union bpf_attr` for BPF_OBJ_PIN and BPF_OBJ_GET: pathname, bpf_fd,
/// file_flags.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: [u32; 11],
}

impl ObjAttr {
    /// The pointer into `path` is only valid while `path` lives.
    fn new(path: &CString, bpf_fd: u32) -> Self {
        Self {
            pathname: path.as_ptr() as u64,
            bpf_fd,
            file_flags: 0,
            path_fd: 0,
            _pad: [0; 11],
        }
    }
}

/// `bpf(cmd, attr)`: the syscall's non-negative return value, or errno.
///
/// # Safety
/// `attr` must be a valid, zero-padded `bpf_attr` for `cmd`, and every
/// pointer in it must outlive the call.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// `bpf(cmd, attr)` for a command that returns a new descriptor.
///
/// # Safety
/// As for [`bpf`].
unsafe fn bpf_new_fd<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<OwnedFd> {
    // SAFETY: the caller vouches for `attr`.
    let fd = unsafe { bpf(cmd, attr) }?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A descriptor as the `u32` that `bpf_attr` holds.
fn fd_u32(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `path` NUL-terminated, for the kernel.
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Waits until every eBPF program that was running when it was called has
/// returned.
///
/// cgroup programs run inside an RCU read-side critical section, and
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()`: once it
/// returns, no program still holds a value read before the call (such as
/// the previous `ACTIVE` slot). Kernels with `nohz_full` refuse the
/// command; a sleep far longer than any program run stands in then.
pub(super) fn wait_for_running_programs() -> Duration {
    let start = std::time::Instant::now();
    // SAFETY: plain syscall without pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, which
/// stamps `INBOUND_UDP` values. `None` if it cannot be read.
pub(super) fn monotonic_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}
