//! The validated policy model: what the YAML means, with every value parsed.
//!
//! Nothing here can hold a bad CIDR, a reversed port range or an unknown
//! selector operator; those are refused while building it (see
//! [`super::validate`]).

use std::{collections::BTreeMap, fmt, net::IpAddr, path::Path, sync::Arc};

use ipnet::IpNet;
use serde::Serialize;

use super::{
    ports::{PortSpec, Protocol},
    selector::{Labels, Selector},
};

/// A namespaced object's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectId {
    pub namespace: String,
    pub name: String,
}

impl ObjectId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for ObjectId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::new(ns, name))
            }
            _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
        }
    }
}

/// Where an object was defined, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<Path>,
    pub line: Option<usize>,
}

/// The whole validated policy set.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Every namespace mentioned, declared or not. Undeclared ones carry
    /// only the `kubernetes.io/metadata.name` label, as on a real cluster.
    pub namespaces: BTreeMap<String, Namespace>,
    pub workloads: Vec<Workload>,
    pub network_policies: Vec<NetworkPolicy>,
    pub gateways: Vec<EgressGateway>,
    pub redirects: Vec<Redirect>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    /// Istio ServiceEntries, for gateways with `allowedHosts:
    /// fromServiceEntries`.
    pub service_entries: Vec<ServiceEntry>,
}

impl Model {
    pub fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(namespace).map(|ns| &ns.labels)
    }

    pub fn workload(&self, id: &ObjectId) -> Option<&Workload> {
        self.workloads.iter().find(|w| &w.id == id)
    }

    /// The workloads a namespace scope plus pod selector picks.
    pub fn select<'a>(
        &'a self,
        selector: &'a WorkloadSelector,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads
            .iter()
            .filter(move |w| self.selects(selector, w))
    }

    pub fn selects(&self, selector: &WorkloadSelector, workload: &Workload) -> bool {
        let in_scope = match &selector.namespaces {
            NamespaceScope::Own(ns) => &workload.id.namespace == ns,
            NamespaceScope::Selected(sel) => self
                .namespace_labels(&workload.id.namespace)
                .is_some_and(|labels| sel.matches(labels)),
        };
        in_scope && selector.pods.matches(&workload.labels)
    }
}

/// `v1 Namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    pub declared: bool,
}

/// A workload: its addresses and labels, and, when it runs on this node,
/// its cgroup.
#[derive(Clone, Debug)]
pub struct Workload {
    pub id: ObjectId,
    pub labels: Labels,
    pub annotations: Labels,
    /// cgroup v2 path as written: absolute, or relative to the cgroup2
    /// mount. `None`: a pod elsewhere (another node), a NetworkPolicy peer
    /// that is never enforced here.
    pub cgroup: Option<String>,
    /// The node it runs on, when known (informational).
    pub node: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
    /// Istio's `traffic.sidecar.istio.io/*Outbound*` annotations, parsed.
    pub capture_overrides: CaptureOverrides,
    /// Whether it carries a proxy sidecar (`spec.sidecar`, or Istio's
    /// `sidecar.istio.io/status` annotation, which its injector writes).
    pub sidecar: bool,
    /// Istio's `sidecar.istio.io/interceptionMode`.
    pub interception: Interception,
    pub origin: Origin,
}

/// Istio's `sidecar.istio.io/interceptionMode`. Istio's TPROXY mode changes
/// only how *inbound* traffic reaches the sidecar (outbound stays a
/// REDIRECT to 15001), so for egress it captures exactly as `Redirect`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Interception {
    #[default]
    Redirect,
    Tproxy,
    /// No capture at all: the pod's traffic goes out as if no Redirect
    /// selected it (its NetworkPolicy still applies).
    None,
}

impl Interception {
    pub fn captures(self) -> bool {
        self != Self::None
    }
}

/// Per-workload overrides of a Redirect's [`CaptureRules`]; each present
/// field replaces the Redirect's, exactly as Istio's injector treats them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureOverrides {
    #[serde(rename = "includeIPRanges", skip_serializing_if = "Option::is_none")]
    pub include_ip_ranges: Option<IpRanges>,
    #[serde(rename = "excludeIPRanges", skip_serializing_if = "Option::is_none")]
    pub exclude_ip_ranges: Option<Vec<IpNet>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_ports: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_ports: Option<Vec<u16>>,
}

impl CaptureOverrides {
    /// The Redirect's rules with these overrides applied.
    pub fn apply(&self, base: &CaptureRules) -> CaptureRules {
        CaptureRules {
            include_ip_ranges: self
                .include_ip_ranges
                .clone()
                .unwrap_or_else(|| base.include_ip_ranges.clone()),
            exclude_ip_ranges: self
                .exclude_ip_ranges
                .clone()
                .unwrap_or_else(|| base.exclude_ip_ranges.clone()),
            include_ports: self
                .include_ports
                .clone()
                .unwrap_or_else(|| base.include_ports.clone()),
            exclude_ports: self
                .exclude_ports
                .clone()
                .unwrap_or_else(|| base.exclude_ports.clone()),
        }
    }
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// Which namespaces a selector looks in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceScope {
    /// Only the referring object's own namespace (no `namespaceSelector`).
    Own(String),
    /// Namespaces whose labels match (`{}` = all namespaces).
    Selected(Selector),
}

/// Namespaces × pods, as in a NetworkPolicy peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadSelector {
    pub namespaces: NamespaceScope,
    pub pods: Selector,
}

impl fmt::Display for WorkloadSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespaces {
            NamespaceScope::Own(ns) => write!(f, "namespace {ns}, pods {}", self.pods),
            NamespaceScope::Selected(sel) => write!(f, "namespaces {sel}, pods {}", self.pods),
        }
    }
}

/// `networking.k8s.io/v1 NetworkPolicy`, egress part.
#[derive(Clone, Debug)]
pub struct NetworkPolicy {
    pub id: ObjectId,
    pub pod_selector: Selector,
    /// `Egress` is in `policyTypes` (explicitly, or by Kubernetes' default:
    /// present when the policy has egress rules).
    pub affects_egress: bool,
    pub egress: Vec<EgressRule>,
    pub origin: Origin,
}

/// One egress rule: traffic to any peer (OR) on any port (OR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRule {
    /// Empty = every destination.
    pub to: Vec<Peer>,
    /// Empty = every port and protocol.
    pub ports: Vec<PortSpec>,
}

/// A destination peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    IpBlock(IpBlock),
    Workloads(WorkloadSelector),
}

/// `ipBlock`: a CIDR minus holes. Every `except` lies inside `cidr`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// `EgressGateway`: the only workloads that may reach outside the cluster.
#[derive(Clone, Debug)]
pub struct EgressGateway {
    pub id: ObjectId,
    pub selector: WorkloadSelector,
    /// Pod and service ranges; everything else is "the internet".
    pub cluster_cidrs: Vec<IpNet>,
    /// REGISTRY_ONLY when set, ALLOW_ANY when absent. With
    /// `fromServiceEntries`, the hosts of the ServiceEntries visible to the
    /// gateway's namespace, filled in once every object is known.
    pub allowed_hosts: Option<Vec<AllowedHost>>,
    pub from_service_entries: bool,
    pub origin: Origin,
}

/// Istio's `ServiceEntry`, reduced to what a gateway may reach.
#[derive(Clone, Debug)]
pub struct ServiceEntry {
    pub id: ObjectId,
    /// Its hosts, and its endpoints' addresses (where the mesh connects
    /// for them), each with the entry's ports.
    pub hosts: Vec<AllowedHost>,
    /// `exportTo`: empty or `*` is every namespace, `.` its own, `~` none.
    pub export_to: Vec<String>,
    pub origin: Origin,
}

impl ServiceEntry {
    /// Whether Istio makes it visible in `namespace`.
    pub fn visible_in(&self, namespace: &str) -> bool {
        self.export_to.is_empty()
            || self.export_to.iter().any(|to| {
                to == "*" || to == namespace || (to == "." && self.id.namespace == namespace)
            })
    }
}

/// A host the gateway may reach, with the ports it may use (empty = any).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AllowedHost {
    pub host: HostName,
    pub ports: Vec<(Protocol, u16)>,
}

/// An allowed host: a DNS name resolved at run time, or literal addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum HostName {
    Dns(String),
    Net(IpNet),
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Net(net) => write!(f, "{net}"),
        }
    }
}

/// `Redirect`: transparent capture of outbound TCP to a local proxy.
#[derive(Clone, Debug)]
pub struct Redirect {
    pub id: ObjectId,
    pub capture: WorkloadSelector,
    /// Which of the selected workloads are captured.
    pub scope: CaptureScope,
    pub proxy: Proxy,
    pub rules: CaptureRules,
    /// UDP/53 to this proxy port when set.
    pub dns_port: Option<u16>,
    pub origin: Origin,
}

/// `Redirect.spec.capture`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum CaptureScope {
    /// Only workloads that carry a sidecar, as Istio captures only the pods
    /// it injected: a pod without one has no proxy to be sent to, and
    /// capturing it would refuse all of its TCP.
    #[default]
    Sidecar,
    /// Every selected workload: a node-level proxy that serves them all.
    All,
}

impl Redirect {
    /// Whether this Redirect captures `w`, which its selector selects.
    pub fn captures_workload(&self, w: &Workload) -> bool {
        w.interception.captures() && (self.scope == CaptureScope::All || w.sidecar)
    }
}

/// Where captured connections go, and who the proxy is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Proxy {
    pub address: IpAddr,
    pub port: u16,
    /// Workloads that ARE the proxy, by cgroup; never redirected.
    pub selector: Option<WorkloadSelector>,
}

/// Istio's include/exclude settings for one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureRules {
    #[serde(rename = "includeIPRanges")]
    pub include_ip_ranges: IpRanges,
    #[serde(rename = "excludeIPRanges")]
    pub exclude_ip_ranges: Vec<IpNet>,
    pub include_ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
}

impl Default for CaptureRules {
    /// Istio's defaults: capture everything, exclude nothing.
    fn default() -> Self {
        Self {
            include_ip_ranges: IpRanges::All,
            exclude_ip_ranges: Vec::new(),
            include_ports: Vec::new(),
            exclude_ports: Vec::new(),
        }
    }
}

/// `includeIPRanges`: `"*"` or a list (possibly empty).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum IpRanges {
    All,
    Only(Vec<IpNet>),
}

impl IpRanges {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            Self::All => true,
            Self::Only(nets) => nets.iter().any(|n| n.contains(&ip)),
        }
    }
}

/// `v1 Service`: the addresses that stand for it, and its ports. Which pods
/// serve it comes from [`EndpointSlice`]s, as kube-proxy reads it.
#[derive(Clone, Debug)]
pub struct Service {
    pub id: ObjectId,
    /// `spec.clusterIPs` (or `clusterIP`); empty when headless.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub origin: Origin,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// `""` when the Service has a single unnamed port; EndpointSlice
    /// ports are matched to it by this name.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

/// `discovery.k8s.io/v1 EndpointSlice`: some of a Service's backends.
#[derive(Clone, Debug)]
pub struct EndpointSlice {
    pub id: ObjectId,
    /// The owning Service's name (label `kubernetes.io/service-name`), in
    /// the slice's namespace.
    pub service: String,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<EndpointPort>,
    pub origin: Origin,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`, absent = ready (as the API documents).
    pub ready: bool,
}

/// A port of a slice: the Service port `name`'s target port, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: Protocol,
    /// `None`: every port (the API allows it; the Service port is used).
    pub port: Option<u16>,
}

/// `v1 Node`: its addresses are inside the cluster, and NodePorts listen
/// on them.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub origin: Origin,
}
