//! The gateway's REGISTRY_ONLY allow-list: which names and ports it
//! forwards to, from an EgressGateway's `allowedHosts` and/or `--allow`
//! flags.

use std::{
    fmt,
    str::FromStr,
    sync::{Arc, PoisonError, RwLock},
};

use ipnet::IpNet;

use super::sniff::Host;
use egress_policy::{
    model::{AllowedHost, EgressGateway, HostName},
    ports::Protocol,
};

/// One allowed destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub host: Pattern,
    /// Empty: any port.
    pub ports: Vec<u16>,
}

/// What a rule's host matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// A DNS name, exactly (case-insensitively).
    Name(Host),
    /// `*.example.com`: any name strictly below `example.com`, as Istio's
    /// ServiceEntry wildcard hosts.
    Suffix(String),
    /// IP literals inside a network.
    Net(IpNet),
}

impl Pattern {
    fn matches(&self, host: &Host) -> bool {
        match self {
            Self::Name(name) => name == host,
            Self::Suffix(suffix) => host
                .as_str()
                .strip_suffix(suffix.as_str())
                .is_some_and(|below| below.ends_with('.') && below.len() > 1),
            Self::Net(net) => host.ip().is_some_and(|ip| net.contains(&ip)),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(h) => write!(f, "{h}"),
            Self::Suffix(s) => write!(f, "*.{s}"),
            Self::Net(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Pattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(suffix) = s.strip_prefix("*.") {
            let host: Host = suffix.parse().map_err(|e| format!("{e}"))?;
            return Ok(Self::Suffix(host.as_str().to_owned()));
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self::Net(net));
        }
        match s.parse::<Host>() {
            Ok(host) => match host.ip() {
                Some(ip) => Ok(Self::Net(IpNet::from(ip))),
                None => Ok(Self::Name(host)),
            },
            Err(e) => Err(e.to_string()),
        }
    }
}

impl FromStr for Rule {
    type Err = String;

    /// `HOST`, `HOST:PORT`, `*.SUFFIX:PORT`, `CIDR`, `[V6]:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = match s.rsplit_once(':') {
            // A bare IPv6 address or CIDR has colons but no port.
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
            _ => (s, None),
        };
        let ports = match port {
            None => Vec::new(),
            Some(p) => vec![p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("bad port {p:?} in {s:?}"))?],
        };
        let host = host.parse().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Self { host, ports })
    }
}

/// Whether a gateway forwards a name and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowList {
    /// ALLOW_ANY: an EgressGateway without `allowedHosts`.
    Any,
    /// REGISTRY_ONLY: only these.
    Only(Vec<Rule>),
}

impl AllowList {
    pub fn allows(&self, host: &Host, port: u16) -> bool {
        match self {
            Self::Any => true,
            Self::Only(rules) => rules
                .iter()
                .any(|r| r.host.matches(host) && (r.ports.is_empty() || r.ports.contains(&port))),
        }
    }

    /// Adds `--allow` rules; ALLOW_ANY stays ALLOW_ANY.
    pub fn with(self, extra: Vec<Rule>) -> Self {
        match self {
            Self::Any => Self::Any,
            Self::Only(mut rules) => {
                rules.extend(extra);
                Self::Only(rules)
            }
        }
    }

    /// A gateway's `allowedHosts` (its TCP ports; UDP and SCTP entries do
    /// not apply to a TCP proxy).
    pub fn from_gateway(gateway: &EgressGateway) -> Result<Self, String> {
        let Some(hosts) = &gateway.allowed_hosts else {
            return Ok(Self::Any);
        };
        hosts
            .iter()
            .filter_map(|h| rule_of(h).transpose())
            .collect::<Result<_, _>>()
            .map(Self::Only)
    }

    /// For log lines: the allowed patterns.
    pub fn describe(&self) -> String {
        match self {
            Self::Any => "ALLOW_ANY".into(),
            Self::Only(rules) => {
                let names: Vec<String> = rules
                    .iter()
                    .map(|r| match r.ports.as_slice() {
                        [] => r.host.to_string(),
                        ports => format!(
                            "{}:{}",
                            r.host,
                            ports
                                .iter()
                                .map(u16::to_string)
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    })
                    .collect();
                format!("REGISTRY_ONLY {}", names.join(" "))
            }
        }
    }
}

/// The allow-list a running gateway consults, replaced whole on reload
/// (SIGHUP) while connections are being checked against it.
#[derive(Clone, Debug)]
pub struct SharedAllowList(Arc<RwLock<AllowList>>);

impl SharedAllowList {
    pub fn new(allow: AllowList) -> Self {
        Self(Arc::new(RwLock::new(allow)))
    }

    pub fn allows(&self, host: &Host, port: u16) -> bool {
        // A poisoned lock still holds a whole list: replace() only ever
        // swaps complete values.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .allows(host, port)
    }

    /// Takes effect for every connection checked from now on; open
    /// connections keep going.
    pub fn replace(&self, allow: AllowList) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = allow;
    }

    pub fn describe(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .describe()
    }
}

impl From<AllowList> for SharedAllowList {
    fn from(allow: AllowList) -> Self {
        Self::new(allow)
    }
}

/// `None` when the entry names only non-TCP ports.
fn rule_of(allowed: &AllowedHost) -> Result<Option<Rule>, String> {
    let host = match &allowed.host {
        HostName::Net(net) => Pattern::Net(*net),
        HostName::Dns(name) => name.parse()?,
    };
    let ports: Vec<u16> = allowed
        .ports
        .iter()
        .filter(|(proto, _)| *proto == Protocol::Tcp)
        .map(|(_, port)| *port)
        .collect();
    if ports.is_empty() && !allowed.ports.is_empty() {
        return Ok(None);
    }
    Ok(Some(Rule { host, ports }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Host {
        s.parse().expect("host")
    }

    fn rules(list: &[&str]) -> AllowList {
        AllowList::Only(list.iter().map(|r| r.parse().expect("rule")).collect())
    }

    #[test]
    fn names_ports_wildcards_and_nets() {
        let allow = rules(&[
            "edition.cnn.com:443",
            "*.wikipedia.org",
            "203.0.113.0/24",
            "[2001:db8::1]:80",
        ]);
        assert!(allow.allows(&host("EDITION.cnn.com"), 443));
        assert!(!allow.allows(&host("edition.cnn.com"), 80));
        assert!(!allow.allows(&host("cnn.com"), 443));
        assert!(allow.allows(&host("en.wikipedia.org"), 1));
        assert!(!allow.allows(&host("wikipedia.org"), 443));
        assert!(!allow.allows(&host("evilwikipedia.org"), 443));
        assert!(allow.allows(&host("203.0.113.9"), 22));
        assert!(allow.allows(&host("2001:db8::1"), 80));
        assert!(!allow.allows(&host("2001:db8::1"), 443));
        assert!(AllowList::Any.allows(&host("anything.example"), 1));
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!("edition.cnn.com:0".parse::<Rule>().is_err());
        assert!("edition cnn".parse::<Rule>().is_err());
        assert!("a.com:http".parse::<Rule>().is_err());
    }

    #[test]
    fn from_the_seed_gateway() {
        let loaded = egress_policy::load(&[std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies"
        ))])
        .expect("seed policies load");
        let gateway = loaded
            .model
            .gateways
            .iter()
            .find(|g| g.id.to_string() == "istio-system/istio-egressgateway")
            .expect("seed gateway");
        let allow = AllowList::from_gateway(gateway).expect("allow-list");
        assert!(allow.allows(&host("edition.cnn.com"), 443));
        assert!(!allow.allows(&host("edition.cnn.com"), 22));
        assert!(!allow.allows(&host("example.com"), 443));
    }
}
