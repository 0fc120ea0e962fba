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
//!   The pending policy allows **loopback, and DNS (UDP and TCP port 53)
//!   to the cluster CIDRs** (the union of the EgressGateways'
//!   `clusterCIDRs`; loopback only when there is no EgressGateway), and
//!   denies everything else with `Reason::Pending`. Why exactly that:
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

use ipnet::IpNet;

// `Guard` is a field of the plan, so it is defined there: the plan must
// not depend on this module, which builds on it.
pub use super::plan::Guard;
use super::{
    plan::{Allow, Egress, Plan, RuleRef, WorkloadPlan},
    prefix::{Atom, PrefixTable},
};
use crate::policy::{
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
        policy: ObjectId::new(GUARD_NAMESPACE, "pending:dns"),
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
    pub fn guarded(mut self, guards: &Guards) -> Self {
        let taken = |plan: &Plan, cgroup: &str| {
            let norm = |c: &str| c.trim().trim_matches('/').to_owned();
            plan.workloads
                .iter()
                .any(|w| norm(&w.cgroup) == norm(cgroup))
        };
        let dns = pending_table(self.cluster.as_ref().map_or(&[][..], |c| &c.cidrs));
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
                egress: Egress::Unrestricted,
                packet_sockets: false,
                guard: Some(Guard::Exempt),
            });
        }
        self
    }
}

/// DNS over UDP and TCP to each cluster CIDR.
fn pending_table(cluster: &[IpNet]) -> PrefixTable {
    let atoms: Vec<Atom> = cluster
        .iter()
        .flat_map(|cidr| {
            [Protocol::Udp, Protocol::Tcp].map(|protocol| Atom {
                cidr: *cidr,
                except: Vec::new(),
                allow: Allow {
                    rule: pending_rule(),
                    protocol: Some(protocol),
                    ports: PortRange::single(53),
                },
            })
        })
        .collect();
    PrefixTable::build(&atoms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{self, decide, Destination, Verdict};
    use crate::policy::{self, Source};

    const GATEWAY: &str = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: EgressGateway\n\
        metadata: {name: gw, namespace: gw}\nspec:\n  selector: {podSelector: {matchLabels: {app: gw}}}\n\
        \x20 clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\n---\n\
        apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
        metadata: {name: gw, namespace: gw, labels: {app: gw}}\nspec: {cgroup: k/gw}\n";

    fn plan() -> Plan {
        let loaded = policy::load_sources(&[Source::new("g.yaml", GATEWAY)]).expect("valid");
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
