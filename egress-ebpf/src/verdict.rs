//! Verdicts and the one place they become return codes.

use egress_common::Counter;

use crate::maps::count;

/// What a program decided, and which counter records why.
#[derive(Clone, Copy)]
pub enum Verdict {
    Allow(Counter),
    Deny(Counter),
}

/// Return value that lets the packet or the syscall through. `cgroup_skb`
/// and `cgroup/connect*` programs share the convention: 1 allows, 0 denies
/// (a denied connect fails with EPERM, a denied packet is dropped).
const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// Counts `verdict` and returns the matching return code.
#[inline(always)]
pub fn apply(verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Allow(counter) => {
            count(counter);
            ALLOW
        }
        Verdict::Deny(counter) => {
            count(counter);
            DENY
        }
    }
}
