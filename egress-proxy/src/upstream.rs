//! Finding and connecting to the upstream: name resolution (system resolver
//! or static `--resolve` entries), the connect timeout, and loop
//! prevention.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use tokio::net::TcpStream;

use super::sniff::Host;

/// `--resolve HOST=IP[,IP...]`: names answered without DNS, like curl's
/// `--resolve` or a hosts file; for static setups and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticEntry {
    pub host: Host,
    pub addrs: Vec<IpAddr>,
}

impl FromStr for StaticEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, ips) = s
            .split_once('=')
            .ok_or_else(|| format!("expected HOST=IP[,IP...], got {s:?}"))?;
        let host = host.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let addrs = ips
            .split(',')
            .map(|ip| {
                ip.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { host, addrs })
    }
}

/// Why no upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot resolve {host}: no answer within {timeout:?}")]
    ResolveTimeout { host: String, timeout: Duration },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("refusing to connect to {addr}: it is this proxy (loop)")]
    Loop { addr: SocketAddr },
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
}

/// Connects out: resolution plus the proxy's own addresses to avoid.
#[derive(Clone, Debug, Default)]
pub struct Connector {
    statics: BTreeMap<Host, Vec<IpAddr>>,
    /// Addresses the proxy listens on (listeners and admin).
    own: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    /// The system resolver's own timeouts (resolv.conf's `timeout` ×
    /// `attempts` × servers) can add up to many seconds per name; a
    /// client should hear a 502 sooner than that.
    pub resolve_timeout: Duration,
}

impl Connector {
    pub fn new(
        statics: Vec<StaticEntry>,
        connect_timeout: Duration,
        resolve_timeout: Duration,
    ) -> Self {
        Self {
            statics: statics.into_iter().map(|e| (e.host, e.addrs)).collect(),
            own: Vec::new(),
            connect_timeout,
            resolve_timeout,
        }
    }

    /// Records an address this proxy serves, never to be dialled.
    pub fn add_own(&mut self, addr: SocketAddr) {
        self.own.push(addr);
    }

    /// Whether connecting to `addr` would reach this proxy. A wildcard
    /// listener (`0.0.0.0:P`, `[::]:P`) counts as every local address on P;
    /// without a list of the host's addresses, loopback and the wildcard
    /// itself stand for "local".
    pub fn is_own(&self, addr: SocketAddr) -> bool {
        let addr = super::original_dst::unmap(addr);
        self.own.iter().any(|own| {
            let own = super::original_dst::unmap(*own);
            own == addr
                || (own.port() == addr.port()
                    && own.ip().is_unspecified()
                    && (addr.ip().is_loopback() || addr.ip().is_unspecified()))
        })
    }

    /// The addresses of `host` on `port`.
    pub async fn resolve(&self, host: &Host, port: u16) -> Result<Vec<SocketAddr>, UpstreamError> {
        if let Some(ip) = host.ip() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(ips) = self.statics.get(host) {
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        // On timeout the getaddrinfo call goes on in tokio's blocking pool
        // until the system resolver gives up; only the client stops
        // waiting. The connection caps bound how many can pile up.
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let addrs: Vec<SocketAddr> = tokio::time::timeout(self.resolve_timeout, lookup)
            .await
            .map_err(|_| UpstreamError::ResolveTimeout {
                host: host.to_string(),
                timeout: self.resolve_timeout,
            })?
            .map_err(|source| UpstreamError::Resolve {
                host: host.to_string(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(UpstreamError::NoAddress {
                host: host.to_string(),
            });
        }
        Ok(addrs)
    }

    /// Connects to the first address that answers, refusing any that is the
    /// proxy itself. Returns the last error when none answers.
    pub async fn connect(&self, addrs: &[SocketAddr]) -> Result<TcpStream, UpstreamError> {
        let mut last = None;
        for &addr in addrs {
            if self.is_own(addr) {
                last = Some(UpstreamError::Loop { addr });
                continue;
            }
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(source)) => last = Some(UpstreamError::Connect { addr, source }),
                Err(_) => {
                    last = Some(UpstreamError::Timeout {
                        addr,
                        timeout: self.connect_timeout,
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::NoAddress {
            host: "(no addresses)".into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn loops_are_recognised() {
        let mut c = Connector::default();
        c.add_own(addr("127.0.0.1:15001"));
        c.add_own(addr("0.0.0.0:8443"));
        assert!(c.is_own(addr("127.0.0.1:15001")));
        assert!(c.is_own(addr("[::ffff:127.0.0.1]:15001")));
        assert!(c.is_own(addr("127.0.0.5:8443")));
        assert!(c.is_own(addr("0.0.0.0:8443")));
        assert!(!c.is_own(addr("127.0.0.1:15002")));
        assert!(!c.is_own(addr("203.0.113.10:8443")));
    }

    #[test]
    fn static_entries() {
        let e: StaticEntry = "Edition.cnn.com=203.0.113.10,[2001:db8::10]"
            .parse()
            .expect("entry");
        assert_eq!(e.host.as_str(), "edition.cnn.com");
        assert_eq!(e.addrs.len(), 2);
        assert!("edition.cnn.com".parse::<StaticEntry>().is_err());
        assert!("edition.cnn.com=nope".parse::<StaticEntry>().is_err());
    }

    #[tokio::test]
    async fn statics_win_over_dns() {
        let c = Connector::new(
            vec!["edition.cnn.com=127.0.0.9".parse().expect("entry")],
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let host: Host = "edition.cnn.com".parse().expect("host");
        assert_eq!(
            c.resolve(&host, 443).await.expect("resolve"),
            vec![addr("127.0.0.9:443")]
        );
    }
}
