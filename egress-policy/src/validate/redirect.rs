//! `Redirect`: which workloads' outbound TCP (and DNS) goes to which
//! proxy, with Istio's include/exclude rules.

use std::net::IpAddr;

use super::{Builder, Ctx};
use crate::{
    diagnostic::FieldPath,
    model::{CaptureRules, CaptureScope, Proxy, Redirect},
    objects::{Capture, Object, RedirectSpec, WorkloadSelectorSpec},
    ports::PortRange,
};

const DEFAULT_PROXY_PORT: u16 = 15001;
const DEFAULT_DNS_PORT: u16 = 15053;

impl Builder {
    pub(super) fn redirect(&mut self, ctx: &mut Ctx<'_, '_>, obj: Object<RedirectSpec>) {
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
        let scope = match spec.capture {
            None | Some(Capture::Sidecar) => CaptureScope::Sidecar,
            Some(Capture::All) => CaptureScope::All,
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
            scope,
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
}
