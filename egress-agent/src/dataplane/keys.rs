//! Trie keys: (policy id or cluster tag, prefix) ↔ the kernel's bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use egress_common::{PolicyAddrV4, PolicyAddrV6, POLICY_BITS};
use ipnet::{Ipv4Net, Ipv6Net};

/// The key of `net` under `id`: the id's 32 bits are part of every prefix,
/// so a lookup never matches another policy's entries.
pub(super) fn v4(id: u32, net: Ipv4Net) -> Key<PolicyAddrV4> {
    Key::new(
        POLICY_BITS + u32::from(net.prefix_len()),
        PolicyAddrV4::new(id, net.network().octets()),
    )
}

pub(super) fn v6(id: u32, net: Ipv6Net) -> Key<PolicyAddrV6> {
    Key::new(
        POLICY_BITS + u32::from(net.prefix_len()),
        PolicyAddrV6::new(id, net.network().octets()),
    )
}

/// The id a stored key belongs to.
pub(super) fn v4_id(key: &Key<PolicyAddrV4>) -> u32 {
    key.data().id()
}

pub(super) fn v6_id(key: &Key<PolicyAddrV6>) -> u32 {
    key.data().id()
}

/// The prefix a stored key holds, for error messages and listings.
pub(super) fn v4_net(key: &Key<PolicyAddrV4>) -> Option<Ipv4Net> {
    let len = u8::try_from(key.prefix_len().checked_sub(POLICY_BITS)?).ok()?;
    Ipv4Net::new(Ipv4Addr::from(key.data().addr), len).ok()
}

pub(super) fn v6_net(key: &Key<PolicyAddrV6>) -> Option<Ipv6Net> {
    let len = u8::try_from(key.prefix_len().checked_sub(POLICY_BITS)?).ok()?;
    Ipv6Net::new(Ipv6Addr::from(key.data().addr), len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_id_then_the_network_in_byte_order() {
        let key = v4(7, "10.1.0.0/16".parse().unwrap());
        assert_eq!(key.prefix_len(), 48);
        assert_eq!(key.data().addr, [10, 1, 0, 0]);
        assert_eq!(v4_id(&key), 7);
        assert_eq!(v4_net(&key), Some("10.1.0.0/16".parse().unwrap()));

        let key = v6(9, "fd00:1::/32".parse().unwrap());
        assert_eq!(key.prefix_len(), 64);
        assert_eq!(key.data().addr[..4], [0xfd, 0x00, 0x00, 0x01]);
        assert_eq!(v6_net(&key), Some("fd00:1::/32".parse().unwrap()));
    }
}
