//! Scenario: a workload allowed to 1,000,000 CIDRs, with the allow tries
//! sized for it (`run --max-cidrs`): two generations of a million
//! prefixes each are in the maps at once while a change is applied. Real
//! connects prove the last CIDR of the million allowed and an address
//! outside them denied, before and after a one-CIDR change; a data plane
//! asked for another size than the pinned maps have is refused.
//!
//! Slow in a debug build (about 5 minutes on 2 shared cores, nearly all of
//! it parsing and compiling the 40 MB of YAML twice), so it is a file of
//! its own: `cargo test -p integration-tests --test scale_1m`.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use egress_agent::dataplane::{Capacities, DataplaneError, MAX_CIDRS_FLAG};
use integration_tests::policies::isolated_client;
use integration_tests::{Enforced, Listener, Outcome, Proto, Resolved, TestNet};

const CIDRS: usize = 1_000_000;

/// Room for two generations of the policy, and then some.
const CAPACITY: u32 = 1 << 22;

/// `prod/client` may reach port 7090 on 999,999 /32s in 172.16.0.0/12,
/// plus `last`.
fn policy(last: &str) -> String {
    let mut yaml = isolated_client("  - ports: [{port: 7090}]\n    to:\n");
    yaml.reserve(CIDRS * 40);
    for i in 0..CIDRS - 1 {
        let a = u32::from(Ipv4Addr::new(172, 16, 0, 0)) + u32::try_from(i).unwrap();
        let _ = writeln!(yaml, "    - ipBlock: {{cidr: {}/32}}", Ipv4Addr::from(a));
    }
    let _ = writeln!(yaml, "    - ipBlock: {{cidr: {last}}}");
    yaml
}

#[test]
fn a_million_cidrs_apply_and_a_change_to_them_takes_effect() {
    let server = |port| SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port);
    // Outside every CIDR of the policy; the connect hook decides before
    // any route is looked at.
    let outside = SocketAddr::from(([192, 0, 2, 9], 7090));
    let mut s = Enforced::sized(
        &isolated_client(""),
        &Resolved::new(),
        false,
        Capacities { allow: CAPACITY },
    )
    .unwrap();
    let listener = Listener::start(&s.net.server, server(7090), Proto::Tcp).unwrap();

    // The server last: the lookup must find the millionth prefix.
    let start = Instant::now();
    let (_, image) = s
        .image(&policy("10.200.0.2/32"), &Resolved::new(), false)
        .unwrap();
    let built = start.elapsed();
    let first = s.dataplane().apply(&image).unwrap();
    println!("1M CIDRs: YAML→image {built:?}, apply {:?}", first.total);
    assert_eq!(first.allow_entries, CIDRS);
    let client = s.client("prod/client");
    assert_eq!(client.connect_tcp(server(7090)).unwrap(), Outcome::Ok);
    assert!(listener.next_event(Duration::from_secs(2)).is_some());
    assert_eq!(client.connect_tcp(outside).unwrap(), Outcome::Eperm);

    // One CIDR changed: the server out, 192.0.2.9 in. Both generations
    // are in the maps until the flip.
    let start = Instant::now();
    let (_, image) = s
        .image(&policy("192.0.2.9/32"), &Resolved::new(), false)
        .unwrap();
    let built = start.elapsed();
    let second = s.dataplane().apply(&image).unwrap();
    println!(
        "1M CIDRs, one changed: YAML→image {built:?}, apply {:?}",
        second.total
    );
    assert_eq!(s.dataplane().entry_counts().unwrap().allow, CIDRS);
    let client = s.client("prod/client");
    assert_eq!(client.connect_tcp(server(7090)).unwrap(), Outcome::Eperm);
    assert_ne!(client.connect_tcp(outside).unwrap(), Outcome::Eperm);

    // An agent asked for the default size adopts nothing: the pinned tries
    // keep theirs, and the error says which flag and both sizes.
    s.close();
    s.capacities = Capacities::default();
    let Err(err) = s.open() else {
        panic!("pinned tries of {CAPACITY} entries adopted as the default size");
    };
    match err.downcast_ref::<DataplaneError>() {
        Some(DataplaneError::CapacityMismatch {
            flag,
            pinned,
            asked,
            ..
        }) => assert_eq!(
            (*flag, *pinned, *asked),
            (MAX_CIDRS_FLAG, CAPACITY, Capacities::default().allow)
        ),
        _ => panic!("{err:#}"),
    }
    // The programs kept running on the pinned maps meanwhile.
    assert_eq!(
        s.client("prod/client").connect_tcp(server(7090)).unwrap(),
        Outcome::Eperm
    );
    s.capacities = Capacities { allow: CAPACITY };
    s.open().unwrap();
}

/// A policy that does not fit fails with the map, its capacity and the
/// flag named, and the generation in force stays.
#[test]
fn a_policy_larger_than_the_tries_is_refused_and_the_one_in_force_stays() {
    let server = |port| SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port);
    let small = |cidrs: &[&str]| {
        let mut rules = String::from("  - ports: [{port: 7090}]\n    to:\n");
        for c in cidrs {
            let _ = writeln!(rules, "    - ipBlock: {{cidr: {c}}}");
        }
        isolated_client(&rules)
    };
    let mut s = Enforced::sized(
        &small(&["10.200.0.2/32"]),
        &Resolved::new(),
        false,
        Capacities { allow: 4 },
    )
    .unwrap();
    let _listener = Listener::start(&s.net.server, server(7090), Proto::Tcp).unwrap();
    assert_eq!(
        s.client("prod/client").connect_tcp(server(7090)).unwrap(),
        Outcome::Ok
    );
    // One prefix in force, four asked for: five do not fit in four.
    let (_, image) = s
        .image(
            &small(&["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16"]),
            &Resolved::new(),
            false,
        )
        .unwrap();
    let err = s.dataplane().apply(&image).unwrap_err();
    assert!(
        matches!(
            err,
            DataplaneError::MapFull {
                capacity: 4,
                flag: MAX_CIDRS_FLAG,
                ..
            }
        ),
        "{err:#}"
    );
    assert!(err.to_string().contains("ALLOW_V4"), "{err}");
    assert_eq!(
        s.client("prod/client").connect_tcp(server(7090)).unwrap(),
        Outcome::Ok
    );
    assert_eq!(s.dataplane().entry_counts().unwrap().allow, 1);
}
