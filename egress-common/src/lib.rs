//! Types shared by the eBPF programs and the agent.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every
//! type is `#[repr(C)]`, has no padding, and is `Copy`. The `user` feature
//! implements [`aya::Pod`] for them; the eBPF side never enables it.
#![cfg_attr(not(test), no_std)]

/// Name of the LPM trie of denied IPv4 destination prefixes.
pub const DENY_V4_MAP: &str = "DENY_V4";
/// Name of the LPM trie of denied IPv6 destination prefixes.
pub const DENY_V6_MAP: &str = "DENY_V6";
/// Name of the per-CPU array of [`Counter`]s.
pub const VERDICTS_MAP: &str = "VERDICTS";

/// Capacity of each deny trie. The tries are created with
/// `BPF_F_NO_PREALLOC`, so unused capacity costs no kernel memory.
pub const DENY_MAX_ENTRIES: u32 = 65_536;

/// Names of the programs in the eBPF object, as `aya::Ebpf::program_mut`
/// expects them. They differ from their ELF section names on purpose:
/// bpf-linker rejects a symbol that is named like its own section.
pub mod program {
    /// `cgroup_skb/egress`: drops packets to denied destinations.
    pub const EGRESS_SKB: &str = "egress_skb";
    /// `cgroup/connect4`: refuses `connect()` to denied IPv4 destinations.
    pub const CONNECT4: &str = "egress_connect4";
    /// `cgroup/connect6`: refuses `connect()` to denied IPv6 destinations,
    /// and to IPv4-mapped IPv6 destinations denied by the IPv4 trie.
    pub const CONNECT6: &str = "egress_connect6";
}

/// Key data of the IPv4 deny trie: the destination address in network byte
/// order, because the LPM trie matches bits from the most significant byte
/// of the key data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv4Dest {
    pub addr: [u8; 4],
}

/// Key data of the IPv6 deny trie: the destination address in network byte
/// order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv6Dest {
    pub addr: [u8; 16],
}

/// Value stored for each denied prefix.
///
/// It is a struct, not a bare integer, so later fields (ports, protocol,
/// audit-only mode) can be appended without changing the map's key. The
/// kernel checks the value size at load time, so the agent and the programs
/// must always be built from the same version of this type.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DenyRule {
    /// Opaque identifier chosen by the control plane, so that a verdict can
    /// be traced back to the policy that caused it. 0 means "unnamed".
    pub rule_id: u32,
}

impl DenyRule {
    pub const fn new(rule_id: u32) -> Self {
        Self { rule_id }
    }
}

/// Index of each slot in the per-CPU `VERDICTS` array. Every verdict a
/// program returns increments exactly one counter, so "why was this allowed"
/// always has an answer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// `cgroup_skb/egress` passed an IP packet whose destination is not denied.
    EgressAllowed = 0,
    /// `cgroup_skb/egress` dropped a packet to a denied destination.
    EgressDenied = 1,
    /// `cgroup_skb/egress` passed a packet that is neither IPv4 nor IPv6.
    EgressNotIp = 2,
    /// `cgroup_skb/egress` dropped an IP packet whose header it could not
    /// read (fail closed: an unreadable destination cannot be proven allowed).
    EgressMalformed = 3,
    /// `cgroup/connect4` allowed a connect.
    Connect4Allowed = 4,
    /// `cgroup/connect4` refused a connect to a denied IPv4 destination.
    Connect4Denied = 5,
    /// `cgroup/connect6` allowed a connect (native or IPv4-mapped).
    Connect6Allowed = 6,
    /// `cgroup/connect6` refused a connect to a denied IPv6 destination.
    Connect6Denied = 7,
    /// `cgroup/connect6` refused a connect to an IPv4-mapped IPv6 destination
    /// (`::ffff:a.b.c.d`) whose IPv4 address is denied.
    Connect6MappedDenied = 8,
}

impl Counter {
    /// Number of counters; the size of the `VERDICTS` array.
    pub const COUNT: u32 = 9;

    /// All counters, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::EgressAllowed,
        Counter::EgressDenied,
        Counter::EgressNotIp,
        Counter::EgressMalformed,
        Counter::Connect4Allowed,
        Counter::Connect4Denied,
        Counter::Connect6Allowed,
        Counter::Connect6Denied,
        Counter::Connect6MappedDenied,
    ];

    pub const fn index(self) -> u32 {
        self as u32
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, made only of byte arrays or u32s with
    // no padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Ipv4Dest {}
    unsafe impl aya::Pod for super::Ipv6Dest {}
    unsafe impl aya::Pod for super::DenyRule {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indices_are_dense_and_in_order() {
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(counter.index() as usize, i);
        }
    }

    #[test]
    fn map_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<Ipv4Dest>(), 4);
        assert_eq!(core::mem::size_of::<Ipv6Dest>(), 16);
        assert_eq!(core::mem::size_of::<DenyRule>(), 4);
    }
}
