//! The published result: each allowed DNS name's current addresses.

use std::{collections::BTreeMap, net::IpAddr};

/// A snapshot of the allowed hosts' addresses, as the data plane should
/// program them. Names with no address (never resolved, NXDOMAIN, dropped
/// after the stale grace) are absent: an absent name allows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedHosts {
    /// Each list sorted and free of duplicates, never empty.
    hosts: BTreeMap<String, Vec<IpAddr>>,
}

impl ResolvedHosts {
    /// Builds a snapshot; lists are sorted and deduplicated, empty ones
    /// left out.
    pub fn new(hosts: impl IntoIterator<Item = (String, Vec<IpAddr>)>) -> Self {
        let hosts = hosts
            .into_iter()
            .filter_map(|(name, mut addrs)| {
                addrs.sort_unstable();
                addrs.dedup();
                (!addrs.is_empty()).then_some((name, addrs))
            })
            .collect();
        Self { hosts }
    }

    /// `name`'s addresses, as written in the policy (lower case, no
    /// trailing dot); empty when it has none.
    pub fn addresses(&self, name: &str) -> &[IpAddr] {
        self.hosts.get(name).map_or(&[], Vec::as_slice)
    }

    /// Names with at least one address, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[IpAddr])> {
        self.hosts.iter().map(|(n, a)| (n.as_str(), a.as_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_deduplicated_and_empty_names_absent() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        let hosts = ResolvedHosts::new([
            (
                "a.example".to_owned(),
                vec![
                    ip("2001:db8::1"),
                    ip("192.0.2.9"),
                    ip("192.0.2.1"),
                    ip("192.0.2.9"),
                ],
            ),
            ("gone.example".to_owned(), Vec::new()),
        ]);
        assert_eq!(
            hosts.addresses("a.example"),
            [ip("192.0.2.1"), ip("192.0.2.9"), ip("2001:db8::1")]
        );
        assert!(hosts.addresses("gone.example").is_empty());
        assert_eq!(hosts.iter().count(), 1);
    }
}
