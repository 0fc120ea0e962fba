//! Istio's `ServiceEntry`: the hosts a gateway with `allowedHosts:
//! fromServiceEntries` may reach, as Istio's REGISTRY_ONLY mode lets the
//! mesh reach them.

use super::{Builder, Ctx};
use crate::{
    diagnostic::FieldPath,
    model::{AllowedHost, ServiceEntry},
    objects::{Object, ServiceEntrySpec},
    ports::{PortRange, Protocol},
};

impl Builder {
    pub(super) fn service_entry(&mut self, ctx: &mut Ctx<'_, '_>, obj: Object<ServiceEntrySpec>) {
        let meta = &obj.metadata;
        let Some(id) = self.identify(ctx, meta.name.as_ref(), meta.namespace.as_ref(), true) else {
            return;
        };
        let spec = &obj.spec;
        let spec_path = FieldPath::of(&["spec"]);
        if spec.hosts.is_empty() {
            self.diags
                .push(ctx.error(spec_path.key("hosts"), "must list at least one host"));
        }
        // Every protocol Istio knows but UDP rides on TCP (HTTP, HTTPS,
        // TLS, GRPC, MONGO, ...). An entry without ports allows any port,
        // as an `allowedHosts` entry without ports does.
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let path = spec_path.key("ports").index(i);
            let protocol = match p.protocol.as_deref().map(str::to_ascii_uppercase) {
                Some(p) if p == "UDP" => Protocol::Udp,
                _ => Protocol::Tcp,
            };
            match PortRange::port(p.number) {
                Ok(port) => ports.push((p, protocol, port)),
                Err(e) => self
                    .diags
                    .push(ctx.error(path.key("number"), e.to_string())),
            }
            if let Some(target) = p.target_port {
                if let Err(e) = PortRange::port(target) {
                    self.diags
                        .push(ctx.error(path.key("targetPort"), e.to_string()));
                }
            }
        }
        let mut hosts = Vec::new();
        for (i, raw) in spec.hosts.iter().enumerate() {
            let path = spec_path.key("hosts").index(i);
            // Istio matches wildcards against SNI and Host headers; a
            // gateway held to addresses cannot, so it is not allowed (it
            // was not before either): a warning, and the rest of the entry
            // holds.
            if raw.trim().starts_with('*') {
                self.diags.push(ctx.warning(
                    path,
                    format!("wildcard host {raw:?} cannot be enforced by address: gateways with `fromServiceEntries` do not get it"),
                ));
                continue;
            }
            if let Some(host) = self.host_name(ctx, raw, path) {
                hosts.push(AllowedHost {
                    host,
                    ports: ports
                        .iter()
                        .map(|(_, proto, port)| (*proto, *port))
                        .collect(),
                });
            }
        }
        // Endpoints are where the mesh connects for the hosts (an IP with
        // `resolution: STATIC`, a name with `DNS`), at their own port when
        // they map the entry's port name to one.
        for (i, e) in spec.endpoints.iter().enumerate() {
            let path = spec_path.key("endpoints").index(i);
            let Some(address) = e.address.as_deref() else {
                continue;
            };
            let Some(host) = self.host_name(ctx, address, path.key("address")) else {
                continue;
            };
            let mut endpoint_ports = Vec::new();
            for (spec_port, proto, port) in &ports {
                let mapped = spec_port
                    .name
                    .as_ref()
                    .and_then(|name| e.ports.get(name))
                    .copied()
                    .or(spec_port.target_port);
                let port = match mapped.map(PortRange::port) {
                    None => *port,
                    Some(Ok(p)) => p,
                    Some(Err(err)) => {
                        self.diags
                            .push(ctx.error(path.key("ports"), err.to_string()));
                        continue;
                    }
                };
                endpoint_ports.push((*proto, port));
            }
            hosts.push(AllowedHost {
                host,
                ports: endpoint_ports,
            });
        }
        for (i, to) in spec.export_to.iter().enumerate() {
            if to.is_empty() || (to != "*" && to != "." && to != "~" && !is_label(to)) {
                self.diags.push(ctx.error(
                    spec_path.key("exportTo").index(i),
                    format!("{to:?} is neither `*`, `.`, `~` nor a namespace name"),
                ));
            }
        }
        if !self.keep {
            return;
        }
        self.model.service_entries.push(ServiceEntry {
            id,
            hosts,
            export_to: spec.export_to.clone(),
            origin: ctx.origin(),
        });
    }

    /// Gateways with `allowedHosts: fromServiceEntries` get the hosts of
    /// every entry visible in their namespace, once all are known.
    pub(super) fn hosts_from_service_entries(&mut self) {
        let entries = &self.model.service_entries;
        for g in self
            .model
            .gateways
            .iter_mut()
            .filter(|g| g.from_service_entries)
        {
            let mut hosts: Vec<AllowedHost> = Vec::new();
            let visible = entries.iter().filter(|e| e.visible_in(&g.id.namespace));
            for host in visible.flat_map(|e| &e.hosts) {
                if !hosts.contains(host) {
                    hosts.push(host.clone());
                }
            }
            g.allowed_hosts = Some(hosts);
        }
    }
}

/// A DNS label, as a namespace name is one.
fn is_label(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
