//! Updating a policy's tries in place, under the same id, in an order that
//! keeps every lookup on the old answer or the new one.
//!
//! A trie lookup answers with the longest stored prefix that contains the
//! address. The steps are: upserts (new prefixes and changed values),
//! longest prefix first; then deletes, shortest prefix first. Take any one
//! address `a`, its old answer `O` (the old table's longest match, or
//! none) and its new answer `N`:
//!
//! - Upserts longest first: until `N`'s own entry is upserted, every upsert
//!   so far that contains `a` would be a longer match of `a` in the new
//!   table than `N`, which there is none of; so `a` still sees the old
//!   table's entries only, and answers `O` (an upsert of a prefix the old
//!   table had, with a new value, is `N` itself or shorter than it). From
//!   `N`'s upsert on, `a` answers `N`: later upserts are no longer than
//!   `N` (and a longer old entry that still masks it answers `O`, see
//!   below).
//! - An old entry longer than `N` that contains `a` is not in the new table,
//!   so it is deleted; while it is there, it answers `O` (it is the longest
//!   match, so it is `O`). Deletes go shortest first, so `O`'s entry, the
//!   longest of them, goes last, and `a` flips from `O` to `N` exactly once.
//! - If `N` is "no match", `a` answers `O` until `O`'s entry (and every
//!   shorter old one containing `a`) is deleted.
//!
//! So every lookup of `a` sees either `O` or `N`, never a third answer.
//! Upserting shortest first would break it: old empty, new `/8 → W` and
//! `/24 → V`; after the `/8` alone, an address in the `/24` answers `W`.
//!
//! A program run reads one trie once per address it decides, except that
//! the `ALLOW_*` value is read twice when the cluster has flagged hosts
//! (`CLUSTER_PORTS`), and `GATEWAY_*` and `ALLOW_*` are both read for one
//! address. [`plan`] therefore declines a change that touches both kinds of
//! one family, or any flagged `ALLOW_*` value, old or new: each run then
//! reads at most one changing answer for its address.

use std::{borrow::Cow, cmp::Reverse};

use aya::maps::{lpm_trie::Key, LpmTrie, MapData};
use egress_common::{host_ports, map};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    super::{keys, maps::Maps, DataplaneError},
    sweep::delete_trie,
    write::write_err,
    Keys, PolicyContent,
};

/// A trie prefix: its length decides the order of the steps.
pub trait Prefix: Copy + Ord + std::fmt::Display {
    /// Its length in bits.
    fn bits(&self) -> u8;
}

impl Prefix for Ipv4Net {
    fn bits(&self) -> u8 {
        self.prefix_len()
    }
}

impl Prefix for Ipv6Net {
    fn bits(&self) -> u8 {
        self.prefix_len()
    }
}

/// One write of an in-place trie update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrieStep<N> {
    /// Insert the prefix, or change its value.
    Upsert(N, u32),
    Delete(N),
}

/// The writes that turn a trie holding `from` into one holding `to`, in
/// the order that keeps each address on its old or its new answer (see
/// the module doc): upserts longest prefix first, then deletes shortest
/// prefix first.
pub fn trie_steps<N: Prefix>(from: &[(N, u32)], to: &[(N, u32)]) -> Vec<TrieStep<N>> {
    // A merge of the two tables in prefix order: image tables are sorted
    // already (they come from ordered maps), so a 100k-entry table costs
    // one pass and no hashing. Others are sorted first.
    let (from, to) = (sorted(from), sorted(to));
    let (mut upserts, mut deletes) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    loop {
        match (from.get(i), to.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                if a.1 != b.1 {
                    upserts.push(*b);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                deletes.push(a.0);
                i += 1;
            }
            (Some(a), None) => {
                deletes.push(a.0);
                i += 1;
            }
            (_, Some(b)) => {
                upserts.push(*b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    // Stable sorts: equal lengths keep prefix order, so the steps are the
    // same on every run.
    upserts.sort_by_key(|(n, _)| Reverse(n.bits()));
    deletes.sort_by_key(|n| n.bits());
    upserts
        .into_iter()
        .map(|(n, v)| TrieStep::Upsert(n, v))
        .chain(deletes.into_iter().map(TrieStep::Delete))
        .collect()
}

/// `table` in prefix order, one entry per prefix (the last one, as a
/// trie written in this order would hold).
fn sorted<N: Prefix>(table: &[(N, u32)]) -> Cow<'_, [(N, u32)]> {
    if table.windows(2).all(|w| w[0].0 < w[1].0) {
        return Cow::Borrowed(table);
    }
    let mut t = table.to_vec();
    t.reverse();
    t.sort_by_key(|(n, _)| *n);
    t.dedup_by_key(|(n, _)| *n);
    Cow::Owned(t)
}

/// The steps of one policy's four tries.
#[derive(Default)]
pub(super) struct PolicySteps {
    allow_v4: Vec<TrieStep<Ipv4Net>>,
    allow_v6: Vec<TrieStep<Ipv6Net>>,
    gateway_v4: Vec<TrieStep<Ipv4Net>>,
    gateway_v6: Vec<TrieStep<Ipv6Net>>,
}

impl PolicySteps {
    fn between(from: &PolicyContent, to: &PolicyContent) -> Self {
        Self {
            allow_v4: trie_steps(&from.allow_v4, &to.allow_v4),
            allow_v6: trie_steps(&from.allow_v6, &to.allow_v6),
            gateway_v4: trie_steps(&from.gateway_v4, &to.gateway_v4),
            gateway_v6: trie_steps(&from.gateway_v6, &to.gateway_v6),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.allow_v4.len() + self.allow_v6.len() + self.gateway_v4.len() + self.gateway_v6.len()
    }
}

/// A policy object of the live generation that the new one takes over
/// with other trie contents, written in place at commit.
pub(super) struct Update {
    pub(super) id: u32,
    /// Its contents and keys in the live generation, for taking it back.
    pub(super) from: PolicyContent,
    pub(super) from_keys: Keys,
    pub(super) steps: PolicySteps,
}

/// Why a changed policy is written whole instead of in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Declined {
    /// Its flags, cluster tag or capture differ: the `POLICIES` and
    /// `CAPTURES` entries and the capture tries would change with the
    /// tries, and a run reads them together.
    Info,
    /// A flagged `ALLOW_*` value (a host table), old or new: a run may
    /// read the `ALLOW_*` answer twice.
    HostTable,
    /// `ALLOW_*` and `GATEWAY_*` of one family both change: a run reads
    /// both for one address.
    BothKinds,
    /// More than half of the entries change: a fresh object is as cheap.
    TooMany,
}

/// The in-place steps from `from` to `to`, if the change is one that can
/// be made in place and is small enough to be worth it (at most half of
/// the larger table changes; a fresh object then costs at least twice
/// as many writes).
pub(super) fn plan(from: &PolicyContent, to: &PolicyContent) -> Result<PolicySteps, Declined> {
    if from.flags != to.flags || from.cluster != to.cluster || from.capture != to.capture {
        return Err(Declined::Info);
    }
    fn flagged<N>(t: &[(N, u32)]) -> bool {
        t.iter().any(|(_, v)| v & host_ports::ALLOW_FLAG != 0)
    }
    if flagged(&from.allow_v4)
        || flagged(&to.allow_v4)
        || flagged(&from.allow_v6)
        || flagged(&to.allow_v6)
    {
        return Err(Declined::HostTable);
    }
    let steps = PolicySteps::between(from, to);
    if (!steps.allow_v4.is_empty() && !steps.gateway_v4.is_empty())
        || (!steps.allow_v6.is_empty() && !steps.gateway_v6.is_empty())
    {
        return Err(Declined::BothKinds);
    }
    let size = |c: &PolicyContent| {
        c.allow_v4.len() + c.allow_v6.len() + c.gateway_v4.len() + c.gateway_v6.len()
    };
    if steps.len() * 2 > size(from).max(size(to)) {
        return Err(Declined::TooMany);
    }
    Ok(steps)
}

/// `keys` with the trie keys of `content` under `id` instead of its own
/// (the capture and `POLICIES` keys are the same, since [`plan`] keeps
/// them unchanged).
pub(super) fn keys_for(id: u32, content: &PolicyContent, keys: &Keys) -> Keys {
    Keys {
        allow_v4: content
            .allow_v4
            .iter()
            .map(|(n, _)| keys::v4(id, *n))
            .collect(),
        allow_v6: content
            .allow_v6
            .iter()
            .map(|(n, _)| keys::v6(id, *n))
            .collect(),
        gateway_v4: content
            .gateway_v4
            .iter()
            .map(|(n, _)| keys::v4(id, *n))
            .collect(),
        gateway_v6: content
            .gateway_v6
            .iter()
            .map(|(n, _)| keys::v6(id, *n))
            .collect(),
        ..keys.clone()
    }
}

/// Writes `steps` under policy `id`. Returns (upserts, deletes).
pub(super) fn run(
    maps: &mut Maps,
    id: u32,
    steps: &PolicySteps,
) -> Result<(usize, usize), DataplaneError> {
    let mut done = (0, 0);
    run_trie(
        &mut maps.allow_v4,
        map::ALLOW_V4,
        id,
        &steps.allow_v4,
        keys::v4,
        &mut done,
    )?;
    run_trie(
        &mut maps.allow_v6,
        map::ALLOW_V6,
        id,
        &steps.allow_v6,
        keys::v6,
        &mut done,
    )?;
    run_trie(
        &mut maps.gateway_v4,
        map::GATEWAY_V4,
        id,
        &steps.gateway_v4,
        keys::v4,
        &mut done,
    )?;
    run_trie(
        &mut maps.gateway_v6,
        map::GATEWAY_V6,
        id,
        &steps.gateway_v6,
        keys::v6,
        &mut done,
    )?;
    Ok(done)
}

/// Takes `update` back, whether all, part or none of it was written: the
/// steps from its new contents `to` to its old ones (a delete of a prefix that
/// was never upserted is no error). Returns whether it succeeded.
pub(super) fn undo(maps: &mut Maps, update: &Update, to: &PolicyContent) -> bool {
    run(maps, update.id, &PolicySteps::between(to, &update.from)).is_ok()
}

fn run_trie<K: aya::Pod, N: Prefix>(
    trie: &mut LpmTrie<MapData, K, u32>,
    name: &'static str,
    id: u32,
    steps: &[TrieStep<N>],
    key: fn(u32, N) -> Key<K>,
    done: &mut (usize, usize),
) -> Result<(), DataplaneError> {
    let what = |n: &N| format!("prefix {n} of policy {id}, updated in place");
    for step in steps {
        match *step {
            TrieStep::Upsert(n, v) => {
                trie.insert(&key(id, n), v, 0)
                    .map_err(|source| write_err(name, what(&n), source))?;
                done.0 += 1;
            }
            TrieStep::Delete(n) => {
                delete_trie(trie, &key(id, n), name, || what(&n))?;
                done.1 += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// The longest prefix of `table` containing `addr`, as the trie answers.
    fn lookup(table: &HashMap<Ipv4Net, u32>, addr: std::net::Ipv4Addr) -> Option<u32> {
        table
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, v)| *v)
    }

    /// Runs `steps` on a model of the trie and checks every probe after
    /// each step; returns whether all saw the old or the new answer.
    fn only_old_or_new(
        from: &[(Ipv4Net, u32)],
        to: &[(Ipv4Net, u32)],
        steps: &[TrieStep<Ipv4Net>],
    ) -> bool {
        let probes: Vec<std::net::Ipv4Addr> = from
            .iter()
            .chain(to)
            .flat_map(|(n, _)| [n.network(), n.broadcast()])
            .chain(["9.9.9.9".parse().unwrap()])
            .collect();
        let mut table: HashMap<Ipv4Net, u32> = from.iter().copied().collect();
        let new: HashMap<Ipv4Net, u32> = to.iter().copied().collect();
        let old = table.clone();
        for step in steps {
            match *step {
                TrieStep::Upsert(n, v) => {
                    table.insert(n, v);
                }
                TrieStep::Delete(n) => {
                    table.remove(&n);
                }
            }
            for a in &probes {
                let got = lookup(&table, *a);
                if got != lookup(&old, *a) && got != lookup(&new, *a) {
                    return false;
                }
            }
        }
        table == new
    }

    #[test]
    fn steps_go_longest_first_then_shortest_first() {
        let from = [
            (net("10.0.0.0/8"), 1),
            (net("10.1.2.0/24"), 1),
            (net("10.1.2.3/32"), 1),
        ];
        let to = [
            (net("10.0.0.0/8"), 2),
            (net("10.1.0.0/16"), 3),
            (net("11.0.0.0/8"), 4),
        ];
        let steps = trie_steps(&from, &to);
        assert_eq!(
            steps,
            [
                TrieStep::Upsert(net("10.1.0.0/16"), 3),
                TrieStep::Upsert(net("10.0.0.0/8"), 2),
                TrieStep::Upsert(net("11.0.0.0/8"), 4),
                TrieStep::Delete(net("10.1.2.0/24")),
                TrieStep::Delete(net("10.1.2.3/32")),
            ]
        );
        assert!(only_old_or_new(&from, &to, &steps));
    }

    #[test]
    fn shortest_first_upserts_give_a_third_answer() {
        let to = [(net("10.0.0.0/8"), 7), (net("10.1.2.0/24"), 8)];
        let steps = trie_steps(&[], &to);
        assert!(only_old_or_new(&[], &to, &steps));
        let mut wrong = steps.clone();
        wrong.reverse();
        assert!(!only_old_or_new(&[], &to, &wrong), "the check can fail");
    }

    #[test]
    fn random_changes_keep_every_address_on_old_or_new() {
        let mut seed = 0x1234_5678_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let random_table = |next: &mut dyn FnMut() -> u64| -> Vec<(Ipv4Net, u32)> {
            let mut t: HashMap<Ipv4Net, u32> = HashMap::new();
            for _ in 0..next() % 12 {
                let len = [0, 8, 16, 24, 28, 32][(next() % 6) as usize];
                let addr = std::net::Ipv4Addr::new(
                    10,
                    (next() % 2) as u8,
                    (next() % 2) as u8,
                    (next() % 4) as u8,
                );
                t.insert(
                    Ipv4Net::new(addr, len).unwrap().trunc(),
                    (next() % 3) as u32 + 1,
                );
            }
            t.into_iter().collect()
        };
        for _ in 0..2000 {
            let from = random_table(&mut next);
            let to = random_table(&mut next);
            assert!(
                only_old_or_new(&from, &to, &trie_steps(&from, &to)),
                "{from:?} → {to:?}"
            );
        }
    }
}
