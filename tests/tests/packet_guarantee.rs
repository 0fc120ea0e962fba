//! Scenarios: the packet-level guarantee. `cgroup_skb/egress` decides every
//! packet, so a socket that bypassed the `connect`/`sendmsg` hooks (it was
//! connected before the policy existed) still cannot deliver anything.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use egress_agent::dataplane::{Hook, Reason};
use integration_tests::{Enforced, Event, Listener, Outcome, Proto, Resolved, TestNet};

const ARRIVAL: Duration = Duration::from_secs(2);
/// How long a listener must stay silent to count as "never received".
const SILENCE: Duration = Duration::from_millis(700);

const WORKLOAD: &str = r#"
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {cgroup: $ROOT/prod/client}
"#;

/// Isolates `prod/client` with no rule: everything is denied.
const DENY_ALL: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
"#;

fn deny_all() -> String {
    format!("{WORKLOAD}{DENY_ALL}")
}

/// Connects while the workload is unrestricted, then applies deny-all and
/// sends again on the same socket.
fn connected_before_the_policy(server: IpAddr, proto: Proto) {
    let mut s = Enforced::new(WORKLOAD).unwrap();
    let addr = SocketAddr::new(server, 7010);
    let listener = Listener::start(&s.net.server, addr, proto).unwrap();
    let mut held = s.client("prod/client").hold(addr, proto).unwrap();
    assert_eq!(held.send().unwrap(), Outcome::Ok);
    // TCP: ACCEPTED, then DATA; UDP: RECEIVED.
    let data = std::iter::from_fn(|| listener.next_event(ARRIVAL))
        .take(2)
        .any(|e| matches!(e, Event::Data(_) | Event::Received(_)));
    assert!(data, "before the policy, data arrives");

    s.apply(&deny_all(), &Resolved::new(), false).unwrap();

    for _ in 0..3 {
        let outcome = held.send().unwrap();
        match proto {
            // The segment is queued and every (re)transmission dropped.
            Proto::Tcp => assert_eq!(outcome, Outcome::Ok),
            // A dropped datagram is reported to the sender.
            Proto::Udp => assert_eq!(outcome, Outcome::Eperm),
        }
    }
    assert_eq!(
        listener.next_event(SILENCE),
        None,
        "nothing sent after the policy reaches the listener"
    );
    let counters = s.dataplane().counters().unwrap();
    assert!(
        counters.enforced(Hook::Skb, Reason::DefaultDeny) >= 3,
        "{counters:?}"
    );
    for hook in [
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
    ] {
        assert_eq!(
            counters.enforced(hook, Reason::DefaultDeny),
            0,
            "{hook:?} never ran"
        );
    }
}

#[test]
fn a_tcp_connection_made_before_the_policy_delivers_nothing_after_it_ipv4() {
    connected_before_the_policy(TestNet::SERVER_V4.into(), Proto::Tcp);
}

#[test]
fn a_tcp_connection_made_before_the_policy_delivers_nothing_after_it_ipv6() {
    connected_before_the_policy(TestNet::SERVER_V6.into(), Proto::Tcp);
}

#[test]
fn a_connected_udp_socket_made_before_the_policy_gets_eperm_and_delivers_nothing() {
    connected_before_the_policy(TestNet::SERVER_V4.into(), Proto::Udp);
    connected_before_the_policy(TestNet::SERVER_V6.into(), Proto::Udp);
}
