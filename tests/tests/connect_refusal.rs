//! Scenarios: a workload in an enforced cgroup is refused at `connect()`
//! when its destination is denied, and only then.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use egress_agent::dataplane::{Counter, Dataplane, DenyRule};
use integration_tests::{require_root, Client, Listener, Outcome, Proto, TestCgroup, TestNet};

const PORT: u16 = 7000;
const ARRIVAL: Duration = Duration::from_secs(2);

fn prefix(s: &str) -> ipnet::IpNet {
    s.parse().expect("valid prefix")
}

/// The common setup: two namespaces, a cgroup with every program attached,
/// and a dataplane with an empty deny list.
fn setup() -> (TestNet, TestCgroup, Dataplane) {
    require_root();
    let net = TestNet::new().expect("test namespaces");
    let cgroup = TestCgroup::new().expect("test cgroup");
    let mut dataplane = Dataplane::load().expect("eBPF object loads and verifies");
    dataplane
        .attach_all(cgroup.path())
        .expect("programs attach to the test cgroup");
    (net, cgroup, dataplane)
}

#[test]
fn a_workload_gets_eperm_connecting_to_a_denied_ipv4_listener_until_the_prefix_is_removed() {
    let (net, cgroup, mut dataplane) = setup();
    let server = SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), PORT);
    let listener = Listener::start(&net.server, server, Proto::Tcp).expect("listener");
    let workload = Client::inside(&net.client, &cgroup);
    let bystander = Client::outside(&net.client);

    // Before any deny, the workload reaches the server.
    assert_eq!(workload.connect_tcp(server).unwrap(), Outcome::Ok);
    assert!(
        listener.next_event(ARRIVAL).is_some(),
        "the allowed connection arrives"
    );

    dataplane
        .deny(prefix("10.200.0.0/24"), DenyRule::new(1))
        .unwrap();

    // The workload is refused at once; a process outside the cgroup, in the
    // same namespace, is not affected.
    assert_eq!(workload.connect_tcp(server).unwrap(), Outcome::Eperm);
    assert_eq!(bystander.connect_tcp(server).unwrap(), Outcome::Ok);
    let event = listener
        .next_event(ARRIVAL)
        .expect("the bystander's connection arrives");
    assert_eq!(event.peer().ip(), IpAddr::V4(TestNet::CLIENT_V4));
    assert!(
        listener.next_event(Duration::from_millis(300)).is_none(),
        "nothing else arrives: the refused connect sent no SYN"
    );

    let counters = dataplane.counters().unwrap();
    assert_eq!(counters.get(Counter::Connect4Denied), 1);

    // Lifting the deny restores access.
    assert!(dataplane.remove_deny(prefix("10.200.0.0/24")).unwrap());
    assert_eq!(workload.connect_tcp(server).unwrap(), Outcome::Ok);
    assert!(listener.next_event(ARRIVAL).is_some());
}

#[test]
fn a_workload_gets_eperm_connecting_to_a_denied_ipv6_listener_until_the_prefix_is_removed() {
    let (net, cgroup, mut dataplane) = setup();
    let server = SocketAddr::new(IpAddr::V6(TestNet::SERVER_V6), PORT);
    let listener = Listener::start(&net.server, server, Proto::Tcp).expect("listener");
    let workload = Client::inside(&net.client, &cgroup);
    let bystander = Client::outside(&net.client);

    assert_eq!(workload.connect_tcp(server).unwrap(), Outcome::Ok);
    assert!(listener.next_event(ARRIVAL).is_some());

    dataplane
        .deny(prefix("fd00:200::/64"), DenyRule::new(2))
        .unwrap();

    assert_eq!(workload.connect_tcp(server).unwrap(), Outcome::Eperm);
    assert_eq!(bystander.connect_tcp(server).unwrap(), Outcome::Ok);
    let event = listener
        .next_event(ARRIVAL)
        .expect("the bystander's connection arrives");
    assert_eq!(event.peer().ip(), IpAddr::V6(TestNet::CLIENT_V6));
    assert!(listener.next_event(Duration::from_millis(300)).is_none());
    assert_eq!(
        dataplane.counters().unwrap().get(Counter::Connect6Denied),
        1
    );

    assert!(dataplane.remove_deny(prefix("fd00:200::/64")).unwrap());
    assert_eq!(workload.connect_tcp(server).unwrap(), Outcome::Ok);
    assert!(listener.next_event(ARRIVAL).is_some());
}

#[test]
fn an_ipv4_mapped_ipv6_connect_to_a_denied_ipv4_address_is_refused() {
    let (net, cgroup, mut dataplane) = setup();
    let server_v4 = SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), PORT);
    let listener = Listener::start(&net.server, server_v4, Proto::Tcp).expect("listener");
    // An AF_INET6 socket connecting to ::ffff:10.200.0.2 sends IPv4 packets
    // and never runs the connect4 hook.
    let mapped = SocketAddr::new(IpAddr::V6(TestNet::SERVER_V4.to_ipv6_mapped()), PORT);
    let workload = Client::inside(&net.client, &cgroup);

    assert_eq!(workload.connect_tcp(mapped).unwrap(), Outcome::Ok);
    let event = listener
        .next_event(ARRIVAL)
        .expect("the mapped connection arrives");
    assert_eq!(event.peer().ip(), IpAddr::V4(TestNet::CLIENT_V4));

    dataplane
        .deny(prefix("10.200.0.2/32"), DenyRule::new(3))
        .unwrap();

    // EPERM, not a timeout: refused by connect6 itself, before any SYN
    // (a drop by cgroup_skb alone would leave TCP retrying).
    assert_eq!(workload.connect_tcp(mapped).unwrap(), Outcome::Eperm);
    assert!(listener.next_event(Duration::from_millis(300)).is_none());
    let counters = dataplane.counters().unwrap();
    assert_eq!(counters.get(Counter::Connect6MappedDenied), 1);
    assert_eq!(counters.get(Counter::Connect4Denied), 0);
}

#[test]
fn denying_one_address_leaves_its_neighbour_in_the_same_subnet_reachable() {
    let (net, cgroup, mut dataplane) = setup();
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT);
    let listener = Listener::start(&net.server, any, Proto::Tcp).expect("listener");
    let workload = Client::inside(&net.client, &cgroup);
    let denied = SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4_NEIGHBOUR), PORT);
    let allowed = SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), PORT);

    dataplane
        .deny(prefix("10.200.0.3/32"), DenyRule::new(4))
        .unwrap();

    assert_eq!(workload.connect_tcp(denied).unwrap(), Outcome::Eperm);
    assert_eq!(workload.connect_tcp(allowed).unwrap(), Outcome::Ok);
    assert!(listener.next_event(ARRIVAL).is_some());
}
