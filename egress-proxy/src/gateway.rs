//! Gateway mode: route each connection by TLS SNI (passthrough) or HTTP
//! Host to the named host, only if the allow-list allows it.
//!
//! The port is the original destination's, from a PROXY v2 header sent by a
//! sidecar, or else the port the client connected to (as an Istio gateway's
//! port-per-protocol listeners). Names are resolved at connect time, so the
//! upstream is always the address the name has now.
//!
//! Nothing the gateway reads before routing is trusted by default: a PROXY
//! header is believed only from `--proxy-protocol-from` sources (the
//! sidecars), and the header, ClientHello and request head each have a
//! deadline and a size cap, so a slow or endless client costs one bounded
//! buffer for a bounded time.

use std::{fmt, net::SocketAddr, sync::atomic::Ordering::Relaxed, time::Duration};

use ipnet::IpNet;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

use super::{
    allow::SharedAllowList,
    forward,
    proxy_protocol::{self, Parsed, Received},
    sniff::{self, Sniff, SniffError, Sniffed, MAX_SNIFF},
    stats::{self, BLACK_HOLE},
    upstream::UpstreamError,
    Outcome, Record, Shared,
};

/// A PROXY header with addresses fits in 232 bytes; TLVs beyond this are
/// refused rather than buffered.
const MAX_PROXY_HEADER: usize = 512;

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// Shared with whoever reloads it (the CLI, on SIGHUP).
    pub allow: SharedAllowList,
    /// Peers whose PROXY headers are believed (the sidecars). Empty: every
    /// header is refused. A header chooses the port and the logged client,
    /// so believing anyone's would let any client claim to be another.
    pub proxy_protocol_from: Vec<IpNet>,
}

impl Gateway {
    fn trusts(&self, peer: SocketAddr) -> bool {
        let ip = super::original_dst::unmap(peer).ip();
        self.proxy_protocol_from.iter().any(|net| net.contains(&ip))
    }
}

/// Why a client's head was refused before routing; each kind has its own
/// counter.
#[derive(Debug)]
enum Refused {
    /// A PROXY header from a peer not in `proxy_protocol_from`.
    Untrusted(SocketAddr),
    /// Not in time; says which part was missing.
    Timeout(&'static str, Duration),
    /// Over a size cap (header flood).
    TooLarge(String),
    /// Malformed, closed early, or a read error.
    Other(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Untrusted(peer) => write!(
                f,
                "PROXY header from {peer}, which is not in --proxy-protocol-from"
            ),
            Self::Timeout(what, after) => write!(f, "no {what} within {after:?}"),
            Self::TooLarge(why) | Self::Other(why) => f.write_str(why),
        }
    }
}

impl Refused {
    fn count(&self, shared: &Shared) {
        let d = &shared.stats.downstream;
        let counter = match self {
            Self::Untrusted(_) => &d.downstream_proxy_proto_untrusted,
            Self::Timeout(..) => &d.downstream_cx_header_timeout,
            Self::TooLarge(_) => &d.downstream_cx_header_too_large,
            Self::Other(_) => return,
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// Handles one client connection to the gateway.
pub(super) async fn handle(
    gateway: &Gateway,
    shared: &Shared,
    mut client: TcpStream,
    record: &mut Record,
) -> Outcome {
    let local = client.local_addr().ok();
    let (sniffed, buf) = match read_head(gateway, shared, &mut client, record).await {
        Ok(head) => head,
        Err(refused) => {
            refused.count(shared);
            if matches!(refused, Refused::Untrusted(_)) {
                tracing::warn!(%refused, "untrusted PROXY header: closed");
            }
            return Outcome::denied(refused);
        }
    };
    record.protocol = sniffed.protocol();
    let is_http = matches!(sniffed, Sniffed::Http { .. });
    let Some(host) = sniffed.host().cloned() else {
        let reason = match sniffed {
            Sniffed::Tls { .. } => "TLS ClientHello without SNI",
            Sniffed::Http { .. } => "HTTP request without Host",
        };
        if is_http {
            respond(&mut client, 400, reason).await;
        }
        return Outcome::denied(reason);
    };
    record.authority = Some(host.to_string());
    let Some(port) = record
        .original_dst
        .map(|d| d.port())
        .or(local.map(|l| l.port()))
    else {
        return Outcome::denied("no destination port");
    };

    if !gateway.allow.allows(&host, port) {
        shared
            .stats
            .cluster(BLACK_HOLE)
            .upstream_cx_total
            .fetch_add(1, Relaxed);
        record.cluster = Some(BLACK_HOLE.into());
        let reason = format!("{host}:{port} is not in allowedHosts (REGISTRY_ONLY)");
        if is_http {
            respond(
                &mut client,
                403,
                &format!("egress to {host}:{port} is not allowed"),
            )
            .await;
        }
        return Outcome::denied(reason);
    }

    let cluster_name = stats::cluster_name(port, host.as_str());
    let cluster = shared.stats.cluster(&cluster_name);
    record.cluster = Some(cluster_name);
    let connected = match shared.connector.resolve(&host, port).await {
        Ok(addrs) => shared.connector.connect(&addrs).await,
        Err(e) => Err(e),
    };
    let upstream = match connected {
        Ok(upstream) => upstream,
        Err(e) => {
            shared.upstream_failed(&e);
            let looped = matches!(e, UpstreamError::Loop { .. });
            if let UpstreamError::Loop { addr } = &e {
                record.upstream = Some(*addr);
            } else {
                cluster.upstream_cx_connect_fail.fetch_add(1, Relaxed);
            }
            if is_http {
                let status = if looped { 508 } else { 502 };
                respond(&mut client, status, &e.to_string()).await;
            }
            return if looped {
                Outcome::denied(e)
            } else {
                Outcome::allowed(Some(&e.to_string()))
            };
        }
    };
    record.upstream = upstream.peer_addr().ok();
    cluster.upstream_cx_total.fetch_add(1, Relaxed);
    forward(shared, client, upstream, &buf, record, &cluster).await
}

/// Reads the optional PROXY header and the ClientHello or request head,
/// within the deadlines and the size caps. Returns what was sniffed and the
/// client's bytes to forward (header removed).
async fn read_head(
    gateway: &Gateway,
    shared: &Shared,
    client: &mut TcpStream,
    record: &mut Record,
) -> Result<(Sniffed, Vec<u8>), Refused> {
    let limits = &shared.limits;
    let accepted = Instant::now();
    let deadline = accepted + limits.sniff_timeout;
    let first_deadline = accepted + limits.first_byte_timeout.min(limits.sniff_timeout);
    // The TCP peer, before any header names another client.
    let peer = record.downstream;
    let mut buf = Vec::with_capacity(4096);
    let mut header_done = false;
    // Whether any byte came: the first-byte deadline only applies before.
    let mut received = false;
    loop {
        if !header_done {
            // Refused on the signature alone: an untrusted peer's header
            // is never parsed, let alone believed.
            if buf.starts_with(proxy_protocol::SIGNATURE) && !gateway.trusts(peer) {
                return Err(Refused::Untrusted(peer));
            }
            match proxy_protocol::parse(&buf) {
                Ok(Parsed::Absent) => header_done = true,
                Ok(Parsed::Present { header, len }) => {
                    // The sidecar's client is the real downstream.
                    if let Received::Proxied {
                        source,
                        destination,
                    } = header
                    {
                        record.original_dst = Some(destination);
                        record.downstream = source;
                    }
                    buf.drain(..len);
                    header_done = true;
                }
                Ok(Parsed::NeedMore) if buf.len() >= MAX_PROXY_HEADER => {
                    return Err(Refused::TooLarge(format!(
                        "PROXY header longer than {MAX_PROXY_HEADER} bytes"
                    )))
                }
                Ok(Parsed::NeedMore) => {}
                Err(e) => return Err(Refused::Other(e.to_string())),
            }
        }
        if header_done {
            match sniff::sniff(&buf) {
                Ok(Sniff::Done(sniffed)) => return Ok((sniffed, buf)),
                Ok(Sniff::NeedMore) => {}
                Err(e @ (SniffError::TooLong | SniffError::TooManyHeaders)) => {
                    return Err(Refused::TooLarge(e.to_string()))
                }
                Err(e) => return Err(Refused::Other(e.to_string())),
            }
        }
        let room = if header_done {
            MAX_SNIFF - buf.len()
        } else {
            MAX_PROXY_HEADER - buf.len()
        };
        let mut chunk = [0u8; 4096];
        let want = room.min(chunk.len());
        let (until, missing, after) = match (received, header_done) {
            (false, _) => (first_deadline, "first bytes", limits.first_byte_timeout),
            (true, false) => (deadline, "complete PROXY header", limits.sniff_timeout),
            (true, true) => (
                deadline,
                "complete ClientHello or request head",
                limits.sniff_timeout,
            ),
        };
        let read = tokio::time::timeout_at(until, client.read(&mut chunk[..want])).await;
        match read {
            Err(_) => return Err(Refused::Timeout(missing, after.min(limits.sniff_timeout))),
            Ok(Err(e)) => return Err(Refused::Other(format!("client read failed: {e}"))),
            Ok(Ok(0)) => {
                return Err(Refused::Other(
                    "client closed before sending SNI or Host".into(),
                ))
            }
            Ok(Ok(n)) => {
                received = true;
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// A minimal HTTP/1.1 response that closes the connection; errors are
/// ignored since the connection is closed anyway.
async fn respond(client: &mut TcpStream, status: u16, message: &str) {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        502 => "Bad Gateway",
        508 => "Loop Detected",
        _ => "Error",
    };
    let body = format!("{message}\n");
    let response = format!(
        "HTTP/1.1 {status} {text}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\nserver: egress-agent\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}
