//! API objects other than Pods → the YAML documents the policy layer reads.
//!
//! Each object is reduced, as its watch event arrives, to the fields the
//! policy layer uses, and written once as a document named
//! `kubernetes/<resource>/<namespace>/<name>` in findings. Rebuilds then
//! only clone text: at thousands of Services and slices, serializing every
//! object on every rebuild would dominate the agent's CPU time.
//!
//! EndpointSlices are always written as `discovery.k8s.io/v1`, whatever the
//! server serves ([`SliceSource`]): `v1` (1.21+), `v1beta1` (1.17–1.24, the
//! only one on 1.20), or, where neither is served, `v1 Endpoints`, one slice
//! per subset and address family. The policy layer then has one shape to
//! judge.

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{
            EndpointAddress, Endpoints, LoadBalancerIngress, LoadBalancerStatus, Namespace, Node,
            NodeStatus, ObjectReference, Service, ServicePort, ServiceSpec, ServiceStatus,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{core::DynamicObject, discovery::ApiResource, Resource};
use serde::Serialize;

use egress_policy::Source;

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where EndpointSlices come from on this server, found by API discovery
/// at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceSource {
    /// `discovery.k8s.io/v1` (Kubernetes 1.21 and later).
    V1,
    /// `discovery.k8s.io/v1beta1` (1.20; converted to v1).
    V1beta1,
    /// Neither: `v1 Endpoints`, converted to slices.
    Endpoints,
}

impl SliceSource {
    /// The API resource to watch for a slice version (`None` for
    /// Endpoints, which has a typed API).
    pub fn api_resource(self) -> Option<ApiResource> {
        let version = match self {
            Self::V1 => "v1",
            Self::V1beta1 => "v1beta1",
            Self::Endpoints => return None,
        };
        Some(ApiResource {
            group: "discovery.k8s.io".into(),
            version: version.into(),
            api_version: format!("discovery.k8s.io/{version}"),
            kind: "EndpointSlice".into(),
            plural: "endpointslices".into(),
        })
    }
}

/// `object` as a YAML document named `kubernetes/<resource>/<ns>/<name>`.
pub fn render<K: Resource + Serialize>(resource: &str, object: &K) -> Source {
    let meta = object.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    let file = match &meta.namespace {
        Some(ns) => format!("kubernetes/{resource}/{ns}/{name}"),
        None => format!("kubernetes/{resource}/{name}"),
    };
    // As JSON, which is YAML with every string quoted: a label value such
    // as `yes` must stay a string for the validator, which reads plain
    // scalars as kubectl does (YAML 1.1). k8s-openapi objects serialize
    // with their apiVersion and kind; a failure (it cannot happen for these
    // types) leaves an empty document, reported as missing `kind`.
    let text = serde_json::to_string_pretty(object).unwrap_or_default();
    Source {
        file: Arc::from(Path::new(&file)),
        text: text.into(),
    }
}

/// Only the name, namespace and labels of an object's metadata.
fn meta(from: &ObjectMeta, labels: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta {
        name: from.name.clone(),
        namespace: from.namespace.clone(),
        labels,
        ..ObjectMeta::default()
    }
}

/// A Namespace: name and labels (`namespaceSelector`s).
pub fn namespace(ns: &Namespace) -> Source {
    render(
        "namespaces",
        &Namespace {
            metadata: meta(&ns.metadata, ns.metadata.labels.clone()),
            ..Namespace::default()
        },
    )
}

/// A NetworkPolicy, whole but for its managedFields and status (noise,
/// and never policy).
pub fn network_policy(np: &NetworkPolicy) -> Source {
    let mut np = np.clone();
    np.metadata.managed_fields = None;
    np.metadata.annotations = None;
    render("networkpolicies", &np)
}

/// A Node: its name and `status.addresses` (what counts as a node IP).
pub fn node(n: &Node) -> Source {
    render(
        "nodes",
        &Node {
            metadata: meta(&n.metadata, None),
            status: Some(NodeStatus {
                addresses: n.status.as_ref().and_then(|s| s.addresses.clone()),
                ..NodeStatus::default()
            }),
            ..Node::default()
        },
    )
}

/// A Service: its addresses (cluster, external, load balancer) and ports.
pub fn service(s: &Service) -> Source {
    let spec = s.spec.as_ref();
    let ports = spec.and_then(|spec| spec.ports.as_ref()).map(|ports| {
        ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                port: p.port,
                target_port: p.target_port.clone(),
                node_port: p.node_port,
                ..ServicePort::default()
            })
            .collect()
    });
    let ingress: Option<Vec<LoadBalancerIngress>> = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| {
            ingress
                .iter()
                .filter(|i| i.ip.is_some())
                .map(|i| LoadBalancerIngress {
                    ip: i.ip.clone(),
                    ..LoadBalancerIngress::default()
                })
                .collect()
        })
        .filter(|v: &Vec<_>| !v.is_empty());
    render(
        "services",
        &Service {
            metadata: meta(&s.metadata, None),
            spec: spec.map(|spec| ServiceSpec {
                type_: spec.type_.clone(),
                cluster_ip: spec.cluster_ip.clone(),
                cluster_ips: spec.cluster_ips.clone(),
                ports,
                external_ips: spec.external_ips.clone(),
                external_name: spec.external_name.clone(),
                ..ServiceSpec::default()
            }),
            status: ingress.map(|ingress| ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress),
                }),
                ..ServiceStatus::default()
            }),
        },
    )
}

/// Only the kind, namespace and name of a target reference.
fn target(r: &ObjectReference) -> ObjectReference {
    ObjectReference {
        kind: r.kind.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        ..ObjectReference::default()
    }
}

/// A `discovery.k8s.io/v1` EndpointSlice, reduced to its Service label,
/// address type, endpoints (addresses, ready, node, target) and ports.
pub fn endpoint_slice(s: &EndpointSlice) -> Source {
    let labels = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|svc| BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), svc.clone())]));
    render(
        "endpointslices",
        &EndpointSlice {
            metadata: meta(&s.metadata, labels),
            address_type: s.address_type.clone(),
            endpoints: s.endpoints.as_ref().map(|endpoints| {
                endpoints
                    .iter()
                    .map(|e| Endpoint {
                        addresses: e.addresses.clone(),
                        conditions: e.conditions.as_ref().map(|c| EndpointConditions {
                            ready: c.ready,
                            ..EndpointConditions::default()
                        }),
                        node_name: e.node_name.clone(),
                        target_ref: e.target_ref.as_ref().map(target),
                        ..Endpoint::default()
                    })
                    .collect()
            }),
            ports: s.ports.as_ref().map(|ports| {
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: p.name.clone(),
                        protocol: p.protocol.clone(),
                        port: p.port,
                        ..EndpointPort::default()
                    })
                    .collect()
            }),
        },
    )
}

/// An EndpointSlice read as a [`DynamicObject`] (`v1` or `v1beta1`) as a
/// v1 document. v1beta1 differs from v1 only in fields the policy layer
/// does not read (`topology`, dropped), except that on 1.20 `nodeName` is
/// behind an alpha gate: the node then comes from the
/// `kubernetes.io/hostname` topology key, as v1's own conversion does.
pub fn dynamic_endpoint_slice(o: &DynamicObject) -> Result<Source, String> {
    let mut value = serde_json::to_value(o).map_err(|e| e.to_string())?;
    value["apiVersion"] = "discovery.k8s.io/v1".into();
    value["kind"] = "EndpointSlice".into();
    if let Some(endpoints) = value
        .get_mut("endpoints")
        .and_then(serde_json::Value::as_array_mut)
    {
        for e in endpoints {
            let host = e
                .pointer("/topology/kubernetes.io~1hostname")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            if let (Some(host), None) = (host, e.get("nodeName")) {
                e["nodeName"] = host.into();
            }
        }
    }
    let slice: EndpointSlice = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok(endpoint_slice(&slice))
}

/// `v1 Endpoints` as EndpointSlice v1 documents: one per subset and
/// address family (a slice has one port list and one address type; the
/// API server's own mirroring splits the same way). Ready endpoints are
/// `addresses`, not-ready ones `notReadyAddresses`. Addresses that do not
/// parse are left out: one bad object must not make the whole set invalid.
pub fn endpoints(e: &Endpoints) -> Vec<Source> {
    let name = e.metadata.name.clone().unwrap_or_default();
    let mut chunks = Vec::new();
    for (i, subset) in e.subsets.iter().flatten().enumerate() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                port: Some(p.port),
                ..EndpointPort::default()
            })
            .collect();
        for (family, v6) in [("IPv4", false), ("IPv6", true)] {
            let ready = subset.addresses.iter().flatten().map(|a| (a, true));
            let not_ready = subset
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a, false));
            let endpoints: Vec<Endpoint> = ready
                .chain(not_ready)
                .filter_map(|(a, ready)| {
                    let ip: IpAddr = a.ip.trim().parse().ok()?;
                    (ip.is_ipv6() == v6).then(|| endpoint_of(a, ip, ready))
                })
                .collect();
            if !endpoints.is_empty() {
                chunks.push((i, family, endpoints, ports.clone()));
            }
        }
    }
    let alone = chunks.len() == 1;
    chunks
        .into_iter()
        .map(|(i, family, endpoints, ports)| {
            let slice_name = if alone {
                name.clone()
            } else {
                format!("{name}-{i}-{}", family.to_ascii_lowercase())
            };
            endpoint_slice(&EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name),
                    namespace: e.metadata.namespace.clone(),
                    labels: Some(BTreeMap::from([(
                        SERVICE_NAME_LABEL.to_owned(),
                        name.clone(),
                    )])),
                    ..ObjectMeta::default()
                },
                address_type: family.into(),
                endpoints: Some(endpoints),
                ports: Some(ports),
            })
        })
        .collect()
}

fn endpoint_of(a: &EndpointAddress, ip: IpAddr, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![ip.to_canonical().to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..EndpointConditions::default()
        }),
        node_name: a.node_name.clone(),
        target_ref: a.target_ref.as_ref().map(target),
        ..Endpoint::default()
    }
}

/// The served `networking.istio.io` version whose ServiceEntries are
/// watched: Events about them must name it. Set once, at discovery.
pub static SERVICE_ENTRY_VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// An Istio ServiceEntry read as a [`DynamicObject`], as a document of its
/// own apiVersion: only its name, namespace and `spec` (every served
/// version has the same spec). Istio's own validation is not repeated:
/// the agent's finds what it cannot use, and quarantines only that entry.
pub fn dynamic_service_entry(o: &DynamicObject) -> Source {
    let api_version = o
        .types
        .as_ref()
        .map_or(egress_policy::objects::ISTIO_NETWORKING_V1, |t| {
            t.api_version.as_str()
        });
    let doc = serde_json::json!({
        "apiVersion": api_version,
        "kind": "ServiceEntry",
        "metadata": {
            "name": o.metadata.name,
            "namespace": o.metadata.namespace,
        },
        "spec": o.data.get("spec").cloned().unwrap_or_else(|| serde_json::json!({})),
    });
    let name = o.metadata.name.as_deref().unwrap_or_default();
    let namespace = o.metadata.namespace.as_deref().unwrap_or("default");
    Source {
        file: Arc::from(Path::new(&format!(
            "kubernetes/serviceentries/{namespace}/{name}"
        ))),
        // A `Value` of plain JSON always serializes.
        text: serde_json::to_string_pretty(&doc)
            .unwrap_or_default()
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn yaml(source: &Source) -> serde_json::Value {
        serde_yaml::from_str(&source.text).expect("yaml")
    }

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("an API object")
    }

    /// The validator reads plain scalars as kubectl does (`yes` is a
    /// boolean), so stored strings that look like YAML 1.1 booleans or
    /// numbers must reach it quoted.
    #[test]
    fn stored_strings_stay_strings() {
        let ns: Namespace = from(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"a": "yes", "b": "on", "c": "0120", "d": "1_000"}}
        }));
        let loaded = egress_policy::load_sources(&[namespace(&ns)]).expect("valid");
        let labels = &loaded.model.namespaces["shop"].labels;
        for (k, v) in [("a", "yes"), ("b", "on"), ("c", "0120"), ("d", "1_000")] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{labels:?}");
        }
    }

    #[test]
    fn a_node_keeps_its_name_and_addresses_only() {
        let n: Node = from(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-b", "labels": {"kubernetes.io/os": "linux"},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"},
                                     {"type": "Hostname", "address": "node-b"}],
                       "capacity": {"cpu": "2"}, "images": [{"names": ["pause"]}]}
        }));
        let s = node(&n);
        assert_eq!(&*s.file, Path::new("kubernetes/nodes/node-b"));
        assert_eq!(
            yaml(&s),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"},
                   "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"},
                                            {"type": "Hostname", "address": "node-b"}]}})
        );
    }

    #[test]
    fn a_service_keeps_its_addresses_and_ports_only() {
        let svc: Service = from(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u",
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                     "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                     "ipFamilies": ["IPv4", "IPv6"], "sessionAffinity": "None",
                     "externalIPs": ["192.0.2.10"],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                "targetPort": "http", "nodePort": 30080, "appProtocol": "http"},
                               {"port": 53, "protocol": "UDP", "targetPort": 5353}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"},
                                                    {"hostname": "lb.example"}]}}
        }));
        assert_eq!(
            yaml(&service(&svc)),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "shop"},
                   "spec": {"type": "LoadBalancer",
                            "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                            "externalIPs": ["192.0.2.10"],
                            "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                       "targetPort": "http", "nodePort": 30080},
                                      {"port": 53, "protocol": "UDP", "targetPort": 5353}]},
                   "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}})
        );
        let external: Service = from(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"}
        }));
        assert_eq!(
            yaml(&service(&external))["spec"],
            json!({"type": "ExternalName", "externalName": "db.example.com"})
        );
    }

    /// One slice as discovery.k8s.io/v1 writes it, and what is kept of it.
    fn v1_slice() -> serde_json::Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web",
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u"}]},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.10"], "conditions": {"ready": true, "serving": true},
                 "nodeName": "node-b", "zone": "z1",
                 "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "p1",
                               "resourceVersion": "12"}},
                {"addresses": ["10.244.2.11"], "conditions": {"ready": false},
                 "nodeName": "node-c"}
            ],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "appProtocol": "http"}]
        })
    }

    fn kept_slice() -> serde_json::Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.10"], "conditions": {"ready": true},
                 "nodeName": "node-b",
                 "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1"}},
                {"addresses": ["10.244.2.11"], "conditions": {"ready": false},
                 "nodeName": "node-c"}
            ],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
        })
    }

    #[test]
    fn a_v1_endpoint_slice_keeps_its_service_endpoints_and_ports() {
        let s = endpoint_slice(&from(v1_slice()));
        assert_eq!(
            &*s.file,
            Path::new("kubernetes/endpointslices/shop/web-abcde")
        );
        assert_eq!(yaml(&s), kept_slice());
        // The same object read without a typed API, as the watch reads it.
        let dynamic: DynamicObject = from(v1_slice());
        assert_eq!(
            yaml(&dynamic_endpoint_slice(&dynamic).expect("converts")),
            kept_slice()
        );
    }

    #[test]
    fn a_v1beta1_endpoint_slice_becomes_the_same_v1_document() {
        // As a 1.20 API server serves it: `topology` instead of `zone`,
        // and `nodeName` behind an alpha gate, so absent on the first.
        let beta: DynamicObject = from(json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.10"], "conditions": {"ready": true},
                 "topology": {"kubernetes.io/hostname": "node-b",
                              "topology.kubernetes.io/zone": "z1"},
                 "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1"}},
                {"addresses": ["10.244.2.11"], "conditions": {"ready": false},
                 "nodeName": "node-c", "topology": {"kubernetes.io/hostname": "ignored"}}
            ],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
        }));
        assert_eq!(
            yaml(&dynamic_endpoint_slice(&beta).expect("converts")),
            kept_slice()
        );
        // A slice that does not fit the v1 shape is refused, not guessed.
        let broken: DynamicObject = from(json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "x", "namespace": "shop"},
            "addressType": "IPv4", "endpoints": [{"addresses": "10.0.0.1"}]
        }));
        assert!(dynamic_endpoint_slice(&broken).is_err());
    }

    #[test]
    fn endpoints_become_one_slice_per_subset_and_family() {
        let e: Endpoints = from(json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "web", "namespace": "shop"},
            "subsets": [{
                "addresses": [{"ip": "10.244.1.10", "nodeName": "node-b",
                               "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "p1"}}],
                "notReadyAddresses": [{"ip": "10.244.2.11", "nodeName": "node-c"}],
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
            }]
        }));
        let slices = endpoints(&e);
        assert_eq!(slices.len(), 1);
        let mut want = kept_slice();
        want["metadata"]["name"] = "web".into();
        assert_eq!(yaml(&slices[0]), want);

        // Dual-stack and two port sets: four slices, none mixing families
        // or ports; an address that does not parse is left out.
        let e: Endpoints = from(json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [
                {"addresses": [{"ip": "172.18.0.2"}, {"ip": "fd00::2"}, {"ip": "bogus"}],
                 "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]},
                {"addresses": [{"ip": "172.18.0.3"}, {"ip": "fd00::0:3"}],
                 "ports": [{"name": "metrics", "port": 9100, "protocol": "TCP"}]}
            ]
        }));
        let slices: Vec<_> = endpoints(&e).iter().map(yaml).collect();
        let summary: Vec<_> = slices
            .iter()
            .map(|s| {
                (
                    s["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    s["addressType"].as_str().unwrap_or_default().to_owned(),
                    s["endpoints"][0]["addresses"][0]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    s["ports"][0]["port"].as_i64().unwrap_or_default(),
                    s["metadata"]["labels"][SERVICE_NAME_LABEL].clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "kubernetes-0-ipv4".into(),
                    "IPv4".into(),
                    "172.18.0.2".into(),
                    6443,
                    json!("kubernetes")
                ),
                (
                    "kubernetes-0-ipv6".into(),
                    "IPv6".into(),
                    "fd00::2".into(),
                    6443,
                    json!("kubernetes")
                ),
                (
                    "kubernetes-1-ipv4".into(),
                    "IPv4".into(),
                    "172.18.0.3".into(),
                    9100,
                    json!("kubernetes")
                ),
                (
                    "kubernetes-1-ipv6".into(),
                    "IPv6".into(),
                    "fd00::3".into(),
                    9100,
                    json!("kubernetes")
                ),
            ]
        );
        assert!(slices
            .iter()
            .all(|s| s["endpoints"].as_array().map(Vec::len) == Some(1)));
        // An Endpoints object without subsets (a Service without backends)
        // is no slice: its Service has no backend either way.
        let empty: Endpoints = from(json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "idle", "namespace": "shop"}}));
        assert!(endpoints(&empty).is_empty());
    }

    /// Whatever an API server accepts must not make the node's set invalid
    /// (which would freeze the policy in force): headless, ExternalName,
    /// dual-stack and port-less Services, FQDN and empty slices.
    #[test]
    fn objects_an_api_server_accepts_are_valid_documents() {
        let mut sources = vec![
            service(&from(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "headless", "namespace": "shop"},
                "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"},
                         "ports": [{"port": 5432}]}}))),
            service(&from(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "ext", "namespace": "shop"},
                "spec": {"type": "ExternalName", "externalName": "db.example.com"}}))),
            service(&from(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "dual", "namespace": "shop"},
                "spec": {"type": "NodePort", "clusterIP": "10.96.0.30",
                         "clusterIPs": ["10.96.0.30", "fd00:96::30"],
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                    "nodePort": 30080, "protocol": "TCP"},
                                   {"name": "q", "port": 443, "protocol": "UDP"}]}}))),
            endpoint_slice(&from(
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "ext-1", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "ext"}},
                "addressType": "FQDN",
                "endpoints": [{"addresses": ["db.example.com"]}],
                "ports": [{"port": 5432}]}),
            )),
            endpoint_slice(&from(
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "dual-1", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "dual"}},
                "addressType": "IPv6", "endpoints": [],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
            )),
            node(&from(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}}),
            )),
        ];
        sources.extend(endpoints(&from(
            json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "dual", "namespace": "shop"},
            "subsets": [{"addresses": [{"ip": "fd00::8"}], "ports": [{"port": 8080}]}]}),
        )));
        if let Err(e) = egress_policy::load_sources(&sources) {
            let errors: Vec<_> = e
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(ToString::to_string)
                .collect();
            assert!(errors.is_empty(), "{errors:#?}");
        }
    }
}
