//! Scenarios: the packet-level guarantee. `cgroup_skb/egress` drops traffic
//! to denied destinations even when no `connect` hook sees it.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use egress_agent::dataplane::{Counter, Dataplane, DenyRule, Hook};
use integration_tests::{require_root, Client, Listener, Outcome, Proto, TestCgroup, TestNet};

const PORT: u16 = 7001;
const ARRIVAL: Duration = Duration::from_secs(2);
/// How long a listener must stay silent to count as "never received".
const SILENCE: Duration = Duration::from_millis(700);

fn prefix(s: &str) -> ipnet::IpNet {
    s.parse().expect("valid prefix")
}

#[test]
fn udp_datagrams_sent_without_connect_to_a_denied_destination_never_arrive() {
    require_root();
    let net = TestNet::new().expect("test namespaces");
    let cgroup = TestCgroup::new().expect("test cgroup");
    let mut dataplane = Dataplane::load().expect("eBPF object loads and verifies");
    dataplane.attach_all(cgroup.path()).unwrap();
    let server = SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), PORT);
    let listener = Listener::start(&net.server, server, Proto::Udp).expect("listener");
    let workload = Client::inside(&net.client, &cgroup);
    let bystander = Client::outside(&net.client);

    dataplane
        .deny(prefix("10.200.0.2/32"), DenyRule::new(10))
        .unwrap();

    // The path works: the bystander's datagram arrives.
    assert_eq!(bystander.sendto(server).unwrap(), Outcome::Ok);
    let event = listener
        .next_event(ARRIVAL)
        .expect("the bystander's datagram arrives");
    assert_eq!(event.peer().ip(), IpAddr::V4(TestNet::CLIENT_V4));

    // sendto runs no connect hook; the packet is dropped on its way out and
    // the kernel reports the drop to the sender as EPERM.
    assert_eq!(workload.sendto(server).unwrap(), Outcome::Eperm);
    assert_eq!(
        listener.next_event(SILENCE),
        None,
        "the denied datagram must never reach the listener"
    );
    let counters = dataplane.counters().unwrap();
    assert_eq!(counters.get(Counter::EgressDenied), 1);
    assert_eq!(counters.get(Counter::Connect4Denied), 0);

    assert!(dataplane.remove_deny(prefix("10.200.0.2/32")).unwrap());
    assert_eq!(workload.sendto(server).unwrap(), Outcome::Ok);
    let event = listener.next_event(ARRIVAL).expect("allowed again");
    assert_eq!(event.peer().ip(), IpAddr::V4(TestNet::CLIENT_V4));
}

#[test]
fn without_the_connect_hooks_a_denied_tcp_connection_never_gets_through() {
    require_root();
    let net = TestNet::new().expect("test namespaces");
    let cgroup = TestCgroup::new().expect("test cgroup");
    let mut dataplane = Dataplane::load().expect("eBPF object loads and verifies");
    // Only the packet-level program, for IPv4 and IPv6.
    dataplane.attach(cgroup.path(), Hook::Egress).unwrap();
    let server_v4 = SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), PORT);
    let server_v6 = SocketAddr::new(IpAddr::V6(TestNet::SERVER_V6), PORT);
    let listener_v4 = Listener::start(&net.server, server_v4, Proto::Tcp).expect("listener");
    let listener_v6 = Listener::start(&net.server, server_v6, Proto::Tcp).expect("listener");
    let workload = Client::inside(&net.client, &cgroup);

    dataplane
        .deny(prefix("10.200.0.2/32"), DenyRule::new(11))
        .unwrap();
    dataplane
        .deny(prefix("fd00:200::2/128"), DenyRule::new(12))
        .unwrap();

    // No hook refuses the connect, so every SYN is dropped and TCP retries
    // until the client gives up. The listener never sees a connection.
    assert_eq!(workload.connect_tcp(server_v4).unwrap(), Outcome::Timeout);
    assert_eq!(workload.connect_tcp(server_v6).unwrap(), Outcome::Timeout);
    assert_eq!(listener_v4.next_event(SILENCE), None);
    assert_eq!(listener_v6.next_event(Duration::ZERO), None);

    let counters = dataplane.counters().unwrap();
    assert!(counters.get(Counter::EgressDenied) >= 2, "{counters:?}");
    assert_eq!(counters.get(Counter::Connect4Denied), 0);
    assert_eq!(counters.get(Counter::Connect6Denied), 0);

    // Once lifted, the same client connects.
    dataplane.remove_deny(prefix("10.200.0.2/32")).unwrap();
    assert_eq!(workload.connect_tcp(server_v4).unwrap(), Outcome::Ok);
    assert!(listener_v4.next_event(ARRIVAL).is_some());
}
