//! Compiler: validated [`Model`] → [`Plan`], a pure function.
//!
//! The plan holds exactly what the data plane is programmed with (prefix
//! tables, port ranges, capture rules, node rules), and [`decide()`] answers
//! questions from the plan alone. So `explain`, the unit tests and the kernel
//! all read the same compiled data: a compiler bug shows up in `explain`
//! rather than only on the wire.

pub mod capture;
pub mod decide;
pub mod guard;
pub mod plan;
pub mod prefix;
pub mod services;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

pub use decide::{decide, Decision, Destination, Reason, Verdict};
pub use guard::{Guard, Guards};
pub use plan::{
    Allow, Capture, ClusterScope, Egress, GatewayRole, NodeRules, PassedOver, Plan, RuleRef,
    ScopePort, WorkloadPlan, WorkloadPort,
};
use prefix::{Atom, HostPort, PrefixTable};

use egress_policy::{
    model::{EgressRule, Model, Peer, Workload},
    ports::{PortMatch, PortRange, PortSpec},
};

/// Compiles the whole model.
pub fn compile(model: &Model) -> Plan {
    let cluster = (!model.gateways.is_empty()).then(|| {
        let mut cidrs: Vec<IpNet> = model
            .gateways
            .iter()
            .flat_map(|g| g.cluster_cidrs.iter().copied())
            .chain(
                services::in_cluster_addresses(model)
                    .into_iter()
                    .map(IpNet::from),
            )
            .collect();
        cidrs.sort();
        cidrs.dedup();
        ClusterScope {
            cidrs: IpNet::aggregate(&cidrs),
            outside_ports: Vec::new(),
            inside_ports: Vec::new(),
        }
    });
    // Workloads elsewhere (no cgroup) are peers only: selectors see them
    // through the model, the data plane never does.
    let mut egress = EgressCache::default();
    let workloads: Vec<WorkloadPlan> = model
        .workloads
        .iter()
        .filter(|w| w.cgroup.is_some())
        .map(|w| workload(model, w, &mut egress))
        .collect();
    let node = NodeRules {
        cluster_cidrs: cluster
            .as_ref()
            .map(|c| c.cidrs.clone())
            .unwrap_or_default(),
        gateway_addresses: workloads
            .iter()
            .filter(|w| w.gateway.is_some())
            .flat_map(|w| w.addresses.iter().copied())
            .collect(),
        workload_addresses: workloads
            .iter()
            .filter(|w| w.gateway.is_none())
            .flat_map(|w| w.addresses.iter().copied())
            .collect(),
        ports: Vec::new(),
    };
    let plan = Plan {
        workloads,
        cluster,
        node,
        services: services::frontends(model),
    };
    judge_services(plan)
}

/// Gives every isolated workload's table an entry per Service address and
/// a host port per NodePort, judged by the backends, and cuts Service
/// addresses and NodePorts that lead outside out of the cluster scope (see
/// [`services`]). The backends are judged against the plan as it was
/// before: by pod and external addresses, which these entries do not
/// touch.
fn judge_services(mut plan: Plan) -> Plan {
    if plan.services.is_empty() {
        return plan;
    }
    let by_address = services::by_address(&plan.services);
    let node_ports = services::node_ports(&plan.services);
    let mut tables = Vec::new();
    for (i, w) in plan.workloads.iter().enumerate() {
        let Egress::Isolated { table, .. } = &w.egress else {
            continue;
        };
        let mut overrides = BTreeMap::new();
        for (addr, frontends) in &by_address {
            let allows = frontends
                .iter()
                .filter_map(|f| {
                    let rule = decide::backends_allowed(&plan, w, f)?;
                    Some(Allow {
                        rule,
                        protocol: Some(f.protocol),
                        ports: PortRange::single(f.port),
                    })
                })
                .collect();
            overrides.insert(IpNet::from(*addr), allows);
        }
        let host_ports = node_ports
            .iter()
            .map(|(addr, frontends)| {
                let ports = frontends
                    .iter()
                    .map(|f| HostPort {
                        protocol: f.protocol,
                        port: f.port,
                        rule: decide::backends_allowed(&plan, w, f),
                    })
                    .collect();
                (*addr, ports)
            })
            .collect();
        let table = table
            .clone()
            .with_overrides(overrides)
            .with_host_ports(host_ports);
        tables.push((i, table));
    }
    for (i, new) in tables {
        if let Egress::Isolated { table, .. } = &mut plan.workloads[i].egress {
            *table = new;
        }
    }
    if let Some(cluster) = &plan.cluster {
        let leads_outside =
            |f: &&services::Frontend| f.backends.iter().any(|b| !cluster.contains(b.ip()));
        let outside: BTreeSet<IpAddr> = plan
            .services
            .iter()
            .filter(|f| f.owns_address())
            .filter(leads_outside)
            .map(|f| f.addr)
            .collect();
        let cidrs = carve(&cluster.cidrs, &outside);
        let carved = ClusterScope {
            cidrs,
            ..ClusterScope::default()
        };
        let port = |f: &services::Frontend| ScopePort {
            addr: f.addr.to_canonical(),
            protocol: f.protocol,
            port: f.port,
        };
        // Only where the node address is still inside: an address that is
        // outside as a whole needs no port of it cut out.
        let mut outside_ports: Vec<ScopePort> = plan
            .services
            .iter()
            .filter(|f| !f.owns_address())
            .filter(leads_outside)
            .filter(|f| carved.contains(f.addr))
            .map(port)
            .collect();
        // An external or load balancer IP is outside the CIDRs, but
        // kube-proxy sends its Service ports to the backends: inside when
        // they all are. Its other ports are not the Service's (whoever
        // owns that address on the internet answers them), so they stay
        // outside.
        let mut inside_ports: Vec<ScopePort> = plan
            .services
            .iter()
            .filter(|f| f.owns_address() && !carved.contains(f.addr))
            .filter(|f| !f.backends.is_empty() && !leads_outside(f))
            .map(port)
            .collect();
        for ports in [&mut outside_ports, &mut inside_ports] {
            ports.sort();
            ports.dedup();
        }
        plan.cluster = Some(ClusterScope {
            outside_ports,
            inside_ports,
            ..carved
        });
    }
    plan
}

/// `nets` less the host routes of `holes`, as prefixes (each hole splits
/// the prefix around it into at most one prefix per bit).
fn carve(nets: &[IpNet], holes: &BTreeSet<IpAddr>) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = nets.to_vec();
    for &hole in holes {
        let host = IpNet::from(hole);
        let mut next = Vec::with_capacity(out.len());
        for net in out {
            if !net.contains(&hole) {
                next.push(net);
                continue;
            }
            // Walk down from `net` to the hole, keeping the sibling half
            // at every step.
            let mut current = net;
            while current.prefix_len() < host.prefix_len() {
                let Some(mut halves) = current.subnets(current.prefix_len() + 1).ok() else {
                    break;
                };
                let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
                    break;
                };
                let (keep, into) = if a.contains(&hole) { (b, a) } else { (a, b) };
                next.push(keep);
                current = into;
            }
        }
        out = next;
    }
    out.sort();
    out
}

/// Egress tables already built in this compile, by the NetworkPolicies
/// that select the workload (indices into `model.network_policies`).
/// A table depends on the workload only through which policies select it
/// (peers are resolved against the model, never against the source), so
/// the replicas of a Deployment share one build: the cost of a compile
/// grows with the distinct policy sets, not with the pods (at 100k CIDRs
/// a second pod under the same policy cost a second full build).
type EgressCache = std::collections::HashMap<Vec<usize>, Egress>;

fn workload(model: &Model, w: &Workload, cache: &mut EgressCache) -> WorkloadPlan {
    let gateway = model
        .gateways
        .iter()
        .find(|g| model.selects(&g.selector, w))
        .map(|g| GatewayRole {
            gateway: g.id.clone(),
            allowed_hosts: g.allowed_hosts.clone(),
        });
    let proxy_for: Vec<_> = model
        .redirects
        .iter()
        .filter(|r| {
            r.proxy
                .selector
                .as_ref()
                .is_some_and(|s| model.selects(s, w))
        })
        .map(|r| r.id.clone())
        .collect();
    // The proxy's own connections are never captured, whichever Redirect
    // they would otherwise fall under: that is what prevents loops.
    let selected = || {
        model
            .redirects
            .iter()
            .filter(|r| model.selects(&r.capture, w))
    };
    let capture = if proxy_for.is_empty() {
        selected()
            .find(|r| r.captures_workload(w))
            .map(|r| Capture {
                redirect: r.id.clone(),
                proxy: SocketAddr::new(r.proxy.address, r.proxy.port),
                rules: w.capture_overrides.apply(&r.rules),
                dns_port: r.dns_port,
            })
    } else {
        None
    };
    let passed_over = match (&capture, proxy_for.is_empty()) {
        (None, true) => selected().next().map(|r| PassedOver {
            redirect: r.id.clone(),
            why: if !w.interception.captures() {
                "sidecar.istio.io/interceptionMode is NONE"
            } else {
                "no sidecar: capture is Sidecar, and the workload has neither the sidecar \
                 container nor sidecar.istio.io/status"
            },
        }),
        _ => None,
    };
    WorkloadPlan {
        id: w.id.clone(),
        cgroup: w.cgroup.clone().unwrap_or_default(),
        addresses: w.addresses.clone(),
        gateway,
        proxy_for,
        capture,
        passed_over,
        egress: egress(model, w, cache),
        packet_sockets: w
            .annotations
            .get(plan::PACKET_SOCKETS_ANNOTATION)
            .is_some_and(|v| v == "allow"),
        guard: None,
    }
}

fn egress(model: &Model, w: &Workload, cache: &mut EgressCache) -> Egress {
    let selected: Vec<usize> = model
        .network_policies
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.affects_egress
                && p.id.namespace == w.id.namespace
                && p.pod_selector.matches(&w.labels)
        })
        .map(|(i, _)| i)
        .collect();
    if selected.is_empty() {
        return Egress::Unrestricted;
    }
    cache
        .entry(selected)
        .or_insert_with_key(|selected| build_egress(model, selected))
        .clone()
}

/// The egress table of a workload selected by exactly these policies.
fn build_egress(model: &Model, selected: &[usize]) -> Egress {
    let policies: Vec<_> = selected
        .iter()
        .map(|i| &model.network_policies[*i])
        .collect();
    let mut atoms = Vec::new();
    for policy in &policies {
        for (index, rule) in policy.egress.iter().enumerate() {
            let rule_ref = RuleRef {
                policy: std::sync::Arc::new(policy.id.clone()),
                index,
            };
            rule_atoms(model, rule, &rule_ref, &mut atoms);
        }
    }
    Egress::Isolated {
        policies: policies.iter().map(|p| p.id.clone()).collect(),
        table: PrefixTable::build(&atoms),
    }
}

/// Expands one rule into (destination block, protocol, port range) atoms.
/// Named ports resolve per destination workload, so they become host-route
/// atoms for each workload that declares the name.
fn rule_atoms(model: &Model, rule: &EgressRule, rule_ref: &RuleRef, atoms: &mut Vec<Atom>) {
    let all_ports = [PortSpec {
        protocol: egress_policy::ports::Protocol::Tcp,
        port: PortMatch::Range(PortRange::ALL),
    }];
    let any_port = rule.ports.is_empty();
    let ports: &[PortSpec] = if any_port { &all_ports } else { &rule.ports };
    let everywhere = [
        Peer::IpBlock(egress_policy::model::IpBlock {
            cidr: IpNet::V4(ipnet::Ipv4Net::default()),
            except: Vec::new(),
        }),
        Peer::IpBlock(egress_policy::model::IpBlock {
            cidr: IpNet::V6(ipnet::Ipv6Net::default()),
            except: Vec::new(),
        }),
    ];
    let peers: &[Peer] = if rule.to.is_empty() {
        &everywhere
    } else {
        &rule.to
    };

    for peer in peers {
        for port in ports {
            let protocol = (!any_port).then_some(port.protocol);
            let allow = |ports| Allow {
                rule: rule_ref.clone(),
                protocol,
                ports,
            };
            match (&port.port, peer) {
                (PortMatch::Range(range), Peer::IpBlock(block)) => atoms.push(Atom {
                    cidr: block.cidr,
                    except: block.except.clone(),
                    allow: allow(*range),
                }),
                (PortMatch::Range(range), Peer::Workloads(sel)) => {
                    for w in model.select(sel) {
                        for addr in &w.addresses {
                            atoms.push(host_atom(*addr, allow(*range)));
                        }
                    }
                }
                (PortMatch::Named(name), peer) => {
                    for w in &model.workloads {
                        let Some(named) = w
                            .ports
                            .iter()
                            .find(|p| &p.name == name && p.protocol == port.protocol)
                        else {
                            continue;
                        };
                        for addr in &w.addresses {
                            let in_peer = match peer {
                                Peer::IpBlock(block) => block.contains(*addr),
                                Peer::Workloads(sel) => model.selects(sel, w),
                            };
                            if in_peer {
                                atoms.push(host_atom(*addr, allow(PortRange::single(named.port))));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn host_atom(addr: IpAddr, allow: Allow) -> Atom {
    Atom {
        cidr: IpNet::from(addr),
        except: Vec::new(),
        allow,
    }
}
