//! The syntax rules kube-apiserver 1.20 applies to names, labels and CIDRs,
//! reproduced exactly: the API server is the oracle (`cargo xtask
//! apiserver-diff` compares against a real one), so the agent must neither
//! refuse what it accepts (in Kubernetes mode that would freeze every
//! node's policy) nor accept what it refuses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// RFC 1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63): namespace
/// names and `metadata.namespace`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 in all. Kubernetes'
/// regex puts no 63-character limit on each label, so neither does this
/// (a 64-character NetworkPolicy name is accepted).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63: a label value
/// (which may also be empty) and the name part of a qualified name.
fn is_name_part(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes.first().copied().is_some_and(alnum)
        && bytes.last().copied().is_some_and(alnum)
        && bytes
            .iter()
            .all(|&b| alnum(b) || b == b'-' || b == b'_' || b == b'.')
}

/// Why `key` is not a qualified name (`[prefix/]name`: label and
/// annotation keys, selector keys, finalizers), or `None` if it is one.
pub fn qualified_name_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if name.contains('/') {
        return Some(format!(
            "{key:?} is not a qualified name: at most one '/' (prefix/name)"
        ));
    }
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Some(format!("{key:?} is not a qualified name: empty prefix"));
        }
        if !is_dns_subdomain(prefix) {
            return Some(format!(
                "{key:?} is not a qualified name: the prefix must be a lower-case DNS subdomain"
            ));
        }
    }
    if !is_name_part(name) {
        return Some(format!(
            "{key:?} is not a qualified name: the name must be 1-63 characters, \
             alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ));
    }
    None
}

/// Why `value` is not a label value, or `None` if it is one.
pub fn label_value_error(value: &str) -> Option<String> {
    (!value.is_empty() && !is_name_part(value)).then(|| {
        format!(
            "{value:?} is not a valid label value: at most 63 characters, alphanumerics, \
             '-', '_' or '.', starting and ending with an alphanumeric (or empty)"
        )
    })
}

/// Finalizers Kubernetes defines; any other must be qualified with a '/'.
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

/// Why `name` is not a valid finalizer, or `None`.
pub fn finalizer_error(name: &str) -> Option<String> {
    if let Some(err) = qualified_name_error(name) {
        return Some(err);
    }
    (!name.contains('/') && !STANDARD_FINALIZERS.contains(&name)).then(|| {
        format!("{name:?} is neither a standard finalizer nor fully qualified (prefix/name)")
    })
}

/// A CIDR as Go's `net.ParseCIDR` reads it (Kubernetes 1.20 validates
/// `ipBlock` with it, built with Go ≥ 1.17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoCidr {
    /// As written, host bits included; IPv4-mapped addresses stay IPv6.
    pub net: IpNet,
    /// Written in IPv4 form: Go keeps the family of the text, which
    /// decides what `except` entries it can contain.
    pub v4_text: bool,
    /// The prefix length had leading zeros (`/016`).
    pub padded_prefix: bool,
}

/// Parses like Go 1.19's `net.ParseCIDR`: no surrounding space, a prefix
/// is required; IPv4 octets must not have leading zeros (Go ≥ 1.17), but
/// the prefix length may (`/016` is 16); IPv6 groups may have any number
/// of leading zeros as long as the value fits 16 bits (`00db8`).
pub fn parse_go_cidr(s: &str) -> Option<GoCidr> {
    let (addr, prefix) = s.split_once('/')?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Go's dtoi stops at 0xFFFFFF; anything that long is out of range anyway.
    let len: u32 = prefix.parse().ok()?;
    let padded_prefix = prefix.len() > 1 && prefix.starts_with('0');
    let (ip, v4_text) = match addr.parse::<Ipv4Addr>() {
        Ok(v4) => (IpAddr::V4(v4), true),
        Err(_) => (IpAddr::V6(parse_go_ipv6(addr)?), false),
    };
    let net = IpNet::new(ip, u8::try_from(len).ok()?).ok()?;
    Some(GoCidr {
        net,
        v4_text,
        padded_prefix,
    })
}

/// Go's IPv6 syntax differs from Rust's only in allowing a group of more
/// than four hex digits with leading zeros; trim them and let Rust parse.
fn parse_go_ipv6(s: &str) -> Option<Ipv6Addr> {
    if s.contains(['%', '[', ']']) || !s.is_ascii() {
        return None;
    }
    let groups: Vec<String> = s
        .split(':')
        .map(|g| {
            if g.len() > 4 && !g.contains('.') && g.bytes().all(|b| b.is_ascii_hexdigit()) {
                let trimmed = g.trim_start_matches('0');
                if trimmed.is_empty() {
                    "0".to_owned()
                } else {
                    trimmed.to_owned()
                }
            } else {
                g.to_owned()
            }
        })
        .collect();
    groups.join(":").parse().ok()
}

/// Whether Kubernetes 1.20 accepts `except` under `cidr`: Go's
/// `IPNet.Contains` on the except's address (an IPv4 or IPv4-mapped
/// address only matches a network written in IPv4 form), and a strictly
/// longer prefix as written.
pub fn go_except_is_subset(cidr: &GoCidr, except: &GoCidr) -> bool {
    let except_v4 = match except.net.addr() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    let contained = match (cidr.net, except_v4) {
        (IpNet::V4(net), Some(v4)) if cidr.v4_text => net.trunc().contains(&v4),
        (IpNet::V6(net), None) if !cidr.v4_text => match except.net.addr() {
            IpAddr::V6(v6) => net.trunc().contains(&v6),
            IpAddr::V4(_) => false,
        },
        _ => false,
    };
    contained && cidr.net.prefix_len() < except.net.prefix_len()
}

#[cfg(test)]
mod tests {
    //! Verdicts of a real kube-apiserver 1.20.2 (`cargo xtask
    //! apiserver-diff`), pinned so that they hold without one.
    use super::*;

    #[test]
    fn cidrs_as_kubernetes_1_20_reads_them() {
        for ok in [
            "10.0.0.0/8",
            "10.1.2.3/8",
            "10.20.0.0/016",
            "10.20.0.0/0016",
            "2001:db8::/32",
            "2001:DB8::1/32",
            "2001:00db8::/32",
            "2001:db8::/032",
            "::ffff:10.0.0.0/104",
            "::1.2.3.4/128",
        ] {
            assert!(parse_go_cidr(ok).is_some(), "{ok} is accepted by 1.20");
        }
        for bad in [
            "010.1.2.3/8",
            "10.01.2.3/16",
            "10.0.0.0",
            "2001:db8::1",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "10.0.0.0/8\n",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "::ffff:010.1.2.3/104",
            "fe80::1%eth0/64",
            "[2001:db8::]/32",
            "2001:db8::/129",
            "１0.0.0.0/8",
        ] {
            assert!(parse_go_cidr(bad).is_none(), "{bad:?} is refused by 1.20");
        }
        let padded = parse_go_cidr("10.20.0.0/016").unwrap();
        assert!(padded.padded_prefix);
        assert_eq!(padded.net.to_string(), "10.20.0.0/16");
    }

    #[test]
    fn except_containment_follows_go() {
        let c = |s| parse_go_cidr(s).unwrap();
        assert!(go_except_is_subset(&c("10.0.0.0/8"), &c("10.1.0.0/16")));
        assert!(go_except_is_subset(&c("10.0.0.0/8"), &c("10.1.2.3/16")));
        assert!(go_except_is_subset(
            &c("10.0.0.0/8"),
            &c("::ffff:10.1.0.0/112")
        ));
        assert!(!go_except_is_subset(&c("10.0.0.0/8"), &c("10.0.0.0/8")));
        assert!(!go_except_is_subset(&c("10.0.0.0/8"), &c("11.0.0.0/16")));
        assert!(!go_except_is_subset(
            &c("::ffff:10.0.0.0/104"),
            &c("10.1.0.0/16")
        ));
        assert!(!go_except_is_subset(&c("2001:db8::/32"), &c("10.0.0.0/8")));
    }

    #[test]
    fn names_and_labels_as_kubernetes_1_20_reads_them() {
        assert!(is_dns_subdomain(&"a".repeat(64)));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(!is_dns_label("a.b"));
        assert!(is_dns_label("1abc"));
        for ok in ["app", "app.kubernetes.io/name", "A", "a_b", "1"] {
            assert_eq!(qualified_name_error(ok), None, "{ok}");
        }
        for bad in [
            "Example.com/app",
            "a/b/c",
            "/app",
            "app/",
            "-app",
            "_a",
            "é",
            "",
            &"a".repeat(64),
        ] {
            assert!(qualified_name_error(bad).is_some(), "{bad:?}");
        }
        for ok in ["", "a_b.c-d", "A", &"a".repeat(63)] {
            assert_eq!(label_value_error(ok), None, "{ok}");
        }
        for bad in ["-a", "a.", "a b", "café", "a/b", &"a".repeat(64)] {
            assert!(label_value_error(bad).is_some(), "{bad:?}");
        }
        assert_eq!(finalizer_error("kubernetes"), None);
        assert_eq!(finalizer_error("example.com/foo"), None);
        assert!(finalizer_error("foo").is_some());
    }
}
