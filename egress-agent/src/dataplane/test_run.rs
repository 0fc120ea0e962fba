//! Running a loaded program once on a crafted packet (`BPF_PROG_TEST_RUN`),
//! for the program-level tests (`tests/tests/packet_parsing.rs`).
//!
//! For a `cgroup_skb` program the kernel wraps the data in an skb whose
//! socket is a dummy it allocates for the run, and a new socket belongs to
//! the cgroup of the task that creates it. The programs find the workload
//! through that socket's ancestor cgroups, so the call decides as the
//! calling process's cgroup would: make it from inside the workload's.

use std::{io, os::fd::AsFd as _};

use super::syscalls;

/// Runs the loaded program `program_id` once on `data` and returns its
/// return value (for the cgroup programs: 1 allows, 0 denies). For
/// `cgroup_skb`, `data` is an Ethernet frame: the kernel takes the
/// protocol from its header and hands the program the packet after it.
pub fn test_run(program_id: u32, data: &[u8]) -> io::Result<u32> {
    let program = syscalls::prog_get_fd_by_id(program_id)?;
    syscalls::prog_test_run(program.as_fd(), data)
}
