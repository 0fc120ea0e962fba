//! The built-in transparent proxy: a small tokio TCP proxy, so the system
//! works end to end without Envoy (whoever runs Envoy keeps Envoy).
//!
//! - [`sidecar`]: takes redirected connections (Istio's port 15001),
//!   recovers the original destination with `SO_ORIGINAL_DST`
//!   ([`original_dst`]), and connects there directly or through the egress
//!   gateway with a PROXY v2 header ([`proxy_protocol`]).
//! - [`gateway`]: routes by TLS SNI or HTTP Host ([`sniff`]) to the named
//!   host, only if the EgressGateway's `allowedHosts` ([`allow`]) allow it
//!   (Istio's REGISTRY_ONLY).
//!
//! Both write one [`access_log`] line per connection and count per
//! destination in Envoy's names ([`stats`], served by [`admin`]). Every
//! connection is bounded: a capped sniff buffer, caps on concurrent
//! connections in all and per source address, first-byte/sniff/resolve/
//! connect/idle timeouts ([`Limits`]), and a [`relay`] that passes
//! half-closes on and drops idle pairs. The gateway believes a PROXY header
//! only from the sources it was told to trust.

pub mod access_log;
pub mod admin;
pub mod allow;
pub mod gateway;
pub mod original_dst;
pub mod proxy_protocol;
pub mod relay;
pub mod sidecar;
pub mod sniff;
pub mod stats;
pub mod upstream;

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
    task::JoinSet,
};

use access_log::{AccessLog, Entry, Verdict};
use stats::Stats;
use upstream::{Connector, StaticEntry, UpstreamError};

/// Resource bounds for every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections handled at once; more are accepted and closed at once
    /// (counted as `downstream_cx_overflow`), so the backlog cannot grow.
    pub max_connections: usize,
    /// Connections one source address may have open at once, so one
    /// client cannot take all of `max_connections`; more are closed at
    /// once (`downstream_cx_per_source_overflow`).
    pub max_connections_per_source: usize,
    /// Gateway: time from accept to the client's first bytes.
    pub first_byte_timeout: Duration,
    /// Gateway: time from accept to the end of the PROXY header plus
    /// ClientHello or request head.
    pub sniff_timeout: Duration,
    /// Name resolution of an upstream (or of `--via-gateway`).
    pub resolve_timeout: Duration,
    pub connect_timeout: Duration,
    /// No byte in either direction for this long ends the connection.
    pub idle_timeout: Duration,
    /// On SIGTERM, how long open connections may finish on their own.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_source: 1024,
            // Real clients (and sidecars, with their PROXY header) speak
            // first and at once; only a preconnecting browser waits.
            first_byte_timeout: Duration::from_secs(3),
            sniff_timeout: Duration::from_secs(5),
            resolve_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            // Envoy's TCP proxy default idle timeout is one hour.
            idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Which proxy this is.
#[derive(Clone, Debug)]
pub enum Mode {
    Sidecar(sidecar::Sidecar),
    Gateway(gateway::Gateway),
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Self::Sidecar(_) => "sidecar",
            Self::Gateway(_) => "gateway",
        }
    }
}

/// Everything the proxy needs to start.
pub struct Config {
    pub mode: Mode,
    pub listen: Vec<SocketAddr>,
    /// Envoy-style admin endpoint (`/stats`, `/metrics`).
    pub admin: Option<SocketAddr>,
    pub limits: Limits,
    /// `--resolve` entries, answered before DNS.
    pub resolve: Vec<StaticEntry>,
    pub access_log: AccessLog,
}

/// Why the proxy could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("no --listen address")]
    NoListener,
    #[error("cannot start the access log writer: {0}")]
    AccessLog(io::Error),
}

/// What every connection task shares.
struct Shared {
    mode: Mode,
    limits: Limits,
    connector: Connector,
    stats: Arc<Stats>,
    log: AccessLog,
    /// Becomes true when open connections must end (drain time over).
    stop: watch::Receiver<bool>,
    sources: Arc<Sources>,
}

impl Shared {
    /// Resolves when the proxy tells open connections to stop.
    async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Counts an upstream failure that has a listener-wide counter.
    fn upstream_failed(&self, e: &UpstreamError) {
        if matches!(e, UpstreamError::ResolveTimeout { .. }) {
            self.stats
                .downstream
                .upstream_resolve_timeout
                .fetch_add(1, Relaxed);
        }
    }
}

/// Open connections per source address. Only addresses with a connection
/// open have an entry, so the map is bounded by `max_connections`.
#[derive(Debug, Default)]
struct Sources(Mutex<HashMap<IpAddr, usize>>);

impl Sources {
    /// A slot for one more connection from `ip`, unless it has `max` open.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot(self.clone(), ip))
    }
}

/// Gives its source's slot back when the connection ends, however it ends.
struct SourceSlot(Arc<Sources>, IpAddr);

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// A bound proxy, ready to serve. Needs no privileges; the sidecar's
/// SO_ORIGINAL_DST is answered by conntrack (any kernel) or by the agent's
/// `cgroup/getsockopt` program (5.3+).
///
/// ```no_run
/// # async fn demo() -> Result<(), egress_proxy::ProxyError> {
/// use egress_proxy::{
///     access_log::{AccessLog, Format},
///     allow::AllowList,
///     gateway::Gateway,
///     Config, Limits, Mode, Proxy,
/// };
/// let allow = AllowList::Only(vec!["edition.cnn.com:443".parse().expect("rule")]);
/// let proxy = Proxy::bind(Config {
///     mode: Mode::Gateway(Gateway {
///         allow: allow.into(),
///         // The sidecars' pod network: only they may send PROXY headers.
///         proxy_protocol_from: vec!["10.244.0.0/16".parse().expect("CIDR")],
///     }),
///     listen: vec!["0.0.0.0:443".parse().expect("address")],
///     admin: Some("127.0.0.1:15000".parse().expect("address")),
///     limits: Limits::default(),
///     resolve: Vec::new(),
///     access_log: AccessLog::stdout(Format::Text).expect("writer thread"),
/// })
/// .await?;
/// proxy
///     .serve(async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await;
/// # Ok(())
/// # }
/// ```
pub struct Proxy {
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    mode: Mode,
    limits: Limits,
    connector: Connector,
    stats: Arc<Stats>,
    log: AccessLog,
}

impl Proxy {
    /// Binds every listener (and the admin endpoint), so the caller knows
    /// the real addresses (port 0 in tests) before serving.
    pub async fn bind(config: Config) -> Result<Self, ProxyError> {
        if config.listen.is_empty() {
            return Err(ProxyError::NoListener);
        }
        let mut connector = Connector::new(
            config.resolve,
            config.limits.connect_timeout,
            config.limits.resolve_timeout,
        );
        let mut listeners = Vec::new();
        for addr in config.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, source })?;
            connector.add_own(listener.local_addr().unwrap_or(addr));
            listeners.push(listener);
        }
        let admin = match config.admin {
            None => None,
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ProxyError::Bind { addr, source })?;
                connector.add_own(listener.local_addr().unwrap_or(addr));
                Some(listener)
            }
        };
        // The semaphore (and the drain's acquire_many) count in u32.
        let limits = Limits {
            max_connections: config.limits.max_connections.clamp(1, 1 << 20),
            max_connections_per_source: config.limits.max_connections_per_source.max(1),
            ..config.limits
        };
        let mut stats = Stats::default();
        stats.downstream.access_log_dropped = config.access_log.dropped();
        Ok(Self {
            listeners,
            admin,
            mode: config.mode,
            limits,
            connector,
            stats: Arc::new(stats),
            log: config.access_log,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets open
    /// connections finish for the drain time, ends the rest (each still
    /// logged), and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let limits = self.limits;
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let shared = Arc::new(Shared {
            mode: self.mode,
            limits,
            connector: self.connector,
            stats: self.stats,
            log: self.log,
            stop: stop_rx,
            sources: Arc::default(),
        });
        let mut accepting = JoinSet::new();
        for listener in self.listeners {
            accepting.spawn(accept_loop(listener, shared.clone(), permits.clone()));
        }
        if let Some(admin) = self.admin {
            accepting.spawn(admin::serve(admin, shared.stats.clone()));
        }
        shutdown.await;
        accepting.abort_all();
        tracing::info!(
            open = limits.max_connections - permits.available_permits(),
            "shutting down: no new connections; draining"
        );
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(limits.drain_timeout, permits.acquire_many(all)).await;
        if drained.is_err() {
            let _ = stop_tx.send(true);
            // Stopped relays only need to log and drop their sockets.
            let _ = tokio::time::timeout(Duration::from_secs(2), permits.acquire_many(all)).await;
        }
        // The last connections' lines are still queued.
        let _ = tokio::time::timeout(Duration::from_secs(2), shared.log.flush()).await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, permits: Arc<Semaphore>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared
            .stats
            .downstream
            .downstream_cx_total
            .fetch_add(1, Relaxed);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared
                .stats
                .downstream
                .downstream_cx_overflow
                .fetch_add(1, Relaxed);
            tracing::warn!(%peer, max = shared.limits.max_connections, "too many connections: closed");
            continue;
        };
        let per_source = shared.limits.max_connections_per_source;
        let source = original_dst::unmap(peer).ip();
        let Some(slot) = shared.sources.enter(source, per_source) else {
            shared
                .stats
                .downstream
                .downstream_cx_per_source_overflow
                .fetch_add(1, Relaxed);
            tracing::warn!(%peer, max = per_source, "too many connections from one source: closed");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _active = stats::Active::enter(&shared.stats.downstream.downstream_cx_active);
            let _ = stream.set_nodelay(true);
            let mut record = Record::new(&shared, peer);
            let outcome = match &shared.mode {
                Mode::Sidecar(s) => sidecar::handle(s, &shared, stream, &mut record).await,
                Mode::Gateway(g) => gateway::handle(g, &shared, stream, &mut record).await,
            };
            record.finish(&shared, outcome);
            drop(slot);
            drop(permit);
        });
    }
}

/// A connection's outcome: the verdict and, if any, why.
#[derive(Debug)]
pub(crate) struct Outcome {
    verdict: Verdict,
    reason: Option<String>,
}

impl Outcome {
    fn allowed(reason: Option<&str>) -> Self {
        Self {
            verdict: Verdict::Allowed,
            reason: reason.map(str::to_owned),
        }
    }

    fn denied(reason: impl ToString) -> Self {
        Self {
            verdict: Verdict::Denied,
            reason: Some(reason.to_string()),
        }
    }
}

/// What is known about a connection so far, for its access-log line.
pub(crate) struct Record {
    start: SystemTime,
    clock: Instant,
    downstream: SocketAddr,
    original_dst: Option<SocketAddr>,
    protocol: &'static str,
    authority: Option<String>,
    upstream: Option<SocketAddr>,
    cluster: Option<String>,
    counts: relay::Counts,
    mode: &'static str,
}

impl Record {
    fn new(shared: &Shared, downstream: SocketAddr) -> Self {
        Self {
            start: SystemTime::now(),
            clock: Instant::now(),
            downstream: original_dst::unmap(downstream),
            original_dst: None,
            protocol: "tcp",
            authority: None,
            upstream: None,
            cluster: None,
            counts: relay::Counts::default(),
            mode: shared.mode.name(),
        }
    }

    fn finish(self, shared: &Shared, outcome: Outcome) {
        let entry = Entry {
            start_time: self.start,
            mode: self.mode,
            downstream: self.downstream,
            original_dst: self.original_dst,
            protocol: self.protocol,
            authority: self.authority,
            upstream: self.upstream,
            cluster: self.cluster,
            bytes_sent: self.counts.sent.load(Relaxed),
            bytes_received: self.counts.received.load(Relaxed),
            duration: self.clock.elapsed(),
            verdict: outcome.verdict,
            reason: outcome.reason,
        };
        if entry.verdict == Verdict::Denied {
            tracing::info!(
                downstream = %entry.downstream,
                authority = entry.authority.as_deref().unwrap_or("-"),
                reason = entry.reason.as_deref().unwrap_or("-"),
                "connection refused"
            );
        }
        shared.log.log(&entry);
    }
}

/// Sends the client's already-read bytes upstream, then relays, counting
/// into the cluster's stats; the common tail of both modes.
async fn forward(
    shared: &Shared,
    client: TcpStream,
    mut upstream: TcpStream,
    first: &[u8],
    record: &Record,
    cluster: &stats::Cluster,
) -> Outcome {
    use tokio::io::AsyncWriteExt as _;
    let _active = stats::Active::enter(&cluster.upstream_cx_active);
    if !first.is_empty() {
        if let Err(e) = upstream.write_all(first).await {
            return Outcome::allowed(Some(&format!("upstream write failed: {e}")));
        }
        record.counts.sent.fetch_add(first.len() as u64, Relaxed);
    }
    let end = relay::relay(
        client,
        upstream,
        shared.limits.idle_timeout,
        &record.counts,
        shared.stopped(),
    )
    .await;
    cluster
        .upstream_cx_tx_bytes_total
        .fetch_add(record.counts.sent.load(Relaxed), Relaxed);
    cluster
        .upstream_cx_rx_bytes_total
        .fetch_add(record.counts.received.load(Relaxed), Relaxed);
    Outcome::allowed(end.reason())
}
