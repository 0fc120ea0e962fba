//! Scenarios: NetworkPolicy egress, enforced by the kernel. An allowed
//! destination and port connects; anything else is refused at once with
//! EPERM, for TCP and UDP, IPv4 and IPv6.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use egress_agent::dataplane::{Hook, Reason};
use integration_tests::{Enforced, Listener, Outcome, Proto, TestNet};

const ARRIVAL: Duration = Duration::from_secs(2);
const SILENCE: Duration = Duration::from_millis(300);

/// `prod/client` may reach 10.200.0.0/24 except 10.200.0.3, and
/// fd00:200::/64, on port 7000 (TCP and UDP); and `prod/server` on its
/// named port `http` (7080).
const POLICY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {cgroup: $ROOT/prod/client, addresses: [10.200.0.1, "fd00:200::1"]}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: server, namespace: prod, labels: {app: server}}
spec:
  cgroup: $ROOT/prod/server
  addresses: [10.200.0.2]
  ports: [{name: http, port: 7080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.200.0.0/24, except: [10.200.0.3/32]}}]
    ports: [{port: 7000, protocol: TCP}, {port: 7000, protocol: UDP}]
  - to: [{ipBlock: {cidr: "fd00:200::/64"}}]
    ports: [{port: 7000, protocol: TCP}, {port: 7000, protocol: UDP}]
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{port: http}]
"#;

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

const SERVER: Ipv4Addr = TestNet::SERVER_V4;
const NEIGHBOUR: Ipv4Addr = TestNet::SERVER_V4_NEIGHBOUR;
const SERVER6: Ipv6Addr = TestNet::SERVER_V6;

#[test]
fn a_workload_connects_to_allowed_tcp_ports_and_gets_eperm_elsewhere_ipv4_and_ipv6() {
    let mut s = Enforced::new(POLICY).unwrap();
    let any4 = Listener::start(&s.net.server, at(Ipv4Addr::UNSPECIFIED, 7000), Proto::Tcp).unwrap();
    let other4 = Listener::start(&s.net.server, at(SERVER, 7001), Proto::Tcp).unwrap();
    let v6 = Listener::start(&s.net.server, at(SERVER6, 7000), Proto::Tcp).unwrap();
    let other6 = Listener::start(&s.net.server, at(SERVER6, 7001), Proto::Tcp).unwrap();
    let client = s.client("prod/client");

    assert_eq!(client.connect_tcp(at(SERVER, 7000)).unwrap(), Outcome::Ok);
    assert!(
        any4.next_event(ARRIVAL).is_some(),
        "the allowed connection arrives"
    );
    assert_eq!(client.connect_tcp(at(SERVER6, 7000)).unwrap(), Outcome::Ok);
    assert!(v6.next_event(ARRIVAL).is_some());

    // Another port: refused by connect4/6 before any SYN.
    assert_eq!(
        client.connect_tcp(at(SERVER, 7001)).unwrap(),
        Outcome::Eperm
    );
    assert_eq!(
        client.connect_tcp(at(SERVER6, 7001)).unwrap(),
        Outcome::Eperm
    );
    assert_eq!(other4.next_event(SILENCE), None);
    assert_eq!(other6.next_event(Duration::ZERO), None);

    let counters = s.dataplane().counters().unwrap();
    assert_eq!(counters.enforced(Hook::Connect4, Reason::DefaultDeny), 1);
    assert_eq!(counters.enforced(Hook::Connect6, Reason::DefaultDeny), 1);
    assert_eq!(counters.enforced(Hook::Connect4, Reason::Rule), 1);
    assert_eq!(counters.enforced(Hook::Connect6, Reason::Rule), 1);
    assert_eq!(
        counters.enforced(Hook::Skb, Reason::DefaultDeny),
        0,
        "no packet was even sent"
    );
}

#[test]
fn udp_connect_and_unconnected_sendto_are_refused_to_unlisted_ports_ipv4_and_ipv6() {
    let mut s = Enforced::new(POLICY).unwrap();
    let allowed4 = Listener::start(&s.net.server, at(SERVER, 7000), Proto::Udp).unwrap();
    let allowed6 = Listener::start(&s.net.server, at(SERVER6, 7000), Proto::Udp).unwrap();
    let denied4 = Listener::start(&s.net.server, at(SERVER, 7002), Proto::Udp).unwrap();
    let denied6 = Listener::start(&s.net.server, at(SERVER6, 7002), Proto::Udp).unwrap();
    let client = s.client("prod/client");
    let udp = |addr| client.connect(addr, Proto::Udp, ARRIVAL).unwrap();

    assert_eq!(udp(at(SERVER, 7000)), Outcome::Ok);
    assert_eq!(client.sendto(at(SERVER, 7000)).unwrap(), Outcome::Ok);
    assert_eq!(
        allowed4.expect(2, ARRIVAL).len(),
        2,
        "both datagrams arrive"
    );
    assert_eq!(udp(at(SERVER6, 7000)), Outcome::Ok);
    assert_eq!(client.sendto(at(SERVER6, 7000)).unwrap(), Outcome::Ok);
    assert_eq!(allowed6.expect(2, ARRIVAL).len(), 2);

    assert_eq!(udp(at(SERVER, 7002)), Outcome::Eperm, "connect4");
    assert_eq!(
        client.sendto(at(SERVER, 7002)).unwrap(),
        Outcome::Eperm,
        "sendmsg4"
    );
    assert_eq!(udp(at(SERVER6, 7002)), Outcome::Eperm, "connect6");
    assert_eq!(
        client.sendto(at(SERVER6, 7002)).unwrap(),
        Outcome::Eperm,
        "sendmsg6"
    );
    assert_eq!(denied4.next_event(SILENCE), None);
    assert_eq!(denied6.next_event(Duration::ZERO), None);

    let counters = s.dataplane().counters().unwrap();
    for hook in [
        Hook::Connect4,
        Hook::Sendmsg4,
        Hook::Connect6,
        Hook::Sendmsg6,
    ] {
        assert_eq!(counters.enforced(hook, Reason::DefaultDeny), 1, "{hook:?}");
        assert_eq!(counters.enforced(hook, Reason::Rule), 1, "{hook:?}");
    }
    assert_eq!(counters.enforced(Hook::Skb, Reason::DefaultDeny), 0);
}

#[test]
fn an_ipv4_mapped_ipv6_destination_gets_the_ipv4_verdict() {
    let mut s = Enforced::new(POLICY).unwrap();
    let tcp = Listener::start(&s.net.server, at(Ipv4Addr::UNSPECIFIED, 7000), Proto::Tcp).unwrap();
    let udp = Listener::start(&s.net.server, at(Ipv4Addr::UNSPECIFIED, 7003), Proto::Udp).unwrap();
    let client = s.client("prod/client");
    let mapped = |ip: Ipv4Addr, port| at(ip.to_ipv6_mapped(), port);

    // An AF_INET6 socket to ::ffff:10.200.0.2 sends IPv4 packets and never
    // runs connect4: connect6 decides it as 10.200.0.2.
    assert_eq!(
        client.connect_tcp(mapped(SERVER, 7000)).unwrap(),
        Outcome::Ok
    );
    let event = tcp
        .next_event(ARRIVAL)
        .expect("the mapped connection arrives");
    assert_eq!(event.peer().ip(), IpAddr::V4(TestNet::CLIENT_V4));
    // The except hole and another port are denied as for IPv4.
    assert_eq!(
        client.connect_tcp(mapped(NEIGHBOUR, 7000)).unwrap(),
        Outcome::Eperm
    );
    assert_eq!(client.sendto(mapped(SERVER, 7003)).unwrap(), Outcome::Eperm);
    assert_eq!(tcp.next_event(SILENCE), None);
    assert_eq!(udp.next_event(Duration::ZERO), None);

    let counters = s.dataplane().counters().unwrap();
    assert_eq!(counters.enforced(Hook::Connect6, Reason::Rule), 1);
    assert_eq!(counters.enforced(Hook::Connect6, Reason::DefaultDeny), 1);
    assert_eq!(counters.enforced(Hook::Connect4, Reason::DefaultDeny), 0);
    // udpv6_sendmsg hands a mapped destination to the IPv4 path, which
    // runs sendmsg4 with the IPv4 address.
    assert_eq!(
        counters.enforced(Hook::Sendmsg4, Reason::DefaultDeny)
            + counters.enforced(Hook::Sendmsg6, Reason::DefaultDeny),
        1
    );
}

#[test]
fn an_except_hole_is_denied_while_its_neighbour_in_the_same_block_is_reachable() {
    let s = Enforced::new(POLICY).unwrap();
    let any = Listener::start(&s.net.server, at(Ipv4Addr::UNSPECIFIED, 7000), Proto::Tcp).unwrap();
    let client = s.client("prod/client");

    assert_eq!(
        client.connect_tcp(at(NEIGHBOUR, 7000)).unwrap(),
        Outcome::Eperm
    );
    assert_eq!(client.sendto(at(NEIGHBOUR, 7000)).unwrap(), Outcome::Eperm);
    assert_eq!(client.connect_tcp(at(SERVER, 7000)).unwrap(), Outcome::Ok);
    let event = any
        .next_event(ARRIVAL)
        .expect("the allowed connection arrives");
    assert_eq!(event.peer().ip(), IpAddr::V4(TestNet::CLIENT_V4));
    assert_eq!(any.next_event(SILENCE), None, "nothing reached the hole");
}

#[test]
fn a_named_port_is_allowed_to_the_workload_that_declares_it_only() {
    let s = Enforced::new(POLICY).unwrap();
    let http = Listener::start(&s.net.server, at(Ipv4Addr::UNSPECIFIED, 7080), Proto::Tcp).unwrap();
    let client = s.client("prod/client");

    // prod/server (10.200.0.2) names 7080 `http`.
    assert_eq!(client.connect_tcp(at(SERVER, 7080)).unwrap(), Outcome::Ok);
    assert!(http.next_event(ARRIVAL).is_some());
    // The same port on another address, or over UDP, is not `http`.
    assert_eq!(
        client.connect_tcp(at(SERVER6, 7080)).unwrap(),
        Outcome::Eperm
    );
    assert_eq!(client.sendto(at(SERVER, 7080)).unwrap(), Outcome::Eperm);
    assert_eq!(http.next_event(SILENCE), None);
}

/// A policy with many single ports on one CIDR: 60 entries for the
/// server's prefix, more than one kernel port set holds (16), so the list
/// goes on in chained sets. The last allowed port, deep in the chain,
/// connects; the ports between them are refused.
#[test]
fn sixty_single_ports_on_one_cidr_are_all_enforced() {
    let ports: Vec<String> = (0..60)
        .map(|i| format!("{{port: {}}}", 7100 + 2 * i))
        .collect();
    let policy = POLICY.replace(
        "  - to: [{podSelector: {matchLabels: {app: server}}}]",
        &format!(
            "  - to: [{{ipBlock: {{cidr: {SERVER}/32}}}}]\n    ports: [{}]\n  - to: [{{podSelector: {{matchLabels: {{app: server}}}}}}]",
            ports.join(", ")
        ),
    );
    let s = Enforced::new(&policy).unwrap();
    let client = s.client("prod/client");
    for port in [7100, 7132, 7218] {
        let listener = Listener::start(&s.net.server, at(SERVER, port), Proto::Tcp).unwrap();
        assert_eq!(
            client.connect_tcp(at(SERVER, port)).unwrap(),
            Outcome::Ok,
            "{port}"
        );
        assert!(listener.next_event(ARRIVAL).is_some(), "{port} arrived");
    }
    for port in [7101, 7217, 7220] {
        let listener = Listener::start(&s.net.server, at(SERVER, port), Proto::Tcp).unwrap();
        assert_eq!(
            client.connect_tcp(at(SERVER, port)).unwrap(),
            Outcome::Eperm,
            "{port}"
        );
        assert_eq!(listener.next_event(SILENCE), None, "{port}");
    }
}
