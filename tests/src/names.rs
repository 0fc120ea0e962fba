//! Unique names, and sweeping what crashed runs left behind.

use std::{
    fs,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Once,
    },
};

/// Prefix of every network namespace the fixtures create.
pub const NETNS_PREFIX: &str = "egt";
/// Prefix of every cgroup the fixtures create.
pub const CGROUP_PREFIX: &str = "egress-test";
/// Prefix of every bpffs pin directory the fixtures create.
pub const PIN_PREFIX: &str = "egress-test";

static NEXT: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// `<prefix>-<pid>-<n>`: unique among the tests of this process (which run
/// in parallel threads) and among concurrent test processes.
pub fn unique(prefix: &str) -> String {
    SWEEP.call_once(sweep_stale);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// The pid embedded in a name made by [`unique`].
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?
        .strip_prefix('-')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces, cgroups and pin directories whose creating process
/// is gone (it was killed before its `Drop`s could run).
fn sweep_stale() {
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_pid(&name, NETNS_PREFIX).is_some_and(|pid| !is_alive(pid)) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
    if let Ok(mount) = egress_agent::sys::cgroup2_mount() {
        if let Ok(entries) = fs::read_dir(&mount) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if owner_pid(&name, CGROUP_PREFIX).is_some_and(|pid| !is_alive(pid)) {
                    crate::cgroup::remove(&entry.path());
                }
            }
        }
    }
    if let Ok(mount) = egress_agent::sys::bpffs_mount() {
        if let Ok(entries) = fs::read_dir(&mount) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if owner_pid(&name, PIN_PREFIX).is_some_and(|pid| !is_alive(pid)) {
                    let _ = egress_agent::dataplane::Dataplane::uninstall(&entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_carry_the_pid() {
        let a = unique("x");
        let b = unique("x");
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a, "x"), Some(std::process::id()));
        assert_eq!(owner_pid("egt-12-3-c", NETNS_PREFIX), Some(12));
        assert_eq!(owner_pid("egtx-12-3", NETNS_PREFIX), None);
        assert_eq!(owner_pid("other", NETNS_PREFIX), None);
    }
}
