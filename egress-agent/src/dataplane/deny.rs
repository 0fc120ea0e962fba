//! The deny tries: which destination prefixes the programs refuse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        MapData, MapError,
    },
    sys::SyscallError,
};
use egress_common::{DenyRule, Ipv4Dest, Ipv6Dest, DENY_V4_MAP, DENY_V6_MAP};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::DataplaneError;

/// The two LPM tries, `DENY_V4` and `DENY_V6`.
pub(super) struct DenyList {
    v4: LpmTrie<MapData, Ipv4Dest, DenyRule>,
    v6: LpmTrie<MapData, Ipv6Dest, DenyRule>,
}

impl DenyList {
    pub(super) fn new(
        v4: LpmTrie<MapData, Ipv4Dest, DenyRule>,
        v6: LpmTrie<MapData, Ipv6Dest, DenyRule>,
    ) -> Self {
        Self { v4, v6 }
    }

    /// Adds (or replaces the rule of) a denied prefix.
    pub(super) fn insert(&mut self, prefix: IpNet, rule: DenyRule) -> Result<(), DataplaneError> {
        let err = |map| {
            move |source| DataplaneError::InsertPrefix {
                prefix,
                map,
                source,
            }
        };
        match canonical(prefix) {
            IpNet::V4(net) => self
                .v4
                .insert(&v4_key(net), rule, 0)
                .map_err(err(DENY_V4_MAP)),
            IpNet::V6(net) => self
                .v6
                .insert(&v6_key(net), rule, 0)
                .map_err(err(DENY_V6_MAP)),
        }
    }

    /// Removes a denied prefix; `Ok(false)` if it was not there. Removal is
    /// exact: removing 10.0.0.0/8 leaves 10.1.0.0/16 in place.
    pub(super) fn remove(&mut self, prefix: IpNet) -> Result<bool, DataplaneError> {
        let (result, map) = match canonical(prefix) {
            IpNet::V4(net) => (self.v4.remove(&v4_key(net)), DENY_V4_MAP),
            IpNet::V6(net) => (self.v6.remove(&v6_key(net)), DENY_V6_MAP),
        };
        match result {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(source) => Err(DataplaneError::RemovePrefix {
                prefix,
                map,
                source,
            }),
        }
    }

    /// The rule of the longest denied prefix containing `addr`. An
    /// IPv4-mapped address is looked up as IPv4, as `connect6` does.
    pub(super) fn lookup(&self, addr: IpAddr) -> Result<Option<DenyRule>, DataplaneError> {
        let (result, map) = match addr.to_canonical() {
            IpAddr::V4(a) => (
                self.v4.get(&Key::new(32, Ipv4Dest { addr: a.octets() }), 0),
                DENY_V4_MAP,
            ),
            IpAddr::V6(a) => (
                self.v6
                    .get(&Key::new(128, Ipv6Dest { addr: a.octets() }), 0),
                DENY_V6_MAP,
            ),
        };
        match result {
            Ok(rule) => Ok(Some(rule)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::ReadMap { map, source }),
        }
    }

    /// Every denied prefix, in canonical form, IPv4 first.
    pub(super) fn entries(&self) -> Result<Vec<(IpNet, DenyRule)>, DataplaneError> {
        let read = |map| move |source| DataplaneError::ReadMap { map, source };
        let mut out = Vec::new();
        for entry in self.v4.iter() {
            let (key, rule) = entry.map_err(read(DENY_V4_MAP))?;
            out.push((v4_net(key), rule));
        }
        for entry in self.v6.iter() {
            let (key, rule) = entry.map_err(read(DENY_V6_MAP))?;
            out.push((v6_net(key), rule));
        }
        Ok(out)
    }
}

/// The form in which a prefix is stored.
///
/// Host bits are cleared, so that removing `10.1.2.3/8` finds the entry
/// inserted as `10.0.0.0/8`. An IPv4-mapped IPv6 prefix
/// (`::ffff:a.b.c.d/96+n`) becomes the IPv4 prefix `a.b.c.d/n`: traffic to
/// such an address leaves as IPv4, so the programs (`cgroup_skb` on the
/// packet, `connect6` on the mapped address) only ever look it up in the
/// IPv4 trie.
pub(super) fn canonical(prefix: IpNet) -> IpNet {
    match prefix.trunc() {
        IpNet::V6(net) if net.prefix_len() >= 96 => match net.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, net.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(IpNet::V6(net)),
            None => IpNet::V6(net),
        },
        other => other,
    }
}

fn v4_key(net: Ipv4Net) -> Key<Ipv4Dest> {
    Key::new(
        u32::from(net.prefix_len()),
        Ipv4Dest {
            addr: net.network().octets(),
        },
    )
}

fn v6_key(net: Ipv6Net) -> Key<Ipv6Dest> {
    Key::new(
        u32::from(net.prefix_len()),
        Ipv6Dest {
            addr: net.network().octets(),
        },
    )
}

fn v4_net(key: Key<Ipv4Dest>) -> IpNet {
    net(
        IpAddr::V4(Ipv4Addr::from(key.data().addr)),
        key.prefix_len(),
    )
}

fn v6_net(key: Key<Ipv6Dest>) -> IpNet {
    net(
        IpAddr::V6(Ipv6Addr::from(key.data().addr)),
        key.prefix_len(),
    )
}

/// The kernel only accepts keys with a valid prefix length, so the fallback
/// to a host prefix is unreachable in practice.
fn net(addr: IpAddr, prefix_len: u32) -> IpNet {
    u8::try_from(prefix_len)
        .ok()
        .and_then(|len| IpNet::new(addr, len).ok())
        .unwrap_or_else(|| IpNet::from(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpNet {
        s.parse().expect("valid prefix")
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(canonical(p("10.1.2.3/8")), p("10.0.0.0/8"));
        assert_eq!(canonical(p("fd00::1/64")), p("fd00::/64"));
    }

    #[test]
    fn ipv4_mapped_prefixes_are_stored_as_ipv4() {
        assert_eq!(canonical(p("::ffff:10.0.0.0/104")), p("10.0.0.0/8"));
        assert_eq!(canonical(p("::ffff:192.0.2.7/128")), p("192.0.2.7/32"));
        assert_eq!(canonical(p("::ffff:0.0.0.0/96")), p("0.0.0.0/0"));
    }

    #[test]
    fn wider_ipv6_prefixes_stay_ipv6() {
        // ::/0 covers the mapped range, but traffic to mapped addresses is
        // IPv4 and governed by the IPv4 trie alone.
        assert_eq!(canonical(p("::/0")), p("::/0"));
        assert_eq!(canonical(p("::ffff:0:0/95")), p("::fffe:0:0/95"));
    }

    #[test]
    fn keys_hold_network_byte_order() {
        let key = v4_key(Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 0), 16).expect("valid"));
        assert_eq!(key.prefix_len(), 16);
        assert_eq!(key.data().addr, [10, 1, 0, 0]);
        assert_eq!(v4_net(key), p("10.1.0.0/16"));

        let key = v6_key("fd00:1::/32".parse().expect("valid"));
        assert_eq!(key.data().addr[..4], [0xfd, 0x00, 0x00, 0x01]);
        assert_eq!(v6_net(key), p("fd00:1::/32"));
    }
}
