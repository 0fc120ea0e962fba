//! Which workload a socket belongs to: the ancestor walk.
//!
//! The programs are attached once, at the agent's cgroup root, so they run
//! for every cgroup below it. A workload is identified by its cgroup id in
//! `WORKLOADS`, and a process may have moved itself into a child cgroup of
//! its workload's (to escape, or because a runtime nests cgroups), so the
//! socket's cgroup is not looked up alone: every ancestor at a level where
//! some workload lives (`CONFIG.level_mask`) is, deepest first, and the first
//! one that is a workload of the active generation decides.

use egress_common::{Config, EXEMPT_POLICY, MAX_LEVEL};

use crate::maps::{ACTIVE, CONFIG, WORKLOADS};

/// The workload a decision is made for.
#[derive(Clone, Copy)]
pub struct Workload {
    /// The workload's own cgroup (an ancestor of, or equal to, the socket's).
    pub cgroup_id: u64,
    /// Its policy in the active generation.
    pub policy: u32,
}

/// What one program run reads once from the settings maps.
#[derive(Clone, Copy)]
pub struct Lookup {
    pub workload: Option<Workload>,
    pub audit: bool,
}

/// Finds the socket's workload. `ancestor(level)` returns the id of the
/// socket's ancestor cgroup at `level` (0 if the cgroup is shallower).
///
/// `ACTIVE` is read before anything else: the agent writes a whole new
/// generation before flipping it, and waits an RCU grace period after the
/// flip before deleting the old one, so every entry this run reads belongs
/// to the generation it read here.
#[inline(always)]
pub fn lookup<F: Fn(u32) -> u64>(ancestor: F) -> Lookup {
    let slot = ACTIVE.get(0).map_or(0, |s| *s & 1);
    let config = CONFIG.get(0).copied().unwrap_or(Config {
        flags: 0,
        level_mask: 0,
    });
    let audit = config.flags & Config::AUDIT != 0;
    let mut i = 0;
    while i <= MAX_LEVEL {
        let level = MAX_LEVEL - i;
        i += 1;
        if config.level_mask & (1 << level) == 0 {
            continue;
        }
        let cgroup_id = ancestor(level);
        if cgroup_id == 0 {
            continue;
        }
        // SAFETY: WORKLOADS is not preallocated, so the element stays valid
        // for this RCU read section even if the agent replaces it; the
        // value is copied at once.
        let Some(entry) = (unsafe { WORKLOADS.get(cgroup_id) }).copied() else {
            continue;
        };
        // Written as a branch, not `policy[slot]`, so that no bounds check
        // (and panic path, which the verifier rejects) is generated.
        let policy = if slot == 0 {
            entry.policy[0]
        } else {
            entry.policy[1]
        };
        // 0: this cgroup is a workload in the other generation only, so it
        // is not one now; a shallower workload may still govern it.
        // An exempt cgroup (a hostNetwork pod, the agent itself) is
        // unmanaged, whatever an ancestor (a guarded root) would say.
        if policy == EXEMPT_POLICY {
            return Lookup {
                workload: None,
                audit,
            };
        }
        if policy != 0 {
            return Lookup {
                workload: Some(Workload { cgroup_id, policy }),
                audit,
            };
        }
    }
    Lookup {
        workload: None,
        audit,
    }
}
