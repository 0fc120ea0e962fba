//! `EgressGateway`: the workloads that alone may reach outside
//! `clusterCIDRs`, and the hosts they may reach.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{fields::is_dns_name, Builder, Ctx};
use crate::{
    diagnostic::FieldPath,
    model::{AllowedHost, EgressGateway, HostName},
    objects::{
        AllowedHostSpec, AllowedHostsSpec, EgressGatewaySpec, HostPortSpec, Object,
        FROM_SERVICE_ENTRIES,
    },
    ports::{PortRange, Protocol},
};

impl Builder {
    pub(super) fn gateway(&mut self, ctx: &mut Ctx<'_, '_>, obj: Object<EgressGatewaySpec>) {
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
        let hosts_path = spec_path.key("allowedHosts");
        let (allowed_hosts, from_service_entries) = match &obj.spec.allowed_hosts {
            None => (None, false),
            Some(AllowedHostsSpec::List(hosts)) => (
                Some(
                    hosts
                        .iter()
                        .enumerate()
                        .filter_map(|(i, h)| self.allowed_host(ctx, h, hosts_path.index(i)))
                        .collect(),
                ),
                false,
            ),
            // Filled in by the cross-object checks, once every
            // ServiceEntry is known; none visible allows nothing.
            Some(AllowedHostsSpec::From(from)) if from == FROM_SERVICE_ENTRIES => {
                (Some(Vec::new()), true)
            }
            Some(AllowedHostsSpec::From(other)) => {
                self.diags.push(ctx.error(
                    hosts_path,
                    format!("{other:?}: expected a list of hosts, or `{FROM_SERVICE_ENTRIES}`"),
                ));
                (None, false)
            }
        };
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
            from_service_entries,
            origin: ctx.origin(),
        });
    }

    fn allowed_host(
        &mut self,
        ctx: &Ctx<'_, '_>,
        spec: &AllowedHostSpec,
        path: FieldPath,
    ) -> Option<AllowedHost> {
        let host = self.host_name(ctx, &spec.host, path.key("host"))?;
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

    /// A host as a gateway can be held to it: an address, a CIDR or a DNS
    /// name; `None` (with an error at `path`) for anything else.
    pub(super) fn host_name(
        &mut self,
        ctx: &Ctx<'_, '_>,
        raw: &str,
        path: FieldPath,
    ) -> Option<HostName> {
        let raw = raw.trim();
        let host = if let Ok(ip) = raw.parse::<IpAddr>() {
            HostName::Net(IpNet::from(ip.to_canonical()))
        } else if let Ok(net) = raw.parse::<IpNet>() {
            HostName::Net(net.trunc())
        } else if raw.starts_with("*.") {
            self.diags.push(ctx.error(
                path,
                format!("wildcard host {raw:?} cannot be enforced by address: list each host"),
            ));
            return None;
        } else if is_dns_name(raw) {
            HostName::Dns(raw.trim_end_matches('.').to_ascii_lowercase())
        } else {
            self.diags.push(ctx.error(
                path,
                format!("{raw:?} is neither a DNS name nor an IP address or CIDR"),
            ));
            return None;
        };
        Some(host)
    }
}
