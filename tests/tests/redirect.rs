//! Scenarios: transparent redirect. A workload selected by a Redirect has
//! its outbound TCP connects rewritten to the proxy in the kernel
//! (`connect4/6`), as istio-iptables' REDIRECT does, and the proxy gets the
//! original destination back with `getsockopt(SO_ORIGINAL_DST)` as Envoy
//! asks it. The proxy is a workload of its own, recognised by its cgroup.
//!
//! The app and its sidecar share the client namespace (a pod); the proxy
//! listens on its loopback. The "cluster" is 10.200.0.0/24 and
//! fd00:200::/64, so 203.0.113.10 and 2001:db8::10 are the internet, which
//! gateway exclusivity denies to both.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use egress_agent::{
    compile::{self, Destination, Verdict},
    dataplane::{FlowEvent, Hook, Reason},
};
use egress_policy::ports::Protocol;
use integration_tests::{probe::EchoServer, Enforced, Listener, Outcome, Proto, TestNet};

const ARRIVAL: Duration = Duration::from_secs(2);
const SILENCE: Duration = Duration::from_millis(300);

const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const INTERNET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const PROXY_PORT: u16 = 15001;

const POLICY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: app, namespace: apps, labels: {app: app}}
spec: {cgroup: $ROOT/apps/app, sidecar: true}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: proxy, namespace: apps, labels: {app: app, role: proxy}}
spec: {cgroup: $ROOT/apps/proxy}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw, namespace: apps}
spec:
  selector: {podSelector: {matchLabels: {role: gateway}}}
  clusterCIDRs: [10.200.0.0/24, "fd00:200::/64"]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Redirect
metadata: {name: sidecar, namespace: apps}
spec:
  podSelector: {}
  proxy:
    address: 127.0.0.1
    port: 15001
    selector: {podSelector: {matchLabels: {role: proxy}}}
  excludeIPRanges: [10.200.0.0/24]
  includePorts: [8080]
  excludePorts: [22]
"#;

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// The scenario, with the proxy (a stand-in for Envoy, in the proxy's
/// cgroup) listening on 127.0.0.1 and ::1 in the pod.
fn setup() -> (Enforced, EchoServer, EchoServer) {
    let s = Enforced::new(POLICY).unwrap();
    let proxy = s.cgroup("apps/proxy");
    let v4 = EchoServer::start_proxy(
        &s.net.client,
        Some(&proxy),
        at(Ipv4Addr::LOCALHOST, PROXY_PORT),
    )
    .unwrap();
    let v6 = EchoServer::start_proxy(
        &s.net.client,
        Some(&proxy),
        at(Ipv6Addr::LOCALHOST, PROXY_PORT),
    )
    .unwrap();
    (s, v4, v6)
}

/// What `egress-agent explain` says for `workload` → `dst`/tcp.
fn explain(s: &Enforced, workload: &str, dst: SocketAddr) -> Verdict {
    let id = workload.parse().unwrap();
    let w = s.plan.workload(&id).unwrap();
    let dst = Destination {
        ip: dst.ip(),
        port: dst.port(),
        protocol: Protocol::Tcp,
    };
    compile::decide(&s.plan, w, dst).verdict
}

/// The redirect maps' entries once the last closes have completed: the
/// kernel finishes a closed socket's FIN exchange after `close()` returns.
/// Polls until both maps are empty, for at most a few seconds.
fn settled(s: &Enforced) -> egress_agent::dataplane::FlowEntries {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entries = s.dataplane_ref().flow_entries();
        if (entries.orig_dst == 0 && entries.redirected == 0) || Instant::now() > deadline {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn redirect() -> Verdict {
    Verdict::Redirect {
        proxy: at(Ipv4Addr::LOCALHOST, PROXY_PORT),
    }
}

#[test]
fn a_captured_connect_to_a_denied_address_reaches_the_proxy_which_recovers_the_original_destination(
) {
    let (mut s, _v4, _v6) = setup();
    let app = s.client("apps/app");
    let dst = at(INTERNET, 443);
    assert_eq!(explain(&s, "apps/app", dst), redirect());
    assert_eq!(
        app.ask(dst).unwrap(),
        Ok(dst.to_string()),
        "SO_ORIGINAL_DST on the proxy's accepted socket"
    );
    // IPv6: to the proxy's IPv6 loopback, which answers
    // IP6T_SO_ORIGINAL_DST.
    let dst6 = at(INTERNET6, 443);
    assert_eq!(
        explain(&s, "apps/app", dst6),
        Verdict::Redirect {
            proxy: at(Ipv6Addr::LOCALHOST, PROXY_PORT)
        }
    );
    assert_eq!(app.ask(dst6).unwrap(), Ok(dst6.to_string()));
    // IPv4-mapped on an IPv6 socket: the IPv4 decision, the IPv4 proxy
    // (as ::ffff:127.0.0.1), and the IPv4 original destination.
    assert_eq!(
        app.ask(at(INTERNET.to_ipv6_mapped(), 443)).unwrap(),
        Ok(dst.to_string())
    );
    let counters = s.dataplane().counters().unwrap();
    assert_eq!(counters.enforced(Hook::Connect4, Reason::Redirect), 1);
    assert_eq!(counters.enforced(Hook::Connect6, Reason::Redirect), 2);
    assert_eq!(counters.total(Reason::GatewayExclusivity), 0);
    assert_eq!(counters.flow(FlowEvent::OriginalDstAnswered), 3);
    assert_eq!(counters.flow(FlowEvent::RedirectEstablished), 3);
}

#[test]
fn the_proxy_is_recognised_by_its_cgroup_not_by_uid_1337() {
    let (s, _v4, _v6) = setup();
    let dst = at(INTERNET, 443);
    // Istio exempts UID 1337; here a process of the app's cgroup running
    // as 1337 is captured like any other.
    let as_1337 = s.client("apps/app").as_uid(1337);
    assert_eq!(as_1337.ask(dst).unwrap(), Ok(dst.to_string()));
    // The proxy's own onward connection is not captured: it is checked
    // under the proxy's cgroup, and the internet is denied there.
    assert!(matches!(explain(&s, "apps/proxy", dst), Verdict::Deny));
    let proxy = s.client("apps/proxy");
    assert_eq!(proxy.connect_tcp(dst).unwrap(), Outcome::Eperm);
    assert_eq!(proxy.as_uid(1337).connect_tcp(dst).unwrap(), Outcome::Eperm);
}

#[test]
fn istio_include_and_exclude_order_decides_what_is_captured() {
    let (s, _v4, _v6) = setup();
    let server = Listener::start(&s.net.server, at(TestNet::SERVER_V4, 8080), Proto::Tcp).unwrap();
    let app = s.client("apps/app");

    // excludePorts: never captured, so the internet is denied outright.
    let ssh = at(INTERNET, 22);
    assert!(matches!(explain(&s, "apps/app", ssh), Verdict::Deny));
    assert_eq!(app.connect_tcp(ssh).unwrap(), Outcome::Eperm);

    // excludeIPRanges beats includePorts: a direct, allowed connection.
    let inside = at(TestNet::SERVER_V4, 8080);
    assert_eq!(explain(&s, "apps/app", inside), Verdict::Allow);
    assert_eq!(app.connect_tcp(inside).unwrap(), Outcome::Ok);
    assert!(server.next_event(ARRIVAL).is_some(), "reached the server");

    // Loopback is never captured: nothing listens there, so refused.
    let local = at(Ipv4Addr::LOCALHOST, 9);
    assert_eq!(explain(&s, "apps/app", local), Verdict::Allow);
    assert_eq!(app.connect_tcp(local).unwrap(), Outcome::Refused);

    // includeIPRanges "*" covers other ports of the internet.
    let web = at(INTERNET, 80);
    assert_eq!(explain(&s, "apps/app", web), redirect());
    assert_eq!(app.ask(web).unwrap(), Ok(web.to_string()));
    assert_eq!(server.next_event(SILENCE), None);
}

#[test]
fn original_destinations_live_as_long_as_their_connections_even_over_100k() {
    let (mut s, v4, _v6) = setup();
    drop(v4);
    // A quiet echo proxy: the flood is about the maps, not the answers.
    let _quiet = EchoServer::start_quiet(
        &s.net.client,
        Some(&s.cgroup("apps/proxy")),
        at(Ipv4Addr::LOCALHOST, PROXY_PORT),
        Proto::Tcp,
    )
    .unwrap();
    let app = s.client("apps/app");
    assert_eq!(s.dataplane_ref().flow_entries().orig_dst, 0);

    // Open connections keep their entries ...
    let held = app.hold_many(at(INTERNET, 443), 100).unwrap();
    let open = s.dataplane_ref().flow_entries();
    assert_eq!((open.orig_dst, open.redirected), (100, 0));
    // ... and lose them when they close. The probe exits, and its sockets
    // reach TCP_CLOSE once the proxy has answered their FINs.
    drop(held);
    let closed = settled(&s);
    assert_eq!((closed.orig_dst, closed.redirected), (0, 0));

    let started = Instant::now();
    let flood = app.flood_tcp(at(INTERNET, 443), 100_000).unwrap();
    let took = started.elapsed();
    let after = settled(&s);
    eprintln!(
        "100k redirected connections in {took:?}: ORIG_DST {} → {}, REDIRECTED {} → {}; {flood:?}",
        closed.orig_dst, after.orig_dst, closed.redirected, after.redirected
    );
    assert_eq!(flood.ok, 100_000, "{flood:?}");
    // Every app socket has closed (the client closes first, so its
    // sockets pass TCP_CLOSE when they enter TIME_WAIT): no entry is left.
    assert_eq!((after.orig_dst, after.redirected), (0, 0));
    let counters = s.dataplane().counters().unwrap();
    assert_eq!(counters.flow(FlowEvent::RedirectEstablished), 100_100);
    assert_eq!(counters.flow(FlowEvent::RedirectClosed), 100_100);
    assert_eq!(counters.flow(FlowEvent::RedirectRecordFailed), 0);
}

#[test]
fn a_reload_changes_what_is_captured_and_leaves_one_generation_of_capture_entries() {
    let (mut s, _v4, _v6) = setup();
    let dst = at(INTERNET, 443);
    assert_eq!(s.client("apps/app").ask(dst).unwrap(), Ok(dst.to_string()));
    // One captured workload (the proxy is not): one CAPTURES entry, and
    // its prefixes (0.0.0.0/0 and ::/0 included, 10.200.0.0/24 excluded).
    let counts = s.dataplane_ref().entry_counts().unwrap();
    assert_eq!((counts.captures, counts.capture), (1, 3));

    // 443 excluded now: the internet is denied outright.
    let reloaded = POLICY.replace("excludePorts: [22]", "excludePorts: [22, 443]");
    s.apply(&reloaded, &Default::default(), false).unwrap();
    assert!(matches!(explain(&s, "apps/app", dst), Verdict::Deny));
    assert_eq!(
        s.client("apps/app").connect_tcp(dst).unwrap(),
        Outcome::Eperm
    );
    let counts = s.dataplane_ref().entry_counts().unwrap();
    assert_eq!((counts.captures, counts.capture), (1, 3));

    // No Redirect at all: nothing of it is left in the maps.
    let start = POLICY.find("kind: Redirect").unwrap();
    let without = &POLICY[..POLICY[..start].rfind("---").unwrap()];
    s.apply(without, &Default::default(), false).unwrap();
    let counts = s.dataplane_ref().entry_counts().unwrap();
    assert_eq!((counts.captures, counts.capture), (0, 0));
    assert_eq!(
        s.client("apps/app").connect_tcp(dst).unwrap(),
        Outcome::Eperm
    );
}

/// The scenario with `captureDNS` (the test data plane builds the plan as
/// `run --capture-dns` does) and a UDP echo standing in for the DNS proxy
/// on 127.0.0.1:15053 and [::1]:15053, in the proxy's cgroup.
#[test]
fn dns_queries_go_to_the_dns_proxy_and_answers_come_from_the_server_asked() {
    let policy = POLICY.replace(
        "  excludePorts: [22]",
        "  excludePorts: [22]\n  captureDNS: {enabled: true, port: 15053}",
    );
    let mut s = Enforced::new(&policy).unwrap();
    let proxy = s.cgroup("apps/proxy");
    let dns = |ip: IpAddr| {
        EchoServer::start(&s.net.client, Some(&proxy), at(ip, 15053), Proto::Udp).unwrap()
    };
    let (dns4, _dns6) = (
        dns(Ipv4Addr::LOCALHOST.into()),
        dns(Ipv6Addr::LOCALHOST.into()),
    );
    let app = s.client("apps/app");
    // In the cluster, and on the internet (denied to UDP otherwise).
    for server in [
        at(TestNet::SERVER_V4, 53),
        at(INTERNET, 53),
        at(TestNet::SERVER_V6, 53),
    ] {
        let id = "apps/app".parse().unwrap();
        let w = s.plan.workload(&id).unwrap();
        let dst = Destination {
            ip: server.ip(),
            port: 53,
            protocol: Protocol::Udp,
        };
        assert!(matches!(
            compile::decide(&s.plan, w, dst).verdict,
            Verdict::Redirect { proxy } if proxy.port() == 15053
        ));
        assert_eq!(
            app.ask_over(server, Proto::Udp).unwrap(),
            Ok(server.to_string()),
            "the answer seems to come from the server asked"
        );
    }
    assert!(matches!(
        dns4.next_event(ARRIVAL),
        Some(integration_tests::probe::Served::Received(_))
    ));
    // glibc's resolver connect()s its UDP socket first: captured too.
    assert_eq!(
        app.connect(at(INTERNET, 53), Proto::Udp, ARRIVAL).unwrap(),
        Outcome::Ok
    );
    // Without `run --capture-dns`, explain (and the agent) leave DNS alone.
    let plain = s.plan.clone().without_dns_capture();
    let w = plain.workload(&"apps/app".parse().unwrap()).unwrap();
    let query = Destination {
        ip: INTERNET.into(),
        port: 53,
        protocol: Protocol::Udp,
    };
    assert_eq!(compile::decide(&plain, w, query).verdict, Verdict::Deny);
    // Another UDP port is not DNS: not captured, denied on the internet.
    assert_eq!(app.sendto(at(INTERNET, 5353)).unwrap(), Outcome::Eperm);
    // The proxy's own queries are not captured.
    let proxy_client = s.client("apps/proxy");
    assert_eq!(
        proxy_client.sendto(at(INTERNET, 53)).unwrap(),
        Outcome::Eperm
    );
    let counters = s.dataplane().counters().unwrap();
    assert_eq!(counters.flow(FlowEvent::DnsRedirected), 4);
    assert_eq!(counters.flow(FlowEvent::DnsReplyRestored), 3);
    assert_eq!(s.dataplane_ref().flow_entries().dns_orig, 4);
}
