//! `v1 Service`, `discovery.k8s.io/v1 EndpointSlice` and `v1 Node`: what
//! a connection to a Service address is judged by (its backends, as after
//! kube-proxy's DNAT), and which addresses are the nodes'.
//!
//! Only the fields the data path needs are read; the rest of each object
//! is accepted as the API server would (the k8s-openapi types), so the
//! output of `kubectl get -o yaml` can be used as is.

use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Node as K8sNode, Service as K8sService},
    discovery::v1::EndpointSlice as K8sEndpointSlice,
};

use super::{Builder, Ctx};
use crate::{
    diagnostic::FieldPath,
    model::{Endpoint, EndpointPort, EndpointSlice, Node, Service, ServicePort},
    ports::PortRange,
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl Builder {
    pub(super) fn service(&mut self, ctx: &mut Ctx<'_, '_>, svc: K8sService) {
        let meta = &svc.metadata;
        let Some(id) = self.identify(ctx, meta.name.as_ref(), meta.namespace.as_ref(), true) else {
            return;
        };
        let spec = svc.spec.unwrap_or_default();
        let spec_path = FieldPath::of(&["spec"]);
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !matches!(
            kind,
            "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
        ) {
            self.diags.push(ctx.error(
                spec_path.key("type"),
                format!(
                    "unsupported Service type {kind:?} (expected ClusterIP, NodePort, LoadBalancer or ExternalName)"
                ),
            ));
        }
        // clusterIPs, when present, lists clusterIP first; older objects
        // (and 1.19 servers) only have clusterIP.
        let (cluster_path, cluster_raw) = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => (spec_path.key("clusterIPs"), ips.clone()),
            _ => (
                spec_path.key("clusterIP"),
                spec.cluster_ip.iter().cloned().collect(),
            ),
        };
        // "None" is a headless Service: its name resolves to the pods
        // themselves, which are judged as pods. An ExternalName Service is
        // a DNS alias: what the name resolves to is judged as itself.
        let cluster_ips = if kind == "ExternalName" {
            Vec::new()
        } else {
            self.ip_list(ctx, &cluster_raw, &cluster_path, |raw| {
                raw.is_empty() || raw == "None"
            })
        };
        let external_ips = self.ip_list(
            ctx,
            spec.external_ips.as_deref().unwrap_or_default(),
            &spec_path.key("externalIPs"),
            |_| false,
        );
        let ingress_path = FieldPath::of(&["status", "loadBalancer", "ingress"]);
        let mut load_balancer_ips = Vec::new();
        let ingress = svc
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default();
        for (i, entry) in ingress.iter().enumerate() {
            // An ingress that is only a hostname resolves elsewhere.
            if let Some(raw) = &entry.ip {
                load_balancer_ips.extend(self.ip(ctx, raw, ingress_path.index(i).key("ip")));
            }
        }
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let path = spec_path.key("ports").index(i);
            let protocol = self.protocol(ctx, p.protocol.as_deref(), path.key("protocol"));
            let port = self.port_number(ctx, i64::from(p.port), path.key("port"));
            let node_port = match p.node_port {
                None | Some(0) => Some(None),
                Some(n) => self
                    .port_number(ctx, i64::from(n), path.key("nodePort"))
                    .map(Some),
            };
            if let (Some(protocol), Some(port), Some(node_port)) = (protocol, port, node_port) {
                ports.push(ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    protocol,
                    port,
                    node_port,
                });
            }
        }
        if !self.keep {
            return;
        }
        self.model.services.push(Service {
            id,
            cluster_ips,
            external_ips,
            load_balancer_ips,
            ports,
            origin: ctx.origin(),
        });
    }

    pub(super) fn endpoint_slice(&mut self, ctx: &mut Ctx<'_, '_>, slice: K8sEndpointSlice) {
        let meta = &slice.metadata;
        let Some(id) = self.identify(ctx, meta.name.as_ref(), meta.namespace.as_ref(), true) else {
            return;
        };
        let service = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned();
        let Some(service) = service else {
            // kube-proxy ignores such a slice too: nothing routes to it.
            self.diags.push(ctx.warning(
                FieldPath::of(&["metadata", "labels"]),
                format!(
                    "no label {SERVICE_NAME_LABEL}: the slice belongs to no Service and is ignored"
                ),
            ));
            return;
        };
        if slice.address_type == "FQDN" {
            // Deprecated, and never programmed by kube-proxy.
            return;
        }
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            self.diags.push(ctx.error(
                FieldPath::of(&["addressType"]),
                format!(
                    "unsupported addressType {:?} (expected IPv4, IPv6 or FQDN)",
                    slice.address_type
                ),
            ));
        }
        let mut endpoints = Vec::new();
        for (i, e) in slice.endpoints.iter().flatten().enumerate() {
            let path = FieldPath::of(&["endpoints"]).index(i).key("addresses");
            let addresses = self.ip_list(ctx, &e.addresses, &path, |_| false);
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            endpoints.push(Endpoint { addresses, ready });
        }
        let mut ports = Vec::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            let path = FieldPath::of(&["ports"]).index(i);
            let protocol = self.protocol(ctx, p.protocol.as_deref(), path.key("protocol"));
            let port = match p.port {
                None => Some(None),
                Some(n) => self
                    .port_number(ctx, i64::from(n), path.key("port"))
                    .map(Some),
            };
            if let (Some(protocol), Some(port)) = (protocol, port) {
                ports.push(EndpointPort {
                    name: p.name.clone().unwrap_or_default(),
                    protocol,
                    port,
                });
            }
        }
        if !self.keep {
            return;
        }
        self.model.endpoint_slices.push(EndpointSlice {
            id,
            service,
            endpoints,
            ports,
            origin: ctx.origin(),
        });
    }

    pub(super) fn node(&mut self, ctx: &mut Ctx<'_, '_>, node: K8sNode) {
        let Some(id) = self.identify(ctx, node.metadata.name.as_ref(), None, false) else {
            return;
        };
        let path = FieldPath::of(&["status", "addresses"]);
        let mut addresses = Vec::new();
        let listed = node.status.and_then(|s| s.addresses).unwrap_or_default();
        for (i, a) in listed.iter().enumerate() {
            // Hostname (and InternalDNS / ExternalDNS) entries are names.
            if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
                addresses.extend(self.ip(ctx, &a.address, path.index(i).key("address")));
            }
        }
        if !self.keep {
            return;
        }
        self.model.nodes.push(Node {
            name: id.name,
            addresses,
            origin: ctx.origin(),
        });
    }

    fn ip(&mut self, ctx: &Ctx<'_, '_>, raw: &str, path: FieldPath) -> Option<IpAddr> {
        match raw.trim().parse::<IpAddr>() {
            Ok(ip) => Some(ip.to_canonical()),
            Err(_) => {
                self.diags
                    .push(ctx.error(path, format!("invalid IP address {raw:?}")));
                None
            }
        }
    }

    /// Parses each address; `skip` says which spellings mean "none".
    fn ip_list(
        &mut self,
        ctx: &Ctx<'_, '_>,
        raw: &[String],
        path: &FieldPath,
        skip: impl Fn(&str) -> bool,
    ) -> Vec<IpAddr> {
        raw.iter()
            .enumerate()
            .filter(|(_, r)| !skip(r.trim()))
            .filter_map(|(i, r)| self.ip(ctx, r, path.index(i)))
            .collect()
    }

    fn port_number(&mut self, ctx: &Ctx<'_, '_>, n: i64, path: FieldPath) -> Option<u16> {
        PortRange::port(n)
            .map_err(|e| self.diags.push(ctx.error(path, e.to_string())))
            .ok()
    }
}
