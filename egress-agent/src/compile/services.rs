//! Services judged by their backends.
//!
//! A pod connects to a Service address (a ClusterIP, an external IP, a
//! load balancer IP); kube-proxy rewrites it to one backend *after* the
//! cgroup hooks have run, in the node's netfilter. NetworkPolicy means the
//! backend (Calico, Cilium and kube-router all judge after the DNAT), so a
//! Service address cannot be judged as an address of its own:
//!
//! - **NetworkPolicy.** For an isolated workload, each Service address gets
//!   its own entry in the workload's prefix table, replacing whatever the
//!   CIDRs around it say: a Service port is allowed exactly when *every*
//!   ready backend is allowed at its target port. kube-proxy picks the
//!   backend, so allowing the address when only some backends are allowed
//!   would let the connection reach a denied one; a mixed Service is denied
//!   whole (and `explain` names the backend that decided). No ready
//!   backend: denied (nothing would answer).
//! - **Gateway exclusivity.** A Service address with any backend outside
//!   the cluster (a selector-less Service whose EndpointSlice points at the
//!   internet) is cut out of "inside the cluster", so only gateways may
//!   use it: the kernel then holds the line whatever kube-proxy's mode
//!   (iptables, IPVS, or an eBPF replacement that the backstop never
//!   sees).
//!
//! The judgement is made at compile time from the EndpointSlices, so it
//! follows them with the agent's reload latency; a backend added between
//! kube-proxy's update and the agent's is judged by the previous set. The
//! node backstop, which sees the DNAT's result, covers that window for
//! gateway exclusivity.
//!
//! NodePorts (`node IP:nodePort`) are listed for `explain` but not given
//! entries of their own: a node address also serves other ports, and the
//! tables cannot yet override one port of an address.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use crate::policy::{
    model::{Model, ObjectId, Service, ServicePort},
    ports::Protocol,
};

/// How a Service address was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FrontendKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClusterIp => "ClusterIP",
            Self::ExternalIp => "external IP",
            Self::LoadBalancer => "load balancer IP",
            Self::NodePort => "NodePort",
        })
    }
}

/// One address and port that stands for a Service port, and the ready
/// backends kube-proxy would send it to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frontend {
    pub service: ObjectId,
    /// The Service port's name (`""` for a single unnamed port).
    pub port_name: String,
    pub kind: FrontendKind,
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    /// Ready backends at their target ports, sorted.
    pub backends: Vec<SocketAddr>,
}

impl Frontend {
    /// Whether a connection to `ip:port` over `protocol` is this one.
    pub fn is(&self, ip: IpAddr, protocol: Protocol, port: u16) -> bool {
        self.addr == ip && self.protocol == protocol && self.port == port
    }

    /// A Service's own address (not a node's), whose every port belongs to
    /// Services.
    pub fn owns_address(&self) -> bool {
        self.kind != FrontendKind::NodePort
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service {}", self.service)?;
        if !self.port_name.is_empty() {
            write!(f, " port {:?}", self.port_name)?;
        }
        write!(
            f,
            " ({} {}/{})",
            self.kind,
            SocketAddr::new(self.addr, self.port),
            self.protocol.to_string().to_ascii_lowercase()
        )
    }
}

/// Every Service address and port of the model, with its backends.
pub fn frontends(model: &Model) -> Vec<Frontend> {
    let node_addresses: Vec<IpAddr> = model
        .nodes
        .iter()
        .flat_map(|n| n.addresses.iter().copied())
        .collect();
    let mut out = Vec::new();
    for svc in &model.services {
        for sp in &svc.ports {
            let backends = backends(model, svc, sp);
            let mut push = |kind, addr: IpAddr, port| {
                out.push(Frontend {
                    service: svc.id.clone(),
                    port_name: sp.name.clone(),
                    kind,
                    addr,
                    protocol: sp.protocol,
                    port,
                    backends: backends.clone(),
                });
            };
            for &ip in &svc.cluster_ips {
                push(FrontendKind::ClusterIp, ip, sp.port);
            }
            for &ip in &svc.external_ips {
                push(FrontendKind::ExternalIp, ip, sp.port);
            }
            for &ip in &svc.load_balancer_ips {
                push(FrontendKind::LoadBalancer, ip, sp.port);
            }
            if let Some(node_port) = sp.node_port {
                for &ip in &node_addresses {
                    push(FrontendKind::NodePort, ip, node_port);
                }
            }
        }
    }
    out.sort_by(|a, b| {
        (a.addr, a.protocol, a.port, &a.service).cmp(&(b.addr, b.protocol, b.port, &b.service))
    });
    out
}

/// The ready backends of one Service port, read as kube-proxy reads them:
/// every slice labelled with the Service's name in its namespace, the slice
/// port with the Service port's name and protocol, every ready endpoint.
fn backends(model: &Model, svc: &Service, sp: &ServicePort) -> Vec<SocketAddr> {
    let mut out = BTreeSet::new();
    let slices = model
        .endpoint_slices
        .iter()
        .filter(|s| s.id.namespace == svc.id.namespace && s.service == svc.id.name);
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| p.name == sp.name && p.protocol == sp.protocol)
        else {
            continue;
        };
        let target = port.port.unwrap_or(sp.port);
        for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
            out.extend(
                endpoint
                    .addresses
                    .iter()
                    .map(|&a| SocketAddr::new(a, target)),
            );
        }
    }
    out.into_iter().collect()
}

/// Addresses inside the cluster beyond `clusterCIDRs`: the nodes' (where
/// hostNetwork pods and NodePorts live) and the API server's endpoints
/// (the `default/kubernetes` Service, often outside every pod range).
pub fn in_cluster_addresses(model: &Model) -> BTreeSet<IpAddr> {
    let mut out: BTreeSet<IpAddr> = model
        .nodes
        .iter()
        .flat_map(|n| n.addresses.iter().copied())
        .collect();
    let api = ObjectId::new("default", "kubernetes");
    out.extend(
        model
            .endpoint_slices
            .iter()
            .filter(|s| s.id.namespace == api.namespace && s.service == api.name)
            .flat_map(|s| s.endpoints.iter())
            .flat_map(|e| e.addresses.iter().copied()),
    );
    out
}

/// Service addresses grouped by address, for the tables' entries.
pub fn by_address(frontends: &[Frontend]) -> BTreeMap<IpAddr, Vec<&Frontend>> {
    let mut out: BTreeMap<IpAddr, Vec<&Frontend>> = BTreeMap::new();
    for f in frontends.iter().filter(|f| f.owns_address()) {
        out.entry(f.addr).or_default().push(f);
    }
    out
}
