//! Host facts the agent depends on: cgroup2 and bpffs mounts, the memlock
//! limit, the workloads' ports on the node ([`ports`]) and sockets in their
//! network namespaces ([`netns`]).
//!
//! Nothing here hard-codes a path: distributions and container runtimes
//! mount cgroup2 at `/sys/fs/cgroup` (unified), `/sys/fs/cgroup/unified`
//! (hybrid) or elsewhere, so the mount table is the only source of truth.

mod bpffs;
mod cgroup;
mod error;
pub mod heap;
mod memlock;
pub mod mountinfo;
mod netlink;
pub mod netns;
pub mod ports;
mod statfs;

pub use bpffs::{bpffs_mount, is_bpffs, BPFFS_DEFAULT_PATH};
pub use cgroup::{cgroup2_mount, cgroup2_mount_entry, is_cgroup2_dir};
pub use error::SysError;
pub use memlock::raise_memlock_limit;
