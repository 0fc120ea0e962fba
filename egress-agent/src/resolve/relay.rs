//! The gateways' DNS relay (`run --follow-gateway-dns`): the addresses the
//! kernel allows a gateway follow the DNS answers the gateway itself
//! receives, as Cilium's toFQDNs does, not only the agent's own lookups.
//!
//! Why: a CDN-backed name rotates its addresses per query. When the agent
//! and the gateway's proxy each ask, they get different ones, and the
//! gateway's connect to its own answer is refused (EPERM, then a 502).
//!
//! How:
//! - In each gateway pod's network namespace the agent binds UDP sockets
//!   on 127.0.0.1 and ::1 at one port ([`DEFAULT_PORT`]), and the kernel
//!   sends the gateway's DNS queries (UDP to port 53) there instead, as it
//!   does for a Redirect's `captureDNS`; the reply is shown to the gateway
//!   as coming from the server it asked (`recvmsg4/6`). Only the pod's own
//!   processes can reach its loopback.
//! - The relay forwards each query unchanged to the agent's own DNS
//!   servers (in Kubernetes the cluster DNS), whichever server the gateway
//!   asked: a gateway cannot teach the kernel addresses through a server
//!   of its own choosing.
//! - An answer (A or AAAA, through its CNAME chain) for one of the
//!   gateway's `allowedHosts` names is added to that name's addresses for
//!   its TTL plus [`ResolverSettings::learn_grace`](super::ResolverSettings),
//!   and the reply goes back to the gateway only once the data plane has
//!   applied them. If that takes longer than [`PROGRAM_WAIT`] the reply is
//!   passed on all the same and a connect to the new address may be
//!   refused: late, never wider.
//!
//! Not relayed: DNS over TCP (the retry of a truncated answer) goes to the
//! server asked, and its addresses are allowed only if the agent's own
//! lookups found them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use egress_policy::model::ObjectId;
use hickory_resolver::proto::{
    op::{Message, ResponseCode},
    rr::RecordType,
};
use tokio::{
    net::UdpSocket,
    runtime::Handle,
    sync::{mpsc, watch},
    task::{AbortHandle, JoinSet},
    time::{timeout, timeout_at, Instant},
};
use tracing::{debug, info, warn};

use super::{
    query::{addresses, display_name},
    record::Family,
    refresh::Learned,
    ResolvedHosts,
};
use crate::sys::netns::Netns;

/// The relay's port on the gateways' loopback. Istio's sidecar uses 15053
/// for its own DNS proxy; 15054 is free in Istio's reserved range.
pub const DEFAULT_PORT: u16 = 15054;

/// How long a reply waits for its addresses to be programmed.
pub const PROGRAM_WAIT: Duration = Duration::from_secs(2);

/// Queries answered at once per socket; more are dropped (the client asks
/// again), so that a flood costs bounded memory.
const MAX_IN_FLIGHT: usize = 256;

/// How often [`GatewayDns::poll`] looks for the gateways' namespaces
/// between applies. Every apply looks anyway; a pod's namespace changes
/// only with its sandbox, which brings a new address and so an apply.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Largest DNS message over UDP (EDNS allows up to 64 KiB).
const MAX_MESSAGE: usize = 65_535;

/// What the relay needs from the resolver: where to forward, and where to
/// hand what it learns ([`super::HostResolver::learner`]).
#[derive(Clone, Debug)]
pub struct Learner {
    pub(super) learn: mpsc::Sender<Learned>,
    pub(super) upstream: Arc<[SocketAddr]>,
    pub(super) timeout: Duration,
}

/// What the relays did since the agent started, for `status` and
/// `/metrics`; shared before the relays start, so that it can be read
/// from elsewhere.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Set once relaying is on.
    pub enabled: AtomicBool,
    /// Gateway pods with a relay now.
    pub relays: AtomicU64,
    pub queries: AtomicU64,
    pub programmed: AtomicU64,
    pub late: AtomicU64,
    pub upstream_failures: AtomicU64,
}

impl RelayStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A gateway workload on this node whose `allowedHosts` has DNS names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayedGateway {
    pub id: ObjectId,
    /// Its cgroup directory, where its processes (and so its network
    /// namespace) are found.
    pub cgroup: PathBuf,
    /// Its DNS names, as the policy writes them (lower case, no trailing
    /// dot).
    pub names: BTreeSet<String>,
}

/// The relays of the gateways on this node.
pub struct GatewayDns {
    port: u16,
    learner: Learner,
    runtime: Handle,
    /// The addresses of the generation in force, set after each apply.
    applied: watch::Sender<ResolvedHosts>,
    relays: BTreeMap<ObjectId, Relay>,
    /// The gateways last synced, looked at again by [`Self::poll`].
    gateways: Vec<RelayedGateway>,
    /// Gateways whose relay could not be started, already warned of.
    warned: BTreeSet<ObjectId>,
    stats: Arc<RelayStats>,
    last_look: Option<std::time::Instant>,
}

/// One gateway pod's relay; dropping it closes its sockets.
struct Relay {
    netns: (u64, u64),
    names: watch::Sender<BTreeSet<String>>,
    tasks: Vec<AbortHandle>,
}

impl Drop for GatewayDns {
    fn drop(&mut self) {
        self.stats.relays.store(0, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl GatewayDns {
    /// Must be called from within a Tokio runtime, where the relays run.
    /// Counts what they do in `stats`.
    pub fn new(
        port: u16,
        learner: Learner,
        stats: Arc<RelayStats>,
    ) -> Result<Self, super::ResolveError> {
        let runtime = Handle::try_current().map_err(|_| super::ResolveError::NoRuntime)?;
        stats.enabled.store(true, Ordering::Relaxed);
        Ok(Self {
            port,
            learner,
            runtime,
            applied: watch::Sender::new(ResolvedHosts::default()),
            relays: BTreeMap::new(),
            gateways: Vec::new(),
            warned: BTreeSet::new(),
            stats,
            last_look: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Brings the relays in line with `gateways`, and returns those that
    /// have one: only their DNS may be sent to it. A gateway whose
    /// processes are not seen (yet, or between restarts) keeps the relay
    /// it has; one in a new namespace (a recreated pod) gets a new one.
    pub fn sync(&mut self, gateways: Vec<RelayedGateway>) -> BTreeSet<ObjectId> {
        self.relays
            .retain(|id, _| gateways.iter().any(|g| &g.id == id));
        self.warned
            .retain(|id| gateways.iter().any(|g| &g.id == id));
        for gateway in &gateways {
            let Some(netns) = Netns::of_cgroup(&gateway.cgroup) else {
                continue;
            };
            if let Some(relay) = self.relays.get(&gateway.id) {
                if relay.netns == netns.id {
                    relay.names.send_if_modified(|names| {
                        let changed = *names != gateway.names;
                        if changed {
                            names.clone_from(&gateway.names);
                        }
                        changed
                    });
                    continue;
                }
            }
            self.relays.remove(&gateway.id);
            match self.start(&netns, gateway) {
                Ok(relay) => {
                    info!(gateway = %gateway.id, port = self.port, "DNS relay started in the gateway's network namespace");
                    self.warned.remove(&gateway.id);
                    self.relays.insert(gateway.id.clone(), relay);
                }
                Err(e) => {
                    if self.warned.insert(gateway.id.clone()) {
                        warn!(gateway = %gateway.id, port = self.port, error = %e, "cannot start the DNS relay in the gateway's network namespace: its allow-list follows the agent's own lookups only");
                    }
                }
            }
        }
        self.gateways = gateways;
        self.last_look = Some(std::time::Instant::now());
        let relays = u64::try_from(self.relays.len()).unwrap_or(u64::MAX);
        self.stats.relays.store(relays, Ordering::Relaxed);
        self.ready()
    }

    /// The gateways that have a relay.
    pub fn ready(&self) -> BTreeSet<ObjectId> {
        self.relays.keys().cloned().collect()
    }

    /// Looks for the last synced gateways' namespaces again (at most once
    /// per [`LOOK_EVERY`]); true when the set of gateways with a relay
    /// changed, so the data plane must be applied again to send (or stop
    /// sending) their DNS to it.
    pub fn poll(&mut self) -> bool {
        if self.last_look.is_some_and(|t| t.elapsed() < LOOK_EVERY) {
            return false;
        }
        let before = self.ready();
        let gateways = std::mem::take(&mut self.gateways);
        self.sync(gateways) != before
    }

    /// Tells waiting replies which addresses the data plane now holds.
    pub fn programmed(&self, hosts: &ResolvedHosts) {
        self.applied.send_replace(hosts.clone());
    }

    fn start(&self, netns: &Netns, gateway: &RelayedGateway) -> std::io::Result<Relay> {
        let v4 = netns.bind_udp((Ipv4Addr::LOCALHOST, self.port).into())?;
        // A pod without IPv6 has no ::1, and no IPv6 DNS server either.
        let v6 = netns
            .bind_udp((Ipv6Addr::LOCALHOST, self.port).into())
            .inspect_err(|e| debug!(gateway = %gateway.id, error = %e, "no IPv6 loopback relay"))
            .ok();
        let (names, names_rx) = watch::channel(gateway.names.clone());
        let forwarder = Arc::new(Forwarder {
            gateway: gateway.id.clone(),
            stats: Arc::clone(&self.stats),
            learner: self.learner.clone(),
            applied: self.applied.subscribe(),
            names: names_rx,
        });
        // Registering a socket with the reactor needs the runtime's context.
        let _context = self.runtime.enter();
        let mut tasks = Vec::new();
        for socket in std::iter::once(v4).chain(v6) {
            let socket = UdpSocket::from_std(socket)?;
            let task = self
                .runtime
                .spawn(serve(socket, Arc::clone(&forwarder)))
                .abort_handle();
            tasks.push(task);
        }
        Ok(Relay {
            netns: netns.id,
            names,
            tasks,
        })
    }
}

/// Answers one relay socket's queries until aborted.
async fn serve(socket: UdpSocket, forwarder: Arc<Forwarder>) {
    let socket = Arc::new(socket);
    let mut queries = JoinSet::new();
    let mut buf = vec![0; MAX_MESSAGE];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((len, client)) = received else {
                    // ICMP errors of earlier sends surface here: nothing
                    // to do about them.
                    continue;
                };
                if queries.len() >= MAX_IN_FLIGHT {
                    continue;
                }
                let query = buf[..len].to_vec();
                let (socket, forwarder) = (Arc::clone(&socket), Arc::clone(&forwarder));
                queries.spawn(async move {
                    if let Some(reply) = forwarder.answer(&query).await {
                        let _ = socket.send_to(&reply, client).await;
                    }
                });
            }
            Some(_) = queries.join_next() => {}
        }
    }
}

/// One gateway pod's queries: forwarded, learned from, answered.
struct Forwarder {
    gateway: ObjectId,
    stats: Arc<RelayStats>,
    learner: Learner,
    applied: watch::Receiver<ResolvedHosts>,
    names: watch::Receiver<BTreeSet<String>>,
}

impl Forwarder {
    /// The reply to send back, or `None` for a datagram that is not a
    /// query.
    async fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        // A header, and the QR bit clear.
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return None;
        }
        RelayStats::bump(&self.stats.queries);
        let Some(reply) = self.forward(query).await else {
            RelayStats::bump(&self.stats.upstream_failures);
            return server_failure(query);
        };
        self.learn(&reply).await;
        Some(reply)
    }

    /// The first reply of the agent's servers, tried in order.
    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        for server in self.learner.upstream.iter() {
            let any: SocketAddr = match server {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let Ok(socket) = UdpSocket::bind(any).await else {
                continue;
            };
            if socket.connect(server).await.is_err() || socket.send(query).await.is_err() {
                continue;
            }
            let deadline = Instant::now() + self.learner.timeout;
            let mut buf = vec![0; MAX_MESSAGE];
            // A connected socket only hears from the server; still, only
            // a response with the query's id is the answer.
            while let Ok(Ok(len)) = timeout_at(deadline, socket.recv(&mut buf)).await {
                if len >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 {
                    buf.truncate(len);
                    return Some(buf);
                }
            }
            debug!(gateway = %self.gateway, %server, "no answer from the DNS server");
        }
        None
    }

    /// Adds the reply's addresses for one of the gateway's names, and
    /// waits until the data plane holds them.
    async fn learn(&self, reply: &[u8]) {
        let Ok(message) = Message::from_vec(reply) else {
            return;
        };
        let Some(question) = message.queries.first() else {
            return;
        };
        let family = match question.query_type() {
            RecordType::A => Family::V4,
            RecordType::AAAA => Family::V6,
            _ => return,
        };
        let name = display_name(question.name()).to_ascii_lowercase();
        if !self.names.borrow().contains(&name) {
            return;
        }
        let answer = addresses(question.name(), family, &message.answers);
        if answer.addrs.is_empty() {
            return;
        }
        let addrs = answer.addrs.clone();
        let learned = Learned {
            name: name.clone(),
            family,
            answer,
        };
        if self.learner.learn.send(learned).await.is_err() {
            return; // the resolver is gone: the agent is stopping
        }
        let mut applied = self.applied.clone();
        let held = |hosts: &ResolvedHosts| {
            let have = hosts.addresses(&name);
            addrs.iter().all(|a| have.contains(a))
        };
        if matches!(
            timeout(PROGRAM_WAIT, applied.wait_for(held)).await,
            Ok(Ok(_))
        ) {
            RelayStats::bump(&self.stats.programmed);
        } else {
            RelayStats::bump(&self.stats.late);
            warn!(gateway = %self.gateway, host = name, addresses = ?addrs, "the gateway's DNS answer was not programmed within {PROGRAM_WAIT:?}: it is passed on, and a connect to these addresses may be refused until it is");
        }
    }
}

/// SERVFAIL for `query`, so that the client fails now rather than after
/// its own timeout.
fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let mut reply = Message::error_msg(
        query.metadata.id,
        query.metadata.op_code,
        ResponseCode::ServFail,
    );
    for question in query.queries {
        reply.add_query(question);
    }
    reply.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use hickory_resolver::proto::{
        op::{MessageType, OpCode, Query},
        rr::Name,
    };

    use super::*;

    #[test]
    fn a_failed_forward_answers_servfail_to_the_same_question() {
        let mut query = Message::new(0x1234, MessageType::Query, OpCode::Query);
        let name = Name::from_ascii("cdn.example.").expect("name");
        query.add_query(Query::query(name.clone(), RecordType::A));
        let reply = server_failure(&query.to_vec().expect("encode")).expect("reply");
        let reply = Message::from_vec(&reply).expect("decode");
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.queries[0].name(), &name);
    }
}
