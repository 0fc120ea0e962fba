//! Builds the validated [`Model`] from parsed documents, collecting every
//! finding instead of stopping at the first.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::Path,
    sync::Arc,
};

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::Namespace as K8sNamespace,
        networking::v1::{
            NetworkPolicy as K8sNetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer,
            NetworkPolicyPort,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    apimachinery::{
        self, finalizer_error, go_except_is_subset, is_dns_label, is_dns_subdomain,
        label_value_error, parse_go_cidr, qualified_name_error,
    },
    diagnostic::{Diagnostic, Diagnostics, FieldPath, Location, ObjectRef},
    model::{
        AllowedHost, CaptureOverrides, CaptureRules, EgressGateway, EgressRule, HostName, IpBlock,
        IpRanges, Model, NamedPort, Namespace, NamespaceScope, NetworkPolicy, ObjectId, Origin,
        Peer, Proxy, Redirect, Workload, WorkloadSelector,
    },
    objects::{
        self, AllowedHostSpec, EgressGatewaySpec, HostPortSpec, Object, PortList, RedirectSpec,
        StringOrList, WorkloadSelectorSpec, WorkloadSpec, KNOWN_KINDS,
    },
    parse,
    ports::{PortMatch, PortRange, PortSpec, Protocol},
    selector::{Requirement, Selector},
    source::{self, Document, Source},
};

mod services;

/// The label Kubernetes puts on every namespace (since 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Istio's per-pod capture annotations.
pub mod annotations {
    pub const INCLUDE_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
    pub const EXCLUDE_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    pub const INCLUDE_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
    pub const EXCLUDE_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
}

const DEFAULT_PROXY_PORT: u16 = 15001;
const DEFAULT_DNS_PORT: u16 = 15053;

/// A policy set that passed validation, with its warnings.
#[derive(Debug)]
pub struct Loaded {
    pub model: Model,
    pub warnings: Vec<Diagnostic>,
}

/// Loads and validates sources that are already in memory.
pub fn load_sources(sources: &[Source]) -> Result<Loaded, super::Rejected> {
    let mut builder = Builder::default();
    let mut docs = Vec::new();
    for source in sources {
        match source::documents(source) {
            Ok(new) => docs.extend(new),
            Err(diag) => builder.diags.push(*diag),
        }
    }
    for (number, doc) in docs.iter().enumerate() {
        builder.document(number, doc);
    }
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
    fn document(&mut self, number: usize, doc: &Document<'_>) {
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
                if let Some(ns) = parse::typed::<K8sNamespace>(doc, &ctx.object, &mut self.diags) {
                    self.namespace(&mut ctx, ns);
                }
            }
            "NetworkPolicy" => {
                if let Some(np) =
                    parse::typed::<K8sNetworkPolicy>(doc, &ctx.object, &mut self.diags)
                {
                    self.network_policy(&mut ctx, np);
                }
            }
            "Workload" => {
                if let Some(obj) =
                    parse::typed::<Object<WorkloadSpec>>(doc, &ctx.object, &mut self.diags)
                {
                    self.workload(&mut ctx, obj);
                }
            }
            "EgressGateway" => {
                if let Some(obj) =
                    parse::typed::<Object<EgressGatewaySpec>>(doc, &ctx.object, &mut self.diags)
                {
                    self.gateway(&mut ctx, obj);
                }
            }
            "Redirect" => {
                if let Some(obj) =
                    parse::typed::<Object<RedirectSpec>>(doc, &ctx.object, &mut self.diags)
                {
                    self.redirect(&mut ctx, obj);
                }
            }
            "Service" => {
                if let Some(svc) = parse::typed(doc, &ctx.object, &mut self.diags) {
                    self.service(&mut ctx, svc);
                }
            }
            "EndpointSlice" => {
                if let Some(slice) = parse::typed(doc, &ctx.object, &mut self.diags) {
                    self.endpoint_slice(&mut ctx, slice);
                }
            }
            "Node" => {
                if let Some(node) = parse::typed(doc, &ctx.object, &mut self.diags) {
                    self.node(&mut ctx, node);
                }
            }
            _ => unreachable!("kind checked against KNOWN_KINDS"),
        }
    }

    /// Reads `metadata.name`/`namespace`, names the object in `ctx`, and
    /// refuses duplicates. Returns `None` when the object has no usable name.
    /// A duplicate is still validated (so all its errors are reported) but
    /// never enters the model, where it would trip cross-object checks.
    fn identify(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        name: Option<&String>,
        namespace: Option<&String>,
        namespaced: bool,
    ) -> Option<ObjectId> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            self.diags.push(ctx.error(
                FieldPath::of(&["metadata", "name"]),
                "required: every object needs a name",
            ));
            return None;
        };
        let namespace = if namespaced {
            namespace
                .filter(|n| !n.is_empty())
                .cloned()
                .unwrap_or_else(|| "default".to_owned())
        } else {
            String::new()
        };
        ctx.object.name = name.clone();
        ctx.object.namespace = namespaced.then(|| namespace.clone());
        // As Kubernetes: a Namespace's name and every metadata.namespace are
        // DNS labels (no dots, at most 63); other names are DNS subdomains.
        let name_ok = if namespaced {
            is_dns_subdomain(name)
        } else {
            is_dns_label(name)
        };
        if !name_ok {
            self.diags.push(ctx.error(
                FieldPath::of(&["metadata", "name"]),
                if namespaced {
                    format!("{name:?} is not a valid Kubernetes name: a lower-case DNS subdomain (alphanumerics, '-' and '.', at most 253)")
                } else {
                    format!("{name:?} is not a valid Kubernetes name for a namespace: a lower-case DNS label (alphanumerics and '-', at most 63)")
                },
            ));
        }
        if namespaced && !is_dns_label(&namespace) {
            self.diags.push(ctx.error(
                FieldPath::of(&["metadata", "namespace"]),
                format!("{namespace:?} is not a valid Kubernetes name for a namespace: a lower-case DNS label (alphanumerics and '-', at most 63)"),
            ));
        }
        let key = (ctx.object.kind.clone(), namespace.clone(), name.clone());
        let here = (Arc::clone(ctx.doc.file), ctx.doc.locate(&FieldPath::root()));
        if let Some((file, loc)) = self.seen.get(&key) {
            let at = match loc {
                Some(l) => format!("{}:{}", file.display(), l.line),
                None => file.display().to_string(),
            };
            self.diags.push(ctx.error(
                FieldPath::of(&["metadata", "name"]),
                format!(
                    "duplicate {} {}: already defined at {at}",
                    ctx.object.kind,
                    ctx.object_label()
                ),
            ));
            self.keep = false;
        } else {
            self.keep = true;
            self.seen.insert(key, here);
        }
        Some(ObjectId::new(namespace, name.clone()))
    }

    /// What kube-apiserver checks in every object's metadata besides its
    /// name: label keys and values, annotation keys, finalizers.
    fn metadata(&mut self, ctx: &Ctx<'_, '_>, meta: &ObjectMeta) {
        let path = FieldPath::of(&["metadata"]);
        self.labels(ctx, meta.labels.as_ref(), path.key("labels"));
        for key in meta.annotations.iter().flatten().map(|(k, _)| k) {
            // Kubernetes checks annotation keys lower-cased.
            if let Some(err) = qualified_name_error(&key.to_lowercase()) {
                self.diags
                    .push(ctx.error(path.key("annotations").key(key.clone()), err));
            }
        }
        self.finalizers(ctx, meta.finalizers.as_deref(), path.key("finalizers"));
    }

    fn finalizers(&mut self, ctx: &Ctx<'_, '_>, names: Option<&[String]>, path: FieldPath) {
        for (i, name) in names.into_iter().flatten().enumerate() {
            if let Some(err) = finalizer_error(name) {
                self.diags.push(ctx.error(path.index(i), err));
            }
        }
    }

    /// Label keys must be qualified names and values label values, in
    /// metadata and in `matchLabels` alike.
    fn labels(
        &mut self,
        ctx: &Ctx<'_, '_>,
        labels: Option<&BTreeMap<String, String>>,
        path: FieldPath,
    ) -> bool {
        let mut ok = true;
        for (key, value) in labels.into_iter().flatten() {
            let error = qualified_name_error(key).or_else(|| label_value_error(value));
            if let Some(err) = error {
                self.diags.push(ctx.error(path.key(key.clone()), err));
                ok = false;
            }
        }
        ok
    }

    fn namespace(&mut self, ctx: &mut Ctx<'_, '_>, ns: K8sNamespace) {
        let Some(id) = self.identify(ctx, ns.metadata.name.as_ref(), None, false) else {
            return;
        };
        self.metadata(ctx, &ns.metadata);
        let finalizers = ns.spec.as_ref().and_then(|s| s.finalizers.as_deref());
        self.finalizers(ctx, finalizers, FieldPath::of(&["spec", "finalizers"]));
        let mut labels = objects::string_map(&ns.metadata.labels);
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), id.name.clone());
        if !self.keep {
            return;
        }
        self.model.namespaces.insert(
            id.name.clone(),
            Namespace {
                name: id.name,
                labels,
                declared: true,
            },
        );
    }

    fn workload(&mut self, ctx: &mut Ctx<'_, '_>, obj: Object<WorkloadSpec>) {
        let meta = &obj.metadata;
        let Some(id) = self.identify(ctx, meta.name.as_ref(), meta.namespace.as_ref(), true) else {
            return;
        };
        let spec_path = FieldPath::of(&["spec"]);
        let cgroup = obj.spec.cgroup.as_deref().map(|c| c.trim().to_owned());
        match cgroup.as_deref() {
            Some("") => self.diags.push(ctx.error(
                spec_path.key("cgroup"),
                "must not be empty (leave it out for a pod on another node)",
            )),
            Some(c) if c.split('/').any(|c| c == "..") => self.diags.push(ctx.error(
                spec_path.key("cgroup"),
                format!("{c:?} must not contain `..`: it would escape the cgroup2 mount"),
            )),
            _ => {}
        }
        let mut addresses = Vec::new();
        for (i, addr) in obj.spec.addresses.iter().enumerate() {
            match addr.trim().parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip.to_canonical()),
                Err(_) => self.diags.push(ctx.error(
                    spec_path.key("addresses").index(i),
                    format!("invalid IP address {addr:?}"),
                )),
            }
        }
        let mut ports = Vec::new();
        for (i, p) in obj.spec.ports.iter().enumerate() {
            let path = spec_path.key("ports").index(i);
            let protocol = self.protocol(ctx, p.protocol.as_deref(), path.key("protocol"));
            let port = PortRange::port(p.port)
                .map_err(|e| self.diags.push(ctx.error(path.key("port"), e.to_string())))
                .ok();
            if !is_port_name(&p.name) {
                self.diags
                    .push(ctx.error(path.key("name"), port_name_error(&p.name)));
            } else if let (Some(protocol), Some(port)) = (protocol, port) {
                ports.push(NamedPort {
                    name: p.name.clone(),
                    port,
                    protocol,
                });
            }
        }
        let annotations = objects::string_map(&meta.annotations);
        let capture_overrides = self.capture_overrides(ctx, &annotations);
        if !self.keep {
            return;
        }
        self.model.workloads.push(Workload {
            id,
            labels: objects::string_map(&meta.labels),
            annotations,
            cgroup,
            node: obj.spec.node_name.clone(),
            addresses,
            ports,
            capture_overrides,
            origin: ctx.origin(),
        });
    }

    fn capture_overrides(
        &mut self,
        ctx: &Ctx<'_, '_>,
        annotations: &BTreeMap<String, String>,
    ) -> CaptureOverrides {
        let path = |key: &str| FieldPath::of(&["metadata", "annotations"]).key(key);
        let mut overrides = CaptureOverrides::default();
        if let Some(v) = annotations.get(annotations::INCLUDE_IP_RANGES) {
            overrides.include_ip_ranges = self.include_ranges(
                ctx,
                &StringOrList::String(v.clone()),
                path(annotations::INCLUDE_IP_RANGES),
            );
        }
        if let Some(v) = annotations.get(annotations::EXCLUDE_IP_RANGES) {
            overrides.exclude_ip_ranges = self.exclude_ranges(
                ctx,
                &StringOrList::String(v.clone()),
                path(annotations::EXCLUDE_IP_RANGES),
            );
        }
        if let Some(v) = annotations.get(annotations::INCLUDE_PORTS) {
            overrides.include_ports = self.port_list(
                ctx,
                &PortList::String(v.clone()),
                path(annotations::INCLUDE_PORTS),
            );
        }
        if let Some(v) = annotations.get(annotations::EXCLUDE_PORTS) {
            overrides.exclude_ports = self.port_list(
                ctx,
                &PortList::String(v.clone()),
                path(annotations::EXCLUDE_PORTS),
            );
        }
        overrides
    }

    fn network_policy(&mut self, ctx: &mut Ctx<'_, '_>, np: K8sNetworkPolicy) {
        let meta = &np.metadata;
        let Some(id) = self.identify(ctx, meta.name.as_ref(), meta.namespace.as_ref(), true) else {
            return;
        };
        self.metadata(ctx, meta);
        let spec_path = FieldPath::of(&["spec"]);
        // The API server accepts a NetworkPolicy without spec (or with
        // `spec: null`) as the empty spec: every pod, Ingress only.
        let spec = np.spec.unwrap_or_else(|| {
            self.diags.push(ctx.warning(
                spec_path.clone(),
                "no spec: Kubernetes reads it as an Ingress-only policy for every pod; it has no egress effect",
            ));
            Default::default()
        });
        let pod_selector = self
            .selector(
                ctx,
                spec.pod_selector.as_ref(),
                spec_path.key("podSelector"),
            )
            .unwrap_or_default();
        let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let affects_egress = match &spec.policy_types {
            // Kubernetes 1.20 refuses more than two entries (duplicates
            // within two are accepted).
            Some(types) if types.len() > 2 => {
                self.diags.push(ctx.error(
                    spec_path.key("policyTypes"),
                    format!(
                        "may not specify more than two policyTypes ({} given)",
                        types.len()
                    ),
                ));
                false
            }
            // Kubernetes defaults an empty list exactly like a missing one.
            Some(types) if !types.is_empty() => {
                for (i, t) in types.iter().enumerate() {
                    if t != "Ingress" && t != "Egress" {
                        self.diags.push(ctx.error(
                            spec_path.key("policyTypes").index(i),
                            format!("unknown policy type {t:?} (expected Ingress or Egress)"),
                        ));
                    }
                }
                types.iter().any(|t| t == "Egress")
            }
            // Kubernetes' default: Egress only when the policy has egress rules.
            _ => has_egress_rules,
        };
        if !affects_egress && has_egress_rules {
            self.diags.push(ctx.warning(
                spec_path.key("policyTypes"),
                "egress rules are ignored: policyTypes does not include Egress",
            ));
        }
        let mut egress = Vec::new();
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            let rule_path = spec_path.key("egress").index(i);
            let mut to = Vec::new();
            for (j, peer) in rule.to.iter().flatten().enumerate() {
                if let Some(peer) = self.peer(ctx, &id, peer, rule_path.key("to").index(j)) {
                    to.push(peer);
                }
            }
            let mut ports = Vec::new();
            for (j, port) in rule.ports.iter().flatten().enumerate() {
                if let Some(port) = self.port(ctx, port, rule_path.key("ports").index(j)) {
                    ports.push(port);
                }
            }
            egress.push(EgressRule { to, ports });
        }
        self.ingress(ctx, &id, spec.ingress.as_deref(), spec_path.key("ingress"));
        self.selector_uses.push(ctx.selector_use(
            spec_path.key("podSelector"),
            "podSelector selects no workload: the policy applies to nothing",
            WorkloadSelector {
                namespaces: NamespaceScope::Own(id.namespace.clone()),
                pods: pod_selector.clone(),
            },
        ));
        if !self.keep {
            return;
        }
        self.model.network_policies.push(NetworkPolicy {
            id,
            pod_selector,
            affects_egress,
            egress,
            origin: ctx.origin(),
        });
    }

    /// Ingress rules are not enforced (the agent controls egress), but the
    /// API server validates them as egress rules, so must the agent.
    fn ingress(
        &mut self,
        ctx: &Ctx<'_, '_>,
        policy: &ObjectId,
        rules: Option<&[NetworkPolicyIngressRule]>,
        path: FieldPath,
    ) {
        // Peers report selectors that match nothing; that is noise for
        // rules that are never enforced, so those reports are dropped.
        let uses = self.selector_uses.len();
        for (i, rule) in rules.into_iter().flatten().enumerate() {
            let rule_path = path.index(i);
            for (j, peer) in rule.from.iter().flatten().enumerate() {
                self.peer(ctx, policy, peer, rule_path.key("from").index(j));
            }
            for (j, port) in rule.ports.iter().flatten().enumerate() {
                self.port(ctx, port, rule_path.key("ports").index(j));
            }
        }
        self.selector_uses.truncate(uses);
    }

    fn peer(
        &mut self,
        ctx: &Ctx<'_, '_>,
        policy: &ObjectId,
        peer: &NetworkPolicyPeer,
        path: FieldPath,
    ) -> Option<Peer> {
        let has_selector = peer.namespace_selector.is_some() || peer.pod_selector.is_some();
        match (&peer.ip_block, has_selector) {
            (Some(_), true) => {
                self.diags.push(ctx.error(
                    path,
                    "ipBlock cannot be combined with namespaceSelector or podSelector in one peer",
                ));
                None
            }
            (None, false) => {
                self.diags.push(ctx.error(
                    path,
                    "a peer needs one of ipBlock, namespaceSelector or podSelector",
                ));
                None
            }
            (Some(block), false) => {
                let block_path = path.key("ipBlock");
                let go_cidr = self.k8s_cidr(ctx, &block.cidr, block_path.key("cidr"))?;
                let cidr = canonical_net(go_cidr.net.trunc());
                let mut except = Vec::new();
                for (k, e) in block.except.iter().flatten().enumerate() {
                    let e_path = block_path.key("except").index(k);
                    let Some(go_hole) = self.k8s_cidr(ctx, e, e_path.clone()) else {
                        continue;
                    };
                    // Containment as Go decides it on the text's families
                    // and prefix lengths; the hole is then enforced in its
                    // canonical form.
                    if go_except_is_subset(&go_cidr, &go_hole) {
                        except.push(canonical_net(go_hole.net.trunc()));
                    } else {
                        self.diags.push(ctx.error(
                            e_path,
                            format!("except {e} is not a strict subset of cidr {}", block.cidr),
                        ));
                    }
                }
                Some(Peer::IpBlock(IpBlock { cidr, except }))
            }
            (None, true) => {
                let namespaces = match &peer.namespace_selector {
                    Some(sel) => NamespaceScope::Selected(self.selector(
                        ctx,
                        Some(sel),
                        path.key("namespaceSelector"),
                    )?),
                    None => NamespaceScope::Own(policy.namespace.clone()),
                };
                let pods =
                    self.selector(ctx, peer.pod_selector.as_ref(), path.key("podSelector"))?;
                let selector = WorkloadSelector { namespaces, pods };
                self.selector_uses.push(ctx.selector_use(
                    path,
                    "peer matches no workload: this peer allows nothing yet",
                    selector.clone(),
                ));
                Some(Peer::Workloads(selector))
            }
        }
    }

    fn port(
        &mut self,
        ctx: &Ctx<'_, '_>,
        port: &NetworkPolicyPort,
        path: FieldPath,
    ) -> Option<PortSpec> {
        let protocol = self.protocol(ctx, port.protocol.as_deref(), path.key("protocol"));
        // Kubernetes 1.20 has no endPort: its API server silently drops the
        // field, so it accepts any value. A valid range is enforced (as
        // Kubernetes ≥ 1.21 does); one it could not honour is ignored with
        // a warning, leaving what the 1.20 API server stores: `port` alone.
        let end_port = match (&port.port, port.end_port) {
            (_, None) => None,
            (Some(IntOrString::Int(start)), Some(end))
                if PortRange::port(i64::from(*start))
                    .and_then(|s| {
                        PortRange::port(i64::from(end)).and_then(|e| PortRange::new(s, e))
                    })
                    .is_ok() =>
            {
                Some(end)
            }
            (start, Some(end)) => {
                let why = match start {
                    None => "there is no port".to_owned(),
                    Some(IntOrString::String(name)) => format!("port {name:?} is named"),
                    Some(IntOrString::Int(start)) => {
                        format!("it is not a port from {start} to 65535")
                    }
                };
                self.diags.push(ctx.warning(
                    path.key("endPort"),
                    format!(
                        "endPort {end} is ignored ({why}); Kubernetes 1.20 has no endPort and \
                         drops it, so only `port` applies"
                    ),
                ));
                None
            }
        };
        let matched = match (&port.port, end_port) {
            (None, _) => Some(PortMatch::Range(PortRange::ALL)),
            (Some(IntOrString::String(name)), _) => {
                if let Ok(n) = name.parse::<i64>() {
                    // A quoted number: Kubernetes treats "80" as a name, which
                    // can never match; refusing it is kinder than ignoring it.
                    self.diags.push(ctx.error(
                        path.key("port"),
                        format!("port {name:?} is a string; write it as the number {n}"),
                    ));
                    None
                } else if !is_port_name(name) {
                    self.diags
                        .push(ctx.error(path.key("port"), port_name_error(name)));
                    None
                } else {
                    Some(PortMatch::Named(name.clone()))
                }
            }
            (Some(IntOrString::Int(start)), end) => {
                let start = PortRange::port(i64::from(*start))
                    .map_err(|e| self.diags.push(ctx.error(path.key("port"), e.to_string())))
                    .ok()?;
                let end = match end {
                    None => start,
                    Some(e) => PortRange::port(i64::from(e))
                        .map_err(|err| {
                            self.diags
                                .push(ctx.error(path.key("endPort"), err.to_string()))
                        })
                        .ok()?,
                };
                PortRange::new(start, end)
                    .map_err(|e| {
                        self.diags
                            .push(ctx.error(path.key("endPort"), e.to_string()))
                    })
                    .ok()
                    .map(PortMatch::Range)
            }
        };
        Some(PortSpec {
            protocol: protocol?,
            port: matched?,
        })
    }

    fn protocol(
        &mut self,
        ctx: &Ctx<'_, '_>,
        protocol: Option<&str>,
        path: FieldPath,
    ) -> Option<Protocol> {
        match protocol {
            None => Some(Protocol::Tcp),
            Some(p) if p == "TCP" || p == "UDP" || p == "SCTP" => p.parse().ok(),
            Some(p) => {
                self.diags.push(ctx.error(
                    path,
                    format!("unsupported protocol {p:?} (expected TCP, UDP or SCTP)"),
                ));
                None
            }
        }
    }

    fn gateway(&mut self, ctx: &mut Ctx<'_, '_>, obj: Object<EgressGatewaySpec>) {
        let meta = &obj.metadata;
        let Some(id) = self.identify(ctx, meta.name.as_ref(), meta.namespace.as_ref(), true) else {
            return;
        };
        let spec_path = FieldPath::of(&["spec"]);
        let selector =
            self.workload_selector(ctx, &id, &obj.spec.selector, spec_path.key("selector"));
        let mut cluster_cidrs = Vec::new();
        for (i, c) in obj.spec.cluster_cidrs.iter().enumerate() {
            if let Some(net) = self.cidr(ctx, c, spec_path.key("clusterCIDRs").index(i)) {
                cluster_cidrs.push(net);
            }
        }
        if obj.spec.cluster_cidrs.is_empty() {
            self.diags.push(ctx.error(
                spec_path.key("clusterCIDRs"),
                "must list at least one CIDR: without them every address is the internet",
            ));
        }
        let allowed_hosts = obj.spec.allowed_hosts.as_ref().map(|hosts| {
            hosts
                .iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    self.allowed_host(ctx, h, spec_path.key("allowedHosts").index(i))
                })
                .collect()
        });
        let Some(selector) = selector else { return };
        if !self.keep {
            return;
        }
        self.selector_uses.push(ctx.selector_use(
            spec_path.key("selector"),
            "selector matches no workload: no workload may reach the internet",
            selector.clone(),
        ));
        self.locations.insert(
            ("EgressGateway", id.clone()),
            ctx.error(spec_path.key("selector"), ""),
        );
        self.model.gateways.push(EgressGateway {
            id,
            selector,
            cluster_cidrs,
            allowed_hosts,
            origin: ctx.origin(),
        });
    }

    fn allowed_host(
        &mut self,
        ctx: &Ctx<'_, '_>,
        spec: &AllowedHostSpec,
        path: FieldPath,
    ) -> Option<AllowedHost> {
        let raw = spec.host.trim();
        let host = if let Ok(ip) = raw.parse::<IpAddr>() {
            HostName::Net(IpNet::from(ip.to_canonical()))
        } else if let Ok(net) = raw.parse::<IpNet>() {
            HostName::Net(net.trunc())
        } else if raw.starts_with("*.") {
            self.diags.push(ctx.error(
                path.key("host"),
                format!("wildcard host {raw:?} cannot be enforced by address: list each host"),
            ));
            return None;
        } else if is_dns_name(raw) {
            HostName::Dns(raw.trim_end_matches('.').to_ascii_lowercase())
        } else {
            self.diags.push(ctx.error(
                path.key("host"),
                format!("{raw:?} is neither a DNS name nor an IP address or CIDR"),
            ));
            return None;
        };
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let p_path = path.key("ports").index(i);
            let (number, protocol) = match p {
                HostPortSpec::Number(n) => (*n, None),
                HostPortSpec::Full { port, protocol, .. } => (*port, protocol.as_deref()),
            };
            // ServiceEntry protocols (HTTP, HTTPS, TLS) all ride on TCP.
            let protocol = match protocol.map(str::to_ascii_uppercase).as_deref() {
                None | Some("TCP" | "HTTP" | "HTTPS" | "HTTP2" | "TLS" | "GRPC") => {
                    Some(Protocol::Tcp)
                }
                Some("UDP") => Some(Protocol::Udp),
                Some(other) => {
                    self.diags.push(ctx.error(
                        p_path.key("protocol"),
                        format!("unsupported protocol {other:?} (expected TCP, UDP, HTTP, HTTPS or TLS)"),
                    ));
                    None
                }
            };
            match PortRange::port(number) {
                Ok(port) => {
                    if let Some(protocol) = protocol {
                        ports.push((protocol, port));
                    }
                }
                Err(e) => self.diags.push(ctx.error(p_path, e.to_string())),
            }
        }
        Some(AllowedHost { host, ports })
    }

    fn redirect(&mut self, ctx: &mut Ctx<'_, '_>, obj: Object<RedirectSpec>) {
        let meta = &obj.metadata;
        let Some(id) = self.identify(ctx, meta.name.as_ref(), meta.namespace.as_ref(), true) else {
            return;
        };
        let spec = &obj.spec;
        let spec_path = FieldPath::of(&["spec"]);
        let capture = self.workload_selector(
            ctx,
            &id,
            &WorkloadSelectorSpec {
                namespace_selector: spec.namespace_selector.clone(),
                pod_selector: spec.pod_selector.clone(),
            },
            spec_path.clone(),
        );
        let proxy_path = spec_path.key("proxy");
        let address = match &spec.proxy.address {
            None => Some(IpAddr::from([127, 0, 0, 1])),
            Some(a) => a
                .trim()
                .parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| {
                    self.diags.push(ctx.error(
                        proxy_path.key("address"),
                        format!("invalid IP address {a:?}"),
                    ))
                })
                .ok(),
        };
        let port = match spec.proxy.port {
            None => Some(DEFAULT_PROXY_PORT),
            Some(p) => PortRange::port(p)
                .map_err(|e| {
                    self.diags
                        .push(ctx.error(proxy_path.key("port"), e.to_string()))
                })
                .ok(),
        };
        let proxy_selector = match &spec.proxy.selector {
            None => Some(None),
            Some(sel) => self
                .workload_selector(ctx, &id, sel, proxy_path.key("selector"))
                .map(Some),
        };
        let mut rules = CaptureRules::default();
        if let Some(v) = &spec.include_ip_ranges {
            if let Some(r) = self.include_ranges(ctx, v, spec_path.key("includeIPRanges")) {
                rules.include_ip_ranges = r;
            }
        }
        if let Some(v) = &spec.exclude_ip_ranges {
            rules.exclude_ip_ranges = self
                .exclude_ranges(ctx, v, spec_path.key("excludeIPRanges"))
                .unwrap_or_default();
        }
        if let Some(v) = &spec.include_ports {
            rules.include_ports = self
                .port_list(ctx, v, spec_path.key("includePorts"))
                .unwrap_or_default();
        }
        if let Some(v) = &spec.exclude_ports {
            rules.exclude_ports = self
                .port_list(ctx, v, spec_path.key("excludePorts"))
                .unwrap_or_default();
        }
        let dns_port = match &spec.capture_dns {
            Some(dns) if dns.enabled => match dns.port {
                None => Some(DEFAULT_DNS_PORT),
                Some(p) => PortRange::port(p)
                    .map_err(|e| {
                        self.diags
                            .push(ctx.error(spec_path.key("captureDNS").key("port"), e.to_string()))
                    })
                    .ok(),
            },
            _ => None,
        };
        let (Some(capture), Some(address), Some(port), Some(proxy_selector)) =
            (capture, address, port, proxy_selector)
        else {
            return;
        };
        if !self.keep {
            return;
        }
        self.selector_uses.push(ctx.selector_use(
            spec_path.key("podSelector"),
            "selects no workload: nothing is redirected",
            capture.clone(),
        ));
        if let Some(sel) = &proxy_selector {
            self.selector_uses.push(ctx.selector_use(
                proxy_path.key("selector"),
                "proxy selector matches no workload",
                sel.clone(),
            ));
        }
        self.locations.insert(
            ("Redirect", id.clone()),
            ctx.error(spec_path.key("podSelector"), ""),
        );
        self.model.redirects.push(Redirect {
            id,
            capture,
            proxy: Proxy {
                address,
                port,
                selector: proxy_selector,
            },
            rules,
            dns_port,
            origin: ctx.origin(),
        });
    }

    fn workload_selector(
        &mut self,
        ctx: &Ctx<'_, '_>,
        owner: &ObjectId,
        spec: &WorkloadSelectorSpec,
        path: FieldPath,
    ) -> Option<WorkloadSelector> {
        let namespaces = match &spec.namespace_selector {
            Some(sel) => NamespaceScope::Selected(self.selector(
                ctx,
                Some(sel),
                path.key("namespaceSelector"),
            )?),
            None => NamespaceScope::Own(owner.namespace.clone()),
        };
        let pods = self.selector(ctx, spec.pod_selector.as_ref(), path.key("podSelector"))?;
        Some(WorkloadSelector { namespaces, pods })
    }

    /// Converts a Kubernetes label selector; absent means everything.
    fn selector(
        &mut self,
        ctx: &Ctx<'_, '_>,
        sel: Option<&LabelSelector>,
        path: FieldPath,
    ) -> Option<Selector> {
        let Some(sel) = sel else {
            return Some(Selector::everything());
        };
        let mut requirements = Vec::new();
        let mut ok = self.labels(ctx, sel.match_labels.as_ref(), path.key("matchLabels"));
        for (key, value) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals {
                key: key.clone(),
                value: value.clone(),
            });
        }
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let e_path = path.key("matchExpressions").index(i);
            let key = expr.key.clone();
            // Kubernetes 1.20 checks the key, not the values.
            if let Some(err) = qualified_name_error(&key) {
                self.diags.push(ctx.error(e_path.key("key"), err));
                ok = false;
            }
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let needs_values = matches!(expr.operator.as_str(), "In" | "NotIn");
            if !needs_values && !matches!(expr.operator.as_str(), "Exists" | "DoesNotExist") {
                self.diags.push(ctx.error(
                    e_path.key("operator"),
                    format!(
                        "unknown operator {:?} (expected In, NotIn, Exists or DoesNotExist)",
                        expr.operator
                    ),
                ));
                ok = false;
                continue;
            }
            if needs_values && values.is_empty() {
                self.diags.push(ctx.error(
                    e_path.key("values"),
                    format!("operator {} needs at least one value", expr.operator),
                ));
                ok = false;
                continue;
            }
            if !needs_values && !values.is_empty() {
                self.diags.push(ctx.error(
                    e_path.key("values"),
                    format!("operator {} takes no values", expr.operator),
                ));
                ok = false;
                continue;
            }
            requirements.push(match expr.operator.as_str() {
                "In" => Requirement::In { key, values },
                "NotIn" => Requirement::NotIn { key, values },
                "Exists" => Requirement::Exists { key },
                _ => Requirement::DoesNotExist { key },
            });
        }
        ok.then(|| Selector::new(requirements))
    }

    fn cidr(&mut self, ctx: &Ctx<'_, '_>, raw: &str, path: FieldPath) -> Option<IpNet> {
        match parse_cidr(raw) {
            Ok((net, exact)) => {
                if !exact {
                    self.diags.push(ctx.warning(
                        path,
                        format!("{raw} has host bits set; it is read as {net}"),
                    ));
                }
                Some(net)
            }
            Err(message) => {
                self.diags.push(ctx.error(path, message));
                None
            }
        }
    }

    /// An `ipBlock` CIDR, read as Kubernetes 1.20 reads it (Go's parser:
    /// no spaces, a prefix is required). Forms it accepts but that are not
    /// canonical (host bits, a zero-padded prefix) are accepted with a
    /// warning saying what is enforced.
    fn k8s_cidr(
        &mut self,
        ctx: &Ctx<'_, '_>,
        raw: &str,
        path: FieldPath,
    ) -> Option<apimachinery::GoCidr> {
        let Some(cidr) = parse_go_cidr(raw) else {
            self.diags.push(ctx.error(
                path,
                format!("invalid CIDR {raw:?}: Kubernetes requires address/prefix-length, without spaces or leading zeros in IPv4 octets"),
            ));
            return None;
        };
        let canonical = canonical_net(cidr.net.trunc());
        if cidr.padded_prefix || cidr.net.trunc() != cidr.net {
            let why = match (cidr.padded_prefix, cidr.net.trunc() != cidr.net) {
                (true, true) => "has a zero-padded prefix length and host bits set",
                (true, false) => "has a zero-padded prefix length",
                _ => "has host bits set",
            };
            self.diags
                .push(ctx.warning(path, format!("{raw} {why}; it is enforced as {canonical}")));
        }
        Some(cidr)
    }

    fn include_ranges(
        &mut self,
        ctx: &Ctx<'_, '_>,
        value: &StringOrList,
        path: FieldPath,
    ) -> Option<IpRanges> {
        let items = split_list(value);
        if items.iter().any(|s| s == "*") {
            if items.len() > 1 {
                self.diags
                    .push(ctx.error(path, "\"*\" cannot be combined with other ranges"));
                return None;
            }
            return Some(IpRanges::All);
        }
        self.cidr_list(ctx, &items, path).map(IpRanges::Only)
    }

    fn exclude_ranges(
        &mut self,
        ctx: &Ctx<'_, '_>,
        value: &StringOrList,
        path: FieldPath,
    ) -> Option<Vec<IpNet>> {
        let items = split_list(value);
        if items.iter().any(|s| s == "*") {
            // istio-iptables refuses this too: it would disable capture silently.
            self.diags
                .push(ctx.error(path, "\"*\" is not allowed in excludeIPRanges"));
            return None;
        }
        self.cidr_list(ctx, &items, path)
    }

    fn cidr_list(
        &mut self,
        ctx: &Ctx<'_, '_>,
        items: &[String],
        path: FieldPath,
    ) -> Option<Vec<IpNet>> {
        let mut nets = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match parse_cidr(item) {
                Ok((net, _)) => nets.push(net),
                Err(message) => {
                    // A comma-separated string is one YAML field: name the item.
                    self.diags
                        .push(ctx.error(path.clone(), format!("item {i}: {message}")));
                    ok = false;
                }
            }
        }
        ok.then_some(nets)
    }

    fn port_list(
        &mut self,
        ctx: &Ctx<'_, '_>,
        value: &PortList,
        path: FieldPath,
    ) -> Option<Vec<u16>> {
        let numbers: Vec<Result<i64, String>> = match value {
            PortList::List(list) => list.iter().map(|n| Ok(*n)).collect(),
            PortList::String(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<i64>().map_err(|_| s.to_owned()))
                .collect(),
        };
        let mut ports = Vec::new();
        let mut ok = true;
        for (i, n) in numbers.into_iter().enumerate() {
            match n
                .map_err(|s| format!("{s:?} is not a port number"))
                .and_then(|n| PortRange::port(n).map_err(|e| e.to_string()))
            {
                Ok(p) => ports.push(p),
                Err(message) => {
                    self.diags
                        .push(ctx.error(path.clone(), format!("item {i}: {message}")));
                    ok = false;
                }
            }
        }
        // The kernel's `CaptureInfo` has room for this many distinct ports
        // per list. Refused here rather than when the kernel is programmed:
        // a pod's annotation over it is then reported and ignored like any
        // bad annotation, instead of failing the whole node's apply.
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        if ok && distinct.len() > egress_common::MAX_CAPTURE_PORTS {
            self.diags.push(ctx.error(
                path,
                format!(
                    "{} distinct ports; at most {} fit (capture ranges with includeIPRanges/excludeIPRanges instead)",
                    distinct.len(),
                    egress_common::MAX_CAPTURE_PORTS
                ),
            ));
            ok = false;
        }
        ok.then_some(ports)
    }

    /// Cross-object checks, once everything is parsed.
    fn finish(mut self, docs: &[Document<'_>]) -> Result<Loaded, super::Rejected> {
        // Namespaces that workloads live in but nobody declared.
        for w in &self.model.workloads {
            let name = w.id.namespace.clone();
            self.model
                .namespaces
                .entry(name.clone())
                .or_insert_with(|| Namespace {
                    labels: BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), name.clone())]),
                    name,
                    declared: false,
                });
        }
        self.unique_workload_resources();
        self.exclusive_claims();
        for use_ in std::mem::take(&mut self.selector_uses) {
            if self.model.select(&use_.selector).next().is_none() {
                let doc = &docs[use_.doc];
                self.diags.push(
                    Diagnostic::warning(doc.file, use_.what)
                        .at(doc.locate(&use_.field))
                        .on(&use_.object)
                        .field(use_.field),
                );
            }
        }
        let has_errors = self.diags.has_errors();
        let mut diagnostics = self.diags.into_vec();
        diagnostics.sort_by(|a, b| {
            (&a.file, a.location, b.severity).cmp(&(&b.file, b.location, a.severity))
        });
        if has_errors {
            return Err(super::Rejected { diagnostics });
        }
        Ok(Loaded {
            model: self.model,
            warnings: diagnostics,
        })
    }

    /// Two workloads must not share a cgroup or an address: the data plane
    /// keys on both, and a shared key would give one workload the other's
    /// policy.
    fn unique_workload_resources(&mut self) {
        let mut cgroups: HashMap<&str, &Workload> = HashMap::new();
        let mut addresses: HashMap<IpAddr, &Workload> = HashMap::new();
        for w in &self.model.workloads {
            let object = ObjectRef {
                kind: "Workload".into(),
                namespace: Some(w.id.namespace.clone()),
                name: w.id.name.clone(),
            };
            let diag = |field: FieldPath, msg: String| {
                Diagnostic::error(&w.origin.file, msg)
                    .at(w.origin.line.map(|line| Location { line, column: 1 }))
                    .on(&object)
                    .field(field)
            };
            // Only this node's workloads are keyed by the data plane; a
            // peer elsewhere may briefly share an address with one that
            // replaced it (a pod moved), which must not reject the set.
            let Some(cgroup) = &w.cgroup else {
                continue;
            };
            if let Some(first) = cgroups.insert(cgroup.trim_matches('/'), w) {
                self.diags.push(diag(
                    FieldPath::of(&["spec", "cgroup"]),
                    format!("cgroup {cgroup:?} is already Workload {}'s", first.id),
                ));
            }
            for (i, addr) in w.addresses.iter().enumerate() {
                if let Some(first) = addresses.insert(*addr, w) {
                    if first.id != w.id {
                        self.diags.push(diag(
                            FieldPath::of(&["spec", "addresses"]).index(i),
                            format!("address {addr} is already Workload {}'s", first.id),
                        ));
                    }
                }
            }
        }
    }

    /// A workload belongs to at most one gateway and one redirect: two
    /// claims would leave its verdict to load order.
    fn exclusive_claims(&mut self) {
        let model = &self.model;
        let mut conflicts = Vec::new();
        for (kind, claims) in [
            (
                "EgressGateway",
                model
                    .gateways
                    .iter()
                    .map(|g| (&g.id, &g.selector))
                    .collect::<Vec<_>>(),
            ),
            (
                "Redirect",
                model
                    .redirects
                    .iter()
                    .map(|r| (&r.id, &r.capture))
                    .collect::<Vec<_>>(),
            ),
        ] {
            let mut owner: HashMap<&ObjectId, &ObjectId> = HashMap::new();
            for (id, selector) in claims {
                for w in model.select(selector) {
                    if let Some(first) = owner.insert(&w.id, id) {
                        conflicts.push((kind, id.clone(), w.id.clone(), first.clone()));
                    }
                }
            }
        }
        for (kind, id, workload, first) in conflicts {
            if let Some(base) = self.locations.get(&(kind, id)) {
                let mut d = base.clone();
                d.message = format!("workload {workload} is already claimed by {kind} {first}");
                self.diags.push(d);
            }
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

/// Parses a CIDR (or a bare address as a host route). IPv4-mapped IPv6
/// ranges become IPv4 ranges, so both spellings of an address get one
/// verdict. Returns whether the input had no host bits set.
pub fn parse_cidr(raw: &str) -> Result<(IpNet, bool), String> {
    let raw = raw.trim();
    let net = match raw.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match raw.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("invalid CIDR {raw:?}")),
        },
    };
    let net = canonical_net(net);
    let trunc = net.trunc();
    Ok((trunc, trunc == net))
}

/// Maps `::ffff:a.b.c.d/n` (n ≥ 96) to `a.b.c.d/(n-96)`.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

fn split_list(value: &StringOrList) -> Vec<String> {
    match value {
        StringOrList::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        StringOrList::List(list) => list.iter().map(|s| s.trim().to_owned()).collect(),
    }
}

fn is_dns_name(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    s.len() <= 253
        && s.contains(|c: char| c.is_ascii_alphabetic())
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An IANA service name, as Kubernetes requires for named ports.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn port_name_error(name: &str) -> String {
    format!("{name:?} is not a valid port name (1-15 lower-case letters, digits and '-', with at least one letter)")
}
