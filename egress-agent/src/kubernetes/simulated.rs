//! Kubernetes mode without an API server: objects are handed in as the
//! watchers would deliver them.
//!
//! Everything after the watch is the real thing: each object is kept as
//! the watch keeps it ([`super::cache`], mapped by the same functions),
//! and the inventory builder ([`super::spawn`]'s) walks the cgroup tree,
//! watches the guarded roots and publishes inventories for the agent's
//! event loop. The simulated node's tests use it to drive the agent's
//! Kubernetes path (tenants' objects, quarantine, pending pods) in a real
//! kernel with objects they write themselves, where no API server runs.

use std::cell::Cell;

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{core::DynamicObject, runtime::watcher::Event};
use tokio::sync::{mpsc, watch};

use super::{
    build_loop,
    cache::{self, Writer},
    custom::{self, Custom, Kind},
    objects, pod, Caches, KubeSettings,
};
use crate::inventory::Inventory;
use egress_policy::Source;

/// The writing side of every watched kind.
pub struct Simulated {
    pods: Writer<pod::SlimPod>,
    namespaces: Writer<Vec<Source>>,
    policies: Writer<Vec<Source>>,
    nodes: Writer<Vec<Source>>,
    services: Writer<Vec<Source>>,
    slices: Writer<Vec<Source>>,
    service_entries: Writer<Vec<Source>>,
    /// EgressGateways and Redirects, as if their CRDs were installed.
    custom: [(Kind, Writer<Custom>); 2],
    touch: mpsc::UnboundedSender<()>,
    node_name: String,
    sidecar: String,
    /// The first listing is complete: objects now arrive as changes.
    listed: Cell<bool>,
}

impl Simulated {
    /// Starts the inventory builder, as [`super::spawn`] does, on the
    /// current tokio runtime. Objects handed in before [`Self::listed`]
    /// are the first listing; no inventory is published before it.
    pub fn start(settings: KubeSettings) -> (Self, watch::Receiver<Option<Inventory>>) {
        let (tx, rx) = watch::channel(None);
        let (touch, touched) = mpsc::unbounded_channel::<()>();
        let (pods, pods_w) = cache::cache();
        let (namespaces, namespaces_w) = cache::cache();
        let (policies, policies_w) = cache::cache();
        let (nodes, nodes_w) = cache::cache();
        let (services, services_w) = cache::cache();
        let (slices, slices_w) = cache::cache();
        let (service_entries, service_entries_w) = cache::cache();
        let (gateways, gateways_w) = cache::cache();
        let (redirects, redirects_w) = cache::cache();
        let this = Self {
            pods: pods_w,
            namespaces: namespaces_w,
            policies: policies_w,
            nodes: nodes_w,
            services: services_w,
            slices: slices_w,
            service_entries: service_entries_w,
            custom: [
                (Kind::EgressGateway, gateways_w),
                (Kind::Redirect, redirects_w),
            ],
            touch: touch.clone(),
            node_name: settings.node_name.clone(),
            sidecar: settings.sidecar.clone(),
            listed: Cell::new(false),
        };
        this.every(|w| w.apply::<Namespace>(Event::Init, &|_| None));
        this.pods.apply::<Pod>(Event::Init, &|_| None);
        for (_, w) in &this.custom {
            w.apply::<DynamicObject>(Event::Init, &|_| None);
        }
        let caches = Caches {
            pods,
            namespaces,
            policies,
            nodes,
            services,
            slices,
            service_entries,
            custom: [(Kind::EgressGateway, gateways), (Kind::Redirect, redirects)],
        };
        tokio::spawn(build_loop(caches, settings, touched, touch, tx));
        (this, rx)
    }

    fn every(&self, f: impl Fn(&Writer<Vec<Source>>) -> bool) {
        for w in [
            &self.namespaces,
            &self.policies,
            &self.nodes,
            &self.services,
            &self.slices,
            &self.service_entries,
        ] {
            f(w);
        }
    }

    /// Completes the first listing of every kind.
    pub fn listed(&self) {
        self.every(|w| w.apply::<Namespace>(Event::InitDone, &|_| None));
        self.pods.apply::<Pod>(Event::InitDone, &|_| None);
        for (_, w) in &self.custom {
            w.apply::<DynamicObject>(Event::InitDone, &|_| None);
        }
        self.listed.set(true);
        let _ = self.touch.send(());
    }

    fn event<K>(&self, object: &K) -> Event<K>
    where
        K: Clone,
    {
        if self.listed.get() {
            Event::Apply(object.clone())
        } else {
            Event::InitApply(object.clone())
        }
    }

    fn changed(&self, changed: bool) {
        if changed {
            let _ = self.touch.send(());
        }
    }

    /// A Pod created or changed.
    pub fn pod(&self, p: &Pod) {
        let (node, sidecar) = (self.node_name.clone(), self.sidecar.clone());
        let map = move |p: &Pod| pod::slim(p, &node, &sidecar);
        self.changed(self.pods.apply(self.event(p), &map));
    }

    /// A Pod deleted.
    pub fn delete_pod(&self, p: &Pod) {
        let map = |_: &Pod| None;
        self.changed(self.pods.apply(Event::Delete(p.clone()), &map));
    }

    pub fn namespace(&self, ns: &Namespace) {
        let map = |n: &Namespace| Some(vec![objects::namespace(n)]);
        self.changed(self.namespaces.apply(self.event(ns), &map));
    }

    pub fn node(&self, n: &Node) {
        let map = |n: &Node| Some(vec![objects::node(n)]);
        self.changed(self.nodes.apply(self.event(n), &map));
    }

    /// A NetworkPolicy created or changed.
    pub fn network_policy(&self, np: &NetworkPolicy) {
        let map = |n: &NetworkPolicy| Some(vec![objects::network_policy(n)]);
        self.changed(self.policies.apply(self.event(np), &map));
    }

    pub fn delete_network_policy(&self, np: &NetworkPolicy) {
        let map = |_: &NetworkPolicy| None;
        self.changed(self.policies.apply(Event::Delete(np.clone()), &map));
    }

    /// An EgressGateway or Redirect custom resource created or changed.
    pub fn custom(&self, kind: Kind, object: &DynamicObject) {
        let map = |o: &DynamicObject| Some(custom::convert(kind, o));
        for (k, w) in &self.custom {
            if *k == kind {
                self.changed(w.apply(self.event(object), &map));
            }
        }
    }
}
