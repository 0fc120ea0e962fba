//! Scenarios: egress gateway exclusivity. Once an EgressGateway exists,
//! only gateway workloads may leave the cluster CIDRs, whatever
//! NetworkPolicies allow; a REGISTRY_ONLY gateway only to its allowed hosts
//! and ports.
//!
//! The "cluster" is 10.200.0.0/29 and fd00:200::/120 (the server's usual
//! addresses); the "internet" is addresses added to the server namespace
//! outside them.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use egress_agent::dataplane::{Hook, Reason, VerdictKind};
use integration_tests::{Enforced, Listener, Outcome, Proto, Resolved, TestNet};

const ARRIVAL: Duration = Duration::from_secs(2);
const SILENCE: Duration = Duration::from_millis(300);

const INTERNET: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 9);
const INTERNET_OTHER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
const INTERNET6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 1, 9);

const POLICY: &str = r#"
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
metadata: {name: gw-any, namespace: egress, labels: {gateway: any}}
spec: {cgroup: $ROOT/egress/gw-any}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: gw-registry, namespace: egress, labels: {gateway: registry}}
spec: {cgroup: $ROOT/egress/gw-registry}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: anywhere, namespace: apps}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}, {ipBlock: {cidr: "::/0"}}]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {name: any, namespace: egress}
spec:
  selector: {podSelector: {matchLabels: {gateway: any}}}
  clusterCIDRs: [10.200.0.0/29, "fd00:200::/120"]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {name: registry, namespace: egress}
spec:
  selector: {podSelector: {matchLabels: {gateway: registry}}}
  clusterCIDRs: [10.200.0.0/29, "fd00:200::/120"]
  allowedHosts:
  - host: registry.test
    ports: [7020]
  - host: 10.200.0.10
    ports: [{port: 7021, protocol: UDP}]
"#;

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// The scenario, with the internet addresses on the server and
/// `registry.test` resolved to [`INTERNET`].
fn setup() -> Enforced {
    let resolved: Resolved = [("registry.test".to_owned(), vec![IpAddr::V4(INTERNET)])].into();
    let s = Enforced::with(POLICY, &resolved, false).unwrap();
    for addr in [INTERNET, INTERNET_OTHER] {
        s.net
            .server
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])
            .unwrap();
    }
    s.net
        .server
        .ip(&[
            "-6",
            "addr",
            "add",
            &format!("{INTERNET6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])
        .unwrap();
    s
}

#[test]
fn a_workload_that_is_not_a_gateway_cannot_reach_the_internet_even_if_a_networkpolicy_allows_it() {
    let mut s = setup();
    let any4 = Listener::start(&s.net.server, at(Ipv4Addr::UNSPECIFIED, 7020), Proto::Tcp).unwrap();
    let internet6 = Listener::start(&s.net.server, at(INTERNET6, 7020), Proto::Tcp).unwrap();
    let app = s.client("apps/app");

    // Inside the cluster: the NetworkPolicy allows it.
    assert_eq!(
        app.connect_tcp(at(TestNet::SERVER_V4, 7020)).unwrap(),
        Outcome::Ok
    );
    assert!(any4.next_event(ARRIVAL).is_some());
    // Outside: gateway exclusivity, before NetworkPolicy.
    assert_eq!(app.connect_tcp(at(INTERNET, 7020)).unwrap(), Outcome::Eperm);
    assert_eq!(
        app.connect_tcp(at(INTERNET6, 7020)).unwrap(),
        Outcome::Eperm
    );
    assert_eq!(app.sendto(at(INTERNET, 7020)).unwrap(), Outcome::Eperm);
    assert_eq!(
        app.connect_tcp(at(INTERNET.to_ipv6_mapped(), 7020))
            .unwrap(),
        Outcome::Eperm
    );
    assert_eq!(any4.next_event(SILENCE), None);
    assert_eq!(internet6.next_event(Duration::ZERO), None);

    let counters = s.dataplane().counters().unwrap();
    assert_eq!(
        counters.enforced(Hook::Connect4, Reason::GatewayExclusivity),
        1
    );
    assert_eq!(
        counters.enforced(Hook::Connect6, Reason::GatewayExclusivity),
        2
    );
    assert_eq!(
        counters.enforced(Hook::Sendmsg4, Reason::GatewayExclusivity),
        1
    );
}

#[test]
fn the_allow_any_gateway_reaches_the_internet() {
    let s = setup();
    let internet = Listener::start(&s.net.server, at(INTERNET, 7020), Proto::Tcp).unwrap();
    let internet6 = Listener::start(&s.net.server, at(INTERNET6, 7020), Proto::Tcp).unwrap();
    let gw = s.client("egress/gw-any");

    assert_eq!(gw.connect_tcp(at(INTERNET, 7020)).unwrap(), Outcome::Ok);
    assert!(internet.next_event(ARRIVAL).is_some());
    assert_eq!(gw.connect_tcp(at(INTERNET6, 7020)).unwrap(), Outcome::Ok);
    assert!(internet6.next_event(ARRIVAL).is_some());
    assert_eq!(
        gw.connect_tcp(at(INTERNET_OTHER, 7999)).unwrap(),
        Outcome::Refused,
        "reached; nothing listens"
    );
}

#[test]
fn a_registry_only_gateway_reaches_only_its_allowed_hosts_and_ports() {
    let mut s = setup();
    let registry = Listener::start(&s.net.server, at(INTERNET, 7020), Proto::Tcp).unwrap();
    let other_port = Listener::start(&s.net.server, at(INTERNET, 7021), Proto::Tcp).unwrap();
    let other_host = Listener::start(&s.net.server, at(INTERNET_OTHER, 7020), Proto::Tcp).unwrap();
    let udp_host = Listener::start(&s.net.server, at(INTERNET_OTHER, 7021), Proto::Udp).unwrap();
    let inside = Listener::start(&s.net.server, at(TestNet::SERVER_V4, 7022), Proto::Tcp).unwrap();
    let gw = s.client("egress/gw-registry");

    // registry.test resolves to INTERNET, port 7020 (TCP).
    assert_eq!(gw.connect_tcp(at(INTERNET, 7020)).unwrap(), Outcome::Ok);
    assert!(registry.next_event(ARRIVAL).is_some());
    // 10.200.0.10 is allowed on UDP 7021 only.
    assert_eq!(gw.sendto(at(INTERNET_OTHER, 7021)).unwrap(), Outcome::Ok);
    assert!(udp_host.next_event(ARRIVAL).is_some());
    // Anything else outside the cluster is refused.
    assert_eq!(gw.connect_tcp(at(INTERNET, 7021)).unwrap(), Outcome::Eperm);
    assert_eq!(
        gw.connect_tcp(at(INTERNET_OTHER, 7020)).unwrap(),
        Outcome::Eperm
    );
    assert_eq!(gw.connect_tcp(at(INTERNET6, 7020)).unwrap(), Outcome::Eperm);
    assert_eq!(other_port.next_event(SILENCE), None);
    assert_eq!(other_host.next_event(Duration::ZERO), None);
    // Inside the cluster the allow-list does not apply.
    assert_eq!(
        gw.connect_tcp(at(TestNet::SERVER_V4, 7022)).unwrap(),
        Outcome::Ok
    );
    assert!(inside.next_event(ARRIVAL).is_some());

    let counters = s.dataplane().counters().unwrap();
    assert_eq!(
        counters.enforced(Hook::Connect4, Reason::GatewayAllowList),
        2
    );
    assert_eq!(
        counters.enforced(Hook::Connect6, Reason::GatewayAllowList),
        1
    );
    // Each allowed host is counted under its index.
    let hosts = s.image.gateway_hosts();
    let cgroup = s.cgroup_id("egress/gw-registry");
    let by_host = |hook| counters.hits_of(cgroup, VerdictKind::new(hook, Reason::GatewayHost));
    let registry_index = hosts
        .iter()
        .position(|h| h.host == "registry.test")
        .unwrap() as u32;
    let udp_index = hosts
        .iter()
        .position(|h| h.host == "10.200.0.10/32")
        .unwrap() as u32;
    assert_eq!(by_host(Hook::Connect4), [(Some(registry_index), 1)].into());
    assert_eq!(by_host(Hook::Sendmsg4), [(Some(udp_index), 1)].into());
}

/// A gateway whose allow-list is Istio's ServiceEntries: one exported to
/// every namespace (`registry.test` on 7020), one kept to its own namespace
/// (`.`), which the gateway must not get.
const FROM_SERVICE_ENTRIES: &str = r#"
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: gw-entries, namespace: egress, labels: {gateway: entries}}
spec: {cgroup: $ROOT/egress/gw-entries}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {name: entries, namespace: egress}
spec:
  selector: {podSelector: {matchLabels: {gateway: entries}}}
  clusterCIDRs: [10.200.0.0/29, "fd00:200::/120"]
  allowedHosts: fromServiceEntries
"#;

const SERVICE_ENTRIES: &str = r#"
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: registry, namespace: apps}
spec:
  hosts: [registry.test]
  ports: [{number: 7020, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: private, namespace: apps}
spec:
  hosts: [private.test]
  ports: [{number: 7021, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.200.0.10}]
  resolution: STATIC
  exportTo: ["."]
"#;

#[test]
fn a_gateway_from_service_entries_reaches_what_the_visible_entries_list() {
    let mut s = setup();
    let resolved: Resolved = [("registry.test".to_owned(), vec![IpAddr::V4(INTERNET)])].into();
    let with_entries = format!("{POLICY}{FROM_SERVICE_ENTRIES}{SERVICE_ENTRIES}");
    s.apply(&with_entries, &resolved, false).unwrap();
    let registry = Listener::start(&s.net.server, at(INTERNET, 7020), Proto::Tcp).unwrap();
    let private = Listener::start(&s.net.server, at(INTERNET_OTHER, 7021), Proto::Tcp).unwrap();
    let gw = s.client("egress/gw-entries");
    assert_eq!(gw.connect_tcp(at(INTERNET, 7020)).unwrap(), Outcome::Ok);
    assert!(registry.next_event(ARRIVAL).is_some());
    // Not exported to the gateway's namespace: not allowed.
    assert_eq!(
        gw.connect_tcp(at(INTERNET_OTHER, 7021)).unwrap(),
        Outcome::Eperm
    );
    assert_eq!(private.next_event(SILENCE), None);

    // The entry deleted: the gateway loses the host.
    s.apply(&format!("{POLICY}{FROM_SERVICE_ENTRIES}"), &resolved, false)
        .unwrap();
    let gw = s.client("egress/gw-entries");
    assert_eq!(gw.connect_tcp(at(INTERNET, 7020)).unwrap(), Outcome::Eperm);
    assert_eq!(registry.next_event(SILENCE), None);
}
