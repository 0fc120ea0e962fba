//! The plan: what the kernel is programmed with, per workload.

use std::{fmt, net::IpAddr, net::SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use super::prefix::PrefixTable;
use crate::policy::{
    model::{AllowedHost, CaptureRules, ObjectId},
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

/// The compiled policy for every workload, plus the node-level rules.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub workloads: Vec<WorkloadPlan>,
    /// Present when an EgressGateway exists: only gateways may leave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterScope>,
    /// The nftables backstop's inputs.
    pub node: NodeRules,
}

impl Plan {
    pub fn workload(&self, id: &ObjectId) -> Option<&WorkloadPlan> {
        self.workloads.iter().find(|w| &w.id == id)
    }
}

/// "Inside the cluster": the union of every gateway's `clusterCIDRs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterScope {
    pub cidrs: Vec<IpNet>,
}

impl ClusterScope {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(&ip))
    }
}

/// Everything the data plane needs about one workload.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadPlan {
    pub id: ObjectId,
    pub cgroup: String,
    pub addresses: Vec<IpAddr>,
    /// Set when this workload is an egress gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRole>,
    /// Redirects for which this workload is the proxy; never captured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxy_for: Vec<ObjectId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
    pub egress: Egress,
}

/// The gateway role: may leave the cluster, perhaps only to listed hosts.
#[derive(Clone, Debug, Serialize)]
pub struct GatewayRole {
    pub gateway: ObjectId,
    /// REGISTRY_ONLY when `Some`, ALLOW_ANY when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<AllowedHost>>,
}

/// Transparent capture of this workload's outbound TCP.
#[derive(Clone, Debug, Serialize)]
pub struct Capture {
    pub redirect: ObjectId,
    pub proxy: SocketAddr,
    /// The Redirect's rules with the workload's annotations applied.
    pub rules: CaptureRules,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_port: Option<u16>,
}

/// NetworkPolicy egress for one workload.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase", tag = "mode")]
pub enum Egress {
    /// No policy with Egress selects the workload: Kubernetes allows all.
    Unrestricted,
    /// Selected by these policies: only what their rules allow.
    Isolated {
        policies: Vec<ObjectId>,
        table: PrefixTable,
    },
}

/// Inputs of the node-level nftables backstop: forwarded traffic from
/// workload addresses that are not a gateway's, to destinations outside the
/// cluster, is dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeRules {
    pub cluster_cidrs: Vec<IpNet>,
    pub gateway_addresses: Vec<IpAddr>,
    pub workload_addresses: Vec<IpAddr>,
}
