//! The one limit of the maps that one tenant's NetworkPolicies can reach:
//! the (protocol, port) list of one prefix.
//!
//! The programs walk a prefix's port list in a bounded loop, so it holds at
//! most `MAX_PORT_ENTRIES * MAX_PORT_CHAIN` (128) entries after reduction
//! ([`super::ports::reduce`]). A NetworkPolicy with 129 single ports on one
//! CIDR is ordinary Kubernetes, and so is a pod selected by several
//! policies whose ports add up. [`MapImage::build`](super::MapImage::build)
//! would fail on it, and with it the whole node's apply; this finds every
//! such list from the plan alone, before any apply, so that the agent can
//! quarantine the object that brought it over (see `agent::quarantine`)
//! and apply the rest.

use std::collections::HashMap;

use egress_common::{PortEntry, MAX_PORT_CHAIN, MAX_PORT_ENTRIES};
use ipnet::IpNet;

use super::ports::reduce;
use crate::compile::{Allow, Egress, Plan, RuleRef};
use egress_policy::model::ObjectId;

/// The most (protocol, port) entries one prefix's list can hold.
pub const MAX_PORTS_PER_PREFIX: usize = MAX_PORT_ENTRIES * MAX_PORT_CHAIN;

/// One workload's NetworkPolicy port list that is over
/// [`MAX_PORTS_PER_PREFIX`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortOverflow {
    pub workload: ObjectId,
    /// A prefix with that list (the first, if several share it).
    pub prefix: IpNet,
    /// Entries after reduction.
    pub entries: usize,
    /// The rules with entries in the reduced list, and how many each has
    /// there, most first.
    pub rules: Vec<(RuleRef, usize)>,
}

/// Every over-limit port list of `plan`'s NetworkPolicy tables, one per
/// workload and list. Pure: the same reduction as the image build.
pub fn port_overflows(plan: &Plan) -> Vec<PortOverflow> {
    let mut out = Vec::new();
    for w in &plan.workloads {
        let Egress::Isolated { table, .. } = &w.egress else {
            continue;
        };
        // Quick way out: a set that is short before reduction is short
        // after it (reduction only drops and merges).
        let mut first_prefix: HashMap<u32, IpNet> = HashMap::new();
        for (prefix, set) in &table.entries {
            let long = table
                .sets
                .get(*set as usize)
                .is_some_and(|s| s.len() > MAX_PORTS_PER_PREFIX);
            if long {
                first_prefix.entry(*set).or_insert(*prefix);
            }
        }
        let mut sets: Vec<(u32, IpNet)> = first_prefix.into_iter().collect();
        sets.sort();
        for (set, prefix) in sets {
            let allows = &table.sets[set as usize];
            let (entries, rules) = entries(allows);
            let reduced = reduce(entries);
            if reduced.len() <= MAX_PORTS_PER_PREFIX {
                continue;
            }
            let mut counts: Vec<(RuleRef, usize)> = Vec::new();
            for e in &reduced {
                let rule = &rules[e.rule as usize];
                match counts.iter_mut().find(|(r, _)| r == rule) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((rule.clone(), 1)),
                }
            }
            counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            out.push(PortOverflow {
                workload: w.id.clone(),
                prefix,
                entries: reduced.len(),
                rules: counts,
            });
        }
    }
    out
}

/// `allows` as port entries, with rule ids local to the list (equal rules,
/// equal ids: all that reduction looks at), and the rules by id.
fn entries(allows: &[Allow]) -> (Vec<PortEntry>, Vec<RuleRef>) {
    let mut rules: Vec<RuleRef> = Vec::new();
    let entries = allows
        .iter()
        .map(|a| {
            let id = match rules.iter().position(|r| *r == a.rule) {
                Some(i) => i,
                None => {
                    rules.push(a.rule.clone());
                    rules.len() - 1
                }
            };
            PortEntry::new(
                u32::try_from(id).unwrap_or(u32::MAX),
                a.protocol.map_or(0, |p| p.number()),
                a.ports.start(),
                a.ports.end(),
            )
        })
        .collect();
    (entries, rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_policy::Source;

    fn plan(ports_a: &[u16], ports_b: &[u16]) -> Plan {
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(|p| format!("{{port: {p}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let np = |name: &str, ports: &[u16]| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: {name}, namespace: shop}}\n\
                 spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n\
                 \x20 - to: [{{ipBlock: {{cidr: 10.0.0.0/8}}}}]\n    ports: [{}]\n",
                list(ports)
            )
        };
        let workload = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
            metadata: {name: web, namespace: shop}\nspec: {cgroup: k/web}\n";
        let mut sources = vec![Source::new("w.yaml", workload)];
        if !ports_a.is_empty() {
            sources.push(Source::new("a.yaml", np("a", ports_a)));
        }
        if !ports_b.is_empty() {
            sources.push(Source::new("b.yaml", np("b", ports_b)));
        }
        let loaded = egress_policy::load_sources(&sources).expect("valid");
        crate::compile::compile(&loaded.model)
    }

    /// Every other port from `from`: nothing to merge.
    fn spread(from: u16, n: u16) -> Vec<u16> {
        (0..n).map(|i| from + 2 * i).collect()
    }

    #[test]
    fn a_list_at_the_limit_fits_and_one_more_does_not() {
        assert!(port_overflows(&plan(&spread(1000, 128), &[])).is_empty());
        let over = port_overflows(&plan(&spread(1000, 129), &[]));
        assert_eq!(over.len(), 1, "{over:?}");
        assert_eq!(over[0].entries, 129);
        assert_eq!(over[0].prefix, "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert_eq!(over[0].rules.len(), 1);
        assert_eq!(*over[0].rules[0].0.policy, ObjectId::new("shop", "a"));
    }

    #[test]
    fn neighbouring_ports_merge_and_do_not_count() {
        // 300 consecutive ports are one range.
        let ports: Vec<u16> = (1000..1300).collect();
        assert!(port_overflows(&plan(&ports, &[])).is_empty());
    }

    #[test]
    fn two_policies_that_add_up_are_both_named_most_first() {
        let over = port_overflows(&plan(&spread(1000, 100), &spread(5001, 40)));
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].entries, 140);
        let names: Vec<(&str, usize)> = over[0]
            .rules
            .iter()
            .map(|(r, n)| (r.policy.name.as_str(), *n))
            .collect();
        assert_eq!(names, [("a", 100), ("b", 40)]);
    }
}
