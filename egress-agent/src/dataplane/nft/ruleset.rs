//! The desired tables as one nft transaction, a pure function of
//! [`NodeRules`].
//!
//! ```text
//! table inet egress_enforcer {            # what the node forwards
//!     set cluster_v4 { type ipv4_addr; flags interval; elements = { 10.244.0.0/16 } }
//!     set gateways_v4 { type ipv4_addr; elements = { 10.244.1.2 } }
//!     set workloads_v4 { type ipv4_addr; elements = { 10.244.2.2 } }
//!     set ports { type ifname; elements = { "veth1", "veth2" } }
//!     set sources_v4 { type ifname . ipv4_addr;
//!                      elements = { "veth1" . 10.244.1.2, "veth2" . 10.244.2.2 } }
//!     set bound_v4 { type ipv4_addr; elements = { 10.244.1.2, 10.244.2.2 } }
//!     (the same address sets for IPv6)
//!     counter forward_denied_v4 { }  counter routed_forged_v4 { }
//!     counter tunnel_egress_v4 { }  (and _v6)
//!     chain deny {
//!         limit rate 10/second burst 20 packets log prefix "egress-enforcer deny: "
//!         drop
//!     }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         meta iifkind { "vxlan", "geneve", "bareudp", "gre", "gretap", "erspan", "ip6gre",
//!                        "ip6gretap", "ip6erspan", "ipip", "sit", "ip6tnl", "wireguard" }
//!             ip daddr != @cluster_v4 counter name "tunnel_egress_v4" jump deny
//!         (the same for IPv6)
//!         jump routed
//!         ip saddr @workloads_v4 ip saddr != @gateways_v4 ip daddr != @cluster_v4 counter name "forward_denied_v4" jump deny
//!         (the same for IPv6)
//!     }
//!     chain routed {
//!         meta iifkind "bridge" return
//!         iifname @ports ip daddr != @cluster_v4 iifname . ip saddr != @sources_v4 counter name "routed_forged_v4" jump deny
//!         ip saddr @bound_v4 ip daddr != @cluster_v4 iifname . ip saddr != @sources_v4 counter name "routed_forged_v4" jump deny
//!         (the same two for IPv6)
//!     }
//! }
//! table bridge egress_enforcer {          # what pods put on a bridge
//!     set cluster_v4, ports, sources_v4, bound_v4 (as above)
//!     (and IPv6)
//!     counter bridged_forged_v4 { }  (and _v6)
//!     chain deny { (as above) }
//!     chain prerouting {
//!         type filter hook prerouting priority -200; policy accept;
//!         iifname @ports ether type ip meta pkttype != broadcast meta pkttype != multicast
//!             ip daddr != @cluster_v4 iifname . ip saddr != @sources_v4 counter name "bridged_forged_v4" jump deny
//!         ether type ip meta pkttype != broadcast meta pkttype != multicast
//!             ip saddr @bound_v4 ip daddr != @cluster_v4 iifname . ip saddr != @sources_v4 counter name "bridged_forged_v4" jump deny
//!         (the same two for IPv6, also skipping link-local sources)
//!     }
//! }
//! ```
//!
//! Two checks, which together drop everything that leaves the cluster
//! from a workload's port unless it is a gateway's address from that
//! gateway's port, and a third for what comes from no port at all:
//!
//! 1. **The port vouches for the source.** A frame from a workload's port
//!    (the node's end of its veth) whose source is not one of that
//!    workload's addresses is forged, whatever socket made it (one the
//!    cgroup programs never saw, `AF_PACKET`, the outer packet of a tunnel
//!    device in the pod). A known address sent from another port, or from
//!    any other interface, is forged too. Keyed on `interface . address`
//!    pairs, so the gateway's address from a non-gateway pod's port is as
//!    forged as any other.
//! 2. **Only gateways' addresses leave.** With sources vouched for, the
//!    address check of the forward chain is a check of who sent it.
//! 3. **Nothing decapsulated leaves.** What one of the node's tunnel
//!    devices (flannel's `flannel.1`, Calico's `tunl0` or `vxlan.calico`,
//!    Cilium's `cilium_vxlan`, a `collect_md` device) takes out of a
//!    tunnel comes from no port, with whatever source its sender wrote: a
//!    pod that sends a tunnel packet to the node's own address chooses
//!    it. Such a packet is never a gateway's egress (every common overlay
//!    sends a remote pod's internet traffic out through that pod's own
//!    node, and what it sends to a gateway pod here is addressed to that
//!    pod, inside the cluster), so it is dropped when it leaves the
//!    cluster, judged by the kind of its input interface alone. WireGuard
//!    counts as a tunnel: Calico and Cilium carry pods' traffic between
//!    nodes over it when encryption is on. Replies are not excepted: a pod
//!    can make the conntrack entry a reply would match (a forged outside
//!    source to an address inside the cluster is not judged), so an
//!    exception would reopen the way out. The rule comes before the
//!    routed chain, so that one counter holds every decapsulated drop,
//!    whatever its source.
//!
//! Where the port is seen decides where check 1 runs. On a bridge (`cni0`
//! of the bridge plugin, flannel, kubenet) the IP layer sees the bridge as
//! the input interface, never the port, so check 1 runs in the `bridge`
//! family's prerouting, where `iifname` is the port. Prerouting runs
//! before the node knows whether a packet is for itself or to be
//! forwarded, which is why check 1 drops forged sources only (a pod's own
//! address may talk to the node) and check 2 stays in the forward hook.
//! Frames to a broadcast or multicast MAC address are not judged: the
//! node never forwards them (`ip_forward`/`ip6_forward` drop anything not
//! addressed to it), and DHCP, ARP's IPv6 counterpart and IGMP need them.
//! IPv6 link-local sources are not judged either: a router never forwards
//! them, and neighbour discovery uses them. With routed ports (a veth per
//! pod without a bridge: Calico, Cilium's veth mode) the IP layer sees the
//! port itself, so check 1 runs in the forward chain (`routed`), on
//! forwarded packets only. There a local workload's address is forwarded
//! legitimately from its own port only, so it is dropped from any other
//! interface: another pod's port the agent does not know (yet), the
//! node's uplink (from a tunnel device, check 3 has dropped it already).
//! Except from a bridge: the bridge table has vouched for its ports
//! already, and at the IP layer every bridged pod shares the bridge. The
//! bridge is skipped by `return` rather than matched with `!=`, because
//! `meta iifkind` ends a rule unmatched on a device without a kind (a
//! physical NIC), and such a device must not escape the check.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashSet},
    net::IpAddr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::{
    batch::Batch,
    expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem},
    schema::{
        Chain, Counter, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
    },
    stmt::{self, JumpTarget, Limit, Log, Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};

use super::{counters::DenyCounter, TABLE};
use crate::compile::{NodeRules, WorkloadPort};

/// Prefix of the kernel log line written for a denied packet.
pub const LOG_PREFIX: &str = "egress-enforcer deny: ";

/// The families of the agent's tables, in the order they are written.
/// `inet`, so that one table and one base chain see both IP families at
/// the IP layer; `bridge`, for frames as they enter a bridge port.
pub const FAMILIES: [NfFamily; 2] = [NfFamily::INet, NfFamily::Bridge];

const FORWARD_CHAIN: &str = "forward";
/// Check 1 for routed ports, which the forward chain jumps to.
const ROUTED_CHAIN: &str = "routed";
const PREROUTING_CHAIN: &str = "prerouting";
const DENY_CHAIN: &str = "deny";
const PORTS: &str = "ports";
/// `filter`. The order relative to other tables' forward chains does not
/// matter for correctness: a drop in any base chain is final, while an
/// accept only ends that one chain.
const FORWARD_PRIORITY: i32 = 0;
/// The bridge family's `filter` (`NF_BR_PRI_FILTER_BRIDGED`); any would
/// do, for the same reason.
const BRIDGE_PRIORITY: i32 = -200;
/// What `meta iifkind` says of a Linux bridge.
const BRIDGE_KIND: &str = "bridge";
/// What `meta iifkind` says of a tunnel device: the kernel's
/// `rtnl_link_ops` kind of each driver that takes packets out of a
/// tunnel and hands them to the IP layer (check 3 of the module doc).
/// `ipip` and `sit` cover the IP-in-IP modes of IPv4 outer packets,
/// `ip6tnl` those of IPv6 ones. Not here: `tun` (a user-space program
/// writes those packets, and VPN clients and VMs use it for much else),
/// and IPsec's `vti`, `vti6` and `xfrm`, which no common CNI uses.
const TUNNEL_KINDS: [&str; 13] = [
    "vxlan",
    "geneve",
    "bareudp",
    "gre",
    "gretap",
    "erspan",
    "ip6gre",
    "ip6gretap",
    "ip6erspan",
    "ipip",
    "sit",
    "ip6tnl",
    "wireguard",
];
/// Log lines per second, so that a pod hammering a denied destination
/// cannot flood the kernel log. Counters still count every packet.
const LOG_RATE_PER_SECOND: u32 = 10;
const LOG_BURST_PACKETS: u32 = 20;

/// The names and header fields of one IP family.
struct Family {
    /// Payload protocol, and the `ether type` of its frames: `ip` or `ip6`.
    protocol: &'static str,
    set_type: SetType,
    cluster: &'static str,
    gateways: &'static str,
    workloads: &'static str,
    /// `interface . address` of every known port and its workload's
    /// addresses.
    sources: &'static str,
    /// The addresses of `sources`.
    bound: &'static str,
    counter: DenyCounter,
    routed_forged: DenyCounter,
    tunnel_egress: DenyCounter,
    bridged_forged: DenyCounter,
    /// Sources never forwarded, so never judged on a bridge port.
    unrouted_sources: Option<(IpAddr, u8)>,
}

const V4: Family = Family {
    protocol: "ip",
    set_type: SetType::Ipv4Addr,
    cluster: "cluster_v4",
    gateways: "gateways_v4",
    workloads: "workloads_v4",
    sources: "sources_v4",
    bound: "bound_v4",
    counter: DenyCounter::ForwardV4,
    routed_forged: DenyCounter::RoutedForgedV4,
    tunnel_egress: DenyCounter::TunnelEgressV4,
    bridged_forged: DenyCounter::BridgedForgedV4,
    unrouted_sources: None,
};

const V6: Family = Family {
    protocol: "ip6",
    set_type: SetType::Ipv6Addr,
    cluster: "cluster_v6",
    gateways: "gateways_v6",
    workloads: "workloads_v6",
    sources: "sources_v6",
    bound: "bound_v6",
    counter: DenyCounter::ForwardV6,
    routed_forged: DenyCounter::RoutedForgedV6,
    tunnel_egress: DenyCounter::TunnelEgressV6,
    bridged_forged: DenyCounter::BridgedForgedV6,
    // fe80::/10
    unrouted_sources: Some((
        IpAddr::V6(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        10,
    )),
};

/// The whole transaction that makes the kernel's two [`TABLE`]s (one per
/// family of [`FAMILIES`]) exactly the ones `rules` describe.
///
/// It is the `add table; delete table; add table; …` idiom, in one batch
/// that nft sends as one netlink transaction, which the kernel commits
/// atomically: packets see either the old tables or the complete new ones,
/// never a missing or half-filled one, and never the new `inet` table
/// beside the old `bridge` one. The leading `add table` makes the
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
/// gateway exists, see `compile::ClusterScope`), so the base chains get
/// no rules: "outside the cluster" would otherwise mean everywhere. The
/// sets, counters and chains are still created, so the tables' shape does
/// not depend on the input.
pub fn ruleset(rules: &NodeRules) -> Nftables<'static> {
    let mut batch = Batch::new();
    for family in FAMILIES {
        batch.add(table(family));
        batch.delete(table(family));
        batch.add(table(family));
    }

    let (cluster_v4, cluster_v6) = split_prefixes(&rules.cluster_cidrs);
    let (gateways_v4, gateways_v6) = split_addresses(&rules.gateway_addresses);
    let (workloads_v4, workloads_v6) = split_addresses(&rules.workload_addresses);
    let ports = port_names(&rules.ports);
    let (sources_v4, sources_v6) = split_sources(&rules.ports);
    let bound: Vec<IpAddr> = rules
        .ports
        .iter()
        .flat_map(|p| p.addresses.iter().copied())
        .collect();
    let (bound_v4, bound_v6) = split_addresses(&bound);
    for table in FAMILIES {
        batch.add(set(
            table,
            PORTS,
            SetTypeValue::Single(SetType::Ifname),
            false,
            ports.clone(),
        ));
    }
    for (family, cluster, gateways, workloads, sources, bound) in [
        (
            &V4,
            cluster_v4,
            gateways_v4,
            workloads_v4,
            sources_v4,
            bound_v4,
        ),
        (
            &V6,
            cluster_v6,
            gateways_v6,
            workloads_v6,
            sources_v6,
            bound_v6,
        ),
    ] {
        let single = SetTypeValue::Single(family.set_type);
        let pair = SetTypeValue::Concatenated(Cow::Owned(vec![SetType::Ifname, family.set_type]));
        for table in FAMILIES {
            batch.add(set(
                table,
                family.cluster,
                single.clone(),
                true,
                cluster.clone(),
            ));
            batch.add(set(
                table,
                family.sources,
                pair.clone(),
                false,
                sources.clone(),
            ));
        }
        batch.add(set(
            NfFamily::INet,
            family.gateways,
            single.clone(),
            false,
            gateways,
        ));
        batch.add(set(
            NfFamily::INet,
            family.workloads,
            single.clone(),
            false,
            workloads,
        ));
        for table in FAMILIES {
            batch.add(set(
                table,
                family.bound,
                single.clone(),
                false,
                bound.clone(),
            ));
        }
        for counter in [
            family.counter,
            family.routed_forged,
            family.tunnel_egress,
            family.bridged_forged,
        ] {
            batch.add(named_counter(counter));
        }
    }

    for table in FAMILIES {
        batch.add(chain(table, DENY_CHAIN, None));
        batch.add(rule(table, DENY_CHAIN, vec![log_limit(), log()]));
        batch.add(rule(table, DENY_CHAIN, vec![Statement::Drop(None)]));
    }

    batch.add(chain(NfFamily::INet, FORWARD_CHAIN, Some(NfHook::Forward)));
    batch.add(chain(NfFamily::INet, ROUTED_CHAIN, None));
    batch.add(chain(
        NfFamily::Bridge,
        PREROUTING_CHAIN,
        Some(NfHook::Prerouting),
    ));
    if !rules.cluster_cidrs.is_empty() {
        batch.add(rule(NfFamily::INet, ROUTED_CHAIN, not_on_a_bridge()));
        for family in [&V4, &V6] {
            for from_port in [true, false] {
                batch.add(rule(
                    NfFamily::INet,
                    ROUTED_CHAIN,
                    routed_forged(family, from_port),
                ));
            }
        }
        for family in [&V4, &V6] {
            batch.add(rule(NfFamily::INet, FORWARD_CHAIN, tunnel_egress(family)));
        }
        batch.add(rule(
            NfFamily::INet,
            FORWARD_CHAIN,
            vec![Statement::Jump(JumpTarget {
                target: ROUTED_CHAIN.into(),
            })],
        ));
        for family in [&V4, &V6] {
            batch.add(rule(NfFamily::INet, FORWARD_CHAIN, deny_statements(family)));
        }
        for family in [&V4, &V6] {
            for from_port in [true, false] {
                batch.add(rule(
                    NfFamily::Bridge,
                    PREROUTING_CHAIN,
                    bridged_forged(family, from_port),
                ));
            }
        }
    }
    batch.to_nftables()
}

/// Deletes both [`TABLE`]s, and succeeds when they do not exist (the
/// leading `add` makes the `delete` valid either way). Nothing else is
/// touched.
pub fn uninstall_batch() -> Nftables<'static> {
    let mut batch = Batch::new();
    for family in FAMILIES {
        batch.add(table(family));
        batch.delete(table(family));
    }
    batch.to_nftables()
}

fn table(family: NfFamily) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family,
        name: TABLE.into(),
        handle: None,
    })
}

/// A base chain when `hook` is set (policy accept: we only ever drop), a
/// regular chain otherwise.
fn chain(family: NfFamily, name: &'static str, hook: Option<NfHook>) -> NfListObject<'static> {
    let base = hook.is_some();
    let priority = match family {
        NfFamily::Bridge => BRIDGE_PRIORITY,
        _ => FORWARD_PRIORITY,
    };
    NfListObject::Chain(Chain {
        family,
        table: TABLE.into(),
        name: name.into(),
        newname: None,
        handle: None,
        _type: base.then_some(NfChainType::Filter),
        hook,
        prio: base.then_some(priority),
        dev: None,
        policy: base.then_some(NfChainPolicy::Accept),
    })
}

fn set(
    family: NfFamily,
    name: &'static str,
    set_type: SetTypeValue<'static>,
    interval: bool,
    elements: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family,
        table: TABLE.into(),
        name: name.into(),
        handle: None,
        set_type,
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

fn named_counter(counter: DenyCounter) -> NfListObject<'static> {
    NfListObject::Counter(Counter {
        family: counter.table_family(),
        table: TABLE.into(),
        name: counter.name().into(),
        handle: None,
        packets: None,
        bytes: None,
    })
}

fn rule(
    family: NfFamily,
    chain: &'static str,
    statements: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family,
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
    let mut statements = vec![
        lookup(
            payload(family.protocol, "saddr"),
            Operator::EQ,
            family.workloads,
        ),
        lookup(
            payload(family.protocol, "saddr"),
            Operator::NEQ,
            family.gateways,
        ),
        lookup(
            payload(family.protocol, "daddr"),
            Operator::NEQ,
            family.cluster,
        ),
    ];
    statements.extend(count_and_deny(family.counter));
    statements
}

/// `meta iifkind "bridge" return`: what a bridge forwards, the bridge
/// table has judged port by port (module doc).
fn not_on_a_bridge() -> Vec<Statement<'static>> {
    vec![
        compare(
            meta(MetaKey::Iifkind),
            Operator::EQ,
            Expression::String(BRIDGE_KIND.into()),
        ),
        Statement::Return(None),
    ]
}

/// `meta iifkind { <tunnel kinds> } <ip> daddr != @cluster counter name
/// <counter> jump deny`: decapsulated by one of the node's tunnel devices
/// and leaving the cluster (check 3 of the module doc). On a device
/// without a kind (a physical NIC) `meta iifkind` ends the rule
/// unmatched, so what the uplink forwards is never taken for a tunnel's.
fn tunnel_egress(family: &Family) -> Vec<Statement<'static>> {
    let kinds = TUNNEL_KINDS
        .iter()
        .map(|kind| SetItem::Element(Expression::String((*kind).into())))
        .collect();
    vec![
        compare(
            meta(MetaKey::Iifkind),
            Operator::EQ,
            Expression::Named(NamedExpression::Set(kinds)),
        ),
        lookup(
            payload(family.protocol, "daddr"),
            Operator::NEQ,
            family.cluster,
        ),
    ]
    .into_iter()
    .chain(count_and_deny(family.tunnel_egress))
    .collect()
}

/// A forwarded packet to a destination outside the cluster with a source
/// its input interface does not vouch for: from a routed workload port
/// (`from_port`) with a source that is not its workload's, or with a
/// local workload's address from any interface that is not that
/// workload's port.
///
/// `iifname @ports <ip> daddr != @cluster iifname . <ip> saddr != @sources
/// counter name <counter> jump deny`, or `<ip> saddr @bound …` in place of
/// `iifname @ports`.
fn routed_forged(family: &Family, from_port: bool) -> Vec<Statement<'static>> {
    let first = if from_port {
        lookup(meta(MetaKey::Iifname), Operator::EQ, PORTS)
    } else {
        lookup(
            payload(family.protocol, "saddr"),
            Operator::EQ,
            family.bound,
        )
    };
    vec![
        first,
        lookup(
            payload(family.protocol, "daddr"),
            Operator::NEQ,
            family.cluster,
        ),
        lookup(port_and_source(family), Operator::NEQ, family.sources),
    ]
    .into_iter()
    .chain(count_and_deny(family.routed_forged))
    .collect()
}

/// A frame entering a bridge port with a forged source, to a destination
/// outside the cluster: from a workload's port (`from_port`) with a source
/// that is not that workload's, or from any port with a workload's
/// address that is not its own port.
fn bridged_forged(family: &Family, from_port: bool) -> Vec<Statement<'static>> {
    let mut statements = Vec::new();
    if from_port {
        statements.push(lookup(meta(MetaKey::Iifname), Operator::EQ, PORTS));
    }
    statements.push(compare(
        payload("ether", "type"),
        Operator::EQ,
        Expression::String(family.protocol.into()),
    ));
    for kind in ["broadcast", "multicast"] {
        statements.push(compare(
            meta(MetaKey::Pkttype),
            Operator::NEQ,
            Expression::String(kind.into()),
        ));
    }
    if let Some((net, len)) = family.unrouted_sources {
        statements.push(compare(
            payload(family.protocol, "saddr"),
            Operator::NEQ,
            prefix(net, len),
        ));
    }
    if !from_port {
        statements.push(lookup(
            payload(family.protocol, "saddr"),
            Operator::EQ,
            family.bound,
        ));
    }
    statements.push(lookup(
        payload(family.protocol, "daddr"),
        Operator::NEQ,
        family.cluster,
    ));
    statements.push(lookup(
        port_and_source(family),
        Operator::NEQ,
        family.sources,
    ));
    statements.extend(count_and_deny(family.bridged_forged));
    statements
}

/// `counter name <counter> jump deny`: a separate chain, because a
/// `limit` that is over its rate ends the rule it is in, and the drop
/// must not depend on it.
fn count_and_deny(counter: DenyCounter) -> [Statement<'static>; 2] {
    [
        Statement::Counter(stmt::Counter::Named(counter.name().into())),
        Statement::Jump(JumpTarget {
            target: DENY_CHAIN.into(),
        }),
    ]
}

fn port_and_source(family: &Family) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(vec![
        meta(MetaKey::Iifname),
        payload(family.protocol, "saddr"),
    ]))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn lookup(left: Expression<'static>, op: Operator, set: &str) -> Statement<'static> {
    compare(left, op, Expression::String(format!("@{set}").into()))
}

fn compare(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
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

/// Sorted, deduplicated interface names: a pod's sidecar Workload shares
/// its port.
fn port_names(ports: &[WorkloadPort]) -> Vec<Expression<'static>> {
    let unique: BTreeSet<&str> = ports.iter().map(|p| p.interface.as_str()).collect();
    unique
        .into_iter()
        .map(|name| Expression::String(name.to_owned().into()))
        .collect()
}

/// Sorted, deduplicated `interface . address` pairs per family.
fn split_sources(ports: &[WorkloadPort]) -> (Vec<Expression<'static>>, Vec<Expression<'static>>) {
    let unique: BTreeSet<(IpAddr, &str)> = ports
        .iter()
        .flat_map(|p| p.addresses.iter().map(|a| (*a, p.interface.as_str())))
        .collect();
    let (v4, v6): (Vec<_>, Vec<_>) = unique.into_iter().partition(|(a, _)| a.is_ipv4());
    let pair = |(addr, name): (IpAddr, &str)| {
        Expression::Named(NamedExpression::Concat(vec![
            Expression::String(name.to_owned().into()),
            address(addr),
        ]))
    };
    (
        v4.into_iter().map(pair).collect(),
        v6.into_iter().map(pair).collect(),
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
            ports: Vec::new(),
        }
    }

    fn port(interface: &str, addresses: &[&str]) -> WorkloadPort {
        WorkloadPort {
            interface: interface.into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
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

    /// The inet table's set `name`.
    fn set_named<'a>(commands: &'a [Value], name: &str) -> &'a Value {
        set_in(commands, "inet", name)
    }

    fn set_in<'a>(commands: &'a [Value], family: &str, name: &str) -> &'a Value {
        added(commands, "set")
            .into_iter()
            .find(|s| s["name"] == name && s["family"] == family)
            .unwrap_or_else(|| panic!("no set {family} {name}"))
    }

    fn rules_of<'a>(commands: &'a [Value], family: &str, chain: &str) -> Vec<&'a Value> {
        added(commands, "rule")
            .into_iter()
            .filter(|r| r["family"] == family && r["chain"] == chain)
            .collect()
    }

    #[test]
    fn the_batch_replaces_both_tables_atomically_and_works_when_they_are_missing() {
        let commands = commands(&rules(&["10.244.0.0/16"], &[], &[]));
        for (i, family) in ["inet", "bridge"].into_iter().enumerate() {
            let table = json!({"table": {"family": family, "name": TABLE}});
            assert_eq!(commands[3 * i], json!({ "add": table }));
            assert_eq!(commands[3 * i + 1], json!({ "delete": table }));
            assert_eq!(commands[3 * i + 2], json!({ "add": table }));
        }
        // Everything else only adds, and only to our tables.
        for command in &commands[6..] {
            let object = command["add"].as_object().expect("an add command");
            let (_, object) = object.iter().next().unwrap();
            assert_eq!(object["table"], TABLE);
            assert!(["inet", "bridge"].contains(&object["family"].as_str().unwrap()));
        }
    }

    #[test]
    fn uninstall_deletes_only_our_tables_and_is_valid_when_they_are_gone() {
        let json = serde_json::to_value(uninstall_batch()).unwrap();
        let inet = json!({"table": {"family": "inet", "name": TABLE}});
        let bridge = json!({"table": {"family": "bridge", "name": TABLE}});
        assert_eq!(
            json,
            json!({"nftables": [{ "add": inet }, { "delete": inet }, { "add": bridge }, { "delete": bridge }]})
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
        let rules = rules_of(&commands, "inet", "deny");
        let forward_rules = rules_of(&commands, "inet", "forward");
        // After the tunnel rules and the jump to the routed chain.
        assert_eq!(forward_rules.len(), 5);
        let forward_rules = &forward_rules[3..];
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

        let deny_rules = rules;
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
        let mut node = rules(&[], &[], &["10.244.2.2"]);
        node.ports = vec![port("veth1", &["10.244.2.2"])];
        let commands = commands(&node);
        let rules = added(&commands, "rule");
        assert!(rules.iter().all(|r| ["forward", "routed", "prerouting"]
            .iter()
            .all(|c| r["chain"] != *c)));
        // The tables keep their shape: the counters can still be read.
        let mut counters: Vec<_> = added(&commands, "counter")
            .into_iter()
            .map(|c| (c["family"].as_str().unwrap(), c["name"].as_str().unwrap()))
            .collect();
        counters.sort();
        let mut expected: Vec<_> = DenyCounter::ALL
            .iter()
            .map(|c| {
                (
                    super::super::counters::family_name(c.table_family()),
                    c.name(),
                )
            })
            .collect();
        expected.sort();
        assert_eq!(counters, expected);
    }

    #[test]
    fn ports_become_interface_and_address_pairs_per_family_in_both_tables() {
        let mut node = rules(&["10.244.0.0/16"], &["10.244.1.2"], &["10.244.2.2"]);
        node.ports = vec![
            port("veth2", &["10.244.2.2", "fd00:244:2::2"]),
            port("veth1", &["10.244.1.2"]),
            // A sidecar Workload in the same pod: the same port, no addresses.
            port("veth2", &[]),
        ];
        let commands = commands(&node);
        for family in ["inet", "bridge"] {
            let ports = set_in(&commands, family, "ports");
            assert_eq!(ports["type"], "ifname");
            assert_eq!(ports["elem"], json!(["veth1", "veth2"]));
            let v4 = set_in(&commands, family, "sources_v4");
            assert_eq!(v4["type"], json!(["ifname", "ipv4_addr"]));
            assert_eq!(
                v4["elem"],
                json!([{"concat": ["veth1", "10.244.1.2"]}, {"concat": ["veth2", "10.244.2.2"]}])
            );
            let v6 = set_in(&commands, family, "sources_v6");
            assert_eq!(v6["type"], json!(["ifname", "ipv6_addr"]));
            assert_eq!(v6["elem"], json!([{"concat": ["veth2", "fd00:244:2::2"]}]));
        }
        for family in ["inet", "bridge"] {
            assert_eq!(
                set_in(&commands, family, "bound_v4")["elem"],
                json!(["10.244.1.2", "10.244.2.2"])
            );
            assert_eq!(
                set_in(&commands, family, "bound_v6")["elem"],
                json!(["fd00:244:2::2"])
            );
        }
    }

    #[test]
    fn a_routed_port_vouches_for_its_sources_and_a_local_address_for_its_port() {
        let commands = commands(&rules(&["10.244.0.0/16"], &[], &[]));
        let forward = rules_of(&commands, "inet", "forward");
        assert_eq!(forward[2]["expr"], json!([{"jump": {"target": "routed"}}]));
        let routed = added(&commands, "chain")
            .into_iter()
            .find(|c| c["name"] == "routed")
            .unwrap();
        assert_eq!(
            *routed,
            json!({"family": "inet", "table": TABLE, "name": "routed"}),
            "a regular chain, reached only from forward"
        );
        let routed = rules_of(&commands, "inet", "routed");
        assert_eq!(routed.len(), 5);
        let leaving_v4 = json!({"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                "right": "@cluster_v4", "op": "!="}});
        let forged_v4 = json!({"match": {"left": {"concat": [{"meta": {"key": "iifname"}},
                                         {"payload": {"protocol": "ip", "field": "saddr"}}]},
                               "right": "@sources_v4", "op": "!="}});
        let deny = [
            json!({"counter": "routed_forged_v4"}),
            json!({"jump": {"target": "deny"}}),
        ];
        // What a bridge forwards, the bridge table judged port by port.
        assert_eq!(
            routed[0]["expr"],
            json!([
                {"match": {"left": {"meta": {"key": "iifkind"}}, "right": "bridge", "op": "=="}},
                {"return": null},
            ])
        );
        // From a workload's port, a source not its own.
        let mut expected = vec![
            json!({"match": {"left": {"meta": {"key": "iifname"}}, "right": "@ports", "op": "=="}}),
            leaving_v4.clone(),
            forged_v4.clone(),
        ];
        expected.extend(deny.clone());
        assert_eq!(routed[1]["expr"], Value::Array(expected));
        // From any other interface, a local workload's address.
        let mut expected = vec![
            json!({"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                             "right": "@bound_v4", "op": "=="}}),
            leaving_v4,
            forged_v4,
        ];
        expected.extend(deny);
        assert_eq!(routed[2]["expr"], Value::Array(expected));
        for (i, first) in [(3, "@ports"), (4, "@bound_v6")] {
            assert_eq!(routed[i]["expr"][0]["match"]["right"], first);
            assert_eq!(routed[i]["expr"][3], json!({"counter": "routed_forged_v6"}));
        }
    }

    #[test]
    fn what_a_tunnel_device_decapsulates_never_leaves_the_cluster_whatever_its_source() {
        let commands = commands(&rules(&["10.244.0.0/16", "fd00:10:244::/48"], &[], &[]));
        let forward = rules_of(&commands, "inet", "forward");
        let kinds = json!({"set": [
            "vxlan", "geneve", "bareudp", "gre", "gretap", "erspan", "ip6gre", "ip6gretap",
            "ip6erspan", "ipip", "sit", "ip6tnl", "wireguard"
        ]});
        // First, before any source is looked at: by the input device's
        // kind and the destination alone.
        for (i, protocol, family) in [(0, "ip", "v4"), (1, "ip6", "v6")] {
            assert_eq!(
                forward[i]["expr"],
                json!([
                    {"match": {"left": {"meta": {"key": "iifkind"}}, "right": kinds, "op": "=="}},
                    {"match": {"left": {"payload": {"protocol": protocol, "field": "daddr"}},
                               "right": format!("@cluster_{family}"), "op": "!="}},
                    {"counter": format!("tunnel_egress_{family}")},
                    {"jump": {"target": "deny"}},
                ])
            );
        }
        // The devices pods and the uplink come from are no tunnels.
        for kind in ["bridge", "veth", "tun", "openvswitch", "dummy"] {
            assert!(!TUNNEL_KINDS.contains(&kind), "{kind}");
        }
    }

    #[test]
    fn a_bridge_port_vouches_for_its_sources_and_a_known_address_for_its_port() {
        let commands = commands(&rules(&["10.244.0.0/16"], &[], &[]));
        let chain = added(&commands, "chain")
            .into_iter()
            .find(|c| c["family"] == "bridge" && c["name"] == "prerouting")
            .unwrap();
        assert_eq!(
            *chain,
            json!({"family": "bridge", "table": TABLE, "name": "prerouting", "type": "filter",
                   "hook": "prerouting", "prio": -200, "policy": "accept"})
        );
        let prerouting = rules_of(&commands, "bridge", "prerouting");
        assert_eq!(prerouting.len(), 4);
        let not_to_everyone = [
            json!({"match": {"left": {"meta": {"key": "pkttype"}}, "right": "broadcast", "op": "!="}}),
            json!({"match": {"left": {"meta": {"key": "pkttype"}}, "right": "multicast", "op": "!="}}),
        ];
        let forged_v4 = json!({"match": {"left": {"concat": [{"meta": {"key": "iifname"}},
                                         {"payload": {"protocol": "ip", "field": "saddr"}}]},
                               "right": "@sources_v4", "op": "!="}});
        let leaving_v4 = json!({"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                "right": "@cluster_v4", "op": "!="}});
        let ether_ip = json!({"match": {"left": {"payload": {"protocol": "ether", "field": "type"}},
                              "right": "ip", "op": "=="}});
        let deny = [
            json!({"counter": "bridged_forged_v4"}),
            json!({"jump": {"target": "deny"}}),
        ];
        // From a workload's port, a source not its own.
        let mut expected = vec![
            json!({"match": {"left": {"meta": {"key": "iifname"}}, "right": "@ports", "op": "=="}}),
            ether_ip.clone(),
        ];
        expected.extend(not_to_everyone.clone());
        expected.extend([leaving_v4.clone(), forged_v4.clone()]);
        expected.extend(deny.clone());
        assert_eq!(prerouting[0]["expr"], Value::Array(expected));
        // From any port, a workload's address not from its own port.
        let mut expected = vec![ether_ip];
        expected.extend(not_to_everyone);
        expected.push(
            json!({"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                       "right": "@bound_v4", "op": "=="}}),
        );
        expected.extend([leaving_v4, forged_v4]);
        expected.extend(deny);
        assert_eq!(prerouting[1]["expr"], Value::Array(expected));
        // IPv6 also leaves link-local sources alone (never forwarded).
        assert_eq!(
            prerouting[2]["expr"][4],
            json!({"match": {"left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                             "right": {"prefix": {"addr": "fe80::", "len": 10}}, "op": "!="}})
        );
        assert_eq!(
            prerouting[3]["expr"][7],
            json!({"counter": "bridged_forged_v6"})
        );
    }

    #[test]
    fn the_same_rules_give_the_same_batch() {
        let a = rules(
            &["10.244.0.0/16", "10.0.0.0/8"],
            &["10.244.1.2"],
            &["10.244.2.2"],
        );
        let mut a = a;
        a.ports = vec![
            port("veth1", &["10.244.1.2"]),
            port("veth2", &["10.244.2.2"]),
        ];
        let mut b = a.clone();
        b.cluster_cidrs.reverse();
        b.ports.reverse();
        assert_eq!(
            serde_json::to_string(&ruleset(&a)).unwrap(),
            serde_json::to_string(&ruleset(&b)).unwrap()
        );
    }
}
