//! Builds the validated [`Model`] from parsed documents, collecting every
//! finding instead of stopping at the first.
//!
//! This module reads each document's kind and hands it to that kind's
//! module (`namespace`, `network_policy`, `workload`, `gateway`,
//! `redirect`, `services`); `metadata` holds what every object's metadata
//! must satisfy, `selectors` and `fields` the parsers several kinds share,
//! and `cross` the checks that need every object (run by `finish`).

use std::{collections::HashMap, path::Path, sync::Arc};

use k8s_openapi::api::{
    core::v1::Namespace as K8sNamespace, networking::v1::NetworkPolicy as K8sNetworkPolicy,
};

use super::{
    diagnostic::{Diagnostic, Diagnostics, FieldPath, Location, ObjectRef},
    model::{Model, ObjectId, Origin, WorkloadSelector},
    objects::{
        EgressGatewaySpec, Object, RedirectSpec, ServiceEntrySpec, WorkloadSpec, KNOWN_KINDS,
    },
    parse::{self, ParseCache},
    source::{Document, Source},
};

mod cross;
mod fields;
mod gateway;
mod metadata;
mod namespace;
mod network_policy;
mod redirect;
mod selectors;
mod service_entry;
mod services;
mod workload;

pub use fields::{canonical_net, parse_cidr};

/// The label Kubernetes puts on every namespace (since 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Istio's per-pod capture annotations.
pub mod annotations {
    /// Written by Istio's injector on every pod it gave a sidecar.
    pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
    pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
    pub const INCLUDE_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
    pub const EXCLUDE_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    pub const INCLUDE_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
    pub const EXCLUDE_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
}

/// A policy set that passed validation, with its warnings.
#[derive(Debug)]
pub struct Loaded {
    pub model: Model,
    pub warnings: Vec<Diagnostic>,
}

/// Loads and validates sources that are already in memory.
pub fn load_sources(sources: &[Source]) -> Result<Loaded, super::Rejected> {
    load_sources_cached(sources, &mut ParseCache::default())
}

/// [`load_sources`], taking the typed parse of every document that has not
/// changed since the last load from `cache` (see [`ParseCache`]). The
/// result is the same: only parsing is skipped, validation runs in full.
pub fn load_sources_cached(
    sources: &[Source],
    cache: &mut ParseCache,
) -> Result<Loaded, super::Rejected> {
    cache.begin();
    let mut builder = Builder::default();
    let mut docs = Vec::new();
    for source in sources {
        match cache.documents(source) {
            Ok(new) => docs.extend(new),
            Err(diag) => builder.diags.push(*diag),
        }
    }
    for (number, doc) in docs.iter().enumerate() {
        builder.document(number, doc, cache);
    }
    cache.end();
    builder.finish(&docs)
}

/// Where a selector is used, so that one matching nothing can be reported
/// once every workload is known. Kept as a path, not a located diagnostic:
/// locating builds the document's line index, which only the rare selector
/// that matches nothing should pay for.
struct SelectorUse {
    /// The document's number in `load_sources`' list.
    doc: usize,
    object: ObjectRef,
    field: FieldPath,
    what: &'static str,
    selector: WorkloadSelector,
}

/// `(kind, namespace, name)`: what must be unique.
type ObjectKey = (String, String, String);

#[derive(Default)]
struct Builder {
    diags: Diagnostics,
    model: Model,
    /// `(kind, namespace, name)` → where it was first defined.
    seen: HashMap<ObjectKey, (Arc<Path>, Option<Location>)>,
    selector_uses: Vec<SelectorUse>,
    /// Where each gateway and redirect was defined, by id, for conflicts.
    locations: HashMap<(&'static str, ObjectId), Diagnostic>,
    /// False while validating a duplicate, which must not enter the model.
    keep: bool,
}

/// The object being validated: where findings go.
struct Ctx<'d, 'a> {
    doc: &'d Document<'a>,
    /// `doc`'s number in `load_sources`' list.
    number: usize,
    object: ObjectRef,
}

impl Ctx<'_, '_> {
    fn selector_use(
        &self,
        field: FieldPath,
        what: &'static str,
        selector: WorkloadSelector,
    ) -> SelectorUse {
        SelectorUse {
            doc: self.number,
            object: self.object.clone(),
            field,
            what,
            selector,
        }
    }

    fn error(&self, field: FieldPath, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(self.doc.file, message)
            .at(self.doc.locate(&field))
            .on(&self.object)
            .field(field)
    }

    fn warning(&self, field: FieldPath, message: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(self.doc.file, message)
            .at(self.doc.locate(&field))
            .on(&self.object)
            .field(field)
    }

    fn origin(&self) -> Origin {
        Origin {
            file: Arc::clone(self.doc.file),
            line: self.doc.locate(&FieldPath::root()).map(|l| l.line),
        }
    }
}

impl Builder {
    fn document(&mut self, number: usize, doc: &Document<'_>, cache: &mut ParseCache) {
        if doc.head.empty {
            return;
        }
        let root = FieldPath::root();
        let api_version = doc.top_level_scalar("apiVersion");
        let kind = doc.top_level_scalar("kind");
        let fail = |msg: String, field: FieldPath| {
            Diagnostic::error(doc.file, msg)
                .at(doc.locate(&field))
                .field(field)
        };
        let (Some(api_version), Some(kind)) = (api_version, kind) else {
            let missing = if kind.is_none() { "kind" } else { "apiVersion" };
            self.diags.push(fail(
                format!("missing `{missing}`: every document must be a Kubernetes-style object"),
                root,
            ));
            return;
        };
        if !KNOWN_KINDS.contains(&(api_version, kind)) {
            let known = KNOWN_KINDS
                .iter()
                .map(|(a, k)| format!("{a} {k}"))
                .collect::<Vec<_>>()
                .join(", ");
            let message = match KNOWN_KINDS.iter().find(|(_, k)| *k == kind) {
                Some((expected, _)) => {
                    format!("kind {kind} has apiVersion {expected}, not {api_version:?}")
                }
                None => format!(
                    "unknown kind {kind:?} (apiVersion {api_version}); expected one of: {known}"
                ),
            };
            let field = if KNOWN_KINDS.iter().any(|(_, k)| *k == kind) {
                FieldPath::of(&["apiVersion"])
            } else {
                FieldPath::of(&["kind"])
            };
            self.diags.push(fail(message, field));
            return;
        }

        // Named from the raw document, so that schema errors found by the
        // typed parse already say which object they are about.
        let namespaced = !matches!(kind, "Namespace" | "Node");
        let mut ctx = Ctx {
            doc,
            number,
            object: ObjectRef {
                kind: kind.to_owned(),
                namespace: namespaced.then(|| {
                    doc.scalar(&FieldPath::of(&["metadata", "namespace"]))
                        .unwrap_or("default")
                        .to_owned()
                }),
                name: doc
                    .scalar(&FieldPath::of(&["metadata", "name"]))
                    .unwrap_or("(unnamed)")
                    .to_owned(),
            },
        };
        match kind {
            "Namespace" => {
                if let Some(ns) =
                    parse::typed::<K8sNamespace>(doc, &ctx.object, &mut self.diags, cache)
                {
                    self.namespace(&mut ctx, ns);
                }
            }
            "NetworkPolicy" => {
                if let Some(np) =
                    parse::typed::<K8sNetworkPolicy>(doc, &ctx.object, &mut self.diags, cache)
                {
                    self.network_policy(&mut ctx, np);
                }
            }
            "Workload" => {
                if let Some(obj) =
                    parse::typed::<Object<WorkloadSpec>>(doc, &ctx.object, &mut self.diags, cache)
                {
                    self.workload(&mut ctx, obj);
                }
            }
            "EgressGateway" => {
                if let Some(obj) = parse::typed::<Object<EgressGatewaySpec>>(
                    doc,
                    &ctx.object,
                    &mut self.diags,
                    cache,
                ) {
                    self.gateway(&mut ctx, obj);
                }
            }
            "Redirect" => {
                if let Some(obj) =
                    parse::typed::<Object<RedirectSpec>>(doc, &ctx.object, &mut self.diags, cache)
                {
                    self.redirect(&mut ctx, obj);
                }
            }
            "Service" => {
                if let Some(svc) = parse::typed(doc, &ctx.object, &mut self.diags, cache) {
                    self.service(&mut ctx, svc);
                }
            }
            "EndpointSlice" => {
                if let Some(slice) = parse::typed(doc, &ctx.object, &mut self.diags, cache) {
                    self.endpoint_slice(&mut ctx, slice);
                }
            }
            "Node" => {
                if let Some(node) = parse::typed(doc, &ctx.object, &mut self.diags, cache) {
                    self.node(&mut ctx, node);
                }
            }
            "ServiceEntry" => {
                if let Some(obj) = parse::typed::<Object<ServiceEntrySpec>>(
                    doc,
                    &ctx.object,
                    &mut self.diags,
                    cache,
                ) {
                    self.service_entry(&mut ctx, obj);
                }
            }
            _ => unreachable!("kind checked against KNOWN_KINDS"),
        }
    }
}

impl Ctx<'_, '_> {
    fn object_label(&self) -> String {
        match &self.object.namespace {
            Some(ns) => format!("{ns}/{}", self.object.name),
            None => self.object.name.clone(),
        }
    }
}
