//! `Workload`: a pod (or process group) by cgroup and addresses, its named
//! ports, and its Istio capture annotations.

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    annotations,
    fields::{is_port_name, port_name_error},
    Builder, Ctx,
};
use crate::{
    diagnostic::FieldPath,
    model::{CaptureOverrides, Interception, NamedPort, Workload},
    objects::{self, Object, PortList, StringOrList, WorkloadSpec},
    ports::PortRange,
};

impl Builder {
    pub(super) fn workload(&mut self, ctx: &mut Ctx<'_, '_>, obj: Object<WorkloadSpec>) {
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
        let interception = self.interception(ctx, &annotations);
        let sidecar = obj.spec.sidecar.unwrap_or(false)
            || annotations.contains_key(annotations::SIDECAR_STATUS);
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
            sidecar,
            interception,
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

    /// `sidecar.istio.io/interceptionMode`, spelled as Istio spells it.
    fn interception(
        &mut self,
        ctx: &Ctx<'_, '_>,
        annotations: &BTreeMap<String, String>,
    ) -> Interception {
        match annotations
            .get(annotations::INTERCEPTION_MODE)
            .map(String::as_str)
        {
            None | Some("REDIRECT") => Interception::Redirect,
            Some("TPROXY") => Interception::Tproxy,
            Some("NONE") => Interception::None,
            Some(other) => {
                self.diags.push(ctx.error(
                    FieldPath::of(&["metadata", "annotations"]).key(annotations::INTERCEPTION_MODE),
                    format!("{other:?} is not an interception mode: REDIRECT, TPROXY or NONE"),
                ));
                Interception::Redirect
            }
        }
    }
}
