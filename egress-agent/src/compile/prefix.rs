//! Longest-prefix tables: CIDRs with `except` holes, flattened so that one
//! longest-prefix lookup gives the exact answer.
//!
//! An `ipBlock` is "this CIDR minus those holes", and several rules overlap.
//! A kernel LPM trie returns only the single longest matching prefix, so the
//! table stores, for every prefix P that any rule mentions (as a CIDR or as
//! a hole), the set of allows whose CIDR contains P and none of whose holes
//! contain P. For an address A whose longest match is P, a CIDR or hole
//! contains A exactly when it contains P (anything in the table containing A
//! either contains P or is contained in it, and P is the longest), so the
//! stored set is exactly the set of rules that allow A. Holes get entries with
//! an empty set, which shadow the shorter prefixes around them.
//!
//! Building costs O(prefixes × address bits) hash lookups, not O(prefixes²),
//! so 100k CIDRs compile in well under a second. Identical allow sets are
//! stored once; the kernel maps prefix → set id.
//!
//! A prefix answers for every port, but one port of one address may need
//! an answer of its own: a NodePort on a node address is the Service's,
//! while the node's other ports stay the node's. Those are
//! [`PrefixTable::host_ports`], read before the prefixes (the kernel's
//! `HOST_PORTS`, see `egress_common::host_ports`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;
use serde::Serialize;

use egress_policy::{
    model::ObjectId,
    ports::{PortRange, Protocol},
};

/// One egress rule of one NetworkPolicy: `policy`'s `spec.egress[index]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RuleRef {
    pub policy: ObjectId,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkPolicy {} egress[{}]", self.policy, self.index)
    }
}

/// What a prefix allows: a rule, on a protocol (`None` = any) and ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Allow {
    pub rule: RuleRef,
    pub protocol: Option<Protocol>,
    pub ports: PortRange,
}

impl Allow {
    pub fn permits(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol.is_none_or(|p| p == protocol) && self.ports.contains(port)
    }
}

/// One rule's contribution: allow `allow` to `cidr` minus `except`.
#[derive(Clone, Debug)]
pub struct Atom {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
    pub allow: Allow,
}

/// A set of allows shared by many prefixes.
pub type SetId = u32;

/// The verdict for one protocol and port of one address, whatever the
/// prefixes say: allowed by `rule`, or denied when it is `None`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HostPort {
    pub protocol: Protocol,
    pub port: u16,
    pub rule: Option<RuleRef>,
}

/// Prefix → allow set, flattened for longest-prefix lookups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrefixTable {
    /// Ordered, so plans print and diff deterministically.
    pub entries: BTreeMap<IpNet, SetId>,
    /// Sorted, deduplicated allows; set 0 is always the empty set (a hole).
    pub sets: Vec<Vec<Allow>>,
    /// Ports of single addresses decided apart from the prefixes (see the
    /// module doc); canonical addresses, at most one entry per protocol and
    /// port.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub host_ports: BTreeMap<IpAddr, Vec<HostPort>>,
}

impl PrefixTable {
    pub fn build(atoms: &[Atom]) -> Self {
        // prefix → (atoms whose cidr it is, atoms for which it is a hole)
        let mut by_prefix: HashMap<IpNet, (Vec<usize>, Vec<usize>)> = HashMap::new();
        for (i, atom) in atoms.iter().enumerate() {
            by_prefix.entry(atom.cidr).or_default().0.push(i);
            for hole in &atom.except {
                by_prefix.entry(*hole).or_default().1.push(i);
            }
        }

        let mut table = Self {
            entries: BTreeMap::new(),
            sets: vec![Vec::new()],
            host_ports: BTreeMap::new(),
        };
        let mut set_ids: HashMap<Vec<Allow>, SetId> = HashMap::from([(Vec::new(), 0)]);
        // In prefix order, so that set ids, and so the whole plan, are the
        // same for the same policy on every run (HashMap order is not).
        let mut prefixes: Vec<IpNet> = by_prefix.keys().copied().collect();
        prefixes.sort_unstable();
        for prefix in &prefixes {
            let mut covering = BTreeSet::new();
            let mut holes = BTreeSet::new();
            for ancestor in ancestors(*prefix) {
                if let Some((cidrs, excepts)) = by_prefix.get(&ancestor) {
                    covering.extend(cidrs.iter().copied());
                    holes.extend(excepts.iter().copied());
                }
            }
            let allows: BTreeSet<Allow> = covering
                .difference(&holes)
                .map(|&i| atoms[i].allow.clone())
                .collect();
            let allows: Vec<Allow> = allows.into_iter().collect();
            let next = SetId::try_from(table.sets.len()).unwrap_or(SetId::MAX);
            let id = *set_ids.entry(allows.clone()).or_insert_with(|| {
                table.sets.push(allows);
                next
            });
            table.entries.insert(*prefix, id);
        }
        table
    }

    /// The table with `overrides` in force: each prefix's allows are
    /// exactly the given ones, whatever the CIDRs around it say (a Service
    /// address judged by its backends, see [`super::services`]). Port
    /// ranges of one rule and protocol that touch are merged, so that a
    /// Service with many ports takes few of the kernel's port entries.
    pub fn with_overrides(mut self, overrides: BTreeMap<IpNet, Vec<Allow>>) -> Self {
        let mut set_ids: HashMap<Vec<Allow>, SetId> = self
            .sets
            .iter()
            .enumerate()
            .map(|(i, set)| (set.clone(), SetId::try_from(i).unwrap_or(SetId::MAX)))
            .collect();
        for (prefix, mut allows) in overrides {
            allows.sort();
            allows.dedup();
            let allows = merge_adjacent(allows);
            let next = SetId::try_from(self.sets.len()).unwrap_or(SetId::MAX);
            let id = *set_ids.entry(allows.clone()).or_insert_with(|| {
                self.sets.push(allows);
                next
            });
            self.entries.insert(prefix, id);
        }
        self
    }

    /// The table with `ports` decided per address, protocol and port
    /// before any prefix (a NodePort judged by its Service's backends).
    /// The first entry for a protocol and port counts, as the first
    /// Service for it does in `explain`.
    pub fn with_host_ports(mut self, ports: BTreeMap<IpAddr, Vec<HostPort>>) -> Self {
        for (addr, list) in ports {
            let mut kept: Vec<HostPort> = Vec::with_capacity(list.len());
            for p in list {
                if !kept
                    .iter()
                    .any(|k| k.protocol == p.protocol && k.port == p.port)
                {
                    kept.push(p);
                }
            }
            if !kept.is_empty() {
                self.host_ports.insert(addr.to_canonical(), kept);
            }
        }
        self
    }

    /// The allows for `ip`, from its longest matching prefix; `None` when no
    /// prefix matches at all.
    pub fn lookup(&self, ip: IpAddr) -> Option<&[Allow]> {
        self.lookup_set(ip)
            .and_then(|id| self.sets.get(id as usize))
            .map(Vec::as_slice)
    }

    /// The set of `ip`'s longest matching prefix.
    pub fn lookup_set(&self, ip: IpAddr) -> Option<SetId> {
        ancestors(IpNet::from(ip))
            .rev()
            .find_map(|net| self.entries.get(&net))
            .copied()
    }

    /// The rule that allows `protocol`/`port` to `ip`, `None` when it is
    /// denied: the address's own entry for that port if it has one, else
    /// the first allow of its longest prefix that permits it (the kernel's
    /// order).
    pub fn allowing(&self, ip: IpAddr, protocol: Protocol, port: u16) -> Option<&RuleRef> {
        let own = self.host_ports.get(&ip).and_then(|ports| {
            ports
                .iter()
                .find(|p| p.protocol == protocol && p.port == port)
        });
        if let Some(own) = own {
            return own.rule.as_ref();
        }
        self.lookup(ip)
            .unwrap_or_default()
            .iter()
            .find(|a| a.permits(protocol, port))
            .map(|a| &a.rule)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.host_ports.is_empty()
    }
}

/// Sorted allows with touching port ranges of the same rule and protocol
/// joined.
fn merge_adjacent(sorted: Vec<Allow>) -> Vec<Allow> {
    let mut out: Vec<Allow> = Vec::with_capacity(sorted.len());
    for allow in sorted {
        if let Some(last) = out.last_mut() {
            let touches = last.rule == allow.rule
                && last.protocol == allow.protocol
                && u32::from(allow.ports.start()) <= u32::from(last.ports.end()) + 1;
            if touches {
                let end = last.ports.end().max(allow.ports.end());
                if let Ok(joined) = PortRange::new(last.ports.start(), end) {
                    last.ports = joined;
                    continue;
                }
            }
        }
        out.push(allow);
    }
    out
}

/// `net` truncated to every prefix length from 0 up to its own.
fn ancestors(net: IpNet) -> impl DoubleEndedIterator<Item = IpNet> {
    (0..=net.prefix_len())
        .filter_map(move |len| IpNet::new(net.addr(), len).ok().map(|n| n.trunc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(policy: &str) -> Allow {
        Allow {
            rule: RuleRef {
                policy: ObjectId::new("ns", policy),
                index: 0,
            },
            protocol: None,
            ports: PortRange::ALL,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn names(t: &PrefixTable, addr: &str) -> Vec<String> {
        t.lookup(ip(addr))
            .unwrap_or_default()
            .iter()
            .map(|a| a.rule.policy.name.clone())
            .collect()
    }

    #[test]
    fn except_carves_a_hole_that_other_rules_can_fill() {
        let atoms = [
            Atom {
                cidr: net("10.0.0.0/8"),
                except: vec![net("10.1.0.0/16")],
                allow: allow("a"),
            },
            Atom {
                cidr: net("10.1.2.0/24"),
                except: vec![],
                allow: allow("b"),
            },
            Atom {
                cidr: net("0.0.0.0/0"),
                except: vec![net("10.0.0.0/8")],
                allow: allow("c"),
            },
        ];
        let t = PrefixTable::build(&atoms);
        assert_eq!(names(&t, "10.2.3.4"), ["a"]);
        assert!(names(&t, "10.1.9.9").is_empty(), "inside a's hole, and c's");
        assert_eq!(names(&t, "10.1.2.3"), ["b"]);
        assert_eq!(names(&t, "192.0.2.1"), ["c"]);
        assert_eq!(t.sets[0], Vec::<Allow>::new());
    }

    #[test]
    fn families_do_not_mix() {
        let atoms = [Atom {
            cidr: net("::/0"),
            except: vec![],
            allow: allow("v6"),
        }];
        let t = PrefixTable::build(&atoms);
        assert!(t.lookup(ip("10.0.0.1")).is_none());
        assert_eq!(names(&t, "2001:db8::1"), ["v6"]);
    }

    #[test]
    fn identical_allow_sets_are_shared() {
        let atoms: Vec<Atom> = (0..100u8)
            .map(|i| Atom {
                cidr: net(&format!("10.0.{i}.0/24")),
                except: vec![],
                allow: allow("a"),
            })
            .collect();
        let t = PrefixTable::build(&atoms);
        assert_eq!(t.entries.len(), 100);
        assert_eq!(t.sets.len(), 2, "the empty set plus one shared set");
    }
}
