//! Scenarios: what the data plane reports. Audit mode lets would-deny
//! traffic through and counts it as audit; the counters say, per hook and
//! reason, and per workload and rule, what was decided.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use egress_agent::{
    compile::RuleRef,
    dataplane::{Hook, Reason, VerdictKind},
};
use egress_policy::model::ObjectId;
use integration_tests::policies::isolated_client;
use integration_tests::{Enforced, Listener, Outcome, Proto, Resolved, TestNet};

const ARRIVAL: Duration = Duration::from_secs(2);

/// `prod/client` may reach port 7060 (rule 0) and UDP 7061 (rule 1).
fn policy() -> String {
    isolated_client("  - ports: [{port: 7060}]\n  - ports: [{port: 7061, protocol: UDP}]\n")
}

fn server(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port)
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

#[test]
fn in_audit_mode_would_deny_traffic_passes_and_is_counted_as_audit() {
    let mut s = Enforced::with(&policy(), &Resolved::new(), true).unwrap();
    let denied_port = Listener::start(&s.net.server, any(7062), Proto::Tcp).unwrap();
    let denied_udp = Listener::start(&s.net.server, any(7062), Proto::Udp).unwrap();
    let client = s.client("prod/client");

    assert_eq!(client.connect_tcp(server(7062)).unwrap(), Outcome::Ok);
    assert!(
        denied_port.next_event(ARRIVAL).is_some(),
        "the would-deny connection arrives"
    );
    assert_eq!(client.sendto(server(7062)).unwrap(), Outcome::Ok);
    assert!(denied_udp.next_event(ARRIVAL).is_some());

    let counters = s.dataplane().counters().unwrap();
    assert_eq!(counters.audited(Hook::Connect4, Reason::DefaultDeny), 1);
    assert_eq!(counters.audited(Hook::Sendmsg4, Reason::DefaultDeny), 1);
    assert!(
        counters.audited(Hook::Skb, Reason::DefaultDeny) >= 2,
        "the packets too"
    );
    assert_eq!(counters.enforced(Hook::Connect4, Reason::DefaultDeny), 0);
    assert_eq!(counters.enforced(Hook::Skb, Reason::DefaultDeny), 0);
    let workload = s.cgroup_id("prod/client");
    let audited = counters.hits_of(
        workload,
        VerdictKind::audited(Hook::Connect4, Reason::DefaultDeny),
    );
    assert_eq!(audited, [(None, 1)].into());

    // Enforcing again is one apply away.
    s.apply(&policy(), &Resolved::new(), false).unwrap();
    let client = s.client("prod/client");
    assert_eq!(client.connect_tcp(server(7062)).unwrap(), Outcome::Eperm);
    assert_eq!(
        s.dataplane()
            .counters()
            .unwrap()
            .enforced(Hook::Connect4, Reason::DefaultDeny),
        1
    );
}

#[test]
fn counters_count_every_verdict_and_every_rule_hit_per_workload() {
    let mut s = Enforced::new(&policy()).unwrap();
    let tcp = Listener::start(&s.net.server, any(7060), Proto::Tcp).unwrap();
    let _udp = Listener::start(&s.net.server, any(7061), Proto::Udp).unwrap();
    let client = s.client("prod/client");
    for _ in 0..3 {
        assert_eq!(client.connect_tcp(server(7060)).unwrap(), Outcome::Ok);
        assert!(tcp.next_event(ARRIVAL).is_some());
    }
    for _ in 0..2 {
        assert_eq!(client.sendto(server(7061)).unwrap(), Outcome::Ok);
    }
    for port in [7062, 7063, 7064, 7065] {
        assert_eq!(client.connect_tcp(server(port)).unwrap(), Outcome::Eperm);
    }
    assert_eq!(
        client.sendto(server(7060)).unwrap(),
        Outcome::Eperm,
        "rule 0 is TCP only"
    );
    // Loopback is never filtered.
    assert_eq!(
        client
            .connect_tcp(SocketAddr::from(([127, 0, 0, 1], 7069)))
            .unwrap(),
        Outcome::Refused
    );

    let counters = s.dataplane().counters().unwrap();
    assert_eq!(counters.enforced(Hook::Connect4, Reason::Rule), 3);
    assert_eq!(counters.enforced(Hook::Sendmsg4, Reason::Rule), 2);
    assert_eq!(counters.enforced(Hook::Connect4, Reason::DefaultDeny), 4);
    assert_eq!(counters.enforced(Hook::Sendmsg4, Reason::DefaultDeny), 1);
    assert_eq!(counters.enforced(Hook::Connect4, Reason::Loopback), 1);
    assert_eq!(counters.enforced(Hook::Skb, Reason::DefaultDeny), 0);
    assert!(
        counters.enforced(Hook::Skb, Reason::Rule) >= 3 * 2 + 2,
        "SYN and ACK of each connection, and each datagram"
    );
    assert!(counters.enforced(Hook::Skb, Reason::Loopback) >= 1);

    // Per workload and rule: the rule ids are the image's.
    let rule = |index| {
        s.image.rule_id(&RuleRef {
            policy: ObjectId::new("prod", "client").into(),
            index,
        })
    };
    let workload = s.cgroup_id("prod/client");
    let hits = |hook, reason| counters.hits_of(workload, VerdictKind::new(hook, reason));
    assert_eq!(hits(Hook::Connect4, Reason::Rule), [(rule(0), 3)].into());
    assert_eq!(hits(Hook::Sendmsg4, Reason::Rule), [(rule(1), 2)].into());
    assert_eq!(
        hits(Hook::Connect4, Reason::DefaultDeny),
        [(None, 4)].into()
    );
    let packets = hits(Hook::Skb, Reason::Rule);
    assert_eq!(
        packets.keys().copied().collect::<Vec<_>>(),
        [rule(0), rule(1)]
    );
    assert!(counters.hits().iter().all(|h| h.cgroup_id == workload));
}
