//! Names for what the kernel reports by number: cgroup ids are workloads,
//! rule ids are NetworkPolicy rules or gateway hosts of the image in force.

use std::collections::BTreeMap;

use egress_common::{Reason, NO_RULE};

use crate::dataplane::MapImage;
use egress_policy::model::ObjectId;

/// The names of one applied image. Rule ids are image indexes, so an event
/// decided by the previous generation just before a reload may be named
/// with the new one's rules; the reason is always right.
#[derive(Clone, Debug, Default)]
pub struct Names {
    workloads: BTreeMap<u64, ObjectId>,
    /// Rule id → (NetworkPolicy, egress index).
    rules: Vec<(ObjectId, usize)>,
    /// Gateway host index → (EgressGateway, host as written).
    hosts: Vec<(ObjectId, String)>,
}

/// What decided, for people and for metric labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decider {
    /// "NetworkPolicy ns/name egress[1]", "gateway exclusivity", ...
    pub description: String,
    /// Bounded label: the policy object ("ns/name"), or the reason's slug
    /// ("gateway-exclusivity", "default-deny") when no object decided.
    pub policy: String,
}

impl Names {
    pub fn from_image(image: &MapImage) -> Self {
        Self {
            workloads: image
                .workloads()
                .iter()
                .map(|w| (w.cgroup_id, w.id.clone()))
                .collect(),
            rules: image
                .rules()
                .iter()
                .map(|r| ((*r.policy).clone(), r.index))
                .collect(),
            hosts: image
                .gateway_hosts()
                .iter()
                .map(|h| (h.gateway.clone(), h.host.clone()))
                .collect(),
        }
    }

    /// Every (cgroup id, workload) of the image.
    pub fn workload_ids(&self) -> impl Iterator<Item = (u64, &ObjectId)> {
        self.workloads.iter().map(|(id, w)| (*id, w))
    }

    pub fn workload(&self, cgroup_id: u64) -> Option<&ObjectId> {
        self.workloads.get(&cgroup_id)
    }

    /// Who decided a verdict for `reason` with rule id `rule`.
    pub fn decider(&self, reason: Reason, rule: u32) -> Decider {
        let index = (rule != NO_RULE).then_some(rule as usize);
        match (reason, index) {
            (Reason::Rule, Some(i)) => match self.rules.get(i) {
                Some((policy, n)) => Decider {
                    description: format!("NetworkPolicy {policy} egress[{n}]"),
                    policy: policy.to_string(),
                },
                None => unknown(reason, rule),
            },
            (Reason::GatewayHost, Some(i)) => match self.hosts.get(i) {
                Some((gateway, host)) => Decider {
                    description: format!("EgressGateway {gateway} allowedHosts {host}"),
                    policy: gateway.to_string(),
                },
                None => unknown(reason, rule),
            },
            _ => Decider {
                description: describe(reason).to_owned(),
                policy: slug(reason).to_owned(),
            },
        }
    }
}

fn unknown(reason: Reason, rule: u32) -> Decider {
    Decider {
        description: format!("{} (rule {rule} of another generation)", describe(reason)),
        policy: slug(reason).to_owned(),
    }
}

/// The reason in words, as `explain` puts it.
pub fn describe(reason: Reason) -> &'static str {
    match reason {
        Reason::Unmanaged => "unmanaged cgroup",
        Reason::Loopback => "loopback",
        Reason::NotIsolated => "no NetworkPolicy selects this workload for Egress",
        Reason::Rule => "NetworkPolicy rule",
        Reason::GatewayHost => "gateway allowedHosts",
        Reason::NotIp => "not IP",
        Reason::Reply => "reply on an inbound flow",
        Reason::GatewayExclusivity => "gateway exclusivity",
        Reason::GatewayAllowList => "gateway allow-list",
        Reason::DefaultDeny => "default deny",
        Reason::Malformed => "malformed packet",
        Reason::NoPolicy => "no policy (fail closed)",
        Reason::Pending => {
            "pending: below a guarded cgroup root and not a known workload yet (fail closed)"
        }
        Reason::Redirect => "redirected to the proxy",
        Reason::Spoofed => "source address is not the workload's own (anti-spoofing)",
        Reason::PacketSocket => "packet socket (AF_PACKET) refused at creation",
        Reason::Transparent => "IP_TRANSPARENT refused (only gateways and proxies)",
    }
}

/// The reason as a metric label value.
pub fn slug(reason: Reason) -> &'static str {
    match reason {
        Reason::Unmanaged => "unmanaged",
        Reason::Loopback => "loopback",
        Reason::NotIsolated => "not-isolated",
        Reason::Rule => "rule",
        Reason::GatewayHost => "gateway-host",
        Reason::NotIp => "not-ip",
        Reason::Reply => "reply",
        Reason::GatewayExclusivity => "gateway-exclusivity",
        Reason::GatewayAllowList => "gateway-allow-list",
        Reason::DefaultDeny => "default-deny",
        Reason::Malformed => "malformed",
        Reason::NoPolicy => "no-policy",
        Reason::Pending => "pending",
        Reason::Redirect => "redirect",
        Reason::Spoofed => "spoofed-source",
        Reason::PacketSocket => "packet-socket",
        Reason::Transparent => "transparent",
    }
}

/// `Reason` from its code in an event.
pub fn reason_from_u8(code: u8) -> Option<Reason> {
    Reason::ALL
        .iter()
        .copied()
        .find(|r| *r as u32 == u32::from(code))
}
