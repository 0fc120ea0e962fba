//! Guards: map entries that no policy object asks for, added by the agent.
//!
//! Two kinds, both keyed by cgroup like workloads:
//!
//! - **Pending** ([`Guard::Pending`]), on a *guarded root* such as the
//!   kubelet's `kubepods` cgroup. The programs walk a socket's ancestors
//!   deepest first and the first workload found decides, so a known pod
//!   below the root decides for itself, and every cgroup below it that is
//!   **not yet** a known workload falls to the root's pending policy. That
//!   is what enforces a new pod from its first packet: the kubelet creates
//!   `pod<uid>` before any container runs in it, and until the agent has
//!   matched it to the Pod object, the pending policy applies.
//!
//!   The pending policy allows **loopback, DNS (UDP and TCP port 53) to
//!   the cluster CIDRs** (the union of the EgressGateways' `clusterCIDRs`;
//!   none when there is no EgressGateway), **and the Kubernetes API
//!   server** (the `default/kubernetes` Service's addresses and its
//!   endpoints, at their ports), and denies everything else with
//!   `Reason::Pending`. The API server is there because a cgroup does not
//!   say whether its pod uses the host's network: until its Pod object is
//!   known, a hostNetwork pod (kube-proxy, a CNI agent) is pending like any
//!   other, and at boot it must reach the API server before the agent can
//!   learn anything (kube-proxy programs the Service address the agent
//!   itself dials). The API server is inside the cluster and authenticates
//!   every caller; the cost is that a pod whose NetworkPolicy denies it can
//!   reach it while pending. Why DNS:
//!   the guarantee is "no pod reaches the internet unless it is the
//!   gateway", and nothing outside the cluster CIDRs is allowed; inside,
//!   the pod's NetworkPolicies are not known yet, so nothing is allowed
//!   but the one flow every policy set allows in practice (the seed policy
//!   does) and whose refusal makes start-up fail in surprising ways
//!   (resolvers that give up or cache the failure). A query to the cluster
//!   DNS discloses nothing outside the cluster that the pod's own policy
//!   would not also let through. Replies on inbound flows stay allowed (as
//!   for every isolated policy), so the kubelet's probes work.
//! - **Exempt** ([`Guard::Exempt`]): the cgroup is unmanaged, whatever a
//!   guarded root above it says (`egress_common::EXEMPT_POLICY`):
//!   hostNetwork pods, whose traffic is the node's (NetworkPolicy does not
//!   apply to them), and the agent's own cgroup, which must reach the API
//!   server before it can know anything.

use std::{fs, io, net::SocketAddr, path::Path};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

// `Guard` is a field of the plan, so it is defined there: the plan must
// not depend on this module, which builds on it.
pub use super::plan::Guard;
use super::{
    plan::{Allow, ClusterScope, Egress, NodeRules, Plan, RuleRef, WorkloadPlan},
    prefix::{Atom, PrefixTable},
    services::{Frontend, FrontendKind},
};
use egress_policy::{
    model::ObjectId,
    ports::{PortRange, Protocol},
};

/// The namespace under which guard entries are named (no Kubernetes
/// namespace can be called this: it is not a DNS label... it is, but the
/// names below carry a `:`, which no object name can).
pub const GUARD_NAMESPACE: &str = "egress-agent";

/// The rule that the pending policy's DNS allowance is reported as.
pub fn pending_rule() -> RuleRef {
    RuleRef {
        policy: ObjectId::new(GUARD_NAMESPACE, "pending:dns").into(),
        index: 0,
    }
}

/// The rule that the pending policy's API server allowance is reported as.
pub fn pending_api_rule() -> RuleRef {
    RuleRef {
        policy: ObjectId::new(GUARD_NAMESPACE, "pending:api-server").into(),
        index: 0,
    }
}

/// Guard entries to add to every plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guards {
    /// Guarded roots (cgroup paths as workloads write them).
    pub pending: Vec<String>,
    /// Exempt cgroups, with a name for status and events.
    pub exempt: Vec<(ObjectId, String)>,
}

impl Guards {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.exempt.is_empty()
    }
}

impl Plan {
    /// The plan with `guards` added as workload entries. A guard whose
    /// cgroup is already a workload's is left out: the workload's own
    /// policy is what the cgroup gets.
    pub fn guarded(self, guards: &Guards) -> Self {
        let api = api_server(&self.services);
        self.guarded_with(guards, &api)
    }

    /// [`Plan::guarded`], with the API server's addresses given rather
    /// than found among the plan's Services (a boot plan has none).
    fn guarded_with(mut self, guards: &Guards, api: &[SocketAddr]) -> Self {
        let taken = |plan: &Plan, cgroup: &str| {
            let norm = |c: &str| c.trim().trim_matches('/').to_owned();
            plan.workloads
                .iter()
                .any(|w| norm(&w.cgroup) == norm(cgroup))
        };
        let dns = pending_table(self.cluster.as_ref().map_or(&[][..], |c| &c.cidrs), api);
        for cgroup in &guards.pending {
            if taken(&self, cgroup) {
                continue;
            }
            self.workloads.push(WorkloadPlan {
                id: ObjectId::new(
                    GUARD_NAMESPACE,
                    format!("pending:{}", cgroup.trim().trim_matches('/')),
                ),
                cgroup: cgroup.clone(),
                addresses: Vec::new(),
                gateway: None,
                proxy_for: Vec::new(),
                capture: None,
                passed_over: None,
                egress: Egress::Isolated {
                    policies: Vec::new(),
                    table: dns.clone(),
                },
                packet_sockets: false,
                guard: Some(Guard::Pending),
            });
        }
        for (id, cgroup) in &guards.exempt {
            if taken(&self, cgroup) {
                continue;
            }
            self.workloads.push(WorkloadPlan {
                id: id.clone(),
                cgroup: cgroup.clone(),
                addresses: Vec::new(),
                gateway: None,
                proxy_for: Vec::new(),
                capture: None,
                passed_over: None,
                egress: Egress::Unrestricted,
                packet_sockets: false,
                guard: Some(Guard::Exempt),
            });
        }
        self
    }
}

/// DNS over UDP and TCP to each cluster CIDR, and TCP to each of the API
/// server's addresses at its port.
fn pending_table(cluster: &[IpNet], api: &[SocketAddr]) -> PrefixTable {
    let dns = cluster.iter().flat_map(|cidr| {
        [Protocol::Udp, Protocol::Tcp].map(|protocol| Atom {
            cidr: *cidr,
            except: Vec::new(),
            allow: Allow {
                rule: pending_rule(),
                protocol: Some(protocol),
                ports: PortRange::single(53),
            },
        })
    });
    let api = api.iter().map(|addr| Atom {
        cidr: IpNet::from(addr.ip()),
        except: Vec::new(),
        allow: Allow {
            rule: pending_api_rule(),
            protocol: Some(Protocol::Tcp),
            ports: PortRange::single(addr.port()),
        },
    });
    PrefixTable::build(&dns.chain(api).collect::<Vec<_>>())
}

/// The `default/kubernetes` Service's ClusterIPs and ready endpoints, each
/// at its port, sorted: what a pod dials to reach the API server, before
/// and after kube-proxy's DNAT (the socket hooks judge the first, the
/// packet hook the second).
fn api_server(services: &[Frontend]) -> Vec<SocketAddr> {
    let id = ObjectId::new("default", "kubernetes");
    let mut addrs: Vec<SocketAddr> = services
        .iter()
        .filter(|f| f.service == id && f.kind == FrontendKind::ClusterIp)
        .flat_map(|f| {
            std::iter::once(SocketAddr::new(f.addr, f.port)).chain(f.backends.iter().copied())
        })
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// What a node needs to enforce the pending policy before any agent runs.
///
/// Pins live in bpffs, which a reboot empties, and the agent is itself a
/// pod that the kubelet starts along with every other pod. So the agent
/// saves this after every apply (`run --boot-state`), and `egress-agent
/// boot-guard`, run by the node before the kubelet, restores from it a
/// plan of guards alone: every pod the kubelet starts is pending from its
/// first packet until the agent has matched it. Only what survives a
/// reboot is kept: cgroup paths, not cgroup ids (which are new), and
/// addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootState {
    /// Guarded roots, relative to the cgroup2 mount.
    pub pending: Vec<String>,
    /// Where the pending policy allows DNS.
    pub cluster_cidrs: Vec<IpNet>,
    /// The API server's Service addresses and endpoints, with ports.
    pub api_server: Vec<SocketAddr>,
}

impl BootState {
    /// What `plan` (one the agent enforces) says a boot needs.
    pub fn of(plan: &Plan) -> Self {
        Self {
            pending: plan
                .workloads
                .iter()
                .filter(|w| w.guard == Some(Guard::Pending))
                .map(|w| w.cgroup.clone())
                .collect(),
            cluster_cidrs: plan
                .cluster
                .as_ref()
                .map_or_else(Vec::new, |c| c.cidrs.clone()),
            api_server: api_server(&plan.services),
        }
    }

    /// The plan a boot enforces: the guards, and nothing else.
    pub fn plan(&self) -> Plan {
        // The API server's endpoints are inside the cluster by definition
        // (an agent's plan has them there already; a hand-written state
        // may not).
        let mut cidrs = self.cluster_cidrs.clone();
        cidrs.extend(self.api_server.iter().map(|a| IpNet::from(a.ip())));
        cidrs.sort_unstable();
        cidrs.dedup();
        let cluster = (!self.cluster_cidrs.is_empty()).then(|| ClusterScope {
            cidrs,
            ..ClusterScope::default()
        });
        Plan {
            workloads: Vec::new(),
            cluster,
            node: NodeRules::default(),
            services: Vec::new(),
        }
        .guarded_with(
            &Guards {
                pending: self.pending.clone(),
                exempt: Vec::new(),
            },
            &self.api_server,
        )
    }

    /// Reads a saved state.
    pub fn read(path: &Path) -> io::Result<Self> {
        let text = fs::read(path)?;
        serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Saves the state so that a crash mid-write leaves the old file or
    /// the new one, never half of one: a new file beside it, synced, then
    /// renamed over it.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        use std::io::Write as _;
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let tmp = path.with_extension("tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{self, decide, Destination, Verdict};
    use egress_policy::Source;

    const GATEWAY: &str = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: EgressGateway\n\
        metadata: {name: gw, namespace: gw}\nspec:\n  selector: {podSelector: {matchLabels: {app: gw}}}\n\
        \x20 clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\n---\n\
        apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
        metadata: {name: gw, namespace: gw, labels: {app: gw}}\nspec: {cgroup: k/gw}\n";

    fn plan() -> Plan {
        let loaded = egress_policy::load_sources(&[Source::new("g.yaml", GATEWAY)]).expect("valid");
        compile::compile(&loaded.model).guarded(&Guards {
            pending: vec!["k/kubepods".into(), "k/gw".into()],
            exempt: vec![(ObjectId::new("kube-system", "proxy"), "k/kubepods/x".into())],
        })
    }

    #[test]
    fn pending_allows_only_cluster_dns_and_loopback() {
        let plan = plan();
        let id = ObjectId::new(GUARD_NAMESPACE, "pending:k/kubepods");
        let at = |ip: &str, port, protocol| Destination {
            ip: ip.parse().expect("ip"),
            port,
            protocol,
        };
        let w = plan.workload(&id).expect("pending entry");
        let verdict = |d| decide(&plan, w, d).verdict;
        assert_eq!(verdict(at("10.96.0.10", 53, Protocol::Udp)), Verdict::Allow);
        assert_eq!(
            verdict(at("10.244.0.10", 53, Protocol::Tcp)),
            Verdict::Allow
        );
        assert_eq!(verdict(at("10.96.0.1", 443, Protocol::Tcp)), Verdict::Deny);
        assert_eq!(
            verdict(at("203.0.113.10", 53, Protocol::Udp)),
            Verdict::Deny
        );
        assert_eq!(
            verdict(at("203.0.113.10", 443, Protocol::Tcp)),
            Verdict::Deny
        );
        assert_eq!(verdict(at("127.0.0.1", 80, Protocol::Tcp)), Verdict::Allow);
    }

    #[test]
    fn pending_allows_the_api_server_and_a_boot_restores_the_same_policy() {
        const API: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: kubernetes, namespace: default}\n\
            spec: {clusterIP: 10.96.0.1, ports: [{name: https, protocol: TCP, port: 443}]}\n---\n\
            apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
            metadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}\n\
            addressType: IPv4\nendpoints: [{addresses: [192.0.2.10]}]\n\
            ports: [{name: https, protocol: TCP, port: 6443}]\n";
        let loaded = egress_policy::load_sources(&[
            Source::new("g.yaml", GATEWAY),
            Source::new("api.yaml", API),
        ])
        .expect("valid");
        let plan = compile::compile(&loaded.model);
        let plan = plan.guarded(&Guards {
            pending: vec!["k/kubepods".into()],
            exempt: Vec::new(),
        });
        let boot = BootState::of(&plan);
        assert_eq!(boot.pending, ["k/kubepods"]);
        assert_eq!(
            boot.api_server,
            ["10.96.0.1:443", "192.0.2.10:6443"].map(|a| a.parse::<SocketAddr>().expect("addr"))
        );
        let restored = boot.plan();
        let id = ObjectId::new(GUARD_NAMESPACE, "pending:k/kubepods");
        for plan in [&plan, &restored] {
            let w = plan.workload(&id).expect("pending entry");
            let verdict = |ip: &str, port, protocol| {
                decide(
                    plan,
                    w,
                    Destination {
                        ip: ip.parse().expect("ip"),
                        port,
                        protocol,
                    },
                )
                .verdict
            };
            assert_eq!(verdict("10.96.0.1", 443, Protocol::Tcp), Verdict::Allow);
            assert_eq!(verdict("192.0.2.10", 6443, Protocol::Tcp), Verdict::Allow);
            assert_eq!(verdict("192.0.2.10", 22, Protocol::Tcp), Verdict::Deny);
            assert_eq!(verdict("10.96.0.10", 53, Protocol::Udp), Verdict::Allow);
            assert_eq!(verdict("203.0.113.10", 443, Protocol::Tcp), Verdict::Deny);
        }
        assert_eq!(restored.workloads.len(), 1, "a boot plan is guards alone");
    }

    #[test]
    fn a_boot_state_survives_its_file() {
        let dir = std::env::temp_dir().join(format!("boot-state-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("boot.json");
        let state = BootState {
            pending: vec!["kubepods".into()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
            api_server: vec!["[fd00::1]:6443".parse().expect("addr")],
        };
        state.write(&path).expect("write");
        assert_eq!(BootState::read(&path).expect("read"), state);
        fs::write(&path, "{\"pending\": 3}").expect("write");
        let err = BootState::read(&path).expect_err("malformed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_workload_cgroup_is_never_also_a_guard() {
        let plan = plan();
        let on_gw: Vec<_> = plan
            .workloads
            .iter()
            .filter(|w| w.cgroup == "k/gw")
            .collect();
        assert_eq!(on_gw.len(), 1);
        assert_eq!(on_gw[0].guard, None);
        let exempt = plan
            .workload(&ObjectId::new("kube-system", "proxy"))
            .expect("exempt entry");
        assert_eq!(exempt.guard, Some(Guard::Exempt));
    }
}
