//! Parsers for the fields several kinds share: protocols, CIDRs and CIDR
//! lists, port lists, DNS and port names.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{Builder, Ctx};
use crate::{
    apimachinery::{self, parse_go_cidr},
    diagnostic::FieldPath,
    model::IpRanges,
    objects::{PortList, StringOrList},
    ports::{PortRange, Protocol},
};

impl Builder {
    pub(super) fn protocol(
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

    pub(super) fn cidr(&mut self, ctx: &Ctx<'_, '_>, raw: &str, path: FieldPath) -> Option<IpNet> {
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
    pub(super) fn k8s_cidr(
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

    pub(super) fn include_ranges(
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

    pub(super) fn exclude_ranges(
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

    pub(super) fn port_list(
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

pub(super) fn is_dns_name(s: &str) -> bool {
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
pub(super) fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

pub(super) fn port_name_error(name: &str) -> String {
    format!("{name:?} is not a valid port name (1-15 lower-case letters, digits and '-', with at least one letter)")
}
