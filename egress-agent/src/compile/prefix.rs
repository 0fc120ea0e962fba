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
//! Building costs O(prefixes × distinct prefix lengths) hash lookups, not
//! O(prefixes²): a prefix's ancestors are looked up only at the lengths
//! some prefix of the table has. Identical allow sets are
//! stored once; the kernel maps prefix → set id.
//!
//! A prefix answers for every port, but one port of one address may need
//! an answer of its own: a NodePort on a node address is the Service's,
//! while the node's other ports stay the node's. Those are
//! [`PrefixTable::host_ports`], read before the prefixes (the kernel's
//! `HOST_PORTS`, see `egress_common::host_ports`).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    sync::Arc,
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
    /// Shared: a rule's reference is copied into every allow and atom of
    /// it, 100k of them for a rule of 100k CIDRs.
    pub policy: Arc<ObjectId>,
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
        // Allows are interned first, numbered in their sorted order: many
        // atoms carry the same allow (every CIDR of one rule and port), and
        // a set of numbers sorts, hashes and compares far cheaper than a
        // set of allows, whose rules are strings. Sorting the numbers sorts
        // the allows.
        let mut distinct: Vec<&Allow> = atoms.iter().map(|a| &a.allow).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let number: HashMap<&Allow, u32> = distinct
            .iter()
            .enumerate()
            .map(|(i, allow)| (*allow, i as u32))
            .collect();

        let allow_of: Vec<u32> = atoms.iter().map(|a| number[&a.allow]).collect();

        // (prefix, is a hole, atom): one flat sorted list, so that a prefix's
        // marks are one run of it (a map of small vectors took an
        // allocation per CIDR, 13 MB at 100k). Holes are an atom's, not its
        // allow's: another atom with the same allow and no hole there still
        // allows the prefix.
        let mut marks: Vec<(IpNet, bool, u32)> = Vec::with_capacity(atoms.len());
        for (i, atom) in atoms.iter().enumerate() {
            let i = i as u32;
            marks.push((atom.cidr, false, i));
            marks.extend(atom.except.iter().map(|hole| (*hole, true, i)));
        }
        marks.sort_unstable();
        // The distinct prefixes, in order, each with where its run starts.
        let mut prefixes: Vec<(IpNet, usize)> = Vec::new();
        for (at, (net, _, _)) in marks.iter().enumerate() {
            if prefixes.last().is_none_or(|(last, _)| last != net) {
                prefixes.push((*net, at));
            }
        }
        let run = |k: usize| {
            let end = prefixes.get(k + 1).map_or(marks.len(), |(_, at)| *at);
            &marks[prefixes[k].1..end]
        };
        // Only lengths some prefix has can hold an ancestor: a table of /32s
        // under a few /16s looks up two lengths per prefix, not 33.
        let mut lengths: Vec<(bool, u8)> = prefixes
            .iter()
            .map(|(net, _)| (net.addr().is_ipv4(), net.prefix_len()))
            .collect();
        lengths.sort_unstable();
        lengths.dedup();

        let mut table = Self {
            entries: BTreeMap::new(),
            sets: vec![Vec::new()],
            host_ports: BTreeMap::new(),
        };
        let mut set_ids: HashMap<Vec<u32>, SetId> = HashMap::from([(Vec::new(), 0)]);
        // In prefix order, so that set ids, and so the whole plan, are the
        // same for the same policy on every run.
        let (mut covering, mut holes, mut allows) = (Vec::new(), Vec::new(), Vec::new());
        for &(prefix, _) in &prefixes {
            covering.clear();
            holes.clear();
            allows.clear();
            let family = prefix.addr().is_ipv4();
            for &(_, len) in lengths
                .iter()
                .filter(|(f, len)| *f == family && *len <= prefix.prefix_len())
            {
                let Ok(ancestor) = IpNet::new(prefix.addr(), len) else {
                    continue;
                };
                let ancestor = ancestor.trunc();
                let Ok(k) = prefixes.binary_search_by(|(net, _)| net.cmp(&ancestor)) else {
                    continue;
                };
                for &(_, hole, atom) in run(k) {
                    if hole {
                        holes.push(atom);
                    } else {
                        covering.push(atom);
                    }
                }
            }
            holes.sort_unstable();
            allows.extend(
                covering
                    .iter()
                    .filter(|atom| holes.binary_search(atom).is_err())
                    .map(|&atom| allow_of[atom as usize]),
            );
            allows.sort_unstable();
            allows.dedup();
            let id = match set_ids.get(&allows) {
                Some(&id) => id,
                None => {
                    let id = SetId::try_from(table.sets.len()).unwrap_or(SetId::MAX);
                    table.sets.push(
                        allows
                            .iter()
                            .map(|&n| distinct[n as usize].clone())
                            .collect(),
                    );
                    set_ids.insert(allows.clone(), id);
                    id
                }
            };
            table.entries.insert(prefix, id);
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
                policy: Arc::new(ObjectId::new("ns", policy)),
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

    proptest::proptest! {
        /// Any overlap of CIDRs, holes and rules: every address gets
        /// exactly the allows of the atoms whose CIDR holds it and none
        /// of whose holes do, as the `ipBlock` semantics say, found here
        /// by brute force.
        #[test]
        fn a_lookup_gives_the_allows_of_the_atoms_around_the_address(
            raw in proptest::collection::vec(
                (any_net(), proptest::collection::vec(any_net(), 0..3), 0..4u8),
                1..24,
            ),
            probes in proptest::collection::vec(0u32..1024, 32),
        ) {
            let atoms: Vec<Atom> = raw
                .into_iter()
                .map(|(cidr, except, rule)| Atom {
                    cidr,
                    except,
                    allow: allow(&format!("r{rule}")),
                })
                .collect();
            let t = PrefixTable::build(&atoms);
            for probe in probes {
                let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | probe));
                let mut want: Vec<&Allow> = atoms
                    .iter()
                    .filter(|a| a.cidr.contains(&addr) && !a.except.iter().any(|h| h.contains(&addr)))
                    .map(|a| &a.allow)
                    .collect();
                want.sort();
                want.dedup();
                let got: Vec<&Allow> = t.lookup(addr).unwrap_or_default().iter().collect();
                proptest::prop_assert_eq!(got, want, "address {}", addr);
            }
        }
    }

    /// Prefixes inside 10.0.0.0/22, so that random ones overlap often.
    fn any_net() -> impl proptest::strategy::Strategy<Value = IpNet> {
        use proptest::strategy::Strategy as _;
        (0u32..1024, 14u8..=32).prop_map(|(host, len)| {
            IpNet::new(
                IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | host)),
                len,
            )
            .expect("a valid length")
            .trunc()
        })
    }
}
