//! Pod → slim pod → Workload(s).
//!
//! Pods are watched on every node, but only a few fields of each are kept
//! ([`SlimPod`], made by [`slim`] as each watch event arrives): at 10k pods,
//! whole Pod objects (managedFields, specs, statuses) would cost tens of
//! MiB for fields no policy reads.
//!
//! A pod on **this node** becomes, once its cgroup is found ([`convert`]):
//!
//! - one **app workload**, named like the pod, whose cgroup is the pod's
//!   directory (so every container of the pod is covered, including ones
//!   whose id is not in the status yet), with the pod's labels and
//!   annotations (Istio's `traffic.sidecar.istio.io/*` are then parsed by
//!   the same code as for Workload files), its `status.podIPs`, its
//!   named container ports, and `spec.sidecar: true` when the pod has the
//!   sidecar container (a Redirect's default `capture: Sidecar` captures
//!   only such pods, as Istio captures only the pods it injected);
//! - if the pod has the sidecar container (`--sidecar-container`, default
//!   `istio-proxy`; a regular container or a native sidecar init container),
//!   one **proxy workload** `<pod>.<container>` for that container's
//!   directory, with the label `egress.enforcer.dev/container: <name>`,
//!   which Redirects' `proxy.selector` select. It is deeper than the pod's
//!   directory, so the programs' walk finds it first.
//!
//! Until the sidecar's container id is in the status, a pod with a sidecar
//! is left *waiting* (the guarded root's pending policy applies to it):
//! otherwise the proxy would be captured by its own pod's Redirect.
//! hostNetwork pods are *exempt*: their traffic is the node's, which
//! NetworkPolicy does not govern.
//!
//! A pod on **another node** becomes a *peer* ([`peer`]): a Workload
//! without `spec.cgroup`, whose addresses, labels and named ports match
//! NetworkPolicy selectors and which is never enforced here. hostNetwork
//! pods are not peers (their address is their node's, which comes from
//! the Node), and a pod without an address yet is left out until it has
//! one: it cannot be reached before.

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::cgroups::{self, CgroupIndex};
use egress_policy::{model::ObjectId, validate::annotations, Source};

/// The label that marks a sidecar container's workload.
pub const CONTAINER_LABEL: &str = "egress.enforcer.dev/container";

/// Labels in this agent's own prefix are set by the agent only; a pod that
/// carries them has them removed, so it cannot pass for its own proxy.
const RESERVED_LABEL_PREFIX: &str = "egress.enforcer.dev/";

/// What the agent keeps of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlimPod {
    pub id: ObjectId,
    pub node_name: Option<String>,
    pub host_network: bool,
    /// Without the agent's reserved prefix, sorted by key. A boxed slice,
    /// not a map: a B-tree node has room for 11 entries whatever the
    /// count, which made labels half of a peer's memory.
    pub labels: Box<[(String, String)]>,
    /// `status.podIPs` (else `status.podIP`), parsed and canonical.
    pub ips: Vec<IpAddr>,
    /// Addresses that did not parse: (field, value), reported at each build.
    pub bad_ips: Vec<(String, String)>,
    /// Named container ports (not the sidecar's).
    pub ports: Vec<NamedPort>,
    /// Only for pods on this node: what enforcing them needs. Boxed, so
    /// the far more numerous peers do not pay for it.
    pub local: Option<Box<LocalPod>>,
    /// `metadata.resourceVersion`: a peer's document is written again only
    /// when it changes.
    pub revision: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: i32,
    pub protocol: String,
}

impl SlimPod {
    /// The labels as the documents write them.
    pub fn label_map(&self) -> BTreeMap<String, String> {
        self.labels.iter().cloned().collect()
    }
}

/// The fields of a pod on this node that enforcing it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    pub uid: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// `None`: the pod has no sidecar container. `Some(None)`: it has one
    /// whose container id is not in the status yet.
    pub sidecar: Option<Option<String>>,
}

/// Keeps what the agent needs of `pod`, or `None` when the pod is nothing
/// to it: finished (its address may already be another pod's), or on
/// another node and either hostNetwork or without an address yet.
pub fn slim(pod: &Pod, node_name: &str, sidecar: &str) -> Option<SlimPod> {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let spec = pod.spec.as_ref();
    let on_node = spec.and_then(|s| s.node_name.as_deref());
    let local = on_node == Some(node_name);
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    if !local && host_network {
        return None;
    }
    let (ips, bad_ips) = addresses(pod);
    if !local && ips.is_empty() {
        return None;
    }
    let id = ObjectId::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    );
    // The API's labels are a BTreeMap: already sorted by key.
    let labels = meta
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with(RESERVED_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let containers = spec.map_or(&[][..], |s| &s.containers[..]);
    let ports = containers
        .iter()
        .filter(|c| c.name != sidecar)
        .flat_map(|c| c.ports.as_deref().unwrap_or(&[]))
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                port: p.container_port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
        })
        .collect();
    let local = local.then(|| {
        let native_sidecars = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or(&[])
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let has_sidecar = containers
            .iter()
            .chain(native_sidecars)
            .any(|c| c.name == sidecar);
        let sidecar = has_sidecar.then(|| {
            status
                .into_iter()
                .flat_map(|s| {
                    s.container_statuses
                        .iter()
                        .flatten()
                        .chain(s.init_container_statuses.iter().flatten())
                })
                .find(|s| s.name == sidecar)
                .and_then(|s| s.container_id.clone())
        });
        Box::new(LocalPod {
            uid: meta.uid.clone(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            sidecar,
        })
    });
    Some(SlimPod {
        id,
        node_name: on_node.map(str::to_owned),
        host_network,
        labels,
        ips,
        bad_ips,
        ports,
        local,
        revision: meta.resource_version.clone(),
    })
}

/// What became of one pod on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Its workloads, as Workload documents.
    Ready(Vec<Source>),
    /// A hostNetwork pod: its cgroup is exempt.
    Exempt { id: ObjectId, cgroup: String },
    /// Not enforceable yet, and why; the pending policy covers it.
    Waiting(&'static str),
}

/// A problem with a pod's fields, reported and worked around without ever
/// allowing more: a bad address is left out (peers allow less), bad Istio
/// annotations are dropped (the Redirect's own rules apply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub pod: ObjectId,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pod {}: {}: {}", self.pod, self.field, self.message)
    }
}

fn report_bad_ips(pod: &SlimPod, problems: &mut Vec<Problem>) {
    for (field, ip) in &pod.bad_ips {
        problems.push(Problem {
            pod: pod.id.clone(),
            field: field.clone(),
            message: format!("invalid IP address {ip:?}; left out"),
        });
    }
}

/// Converts one pod of this node. `index` is a fresh walk of the cgroup
/// tree; `mount` is the cgroup2 mount, for container directories. A pod of
/// another node is `Waiting`: use [`peer`] for it.
pub fn convert(
    pod: &SlimPod,
    index: &CgroupIndex,
    mount: &Path,
    sidecar: &str,
    problems: &mut Vec<Problem>,
) -> PodState {
    let id = &pod.id;
    let Some(local) = pod.local.as_deref() else {
        return PodState::Waiting("not on this node");
    };
    let Some(uid) = local.uid.as_deref() else {
        problems.push(Problem {
            pod: id.clone(),
            field: "metadata.uid".into(),
            message: "missing: the pod's cgroup cannot be found without it".into(),
        });
        return PodState::Waiting("no metadata.uid");
    };
    let Some(pod_dir) = index.pods.get(uid) else {
        return PodState::Waiting("no pod<uid> cgroup yet");
    };
    if pod.host_network {
        return PodState::Exempt {
            id: id.clone(),
            cgroup: pod_dir.clone(),
        };
    }
    report_bad_ips(pod, problems);
    let addresses: Vec<String> = pod.ips.iter().map(ToString::to_string).collect();
    let ports: Vec<serde_json::Value> = pod.ports.iter().map(port_json).collect();

    let mut docs = Vec::new();
    if let Some(status_id) = &local.sidecar {
        let Some(container_id) = status_id.as_deref().and_then(cgroups::container_id) else {
            return PodState::Waiting("sidecar container not started yet");
        };
        let Some(dir) = cgroups::container_dir(mount, pod_dir, container_id) else {
            return PodState::Waiting("sidecar container cgroup not found yet");
        };
        let mut proxy_labels = pod.label_map();
        proxy_labels.insert(CONTAINER_LABEL.into(), sidecar.into());
        docs.push(WorkloadDoc {
            id: ObjectId::new(id.namespace.clone(), format!("{}.{sidecar}", id.name)),
            labels: proxy_labels,
            annotations: local.annotations.clone(),
            cgroup: Some(dir),
            node_name: None,
            addresses: Vec::new(),
            ports: Vec::new(),
            sidecar: false,
        });
    }
    docs.push(WorkloadDoc {
        id: id.clone(),
        labels: pod.label_map(),
        annotations: local.annotations.clone(),
        cgroup: Some(pod_dir.clone()),
        node_name: None,
        addresses,
        ports,
        sidecar: local.sidecar.is_some(),
    });
    PodState::Ready(
        docs.into_iter()
            .map(|d| d.into_checked_source(id, problems))
            .collect(),
    )
}

/// A pod of another node as a peer: a Workload without `spec.cgroup`.
/// Its only input besides what the API server validated (names, labels,
/// ports) is its addresses, parsed already, so it is not checked alone as
/// local pods are (at 10k pods that check would dominate every rebuild).
pub fn peer(pod: &SlimPod, problems: &mut Vec<Problem>) -> Option<Source> {
    if pod.local.is_some() || pod.host_network || pod.ips.is_empty() {
        return None;
    }
    report_bad_ips(pod, problems);
    let doc = WorkloadDoc {
        id: pod.id.clone(),
        labels: pod.label_map(),
        annotations: BTreeMap::new(),
        cgroup: None,
        node_name: pod.node_name.clone(),
        addresses: pod.ips.iter().map(ToString::to_string).collect(),
        ports: pod.ports.iter().map(port_json).collect(),
        sidecar: false,
    };
    Some(doc.source(&BTreeMap::new()))
}

fn port_json(p: &NamedPort) -> serde_json::Value {
    json!({"name": p.name, "port": p.port, "protocol": p.protocol})
}

/// `status.podIPs[].ip`, else `status.podIP`: the good ones (canonical) and
/// the bad ones with their field.
fn addresses(pod: &Pod) -> (Vec<IpAddr>, Vec<(String, String)>) {
    let Some(status) = &pod.status else {
        return (Vec::new(), Vec::new());
    };
    let listed: Vec<(String, &str)> = match status.pod_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
            .collect(),
        _ => status
            .pod_ip
            .iter()
            .map(|ip| ("status.podIP".to_owned(), ip.as_str()))
            .collect(),
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (field, ip) in listed {
        match ip.trim().parse::<IpAddr>() {
            Ok(ip) => good.push(ip.to_canonical()),
            Err(_) => bad.push((field, ip.to_owned())),
        }
    }
    (good, bad)
}

/// One Workload object, before it is written as YAML.
struct WorkloadDoc {
    id: ObjectId,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    /// `None`: a peer on another node.
    cgroup: Option<String>,
    node_name: Option<String>,
    addresses: Vec<String>,
    ports: Vec<serde_json::Value>,
    /// The pod has the sidecar container (set on its app workload only).
    sidecar: bool,
}

impl WorkloadDoc {
    fn source(&self, annotations: &BTreeMap<String, String>) -> Source {
        let mut metadata = json!({
            "name": self.id.name,
            "namespace": self.id.namespace,
            "labels": self.labels,
        });
        if !annotations.is_empty() {
            metadata["annotations"] = json!(annotations);
        }
        let mut spec = json!({
            "addresses": self.addresses,
            "ports": self.ports,
        });
        if let Some(cgroup) = &self.cgroup {
            spec["cgroup"] = json!(cgroup);
        }
        if let Some(node) = &self.node_name {
            spec["nodeName"] = json!(node);
        }
        if self.sidecar {
            spec["sidecar"] = json!(true);
        }
        let doc = json!({
            "apiVersion": egress_policy::objects::EXTENSION_API_VERSION,
            "kind": "Workload",
            "metadata": metadata,
            "spec": spec,
        });
        // As JSON (every string quoted, see `objects::render`). A `Value`
        // of strings, numbers, maps and lists always serializes.
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        Source {
            file: Arc::from(Path::new(&format!(
                "kubernetes/pods/{}/{}",
                self.id.namespace, self.id.name
            ))),
            text: text.into(),
        }
    }

    /// The document, checked alone by the policy validator. A pod must not
    /// be able to make the whole node's policy set invalid (which would
    /// freeze it), so a document with errors is reported and written again
    /// without its Istio annotations, the only free-form input it takes
    /// from the pod; the Redirect's own capture rules then apply.
    fn into_checked_source(self, pod: &ObjectId, problems: &mut Vec<Problem>) -> Source {
        let source = self.source(&self.annotations);
        let Err(rejected) = egress_policy::load_sources(std::slice::from_ref(&source)) else {
            return source;
        };
        for d in rejected.diagnostics.into_iter().filter(|d| d.is_error()) {
            let field = d
                .field
                .as_ref()
                .map_or_else(|| "metadata".to_owned(), |f| f.to_string());
            problems.push(Problem {
                pod: pod.clone(),
                field,
                message: format!("{}; the Istio annotations are ignored", d.message),
            });
        }
        let mut kept = self.annotations.clone();
        kept.retain(|k, _| {
            ![
                annotations::INCLUDE_IP_RANGES,
                annotations::EXCLUDE_IP_RANGES,
                annotations::INCLUDE_PORTS,
                annotations::EXCLUDE_PORTS,
                annotations::INTERCEPTION_MODE,
            ]
            .contains(&k.as_str())
        });
        self.source(&kept)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use egress_policy::model::IpRanges;

    const UID: &str = "0b6a3c1e-8a52-4f1e-9c1a-2f4d5e6a7b8c";
    const CID: &str = "aaaabbbbccccdddd";
    const NODE: &str = "node-a";

    /// The slim form of a pod of this node, as the watch keeps it.
    fn here(p: &Pod, sidecar: &str) -> SlimPod {
        slim(p, NODE, sidecar).expect("kept")
    }

    fn mount(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("egress-pod-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join(format!("kubepods/burstable/pod{UID}/{CID}")))
            .expect("mkdir");
        d
    }

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            ..Container::default()
        }
    }

    fn pod(containers: &[&str]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("sleep".into()),
                namespace: Some("default".into()),
                uid: Some(UID.into()),
                labels: Some(BTreeMap::from([
                    ("app".into(), "sleep".into()),
                    (CONTAINER_LABEL.into(), "istio-proxy".into()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(NODE.into()),
                containers: containers.iter().map(|c| container(c)).collect(),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ips: Some(vec![
                    PodIP {
                        ip: "10.244.1.10".into(),
                    },
                    PodIP {
                        ip: "fd00:10:244::a".into(),
                    },
                ]),
                ..PodStatus::default()
            }),
        }
    }

    fn model_of(state: &PodState) -> egress_policy::Model {
        let PodState::Ready(sources) = state else {
            panic!("not ready: {state:?}");
        };
        egress_policy::load_sources(sources)
            .expect("valid workloads")
            .model
    }

    fn with_sidecar_status(mut p: Pod, id: &str) -> Pod {
        if let Some(s) = p.status.as_mut() {
            s.container_statuses = Some(vec![ContainerStatus {
                name: "istio-proxy".into(),
                container_id: Some(format!("containerd://{id}")),
                ..ContainerStatus::default()
            }]);
        }
        p
    }

    #[test]
    fn a_pod_without_sidecar_is_one_workload_on_its_pod_directory() {
        let m = mount("plain");
        let index = cgroups::scan(&m, "", cgroups::MAX_DEPTH);
        let mut problems = Vec::new();
        let state = convert(
            &here(&pod(&["app"]), "istio-proxy"),
            &index,
            &m,
            "istio-proxy",
            &mut problems,
        );
        let model = model_of(&state);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(model.workloads.len(), 1);
        let w = &model.workloads[0];
        assert_eq!(w.id, ObjectId::new("default", "sleep"));
        assert_eq!(w.cgroup, Some(format!("kubepods/burstable/pod{UID}")));
        assert_eq!(w.addresses.len(), 2, "both podIPs");
        assert!(
            !w.labels.contains_key(CONTAINER_LABEL),
            "a pod cannot label itself the proxy"
        );
        assert!(!w.sidecar, "no sidecar: a default Redirect leaves it alone");
        std::fs::remove_dir_all(&m).ok();
    }

    #[test]
    fn the_sidecar_is_its_own_workload_once_its_container_is_known() {
        let m = mount("sidecar");
        let index = cgroups::scan(&m, "", cgroups::MAX_DEPTH);
        let mut problems = Vec::new();
        let p = pod(&["app", "istio-proxy"]);
        assert_eq!(
            convert(
                &here(&p, "istio-proxy"),
                &index,
                &m,
                "istio-proxy",
                &mut problems
            ),
            PodState::Waiting("sidecar container not started yet")
        );
        let p = with_sidecar_status(p, CID);
        let model = model_of(&convert(
            &here(&p, "istio-proxy"),
            &index,
            &m,
            "istio-proxy",
            &mut problems,
        ));
        let proxy = model
            .workload(&ObjectId::new("default", "sleep.istio-proxy"))
            .expect("proxy workload");
        assert_eq!(
            proxy.cgroup,
            Some(format!("kubepods/burstable/pod{UID}/{CID}"))
        );
        assert_eq!(
            proxy.labels.get(CONTAINER_LABEL).map(String::as_str),
            Some("istio-proxy")
        );
        assert!(proxy.addresses.is_empty());
        let app = model
            .workload(&ObjectId::new("default", "sleep"))
            .expect("app workload");
        assert!(app.sidecar, "the app of a pod with a sidecar is captured");
        assert!(!proxy.sidecar);
        // Another name for the sidecar: then istio-proxy is just an app.
        let model = model_of(&convert(
            &here(&p, "envoy"),
            &index,
            &m,
            "envoy",
            &mut problems,
        ));
        assert_eq!(model.workloads.len(), 1);
        std::fs::remove_dir_all(&m).ok();
    }

    #[test]
    fn istio_annotations_are_honoured_and_bad_ones_reported_and_dropped() {
        let m = mount("annotations");
        let index = cgroups::scan(&m, "", cgroups::MAX_DEPTH);
        let mut p = pod(&["app"]);
        p.metadata.annotations = Some(BTreeMap::from([(
            annotations::INCLUDE_IP_RANGES.into(),
            "10.0.0.0/8".into(),
        )]));
        let mut problems = Vec::new();
        let model = model_of(&convert(
            &here(&p, "istio-proxy"),
            &index,
            &m,
            "istio-proxy",
            &mut problems,
        ));
        assert_eq!(
            model.workloads[0].capture_overrides.include_ip_ranges,
            Some(IpRanges::Only(vec!["10.0.0.0/8".parse().expect("net")]))
        );
        p.metadata.annotations = Some(BTreeMap::from([(
            annotations::EXCLUDE_PORTS.into(),
            "80,http".into(),
        )]));
        let model = model_of(&convert(
            &here(&p, "istio-proxy"),
            &index,
            &m,
            "istio-proxy",
            &mut problems,
        ));
        assert_eq!(model.workloads[0].capture_overrides.exclude_ports, None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let text = problems[0].to_string();
        assert!(text.starts_with("Pod default/sleep: "), "{text}");
        assert!(text.contains("excludeOutboundPorts"), "{text}");
        // More ports than the kernel's capture list holds: reported and
        // ignored like any bad annotation, never the node's whole apply.
        let many: Vec<String> = (0..17).map(|i| (9000 + 2 * i).to_string()).collect();
        p.metadata.annotations = Some(BTreeMap::from([(
            annotations::INCLUDE_PORTS.into(),
            many.join(","),
        )]));
        let mut problems = Vec::new();
        let model = model_of(&convert(
            &here(&p, "istio-proxy"),
            &index,
            &m,
            "istio-proxy",
            &mut problems,
        ));
        assert_eq!(model.workloads[0].capture_overrides.include_ports, None);
        assert!(
            problems.len() == 1
                && problems[0]
                    .message
                    .contains("17 distinct ports; at most 16"),
            "{problems:?}"
        );
        std::fs::remove_dir_all(&m).ok();
    }

    #[test]
    fn missing_status_cgroup_or_bad_addresses_never_give_more() {
        let m = mount("status");
        let index = cgroups::scan(&m, "", cgroups::MAX_DEPTH);
        let mut problems = Vec::new();
        // No status at all: enforced on its pod directory, no addresses.
        let mut p = pod(&["app"]);
        p.status = None;
        let model = model_of(&convert(
            &here(&p, "istio-proxy"),
            &index,
            &m,
            "istio-proxy",
            &mut problems,
        ));
        assert!(model.workloads[0].addresses.is_empty());
        // A pod whose cgroup is not there yet waits (pending applies).
        p.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
        assert_eq!(
            convert(
                &here(&p, "istio-proxy"),
                &index,
                &m,
                "istio-proxy",
                &mut problems
            ),
            PodState::Waiting("no pod<uid> cgroup yet")
        );
        // One bad address is reported and left out; the good one stays.
        let mut p = pod(&["app"]);
        if let Some(s) = p.status.as_mut() {
            s.pod_ips = Some(vec![
                PodIP {
                    ip: "10.244.1.300".into(),
                },
                PodIP {
                    ip: "10.244.1.11".into(),
                },
            ]);
        }
        let model = model_of(&convert(
            &here(&p, "istio-proxy"),
            &index,
            &m,
            "istio-proxy",
            &mut problems,
        ));
        assert_eq!(
            model.workloads[0].addresses,
            ["10.244.1.11".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "status.podIPs[0].ip");
        // Finished pods are nothing; hostNetwork pods are exempt.
        let mut done = pod(&["app"]);
        if let Some(s) = done.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        assert_eq!(slim(&done, NODE, "istio-proxy"), None);
        let mut host = pod(&["app"]);
        if let Some(s) = host.spec.as_mut() {
            s.host_network = Some(true);
        }
        assert!(matches!(
            convert(
                &here(&host, "istio-proxy"),
                &index,
                &m,
                "istio-proxy",
                &mut problems
            ),
            PodState::Exempt { .. }
        ));
        std::fs::remove_dir_all(&m).ok();
    }

    fn yaml(source: &Source) -> serde_yaml::Value {
        serde_yaml::from_str(&source.text).expect("yaml")
    }

    /// A pod of another node, with a named port and two addresses.
    fn elsewhere() -> Pod {
        let mut p = pod(&["app"]);
        if let Some(s) = p.spec.as_mut() {
            s.node_name = Some("node-b".into());
            s.containers[0].ports = Some(vec![
                k8s_openapi::api::core::v1::ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..Default::default()
                },
                k8s_openapi::api::core::v1::ContainerPort {
                    container_port: 9090,
                    ..Default::default()
                },
            ]);
        }
        p.metadata.annotations = Some(BTreeMap::from([(
            annotations::INCLUDE_IP_RANGES.into(),
            "10.0.0.0/8".into(),
        )]));
        p
    }

    #[test]
    fn a_pod_of_another_node_is_a_peer_without_cgroup() {
        let s = slim(&elsewhere(), NODE, "istio-proxy").expect("kept");
        assert!(s.local.is_none(), "nothing local is kept for a peer");
        assert_eq!(s.node_name.as_deref(), Some("node-b"));
        assert_eq!(s.ports.len(), 1, "named ports only");
        let mut problems = Vec::new();
        let doc = yaml(&peer(&s, &mut problems).expect("a peer"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(doc["apiVersion"], "egress.enforcer.dev/v1alpha1");
        assert_eq!(doc["kind"], "Workload");
        assert_eq!(doc["metadata"]["name"], "sleep");
        assert_eq!(doc["metadata"]["namespace"], "default");
        assert_eq!(doc["metadata"]["labels"]["app"], "sleep");
        assert!(
            doc["metadata"]["labels"].get(CONTAINER_LABEL).is_none(),
            "reserved labels are dropped on peers too"
        );
        assert!(
            doc["metadata"].get("annotations").is_none(),
            "a peer carries no capture settings"
        );
        assert!(doc["spec"].get("cgroup").is_none(), "never enforced here");
        assert_eq!(doc["spec"]["nodeName"], "node-b");
        assert_eq!(
            doc["spec"]["addresses"],
            serde_yaml::to_value(["10.244.1.10", "fd00:10:244::a"]).expect("v")
        );
        assert_eq!(doc["spec"]["ports"][0]["name"], "http");
        assert_eq!(doc["spec"]["ports"][0]["port"], 8080);
        assert_eq!(doc["spec"]["ports"][0]["protocol"], "TCP");
        // A local pod is never a peer, a peer never converts locally.
        let m = mount("peer");
        let index = cgroups::scan(&m, "", cgroups::MAX_DEPTH);
        assert_eq!(
            convert(&s, &index, &m, "istio-proxy", &mut problems),
            PodState::Waiting("not on this node")
        );
        assert!(peer(&here(&pod(&["app"]), "istio-proxy"), &mut problems).is_none());
        std::fs::remove_dir_all(&m).ok();
    }

    #[test]
    fn peers_without_an_address_and_host_network_pods_elsewhere_are_left_out() {
        let mut p = elsewhere();
        if let Some(s) = p.status.as_mut() {
            s.pod_ips = None;
            s.pod_ip = None;
        }
        assert_eq!(slim(&p, NODE, "istio-proxy"), None, "no IP yet");
        // The same pod on this node is kept: it is enforced by cgroup
        // before it has an address.
        if let Some(s) = p.spec.as_mut() {
            s.node_name = Some(NODE.into());
        }
        assert!(slim(&p, NODE, "istio-proxy").is_some());
        // Only a bad address: nothing a selector could match.
        let mut p = elsewhere();
        if let Some(s) = p.status.as_mut() {
            s.pod_ips = Some(vec![PodIP { ip: "nope".into() }]);
        }
        assert_eq!(slim(&p, NODE, "istio-proxy"), None);
        // The legacy single podIP is read when podIPs is absent.
        let mut p = elsewhere();
        if let Some(s) = p.status.as_mut() {
            s.pod_ips = None;
            s.pod_ip = Some("10.244.2.7".into());
        }
        let s = slim(&p, NODE, "istio-proxy").expect("kept");
        assert_eq!(s.ips, ["10.244.2.7".parse::<IpAddr>().expect("ip")]);
        let mut host = elsewhere();
        if let Some(s) = host.spec.as_mut() {
            s.host_network = Some(true);
        }
        assert_eq!(
            slim(&host, NODE, "istio-proxy"),
            None,
            "its address is its node's"
        );
        let mut done = elsewhere();
        if let Some(s) = done.status.as_mut() {
            s.phase = Some("Failed".into());
        }
        assert_eq!(slim(&done, NODE, "istio-proxy"), None);
    }

    #[test]
    fn a_local_pod_keeps_what_enforcing_it_needs() {
        let p = with_sidecar_status(pod(&["app", "istio-proxy"]), CID);
        let s = here(&p, "istio-proxy");
        let local = s.local.as_deref().expect("local");
        assert_eq!(local.uid.as_deref(), Some(UID));
        assert_eq!(
            local.sidecar,
            Some(Some(format!("containerd://{CID}"))),
            "the sidecar's container id"
        );
        assert_eq!(
            here(&pod(&["app"]), "istio-proxy")
                .local
                .and_then(|l| l.sidecar),
            None
        );
    }
}
