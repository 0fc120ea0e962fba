//! Scenarios: replies. Egress rules restrict what a workload initiates;
//! as in Kubernetes, it can always answer what came in: a pod behind a
//! LoadBalancer answers an internet client, kube-dns answers a pod its
//! egress policy does not list. It still cannot initiate anything to those
//! peers, and nothing it sends creates the right to reply.
//!
//! The server workload runs an echo server in the server namespace; clients
//! outside any cgroup talk to it from the client namespace (10.200.0.1,
//! fd00:200::1), which its policy does not allow.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use egress_agent::dataplane::{FlowEvent, Hook, Reason, VerdictKind};
use integration_tests::{
    probe::Served, Client, Enforced, Event, Listener, Outcome, Proto, Resolved, TestNet,
};

const ARRIVAL: Duration = Duration::from_secs(2);
const SILENCE: Duration = Duration::from_millis(300);

const CLIENT: Ipv4Addr = TestNet::CLIENT_V4;
const CLIENT6: Ipv6Addr = TestNet::CLIENT_V6;
const SERVER: Ipv4Addr = TestNet::SERVER_V4;
const SERVER6: Ipv6Addr = TestNet::SERVER_V6;

/// `prod/server` is isolated for egress and may reach an unrelated block,
/// and its own addresses (as a "same namespace" rule would allow), nothing
/// else.
const ISOLATED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: server, namespace: prod, labels: {app: server}}
spec: {cgroup: $ROOT/prod/server}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 192.0.2.0/24}}]
  - to: [{ipBlock: {cidr: 10.200.0.2/32}}, {ipBlock: {cidr: "fd00:200::2/128"}}]
"#;

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// Polls `f` until it holds or `within` passes; returns the last value.
fn wait_until<T>(within: Duration, mut f: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + within;
    loop {
        let value = f();
        if done(&value) || Instant::now() >= deadline {
            return value;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_isolated_tcp_server_answers_a_client_its_rules_do_not_allow_but_cannot_connect_to_it() {
    let s = Enforced::new(ISOLATED).unwrap();
    let _v4 = s
        .serve("prod/server", at(SERVER, 7300), Proto::Tcp)
        .unwrap();
    let _v6 = s
        .serve("prod/server", at(SERVER6, 7300), Proto::Tcp)
        .unwrap();
    let client = Client::outside(&s.net.client);

    // The SYN-ACK and the echoed data come back, IPv4 and IPv6.
    assert_eq!(
        client.request(at(SERVER, 7300), Proto::Tcp).unwrap(),
        Outcome::Ok
    );
    assert_eq!(
        client.request(at(SERVER6, 7300), Proto::Tcp).unwrap(),
        Outcome::Ok
    );

    // The server's workload cannot open a connection to the same client.
    let listener4 = Listener::start(&s.net.client, at(CLIENT, 7301), Proto::Tcp).unwrap();
    let listener6 = Listener::start(&s.net.client, at(CLIENT6, 7301), Proto::Tcp).unwrap();
    let out = s.server_side_client("prod/server");
    assert_eq!(out.connect_tcp(at(CLIENT, 7301)).unwrap(), Outcome::Eperm);
    assert_eq!(out.connect_tcp(at(CLIENT6, 7301)).unwrap(), Outcome::Eperm);
    assert_eq!(listener4.next_event(SILENCE), None);
    assert_eq!(listener6.next_event(Duration::ZERO), None);

    let counters = s.dataplane_ref().counters().unwrap();
    assert_eq!(counters.enforced(Hook::Connect4, Reason::DefaultDeny), 1);
    assert_eq!(counters.enforced(Hook::Connect6, Reason::DefaultDeny), 1);
    // Per connection at least the SYN-ACK and the echo.
    let replies = counters.enforced(Hook::Skb, Reason::Reply);
    assert!(replies >= 4, "{replies} reply packets");
    assert_eq!(
        counters.enforced(Hook::Skb, Reason::DefaultDeny),
        0,
        "no answer was dropped"
    );
    assert_eq!(counters.flow(FlowEvent::TcpInbound), 2);
    // Per workload, replies are counted without a rule.
    let hits = counters.hits_of(
        s.cgroup_id("prod/server"),
        VerdictKind::new(Hook::Skb, Reason::Reply),
    );
    assert_eq!(hits.keys().collect::<Vec<_>>(), [&None]);
}

#[test]
fn an_isolated_udp_echo_server_answers_ipv4_and_ipv6_clients_but_cannot_send_to_them_first() {
    let s = Enforced::new(ISOLATED).unwrap();
    let server4 = s
        .serve("prod/server", at(SERVER, 7310), Proto::Udp)
        .unwrap();
    let server6 = s
        .serve("prod/server", at(SERVER6, 7310), Proto::Udp)
        .unwrap();
    let client = Client::outside(&s.net.client);

    assert_eq!(
        client.request(at(SERVER, 7310), Proto::Udp).unwrap(),
        Outcome::Ok
    );
    let (peer, sent) = server4.next_echo(ARRIVAL).expect("the server answered");
    assert_eq!((peer.ip(), sent), (IpAddr::V4(CLIENT), Outcome::Ok));
    assert_eq!(
        client.request(at(SERVER6, 7310), Proto::Udp).unwrap(),
        Outcome::Ok
    );
    let (peer, sent) = server6.next_echo(ARRIVAL).expect("the server answered");
    assert_eq!((peer.ip(), sent), (IpAddr::V6(CLIENT6), Outcome::Ok));

    // Initiating to the client's address: sendto and connect are refused.
    let listener = Listener::start(&s.net.client, at(CLIENT, 7311), Proto::Udp).unwrap();
    let listener6 = Listener::start(&s.net.client, at(CLIENT6, 7311), Proto::Udp).unwrap();
    let out = s.server_side_client("prod/server");
    assert_eq!(out.sendto(at(CLIENT, 7311)).unwrap(), Outcome::Eperm);
    assert_eq!(out.sendto(at(CLIENT6, 7311)).unwrap(), Outcome::Eperm);
    assert_eq!(
        out.connect(at(CLIENT, 7311), Proto::Udp, ARRIVAL).unwrap(),
        Outcome::Eperm
    );
    assert_eq!(listener.next_event(SILENCE), None);
    assert_eq!(listener6.next_event(Duration::ZERO), None);

    let counters = s.dataplane_ref().counters().unwrap();
    // The echo's sendto passed sendmsg4/6 as a reply, and its packet too.
    assert_eq!(counters.enforced(Hook::Sendmsg4, Reason::Reply), 1);
    assert_eq!(counters.enforced(Hook::Sendmsg6, Reason::Reply), 1);
    assert_eq!(counters.enforced(Hook::Skb, Reason::Reply), 2);
    assert_eq!(counters.enforced(Hook::Sendmsg4, Reason::DefaultDeny), 1);
    assert_eq!(counters.enforced(Hook::Sendmsg6, Reason::DefaultDeny), 1);
    assert_eq!(counters.enforced(Hook::Connect4, Reason::DefaultDeny), 1);
    assert_eq!(counters.flow(FlowEvent::UdpRecorded), 2);
    assert_eq!(s.dataplane_ref().flow_entries().inbound_udp, 2);
}

/// `apps/app` is no gateway, so it may not leave the cluster CIDRs (only
/// the server's addresses here): the client is "the internet".
const GATEWAY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: v1
kind: Namespace
metadata: {name: egress}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: app, namespace: apps, labels: {app: app}}
spec: {cgroup: $ROOT/apps/app}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: gw, namespace: egress, labels: {gateway: any}}
spec: {cgroup: $ROOT/egress/gw}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {name: any, namespace: egress}
spec:
  selector: {podSelector: {matchLabels: {gateway: any}}}
  clusterCIDRs: [10.200.0.2/32, "fd00:200::2/128"]
"#;

/// TCP clients on the internet are answered (a completed handshake proves
/// the client's address). A UDP datagram from outside the cluster is not
/// answered: it proves nothing about its source (one forged datagram would
/// otherwise open a way out to any address), and this workload may never
/// send there (issue 12, item 4; `FlowEvent::UdpReplyOutsideCluster`).
#[test]
fn a_workload_that_is_not_a_gateway_answers_an_internet_client_but_cannot_reach_it() {
    let s = Enforced::new(GATEWAY).unwrap();
    let _tcp = s.serve("apps/app", at(SERVER, 7330), Proto::Tcp).unwrap();
    let _tcp6 = s.serve("apps/app", at(SERVER6, 7330), Proto::Tcp).unwrap();
    let udp = s.serve("apps/app", at(SERVER, 7331), Proto::Udp).unwrap();
    let client = Client::outside(&s.net.client);

    assert_eq!(
        client.request(at(SERVER, 7330), Proto::Tcp).unwrap(),
        Outcome::Ok
    );
    assert_eq!(
        client.request(at(SERVER6, 7330), Proto::Tcp).unwrap(),
        Outcome::Ok
    );
    assert_ne!(
        client.request(at(SERVER, 7331), Proto::Udp).unwrap(),
        Outcome::Ok,
        "a UDP datagram from outside the cluster opens no way back"
    );
    assert_eq!(udp.next_echo(ARRIVAL).map(|e| e.1), Some(Outcome::Eperm));

    let listener = Listener::start(&s.net.client, at(CLIENT, 7332), Proto::Tcp).unwrap();
    let out = s.server_side_client("apps/app");
    assert_eq!(out.connect_tcp(at(CLIENT, 7332)).unwrap(), Outcome::Eperm);
    assert_eq!(out.connect_tcp(at(CLIENT6, 7332)).unwrap(), Outcome::Eperm);
    assert_eq!(out.sendto(at(CLIENT, 7332)).unwrap(), Outcome::Eperm);
    assert_eq!(listener.next_event(SILENCE), None);

    let counters = s.dataplane_ref().counters().unwrap();
    assert_eq!(
        counters.enforced(Hook::Connect4, Reason::GatewayExclusivity),
        1
    );
    assert_eq!(
        counters.enforced(Hook::Connect6, Reason::GatewayExclusivity),
        1
    );
    assert_eq!(
        counters.enforced(Hook::Sendmsg4, Reason::GatewayExclusivity),
        2
    );
    assert_eq!(counters.enforced(Hook::Sendmsg4, Reason::Reply), 0);
    assert_eq!(counters.flow(FlowEvent::UdpReplyOutsideCluster), 1);
    assert!(counters.enforced(Hook::Skb, Reason::Reply) >= 4);
    assert_eq!(counters.enforced(Hook::Skb, Reason::GatewayExclusivity), 0);
}

#[test]
fn sending_first_records_nothing_and_a_record_belongs_to_the_socket_that_received() {
    let s = Enforced::new(ISOLATED).unwrap();
    let _server = s
        .serve("prod/server", at(SERVER, 7340), Proto::Udp)
        .unwrap();
    let target = Listener::start(&s.net.client, at(CLIENT, 7341), Proto::Udp).unwrap();
    let out = s.server_side_client("prod/server");

    // A bound socket of the workload sends first, twice: refused both
    // times, and no record was made by sending.
    for _ in 0..2 {
        assert_eq!(
            out.sendto_from(at(SERVER, 7342), at(CLIENT, 7341)).unwrap(),
            Outcome::Eperm
        );
    }
    assert_eq!(target.next_event(SILENCE), None);
    assert_eq!(s.dataplane_ref().flow_entries().inbound_udp, 0);
    assert_eq!(
        s.dataplane_ref()
            .counters()
            .unwrap()
            .flow(FlowEvent::UdpRecorded),
        0
    );

    // The client (port 7341) talks to the echo server: the echo server's
    // socket may answer it...
    let client = Client::outside(&s.net.client);
    drop(target);
    assert_eq!(
        client
            .request_udp_from(at(CLIENT, 7341), at(SERVER, 7340))
            .unwrap(),
        Outcome::Ok
    );
    // ...another socket of the same workload may not, to the same port.
    let target = Listener::start(&s.net.client, at(CLIENT, 7341), Proto::Udp).unwrap();
    assert_eq!(
        out.sendto_from(at(SERVER, 7342), at(CLIENT, 7341)).unwrap(),
        Outcome::Eperm
    );
    assert_eq!(target.next_event(SILENCE), None);
    let counters = s.dataplane_ref().counters().unwrap();
    assert_eq!(counters.enforced(Hook::Sendmsg4, Reason::DefaultDeny), 3);
    assert_eq!(counters.enforced(Hook::Sendmsg4, Reason::Reply), 1);
}

#[test]
fn a_forged_source_on_loopback_records_nothing() {
    let s = Enforced::new(ISOLATED).unwrap();
    let server = s
        .serve("prod/server", at(SERVER6, 7350), Proto::Udp)
        .unwrap();
    // An address nobody here has, which the workload may not reach.
    let forged = at(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 1, 9), 7351);

    // The workload may reach its own address, so it can send there from a
    // socket bound (IP_FREEBIND) to the forged address; it arrives over
    // loopback with that source...
    let out = s.server_side_client("prod/server");
    assert_eq!(
        out.spoof_udp(forged, at(SERVER6, 7350)).unwrap(),
        Outcome::Ok
    );
    assert_eq!(
        server.next_event(ARRIVAL),
        Some(Served::Received(forged)),
        "the forged datagram reached the server"
    );
    // ...but it is no inbound flow: the echo to it is refused.
    assert_eq!(
        server.next_event(ARRIVAL),
        Some(Served::Echoed(forged, Outcome::Eperm))
    );

    let counters = s.dataplane_ref().counters().unwrap();
    assert_eq!(counters.flow(FlowEvent::UdpForeignLoopback), 1);
    assert_eq!(counters.flow(FlowEvent::UdpRecorded), 0);
    assert_eq!(counters.enforced(Hook::Sendmsg6, Reason::DefaultDeny), 1);
    assert_eq!(counters.enforced(Hook::Sendmsg6, Reason::Reply), 0);

    // A genuine client still gets its answer.
    let client = Client::outside(&s.net.client);
    assert_eq!(
        client.request(at(SERVER6, 7350), Proto::Udp).unwrap(),
        Outcome::Ok
    );
}

/// `prod/server` may connect to the client on 7360 only.
fn may_reach_the_client(allowed: bool) -> String {
    let rule = if allowed {
        "  egress:\n  - to: [{ipBlock: {cidr: 10.200.0.1/32}}]\n    ports: [{port: 7360}]\n"
    } else {
        ""
    };
    format!(
        r#"
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: server, namespace: prod, labels: {{app: server}}}}
spec: {{cgroup: $ROOT/prod/server}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: server-egress, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  policyTypes: [Egress]
{rule}"#
    )
}

#[test]
fn a_tcp_socket_the_workload_connected_is_never_inbound() {
    let mut s = Enforced::new(&may_reach_the_client(true)).unwrap();
    let listener = Listener::start(&s.net.client, at(CLIENT, 7360), Proto::Tcp).unwrap();
    let mut held = s
        .server_side_client("prod/server")
        .hold(at(CLIENT, 7360), Proto::Tcp)
        .unwrap();
    assert_eq!(held.send().unwrap(), Outcome::Ok);
    let data = std::iter::from_fn(|| listener.next_event(ARRIVAL))
        .take(2)
        .any(|e| matches!(e, Event::Data(_)));
    assert!(data, "allowed by the rule, data arrives");
    assert_eq!(s.dataplane_ref().flow_entries().inbound_tcp, 0);
    assert_eq!(
        s.dataplane_ref()
            .counters()
            .unwrap()
            .flow(FlowEvent::TcpInbound),
        0
    );

    // The rule goes: the connected socket's data is dropped, not let
    // through as a reply, although the peer has been answering it.
    s.apply(&may_reach_the_client(false), &Resolved::new(), false)
        .unwrap();
    listener.drain();
    for _ in 0..3 {
        assert_eq!(held.send().unwrap(), Outcome::Ok, "queued");
    }
    assert_eq!(listener.next_event(Duration::from_millis(700)), None);
    let counters = s.dataplane_ref().counters().unwrap();
    assert!(counters.enforced(Hook::Skb, Reason::DefaultDeny) >= 1);
    assert_eq!(counters.total(Reason::Reply), 0);
}

#[test]
fn closed_inbound_connections_leave_no_entries() {
    let s = Enforced::new(ISOLATED).unwrap();
    let _server = s
        .serve_quietly("prod/server", at(SERVER, 7370), Proto::Tcp)
        .unwrap();
    let client = Client::outside(&s.net.client);

    // 200 connections open at once: 200 entries.
    let start = Instant::now();
    let held = client.hold_many(at(SERVER, 7370), 200).unwrap();
    let open = s.dataplane_ref().flow_entries().inbound_tcp;
    assert!((200..=210).contains(&open), "{open} entries");
    drop(held);
    let after = wait_until(
        Duration::from_secs(5),
        || s.dataplane_ref().flow_entries().inbound_tcp,
        |n| *n <= 5,
    );
    assert!(after <= 5, "{after} entries left after closing 200");
    println!("200 held and closed: {:?}", start.elapsed());

    // 10,000 connections opened, answered and closed one after another.
    let start = Instant::now();
    let flood = client.flood_tcp(at(SERVER, 7370), 10_000).unwrap();
    let flooded = start.elapsed();
    assert_eq!((flood.ok, flood.failed), (10_000, 0), "{flood:?}");
    let left = wait_until(
        Duration::from_secs(5),
        || s.dataplane_ref().flow_entries().inbound_tcp,
        |n| *n <= 10,
    );
    println!("10k connections in {flooded:?}; {left} entries left");
    assert!(left <= 10, "{left} entries left after 10k connections");

    let counters = s.dataplane_ref().counters().unwrap();
    let (inbound, closed) = (
        counters.flow(FlowEvent::TcpInbound),
        counters.flow(FlowEvent::TcpClosed),
    );
    assert!(inbound >= 10_200, "{inbound}");
    assert!(closed + 10 >= inbound, "{closed} closed of {inbound}");
    assert_eq!(counters.flow(FlowEvent::TcpRecordFailed), 0);
    assert_eq!(counters.enforced(Hook::Skb, Reason::DefaultDeny), 0);
}

#[test]
fn udp_flow_records_are_bounded() {
    use egress_agent::dataplane::FlowEntries;
    let s = Enforced::new(ISOLATED).unwrap();
    let _v4 = s
        .serve_quietly("prod/server", at(SERVER, 7380), Proto::Udp)
        .unwrap();
    let _v6 = s
        .serve_quietly("prod/server", at(SERVER6, 7380), Proto::Udp)
        .unwrap();
    let client = Client::outside(&s.net.client);
    // More (socket, remote) flows than the map holds: one per client port
    // and family.
    let capacity = 1usize << 16;
    let start = Instant::now();
    let v4 = client.spray_udp(at(SERVER, 7380), 1024..=65535).unwrap();
    let v6 = client.spray_udp(at(SERVER6, 7380), 1024..=9999).unwrap();
    let sent = v4.ok + v6.ok;
    assert!(sent as usize > capacity + 5_000, "{v4:?} {v6:?}");
    let recorded = wait_until(
        Duration::from_secs(5),
        || {
            s.dataplane_ref()
                .counters()
                .unwrap()
                .flow(FlowEvent::UdpRecorded)
        },
        |n| *n + 1_000 >= sent,
    );
    let FlowEntries { inbound_udp, .. } = s.dataplane_ref().flow_entries();
    println!(
        "{sent} flows sent in {:?}: {recorded} recorded, {inbound_udp} entries (capacity {capacity})",
        start.elapsed()
    );
    assert!(recorded as usize > capacity, "{recorded} recorded");
    assert!(inbound_udp <= capacity, "{inbound_udp} entries");
    assert_eq!(
        s.dataplane_ref()
            .counters()
            .unwrap()
            .flow(FlowEvent::UdpRecordFailed),
        0,
        "a full LRU map evicts, it does not refuse"
    );
    // The newest flows are the ones kept: a new client is answered.
    assert_eq!(
        client.request(at(SERVER, 7380), Proto::Udp).unwrap(),
        Outcome::Ok
    );
}

#[test]
fn a_tcp_fast_open_client_is_answered_and_its_socket_is_inbound_once_the_handshake_completes() {
    let s = Enforced::new(ISOLATED).unwrap();
    let _server = s.serve_fast_open("prod/server", at(SERVER, 7390)).unwrap();
    let client = Client::outside(&s.net.client);
    // The first request gets the client a cookie; the next ones carry
    // their data in the SYN, and the kernel makes the child on the SYN.
    for _ in 0..3 {
        assert_eq!(
            client
                .request_fast_open(at(SERVER, 7390), Duration::from_secs(4))
                .unwrap(),
            Outcome::Ok
        );
    }
    let counters = s.dataplane_ref().counters().unwrap();
    let fast_open = counters.flow(FlowEvent::TcpFastOpen);
    println!(
        "fast open children: {fast_open}; inbound: {}; dropped while in the handshake: {}",
        counters.flow(FlowEvent::TcpInbound),
        counters.enforced(Hook::Skb, Reason::DefaultDeny)
    );
    assert_eq!(fast_open, 2, "the second and third requests were Fast Open");
    // Every child, Fast Open or not, ends up inbound.
    assert_eq!(counters.flow(FlowEvent::TcpInbound), 3);
}
