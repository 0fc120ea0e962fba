//! Scenarios: which processes a workload's policy governs. The programs
//! are attached once at the root and find a socket's workload by walking
//! its ancestor cgroups, deepest first.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use egress_agent::dataplane::{Hook, Reason, VerdictKind};
use integration_tests::{Client, Enforced, Listener, Outcome, Proto, TestNet};

const ARRIVAL: Duration = Duration::from_secs(2);
const SILENCE: Duration = Duration::from_millis(300);

/// `prod/client` may only reach port 7030; `prod/job`, nested inside the
/// client's cgroup, may only reach port 7031.
const POLICY: &str = r#"
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {cgroup: $ROOT/prod/client}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: job, namespace: prod, labels: {app: job}}
spec: {cgroup: $ROOT/prod/client/job}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 7030}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: job, namespace: prod}
spec:
  podSelector: {matchLabels: {app: job}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 7031}]
"#;

fn at(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port)
}

fn listeners(s: &Enforced) -> (Listener, Listener) {
    let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    (
        Listener::start(&s.net.server, any(7030), Proto::Tcp).unwrap(),
        Listener::start(&s.net.server, any(7031), Proto::Tcp).unwrap(),
    )
}

#[test]
fn a_process_that_moves_into_a_child_cgroup_of_its_workload_is_still_enforced() {
    let mut s = Enforced::new(POLICY).unwrap();
    let (allowed, denied) = listeners(&s);
    // Two levels below the workload: a level no workload lives at.
    let escaped = s.client("prod/client").escaping_into("escape/deeper");

    assert_eq!(escaped.connect_tcp(at(7031)).unwrap(), Outcome::Eperm);
    assert_eq!(escaped.sendto(at(7031)).unwrap(), Outcome::Eperm);
    assert_eq!(escaped.connect_tcp(at(7030)).unwrap(), Outcome::Ok);
    assert!(allowed.next_event(ARRIVAL).is_some());
    assert_eq!(denied.next_event(SILENCE), None);

    // Counted against the workload whose cgroup is the ancestor.
    let counters = s.dataplane().counters().unwrap();
    let client = s.cgroup_id("prod/client");
    let denied_hits = counters.hits_of(
        client,
        VerdictKind::new(Hook::Connect4, Reason::DefaultDeny),
    );
    assert_eq!(denied_hits, [(None, 1)].into());
}

#[test]
fn a_nested_workload_is_decided_by_its_own_policy_not_by_its_parents() {
    let s = Enforced::new(POLICY).unwrap();
    let (client_port, job_port) = listeners(&s);
    let job = s.client("prod/job");

    assert_eq!(job.connect_tcp(at(7031)).unwrap(), Outcome::Ok);
    assert!(job_port.next_event(ARRIVAL).is_some());
    assert_eq!(job.connect_tcp(at(7030)).unwrap(), Outcome::Eperm);
    assert_eq!(client_port.next_event(SILENCE), None);
}

#[test]
fn unmanaged_cgroups_below_the_root_and_processes_outside_it_are_unaffected() {
    let mut s = Enforced::new(POLICY).unwrap();
    let (_, denied) = listeners(&s);
    let unmanaged = s.unmanaged_client("bystander").unwrap();
    let outside = Client::outside(&s.net.client);

    assert_eq!(unmanaged.connect_tcp(at(7031)).unwrap(), Outcome::Ok);
    assert!(denied.next_event(ARRIVAL).is_some());
    assert_eq!(unmanaged.sendto(at(7031)).unwrap(), Outcome::Ok);
    assert_eq!(outside.connect_tcp(at(7031)).unwrap(), Outcome::Ok);
    assert!(denied.next_event(ARRIVAL).is_some());

    // The programs ran for the unmanaged cgroup (below the root) and
    // counted it; the process outside the root never reached them.
    let counters = s.dataplane().counters().unwrap();
    assert_eq!(counters.enforced(Hook::Connect4, Reason::Unmanaged), 1);
    assert_eq!(counters.enforced(Hook::Sendmsg4, Reason::Unmanaged), 1);
    assert!(counters.enforced(Hook::Skb, Reason::Unmanaged) >= 2);
    assert_eq!(counters.total(Reason::DefaultDeny), 0);
    assert!(
        counters.hits().is_empty(),
        "unmanaged traffic has no workload: {:?}",
        counters.hits()
    );
}
