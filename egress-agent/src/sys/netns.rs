//! A workload's network namespace, found from its cgroup as in
//! [`super::ports`], and sockets opened inside it.
//!
//! A socket belongs to the namespace it was created in for its whole life,
//! whatever the creating thread does next. So a short-lived thread enters
//! the namespace (`setns`, which affects that thread only), creates and
//! binds the socket, and ends; the agent then serves it from its own
//! runtime in the node's namespace. Binding a loopback address there gives
//! a service that only the workload's own processes can reach: every
//! network namespace has its own loopback.

use std::{
    fs::{self, File},
    io,
    net::{SocketAddr, UdpSocket},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

use super::ports::processes;

/// A network namespace, held open.
#[derive(Debug)]
pub struct Netns {
    file: File,
    /// `(dev, inode)` of the namespace file: equal ids, same namespace.
    pub id: (u64, u64),
}

impl Netns {
    /// The namespace of the first process of `cgroup` (or below it) whose
    /// namespace this process may open and that is not the caller's own
    /// (a host-network workload has none of its own). A pod's processes
    /// share one namespace, so the first is as good as any.
    pub fn of_cgroup(cgroup: &Path) -> Option<Self> {
        let own = fs::metadata("/proc/thread-self/ns/net").ok()?;
        let own = (own.dev(), own.ino());
        processes(cgroup).into_iter().find_map(|pid| {
            let file = File::open(format!("/proc/{pid}/ns/net")).ok()?;
            let meta = file.metadata().ok()?;
            let id = (meta.dev(), meta.ino());
            (id != own).then_some(Self { file, id })
        })
    }

    /// A non-blocking UDP socket bound to `addr` inside this namespace.
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: `fd` is an open namespace file for the life of
                    // `self`; setns changes only this thread, which ends
                    // right after.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let socket = UdpSocket::bind(addr)?;
                    socket.set_nonblocking(true)?;
                    Ok(socket)
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_without_processes_has_no_namespace() {
        assert!(Netns::of_cgroup(Path::new("/nonexistent/cgroup")).is_none());
    }
}
