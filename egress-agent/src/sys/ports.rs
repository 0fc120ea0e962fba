//! Which of the node's interfaces a workload's traffic enters through: the
//! node's end of its pod's veth (its *port*), learned from its cgroup.
//!
//! The chain is cgroup → the processes in it (`cgroup.procs`, the whole
//! subtree) → their network namespaces (`/proc/PID/ns/net`) → the node's
//! links whose peer is in one of them (`IFLA_LINK_NETNSID` equal to the id
//! the node's namespace gives that namespace, `RTM_GETNSID`). Every step is
//! the kernel's own account, none is something the workload declares: a
//! pod cannot name another pod's port as its own, and the addresses it
//! sends from play no part.
//!
//! Done in the calling thread's namespace (the node's, where the agent
//! runs), without entering the workloads' namespaces. Needs to see the
//! workloads' processes: root in the node's PID namespace (in Kubernetes,
//! a DaemonSet with `hostPID` and `CAP_SYS_PTRACE` for pods that run as
//! another user).

use std::{
    collections::{BTreeSet, HashSet},
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

use super::netlink::{Link, Route};

/// Processes looked at per workload. Enough for every namespace a pod's
/// processes share, and a bound on the work a workload that forks without
/// end can cause.
const MAX_PROCESSES: usize = 256;
/// Cgroup directories walked per workload, for the same reason.
const MAX_CGROUPS: usize = 256;

/// The node's links, read once, to find several workloads' ports.
pub struct PortFinder {
    route: Route,
    links: Vec<Link>,
    /// `(dev, inode)` of the caller's own namespace: a workload in it (a
    /// host-network pod) has no port, its traffic is not forwarded.
    own_netns: (u64, u64),
}

/// What [`PortFinder::ports_of`] found for one workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ports {
    /// The node's interfaces whose peer is in the workload's namespaces,
    /// sorted.
    pub names: Vec<String>,
    /// Processes of the workload that this process could not see or open
    /// (another PID namespace, no ptrace access): when every one was such,
    /// `names` is empty for want of a look, not of a port.
    pub unseen: usize,
}

impl PortFinder {
    /// Reads the links of the calling thread's network namespace.
    pub fn new() -> io::Result<Self> {
        let own = fs::metadata("/proc/thread-self/ns/net")?;
        let mut route = Route::open()?;
        let links = route.links()?;
        Ok(Self {
            route,
            links,
            own_netns: (own.dev(), own.ino()),
        })
    }

    /// The ports of the workload whose cgroup directory is `cgroup`. A
    /// workload with no process (yet), or only in this namespace, has
    /// none.
    pub fn ports_of(&mut self, cgroup: &Path) -> Ports {
        let mut found = Ports::default();
        let mut seen = HashSet::from([self.own_netns]);
        let mut names = BTreeSet::new();
        for pid in processes(cgroup) {
            let path = format!("/proc/{pid}/ns/net");
            let Ok(netns) = File::open(&path) else {
                found.unseen += 1; // it exited, or we may not look
                continue;
            };
            let Ok(meta) = netns.metadata() else {
                found.unseen += 1;
                continue;
            };
            // A pod's processes share one namespace: ask about it once.
            if !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            let Ok(Some(id)) = self.route.netns_id(netns.as_raw_fd()) else {
                continue;
            };
            names.extend(
                self.links
                    .iter()
                    .filter(|l| l.peer_netns == Some(id))
                    .map(|l| l.name.clone()),
            );
        }
        found.names = names.into_iter().collect();
        found
    }
}

/// The pids in `cgroup` and below, at most [`MAX_PROCESSES`]. A process
/// may move into a child cgroup of its workload's, and Kubernetes puts a
/// pod's processes in one child cgroup per container.
pub(super) fn processes(cgroup: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    let mut walked = 0;
    while let Some(dir) = dirs.pop() {
        walked += 1;
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            // Kept when 0 (a process of another PID namespace): counted
            // as unseen.
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if pids.len() >= MAX_PROCESSES {
            pids.truncate(MAX_PROCESSES);
            break;
        }
        if walked >= MAX_CGROUPS {
            break;
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_cgroup_has_no_processes_and_no_ports() {
        assert!(processes(Path::new("/nonexistent/cgroup")).is_empty());
        let mut finder = PortFinder::new().unwrap();
        assert_eq!(
            finder.ports_of(Path::new("/nonexistent/cgroup")),
            Ports::default()
        );
    }
}
