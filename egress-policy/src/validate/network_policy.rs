//! `networking.k8s.io/v1 NetworkPolicy`, validated as the Kubernetes 1.20
//! API server validates it: egress rules become the model's rules, ingress
//! rules are checked and dropped.

use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicy as K8sNetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer,
        NetworkPolicyPort,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    fields::{canonical_net, is_port_name, port_name_error},
    Builder, Ctx,
};
use crate::{
    apimachinery::go_except_is_subset,
    diagnostic::FieldPath,
    model::{EgressRule, IpBlock, NamespaceScope, NetworkPolicy, ObjectId, Peer, WorkloadSelector},
    ports::{PortMatch, PortRange, PortSpec},
};

impl Builder {
    pub(super) fn network_policy(&mut self, ctx: &mut Ctx<'_, '_>, np: K8sNetworkPolicy) {
        let meta = &np.metadata;
        let Some(id) = self.identify(ctx, meta.name.as_ref(), meta.namespace.as_ref(), true) else {
            return;
        };
        self.metadata(ctx, meta);
        let spec_path = FieldPath::of(&["spec"]);
        // The API server accepts a NetworkPolicy without spec (or with
        // `spec: null`) as the empty spec: every pod, Ingress only.
        let spec = np.spec.unwrap_or_else(|| {
            self.diags.push(ctx.warning(
                spec_path.clone(),
                "no spec: Kubernetes reads it as an Ingress-only policy for every pod; it has no egress effect",
            ));
            Default::default()
        });
        let pod_selector = self
            .selector(
                ctx,
                spec.pod_selector.as_ref(),
                spec_path.key("podSelector"),
            )
            .unwrap_or_default();
        let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let affects_egress = match &spec.policy_types {
            // Kubernetes 1.20 refuses more than two entries (duplicates
            // within two are accepted).
            Some(types) if types.len() > 2 => {
                self.diags.push(ctx.error(
                    spec_path.key("policyTypes"),
                    format!(
                        "may not specify more than two policyTypes ({} given)",
                        types.len()
                    ),
                ));
                false
            }
            // Kubernetes defaults an empty list exactly like a missing one.
            Some(types) if !types.is_empty() => {
                for (i, t) in types.iter().enumerate() {
                    if t != "Ingress" && t != "Egress" {
                        self.diags.push(ctx.error(
                            spec_path.key("policyTypes").index(i),
                            format!("unknown policy type {t:?} (expected Ingress or Egress)"),
                        ));
                    }
                }
                types.iter().any(|t| t == "Egress")
            }
            // Kubernetes' default: Egress only when the policy has egress rules.
            _ => has_egress_rules,
        };
        if !affects_egress && has_egress_rules {
            self.diags.push(ctx.warning(
                spec_path.key("policyTypes"),
                "egress rules are ignored: policyTypes does not include Egress",
            ));
        }
        let mut egress = Vec::new();
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            let rule_path = spec_path.key("egress").index(i);
            let mut to = Vec::new();
            for (j, peer) in rule.to.iter().flatten().enumerate() {
                if let Some(peer) = self.peer(ctx, &id, peer, rule_path.key("to").index(j)) {
                    to.push(peer);
                }
            }
            let mut ports = Vec::new();
            for (j, port) in rule.ports.iter().flatten().enumerate() {
                if let Some(port) = self.port(ctx, port, rule_path.key("ports").index(j)) {
                    ports.push(port);
                }
            }
            egress.push(EgressRule { to, ports });
        }
        self.ingress(ctx, &id, spec.ingress.as_deref(), spec_path.key("ingress"));
        self.selector_uses.push(ctx.selector_use(
            spec_path.key("podSelector"),
            "podSelector selects no workload: the policy applies to nothing",
            WorkloadSelector {
                namespaces: NamespaceScope::Own(id.namespace.clone()),
                pods: pod_selector.clone(),
            },
        ));
        if !self.keep {
            return;
        }
        self.model.network_policies.push(NetworkPolicy {
            id,
            pod_selector,
            affects_egress,
            egress,
            origin: ctx.origin(),
        });
    }

    /// Ingress rules are not enforced (the agent controls egress), but the
    /// API server validates them as egress rules, so must the agent.
    fn ingress(
        &mut self,
        ctx: &Ctx<'_, '_>,
        policy: &ObjectId,
        rules: Option<&[NetworkPolicyIngressRule]>,
        path: FieldPath,
    ) {
        // Peers report selectors that match nothing; that is noise for
        // rules that are never enforced, so those reports are dropped.
        let uses = self.selector_uses.len();
        for (i, rule) in rules.into_iter().flatten().enumerate() {
            let rule_path = path.index(i);
            for (j, peer) in rule.from.iter().flatten().enumerate() {
                self.peer(ctx, policy, peer, rule_path.key("from").index(j));
            }
            for (j, port) in rule.ports.iter().flatten().enumerate() {
                self.port(ctx, port, rule_path.key("ports").index(j));
            }
        }
        self.selector_uses.truncate(uses);
    }

    fn peer(
        &mut self,
        ctx: &Ctx<'_, '_>,
        policy: &ObjectId,
        peer: &NetworkPolicyPeer,
        path: FieldPath,
    ) -> Option<Peer> {
        let has_selector = peer.namespace_selector.is_some() || peer.pod_selector.is_some();
        match (&peer.ip_block, has_selector) {
            (Some(_), true) => {
                self.diags.push(ctx.error(
                    path,
                    "ipBlock cannot be combined with namespaceSelector or podSelector in one peer",
                ));
                None
            }
            (None, false) => {
                self.diags.push(ctx.error(
                    path,
                    "a peer needs one of ipBlock, namespaceSelector or podSelector",
                ));
                None
            }
            (Some(block), false) => {
                let block_path = path.key("ipBlock");
                let go_cidr = self.k8s_cidr(ctx, &block.cidr, block_path.key("cidr"))?;
                let cidr = canonical_net(go_cidr.net.trunc());
                let mut except = Vec::new();
                for (k, e) in block.except.iter().flatten().enumerate() {
                    let e_path = block_path.key("except").index(k);
                    let Some(go_hole) = self.k8s_cidr(ctx, e, e_path.clone()) else {
                        continue;
                    };
                    // Containment as Go decides it on the text's families
                    // and prefix lengths; the hole is then enforced in its
                    // canonical form.
                    if go_except_is_subset(&go_cidr, &go_hole) {
                        except.push(canonical_net(go_hole.net.trunc()));
                    } else {
                        self.diags.push(ctx.error(
                            e_path,
                            format!("except {e} is not a strict subset of cidr {}", block.cidr),
                        ));
                    }
                }
                Some(Peer::IpBlock(IpBlock { cidr, except }))
            }
            (None, true) => {
                let namespaces = match &peer.namespace_selector {
                    Some(sel) => NamespaceScope::Selected(self.selector(
                        ctx,
                        Some(sel),
                        path.key("namespaceSelector"),
                    )?),
                    None => NamespaceScope::Own(policy.namespace.clone()),
                };
                let pods =
                    self.selector(ctx, peer.pod_selector.as_ref(), path.key("podSelector"))?;
                let selector = WorkloadSelector { namespaces, pods };
                self.selector_uses.push(ctx.selector_use(
                    path,
                    "peer matches no workload: this peer allows nothing yet",
                    selector.clone(),
                ));
                Some(Peer::Workloads(selector))
            }
        }
    }

    fn port(
        &mut self,
        ctx: &Ctx<'_, '_>,
        port: &NetworkPolicyPort,
        path: FieldPath,
    ) -> Option<PortSpec> {
        let protocol = self.protocol(ctx, port.protocol.as_deref(), path.key("protocol"));
        // Kubernetes 1.20 has no endPort: its API server silently drops the
        // field, so it accepts any value. A valid range is enforced (as
        // Kubernetes ≥ 1.21 does); one it could not honour is ignored with
        // a warning, leaving what the 1.20 API server stores: `port` alone.
        let end_port = match (&port.port, port.end_port) {
            (_, None) => None,
            (Some(IntOrString::Int(start)), Some(end))
                if PortRange::port(i64::from(*start))
                    .and_then(|s| {
                        PortRange::port(i64::from(end)).and_then(|e| PortRange::new(s, e))
                    })
                    .is_ok() =>
            {
                Some(end)
            }
            (start, Some(end)) => {
                let why = match start {
                    None => "there is no port".to_owned(),
                    Some(IntOrString::String(name)) => format!("port {name:?} is named"),
                    Some(IntOrString::Int(start)) => {
                        format!("it is not a port from {start} to 65535")
                    }
                };
                self.diags.push(ctx.warning(
                    path.key("endPort"),
                    format!(
                        "endPort {end} is ignored ({why}); Kubernetes 1.20 has no endPort and \
                         drops it, so only `port` applies"
                    ),
                ));
                None
            }
        };
        let matched = match (&port.port, end_port) {
            (None, _) => Some(PortMatch::Range(PortRange::ALL)),
            (Some(IntOrString::String(name)), _) => {
                if let Ok(n) = name.parse::<i64>() {
                    // A quoted number: Kubernetes treats "80" as a name, which
                    // can never match; refusing it is kinder than ignoring it.
                    self.diags.push(ctx.error(
                        path.key("port"),
                        format!("port {name:?} is a string; write it as the number {n}"),
                    ));
                    None
                } else if !is_port_name(name) {
                    self.diags
                        .push(ctx.error(path.key("port"), port_name_error(name)));
                    None
                } else {
                    Some(PortMatch::Named(name.clone()))
                }
            }
            (Some(IntOrString::Int(start)), end) => {
                let start = PortRange::port(i64::from(*start))
                    .map_err(|e| self.diags.push(ctx.error(path.key("port"), e.to_string())))
                    .ok()?;
                let end = match end {
                    None => start,
                    Some(e) => PortRange::port(i64::from(e))
                        .map_err(|err| {
                            self.diags
                                .push(ctx.error(path.key("endPort"), err.to_string()))
                        })
                        .ok()?,
                };
                PortRange::new(start, end)
                    .map_err(|e| {
                        self.diags
                            .push(ctx.error(path.key("endPort"), e.to_string()))
                    })
                    .ok()
                    .map(PortMatch::Range)
            }
        };
        Some(PortSpec {
            protocol: protocol?,
            port: matched?,
        })
    }
}
