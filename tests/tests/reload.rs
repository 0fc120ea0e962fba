//! Scenario: reloading the policy never opens a gap. Connections run in a
//! loop while the policy is applied again and again, alternating two
//! different images that both allow one destination and deny another.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use egress_agent::dataplane::{Hook, Reason};
use integration_tests::{Enforced, Listener, Proto, RepeatOp, Resolved, TestNet};

const RELOADS: usize = 50;
/// Bulk prefixes per image, so that an apply takes a while.
const BULK: usize = 2000;

const WORKLOAD: &str = r#"
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {cgroup: $ROOT/prod/client}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
"#;

/// `count` host routes in `second_octet`, on port 80.
fn bulk_rule(second_octet: u8, count: usize) -> String {
    let mut rule = String::from("  - ports: [{port: 80}]\n    to:\n");
    for i in 0..count {
        let _ = writeln!(
            rule,
            "    - ipBlock: {{cidr: 172.{second_octet}.{}.{}/32}}",
            i / 250,
            i % 250 + 1
        );
    }
    rule
}

/// Both allow 10.200.0.2:7040 and deny 10.200.0.2:7041, through different
/// rules, prefixes, sets and ids.
fn image_a() -> String {
    format!(
        "{WORKLOAD}  - ports: [{{port: 7040}}]\n    to: [{{ipBlock: {{cidr: 10.200.0.2/32}}}}]\n{}",
        bulk_rule(16, BULK)
    )
}

fn image_b() -> String {
    format!(
        "{WORKLOAD}{}  - ports: [{{port: 7040, endPort: 7040}}, {{port: 9, protocol: UDP}}]\n    to: [{{ipBlock: {{cidr: 10.200.0.0/24, except: [10.200.0.3/32]}}}}]\n",
        bulk_rule(17, BULK)
    )
}

#[test]
fn fifty_reloads_never_fail_an_allowed_connect_nor_let_a_denied_one_through() {
    let (a, b) = (image_a(), image_b());
    let mut s = Enforced::new(&a).unwrap();
    let server = |port| SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port);
    let _allowed_listener = Listener::start(&s.net.server, server(7040), Proto::Tcp).unwrap();
    let denied_listener = Listener::start(&s.net.server, server(7041), Proto::Tcp).unwrap();
    let denied_udp_listener = Listener::start(&s.net.server, server(7041), Proto::Udp).unwrap();
    let client = s.client("prod/client");
    let allowed = client
        .repeat(RepeatOp::Connect, server(7040), Proto::Tcp)
        .unwrap();
    let denied = client
        .repeat(RepeatOp::Connect, server(7041), Proto::Tcp)
        .unwrap();
    let denied_udp = client
        .repeat(RepeatOp::Sendto, server(7041), Proto::Udp)
        .unwrap();
    allowed.wait_for(5, Duration::from_secs(5));
    denied.wait_for(5, Duration::from_secs(5));

    let images = [
        s.image(&a, &Resolved::new(), false).unwrap().1,
        s.image(&b, &Resolved::new(), false).unwrap().1,
    ];
    let mut stats = Vec::with_capacity(RELOADS);
    for i in 0..RELOADS {
        stats.push(s.dataplane().apply(&images[(i + 1) % 2]).unwrap());
    }
    // A few more attempts under the last generation.
    let settled = allowed.tally().total() + 5;
    allowed.wait_for(settled, Duration::from_secs(5));

    let (allowed, denied, denied_udp) = (allowed.stop(), denied.stop(), denied_udp.stop());
    let total: Duration = stats.iter().map(|s| s.total).sum();
    println!(
        "{RELOADS} reloads of {} prefixes: {:?} on average (write {:?}, grace {:?}, cleanup {:?}); {} allowed, {} denied, {} denied datagrams attempted",
        images[0].size().allow,
        total / RELOADS as u32,
        stats.iter().map(|s| s.write).sum::<Duration>() / RELOADS as u32,
        stats.iter().map(|s| s.grace).sum::<Duration>() / RELOADS as u32,
        stats.iter().map(|s| s.cleanup).sum::<Duration>() / RELOADS as u32,
        allowed.total(),
        denied.total(),
        denied_udp.total(),
    );
    assert!(allowed.ok >= 20, "the allowed loop ran: {allowed:?}");
    assert_eq!(
        (allowed.eperm, &allowed.other),
        (0, &Vec::new()),
        "an allowed connect failed"
    );
    assert!(denied.eperm >= 20, "the denied loop ran: {denied:?}");
    assert_eq!(
        (denied.ok, &denied.other),
        (0, &Vec::new()),
        "a denied connect was not refused"
    );
    assert_eq!(
        denied_udp.ok, 0,
        "a denied datagram was sent: {denied_udp:?}"
    );
    assert_eq!(denied_listener.next_event(Duration::ZERO), None);
    assert_eq!(denied_udp_listener.next_event(Duration::ZERO), None);

    let counters = s.dataplane().counters().unwrap();
    assert_eq!(
        counters.enforced(Hook::Skb, Reason::DefaultDeny),
        0,
        "no packet of an allowed connection was ever dropped"
    );
    assert_eq!(counters.total(Reason::NoPolicy), 0);
    assert_eq!(
        counters.total(Reason::Unmanaged),
        0,
        "the workload was never unmanaged"
    );

    // Nothing of the 49 earlier generations is left.
    let last = &images[RELOADS % 2];
    let size = last.size();
    let counts = s.dataplane().entry_counts().unwrap();
    assert_eq!(counts.allow, size.allow);
    assert_eq!(counts.port_sets, size.port_sets);
    assert_eq!(counts.policies, size.policies);
    assert_eq!(counts.workloads, size.workloads);
}
