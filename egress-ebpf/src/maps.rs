//! Maps shared with the agent, and the lookups the programs make in them.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, LpmTrie, PerCpuArray},
};
use egress_common::{Counter, DenyRule, Ipv4Dest, Ipv6Dest, DENY_MAX_ENTRIES};

/// Denied IPv4 destination prefixes. Filled by the agent.
#[map(name = "DENY_V4")]
static DENY_V4: LpmTrie<Ipv4Dest, DenyRule> = LpmTrie::with_max_entries(DENY_MAX_ENTRIES, 0);

/// Denied IPv6 destination prefixes. Filled by the agent.
#[map(name = "DENY_V6")]
static DENY_V6: LpmTrie<Ipv6Dest, DenyRule> = LpmTrie::with_max_entries(DENY_MAX_ENTRIES, 0);

/// One counter per [`Counter`]. Per-CPU, so incrementing needs no atomics;
/// the agent sums the CPUs.
#[map(name = "VERDICTS")]
static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Whether `addr` (network byte order) falls in a denied IPv4 prefix.
#[inline(always)]
pub fn v4_denied(addr: [u8; 4]) -> bool {
    // A full-length key asks the trie for the longest stored prefix that
    // contains the address.
    DENY_V4.get(Key::new(32, Ipv4Dest { addr })).is_some()
}

/// Whether `addr` (network byte order) falls in a denied IPv6 prefix.
#[inline(always)]
pub fn v6_denied(addr: [u8; 16]) -> bool {
    DENY_V6.get(Key::new(128, Ipv6Dest { addr })).is_some()
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = VERDICTS.get_ptr_mut(counter.index()) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU
        // array, so it is valid and only this CPU writes to it.
        unsafe { *slot += 1 };
    }
}
