//! The backstop's named counters, and reading them back from nft's JSON.

use std::fmt;

use serde::Deserialize;

use super::TABLE;

/// A named counter in the backstop's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyCounter {
    /// IPv4 packets dropped on the forward hook.
    ForwardV4,
    /// IPv6 packets dropped on the forward hook.
    ForwardV6,
}

impl DenyCounter {
    pub const ALL: [DenyCounter; 2] = [DenyCounter::ForwardV4, DenyCounter::ForwardV6];

    /// The counter's name in the table, as `nft list counters` shows it.
    pub const fn name(self) -> &'static str {
        match self {
            DenyCounter::ForwardV4 => "forward_denied_v4",
            DenyCounter::ForwardV6 => "forward_denied_v6",
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

/// What went wrong reading `nft -j list counters table inet <TABLE>`.
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

pub(super) fn parse(json: &str) -> Result<BackstopCounts, ParseError> {
    let listing: Listing = serde_json::from_str(json)?;
    let ours: Vec<CounterEntry> = listing
        .nftables
        .into_iter()
        .filter_map(|e| e.counter)
        .filter(|c| c.family == "inet" && c.table == TABLE)
        .collect();
    let mut counts = BackstopCounts::default();
    for counter in DenyCounter::ALL {
        let entry = ours
            .iter()
            .find(|c| c.name == counter.name())
            .ok_or(ParseError::Missing(counter))?;
        counts.values[counter.index()] = CounterValue {
            packets: entry.packets,
            bytes: entry.bytes,
        };
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name_with_values_past_u32() {
        let json = r#"{"nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"counter": {"family": "inet", "name": "forward_denied_v6", "table": "egress_enforcer", "handle": 4, "packets": 3, "bytes": 180}},
            {"counter": {"family": "inet", "name": "forward_denied_v4", "table": "egress_enforcer", "handle": 2, "packets": 7, "bytes": 5000000000}}
        ]}"#;
        let counts = parse(json).unwrap();
        assert_eq!(
            counts.get(DenyCounter::ForwardV4),
            CounterValue {
                packets: 7,
                bytes: 5_000_000_000
            }
        );
        assert_eq!(counts.get(DenyCounter::ForwardV6).packets, 3);
        assert_eq!(counts.iter().count(), 2);
    }

    #[test]
    fn a_missing_counter_is_an_error_not_a_zero() {
        let json = r#"{"nftables": [
            {"counter": {"family": "inet", "name": "forward_denied_v4", "table": "egress_enforcer", "packets": 0, "bytes": 0}},
            {"counter": {"family": "ip", "name": "forward_denied_v6", "table": "egress_enforcer", "packets": 0, "bytes": 0}}
        ]}"#;
        assert!(matches!(
            parse(json),
            Err(ParseError::Missing(DenyCounter::ForwardV6))
        ));
    }
}
