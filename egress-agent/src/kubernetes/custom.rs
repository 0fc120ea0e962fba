//! EgressGateway and Redirect custom resources → policy documents.
//!
//! Where the CRDs are installed (found by API discovery, as the
//! EndpointSlice version is), both kinds are watched cluster-wide and each
//! object becomes a document named `kubernetes/<plural>/<ns>/<name>`, with
//! its `spec` as the API server holds it. The policy layer then judges it
//! like a file, and the quarantine sets a bad one aside alone.
//!
//! The objects are watched untyped ([`DynamicObject`]) on purpose: a
//! schema cannot say everything the agent checks, so an object the API
//! server accepted may still not parse as the agent's types. Typed, it
//! would fail the whole listing, and so every object's watch; untyped, it
//! fails only its own document.
//!
//! Without the CRDs nothing is watched and the documents come from
//! `--policies` only; discovery is tried again every
//! [`REDISCOVER_EVERY`], so CRDs installed after the agent are picked up
//! without a restart.

use std::{path::Path, sync::Arc, time::Duration};

use kube::{
    core::DynamicObject,
    discovery::ApiResource,
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Resource as _,
};
use tokio::sync::mpsc;
use tracing::info;

use super::cache::{self, Cache, Writer};
use egress_policy::{
    objects::{EgressGatewayResource, RedirectResource, EXTENSION_API_VERSION},
    status::PolicyStatus,
    Source,
};

/// How often a server without the CRDs is asked again.
pub const REDISCOVER_EVERY: Duration = Duration::from_secs(60);

/// The custom kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    EgressGateway,
    Redirect,
}

impl Kind {
    pub const ALL: [Self; 2] = [Self::EgressGateway, Self::Redirect];

    pub fn name(self) -> &'static str {
        match self {
            Self::EgressGateway => "EgressGateway",
            Self::Redirect => "Redirect",
        }
    }

    /// The resource name, as in URLs and document names.
    pub fn plural(self) -> &'static str {
        match self {
            Self::EgressGateway => "egressgateways",
            Self::Redirect => "redirects",
        }
    }

    pub fn api_resource(self) -> ApiResource {
        match self {
            Self::EgressGateway => ApiResource::erase::<EgressGatewayResource>(&()),
            Self::Redirect => ApiResource::erase::<RedirectResource>(&()),
        }
    }

    /// The kind, namespace and name of a document named
    /// `kubernetes/<plural>/<ns>/<name>`.
    pub fn of_source(source: &str) -> Option<(Self, &str, &str)> {
        let rest = source.strip_prefix("kubernetes/")?;
        let (plural, rest) = rest.split_once('/')?;
        let kind = Self::ALL.into_iter().find(|k| k.plural() == plural)?;
        let (namespace, name) = rest.split_once('/')?;
        (!name.contains('/')).then_some((kind, namespace, name))
    }

    /// The document name of `namespace/name`.
    pub fn source_name(self, namespace: &str, name: &str) -> String {
        format!("kubernetes/{}/{namespace}/{name}", self.plural())
    }
}

/// What the cache keeps of one custom resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Custom {
    /// The document the policy layer judges.
    pub source: Source,
    /// `metadata.generation`: bumped by the API server on every change
    /// of `spec` (not of `status`), and what a node's status is about.
    pub generation: i64,
    /// The status as last read; what does not parse reads as empty (and
    /// is then written again).
    pub status: PolicyStatus,
}

/// The document and status of `object`, a custom resource of `kind`.
/// The spec is kept as the API server holds it, whatever it is: the
/// policy layer's parse reports what is wrong with it.
pub fn convert(kind: Kind, object: &DynamicObject) -> Custom {
    let meta = &object.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    let name = meta.name.as_deref().unwrap_or_default();
    let mut doc = serde_json::json!({
        "apiVersion": EXTENSION_API_VERSION,
        "kind": kind.name(),
        "metadata": {"name": name, "namespace": namespace},
    });
    if let Some(spec) = object.data.get("spec") {
        doc["spec"] = spec.clone();
    }
    // As JSON, every string quoted (see `objects::render`).
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    let status = object
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    Custom {
        source: Source {
            file: Arc::from(Path::new(&kind.source_name(namespace, name))),
            text: text.into(),
        },
        generation: meta.generation.unwrap_or_default(),
        status,
    }
}

/// The caches of both kinds, fed once their CRDs are served. Until API
/// discovery has answered, neither is ready, so the first inventory waits
/// for it, as for every listing; a kind whose CRD is not installed is
/// ready and empty.
pub fn watch(client: Client, touch: mpsc::UnboundedSender<()>) -> [(Kind, Cache<Custom>); 2] {
    let (gateways, gateway_writer) = cache::cache();
    let (redirects, redirect_writer) = cache::cache();
    tokio::spawn(discover_and_watch(
        client,
        vec![
            (Kind::EgressGateway, gateway_writer),
            (Kind::Redirect, redirect_writer),
        ],
        touch,
    ));
    [(Kind::EgressGateway, gateways), (Kind::Redirect, redirects)]
}

async fn discover_and_watch(
    client: Client,
    mut waiting: Vec<(Kind, Writer<Custom>)>,
    touch: mpsc::UnboundedSender<()>,
) {
    let mut first = true;
    loop {
        let served = discover(&client).await;
        let (now, later): (Vec<_>, Vec<_>) = waiting
            .into_iter()
            .partition(|(kind, _)| served.contains(kind));
        for (kind, writer) in now {
            info!(kind = kind.name(), "custom resources served: watching them");
            let api = Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource());
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            tokio::spawn(cache::feed(
                stream,
                writer,
                kind.name().to_owned(),
                move |o: &DynamicObject| Some(convert(kind, o)),
                touch.clone(),
            ));
        }
        if later.is_empty() {
            return;
        }
        if first {
            for (kind, writer) in &later {
                info!(kind = kind.name(), "its CRD is not installed: objects of this kind come from --policies only (asked again every minute)");
                // Ready and empty: an empty listing.
                let none = |_: &DynamicObject| None;
                writer.apply(watcher::Event::Init, &none);
                writer.apply(watcher::Event::InitDone, &none);
            }
            first = false;
        }
        waiting = later;
        tokio::time::sleep(REDISCOVER_EVERY).await;
    }
}

/// The custom kinds the server serves. Retried with backoff until the
/// server answers.
async fn discover(client: &Client) -> Vec<Kind> {
    super::until_answered("the custom resources", || probe(client)).await
}

async fn probe(client: &Client) -> Result<Vec<Kind>, kube::Error> {
    // Nothing served (the group unknown): no CRD installed.
    let served = super::served(client, &EgressGatewayResource::api_version(&())).await?;
    Ok(Kind::ALL
        .into_iter()
        .filter(|k| served.iter().any(|r| r == k.plural()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("an API object")
    }

    #[test]
    fn a_custom_resource_is_judged_as_its_file_would_be() {
        let gateway = object(serde_json::json!({
            "apiVersion": "egress.enforcer.dev/v1alpha1", "kind": "EgressGateway",
            "metadata": {"name": "gw", "namespace": "istio-system", "generation": 3,
                         "uid": "u", "managedFields": [{"manager": "kubectl"}]},
            "spec": {"selector": {"podSelector": {"matchLabels": {"istio": "egressgateway"}}},
                     "clusterCIDRs": ["10.244.0.0/16"],
                     "allowedHosts": [{"host": "example.com", "ports": [443, {"port": 80, "protocol": "HTTP"}]}]},
            "status": {"nodes": [{"node": "node-a", "observedGeneration": 2}], "programmed": "0/1"}
        }));
        let custom = convert(Kind::EgressGateway, &gateway);
        assert_eq!(
            &*custom.source.file,
            Path::new("kubernetes/egressgateways/istio-system/gw")
        );
        assert_eq!(custom.generation, 3);
        assert_eq!(custom.status.nodes[0].node, "node-a");
        assert!(!custom.source.text.contains("managedFields"));
        let loaded = egress_policy::load_sources(&[custom.source]).expect("valid");
        assert_eq!(loaded.model.gateways.len(), 1);
        assert_eq!(
            loaded.model.gateways[0]
                .allowed_hosts
                .as_ref()
                .map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn what_the_schema_cannot_say_is_found_by_the_parse_and_names_the_object() {
        // Accepted by the API server (an untyped field keeps any value),
        // refused by the agent.
        let redirect = object(serde_json::json!({
            "apiVersion": "egress.enforcer.dev/v1alpha1", "kind": "Redirect",
            "metadata": {"name": "r", "namespace": "shop", "generation": 1},
            "spec": {"podSelector": {}, "includePorts": {"not": "ports"}}
        }));
        let custom = convert(Kind::Redirect, &redirect);
        let rejected = egress_policy::load_sources(&[custom.source]).expect_err("bad ports");
        let text = rejected.diagnostics[0].to_string();
        assert!(
            text.contains("kubernetes/redirects/shop/r")
                && text.contains("Redirect shop/r")
                && text.contains("spec.includePorts"),
            "{text}"
        );
        // A status that is not ours reads as none.
        let odd = object(serde_json::json!({
            "apiVersion": "egress.enforcer.dev/v1alpha1", "kind": "Redirect",
            "metadata": {"name": "r", "namespace": "shop"}, "spec": {}, "status": {"nodes": 7}
        }));
        assert_eq!(
            convert(Kind::Redirect, &odd).status,
            PolicyStatus::default()
        );
    }

    #[test]
    fn document_names_map_back_to_their_objects() {
        assert_eq!(
            Kind::of_source("kubernetes/redirects/default/istio-sidecar"),
            Some((Kind::Redirect, "default", "istio-sidecar"))
        );
        assert_eq!(Kind::of_source("kubernetes/networkpolicies/a/b"), None);
        assert_eq!(Kind::of_source("kubernetes/egressgateways/only"), None);
        assert_eq!(Kind::of_source("policies/egress-gateway.yaml"), None);
        assert_eq!(
            Kind::EgressGateway.api_resource().api_version,
            EXTENSION_API_VERSION
        );
    }
}
