//! What a policy allows: the keys of the policy-keyed LPM tries (`ALLOW_*`,
//! `GATEWAY_*`, `CLUSTER_*`, `CAPTURE_*`) and the port sets their entries
//! name (`PORT_SETS`).

#[cfg(doc)]
use crate::HitKey;

/// Entries per port set. A bounded loop over them runs for every decision,
/// so the bound is small; a longer list continues in another set
/// ([`PortSet::next`]).
pub const MAX_PORT_ENTRIES: usize = 16;

/// Port sets one prefix's list may span ([`PortSet::next`]): up to
/// `MAX_PORT_ENTRIES * MAX_PORT_CHAIN` (128) entries, which ordinary
/// policies do not reach (a NetworkPolicy with many single ports on one
/// CIDR used to stop the whole node's policy at 17).
pub const MAX_PORT_CHAIN: usize = 8;

/// The port set id that stands for "no port allowed" (an `except` hole).
/// It never has a `PORT_SETS` entry.
pub const EMPTY_SET: u32 = 0;

/// [`PortEntry::rule`] / [`HitKey::rule`] when no rule is involved.
pub const NO_RULE: u32 = u32::MAX;

/// Key data of the IPv4 tries: 32 bits of policy id (or cluster tag), then
/// the address, both in network byte order, so that the trie's prefix
/// length is `32 + prefix` and a match never crosses into another policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyAddrV4 {
    /// The id, big-endian: use [`PolicyAddrV4::new`] / [`PolicyAddrV4::id`].
    pub policy: u32,
    pub addr: [u8; 4],
}

impl PolicyAddrV4 {
    pub const fn new(id: u32, addr: [u8; 4]) -> Self {
        Self {
            policy: id.to_be(),
            addr,
        }
    }

    pub const fn id(&self) -> u32 {
        u32::from_be(self.policy)
    }
}

/// Key data of the IPv6 tries; see [`PolicyAddrV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyAddrV6 {
    pub policy: u32,
    pub addr: [u8; 16],
}

impl PolicyAddrV6 {
    pub const fn new(id: u32, addr: [u8; 16]) -> Self {
        Self {
            policy: id.to_be(),
            addr,
        }
    }

    pub const fn id(&self) -> u32 {
        u32::from_be(self.policy)
    }
}

/// Bits of a trie key taken by the policy id.
pub const POLICY_BITS: u32 = 32;

/// One allowed (protocol, port range) and the rule that allows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortEntry {
    /// Rule id (an index the agent maps back to a NetworkPolicy rule, or a
    /// gateway host index), or [`NO_RULE`].
    pub rule: u32,
    /// First port, host byte order.
    pub start: u16,
    /// Last port, inclusive, host byte order.
    pub end: u16,
    /// IP protocol number; 0 = any protocol (and then any port).
    pub proto: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
}

impl PortEntry {
    pub const fn new(rule: u32, proto: u8, start: u16, end: u16) -> Self {
        Self {
            rule,
            start,
            end,
            proto,
            _pad: [0; 3],
        }
    }

    /// Whether a packet of `proto` to `port` matches. Protocols without
    /// ports are looked up with port 0.
    #[inline(always)]
    pub const fn matches(&self, proto: u8, port: u16) -> bool {
        (self.proto == 0 || self.proto == proto) && self.start <= port && port <= self.end
    }
}

/// `PORT_SETS` value: up to [`MAX_PORT_ENTRIES`] entries, the first `len`
/// used; the list goes on in set `next` ([`EMPTY_SET`]: it ends here).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    pub len: u32,
    pub next: u32,
    pub entries: [PortEntry; MAX_PORT_ENTRIES],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_have_no_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<PolicyAddrV4>(), 8);
        assert_eq!(size_of::<PolicyAddrV6>(), 20);
        assert_eq!(size_of::<PortEntry>(), 4 + 2 + 2 + 1 + 3);
        assert_eq!(size_of::<PortSet>(), 4 + 4 + MAX_PORT_ENTRIES * 12);
    }

    #[test]
    fn policy_ids_are_stored_big_endian() {
        let key = PolicyAddrV4::new(0x0102_0304, [10, 0, 0, 1]);
        // SAFETY: reading the bytes of a padding-free repr(C) struct.
        let bytes: [u8; 8] = unsafe { core::mem::transmute(key) };
        assert_eq!(bytes, [1, 2, 3, 4, 10, 0, 0, 1]);
        assert_eq!(key.id(), 0x0102_0304);
    }

    #[test]
    fn port_entries_match_protocol_and_range() {
        let tcp = PortEntry::new(1, 6, 80, 90);
        assert!(tcp.matches(6, 80) && tcp.matches(6, 90));
        assert!(!tcp.matches(6, 91) && !tcp.matches(17, 80));
        let any = PortEntry::new(2, 0, 0, u16::MAX);
        assert!(any.matches(1, 0), "ICMP (no ports) matches any-protocol");
        assert!(!tcp.matches(1, 0));
    }
}
