//! Gateway mode: route each connection by TLS SNI (passthrough) or HTTP
//! Host to the named host, only if the allow-list allows it.
//!
//! The port is the original destination's, from a PROXY v2 header sent by a
//! sidecar, or else the port the client connected to (as an Istio gateway's
//! port-per-protocol listeners). Names are resolved at connect time, so the
//! upstream is always the address the name has now.

use std::sync::atomic::Ordering::Relaxed;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

use super::{
    allow::SharedAllowList,
    forward,
    proxy_protocol::{self, Parsed, Received},
    sniff::{self, Sniff, Sniffed, MAX_SNIFF},
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
}

/// Handles one client connection to the gateway.
pub(super) async fn handle(
    gateway: &Gateway,
    shared: &Shared,
    mut client: TcpStream,
    record: &mut Record,
) -> Outcome {
    let local = client.local_addr().ok();
    let (sniffed, buf) = match read_head(shared, &mut client, record).await {
        Ok(head) => head,
        Err(reason) => return Outcome::denied(reason),
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
/// within the sniff timeout and the sniff buffer. Returns what was sniffed
/// and the client's bytes to forward (header removed).
async fn read_head(
    shared: &Shared,
    client: &mut TcpStream,
    record: &mut Record,
) -> Result<(Sniffed, Vec<u8>), String> {
    let deadline = Instant::now() + shared.limits.sniff_timeout;
    let mut buf = Vec::with_capacity(4096);
    let mut header_done = false;
    loop {
        if !header_done {
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
                    return Err(format!("PROXY header longer than {MAX_PROXY_HEADER} bytes"))
                }
                Ok(Parsed::NeedMore) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        if header_done {
            match sniff::sniff(&buf) {
                Ok(Sniff::Done(sniffed)) => return Ok((sniffed, buf)),
                Ok(Sniff::NeedMore) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let room = if header_done {
            MAX_SNIFF - buf.len()
        } else {
            MAX_PROXY_HEADER - buf.len()
        };
        let mut chunk = [0u8; 4096];
        let want = room.min(chunk.len());
        let read = tokio::time::timeout_at(deadline, client.read(&mut chunk[..want])).await;
        match read {
            Err(_) => {
                return Err(format!(
                    "no SNI or Host within {:?}",
                    shared.limits.sniff_timeout
                ))
            }
            Ok(Err(e)) => return Err(format!("client read failed: {e}")),
            Ok(Ok(0)) => return Err("client closed before sending SNI or Host".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
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
