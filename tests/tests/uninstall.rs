//! Scenarios: `uninstall` takes out exactly what the agent put in: its
//! links (so its programs detach and unload) and its pinned maps, and
//! nothing of anyone else's.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use egress_agent::dataplane::Dataplane;
use egress_common::map;
use integration_tests::bpftool::{attached_ids, program_exists};
use integration_tests::policies::isolated_client;
use integration_tests::{Enforced, Listener, Outcome, PinDir, Proto, TestNet};

const ARRIVAL: Duration = Duration::from_secs(2);

/// `prod/client` may reach port 7070 only.
fn policy() -> String {
    isolated_client("  - ports: [{port: 7070}]\n")
}

fn server(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port)
}

#[test]
fn uninstall_detaches_and_unloads_the_programs_removes_the_maps_and_is_idempotent() {
    let mut s = Enforced::new(&policy()).unwrap();
    let listener = Listener::start(
        &s.net.server,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7071),
        Proto::Tcp,
    )
    .unwrap();
    let programs: Vec<u32> = s
        .dataplane_ref()
        .links()
        .iter()
        .map(|l| l.program_id)
        .collect();
    let mut attached = attached_ids(s.root.path());
    attached.sort_unstable();
    let mut expected = programs.clone();
    expected.sort_unstable();
    assert_eq!(
        attached, expected,
        "bpftool sees our five programs on the root"
    );
    assert_eq!(
        s.client("prod/client").connect_tcp(server(7071)).unwrap(),
        Outcome::Eperm
    );

    s.close();
    let report = Dataplane::uninstall(s.pin_dir()).unwrap();
    assert_eq!(
        report.links.len(),
        egress_agent::dataplane::supported_hooks().len(),
        "one link per program: {report:?}"
    );
    assert_eq!(report.maps.len(), map::ALL.len(), "every map: {report:?}");
    assert_eq!(report.directories.len(), 3, "{report:?}");
    assert!(report.kept.is_empty());
    assert!(!s.pin_dir().exists(), "the bpffs directory is gone");
    assert!(
        attached_ids(s.root.path()).is_empty(),
        "nothing attached to the root any more"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while programs.iter().any(|id| program_exists(*id)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    for id in &programs {
        assert!(!program_exists(*id), "program {id} is unloaded");
    }
    assert_eq!(
        s.client("prod/client").connect_tcp(server(7071)).unwrap(),
        Outcome::Ok
    );
    assert!(listener.next_event(ARRIVAL).is_some());

    let again = Dataplane::uninstall(s.pin_dir()).unwrap();
    assert!(
        again.is_empty(),
        "a second uninstall has nothing to do: {again:?}"
    );
}

#[test]
fn uninstalling_one_data_plane_leaves_another_on_the_same_cgroup_and_foreign_pins_alone() {
    let mut s = Enforced::new(&policy()).unwrap();
    // A second, unrelated data plane on the same root, with the same policy.
    let other_pins = PinDir::new().unwrap();
    let mut other = Dataplane::open(other_pins.path(), s.root.path()).unwrap();
    other.apply(&s.image).unwrap();
    let other_programs: Vec<u32> = other.links().iter().map(|l| l.program_id).collect();
    // Something else pinned a directory inside ours.
    let foreign = s.pin_dir().join("links").join("someone-elses");
    fs::create_dir(&foreign).unwrap();

    s.close();
    let report = Dataplane::uninstall(s.pin_dir()).unwrap();
    assert_eq!(
        report.links.len(),
        egress_agent::dataplane::supported_hooks().len()
    );
    assert_eq!(report.kept, std::slice::from_ref(&foreign));
    assert!(
        foreign.exists(),
        "left alone, with the directories holding it"
    );

    let mut attached = attached_ids(s.root.path());
    attached.sort_unstable();
    let mut expected = other_programs.clone();
    expected.sort_unstable();
    assert_eq!(
        attached, expected,
        "only the other data plane's programs remain"
    );
    assert_eq!(
        s.client("prod/client").connect_tcp(server(7071)).unwrap(),
        Outcome::Eperm,
        "the other data plane still enforces"
    );
    fs::remove_dir(&foreign).unwrap();
}
