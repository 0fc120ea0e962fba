//! The syntax rules kube-apiserver 1.20 applies to names, labels and CIDRs,
//! reproduced exactly: the API server is the oracle (`cargo xtask
//! apiserver-diff` compares against a real one), so the agent must neither
//! refuse what it accepts (in Kubernetes mode that would freeze every
//! node's policy) nor accept what it refuses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use yaml_rust2::{
    parser::{Event, EventReceiver, Parser},
    scanner::TScalarStyle,
};

use super::diagnostic::FieldPath;

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

/// What YAML 1.1 (kubectl's parser) makes of a plain scalar that is not a
/// string: "a boolean" or "a number"; `None` for a string or null (a null
/// label value is accepted as "").
fn yaml11_type(plain: &str) -> Option<&'static str> {
    const BOOLS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    if BOOLS.contains(&plain) {
        return Some("a boolean");
    }
    let unsigned = plain.strip_prefix(['-', '+']).unwrap_or(plain);
    let digits = |s: &str, ok: fn(u8) -> bool| {
        !s.is_empty() && s.bytes().all(|b| ok(b) || b == b'_') && s.bytes().any(ok)
    };
    let number = digits(unsigned, |b| b.is_ascii_digit())
        || unsigned
            .strip_prefix("0x")
            .is_some_and(|h| digits(h, |b| b.is_ascii_hexdigit()))
        || unsigned
            .strip_prefix("0b")
            .is_some_and(|h| digits(h, |b| b == b'0' || b == b'1'))
        || matches!(unsigned, ".inf" | ".Inf" | ".INF")
        || matches!(plain, ".nan" | ".NaN" | ".NAN")
        || is_yaml11_float(unsigned);
    number.then_some("a number")
}

/// `[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?` or `\.[0-9_]+...`.
fn is_yaml11_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(at) => (&s[..at], Some(&s[at + 1..])),
        None => (s, None),
    };
    let Some((int, frac)) = mantissa.split_once('.') else {
        return false;
    };
    let digits_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    let exponent_ok = exponent.is_none_or(|e| {
        e.strip_prefix(['-', '+'])
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    });
    (int.bytes().any(|b| b.is_ascii_digit()) || frac.bytes().any(|b| b.is_ascii_digit()))
        && digits_ok(int)
        && digits_ok(frac)
        && exponent_ok
}

/// Whether YAML 1.2 (serde_yaml) also reads the plain scalar as a boolean
/// or a number. Only those are refused: in Kubernetes mode the agent
/// re-serializes API objects with serde_yaml, which quotes exactly these
/// but writes a string like `yes` or `on` plain; refusing that would refuse
/// objects the API server stored.
fn yaml12_typed(plain: &str) -> bool {
    matches!(
        serde_yaml::from_str::<serde_yaml::Value>(plain),
        Ok(serde_yaml::Value::Bool(_) | serde_yaml::Value::Number(_))
    )
}

/// Fields of a NetworkPolicy or Namespace the API server decodes as
/// strings, holding a plain scalar kubectl would send as a number or
/// boolean: `metadata.name`, `metadata.namespace`, and the values of
/// `labels`, `annotations` and `matchLabels` maps. A document that does not
/// parse yields nothing (the typed parse reports it).
pub fn yaml11_typed_strings(text: &str) -> Vec<(FieldPath, &'static str)> {
    /// The position in the document: one entry per open collection.
    enum Frame {
        Map {
            path: FieldPath,
            key: Option<String>,
        },
        Seq {
            path: FieldPath,
            next: usize,
        },
    }
    #[derive(Default)]
    struct Walk {
        stack: Vec<Frame>,
        found: Vec<(FieldPath, &'static str)>,
    }
    impl Walk {
        /// The path of the value that starts now, or `None` for a key.
        fn value_path(&mut self) -> Option<Option<FieldPath>> {
            match self.stack.last_mut() {
                None => Some(None),
                Some(Frame::Map { key: None, .. }) => None,
                Some(Frame::Map { path, key }) => {
                    let key = key.take().unwrap_or_default();
                    Some(Some(path.key(key)))
                }
                Some(Frame::Seq { path, next }) => {
                    *next += 1;
                    Some(Some(path.index(*next - 1)))
                }
            }
        }
    }
    fn is_string_field(path: &FieldPath) -> bool {
        use super::diagnostic::Segment;
        let segments = path.segments();
        let key = |i: usize| match segments.get(i) {
            Some(Segment::Key(k)) => Some(k.as_str()),
            _ => None,
        };
        let n = segments.len();
        (n == 2 && key(0) == Some("metadata") && matches!(key(1), Some("name" | "namespace")))
            || (n >= 2 && matches!(key(n - 2), Some("labels" | "annotations" | "matchLabels")))
    }
    impl EventReceiver for Walk {
        fn on_event(&mut self, ev: Event) {
            match ev {
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    // A collection used as a key gets a placeholder path.
                    let path = self.value_path().flatten().unwrap_or_else(FieldPath::root);
                    self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    self.stack.pop();
                }
                Event::Scalar(text, style, _, tag) => match self.value_path() {
                    None => {
                        if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                            *key = Some(text);
                        }
                    }
                    Some(Some(path)) => {
                        let plain = style == TScalarStyle::Plain && tag.is_none();
                        if plain && is_string_field(&path) && yaml12_typed(&text) {
                            if let Some(what) = yaml11_type(&text) {
                                self.found.push((path, what));
                            }
                        }
                    }
                    Some(None) => {}
                },
                Event::Alias(_) => {
                    self.value_path();
                }
                _ => {}
            }
        }
    }
    let mut walk = Walk::default();
    if Parser::new_from_str(text).load(&mut walk, false).is_err() {
        return Vec::new();
    }
    walk.found
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

    /// What the agent writes for an API object must pass: serde_yaml
    /// quotes strings that read as numbers or booleans, not `yes`/`on`.
    #[test]
    fn serde_yaml_output_is_never_flagged() {
        let labels: std::collections::BTreeMap<&str, &str> = [
            ("a", "yes"),
            ("b", "on"),
            ("c", "123"),
            ("d", "true"),
            ("e", "1.5"),
            ("f", "0x1F"),
            ("g", "1_000"),
        ]
        .into();
        let doc = serde_yaml::to_string(&serde_json::json!({
            "metadata": {"name": "123", "labels": labels}
        }))
        .unwrap();
        assert_eq!(yaml11_typed_strings(&doc), [], "{doc}");
    }

    #[test]
    fn plain_scalars_kubectl_reads_as_numbers_or_booleans() {
        let doc = "metadata:\n  name: 123\n  labels: {a: true, b: \"true\", c: 1.5, d: web, e: null, f: 0x1F}\n\
                   spec:\n  podSelector:\n    matchLabels:\n      tier: 7\n      mode: on\n  ports: [{port: 80}]\n";
        let found: Vec<String> = yaml11_typed_strings(doc)
            .into_iter()
            .map(|(p, what)| format!("{p}: {what}"))
            .collect();
        assert_eq!(
            found,
            [
                "metadata.name: a number",
                "metadata.labels.a: a boolean",
                "metadata.labels.c: a number",
                "metadata.labels.f: a number",
                "spec.podSelector.matchLabels.tier: a number",
            ]
        );
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
