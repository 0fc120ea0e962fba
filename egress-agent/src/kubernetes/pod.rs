//! Pod → Workload(s): what the local inventory file would have said.
//!
//! Each running pod on the node becomes:
//!
//! - one **app workload**, named like the pod, whose cgroup is the pod's
//!   directory (so every container of the pod is covered, including ones
//!   whose id is not in the status yet), with the pod's labels and
//!   annotations (Istio's `traffic.sidecar.istio.io/*` are then parsed by
//!   the same code as for Workload files), its `status.podIPs` and its
//!   named container ports;
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

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::json;

use super::cgroups::{self, CgroupIndex};
use crate::policy::{self, model::ObjectId, validate::annotations, Source};

/// The label that marks a sidecar container's workload.
pub const CONTAINER_LABEL: &str = "egress.enforcer.dev/container";

/// Labels in this agent's own prefix are set by the agent only; a pod that
/// carries them has them removed, so it cannot pass for its own proxy.
const RESERVED_LABEL_PREFIX: &str = "egress.enforcer.dev/";

/// What became of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Its workloads, as Workload documents.
    Ready(Vec<Source>),
    /// A hostNetwork pod: its cgroup is exempt.
    Exempt { id: ObjectId, cgroup: String },
    /// Not enforceable yet, and why; the pending policy covers it.
    Waiting(&'static str),
    /// Finished (Succeeded or Failed): nothing runs, nothing to do.
    Finished,
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

/// Converts one pod. `index` is a fresh walk of the cgroup tree; `mount`
/// is the cgroup2 mount, for container directories.
pub fn convert(
    pod: &Pod,
    index: &CgroupIndex,
    mount: &Path,
    sidecar: &str,
    problems: &mut Vec<Problem>,
) -> PodState {
    let meta = &pod.metadata;
    let id = ObjectId::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    );
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return PodState::Finished;
    }
    let Some(uid) = meta.uid.as_deref() else {
        problems.push(Problem {
            pod: id,
            field: "metadata.uid".into(),
            message: "missing: the pod's cgroup cannot be found without it".into(),
        });
        return PodState::Waiting("no metadata.uid");
    };
    let Some(pod_dir) = index.pods.get(uid) else {
        return PodState::Waiting("no pod<uid> cgroup yet");
    };
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return PodState::Exempt {
            id,
            cgroup: pod_dir.clone(),
        };
    }

    let mut labels: BTreeMap<String, String> = meta.labels.clone().unwrap_or_default();
    labels.retain(|k, _| !k.starts_with(RESERVED_LABEL_PREFIX));
    let annotations: BTreeMap<String, String> = meta.annotations.clone().unwrap_or_default();
    let addresses = addresses(pod, &id, problems);

    let containers: &[Container] = spec.map_or(&[], |s| &s.containers);
    let native_sidecars = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let has_sidecar = containers
        .iter()
        .chain(native_sidecars)
        .any(|c| c.name == sidecar);
    let ports: Vec<serde_json::Value> = containers
        .iter()
        .filter(|c| c.name != sidecar)
        .flat_map(|c| c.ports.as_deref().unwrap_or(&[]))
        .filter_map(|p| {
            let name = p.name.as_ref()?;
            Some(json!({
                "name": name,
                "port": p.container_port,
                "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            }))
        })
        .collect();

    let mut docs = Vec::new();
    if has_sidecar {
        let status_id = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .find(|s| s.name == sidecar)
            .and_then(|s| s.container_id.as_deref());
        let Some(container_id) = status_id.and_then(cgroups::container_id) else {
            return PodState::Waiting("sidecar container not started yet");
        };
        let Some(dir) = cgroups::container_dir(mount, pod_dir, container_id) else {
            return PodState::Waiting("sidecar container cgroup not found yet");
        };
        let mut proxy_labels = labels.clone();
        proxy_labels.insert(CONTAINER_LABEL.into(), sidecar.into());
        docs.push(WorkloadDoc {
            id: ObjectId::new(id.namespace.clone(), format!("{}.{sidecar}", id.name)),
            labels: proxy_labels,
            annotations: annotations.clone(),
            cgroup: dir,
            addresses: Vec::new(),
            ports: Vec::new(),
        });
    }
    docs.push(WorkloadDoc {
        id: id.clone(),
        labels,
        annotations,
        cgroup: pod_dir.clone(),
        addresses,
        ports,
    });
    PodState::Ready(
        docs.into_iter()
            .map(|d| d.into_checked_source(&id, problems))
            .collect(),
    )
}

/// `status.podIPs[].ip`, else `status.podIP`; bad ones reported and left out.
fn addresses(pod: &Pod, id: &ObjectId, problems: &mut Vec<Problem>) -> Vec<String> {
    let Some(status) = &pod.status else {
        return Vec::new();
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
    let mut out = Vec::new();
    for (field, ip) in listed {
        match ip.trim().parse::<IpAddr>() {
            Ok(ip) => out.push(ip.to_canonical().to_string()),
            Err(_) => problems.push(Problem {
                pod: id.clone(),
                field,
                message: format!("invalid IP address {ip:?}; left out"),
            }),
        }
    }
    out
}

/// One Workload object, before it is written as YAML.
struct WorkloadDoc {
    id: ObjectId,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    cgroup: String,
    addresses: Vec<String>,
    ports: Vec<serde_json::Value>,
}

impl WorkloadDoc {
    fn source(&self, annotations: &BTreeMap<String, String>) -> Source {
        let doc = json!({
            "apiVersion": policy::objects::EXTENSION_API_VERSION,
            "kind": "Workload",
            "metadata": {
                "name": self.id.name,
                "namespace": self.id.namespace,
                "labels": self.labels,
                "annotations": annotations,
            },
            "spec": {
                "cgroup": self.cgroup,
                "addresses": self.addresses,
                "ports": self.ports,
            },
        });
        // A `Value` of strings, numbers, maps and lists always serializes.
        let text = serde_yaml::to_string(&doc).unwrap_or_default();
        Source {
            file: Arc::from(Path::new(&format!(
                "kubernetes/pods/{}/{}",
                self.id.namespace, self.id.name
            ))),
            text,
        }
    }

    /// The document, checked alone by the policy validator. A pod must not
    /// be able to make the whole node's policy set invalid (which would
    /// freeze it), so a document with errors is reported and written again
    /// without its Istio annotations, the only free-form input it takes
    /// from the pod; the Redirect's own capture rules then apply.
    fn into_checked_source(self, pod: &ObjectId, problems: &mut Vec<Problem>) -> Source {
        let source = self.source(&self.annotations);
        let Err(rejected) = policy::load_sources(std::slice::from_ref(&source)) else {
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
            ]
            .contains(&k.as_str())
        });
        self.source(&kept)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerStatus, PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::policy::model::IpRanges;

    const UID: &str = "0b6a3c1e-8a52-4f1e-9c1a-2f4d5e6a7b8c";
    const CID: &str = "aaaabbbbccccdddd";

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

    fn model_of(state: &PodState) -> crate::policy::Model {
        let PodState::Ready(sources) = state else {
            panic!("not ready: {state:?}");
        };
        policy::load_sources(sources)
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
        let state = convert(&pod(&["app"]), &index, &m, "istio-proxy", &mut problems);
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
        std::fs::remove_dir_all(&m).ok();
    }

    #[test]
    fn the_sidecar_is_its_own_workload_once_its_container_is_known() {
        let m = mount("sidecar");
        let index = cgroups::scan(&m, "", cgroups::MAX_DEPTH);
        let mut problems = Vec::new();
        let p = pod(&["app", "istio-proxy"]);
        assert_eq!(
            convert(&p, &index, &m, "istio-proxy", &mut problems),
            PodState::Waiting("sidecar container not started yet")
        );
        let p = with_sidecar_status(p, CID);
        let model = model_of(&convert(&p, &index, &m, "istio-proxy", &mut problems));
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
        assert!(model.workload(&ObjectId::new("default", "sleep")).is_some());
        // Another name for the sidecar: then istio-proxy is just an app.
        let model = model_of(&convert(&p, &index, &m, "envoy", &mut problems));
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
        let model = model_of(&convert(&p, &index, &m, "istio-proxy", &mut problems));
        assert_eq!(
            model.workloads[0].capture_overrides.include_ip_ranges,
            Some(IpRanges::Only(vec!["10.0.0.0/8".parse().expect("net")]))
        );
        p.metadata.annotations = Some(BTreeMap::from([(
            annotations::EXCLUDE_PORTS.into(),
            "80,http".into(),
        )]));
        let model = model_of(&convert(&p, &index, &m, "istio-proxy", &mut problems));
        assert_eq!(model.workloads[0].capture_overrides.exclude_ports, None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let text = problems[0].to_string();
        assert!(text.starts_with("Pod default/sleep: "), "{text}");
        assert!(text.contains("excludeOutboundPorts"), "{text}");
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
        let model = model_of(&convert(&p, &index, &m, "istio-proxy", &mut problems));
        assert!(model.workloads[0].addresses.is_empty());
        // A pod whose cgroup is not there yet waits (pending applies).
        p.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
        assert_eq!(
            convert(&p, &index, &m, "istio-proxy", &mut problems),
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
        let model = model_of(&convert(&p, &index, &m, "istio-proxy", &mut problems));
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
        assert_eq!(
            convert(&done, &index, &m, "istio-proxy", &mut problems),
            PodState::Finished
        );
        let mut host = pod(&["app"]);
        if let Some(s) = host.spec.as_mut() {
            s.host_network = Some(true);
        }
        assert!(matches!(
            convert(&host, &index, &m, "istio-proxy", &mut problems),
            PodState::Exempt { .. }
        ));
        std::fs::remove_dir_all(&m).ok();
    }
}
