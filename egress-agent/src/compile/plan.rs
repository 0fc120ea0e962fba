//! The plan: what the kernel is programmed with, per workload.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use ipnet::IpNet;
use serde::Serialize;

// `RuleRef` and `Allow` are what a prefix allows, so they live with the
// prefix tables (which must not depend on the plan built from them).
pub use super::prefix::{Allow, RuleRef};
use super::{prefix::PrefixTable, services::Frontend};
use egress_policy::{
    model::{AllowedHost, CaptureRules, IpRanges, ObjectId},
    ports::Protocol,
};

/// What a guard entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Guard {
    /// Fail-closed policy for the unknown cgroups below a guarded root.
    Pending,
    /// Unmanaged, even below a guarded root.
    Exempt,
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
    /// Every Service address and port with its ready backends: what the
    /// tables' Service entries were judged from, for `explain`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Frontend>,
}

impl Plan {
    pub fn workload(&self, id: &ObjectId) -> Option<&WorkloadPlan> {
        self.workloads.iter().find(|w| &w.id == id)
    }

    /// The plan without DNS capture: what the agent enforces unless it runs
    /// with `--capture-dns`, whatever the Redirects' `captureDNS` says
    /// (DNS proxying needs a proxy that answers on the DNS port, which is
    /// an opt-in in Istio too).
    pub fn without_dns_capture(mut self) -> Self {
        for capture in self.workloads.iter_mut().filter_map(|w| w.capture.as_mut()) {
            capture.dns_port = None;
        }
        self
    }

    /// The plan with the DNS of the gateways in `relayed` sent to the
    /// agent's relay on their loopback at `port` (`run
    /// --follow-gateway-dns`, see `resolve::relay`): a capture of UDP/53
    /// alone, with no TCP captured. A gateway that a Redirect captures
    /// keeps that capture.
    pub fn with_gateway_dns(mut self, relayed: &BTreeSet<ObjectId>, port: u16) -> Self {
        for w in &mut self.workloads {
            let Some(gateway) = &w.gateway else {
                continue;
            };
            if w.capture.is_some() || !relayed.contains(&w.id) {
                continue;
            }
            w.capture = Some(Capture {
                redirect: gateway.gateway.clone(),
                proxy: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
                rules: CaptureRules {
                    include_ip_ranges: IpRanges::Only(Vec::new()),
                    ..CaptureRules::default()
                },
                dns_port: Some(port),
            });
        }
        self
    }
}

/// "Inside the cluster": the union of every gateway's `clusterCIDRs`, the
/// nodes' addresses and the API server's endpoints, less the Service
/// addresses that lead outside; and port by port, less the NodePorts that
/// lead outside, plus the Service ports of addresses outside the CIDRs
/// (external and load balancer IPs) whose backends are all inside (see
/// [`super::services`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterScope {
    pub cidrs: Vec<IpNet>,
    /// Ports of addresses inside `cidrs` that lead outside: a node
    /// address's NodePort whose backends are outside the cluster. Sorted,
    /// canonical addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outside_ports: Vec<ScopePort>,
    /// Ports of addresses outside `cidrs` that stay inside: an external or
    /// load balancer IP's Service port, which kube-proxy sends to backends
    /// that are all inside. Sorted, canonical addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inside_ports: Vec<ScopePort>,
}

/// One port of one address, on the other side of the cluster's edge from
/// its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ScopePort {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl ClusterScope {
    /// Whether the address is inside, whatever the port.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(&ip))
    }

    /// Whether a connection to `ip:port` over `protocol` stays inside.
    pub fn contains_port(&self, ip: IpAddr, protocol: Protocol, port: u16) -> bool {
        let at = ScopePort {
            addr: ip.to_canonical(),
            protocol,
            port,
        };
        if self.contains(ip) {
            self.outside_ports.binary_search(&at).is_err()
        } else {
            self.inside_ports.binary_search(&at).is_ok()
        }
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
    /// A Redirect that selects this workload but does not capture it, and
    /// why (for `explain` and `plan`: the pod's traffic goes out directly).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed_over: Option<PassedOver>,
    pub egress: Egress,
    /// May create packet sockets (`AF_PACKET`): the Workload is annotated
    /// [`PACKET_SOCKETS_ANNOTATION`]` = "allow"`. Gateways may anyway.
    /// Everyone else gets EPERM from `socket(AF_PACKET, ...)`: its frames
    /// would bypass every per-packet check.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub packet_sockets: bool,
    /// Set for entries the agent adds itself ([`super::guard`]), not
    /// compiled from a Workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
}

/// The Workload annotation that lets it create packet sockets (value
/// `"allow"`; any other value, or none, refuses them). An annotation rather
/// than a field: it is a per-pod exception (a DHCP client, a packet
/// capture sidecar), set where the pod is defined, like Istio's capture
/// annotations.
pub const PACKET_SOCKETS_ANNOTATION: &str = "egress.enforcer.dev/packet-sockets";

/// The gateway role: may leave the cluster, perhaps only to listed hosts.
#[derive(Clone, Debug, Serialize)]
pub struct GatewayRole {
    pub gateway: ObjectId,
    /// REGISTRY_ONLY when `Some`, ALLOW_ANY when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<AllowedHost>>,
}

/// A Redirect that selects a workload and leaves it alone.
#[derive(Clone, Debug, Serialize)]
pub struct PassedOver {
    pub redirect: ObjectId,
    pub why: &'static str,
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

impl Capture {
    /// Where a captured connect to `dst` goes: the proxy, in the family of
    /// `dst` (canonical: IPv4-mapped is IPv4). A socket cannot be
    /// redirected across families, so a loopback proxy stands for both
    /// loopbacks (127.0.0.1 ↔ ::1: a sidecar listens on both), and a
    /// non-loopback proxy captures only destinations of its own family.
    pub fn proxy_for(&self, dst: IpAddr) -> Option<SocketAddr> {
        let port = self.proxy.port();
        match (self.proxy.ip().to_canonical(), dst.to_canonical()) {
            (IpAddr::V4(p), IpAddr::V4(_)) => Some(SocketAddr::new(p.into(), port)),
            (IpAddr::V6(p), IpAddr::V6(_)) => Some(SocketAddr::new(p.into(), port)),
            (IpAddr::V4(p), IpAddr::V6(_)) if p.is_loopback() => {
                Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port))
            }
            (IpAddr::V6(p), IpAddr::V4(_)) if p.is_loopback() => {
                Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
            }
            _ => None,
        }
    }
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
/// cluster, is dropped, and so is traffic from a workload's port with a
/// source that is not one of that workload's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeRules {
    pub cluster_cidrs: Vec<IpNet>,
    pub gateway_addresses: Vec<IpAddr>,
    pub workload_addresses: Vec<IpAddr>,
    /// The workloads' ports on the node. Not compiled (the compiler sees
    /// policy, not the host): the agent learns them at each apply
    /// (`sys::ports`), so the plan that `plan` and `explain` print has
    /// none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<WorkloadPort>,
}

/// A workload's interface on the node (the node's end of its pod's veth)
/// and the addresses the workload owns, the only sources it may send from
/// through it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct WorkloadPort {
    pub interface: String,
    pub addresses: Vec<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_policy::model::CaptureRules;

    fn capture(proxy: &str) -> Capture {
        Capture {
            redirect: ObjectId {
                namespace: "default".into(),
                name: "r".into(),
            },
            proxy: proxy.parse().unwrap(),
            rules: CaptureRules::default(),
            dns_port: None,
        }
    }

    #[test]
    fn a_loopback_proxy_stands_for_both_loopbacks_and_others_for_their_family() {
        let at = |s: &str| s.parse::<IpAddr>().unwrap();
        let local = capture("127.0.0.1:15001");
        assert_eq!(
            local.proxy_for(at("2001:db8::1")),
            Some("[::1]:15001".parse().unwrap())
        );
        assert_eq!(
            local.proxy_for(at("::ffff:192.0.2.1")),
            Some("127.0.0.1:15001".parse().unwrap())
        );
        let node = capture("10.0.0.1:15001");
        assert_eq!(node.proxy_for(at("2001:db8::1")), None);
        let node6 = capture("[fd00::1]:15001");
        assert_eq!(node6.proxy_for(at("192.0.2.1")), None);
        assert_eq!(
            capture("[::1]:15001").proxy_for(at("192.0.2.1")),
            Some("127.0.0.1:15001".parse().unwrap())
        );
    }
}
