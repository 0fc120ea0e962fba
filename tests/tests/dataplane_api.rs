//! Scenarios for the loader's own contract, against the real kernel.

use std::{net::IpAddr, path::Path};

use egress_agent::dataplane::{Dataplane, DataplaneError, DenyRule, Hook};
use integration_tests::{require_root, TestCgroup};

fn prefix(s: &str) -> ipnet::IpNet {
    s.parse().expect("valid prefix")
}

fn rule_for(dataplane: &Dataplane, addr: &str) -> Option<DenyRule> {
    let addr: IpAddr = addr.parse().expect("valid address");
    dataplane.deny_rule_for(addr).expect("lookup")
}

#[test]
fn deny_prefixes_are_stored_canonically_and_matched_by_longest_prefix() {
    require_root();
    let mut dataplane = Dataplane::load().expect("eBPF object loads and verifies");

    dataplane
        .deny(prefix("10.1.2.3/8"), DenyRule::new(1))
        .unwrap();
    dataplane
        .deny(prefix("10.1.0.0/16"), DenyRule::new(2))
        .unwrap();
    dataplane
        .deny(prefix("::ffff:192.0.2.0/120"), DenyRule::new(3))
        .unwrap();
    dataplane
        .deny(prefix("2001:db8::/32"), DenyRule::new(4))
        .unwrap();

    let mut denied = dataplane.denied().unwrap();
    denied.sort_by_key(|(prefix, _)| *prefix);
    assert_eq!(
        denied,
        vec![
            (prefix("10.0.0.0/8"), DenyRule::new(1)),
            (prefix("10.1.0.0/16"), DenyRule::new(2)),
            (prefix("192.0.2.0/24"), DenyRule::new(3)),
            (prefix("2001:db8::/32"), DenyRule::new(4)),
        ]
    );

    // The kernel's longest-prefix match, as the programs see it.
    assert_eq!(rule_for(&dataplane, "10.9.9.9"), Some(DenyRule::new(1)));
    assert_eq!(rule_for(&dataplane, "10.1.9.9"), Some(DenyRule::new(2)));
    assert_eq!(
        rule_for(&dataplane, "::ffff:192.0.2.7"),
        Some(DenyRule::new(3))
    );
    assert_eq!(rule_for(&dataplane, "2001:db8::1"), Some(DenyRule::new(4)));
    assert_eq!(rule_for(&dataplane, "11.0.0.1"), None);
    assert_eq!(rule_for(&dataplane, "2001:db9::1"), None);

    // Removal is exact, and says whether there was anything to remove.
    assert!(dataplane.remove_deny(prefix("10.1.0.0/16")).unwrap());
    assert!(!dataplane.remove_deny(prefix("10.1.0.0/16")).unwrap());
    assert_eq!(rule_for(&dataplane, "10.1.9.9"), Some(DenyRule::new(1)));
}

#[test]
fn attaching_to_a_directory_that_is_not_a_cgroup_is_refused_with_a_clear_error() {
    require_root();
    let mut dataplane = Dataplane::load().expect("eBPF object loads and verifies");
    let err = dataplane
        .attach(Path::new("/tmp"), Hook::Egress)
        .expect_err("/tmp is not a cgroup");
    assert!(
        matches!(err, DataplaneError::NotCgroup2 { .. }),
        "unexpected error: {err}"
    );
}

#[test]
fn each_hook_attaches_once_per_cgroup_and_detaches() {
    require_root();
    let cgroup = TestCgroup::new().expect("test cgroup");
    let mut dataplane = Dataplane::load().expect("eBPF object loads and verifies");
    dataplane.attach_all(cgroup.path()).unwrap();
    assert_eq!(dataplane.attachments().count(), 3);

    let again = dataplane.attach(cgroup.path(), Hook::Connect4);
    assert!(matches!(again, Err(DataplaneError::AlreadyAttached { .. })));

    dataplane.detach(cgroup.path(), Hook::Connect4).unwrap();
    let twice = dataplane.detach(cgroup.path(), Hook::Connect4);
    assert!(matches!(twice, Err(DataplaneError::NotAttached { .. })));
    assert_eq!(dataplane.attachments().count(), 2);
}
