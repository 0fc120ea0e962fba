//! A workload's Redirect as map contents: `CaptureInfo` and the
//! include/exclude prefixes of `CAPTURE_V4/V6`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use egress_common::{capture, CaptureInfo, MAX_CAPTURE_PORTS};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::compile::Capture;
use egress_policy::model::IpRanges;

/// What the kernel holds for one captured workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageCapture {
    pub info: CaptureInfo,
    /// Prefix → `capture::INCLUDE` or `capture::EXCLUDE`.
    pub v4: Vec<(Ipv4Net, u8)>,
    pub v6: Vec<(Ipv6Net, u8)>,
}

/// Which port list is too long, and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyPorts {
    pub field: &'static str,
    pub len: usize,
}

/// Builds the image of `capture`. The proxy address per destination family
/// is [`Capture::proxy_for`]'s (an IPv4-mapped destination is IPv4, and
/// its IPv6 socket is sent to `::ffff:<IPv4 proxy>`).
pub fn build(capture: &Capture) -> Result<ImageCapture, TooManyPorts> {
    let rules = &capture.rules;
    let mut info = CaptureInfo {
        proxy_port: capture.proxy.port(),
        dns_port: capture.dns_port.unwrap_or(0),
        ..CaptureInfo::default()
    };
    // The same per-family answer as `compile::decide` reads.
    if let Some(SocketAddr::V4(p)) = capture.proxy_for(Ipv4Addr::UNSPECIFIED.into()) {
        info.flags |= CaptureInfo::PROXY_V4;
        info.proxy_v4 = p.ip().octets();
    }
    if let Some(SocketAddr::V6(p)) = capture.proxy_for(Ipv6Addr::UNSPECIFIED.into()) {
        info.flags |= CaptureInfo::PROXY_V6;
        info.proxy_v6 = p.ip().octets();
    }
    info.include_len = ports(
        &rules.include_ports,
        &mut info.include_ports,
        "includePorts",
    )?;
    info.exclude_len = ports(
        &rules.exclude_ports,
        &mut info.exclude_ports,
        "excludePorts",
    )?;

    let excludes: Vec<IpNet> = rules
        .exclude_ip_ranges
        .iter()
        .map(|n| canonical(*n))
        .collect();
    let includes: Vec<IpNet> = match &rules.include_ip_ranges {
        IpRanges::All => vec![IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())],
        IpRanges::Only(nets) => nets.iter().map(|n| canonical(*n)).collect(),
    };
    let mut entries: Vec<(IpNet, u8)> = excludes.iter().map(|n| (*n, capture::EXCLUDE)).collect();
    // An exclude beats any include: an include prefix inside an exclude one
    // (or equal to it) would win the longest match, so it goes. One that
    // contains an exclude stays: the exclude is longer and wins there.
    for inc in includes {
        if !excludes.iter().any(|ex| ex.contains(&inc)) {
            entries.push((inc, capture::INCLUDE));
        }
    }
    entries.sort();
    entries.dedup_by(|a, b| a.0 == b.0);
    let mut image = ImageCapture {
        info,
        v4: Vec::new(),
        v6: Vec::new(),
    };
    for (net, value) in entries {
        match net {
            IpNet::V4(n) => image.v4.push((n, value)),
            IpNet::V6(n) => image.v6.push((n, value)),
        }
    }
    Ok(image)
}

/// Host bits cleared. IPv6 prefixes stay IPv6 even inside
/// `::ffff:0:0/96`: destinations are decided as IPv4 once canonical, as
/// `compile::capture` does, so such a prefix never matches there either.
fn canonical(net: IpNet) -> IpNet {
    net.trunc()
}

fn ports(
    list: &[u16],
    out: &mut [u16; MAX_CAPTURE_PORTS],
    field: &'static str,
) -> Result<u16, TooManyPorts> {
    let mut unique: Vec<u16> = list.to_vec();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() > MAX_CAPTURE_PORTS {
        return Err(TooManyPorts {
            field,
            len: unique.len(),
        });
    }
    for (slot, port) in out.iter_mut().zip(&unique) {
        *slot = *port;
    }
    Ok(u16::try_from(unique.len()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use super::*;
    use egress_policy::model::{CaptureRules, ObjectId};

    fn capture(rules: CaptureRules, proxy: &str) -> Capture {
        Capture {
            redirect: ObjectId {
                namespace: "default".into(),
                name: "r".into(),
            },
            proxy: proxy.parse::<SocketAddr>().unwrap(),
            rules,
            dns_port: None,
        }
    }

    /// What the kernel's lookup answers: longest prefix wins.
    fn lookup(image: &ImageCapture, ip: IpAddr) -> Option<u8> {
        let net_of = |n: IpNet| n;
        let all = image
            .v4
            .iter()
            .map(|(n, v)| (net_of(IpNet::V4(*n)), *v))
            .chain(image.v6.iter().map(|(n, v)| (IpNet::V6(*n), *v)));
        all.filter(|(n, _)| n.contains(&ip.to_canonical()))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, v)| v)
    }

    #[test]
    fn excludes_beat_includes_whatever_the_prefix_lengths() {
        let rules = CaptureRules {
            include_ip_ranges: IpRanges::Only(vec![
                "10.0.0.0/8".parse().unwrap(),
                "10.1.2.0/24".parse().unwrap(),
            ]),
            exclude_ip_ranges: vec!["10.1.0.0/16".parse().unwrap()],
            include_ports: vec![443, 443],
            exclude_ports: vec![22],
        };
        let image = build(&capture(rules, "127.0.0.1:15001")).unwrap();
        let at = |s: &str| lookup(&image, s.parse().unwrap());
        assert_eq!(at("10.9.9.9"), Some(capture::INCLUDE));
        assert_eq!(at("10.1.2.3"), Some(capture::EXCLUDE), "inside the exclude");
        assert_eq!(at("10.1.9.9"), Some(capture::EXCLUDE));
        assert_eq!(at("192.0.2.1"), None);
        assert_eq!(image.info.include_len, 1);
        assert_eq!(image.info.include_ports[0], 443);
        assert_eq!(image.info.exclude_ports[0], 22);
    }

    #[test]
    fn star_is_both_families_and_a_loopback_proxy_has_both() {
        let image = build(&capture(CaptureRules::default(), "127.0.0.1:15001")).unwrap();
        assert_eq!(lookup(&image, "2001:db8::1".parse().unwrap()), Some(1));
        assert_eq!(lookup(&image, "::ffff:192.0.2.1".parse().unwrap()), Some(1));
        let both = CaptureInfo::PROXY_V4 | CaptureInfo::PROXY_V6;
        assert_eq!(image.info.flags & both, both);
        assert_eq!(image.info.proxy_v6, Ipv6Addr::LOCALHOST.octets());
        let remote = build(&capture(CaptureRules::default(), "10.0.0.1:15001")).unwrap();
        assert_eq!(remote.info.flags, CaptureInfo::PROXY_V4);
    }

    #[test]
    fn long_port_lists_are_refused() {
        let rules = CaptureRules {
            exclude_ports: (1..=17).collect(),
            ..CaptureRules::default()
        };
        assert_eq!(
            build(&capture(rules, "127.0.0.1:15001")),
            Err(TooManyPorts {
                field: "excludePorts",
                len: 17
            })
        );
    }
}
