//! Port sets: the (protocol, port range, rule) lists the tries point to.

use std::collections::HashMap;

use egress_common::{PortEntry, EMPTY_SET, MAX_PORT_CHAIN, MAX_PORT_ENTRIES};

/// Interns port sets: identical sets (after [`reduce`]) share one id.
#[derive(Debug, Default)]
pub(super) struct PortSets {
    ids: HashMap<Vec<PortEntry>, u32>,
    sets: Vec<Vec<PortEntry>>,
}

impl PortSets {
    /// The image id of `entries` (1-based; [`EMPTY_SET`] when nothing is
    /// allowed), or `Err(len)` when more than [`MAX_PORT_ENTRIES`] ×
    /// [`MAX_PORT_CHAIN`] remain after reduction.
    pub(super) fn intern(&mut self, entries: Vec<PortEntry>) -> Result<u32, usize> {
        let entries = reduce(entries);
        if entries.is_empty() {
            return Ok(EMPTY_SET);
        }
        if entries.len() > MAX_PORT_ENTRIES * MAX_PORT_CHAIN {
            return Err(entries.len());
        }
        let next = u32::try_from(self.sets.len() + 1).unwrap_or(u32::MAX);
        Ok(*self.ids.entry(entries).or_insert_with_key(|entries| {
            self.sets.push(entries.clone());
            next
        }))
    }

    pub(super) fn into_sets(self) -> Vec<Vec<PortEntry>> {
        self.sets
    }
}

/// Shortens a set without changing any answer. The kernel, like
/// `compile::decide`, takes the first entry that matches, so:
/// - an entry covered by an earlier one can never be the first match, and
///   is dropped;
/// - neighbouring entries of one rule and protocol whose ranges touch or
///   overlap are merged (`80`, `81`, `82` → `80-82`): nothing sits between
///   them, so the first match is the same rule either way.
pub(super) fn reduce(entries: Vec<PortEntry>) -> Vec<PortEntry> {
    let mut out: Vec<PortEntry> = Vec::with_capacity(entries.len());
    for entry in entries {
        if out.iter().any(|earlier| covers(earlier, &entry)) {
            continue;
        }
        if let Some(last) = out.last_mut() {
            if last.rule == entry.rule
                && last.proto == entry.proto
                && entry.start <= last.end.saturating_add(1)
                && last.start <= entry.end.saturating_add(1)
            {
                last.start = last.start.min(entry.start);
                last.end = last.end.max(entry.end);
                continue;
            }
        }
        out.push(entry);
    }
    out
}

/// Whether every (protocol, port) that `b` matches, `a` matches.
fn covers(a: &PortEntry, b: &PortEntry) -> bool {
    (a.proto == 0 || a.proto == b.proto) && a.start <= b.start && b.end <= a.end
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: u8 = 6;
    const UDP: u8 = 17;

    #[test]
    fn covered_entries_are_dropped_and_neighbours_merged() {
        let set = vec![
            PortEntry::new(1, TCP, 80, 80),
            PortEntry::new(1, TCP, 81, 81),
            PortEntry::new(1, TCP, 83, 90),
            PortEntry::new(2, TCP, 85, 85),
            PortEntry::new(2, UDP, 53, 53),
        ];
        assert_eq!(
            reduce(set),
            vec![
                PortEntry::new(1, TCP, 80, 81),
                PortEntry::new(1, TCP, 83, 90),
                PortEntry::new(2, UDP, 53, 53),
            ]
        );
    }

    #[test]
    fn an_any_protocol_entry_covers_everything_after_it_but_not_before() {
        let set = vec![
            PortEntry::new(1, UDP, 53, 53),
            PortEntry::new(2, 0, 0, u16::MAX),
            PortEntry::new(3, TCP, 443, 443),
        ];
        assert_eq!(
            reduce(set),
            vec![
                PortEntry::new(1, UDP, 53, 53),
                PortEntry::new(2, 0, 0, u16::MAX)
            ]
        );
    }

    #[test]
    fn identical_sets_share_an_id_and_empty_is_zero() {
        let mut sets = PortSets::default();
        let a = sets.intern(vec![PortEntry::new(1, TCP, 80, 80)]);
        let b = sets.intern(vec![
            PortEntry::new(1, TCP, 80, 80),
            PortEntry::new(1, TCP, 80, 80),
        ]);
        assert_eq!(a, Ok(1));
        assert_eq!(b, Ok(1));
        assert_eq!(sets.intern(Vec::new()), Ok(EMPTY_SET));
        let entries =
            |n: u32| (0..n).map(|i| PortEntry::new(i, TCP, (i * 10) as u16, (i * 10) as u16));
        assert_eq!(
            sets.intern(entries(128).collect()),
            Ok(2),
            "a chain of 8 sets"
        );
        assert_eq!(sets.intern(entries(129).collect()), Err(129));
        assert_eq!(sets.into_sets().len(), 2);
    }
}
