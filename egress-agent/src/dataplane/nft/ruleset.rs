//! The desired table as one nft transaction, a pure function of [`NodeRules`].
//!
//! ```text
//! table inet egress_enforcer {
//!     set cluster_v4 { type ipv4_addr; flags interval; elements = { 10.244.0.0/16 } }
//!     set gateways_v4 { type ipv4_addr; elements = { 10.244.1.2 } }
//!     set workloads_v4 { type ipv4_addr; elements = { 10.244.2.2 } }
//!     (the same three sets for IPv6)
//!     counter forward_denied_v4 { }
//!     counter forward_denied_v6 { }
//!     chain deny {
//!         limit rate 10/second burst 20 packets log prefix "egress-enforcer deny: "
//!         drop
//!     }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         ip saddr @workloads_v4 ip saddr != @gateways_v4 ip daddr != @cluster_v4 counter name "forward_denied_v4" jump deny
//!         ip6 saddr @workloads_v6 ip6 saddr != @gateways_v6 ip6 daddr != @cluster_v6 counter name "forward_denied_v6" jump deny
//!     }
//! }
//! ```

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashSet},
    net::IpAddr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::{
    batch::Batch,
    expr::{Expression, NamedExpression, Payload, PayloadField, Prefix},
    schema::{
        Chain, Counter, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
    },
    stmt::{self, JumpTarget, Limit, Log, Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};

use super::{counters::DenyCounter, TABLE};
use crate::compile::NodeRules;

/// Prefix of the kernel log line written for a denied packet.
pub const LOG_PREFIX: &str = "egress-enforcer deny: ";

/// `inet`, so that one table and one base chain see both IP families.
const FAMILY: NfFamily = NfFamily::INet;
const FORWARD_CHAIN: &str = "forward";
const DENY_CHAIN: &str = "deny";
/// `filter`. The order relative to other tables' forward chains does not
/// matter for correctness: a drop in any base chain is final, while an
/// accept only ends that one chain.
const FORWARD_PRIORITY: i32 = 0;
/// Log lines per second, so that a pod hammering a denied destination
/// cannot flood the kernel log. Counters still count every packet.
const LOG_RATE_PER_SECOND: u32 = 10;
const LOG_BURST_PACKETS: u32 = 20;

/// The names and header fields of one IP family.
struct Family {
    /// Payload protocol: `ip` or `ip6`.
    protocol: &'static str,
    set_type: SetType,
    cluster: &'static str,
    gateways: &'static str,
    workloads: &'static str,
    counter: DenyCounter,
}

const V4: Family = Family {
    protocol: "ip",
    set_type: SetType::Ipv4Addr,
    cluster: "cluster_v4",
    gateways: "gateways_v4",
    workloads: "workloads_v4",
    counter: DenyCounter::ForwardV4,
};

const V6: Family = Family {
    protocol: "ip6",
    set_type: SetType::Ipv6Addr,
    cluster: "cluster_v6",
    gateways: "gateways_v6",
    workloads: "workloads_v6",
    counter: DenyCounter::ForwardV6,
};

/// The whole transaction that makes the kernel's [`TABLE`] exactly the one
/// `rules` describe.
///
/// It is the `add table; delete table; add table; …` idiom, in one batch
/// that nft sends as one netlink transaction, which the kernel commits
/// atomically: packets see either the old table or the complete new one,
/// never a missing or half-filled one. The leading `add table` makes the
/// `delete` valid when the table does not exist yet, so the same batch
/// installs and replaces. It is preferred over `flush table` + re-add
/// because a flush only removes rules: sets, chains and counters of an
/// older layout (or added by hand) would survive it, and a base chain's
/// hook or priority cannot be changed in place. The cost is that the named
/// counters restart from zero at every apply.
///
/// Cluster CIDRs are aggregated here rather than with the sets'
/// `auto-merge` flag: nft's JSON input ignores that flag, and overlapping
/// intervals in one set are otherwise rejected.
///
/// With no cluster CIDRs at all there is no cluster scope (no egress
/// gateway exists, see `compile::ClusterScope`), so the forward chain gets
/// no rules: "outside the cluster" would otherwise mean everywhere. The
/// sets, counters and chains are still created, so the table's shape does
/// not depend on the input.
pub fn ruleset(rules: &NodeRules) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(table());
    batch.delete(table());
    batch.add(table());

    let (cluster_v4, cluster_v6) = split_prefixes(&rules.cluster_cidrs);
    let (gateways_v4, gateways_v6) = split_addresses(&rules.gateway_addresses);
    let (workloads_v4, workloads_v6) = split_addresses(&rules.workload_addresses);
    for (family, cluster, gateways, workloads) in [
        (&V4, cluster_v4, gateways_v4, workloads_v4),
        (&V6, cluster_v6, gateways_v6, workloads_v6),
    ] {
        batch.add(set(family, family.cluster, true, cluster));
        batch.add(set(family, family.gateways, false, gateways));
        batch.add(set(family, family.workloads, false, workloads));
        batch.add(counter(family.counter));
    }

    batch.add(chain(DENY_CHAIN, None));
    batch.add(rule(DENY_CHAIN, vec![log_limit(), log()]));
    batch.add(rule(DENY_CHAIN, vec![Statement::Drop(None)]));

    batch.add(chain(FORWARD_CHAIN, Some(NfHook::Forward)));
    if !rules.cluster_cidrs.is_empty() {
        for family in [&V4, &V6] {
            batch.add(rule(FORWARD_CHAIN, deny_statements(family)));
        }
    }
    batch.to_nftables()
}

/// Deletes [`TABLE`], and succeeds when it does not exist (the leading
/// `add` makes the `delete` valid either way). Nothing else is touched.
pub fn uninstall_batch() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(table());
    batch.delete(table());
    batch.to_nftables()
}

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: FAMILY,
        name: TABLE.into(),
        handle: None,
    })
}

/// A base chain when `hook` is set (policy accept: we only ever drop), a
/// regular chain otherwise.
fn chain(name: &'static str, hook: Option<NfHook>) -> NfListObject<'static> {
    let base = hook.is_some();
    NfListObject::Chain(Chain {
        family: FAMILY,
        table: TABLE.into(),
        name: name.into(),
        newname: None,
        handle: None,
        _type: base.then_some(NfChainType::Filter),
        hook,
        prio: base.then_some(FORWARD_PRIORITY),
        dev: None,
        policy: base.then_some(NfChainPolicy::Accept),
    })
}

fn set(
    family: &Family,
    name: &'static str,
    interval: bool,
    elements: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family: FAMILY,
        table: TABLE.into(),
        name: name.into(),
        handle: None,
        set_type: SetTypeValue::Single(family.set_type),
        policy: None,
        flags: interval.then(|| HashSet::from([SetFlag::Interval])),
        // nft rejects an empty `elem` array; an absent one is an empty set.
        elem: (!elements.is_empty()).then_some(Cow::Owned(elements)),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

fn counter(counter: DenyCounter) -> NfListObject<'static> {
    NfListObject::Counter(Counter {
        family: FAMILY,
        table: TABLE.into(),
        name: counter.name().into(),
        handle: None,
        packets: None,
        bytes: None,
    })
}

fn rule(chain: &'static str, statements: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(statements),
        handle: None,
        index: None,
        comment: None,
    })
}

/// `<ip> saddr @workloads <ip> saddr != @gateways <ip> daddr != @cluster
/// counter name <counter> jump deny`.
///
/// Forward runs before postrouting, so the source is still the pod's own
/// address even when another table masquerades it later; and after
/// prerouting, so a Service address is already DNATed to its backend.
fn deny_statements(family: &Family) -> Vec<Statement<'static>> {
    vec![
        lookup(family, "saddr", Operator::EQ, family.workloads),
        lookup(family, "saddr", Operator::NEQ, family.gateways),
        lookup(family, "daddr", Operator::NEQ, family.cluster),
        Statement::Counter(stmt::Counter::Named(family.counter.name().into())),
        // A separate chain, because a `limit` that is over its rate ends
        // the rule it is in: the drop must not depend on it.
        Statement::Jump(JumpTarget {
            target: DENY_CHAIN.into(),
        }),
    ]
}

fn lookup(family: &Family, field: &'static str, op: Operator, set: &str) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: family.protocol.into(),
                field: field.into(),
            },
        ))),
        right: Expression::String(format!("@{set}").into()),
        op,
    })
}

fn log_limit() -> Statement<'static> {
    Statement::Limit(Limit {
        rate: LOG_RATE_PER_SECOND,
        rate_unit: None,
        per: Some("second".into()),
        burst: Some(LOG_BURST_PACKETS),
        burst_unit: None,
        inv: None,
    })
}

fn log() -> Statement<'static> {
    Statement::Log(Some(Log {
        prefix: Some(LOG_PREFIX.into()),
        group: None,
        snaplen: None,
        queue_threshold: None,
        level: None,
        flags: None,
    }))
}

/// Aggregated (merged, non-overlapping) prefixes per family.
fn split_prefixes(cidrs: &[IpNet]) -> (Vec<Expression<'static>>, Vec<Expression<'static>>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for cidr in cidrs {
        match cidr {
            IpNet::V4(net) => v4.push(*net),
            IpNet::V6(net) => v6.push(*net),
        }
    }
    let v4 = Ipv4Net::aggregate(&v4)
        .into_iter()
        .map(|n| prefix(IpAddr::V4(n.network()), n.prefix_len()));
    let v6 = Ipv6Net::aggregate(&v6)
        .into_iter()
        .map(|n| prefix(IpAddr::V6(n.network()), n.prefix_len()));
    (v4.collect(), v6.collect())
}

fn prefix(network: IpAddr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(address(network)),
        len: len.into(),
    }))
}

/// Sorted, deduplicated addresses per family: a plain set rejects
/// duplicate elements, and a stable order keeps the batch reproducible.
fn split_addresses(addrs: &[IpAddr]) -> (Vec<Expression<'static>>, Vec<Expression<'static>>) {
    let unique: BTreeSet<IpAddr> = addrs.iter().copied().collect();
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = unique.into_iter().partition(IpAddr::is_ipv4);
    (
        v4.into_iter().map(address).collect(),
        v6.into_iter().map(address).collect(),
    )
}

fn address(addr: IpAddr) -> Expression<'static> {
    Expression::String(addr.to_string().into())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn rules(cluster: &[&str], gateways: &[&str], workloads: &[&str]) -> NodeRules {
        NodeRules {
            cluster_cidrs: cluster.iter().map(|c| c.parse().unwrap()).collect(),
            gateway_addresses: gateways.iter().map(|a| a.parse().unwrap()).collect(),
            workload_addresses: workloads.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    /// The batch as nft reads it: a list of `{command: {kind: object}}`.
    fn commands(rules: &NodeRules) -> Vec<Value> {
        let json = serde_json::to_value(ruleset(rules)).unwrap();
        json["nftables"].as_array().unwrap().clone()
    }

    fn added<'a>(commands: &'a [Value], kind: &str) -> Vec<&'a Value> {
        commands.iter().filter_map(|c| c["add"].get(kind)).collect()
    }

    fn set_named<'a>(commands: &'a [Value], name: &str) -> &'a Value {
        added(commands, "set")
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no set {name}"))
    }

    #[test]
    fn the_batch_replaces_the_table_atomically_and_works_when_it_is_missing() {
        let commands = commands(&rules(&["10.244.0.0/16"], &[], &[]));
        let table = json!({"table": {"family": "inet", "name": TABLE}});
        assert_eq!(commands[0], json!({ "add": table }));
        assert_eq!(commands[1], json!({ "delete": table }));
        assert_eq!(commands[2], json!({ "add": table }));
        // Everything else only adds, and only to our table.
        for command in &commands[3..] {
            let object = command["add"].as_object().expect("an add command");
            let (_, object) = object.iter().next().unwrap();
            assert_eq!(object["table"], TABLE);
            assert_eq!(object["family"], "inet");
        }
    }

    #[test]
    fn uninstall_deletes_only_our_table_and_is_valid_when_it_is_gone() {
        let json = serde_json::to_value(uninstall_batch()).unwrap();
        let table = json!({"table": {"family": "inet", "name": TABLE}});
        assert_eq!(
            json,
            json!({"nftables": [{ "add": table }, { "delete": table }]})
        );
    }

    #[test]
    fn overlapping_cluster_cidrs_are_merged_per_family_into_interval_sets() {
        let commands = commands(&rules(
            &[
                "10.244.0.0/16",
                "10.244.3.0/24",
                "10.96.0.0/13",
                "10.96.0.5/13",
                "fd00:244::/48",
                "fd00:244:0:1::/64",
            ],
            &[],
            &[],
        ));
        let v4 = set_named(&commands, "cluster_v4");
        assert_eq!(v4["type"], "ipv4_addr");
        assert_eq!(v4["flags"], json!(["interval"]));
        assert_eq!(
            v4["elem"],
            json!([
                {"prefix": {"addr": "10.96.0.0", "len": 13}},
                {"prefix": {"addr": "10.244.0.0", "len": 16}},
            ])
        );
        let v6 = set_named(&commands, "cluster_v6");
        assert_eq!(v6["type"], "ipv6_addr");
        assert_eq!(
            v6["elem"],
            json!([{"prefix": {"addr": "fd00:244::", "len": 48}}])
        );
    }

    #[test]
    fn addresses_are_deduplicated_sorted_and_split_per_family() {
        let commands = commands(&rules(
            &["10.244.0.0/16"],
            &["10.244.1.2", "fd00:244:1::2", "10.244.1.2"],
            &["10.244.2.3", "10.244.2.2", "fd00:244:2::2"],
        ));
        assert_eq!(
            set_named(&commands, "gateways_v4")["elem"],
            json!(["10.244.1.2"])
        );
        assert_eq!(
            set_named(&commands, "gateways_v6")["elem"],
            json!(["fd00:244:1::2"])
        );
        assert_eq!(
            set_named(&commands, "workloads_v4")["elem"],
            json!(["10.244.2.2", "10.244.2.3"])
        );
        let workloads_v6 = set_named(&commands, "workloads_v6");
        assert_eq!(workloads_v6["type"], "ipv6_addr");
        assert_eq!(workloads_v6.get("flags"), None, "a plain hash set");
        // An empty set has no `elem` at all: nft rejects an empty array.
        assert_eq!(set_named(&commands, "cluster_v6").get("elem"), None);
    }

    #[test]
    fn non_gateway_workloads_leaving_the_cluster_are_counted_logged_and_dropped() {
        let commands = commands(&rules(&["10.244.0.0/16"], &[], &["10.244.2.2"]));
        let forward = added(&commands, "chain")
            .into_iter()
            .find(|c| c["name"] == FORWARD_CHAIN)
            .unwrap();
        assert_eq!(
            *forward,
            json!({"family": "inet", "table": TABLE, "name": "forward", "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "accept"})
        );
        let rules = added(&commands, "rule");
        let forward_rules: Vec<_> = rules.iter().filter(|r| r["chain"] == "forward").collect();
        assert_eq!(forward_rules.len(), 2);
        assert_eq!(
            forward_rules[0]["expr"],
            json!([
                {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": "@workloads_v4", "op": "=="}},
                {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": "@gateways_v4", "op": "!="}},
                {"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": "@cluster_v4", "op": "!="}},
                {"counter": "forward_denied_v4"},
                {"jump": {"target": "deny"}},
            ])
        );
        assert_eq!(
            forward_rules[1]["expr"][0]["match"]["right"],
            "@workloads_v6"
        );
        assert_eq!(
            forward_rules[1]["expr"][3],
            json!({"counter": "forward_denied_v6"})
        );

        let deny_rules: Vec<_> = rules.iter().filter(|r| r["chain"] == "deny").collect();
        assert_eq!(
            deny_rules[0]["expr"],
            json!([
                {"limit": {"rate": 10, "per": "second", "burst": 20}},
                {"log": {"prefix": "egress-enforcer deny: "}},
            ])
        );
        assert_eq!(deny_rules[1]["expr"], json!([{"drop": null}]));
        assert_eq!(deny_rules.len(), 2);
    }

    #[test]
    fn without_cluster_cidrs_there_is_no_scope_and_nothing_is_dropped() {
        let commands = commands(&rules(&[], &[], &["10.244.2.2"]));
        let rules = added(&commands, "rule");
        assert!(rules.iter().all(|r| r["chain"] != "forward"));
        // The table keeps its shape: the counters can still be read.
        let counters: Vec<_> = added(&commands, "counter")
            .into_iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(
            counters,
            [json!("forward_denied_v4"), json!("forward_denied_v6")]
        );
    }

    #[test]
    fn the_same_rules_give_the_same_batch() {
        let a = rules(
            &["10.244.0.0/16", "10.0.0.0/8"],
            &["10.244.1.2"],
            &["10.244.2.2"],
        );
        let mut b = a.clone();
        b.cluster_cidrs.reverse();
        assert_eq!(
            serde_json::to_string(&ruleset(&a)).unwrap(),
            serde_json::to_string(&ruleset(&b)).unwrap()
        );
    }
}
