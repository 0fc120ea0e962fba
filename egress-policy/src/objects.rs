//! The YAML objects as written, before validation.
//!
//! Kubernetes kinds use the k8s-openapi types, so a `NetworkPolicy` is
//! accepted exactly as the API server would accept it and the same types serve
//! when objects come from a cluster. The extension kinds below are ours.
//!
//! `EgressGateway` and `Redirect` are also custom resources: their CRDs
//! are derived from these same spec types ([`crate::crd`]), so the schema
//! the API server checks and the parse the agent does cannot drift apart.
//! The derive adds a root type for each ([`EgressGatewayResource`],
//! [`RedirectResource`]); the loader still parses the envelope
//! [`Object`], which also reads files.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::PolicyStatus;

/// The API group and version of the extension kinds.
pub const EXTENSION_API_VERSION: &str = "egress.enforcer.dev/v1alpha1";

/// The kinds this agent understands, as `(apiVersion, kind)`.
pub const KNOWN_KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("v1", "Node"),
    (EXTENSION_API_VERSION, "Workload"),
    (EXTENSION_API_VERSION, "EgressGateway"),
    (EXTENSION_API_VERSION, "Redirect"),
    (ISTIO_NETWORKING_V1, "ServiceEntry"),
    ("networking.istio.io/v1beta1", "ServiceEntry"),
    ("networking.istio.io/v1alpha3", "ServiceEntry"),
];

/// Istio's networking API, whose ServiceEntries can feed a gateway's
/// allow-list (`allowedHosts: fromServiceEntries`). Every served version
/// has the same ServiceEntry fields.
pub const ISTIO_NETWORKING_V1: &str = "networking.istio.io/v1";

/// An extension object: the usual envelope around a `spec`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<S> {
    #[allow(dead_code, reason = "checked before the typed parse")]
    pub api_version: String,
    #[allow(dead_code, reason = "checked before the typed parse")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: S,
}

/// `Workload.spec`: one workload of the inventory (no API server).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// cgroup v2 path, absolute or relative to the cgroup2 mount. Absent: a
    /// pod on another node, known only as a peer.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The node the workload runs on (informational).
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Named ports, for NetworkPolicy rules that name a port.
    #[serde(default)]
    pub ports: Vec<NamedPortSpec>,
    /// The workload carries a proxy sidecar, so a Redirect with the default
    /// `capture: Sidecar` captures it. The pod conversion sets it when the
    /// pod has the sidecar container; Istio's `sidecar.istio.io/status`
    /// annotation says the same.
    #[serde(default)]
    pub sidecar: Option<bool>,
}

/// A named container port, as in `Pod.spec.containers[].ports[]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedPortSpec {
    pub name: String,
    pub port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// Selects workloads across namespaces, like a NetworkPolicy peer. An absent
/// `namespaceSelector` means the object's own namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelectorSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// `EgressGateway.spec`: the workloads that alone may reach addresses
/// outside `clusterCIDRs`, and the external hosts they may reach.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, CustomResource)]
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) of kube's attribute repeats `type_ = ...`"
)]
#[serde(rename_all = "camelCase")]
#[kube(
    group = "egress.enforcer.dev",
    version = "v1alpha1",
    kind = "EgressGateway",
    root = "EgressGatewayResource",
    doc = "Only the workloads it selects may reach addresses outside clusterCIDRs, and only the allowedHosts. Enforced by the egress-agent on every node; status.nodes has each node's verdict.",
    namespaced,
    status = "PolicyStatus",
    shortname = "egw",
    category = "egress",
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.programmed",
        description = "Nodes whose agent enforces this generation, of the nodes that reported"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct EgressGatewaySpec {
    pub selector: WorkloadSelectorSpec,
    /// The cluster's pod and service ranges: everything else is the
    /// internet, which only the gateway may reach.
    #[serde(rename = "clusterCIDRs")]
    #[schemars(length(min = 1))]
    pub cluster_cidrs: Vec<String>,
    /// Absent: the gateway may reach any host; a list: only these;
    /// `fromServiceEntries`: the hosts of the Istio ServiceEntries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<AllowedHostsSpec>,
}

/// `EgressGateway.spec.allowedHosts`: a list, or `fromServiceEntries`.
/// Its schema is written by hand ([`crate::crd`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum AllowedHostsSpec {
    List(Vec<AllowedHostSpec>),
    /// `fromServiceEntries`: the hosts of every Istio ServiceEntry visible
    /// to the gateway's namespace, as Istio's REGISTRY_ONLY allows them.
    From(String),
}

/// The `allowedHosts` value that takes the hosts from ServiceEntries.
pub const FROM_SERVICE_ENTRIES: &str = "fromServiceEntries";

/// Istio's `ServiceEntry.spec` (networking.istio.io), every field of the
/// API so that a real ServiceEntry parses; only hosts, ports, endpoints
/// and exportTo decide what a gateway may reach.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs the mesh answers for; not where the gateway connects.
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServiceEntryPortSpec>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<ServiceEntryEndpointSpec>,
    #[serde(default)]
    pub workload_selector: Option<serde_json::Value>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// `ServiceEntry.spec.ports[]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryPortSpec {
    pub number: i64,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub target_port: Option<i64>,
}

/// `ServiceEntry.spec.endpoints[]`: where the mesh sends traffic for the
/// hosts (with `resolution: STATIC`, an IP; with `DNS`, a name).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryEndpointSpec {
    #[serde(default)]
    pub address: Option<String>,
    /// Port name → the endpoint's port number.
    #[serde(default)]
    pub ports: BTreeMap<String, i64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub service_account: Option<String>,
}

/// One external host the gateway may reach, like an Istio ServiceEntry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedHostSpec {
    /// A DNS name (no wildcard), an IP address or a CIDR.
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<HostPortSpec>,
}

/// A port of an allowed host. Accepts `443` or `{port: 443, protocol: TCP}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HostPortSpec {
    Number(i64),
    Full {
        port: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

/// `Redirect.spec`: which workloads are captured, and where to. Absent
/// selectors select every pod of the object's namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, CustomResource)]
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) of kube's attribute repeats `type_ = ...`"
)]
#[serde(rename_all = "camelCase")]
#[kube(
    group = "egress.enforcer.dev",
    version = "v1alpha1",
    kind = "Redirect",
    root = "RedirectResource",
    doc = "Sends the outbound TCP (and DNS) of the workloads it selects to a proxy, as Istio's sidecar capture does. Enforced by the egress-agent on every node; status.nodes has each node's verdict.",
    namespaced,
    status = "PolicyStatus",
    category = "egress",
    printcolumn(
        name = "Capture",
        type_ = "string",
        json_path = ".spec.capture",
        description = "Sidecar (the default: workloads with a sidecar) or All"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.programmed",
        description = "Nodes whose agent enforces this generation, of the nodes that reported"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct RedirectSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default)]
    pub proxy: ProxySpec,
    #[serde(
        default,
        rename = "includeIPRanges",
        skip_serializing_if = "Option::is_none"
    )]
    pub include_ip_ranges: Option<StringOrList>,
    #[serde(
        default,
        rename = "excludeIPRanges",
        skip_serializing_if = "Option::is_none"
    )]
    pub exclude_ip_ranges: Option<StringOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_ports: Option<PortList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_ports: Option<PortList>,
    /// Also send UDP port 53 to the proxy's DNS port, like Istio DNS proxying.
    /// Spelled `captureDNS`, as documented (camelCase would give
    /// `captureDns`, which files may still use; the CRD knows only
    /// `captureDNS`).
    #[serde(
        default,
        rename = "captureDNS",
        alias = "captureDns",
        skip_serializing_if = "Option::is_none"
    )]
    pub capture_dns: Option<DnsCaptureSpec>,
    /// `Sidecar` (the default): the selected workloads that carry a
    /// sidecar. `All`: every selected workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
}

/// Which of the selected workloads are captured: `Sidecar` (the
/// default) or `All`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema)]
pub enum Capture {
    /// The default: only selected workloads that carry a sidecar, as Istio
    /// captures only injected pods.
    Sidecar,
    /// Every selected workload (a node-level proxy serving them all).
    All,
}

/// Where captured connections go, and which workloads are the proxy.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// An IP address; 127.0.0.1 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// 15001 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i64>,
    /// Which workloads are the proxy; never redirected, known by cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelectorSpec>,
}

/// DNS capture: UDP port 53 to the proxy's DNS port.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsCaptureSpec {
    #[serde(default)]
    pub enabled: bool,
    /// 15053 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i64>,
}

/// Istio writes ranges as one comma-separated string (`"*"`,
/// `"10.0.0.0/8,172.16.0.0/12"`); YAML users write lists. Accept both.
/// Its schema is written by hand ([`crate::crd`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StringOrList {
    String(String),
    List(Vec<String>),
}

/// Ports as a list of numbers or an Istio-style comma-separated string.
/// Its schema is written by hand ([`crate::crd`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PortList {
    String(String),
    List(Vec<i64>),
}

/// Labels or annotations, never absent after parsing.
pub fn string_map(map: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.clone().unwrap_or_default()
}
