//! Scenarios for the `allowedHosts` resolver, against a tiny authoritative
//! DNS server on 127.0.0.1 whose answers each test changes while it runs.
//!
//! Only loopback traffic: the answered addresses are documentation ranges
//! (192.0.2.0/24, 2001:db8::/32) that nothing ever connects to.
//!
//! Nothing here asserts on a duration or counts what happened in a
//! wall-clock window: every wait is for a condition (a published snapshot,
//! a number of questions at the server), bounded only so that a regression
//! fails rather than hangs, and a "nothing happens" check is a wait for a
//! later event during which the unwanted one would have arrived. The
//! printed durations are for reading (`--nocapture`).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use egress_agent::resolve::{HostResolver, ResolvedHosts, ResolverSettings, Upstream};
use hickory_resolver::proto::{
    op::{Message, ResponseCode},
    rr::{
        rdata::{A, AAAA, SOA},
        Name, RData, Record, RecordType,
    },
};
use tokio::{net::UdpSocket, sync::watch, task::JoinHandle};

const MS: Duration = Duration::from_millis(1);

/// What the fake server answers for a name.
#[derive(Clone, Debug)]
enum Reply {
    Records {
        v4: Vec<Ipv4Addr>,
        v6: Vec<Ipv6Addr>,
        ttl: u32,
    },
    NxDomain,
    ServFail,
    /// No reply at all: the client times out.
    Silent,
}

fn v4(addrs: &[&str], ttl: u32) -> Reply {
    Reply::Records {
        v4: addrs.iter().map(|a| a.parse().expect("test v4")).collect(),
        v6: Vec::new(),
        ttl,
    }
}

#[derive(Default)]
struct Zone {
    replies: HashMap<String, Reply>,
    queries: HashMap<String, usize>,
}

/// An authoritative server for `*.example.test` on 127.0.0.1:<ephemeral>.
/// Unknown names get NXDOMAIN. Replies are built with hickory-proto.
struct FakeDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: JoinHandle<()>,
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Negative TTL the SOA announces, in seconds.
const NEGATIVE_TTL: u32 = 1;

impl FakeDns {
    async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("local addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let task = tokio::spawn(serve(socket, Arc::clone(&zone)));
        Self { addr, zone, task }
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.zone.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, name: &str, reply: Reply) {
        self.zone().replies.insert(name.to_owned(), reply);
    }

    /// Questions received for `name` (A and AAAA each count).
    fn queries(&self, name: &str) -> usize {
        self.zone().queries.get(name).copied().unwrap_or(0)
    }

    fn settings(&self) -> ResolverSettings {
        ResolverSettings {
            upstream: Upstream::Servers(vec![self.addr]),
            ttl_min: 500 * MS,
            ttl_max: Duration::from_secs(60),
            stale_grace: Duration::from_secs(2),
            refresh_lead: 200 * MS,
            query_timeout: 300 * MS,
            attempts: 1,
            retry_min: 200 * MS,
            retry_max: 500 * MS,
            learn_grace: Duration::from_secs(1),
        }
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let Some(response) = answer(&request, &zone) else {
            continue;
        };
        if let Ok(bytes) = response.to_vec() {
            // Best effort, like UDP itself: a lost reply is a timeout.
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

fn answer(request: &Message, zone: &Mutex<Zone>) -> Option<Message> {
    let query = request.queries.first()?.clone();
    let key = query.name().to_ascii().trim_end_matches('.').to_lowercase();
    let reply = {
        let mut zone = zone.lock().unwrap_or_else(PoisonError::into_inner);
        *zone.queries.entry(key.clone()).or_default() += 1;
        zone.replies.get(&key).cloned().unwrap_or(Reply::NxDomain)
    };
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(query.clone());
    match reply {
        Reply::Records { v4, v6, ttl } => {
            let name = query.name().clone();
            let data: Vec<RData> = match query.query_type() {
                RecordType::A => v4.into_iter().map(|a| RData::A(A(a))).collect(),
                RecordType::AAAA => v6.into_iter().map(|a| RData::AAAA(AAAA(a))).collect(),
                _ => Vec::new(),
            };
            if data.is_empty() {
                response.add_authority(soa());
            }
            for rdata in data {
                response.add_answer(Record::from_rdata(name.clone(), ttl, rdata));
            }
        }
        Reply::NxDomain => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(soa());
        }
        Reply::ServFail => response.metadata.response_code = ResponseCode::ServFail,
        Reply::Silent => return None,
    }
    Some(response)
}

fn soa() -> Record {
    let name = |s: &str| Name::from_ascii(s).expect("SOA name");
    let soa = SOA::new(
        name("ns.example.test."),
        name("hostmaster.example.test."),
        1,
        60,
        60,
        600,
        NEGATIVE_TTL,
    );
    Record::from_rdata(name("example.test."), NEGATIVE_TTL, RData::SOA(soa))
}

fn ips(addrs: &[&str]) -> Vec<IpAddr> {
    addrs.iter().map(|a| a.parse().expect("test IP")).collect()
}

/// Every snapshot published until `done` holds, with when it came.
struct Watch {
    rx: watch::Receiver<ResolvedHosts>,
    seen: Vec<(Duration, ResolvedHosts)>,
}

impl Watch {
    fn new(resolver: &HostResolver) -> Self {
        Self {
            rx: resolver.subscribe(),
            seen: Vec::new(),
        }
    }

    /// Waits (at most `limit`) for a published snapshot satisfying `done`;
    /// returns it and the time it took from `since`.
    async fn until(
        &mut self,
        since: Instant,
        limit: Duration,
        done: impl Fn(&ResolvedHosts) -> bool,
    ) -> (ResolvedHosts, Duration) {
        let deadline = tokio::time::Instant::from_std(since + limit);
        loop {
            let current = self.rx.borrow_and_update().clone();
            if done(&current) {
                return (current, since.elapsed());
            }
            match tokio::time::timeout_at(deadline, self.rx.changed()).await {
                Ok(Ok(())) => self.seen.push((since.elapsed(), self.rx.borrow().clone())),
                Ok(Err(_)) => panic!("resolver stopped; seen {:?}", self.seen),
                Err(_) => panic!("not within {limit:?}; seen {:?}", self.seen),
            }
        }
    }
}

/// How long any condition may take before the test gives up: far beyond
/// every TTL and grace here, so only a regression reaches it.
const PATIENCE: Duration = Duration::from_secs(15);

impl FakeDns {
    /// Waits until the server has received at least `n` questions for
    /// `name`; returns how many it has.
    async fn until_asked(&self, name: &str, n: usize) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let asked = self.queries(name);
            if asked >= n {
                return asked;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {asked} questions, waited for {n}"
            );
            tokio::time::sleep(10 * MS).await;
        }
    }
}

impl Watch {
    /// Waits until the server has received `n` questions for `name`,
    /// failing if the resolver publishes anything meanwhile.
    async fn silent_until_asked(&mut self, dns: &FakeDns, name: &str, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while dns.queries(name) < n {
            assert!(
                Instant::now() < deadline,
                "{name}: {} questions, waited for {n}",
                dns.queries(name)
            );
            tokio::select! {
                changed = self.rx.changed() => {
                    changed.expect("resolver alive");
                    panic!("published while {name} was asked again: {:?}", *self.rx.borrow());
                }
                () = tokio::time::sleep(10 * MS) => {}
            }
        }
    }
}

fn resolver(settings: ResolverSettings, names: &[&str]) -> HostResolver {
    HostResolver::spawn(settings, names.iter().map(|n| (*n).to_owned())).expect("spawn resolver")
}

#[tokio::test]
async fn resolves_a_and_aaaa_sorted_and_deduplicated() {
    let dns = FakeDns::start().await;
    dns.set(
        "api.example.test",
        Reply::Records {
            v4: vec![
                "192.0.2.20".parse().expect("v4"),
                "192.0.2.10".parse().expect("v4"),
                "192.0.2.10".parse().expect("v4"),
            ],
            v6: vec!["2001:db8::10".parse().expect("v6")],
            ttl: 300,
        },
    );
    dns.set(
        "v6only.example.test",
        Reply::Records {
            v4: Vec::new(),
            v6: vec!["2001:db8::6".parse().expect("v6")],
            ttl: 300,
        },
    );
    let start = Instant::now();
    let r = resolver(dns.settings(), &["api.example.test", "v6only.example.test"]);
    let (hosts, took) = Watch::new(&r)
        .until(start, Duration::from_secs(3), |h| {
            h.addresses("api.example.test").len() == 3
                && !h.addresses("v6only.example.test").is_empty()
        })
        .await;
    eprintln!("A+AAAA of two names resolved in {took:?}");
    assert_eq!(
        hosts.addresses("api.example.test"),
        ips(&["192.0.2.10", "192.0.2.20", "2001:db8::10"])
    );
    assert_eq!(
        hosts.addresses("v6only.example.test"),
        ips(&["2001:db8::6"])
    );
    assert!(r.failures().borrow().is_empty());
}

#[tokio::test]
async fn a_changed_address_is_published_after_the_ttl_without_a_gap() {
    let dns = FakeDns::start().await;
    dns.set("cdn.example.test", v4(&["192.0.2.1"], 1));
    let r = resolver(dns.settings(), &["cdn.example.test"]);
    let mut w = Watch::new(&r);
    w.until(Instant::now(), Duration::from_secs(3), |h| !h.is_empty())
        .await;
    w.seen.clear();
    let changed = Instant::now();
    dns.set("cdn.example.test", v4(&["192.0.2.2"], 1));
    let (_, took) = w
        .until(changed, Duration::from_secs(5), |h| {
            h.addresses("cdn.example.test") == ips(&["192.0.2.2"])
        })
        .await;
    let first_new = w
        .seen
        .iter()
        .find(|(_, h)| {
            h.addresses("cdn.example.test")
                .contains(&ips(&["192.0.2.2"])[0])
        })
        .map(|(at, _)| *at);
    eprintln!("TTL 1 s: new address after {first_new:?}, old one gone after {took:?}");
    let sets: Vec<_> = w
        .seen
        .iter()
        .map(|(_, h)| h.addresses("cdn.example.test").to_vec())
        .collect();
    // Old and new side by side, then new alone: never an empty allow-list.
    assert_eq!(
        sets,
        [ips(&["192.0.2.1", "192.0.2.2"]), ips(&["192.0.2.2"])],
        "{:?}",
        w.seen
    );
}

#[tokio::test]
async fn an_unchanged_answer_is_not_published_again() {
    let dns = FakeDns::start().await;
    dns.set("steady.example.test", v4(&["192.0.2.3"], 1));
    let r = resolver(dns.settings(), &["steady.example.test"]);
    let mut w = Watch::new(&r);
    w.until(Instant::now(), Duration::from_secs(3), |h| !h.is_empty())
        .await;
    // Two more refresh rounds (A and AAAA each) reach the server, and none
    // of them changes anything, so nothing is published meanwhile.
    let before = dns.queries("steady.example.test");
    w.silent_until_asked(&dns, "steady.example.test", before + 4)
        .await;
    eprintln!("TTL 1 s: two refresh rounds, no publish");
}

#[tokio::test]
async fn the_answer_ttl_decides_when_a_change_is_seen() {
    let dns = FakeDns::start().await;
    dns.set("ttl1.example.test", v4(&["192.0.2.4"], 1));
    // Both families answered: an empty AAAA answer would be held for the
    // SOA's 1 s negative TTL instead.
    let long = |v4: &str, v6: &str| Reply::Records {
        v4: vec![v4.parse().expect("v4")],
        v6: vec![v6.parse().expect("v6")],
        ttl: 300,
    };
    dns.set("ttl300.example.test", long("192.0.2.14", "2001:db8::14"));
    let names = ["ttl1.example.test", "ttl300.example.test"];
    let r = resolver(dns.settings(), &names);
    let mut w = Watch::new(&r);
    w.until(Instant::now(), PATIENCE, |h| {
        !h.addresses("ttl1.example.test").is_empty()
            && h.addresses("ttl300.example.test").len() == 2
    })
    .await;
    let long_asked = dns.queries("ttl300.example.test");
    let changed = Instant::now();
    dns.set("ttl1.example.test", v4(&["192.0.2.5"], 1));
    dns.set("ttl300.example.test", long("192.0.2.15", "2001:db8::15"));
    let (hosts, took) = w
        .until(changed, PATIENCE, |h| {
            h.addresses("ttl1.example.test")
                .contains(&ips(&["192.0.2.5"])[0])
        })
        .await;
    // And one more round of the short name after that: the long one is
    // still not due.
    dns.until_asked("ttl1.example.test", dns.queries("ttl1.example.test") + 2)
        .await;
    eprintln!("TTL 1 s: new address after {took:?}; TTL 300 s: not asked again");
    assert_eq!(dns.queries("ttl300.example.test"), long_asked);
    let old = ips(&["192.0.2.14", "2001:db8::14"]);
    assert_eq!(hosts.addresses("ttl300.example.test"), old);
    assert_eq!(r.hosts().addresses("ttl300.example.test"), old);
}

#[tokio::test]
async fn a_zero_ttl_is_held_for_the_minimum() {
    let dns = FakeDns::start().await;
    dns.set("ttl0.example.test", v4(&["192.0.2.6"], 0));
    // The clock of this test: a name whose TTL is above the minimum,
    // refreshed 3.8 s after the start, when the TTL-0 name held for 2 s
    // has been refreshed about twice.
    dns.set("ttl4.example.test", v4(&["192.0.2.16"], 4));
    let settings = ResolverSettings {
        ttl_min: Duration::from_secs(2),
        ..dns.settings()
    };
    let r = resolver(settings, &["ttl0.example.test", "ttl4.example.test"]);
    let mut w = Watch::new(&r);
    w.until(Instant::now(), PATIENCE, |h| h.iter().count() == 2)
        .await;
    let changed = Instant::now();
    dns.set("ttl0.example.test", v4(&["192.0.2.7"], 0));
    let (_, took) = w
        .until(changed, PATIENCE, |h| {
            h.addresses("ttl0.example.test")
                .contains(&ips(&["192.0.2.7"])[0])
        })
        .await;
    let clock = dns.queries("ttl4.example.test");
    dns.until_asked("ttl4.example.test", clock + 1).await;
    // Taken literally, TTL 0 would have the agent asking in a loop:
    // hundreds of questions by now, not the initial round and two more.
    let asked = dns.queries("ttl0.example.test");
    eprintln!("TTL 0 (min 2 s): new address after {took:?}, {asked} questions by the 4 s refresh");
    assert!(
        asked <= 8,
        "{asked} questions: the minimum TTL was not applied"
    );
}

/// A name resolves, then its server stops answering usefully: the last
/// addresses stay through the stale grace (2 s past the 1 s expiry), then
/// go, and the failure names the host and the server.
async fn stale_then_dropped(name: &str, failure: Reply) -> Duration {
    let dns = FakeDns::start().await;
    dns.set(name, v4(&["192.0.2.8"], 1));
    let r = resolver(dns.settings(), &[name]);
    let mut w = Watch::new(&r);
    w.until(Instant::now(), Duration::from_secs(3), |h| !h.is_empty())
        .await;
    let broken = Instant::now();
    let before = dns.queries(name);
    dns.set(name, failure);
    // The refresh fails (its failure names the host and the server)...
    let server = dns.addr.to_string();
    let deadline = Instant::now() + PATIENCE;
    let err = loop {
        let failures = r.failures().borrow().clone();
        if let Some(err) = failures.get(name) {
            break err.to_string();
        }
        assert!(Instant::now() < deadline, "no failure reported for {name}");
        tokio::time::sleep(10 * MS).await;
    };
    assert!(
        err.contains(name) && err.contains(&server),
        "failure should name {name} and {server}: {err}"
    );
    // ...and so does a retry after it, and the stale address stays
    // published all along: dropping it early would be published here.
    let failed = dns.queries(name);
    assert!(failed > before);
    w.silent_until_asked(&dns, name, failed + 1).await;
    assert_eq!(
        r.hosts().addresses(name),
        ips(&["192.0.2.8"]),
        "dropped before the grace ended"
    );
    let (_, took) = w
        .until(broken, PATIENCE, |h| h.addresses(name).is_empty())
        .await;
    took
}

#[tokio::test]
async fn servfail_keeps_stale_addresses_during_the_grace_then_drops_them() {
    let took = stale_then_dropped("flaky.example.test", Reply::ServFail).await;
    eprintln!("SERVFAIL: stale address dropped after {took:?} (expiry 1 s + grace 2 s)");
}

#[tokio::test]
async fn timeouts_keep_stale_addresses_during_the_grace_then_drop_them() {
    let took = stale_then_dropped("silent.example.test", Reply::Silent).await;
    eprintln!("timeout: stale address dropped after {took:?} (expiry 1 s + grace 2 s)");
}

#[tokio::test]
async fn nxdomain_gives_no_addresses() {
    let dns = FakeDns::start().await;
    dns.set("moving.example.test", v4(&["192.0.2.9"], 1));
    let r = resolver(
        dns.settings(),
        &["moving.example.test", "nowhere.example.test"],
    );
    let mut w = Watch::new(&r);
    let start = Instant::now();
    w.until(start, Duration::from_secs(3), |h| !h.is_empty())
        .await;
    // The name that never existed: asked (A and AAAA), answered, empty.
    dns.until_asked("nowhere.example.test", 2).await;
    assert!(r.hosts().addresses("nowhere.example.test").is_empty());
    // A name that goes away empties once its 1 s TTL runs out.
    let removed = Instant::now();
    dns.set("moving.example.test", Reply::NxDomain);
    let (hosts, took) = w
        .until(removed, Duration::from_secs(4), ResolvedHosts::is_empty)
        .await;
    eprintln!("NXDOMAIN: previous address gone after {took:?}");
    assert!(hosts.is_empty());
    // NXDOMAIN is an answer, not a failure.
    assert!(
        r.failures().borrow().is_empty(),
        "{:?}",
        r.failures().borrow()
    );
}

#[tokio::test]
async fn reloading_names_adds_and_removes_without_disturbing_the_others() {
    let dns = FakeDns::start().await;
    dns.set("a.example.test", v4(&["192.0.2.11"], 300));
    dns.set("b.example.test", v4(&["192.0.2.12"], 300));
    dns.set("c.example.test", v4(&["192.0.2.13"], 300));
    let r = resolver(dns.settings(), &["a.example.test", "b.example.test"]);
    let mut w = Watch::new(&r);
    w.until(Instant::now(), Duration::from_secs(3), |h| {
        h.iter().count() == 2
    })
    .await;
    let b_asked = dns.queries("b.example.test");
    let reload = Instant::now();
    r.set_names(["b.example.test".to_owned(), "c.example.test".to_owned()])
        .expect("reload");
    let (hosts, took) = w
        .until(reload, Duration::from_secs(3), |h| {
            !h.addresses("c.example.test").is_empty()
        })
        .await;
    eprintln!("reload: new name resolved in {took:?}");
    assert!(hosts.addresses("a.example.test").is_empty());
    assert_eq!(hosts.addresses("b.example.test"), ips(&["192.0.2.12"]));
    // b was neither asked again nor ever missing from a snapshot.
    assert_eq!(dns.queries("b.example.test"), b_asked);
    assert!(w
        .seen
        .iter()
        .all(|(_, h)| !h.addresses("b.example.test").is_empty()));
    assert_eq!(
        r.names().into_iter().collect::<Vec<_>>(),
        ["b.example.test", "c.example.test"]
    );
}

#[tokio::test]
async fn an_invalid_name_on_reload_changes_nothing() {
    let dns = FakeDns::start().await;
    let r = resolver(dns.settings(), &["a.example.test"]);
    let err = r
        .set_names(["ok.example.test".to_owned(), "not a name!".to_owned()])
        .expect_err("invalid name");
    assert!(err.to_string().contains("not a name!"), "{err}");
    assert_eq!(
        r.names().into_iter().collect::<Vec<_>>(),
        ["a.example.test"]
    );
}
