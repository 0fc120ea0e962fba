//! The backstop's named counters, and reading them back from nft's JSON.

use std::fmt;

use nftables::types::NfFamily;
use serde::Deserialize;

use super::TABLE;

/// A named counter in the backstop's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyCounter {
    /// IPv4 packets dropped on the forward hook: from a non-gateway
    /// workload's address.
    ForwardV4,
    /// IPv6 packets dropped on the forward hook: from a non-gateway
    /// workload's address.
    ForwardV6,
    /// IPv4 packets dropped on the forward hook: from a routed workload
    /// port with a source that is not its workload's, or with a local
    /// workload's address from an interface that is not its port (a
    /// bridge excepted: the bridge table judged those).
    RoutedForgedV4,
    /// The same for IPv6.
    RoutedForgedV6,
    /// IPv4 packets dropped on the forward hook: decapsulated (or
    /// decrypted) by one of the node's tunnel devices and going outside
    /// the cluster, whatever their source.
    TunnelEgressV4,
    /// The same for IPv6.
    TunnelEgressV6,
    /// IPv4 frames dropped as they entered a bridge port: from a workload's
    /// port with a source not its own, or a workload's address from
    /// another port.
    BridgedForgedV4,
    /// The same for IPv6.
    BridgedForgedV6,
}

impl DenyCounter {
    pub const ALL: [DenyCounter; 8] = [
        DenyCounter::ForwardV4,
        DenyCounter::ForwardV6,
        DenyCounter::RoutedForgedV4,
        DenyCounter::RoutedForgedV6,
        DenyCounter::TunnelEgressV4,
        DenyCounter::TunnelEgressV6,
        DenyCounter::BridgedForgedV4,
        DenyCounter::BridgedForgedV6,
    ];

    /// The counter's name in its table, as `nft list counters` shows it;
    /// unique across both tables.
    pub const fn name(self) -> &'static str {
        match self {
            DenyCounter::ForwardV4 => "forward_denied_v4",
            DenyCounter::ForwardV6 => "forward_denied_v6",
            DenyCounter::RoutedForgedV4 => "routed_forged_v4",
            DenyCounter::RoutedForgedV6 => "routed_forged_v6",
            DenyCounter::TunnelEgressV4 => "tunnel_egress_v4",
            DenyCounter::TunnelEgressV6 => "tunnel_egress_v6",
            DenyCounter::BridgedForgedV4 => "bridged_forged_v4",
            DenyCounter::BridgedForgedV6 => "bridged_forged_v6",
        }
    }

    /// The family of the table that holds it.
    pub const fn table_family(self) -> NfFamily {
        match self {
            DenyCounter::BridgedForgedV4 | DenyCounter::BridgedForgedV6 => NfFamily::Bridge,
            _ => NfFamily::INet,
        }
    }

    /// What the packets it counts were, for an event's rule.
    pub const fn describe(self) -> &'static str {
        match self {
            DenyCounter::ForwardV4 | DenyCounter::ForwardV6 => {
                "forwarded from a non-gateway workload address"
            }
            DenyCounter::RoutedForgedV4 | DenyCounter::RoutedForgedV6 => {
                "forwarded with a source its interface does not vouch for (a workload's port with \
                 a source not its own, or a local workload's address from another interface)"
            }
            DenyCounter::TunnelEgressV4 | DenyCounter::TunnelEgressV6 => {
                "forwarded from one of the node's tunnel devices (decapsulated: VXLAN, Geneve, GRE, \
                 IP in IP, WireGuard, ...) to outside the cluster"
            }
            DenyCounter::BridgedForgedV4 | DenyCounter::BridgedForgedV6 => {
                "sent into the bridge from a workload's port with a source that is not its own"
            }
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DenyCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One counter's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// A snapshot of every [`DenyCounter`], since the last apply (which
/// recreates the table and so restarts them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackstopCounts {
    values: [CounterValue; DenyCounter::ALL.len()],
}

impl BackstopCounts {
    pub fn get(&self, counter: DenyCounter) -> CounterValue {
        self.values[counter.index()]
    }

    /// Every counter with its value.
    pub fn iter(&self) -> impl Iterator<Item = (DenyCounter, CounterValue)> + '_ {
        DenyCounter::ALL.iter().map(|&c| (c, self.get(c)))
    }
}

/// What went wrong reading `nft -j list counters table <family> <TABLE>`.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid JSON")]
    Json(#[from] serde_json::Error),
    #[error("counter `{0}` is missing (table created by something else?)")]
    Missing(DenyCounter),
}

/// `nft -j list counters` output. Only counters are read, with our own
/// types rather than `nftables::schema::Counter`, whose `u32` values would
/// fail to parse once a counter passes 4 GiB.
#[derive(Deserialize)]
struct Listing {
    nftables: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    counter: Option<CounterEntry>,
}

#[derive(Deserialize)]
struct CounterEntry {
    family: String,
    table: String,
    name: String,
    packets: u64,
    bytes: u64,
}

/// Reads every [`DenyCounter`] from the listings of the agent's tables
/// (one `nft -j list counters table …` output per table).
pub(super) fn parse(listings: &[String]) -> Result<BackstopCounts, ParseError> {
    let mut ours = Vec::new();
    for json in listings {
        let listing: Listing = serde_json::from_str(json)?;
        ours.extend(
            listing
                .nftables
                .into_iter()
                .filter_map(|e| e.counter)
                .filter(|c| c.table == TABLE),
        );
    }
    let mut counts = BackstopCounts::default();
    for counter in DenyCounter::ALL {
        let family = family_name(counter.table_family());
        let entry = ours
            .iter()
            .find(|c| c.name == counter.name() && c.family == family)
            .ok_or(ParseError::Missing(counter))?;
        counts.values[counter.index()] = CounterValue {
            packets: entry.packets,
            bytes: entry.bytes,
        };
    }
    Ok(counts)
}

/// The family as nft spells it in commands and JSON.
pub(super) const fn family_name(family: NfFamily) -> &'static str {
    match family {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"{"nftables": [
        {"counter": {"family": "bridge", "name": "bridged_forged_v4", "table": "egress_enforcer", "packets": 4, "bytes": 400}},
        {"counter": {"family": "bridge", "name": "bridged_forged_v6", "table": "egress_enforcer", "packets": 0, "bytes": 0}}
    ]}"#;

    #[test]
    fn counters_are_read_by_name_and_table_with_values_past_u32() {
        let inet = r#"{"nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"counter": {"family": "inet", "name": "forward_denied_v6", "table": "egress_enforcer", "handle": 4, "packets": 3, "bytes": 180}},
            {"counter": {"family": "inet", "name": "forward_denied_v4", "table": "egress_enforcer", "handle": 2, "packets": 7, "bytes": 5000000000}},
            {"counter": {"family": "inet", "name": "routed_forged_v4", "table": "egress_enforcer", "packets": 1, "bytes": 60}},
            {"counter": {"family": "inet", "name": "routed_forged_v6", "table": "egress_enforcer", "packets": 2, "bytes": 80}},
            {"counter": {"family": "inet", "name": "tunnel_egress_v4", "table": "egress_enforcer", "packets": 5, "bytes": 300}},
            {"counter": {"family": "inet", "name": "tunnel_egress_v6", "table": "egress_enforcer", "packets": 0, "bytes": 0}}
        ]}"#;
        let counts = parse(&[inet.into(), BRIDGE.into()]).unwrap();
        assert_eq!(
            counts.get(DenyCounter::ForwardV4),
            CounterValue {
                packets: 7,
                bytes: 5_000_000_000
            }
        );
        assert_eq!(counts.get(DenyCounter::ForwardV6).packets, 3);
        assert_eq!(counts.get(DenyCounter::RoutedForgedV6).packets, 2);
        assert_eq!(counts.get(DenyCounter::TunnelEgressV4).packets, 5);
        assert_eq!(counts.get(DenyCounter::BridgedForgedV4).packets, 4);
        assert_eq!(counts.iter().count(), 8);
    }

    #[test]
    fn a_missing_counter_is_an_error_not_a_zero() {
        let inet = r#"{"nftables": [
            {"counter": {"family": "inet", "name": "forward_denied_v4", "table": "egress_enforcer", "packets": 0, "bytes": 0}},
            {"counter": {"family": "ip", "name": "forward_denied_v6", "table": "egress_enforcer", "packets": 0, "bytes": 0}}
        ]}"#;
        assert!(matches!(
            parse(&[inet.into(), BRIDGE.into()]),
            Err(ParseError::Missing(DenyCounter::ForwardV6))
        ));
        // A bridge counter in the inet table is not the bridge's.
        let misplaced = BRIDGE.replace("bridge", "inet");
        assert!(matches!(
            parse(&[misplaced]),
            Err(ParseError::Missing(DenyCounter::ForwardV4))
        ));
    }
}
