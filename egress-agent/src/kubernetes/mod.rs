//! Kubernetes mode: the inventory and the NetworkPolicies from the API
//! server.
//!
//! `egress-agent run --kubernetes` watches, with kube-runtime watchers
//! (re-list and re-watch with exponential backoff after any error), all
//! cluster-wide and read-only:
//!
//! - every Pod ([`pod`]), kept slim ([`pod::SlimPod`]): pods on this node
//!   become enforced Workloads once their cgroup is found ([`cgroups`]);
//!   pods on other nodes become peer Workloads without a cgroup;
//! - every Namespace (their labels feed `namespaceSelector`s);
//! - every NetworkPolicy;
//! - every Node (name and addresses: node IPs count as in-cluster);
//! - every Service, and its endpoints: EndpointSlices `discovery.k8s.io/v1`
//!   or `v1beta1`, whichever the server serves (found by API discovery at
//!   start), else `v1 Endpoints` ([`objects`]);
//! - every Istio ServiceEntry (`networking.istio.io`, the newest served
//!   version), where Istio's API is served: gateways with `allowedHosts:
//!   fromServiceEntries` take their hosts from them;
//! - every EgressGateway and Redirect, where their CRDs are installed
//!   ([`custom`]; `egress-agent crds` prints them, [`crds`]).
//!
//! Each is kept as what the agent makes of it ([`cache`]), written as YAML
//! documents and validated and compiled with the files of `--policies` as
//! one set ([`crate::inventory::Inventory`]): the same code path as files,
//! with findings that name the object and field. Without the CRDs,
//! EgressGateway and Redirect objects come from `--policies` alone, a
//! directory the DaemonSet mounts from a ConfigMap; files and custom
//! resources may also be mixed (a name both use is an error on the
//! custom resource, which is then left out).
//!
//! Objects the agent quarantines are reported as Kubernetes Events on the
//! objects themselves ([`events`]); each node writes its verdict on every
//! custom resource into that object's status ([`status`]).
//!
//! The inventory is rebuilt at once when an object changes,
//! when a directory appears or goes under a guarded root (inotify), and
//! every [`RESCAN_EVERY`] as a fallback; it is only published when it
//! differs, and never before every listing is complete.

pub mod cache;
pub mod cgroups;
pub mod crds;
pub mod custom;
pub mod events;
pub mod objects;
pub mod pod;
pub mod simulated;
pub mod status;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Endpoints, Namespace, Node, Pod, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    core::DynamicObject,
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Resource,
};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use self::{
    cache::Cache,
    custom::{Custom, Kind},
    objects::SliceSource,
    pod::{Problem, SlimPod},
};
use crate::{compile::Guards, errors::format_chain, inventory::Inventory};
use egress_policy::{model::ObjectId, Source};

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

/// The custom resources' caches, as the status writer reads them.
pub type CustomCaches = [(Kind, Cache<Custom>); 2];

/// Starts the watchers and the inventory builder; the receiver gets the
/// first inventory once every listing is complete, then each change. The
/// custom resources' caches are also returned, for [`status`].
pub fn spawn(
    client: Client,
    settings: KubeSettings,
) -> (watch::Receiver<Option<Inventory>>, CustomCaches) {
    let (tx, rx) = watch::channel(None);
    let (touch_tx, touch) = mpsc::unbounded_channel::<()>();
    let caches = Caches {
        pods: watch_pods(
            client.clone(),
            settings.node_name.clone(),
            settings.sidecar.clone(),
            touch_tx.clone(),
        ),
        namespaces: start::<Namespace, _>(&client, &touch_tx, |n| Some(objects::namespace(n))),
        policies: start::<NetworkPolicy, _>(&client, &touch_tx, |n| {
            Some(objects::network_policy(n))
        }),
        nodes: start::<Node, _>(&client, &touch_tx, |n| Some(objects::node(n))),
        services: start::<Service, _>(&client, &touch_tx, |s| Some(objects::service(s))),
        slices: watch_slices(client.clone(), touch_tx.clone()),
        service_entries: watch_service_entries(client.clone(), touch_tx.clone()),
        custom: custom::watch(client, touch_tx.clone()),
    };
    let custom = caches.custom.clone();
    tokio::spawn(build_loop(caches, settings, touch, touch_tx, tx));
    (rx, custom)
}

/// Watches the Pods of every node into a slim cache ([`pod::slim`]): the
/// full fields of the pods on `node_name`, the peer fields of the others.
pub fn watch_pods(
    client: Client,
    node_name: String,
    sidecar: String,
    touch: mpsc::UnboundedSender<()>,
) -> Cache<SlimPod> {
    let (cache, writer) = cache::cache();
    let stream = watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff();
    tokio::spawn(cache::feed(
        stream,
        writer,
        "Pod".into(),
        move |p: &Pod| pod::slim(p, &node_name, &sidecar),
        touch,
    ));
    cache
}

/// Runs one cluster-wide watcher of a typed kind into a cache of
/// documents.
fn start<K, F>(client: &Client, touch: &mpsc::UnboundedSender<()>, map: F) -> Cache<Vec<Source>>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
    F: Fn(&K) -> Option<Source> + Send + 'static,
{
    let (cache, writer) = cache::cache();
    let stream =
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff();
    tokio::spawn(cache::feed(
        stream,
        writer,
        K::kind(&()).into_owned(),
        move |o: &K| map(o).map(|s| vec![s]),
        touch.clone(),
    ));
    cache
}

/// Watches EndpointSlices in the version the server serves, or Endpoints
/// where it serves none (see [`objects`]); all become v1 slice documents.
fn watch_slices(client: Client, touch: mpsc::UnboundedSender<()>) -> Cache<Vec<Source>> {
    let (cache, writer) = cache::cache();
    tokio::spawn(async move {
        let source = discover_slices(&client).await;
        info!(source = ?source, "endpoints read from {}", match source {
            SliceSource::V1 => "discovery.k8s.io/v1 EndpointSlices",
            SliceSource::V1beta1 => "discovery.k8s.io/v1beta1 EndpointSlices",
            SliceSource::Endpoints => "v1 Endpoints (no EndpointSlice API served)",
        });
        match source.api_resource() {
            Some(resource) => {
                let api = Api::<DynamicObject>::all_with(client, &resource);
                let stream = watcher(api, watcher::Config::default()).default_backoff();
                cache::feed(
                    stream,
                    writer,
                    format!("EndpointSlice ({})", resource.api_version),
                    |o: &DynamicObject| match objects::dynamic_endpoint_slice(o) {
                        Ok(s) => Some(vec![s]),
                        Err(e) => {
                            // Left out: its Service then has no ready
                            // backend, which allows less, never more.
                            warn!(slice = %cache::key(o), error = %e, "EndpointSlice not understood; left out");
                            None
                        }
                    },
                    touch,
                )
                .await;
            }
            None => {
                let stream = watcher(Api::<Endpoints>::all(client), watcher::Config::default())
                    .default_backoff();
                cache::feed(
                    stream,
                    writer,
                    "Endpoints".into(),
                    |e: &Endpoints| Some(objects::endpoints(e)),
                    touch,
                )
                .await;
            }
        }
    });
    cache
}

/// How often the agent looks again for Istio's API when it is not served:
/// installing Istio (or its CRDs) after the agent is picked up this late.
const ISTIO_DISCOVERY_EVERY: Duration = Duration::from_secs(30);

/// Watches Istio ServiceEntries (`networking.istio.io`, the newest served
/// version), for gateways with `allowedHosts: fromServiceEntries`. Where
/// Istio's API is not served the cache is empty (and ready: the first
/// inventory does not wait for Istio), and discovery is tried again every
/// [`ISTIO_DISCOVERY_EVERY`].
fn watch_service_entries(client: Client, touch: mpsc::UnboundedSender<()>) -> Cache<Vec<Source>> {
    let (cache, writer) = cache::cache();
    tokio::spawn(async move {
        let mut said_absent = false;
        let version = loop {
            match probe_service_entries(&client).await {
                Ok(Some(version)) => break version,
                Ok(None) => {
                    if !said_absent {
                        info!("no networking.istio.io ServiceEntry API served: no ServiceEntries (looked for again every {}s)", ISTIO_DISCOVERY_EVERY.as_secs());
                        // An empty listing: ready, so the inventory does
                        // not wait for an API that may never come.
                        writer.apply(watcher::Event::<DynamicObject>::Init, &|_| None);
                        writer.apply(watcher::Event::<DynamicObject>::InitDone, &|_| None);
                        said_absent = true;
                    }
                }
                Err(e) => {
                    warn!(error = %format_chain(&e), "API discovery of ServiceEntries failed; retrying")
                }
            }
            tokio::time::sleep(ISTIO_DISCOVERY_EVERY).await;
        };
        info!(version, "watching networking.istio.io ServiceEntries");
        let _ = objects::SERVICE_ENTRY_VERSION.set(version.clone());
        let gvk =
            kube::core::GroupVersionKind::gvk("networking.istio.io", &version, "ServiceEntry");
        let resource = kube::core::ApiResource::from_gvk_with_plural(&gvk, "serviceentries");
        let api = Api::<DynamicObject>::all_with(client, &resource);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        cache::feed(
            stream,
            writer,
            format!("ServiceEntry ({})", resource.api_version),
            |o: &DynamicObject| Some(vec![objects::dynamic_service_entry(o)]),
            touch,
        )
        .await;
    });
    cache
}

/// The newest `networking.istio.io` version that serves ServiceEntries,
/// if any.
async fn probe_service_entries(client: &Client) -> Result<Option<String>, kube::Error> {
    let served = first_serving(
        client,
        &[
            "networking.istio.io/v1",
            "networking.istio.io/v1beta1",
            "networking.istio.io/v1alpha3",
        ],
        "serviceentries",
    )
    .await?;
    Ok(served.and_then(|gv| gv.strip_prefix("networking.istio.io/").map(str::to_owned)))
}

/// The resources (plural names) the server serves in `group_version`;
/// none when it does not serve that group version at all (404).
async fn served(client: &Client, group_version: &str) -> Result<Vec<String>, kube::Error> {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => Ok(list.resources.into_iter().map(|r| r.name).collect()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The first of `group_versions` (in order of preference) that serves
/// `plural`, if any.
async fn first_serving<'a>(
    client: &Client,
    group_versions: &[&'a str],
    plural: &str,
) -> Result<Option<&'a str>, kube::Error> {
    for group_version in group_versions {
        if served(client, group_version)
            .await?
            .iter()
            .any(|r| r == plural)
        {
            return Ok(Some(group_version));
        }
    }
    Ok(None)
}

/// Which endpoints API the server serves, preferring `discovery.k8s.io/v1`.
/// Retried with backoff until the server answers: the first inventory
/// waits for it, as it waits for every listing.
async fn discover_slices(client: &Client) -> SliceSource {
    until_answered("EndpointSlices", || probe_slices(client)).await
}

/// `probe`, retried with backoff (from 0.5 s to 30 s) until the server
/// answers; each failure is logged, naming `what` was being discovered.
async fn until_answered<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match probe().await {
            Ok(answer) => return answer,
            Err(e) => {
                warn!(error = %format_chain(&e), "API discovery of {what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn probe_slices(client: &Client) -> Result<SliceSource, kube::Error> {
    let versions = ["discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"];
    Ok(
        match first_serving(client, &versions, "endpointslices").await? {
            Some("discovery.k8s.io/v1") => SliceSource::V1,
            Some(_) => SliceSource::V1beta1,
            None => SliceSource::Endpoints,
        },
    )
}

struct Caches {
    pods: Cache<SlimPod>,
    namespaces: Cache<Vec<Source>>,
    policies: Cache<Vec<Source>>,
    nodes: Cache<Vec<Source>>,
    services: Cache<Vec<Source>>,
    slices: Cache<Vec<Source>>,
    service_entries: Cache<Vec<Source>>,
    custom: CustomCaches,
}

impl Caches {
    fn generations(&self) -> [u64; 9] {
        [
            self.service_entries.generation(),
            self.pods.generation(),
            self.namespaces.generation(),
            self.policies.generation(),
            self.nodes.generation(),
            self.services.generation(),
            self.slices.generation(),
            self.custom[0].1.generation(),
            self.custom[1].1.generation(),
        ]
    }

    fn documents(&self) -> [(&'static str, &Cache<Vec<Source>>); 6] {
        [
            ("ServiceEntry", &self.service_entries),
            ("Namespace", &self.namespaces),
            ("NetworkPolicy", &self.policies),
            ("Node", &self.nodes),
            ("Service", &self.services),
            ("EndpointSlice", &self.slices),
        ]
    }
}

async fn build_loop(
    mut caches: Caches,
    settings: KubeSettings,
    mut touch: mpsc::UnboundedReceiver<()>,
    touch_tx: mpsc::UnboundedSender<()>,
    tx: watch::Sender<Option<Inventory>>,
) {
    if !caches.pods.wait_until_ready().await {
        error!(kind = "Pod", "the watch ended before its first listing");
        return;
    }
    for (kind, cache) in caches.documents() {
        if !cache.clone().wait_until_ready().await {
            error!(kind, "the watch ended before its first listing");
            return;
        }
    }
    for (kind, cache) in &caches.custom {
        if !cache.clone().wait_until_ready().await {
            error!(
                kind = kind.name(),
                "the watch ended before its first listing"
            );
            return;
        }
    }
    info!(node = %settings.node_name, pods = caches.pods.len(), "Kubernetes listings complete");
    // inotify on the guarded roots: a new pod<uid> directory is picked up
    // at once, not at the next rescan.
    let _inotify = watch_roots(&settings, touch_tx);
    let mut reported = std::collections::HashSet::new();
    let mut cluster = ClusterPart::default();
    let mut rescan = tokio::time::interval(RESCAN_EVERY);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let inventory = build(&caches, &settings, &mut cluster, &mut reported);
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
                // No wait for more: a lone change is built at once. What
                // is already queued, or arrives while the watch tasks that
                // are ready run, joins this build; a burst that goes on
                // arrives during it and becomes the next one, and the apply
                // worker's mailbox merges what comes faster than it applies.
                tokio::task::yield_now().await;
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

/// The documents that do not depend on this node's cgroup tree (peers,
/// Namespaces, NetworkPolicies, Nodes, Services, slices), kept between
/// builds and made again only when a cache changed: the once-a-second
/// rescan then costs a walk of the cgroup tree, not a rewrite of 10k peers.
/// A peer's document is written again only when its pod's
/// resourceVersion changed, so one pod change among 10k costs one
/// document, not 10k (see docs/kubernetes.md for the measure).
#[derive(Default)]
struct ClusterPart {
    generations: Option<[u64; 9]>,
    /// By pod key: (resourceVersion, document, problems).
    peers: std::collections::BTreeMap<String, (String, Option<Source>, Vec<Problem>)>,
    /// The other kinds' documents.
    others: Vec<Source>,
    /// The custom resources' `metadata.generation`, by document name.
    custom: std::collections::BTreeMap<String, i64>,
    problems: Vec<Problem>,
}

impl ClusterPart {
    fn refresh(&mut self, caches: &Caches) {
        let generations = caches.generations();
        if self.generations == Some(generations) {
            return;
        }
        let mut old = std::mem::take(&mut self.peers);
        let mut peers = std::collections::BTreeMap::new();
        caches.pods.read(|pods| {
            for (key, p) in pods.iter().filter(|(_, p)| p.local.is_none()) {
                let entry = match (old.remove(key), &p.revision) {
                    // Unchanged since it was written (an empty version,
                    // never sent by a real server, is always rewritten).
                    (Some(e), Some(rv)) if !rv.is_empty() && e.0 == *rv => e,
                    _ => {
                        let mut problems = Vec::new();
                        let doc = pod::peer(p, &mut problems);
                        (p.revision.clone().unwrap_or_default(), doc, problems)
                    }
                };
                peers.insert(key.clone(), entry);
            }
        });
        let problems = peers
            .values()
            .flat_map(|(_, _, found)| found.iter().cloned())
            .collect();
        let mut others = Vec::with_capacity(self.others.len());
        for (_, cache) in caches.documents() {
            cache.read(|docs| others.extend(docs.values().flatten().cloned()));
        }
        let mut custom = std::collections::BTreeMap::new();
        for (_, cache) in &caches.custom {
            cache.read(|items| {
                for c in items.values() {
                    others.push(c.source.clone());
                    custom.insert(c.source.file.to_string_lossy().into_owned(), c.generation);
                }
            });
        }
        *self = Self {
            generations: Some(generations),
            peers,
            others,
            custom,
            problems,
        };
    }

    fn sources(&self) -> impl Iterator<Item = &Source> {
        self.peers
            .values()
            .filter_map(|(_, doc, _)| doc.as_ref())
            .chain(&self.others)
    }
}

/// One inventory from the caches and a fresh walk of the cgroup tree.
/// Problems are logged once each (`reported`).
fn build(
    caches: &Caches,
    settings: &KubeSettings,
    cluster: &mut ClusterPart,
    reported: &mut std::collections::HashSet<String>,
) -> Inventory {
    let index = cgroups::scan(&settings.mount, &settings.search_base, cgroups::MAX_DEPTH);
    let mut sources = Vec::new();
    let mut guards = Guards {
        pending: settings.guarded.clone(),
        exempt: settings.exempt.clone(),
    };
    let mut problems = Vec::new();
    // The few pods of this node, copied out so that checking their
    // documents does not hold the cache's lock.
    let local: Vec<SlimPod> = caches.pods.read(|pods| {
        pods.values()
            .filter(|p| p.local.is_some())
            .cloned()
            .collect()
    });
    let mut waiting = std::collections::BTreeMap::new();
    for p in &local {
        match pod::convert(p, &index, &settings.mount, &settings.sidecar, &mut problems) {
            pod::PodState::Ready(docs) => sources.extend(docs),
            pod::PodState::Exempt { id, cgroup } => guards.exempt.push((id, cgroup)),
            pod::PodState::Waiting(why) => {
                debug!(pod = %p.id, why, "pod not enforced yet (pending)");
                // Only a pod whose cgroup exists can run anything, and so
                // be pending in the kernel; `status` names it.
                let uid = p.local.as_ref().and_then(|l| l.uid.as_ref());
                if let Some(uid) = uid.filter(|u| index.pods.contains_key(*u)) {
                    waiting.insert(
                        uid.clone(),
                        crate::inventory::Waiting {
                            pod: p.id.clone(),
                            why,
                        },
                    );
                }
            }
        }
    }
    cluster.refresh(caches);
    sources.extend(cluster.sources().cloned());
    let now: std::collections::HashSet<String> = problems
        .iter()
        .chain(&cluster.problems)
        .map(ToString::to_string)
        .collect();
    for p in &now {
        if !reported.contains(p) {
            warn!(target: "policy", "{p}");
        }
    }
    *reported = now;
    Inventory {
        sources,
        guards,
        waiting,
        custom: cluster.custom.clone(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

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
        let sources = [objects::namespace(&ns), objects::network_policy(&np)];
        assert!(!sources[1].text.contains("managedFields"));
        let rejected = egress_policy::load_sources(&sources).expect_err("except outside cidr");
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

    /// The documents of a small two-node cluster, from API objects through
    /// the same conversions as the watch, fed to the policy layer as the
    /// agent on `node-a` does. The client runs here; `web` runs on node-b
    /// (`web_node`, `web_ip`) behind the Service `web` (10.96.0.20:80 →
    /// targetPort `http`), whose endpoints come as a v1beta1 slice (1.20)
    /// or, with `endpoints_api`, as v1 Endpoints.
    fn two_node_cluster(web_node: &str, web_ip: &str, endpoints_api: bool) -> Vec<Source> {
        use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
        use kube::core::DynamicObject;
        fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v).expect("an API object")
        }
        const UID: &str = "3f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
        let mount = std::env::temp_dir().join(format!(
            "egress-k8s-two-nodes-{}-{web_node}-{endpoints_api}",
            std::process::id()
        ));
        std::fs::create_dir_all(mount.join(format!("kubepods/pod{UID}"))).expect("mkdir");
        let index = cgroups::scan(&mount, "", cgroups::MAX_DEPTH);
        let pod = |name: &str, uid: &str, node: &str, ip: &str, app: &str| -> Pod {
            from(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "prod", "uid": uid,
                             "labels": {"app": app},
                             "managedFields": [{"manager": "kubelet"}]},
                "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x",
                         "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            }))
        };
        let mut problems = Vec::new();
        let mut sources = Vec::new();
        let client = pod::slim(
            &pod("client", UID, "node-a", "10.244.1.9", "client"),
            "node-a",
            "istio-proxy",
        )
        .expect("kept");
        match pod::convert(&client, &index, &mount, "istio-proxy", &mut problems) {
            pod::PodState::Ready(docs) => sources.extend(docs),
            other => panic!("client not ready: {other:?}"),
        }
        let web = pod::slim(
            &pod("web", "u-web", web_node, web_ip, "web"),
            "node-a",
            "istio-proxy",
        )
        .expect("kept");
        sources.extend(pod::peer(&web, &mut problems));
        assert!(problems.is_empty(), "{problems:?}");
        let ns: Namespace = from(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "prod", "labels": {"env": "prod"}}}));
        sources.push(objects::namespace(&ns));
        let np: NetworkPolicy = from(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "to-web", "namespace": "prod"},
            "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                 "ports": [{"port": "http"}]}]}
        }));
        sources.push(objects::network_policy(&np));
        for n in ["node-a", "node-b", "node-c"] {
            let node: Node = from(serde_json::json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n},
                "status": {"addresses": [{"type": "InternalIP",
                                          "address": format!("172.18.0.{}", n.len())}]}}));
            sources.push(objects::node(&node));
        }
        let svc: Service = from(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                     "selector": {"app": "web"},
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}]}
        }));
        sources.push(objects::service(&svc));
        if endpoints_api {
            let e: Endpoints = from(serde_json::json!({
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "web", "namespace": "prod"},
                "subsets": [{"addresses": [{"ip": web_ip, "nodeName": web_node,
                               "targetRef": {"kind": "Pod", "namespace": "prod", "name": "web"}}],
                             "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}]
            }));
            sources.extend(objects::endpoints(&e));
        } else {
            let slice: DynamicObject = from(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
                "metadata": {"name": "web-x1", "namespace": "prod",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [web_ip], "conditions": {"ready": true},
                               "topology": {"kubernetes.io/hostname": web_node},
                               "targetRef": {"kind": "Pod", "namespace": "prod", "name": "web"}}],
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
            }));
            sources.push(objects::dynamic_endpoint_slice(&slice).expect("converts"));
        }
        std::fs::remove_dir_all(&mount).ok();
        sources
    }

    fn verdict(sources: &[Source], to: &str) -> crate::compile::Verdict {
        let loaded = match egress_policy::load_sources(sources) {
            Ok(l) => l,
            Err(e) => panic!("documents rejected: {:#?}", e.diagnostics),
        };
        let plan = crate::compile::compile(&loaded.model);
        assert!(
            plan.workload(&ObjectId::new("prod", "web")).is_none(),
            "a pod of another node is never enforced here"
        );
        let client = plan
            .workload(&ObjectId::new("prod", "client"))
            .expect("the local pod is enforced");
        let to: std::net::SocketAddr = to.parse().expect("IP:PORT");
        crate::compile::decide(
            &plan,
            client,
            crate::compile::Destination {
                ip: to.ip(),
                port: to.port(),
                protocol: "tcp".parse().expect("tcp"),
            },
        )
        .verdict
    }

    #[test]
    fn watched_objects_make_cross_node_peers_and_services_work_end_to_end() {
        use crate::compile::Verdict::{Allow, Deny};
        for endpoints_api in [false, true] {
            let cluster = two_node_cluster("node-b", "10.244.2.5", endpoints_api);
            // The peer on the other node, at its named port only.
            assert_eq!(verdict(&cluster, "10.244.2.5:8080"), Allow);
            assert_eq!(verdict(&cluster, "10.244.2.5:8081"), Deny);
            assert_eq!(verdict(&cluster, "10.244.2.6:8080"), Deny, "not a pod");
            // The Service, judged by its backend at the target port.
            assert_eq!(verdict(&cluster, "10.96.0.20:80"), Allow, "{endpoints_api}");
            assert_eq!(verdict(&cluster, "10.96.0.20:8080"), Deny);
            // The pod recreated on node-c with a new address: the next
            // inventory allows the new address and no longer the old one.
            let moved = two_node_cluster("node-c", "10.244.3.7", endpoints_api);
            assert_eq!(verdict(&moved, "10.244.3.7:8080"), Allow);
            assert_eq!(verdict(&moved, "10.244.2.5:8080"), Deny);
            assert_eq!(verdict(&moved, "10.96.0.20:80"), Allow);
        }
    }

    #[test]
    fn custom_resources_join_the_documents_with_their_generation() {
        let empty = || cache::cache::<Vec<Source>>().0;
        let (gateways, writer) = cache::cache::<Custom>();
        let caches = Caches {
            pods: cache::cache().0,
            namespaces: empty(),
            policies: empty(),
            nodes: empty(),
            services: empty(),
            slices: empty(),
            service_entries: empty(),
            custom: [
                (Kind::EgressGateway, gateways),
                (Kind::Redirect, cache::cache().0),
            ],
        };
        let gateway = |generation: i64| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "egress.enforcer.dev/v1alpha1", "kind": "EgressGateway",
                "metadata": {"name": "gw", "namespace": "istio-system", "generation": generation},
                "spec": {"selector": {}, "clusterCIDRs": ["10.0.0.0/8"]}
            }))
            .expect("a custom resource")
        };
        let map = |o: &DynamicObject| Some(custom::convert(Kind::EgressGateway, o));
        writer.apply(watcher::Event::Apply(gateway(2)), &map);
        let mut part = ClusterPart::default();
        part.refresh(&caches);
        const NAME: &str = "kubernetes/egressgateways/istio-system/gw";
        assert_eq!(part.custom.get(NAME), Some(&2));
        assert!(part.sources().any(|s| &*s.file == Path::new(NAME)));
        writer.apply(watcher::Event::Apply(gateway(3)), &map);
        part.refresh(&caches);
        assert_eq!(part.custom.get(NAME), Some(&3), "a change is seen");
        writer.apply(watcher::Event::Delete(gateway(3)), &map);
        part.refresh(&caches);
        assert!(part.custom.is_empty() && part.sources().next().is_none());
    }

    #[test]
    fn a_peer_is_written_again_only_when_its_pod_changed() {
        let (pods, pod_writer) = cache::cache::<SlimPod>();
        let empty = || cache::cache::<Vec<Source>>().0;
        let caches = Caches {
            pods,
            namespaces: empty(),
            policies: empty(),
            nodes: empty(),
            services: empty(),
            slices: empty(),
            service_entries: empty(),
            custom: Kind::ALL.map(|k| (k, cache::cache().0)),
        };
        let peer = |name: &str, ip: &str, rv: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "prod", "resourceVersion": rv},
                "spec": {"nodeName": "node-b", "containers": []},
                "status": {"podIPs": [{"ip": ip}]}
            }))
            .expect("pod")
        };
        let map = |p: &Pod| pod::slim(p, "node-a", "istio-proxy");
        for e in [
            watcher::Event::Init,
            watcher::Event::InitApply(peer("a", "10.244.2.1", "1")),
            watcher::Event::InitApply(peer("b", "10.244.2.2", "2")),
            watcher::Event::InitDone,
        ] {
            pod_writer.apply(e, &map);
        }
        let mut part = ClusterPart::default();
        let texts = |part: &ClusterPart| -> Vec<String> {
            part.sources().map(|s| s.text.to_string()).collect()
        };
        part.refresh(&caches);
        assert_eq!(part.sources().count(), 2);
        assert!(texts(&part)[0].contains("10.244.2.1"));
        // The same resourceVersion is the same object: not written again
        // (a server never changes an object without a new version).
        pod_writer.apply(watcher::Event::Apply(peer("a", "10.244.2.9", "1")), &map);
        part.refresh(&caches);
        assert!(texts(&part)[0].contains("10.244.2.1"));
        // A new version is written again; a deleted pod is gone.
        pod_writer.apply(watcher::Event::Apply(peer("a", "10.244.2.9", "3")), &map);
        pod_writer.apply(watcher::Event::Delete(peer("b", "10.244.2.2", "2")), &map);
        part.refresh(&caches);
        let now = texts(&part);
        assert_eq!(now.len(), 1);
        assert!(now[0].contains("10.244.2.9"), "{now:?}");
    }
}
