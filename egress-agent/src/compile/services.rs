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
//! - **NodePorts.** A node address serves its own ports too, so a NodePort
//!   (`node address:nodePort`, on every node's addresses) cannot replace
//!   the address's entry: it is a *host port* of the table
//!   ([`super::prefix::HostPort`]), judged by the same rule, and read
//!   before the prefixes. The node address's other ports keep whatever the
//!   CIDRs around it say.
//! - **Gateway exclusivity.** A Service address with any backend outside
//!   the cluster (a selector-less Service whose EndpointSlice points at the
//!   internet) is cut out of "inside the cluster", so only gateways may
//!   use it: the kernel then holds the line whatever kube-proxy's mode
//!   (iptables, IPVS, or an eBPF replacement that the backstop never
//!   sees). Such a Service's NodePorts are cut out port by port
//!   ([`super::plan::ClusterScope::outside_ports`]): the node address
//!   stays inside.
//!
//! The judgement is made at compile time from the EndpointSlices, so it
//! follows them with the agent's reload latency; a backend added between
//! kube-proxy's update and the agent's is judged by the previous set. The
//! node backstop, which sees the DNAT's result, covers that window for
//! gateway exclusivity.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use egress_policy::{
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
    /// Ready backends of the address's family at their target ports,
    /// sorted: kube-proxy programs each family on its own (iptables and
    /// ip6tables), so an IPv6 ClusterIP or node address never leads to
    /// an IPv4 endpoint, nor the reverse.
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
                    backends: backends_of_family(&backends, addr),
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
                for &ip in node_addresses.iter().filter(|&&ip| has_family(svc, ip)) {
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

/// Whether kube-proxy serves `svc`'s NodePorts on a node address like
/// `ip`: only in the families of its ClusterIPs (`spec.ipFamilies`), so a
/// single-stack IPv4 Service has no NodePort on a node's IPv6 address
/// (that port is the node's own). Without ClusterIPs, every family.
fn has_family(svc: &Service, ip: IpAddr) -> bool {
    svc.cluster_ips.is_empty() || svc.cluster_ips.iter().any(|&c| same_family(c, ip))
}

/// Both IPv4 (IPv4-mapped IPv6 counts as IPv4) or both IPv6.
fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical().is_ipv4() == b.to_canonical().is_ipv4()
}

/// The backends that kube-proxy would DNAT `frontend` to: those of its
/// family (a dual-stack Service has an EndpointSlice per family).
fn backends_of_family(backends: &[SocketAddr], frontend: IpAddr) -> Vec<SocketAddr> {
    backends
        .iter()
        .copied()
        .filter(|b| same_family(b.ip(), frontend))
        .collect()
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

/// NodePorts grouped by node address, for the tables' host ports. A
/// node address that is also a Service's own address (an external IP
/// set to a node's) keeps its NodePorts: kube-proxy matches them first.
pub fn node_ports(frontends: &[Frontend]) -> BTreeMap<IpAddr, Vec<&Frontend>> {
    let mut out: BTreeMap<IpAddr, Vec<&Frontend>> = BTreeMap::new();
    for f in frontends.iter().filter(|f| !f.owns_address()) {
        out.entry(f.addr.to_canonical()).or_default().push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::compile::{self, decide, Destination, Plan, Verdict};
    use egress_policy::{ports::Protocol, Source};

    /// A dual-stack node, a dual-stack NodePort Service to a backend on
    /// another node, a policed client that may reach that backend, a
    /// second one whose policy names only its IPv4 address, and an
    /// EgressGateway.
    const OBJECTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: "fd00:18::2"}]}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {cgroup: t/client, addresses: [10.244.1.9, "fd00:10:244:1::9"]}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: legacy, namespace: prod, labels: {app: legacy}}
spec: {cgroup: t/legacy, addresses: [10.244.1.10, "fd00:10:244:1::10"]}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {nodeName: node-b, addresses: [10.244.2.10, "fd00:10:244:2::10"]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 8080}]
---
# A policy written for IPv4 alone, in a dual-stack cluster.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: legacy, namespace: prod}
spec:
  podSelector: {matchLabels: {app: legacy}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.244.2.0/24}}]
    ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  clusterIPs: [10.96.0.20, "fd00:10:96::20"]
  ports: [{name: http, protocol: TCP, port: 80, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: prod, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.2.10]}]
ports: [{name: http, protocol: TCP, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, namespace: prod, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints: [{addresses: ["fd00:10:244:2::10"]}]
ports: [{name: http, protocol: TCP, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: news, namespace: prod}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  clusterIPs: [10.96.0.99, "fd00:10:96::99"]
  ports: [{protocol: TCP, port: 80, nodePort: 30099}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: news-1, namespace: prod, labels: {kubernetes.io/service-name: news}}
addressType: IPv4
endpoints: [{addresses: [203.0.113.10]}]
ports: [{protocol: TCP, port: 8081}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: news-2, namespace: prod, labels: {kubernetes.io/service-name: news}}
addressType: IPv6
endpoints: [{addresses: ["2001:db8:113::10"]}]
ports: [{protocol: TCP, port: 8081}]
---
# IPv4 alone: no NodePort on the node's IPv6 address.
apiVersion: v1
kind: Service
metadata: {name: metrics, namespace: prod}
spec:
  type: NodePort
  clusterIP: 10.96.0.40
  ports: [{protocol: TCP, port: 80, nodePort: 30090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: metrics-1, namespace: prod, labels: {kubernetes.io/service-name: metrics}}
addressType: IPv4
endpoints: [{addresses: [10.244.2.10]}]
ports: [{protocol: TCP, port: 8080}]
---
# Inside by IPv4, on the internet by IPv6.
apiVersion: v1
kind: Service
metadata: {name: mirror, namespace: prod}
spec:
  ipFamilyPolicy: RequireDualStack
  clusterIPs: [10.96.0.21, "fd00:10:96::21"]
  ports: [{protocol: TCP, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: mirror-1, namespace: prod, labels: {kubernetes.io/service-name: mirror}}
addressType: IPv4
endpoints: [{addresses: [10.244.2.10]}]
ports: [{protocol: TCP, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: mirror-2, namespace: prod, labels: {kubernetes.io/service-name: mirror}}
addressType: IPv6
endpoints: [{addresses: ["2001:db8:113::10"]}]
ports: [{protocol: TCP, port: 8080}]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw, namespace: prod}
spec:
  selector: {podSelector: {matchLabels: {app: gw}}}
  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12, "fd00:10:244::/56", "fd00:10:96::/112"]
"#;

    fn plan() -> Plan {
        let loaded =
            egress_policy::load_sources(&[Source::new("svc.yaml", OBJECTS)]).expect("valid");
        compile::compile(&loaded.model)
    }

    fn tcp(to: &str) -> Destination {
        let addr: std::net::SocketAddr = to.parse().expect("IP:PORT");
        Destination {
            ip: addr.ip(),
            port: addr.port(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn node_ports_are_host_ports_of_every_node_address_and_outside_ones_are_cut() {
        let plan = plan();
        let client = plan.workload(&"prod/client".parse().unwrap()).unwrap();
        let compile::Egress::Isolated { table, .. } = &client.egress else {
            panic!("client is isolated");
        };
        for (node, expected) in [
            (
                "172.18.0.2",
                &[(30080, true), (30090, true), (30099, false)][..],
            ),
            ("fd00:18::2", &[(30080, true), (30099, false)][..]),
        ] {
            let ports = &table.host_ports[&node.parse().unwrap()];
            let by_port: Vec<(u16, bool)> =
                ports.iter().map(|p| (p.port, p.rule.is_some())).collect();
            assert_eq!(by_port, expected, "{node}");
        }
        let cluster = plan.cluster.as_ref().expect("a gateway exists");
        let outside: Vec<String> = cluster
            .outside_ports
            .iter()
            .map(|p| format!("{} {}", p.addr, p.port))
            .collect();
        assert_eq!(outside, ["172.18.0.2 30099", "fd00:18::2 30099"]);
        assert!(cluster.contains_port("172.18.0.2".parse().unwrap(), Protocol::Tcp, 10250));
    }

    #[test]
    fn explain_names_the_node_port_its_service_and_the_backend_it_judged() {
        let plan = plan();
        let client = plan.workload(&"prod/client".parse().unwrap()).unwrap();
        let d = decide(&plan, client, tcp("172.18.0.2:30080"));
        assert_eq!(d.verdict, Verdict::Allow);
        let trace = d.trace.join("\n");
        assert!(
            trace.contains("Service prod/web port \"http\" (NodePort 172.18.0.2:30080/tcp)"),
            "{trace}"
        );
        assert!(trace.contains("backend 10.244.2.10:8080: allow"), "{trace}");

        let d = decide(&plan, client, tcp("[fd00:18::2]:30099"));
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.reason, compile::Reason::GatewayExclusivity);
        let trace = d.trace.join("\n");
        assert!(
            trace.contains("Service prod/news (NodePort [fd00:18::2]:30099/tcp)"),
            "{trace}"
        );
        assert!(
            trace.contains("backend [2001:db8:113::10]:8081: deny"),
            "{trace}"
        );

        // The node's own port: no Service behind it, the node's verdict.
        let d = decide(&plan, client, tcp("172.18.0.2:10250"));
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(!d.trace.join("\n").contains("Service"), "{:?}", d.trace);
    }

    /// kube-proxy programs each family apart: a ClusterIP or node address
    /// leads only to the endpoints of its own family. A policy that names
    /// only the IPv4 pods opens the IPv4 side of a dual-stack Service and
    /// not the IPv6 one; an IPv6 endpoint on the internet cuts out the
    /// IPv6 ClusterIP alone.
    #[test]
    fn each_family_of_a_dual_stack_service_is_judged_by_its_own_backends() {
        let plan = plan();
        let legacy = plan.workload(&"prod/legacy".parse().unwrap()).unwrap();
        for to in ["10.96.0.20:80", "172.18.0.2:30080", "10.96.0.21:80"] {
            let d = decide(&plan, legacy, tcp(to));
            assert_eq!(d.verdict, Verdict::Allow, "{to}: {:?}", d.trace);
            let trace = d.trace.join("\n");
            assert!(
                trace.contains("judged by its 1 ready backend(s)"),
                "{trace}"
            );
            assert!(!trace.contains("fd00:10:244"), "{trace}");
        }
        for to in ["[fd00:10:96::20]:80", "[fd00:18::2]:30080"] {
            let d = decide(&plan, legacy, tcp(to));
            assert_eq!(d.verdict, Verdict::Deny, "{to}");
            let trace = d.trace.join("\n");
            assert!(
                trace.contains("backend [fd00:10:244:2::10]:8080: deny"),
                "{trace}"
            );
            assert!(!trace.contains("10.244.2.10"), "{trace}");
        }

        let cluster = plan.cluster.as_ref().expect("a gateway exists");
        assert!(cluster.contains("10.96.0.21".parse().unwrap()));
        assert!(!cluster.contains("fd00:10:96::21".parse().unwrap()));
        assert!(cluster.contains("fd00:10:96::20".parse().unwrap()));
        // A single-stack IPv4 Service's port on the node's IPv6 address is
        // the node's own, inside the cluster like the rest of the node.
        assert!(cluster.contains_port("fd00:18::2".parse().unwrap(), Protocol::Tcp, 30090));
        let d = decide(&plan, legacy, tcp("[fd00:18::2]:30090"));
        assert!(!d.trace.join("\n").contains("Service"), "{:?}", d.trace);
    }
}
