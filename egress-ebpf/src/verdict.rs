//! Outcomes and the one place they become return codes and counters; and
//! the counters of the recording programs, which decide nothing.

use aya_ebpf::bindings::BPF_NOEXIST;
use egress_common::{verdict_index, FlowEvent, HitKey, Hook, Reason, NO_RULE};

use crate::maps::{FLOW_EVENTS, RULE_HITS, VERDICTS};

/// What a program decided, for whom, and why.
#[derive(Clone, Copy)]
pub struct Outcome {
    pub reason: Reason,
    /// The deciding rule or gateway host, or `NO_RULE`.
    pub rule: u32,
    /// The workload's cgroup; 0 when the socket is unmanaged.
    pub cgroup_id: u64,
    /// Audit mode was on: a would-deny passes.
    pub audit_mode: bool,
}

impl Outcome {
    pub const fn unmanaged(audit_mode: bool) -> Self {
        Self {
            reason: Reason::Unmanaged,
            rule: NO_RULE,
            cgroup_id: 0,
            audit_mode,
        }
    }
}

/// Return value that lets the packet or the syscall through. `cgroup_skb`
/// and `cgroup/connect*`/`sendmsg*` programs share the convention: 1 allows,
/// 0 denies (a denied connect or sendmsg fails with EPERM, a denied packet
/// is dropped).
const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// Counts `outcome` (globally, and per workload and rule) and returns the
/// matching return code.
#[inline(always)]
pub fn conclude(hook: Hook, outcome: Outcome) -> i32 {
    let deny = outcome.reason.denies();
    let audit = deny && outcome.audit_mode;
    let index = verdict_index(hook, outcome.reason, audit);
    if let Some(slot) = VERDICTS.get_ptr_mut(index) {
        // SAFETY: from a successful lookup in a per-CPU array: valid, and
        // only this CPU writes to it.
        unsafe { *slot += 1 };
    }
    if outcome.cgroup_id != 0 {
        let key = HitKey {
            cgroup_id: outcome.cgroup_id,
            rule: outcome.rule,
            verdict: index,
        };
        match RULE_HITS.get_ptr_mut(key) {
            // SAFETY: this CPU's value of a per-CPU map element.
            Some(hits) => unsafe { *hits += 1 },
            // Losing a race with another CPU's insert only loses one count.
            None => {
                // A stack value: a reference to a literal would be placed in
                // `.rodata`, which would cost an extra, unpinned map.
                let one = core::hint::black_box(1u64);
                let _ = RULE_HITS.insert(key, one, u64::from(BPF_NOEXIST));
            }
        }
    }
    if deny && !audit {
        DENY
    } else {
        ALLOW
    }
}

/// Counts one event of the recording programs (or of the reply lookups).
#[inline(always)]
pub fn count(event: FlowEvent) {
    if let Some(slot) = FLOW_EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: this CPU's slot of a per-CPU array, from a successful
        // lookup.
        unsafe { *slot += 1 };
    }
}
