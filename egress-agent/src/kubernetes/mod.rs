//! Kubernetes mode: the local inventory and the NetworkPolicies from the
//! API server.
//!
//! `egress-agent run --kubernetes` watches, with kube-runtime watchers
//! (re-list and re-watch with exponential backoff after any error):
//!
//! - the Pods on this node (`spec.nodeName=<node>`), which become
//!   Workloads ([`pod`]) once their cgroup is found ([`cgroups`]);
//! - every Namespace (their labels feed `namespaceSelector`s);
//! - every NetworkPolicy.
//!
//! Each is written as a YAML document and validated and compiled with the
//! files of `--policies` as one set ([`crate::agent::reload::Inventory`]):
//! the same code path as files, with findings that name the object and
//! field. EgressGateway and Redirect objects (and local Workloads) still
//! come from `--policies`, a directory the DaemonSet mounts from a
//! ConfigMap: no CRD has to be installed (which a 1.20 cluster would need
//! as `apiextensions.k8s.io/v1` with a full schema), the agent's RBAC stays
//! read-only on built-in kinds, and a ConfigMap edit reloads like a file
//! edit.
//!
//! The inventory is rebuilt (after [`DEBOUNCE`]) when an object changes,
//! when a directory appears or goes under a guarded root (inotify), and
//! every [`RESCAN_EVERY`] as a fallback; it is only published when it
//! differs, and never before all three listings are complete.

pub mod cgroups;
pub mod pod;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt as _,
    },
    Api, Client, Resource, ResourceExt as _,
};
use notify::{RecursiveMode, Watcher as _};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::{
    agent::reload::Inventory,
    compile::Guards,
    policy::{model::ObjectId, Source},
};

/// Changes closer together than this become one rebuild.
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// A full rebuild at least this often, whatever inotify says.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Why Kubernetes mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read the kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no in-cluster configuration (KUBERNETES_SERVICE_HOST and the service account token); outside a pod, pass --kubeconfig")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("cannot build the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("no node name: pass --node-name or set NODE_NAME (the downward API's spec.nodeName)")]
    NoNodeName,
}

/// Settings of Kubernetes mode.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    /// `None`: in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
    /// The container that is the pod's proxy (Istio: `istio-proxy`).
    pub sidecar: String,
    /// The cgroup2 mount.
    pub mount: PathBuf,
    /// Where the walk for pods' cgroups starts (relative to the mount):
    /// the agent's cgroup root.
    pub search_base: String,
    /// Guarded roots (relative to the mount); empty: none.
    pub guarded: Vec<String>,
    /// Always exempt (the agent's own cgroup, when below a guarded root).
    pub exempt: Vec<(ObjectId, String)>,
}

/// The client for `kubeconfig`, or the in-cluster one.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubeError::Kubeconfig {
                    path: path.to_owned(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.to_owned(),
                    source,
                })?
        }
        None => kube::Config::incluster().map_err(KubeError::InCluster)?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}

/// The node name: the flag, else `NODE_NAME`.
pub fn node_name(flag: Option<&str>) -> Result<String, KubeError> {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.trim().is_empty())
        .ok_or(KubeError::NoNodeName)
}

/// Starts the watchers and the inventory builder; the receiver gets the
/// first inventory once every listing is complete, then each change.
pub fn spawn(client: Client, settings: KubeSettings) -> watch::Receiver<Option<Inventory>> {
    let (tx, rx) = watch::channel(None);
    let (touch_tx, touch) = mpsc::unbounded_channel::<()>();
    let pods = start::<Pod>(
        Api::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node_name)),
        touch_tx.clone(),
    );
    let namespaces = start::<Namespace>(
        Api::all(client.clone()),
        watcher::Config::default(),
        touch_tx.clone(),
    );
    let policies = start::<NetworkPolicy>(
        Api::all(client),
        watcher::Config::default(),
        touch_tx.clone(),
    );
    tokio::spawn(build_loop(
        Stores {
            pods,
            namespaces,
            policies,
        },
        settings,
        touch,
        touch_tx,
        tx,
    ));
    rx
}

/// Runs one watcher into a reflector store, signalling `touch` on every
/// event. Errors are logged (naming the resource) and retried with the
/// watcher's default backoff; the stream itself never ends.
fn start<K>(api: Api<K>, config: watcher::Config, touch: mpsc::UnboundedSender<()>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    if failing {
                        info!(kind = %kind, "watch of the Kubernetes API resumed");
                        failing = false;
                    }
                    let _ = touch.send(());
                }
                Err(e) => {
                    // Logged once per outage, then at debug: the backoff
                    // retries for as long as it takes.
                    if failing {
                        debug!(kind = %kind, error = %crate::agent::reload::format_chain(&e), "watch still failing");
                    } else {
                        warn!(kind = %kind, error = %crate::agent::reload::format_chain(&e), "watch of the Kubernetes API failed; retrying with backoff (the policy in force stays)");
                        failing = true;
                    }
                }
            }
        }
    });
    reader
}

struct Stores {
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
}

async fn build_loop(
    stores: Stores,
    settings: KubeSettings,
    mut touch: mpsc::UnboundedReceiver<()>,
    touch_tx: mpsc::UnboundedSender<()>,
    tx: watch::Sender<Option<Inventory>>,
) {
    for (kind, ready) in [
        ("Pod", stores.pods.wait_until_ready().await),
        ("Namespace", stores.namespaces.wait_until_ready().await),
        ("NetworkPolicy", stores.policies.wait_until_ready().await),
    ] {
        if ready.is_err() {
            error!(kind, "the watch ended before its first listing");
            return;
        }
    }
    info!(node = %settings.node_name, "Kubernetes listings complete");
    // inotify on the guarded roots: a new pod<uid> directory is picked up
    // at once, not at the next rescan.
    let _inotify = watch_roots(&settings, touch_tx);
    let mut reported = std::collections::HashSet::new();
    let mut rescan = tokio::time::interval(RESCAN_EVERY);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let inventory = build(&stores, &settings, &mut reported);
        tx.send_if_modified(|current| {
            if current.as_ref() == Some(&inventory) {
                false
            } else {
                *current = Some(inventory);
                true
            }
        });
        tokio::select! {
            got = touch.recv() => {
                if got.is_none() {
                    return;
                }
                tokio::time::sleep(DEBOUNCE).await;
                while touch.try_recv().is_ok() {}
            }
            _ = rescan.tick() => {}
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Watches the guarded roots (recursively) for directories coming and
/// going. Without it, the rescan still finds them.
fn watch_roots(
    settings: &KubeSettings,
    touch: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if e.kind.is_create() || e.kind.is_remove() {
                let _ = touch.send(());
            }
        }
    })
    .map_err(|e| warn!(error = %e, "no inotify on the cgroup tree; relying on the rescan"))
    .ok()?;
    for root in &settings.guarded {
        let path = settings.mount.join(root);
        if let Err(e) = watcher.watch(&path, RecursiveMode::Recursive) {
            warn!(path = %path.display(), error = %e, "cannot watch the guarded root; relying on the rescan");
        }
    }
    Some(watcher)
}

/// One inventory from the stores and a fresh walk of the cgroup tree.
/// Problems are logged once each (`reported`).
fn build(
    stores: &Stores,
    settings: &KubeSettings,
    reported: &mut std::collections::HashSet<String>,
) -> Inventory {
    let index = cgroups::scan(&settings.mount, &settings.search_base, cgroups::MAX_DEPTH);
    let mut sources = Vec::new();
    let mut guards = Guards {
        pending: settings.guarded.clone(),
        exempt: settings.exempt.clone(),
    };
    let mut problems = Vec::new();
    let mut pods = stores.pods.state();
    pods.sort_by_key(|p| (p.namespace(), p.name_any()));
    for p in &pods {
        match pod::convert(p, &index, &settings.mount, &settings.sidecar, &mut problems) {
            pod::PodState::Ready(docs) => sources.extend(docs),
            pod::PodState::Exempt { id, cgroup } => guards.exempt.push((id, cgroup)),
            pod::PodState::Waiting(why) => {
                debug!(pod = %format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()), why, "pod not enforced yet (pending)");
            }
            pod::PodState::Finished => {}
        }
    }
    let mut namespaces = stores.namespaces.state();
    namespaces.sort_by_key(|n| n.name_any());
    for ns in &namespaces {
        sources.push(object_source("namespaces", ns.as_ref()));
    }
    let mut policies = stores.policies.state();
    policies.sort_by_key(|p| (p.namespace(), p.name_any()));
    for np in &policies {
        sources.push(object_source("networkpolicies", np.as_ref()));
    }
    let now: std::collections::HashSet<String> = problems.iter().map(ToString::to_string).collect();
    for p in &now {
        if !reported.contains(p) {
            warn!(target: "policy", "{p}");
        }
    }
    *reported = now;
    Inventory { sources, guards }
}

/// An API object as a YAML document named `kubernetes/<resource>/<ns>/<name>`
/// in findings. `managedFields` are dropped: noise, and never policy.
fn object_source<K>(resource: &str, object: &K) -> Source
where
    K: Resource + Serialize + Clone,
{
    let mut object = object.clone();
    object.meta_mut().managed_fields = None;
    let meta = object.meta();
    let name = match &meta.namespace {
        Some(ns) => format!(
            "kubernetes/{resource}/{ns}/{}",
            meta.name.clone().unwrap_or_default()
        ),
        None => format!(
            "kubernetes/{resource}/{}",
            meta.name.clone().unwrap_or_default()
        ),
    };
    // k8s-openapi objects serialize with their apiVersion and kind; a
    // failure (it cannot happen for these types) leaves an empty document,
    // which the validator reports as missing `kind`.
    let text = serde_yaml::to_string(&object).unwrap_or_default();
    Source {
        file: Arc::from(Path::new(&name)),
        text,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::policy;

    #[test]
    fn api_objects_are_validated_as_files_are_and_findings_name_them() {
        let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "broken", "namespace": "shop",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                      "except": ["192.168.0.0/16"]}}]}]}
        }))
        .expect("a NetworkPolicy");
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let sources = [
            object_source("namespaces", &ns),
            object_source("networkpolicies", &np),
        ];
        assert!(!sources[1].text.contains("managedFields"));
        let rejected = policy::load_sources(&sources).expect_err("except outside cidr");
        let text = rejected
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("kubernetes/networkpolicies/shop/broken")
                && text.contains("NetworkPolicy shop/broken")
                && text.contains("spec.egress[0].to[0].ipBlock.except[0]"),
            "{text}"
        );
    }

    #[test]
    fn the_node_name_comes_from_the_flag_or_the_downward_api() {
        assert_eq!(node_name(Some("n1")).ok().as_deref(), Some("n1"));
        assert!(
            matches!(node_name(Some(" ")), Err(KubeError::NoNodeName))
                || std::env::var("NODE_NAME").is_ok()
        );
    }
}
