//! One question (A or AAAA of one name) to the configured DNS servers,
//! through hickory's stub resolver.

use std::{net::IpAddr, sync::Arc, time::Duration};

use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{runtime::TokioRuntimeProvider, DnsError, NetError},
    proto::rr::{rdata::CNAME, Name, RData, Record, RecordType},
    system_conf, TokioResolver,
};

use super::{
    record::{Answer, Family},
    ResolveError, ResolverSettings, Upstream,
};

/// The DNS client, shared by every lookup task.
#[derive(Clone)]
pub(crate) struct Querier {
    resolver: TokioResolver,
    /// `IP:PORT, …`, for error messages.
    servers: Arc<str>,
    /// The same servers, for the gateways' DNS relay.
    addrs: Arc<[std::net::SocketAddr]>,
}

impl Querier {
    pub(crate) fn new(settings: &ResolverSettings) -> Result<Self, ResolveError> {
        let (config, mut opts) = match &settings.upstream {
            Upstream::System => {
                let (config, opts) = system_conf::read_system_conf().map_err(|source| {
                    ResolveError::SystemConfig {
                        source: Box::new(source),
                    }
                })?;
                if config.name_servers().is_empty() {
                    return Err(ResolveError::NoSystemServers);
                }
                (config, opts)
            }
            Upstream::Servers(addrs) => {
                let servers = addrs
                    .iter()
                    .map(|addr| {
                        // TCP is there for answers too big for UDP.
                        let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                            .into_iter()
                            .map(|mut c| {
                                c.port = addr.port();
                                c
                            })
                            .collect();
                        NameServerConfig::new(addr.ip(), true, connections)
                    })
                    .collect();
                (
                    ResolverConfig::from_name_servers(servers),
                    ResolverOpts::default(),
                )
            }
        };
        let addrs = server_addrs(&config).into();
        let servers = describe(&config);
        opts.timeout = settings.query_timeout;
        opts.attempts = settings.attempts;
        // The allow-list follows DNS, not the agent's own /etc/hosts.
        opts.use_hosts_file = ResolveHosts::Never;
        // The CNAME chain is needed to tie the addresses to the name asked
        // and to take the chain's shortest TTL.
        opts.preserve_intermediates = true;
        // Only for CNAME targets within one lookup: the asked name's own
        // entry is cleared before each question (see `ask`).
        opts.cache_size = 256;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|source| ResolveError::Build {
                servers: servers.clone(),
                source: Box::new(source),
            })?;
        Ok(Self {
            resolver,
            servers: servers.into(),
            addrs,
        })
    }

    /// Asks the servers. `name` must be fully qualified, so that no search
    /// domain is tried: `api.example.com` in a policy must never become
    /// `api.example.com.default.svc.cluster.local`.
    pub(crate) async fn ask(&self, name: &Name, family: Family) -> Result<Answer, ResolveError> {
        let record_type = match family {
            Family::V4 => RecordType::A,
            Family::V6 => RecordType::AAAA,
        };
        // We track TTLs ourselves and ask shortly before expiry; hickory's
        // cache would hand back the very answer being refreshed.
        self.resolver.clear_lookup_cache(name.clone(), record_type);
        match self.resolver.lookup(name.clone(), record_type).await {
            Ok(lookup) => Ok(addresses(name, family, lookup.answers())),
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => Ok(Answer {
                addrs: Vec::new(),
                ttl: none.negative_ttl.map(|s| Duration::from_secs(s.into())),
            }),
            Err(source) => Err(ResolveError::Lookup {
                name: display_name(name),
                record: family.record(),
                servers: self.servers.to_string(),
                source: Box::new(source),
            }),
        }
    }

    pub(crate) fn servers(&self) -> &str {
        &self.servers
    }

    pub(crate) fn addrs(&self) -> Arc<[std::net::SocketAddr]> {
        Arc::clone(&self.addrs)
    }
}

/// The addresses in `records` that belong to `name`, directly or through
/// its CNAME chain, and the shortest TTL along the way. Records for other
/// owners are ignored: a server cannot widen the allow-list with extras.
pub(crate) fn addresses(name: &Name, family: Family, records: &[Record]) -> Answer {
    let mut owners = vec![name.clone()];
    let mut ttl = None::<u32>;
    // Each pass adds at least one owner or stops, so this ends.
    loop {
        let before = owners.len();
        for r in records {
            if let RData::CNAME(CNAME(target)) = &r.data {
                if owners.contains(&r.name) && !owners.contains(target) {
                    owners.push(target.clone());
                    ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                }
            }
        }
        if owners.len() == before {
            break;
        }
    }
    let mut addrs = Vec::new();
    for r in records.iter().filter(|r| owners.contains(&r.name)) {
        let addr = match (&r.data, family) {
            (RData::A(a), Family::V4) => IpAddr::V4(a.0),
            (RData::AAAA(a), Family::V6) => IpAddr::V6(a.0),
            _ => continue,
        };
        addrs.push(addr);
        ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
    }
    Answer {
        addrs,
        ttl: ttl.map(|s| Duration::from_secs(s.into())),
    }
}

fn server_addrs(config: &ResolverConfig) -> Vec<std::net::SocketAddr> {
    config
        .name_servers()
        .iter()
        .map(|ns| {
            let port = ns.connections.first().map_or(53, |c| c.port);
            std::net::SocketAddr::new(ns.ip, port)
        })
        .collect()
}

fn describe(config: &ResolverConfig) -> String {
    let addrs: Vec<String> = server_addrs(config)
        .iter()
        .map(ToString::to_string)
        .collect();
    addrs.join(", ")
}

/// The name as the policy wrote it: no trailing dot.
pub(crate) fn display_name(name: &Name) -> String {
    let text = name.to_ascii();
    text.trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_resolver::proto::rr::rdata::{A, AAAA};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }

    #[test]
    fn follows_the_cname_chain_and_takes_its_shortest_ttl() {
        let records = [
            Record::from_rdata(
                name("api.example.com."),
                300,
                RData::CNAME(CNAME(name("lb.example.net."))),
            ),
            Record::from_rdata(
                name("lb.example.net."),
                20,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
            ),
            Record::from_rdata(
                name("lb.example.net."),
                60,
                RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
            ),
            // Not ours: never allowed.
            Record::from_rdata(
                name("evil.example.org."),
                1,
                RData::A(A(Ipv4Addr::new(198, 51, 100, 1))),
            ),
        ];
        let got = addresses(&name("api.example.com."), Family::V4, &records);
        assert_eq!(got.addrs, [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))]);
        assert_eq!(got.ttl, Some(Duration::from_secs(20)));
    }

    #[test]
    fn a_cname_loop_terminates_with_no_addresses() {
        let records = [
            Record::from_rdata(
                name("a.example."),
                5,
                RData::CNAME(CNAME(name("b.example."))),
            ),
            Record::from_rdata(
                name("b.example."),
                5,
                RData::CNAME(CNAME(name("a.example."))),
            ),
        ];
        let got = addresses(&name("a.example."), Family::V6, &records);
        assert!(got.addrs.is_empty());
    }
}
