//! Scenarios for the loader's own contract, against the real kernel: clear
//! errors for wrong inputs, and a new agent build replacing an old one's
//! links without a gap.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use egress_agent::dataplane::{Dataplane, DataplaneError};
use integration_tests::policies::isolated_client;
use integration_tests::{
    require_root, Enforced, Listener, Outcome, PinDir, Proto, RepeatOp, Repeater, Resolved,
    TestCgroup, TestNet,
};

fn policy() -> String {
    isolated_client("  - ports: [{port: 7080}]\n")
}

#[test]
fn opening_at_a_directory_that_is_not_a_cgroup_is_refused_with_a_clear_error() {
    require_root();
    let pins = PinDir::new().unwrap();
    let err = Dataplane::open(pins.path(), Path::new("/tmp"))
        .err()
        .expect("/tmp is not a cgroup");
    assert!(matches!(err, DataplaneError::NotCgroup2 { .. }), "{err}");
    assert!(!pins.path().exists(), "nothing was created");
}

#[test]
fn a_pin_directory_outside_bpffs_is_refused() {
    require_root();
    let root = TestCgroup::new().unwrap();
    let dir = std::env::temp_dir().join(format!("egress-test-not-bpffs-{}", std::process::id()));
    let err = Dataplane::open(&dir, root.path())
        .err()
        .expect("tmpfs is not bpffs");
    assert!(matches!(err, DataplaneError::NotBpffs { .. }), "{err}");
    assert!(!dir.exists(), "nothing was created");
}

#[test]
fn a_workload_outside_the_cgroup_root_is_refused_before_anything_is_written() {
    let mut s = Enforced::new(&policy()).unwrap();
    let before = s.dataplane().entry_counts().unwrap();
    let slot = s.dataplane().active_slot().unwrap();
    let outside = policy().replace("$ROOT/prod/client", "$ROOT-elsewhere/client");
    let err = s
        .apply(&outside, &Resolved::new(), false)
        .expect_err("refused");
    let err = err
        .downcast::<DataplaneError>()
        .expect("a data plane error");
    assert!(matches!(err, DataplaneError::OutsideRoot { .. }), "{err}");
    assert!(err.to_string().contains("prod/client"), "{err}");
    assert_eq!(s.dataplane().entry_counts().unwrap(), before);
    assert_eq!(s.dataplane().active_slot().unwrap(), slot);
    let _ = fs::remove_dir_all(s.mount().join(format!("{}-elsewhere", s.root.relative())));
}

#[test]
fn pinned_maps_with_another_layout_are_refused_not_reused() {
    require_root();
    let root = TestCgroup::new().unwrap();
    let pins = PinDir::new().unwrap();
    fs::create_dir_all(pins.path().join("maps")).unwrap();
    // An `ACTIVE` with 8-byte values, as an incompatible build might leave.
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(pins.path().join("maps/ACTIVE"))
        .args([
            "type", "array", "key", "4", "value", "8", "entries", "1", "name", "ACTIVE",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let err = Dataplane::open(pins.path(), root.path())
        .err()
        .expect("refused");
    assert!(
        matches!(err, DataplaneError::IncompatibleMap { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("uninstall"), "{err}");
}

#[test]
fn a_new_agent_build_replaces_the_old_builds_links_attaching_first() {
    let mut s = Enforced::new(&policy()).unwrap();
    let server = |port| SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port);
    let denied = s
        .client("prod/client")
        .repeat(RepeatOp::Connect, server(7081), Proto::Tcp)
        .unwrap();
    denied.wait_for(5, Duration::from_secs(5));
    // Make the pinned links look like another build's.
    s.close();
    let links_dir = s.pin_dir().join("links");
    let mut old = Vec::new();
    for entry in fs::read_dir(&links_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (program, _) = name.split_once('@').unwrap();
        let renamed = links_dir.join(format!("{program}@0000000000000000"));
        fs::rename(&path, &renamed).unwrap();
        old.push(renamed);
    }
    old.sort();

    let reopened = s.open().unwrap();
    let mut replaced = reopened.replaced_links().to_vec();
    replaced.sort();
    assert_eq!(replaced, old);
    assert!(reopened
        .links()
        .iter()
        .all(|l| !l.adopted && l.pin.exists()));
    assert!(old.iter().all(|p| !p.exists()));
    let n = denied.tally().total();
    denied.wait_for(n + 10, Duration::from_secs(5));
    let denied = denied.stop();
    assert_eq!(
        denied.ok, 0,
        "denied at every moment of the replacement: {denied:?}"
    );
}

/// A generation prepared beside the live one takes effect only when it is
/// committed: while it waits, and after it is aborted or dropped, the live
/// generation decides every connection, and nothing of the prepared one is
/// left in the maps. This is what lets the agent put the nftables
/// transaction between writing a generation and flipping to it.
#[test]
fn a_prepared_generation_takes_effect_only_when_committed() {
    let mut s = Enforced::new(&policy()).unwrap();
    let server = |port| SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port);
    let _listeners =
        [7080, 7081].map(|port| Listener::start(&s.net.server, server(port), Proto::Tcp).unwrap());
    let (allowed, denied) = {
        let client = s.client("prod/client");
        (
            client
                .repeat(RepeatOp::Connect, server(7080), Proto::Tcp)
                .unwrap(),
            client
                .repeat(RepeatOp::Connect, server(7081), Proto::Tcp)
                .unwrap(),
        )
    };
    allowed.wait_for(5, Duration::from_secs(5));
    denied.wait_for(5, Duration::from_secs(5));
    let before = s.dataplane().entry_counts().unwrap();
    let slot = s.dataplane().active_slot().unwrap();
    // The other way round: 7081 allowed, 7080 denied.
    let (_, swapped) = s
        .image(
            &isolated_client("  - ports: [{port: 7081}]\n"),
            &Resolved::new(),
            false,
        )
        .unwrap();

    let settle = |allowed: &Repeater, denied: &Repeater| {
        let (a, d) = (allowed.tally().total(), denied.tally().total());
        allowed.wait_for(a + 10, Duration::from_secs(5));
        denied.wait_for(d + 10, Duration::from_secs(5));
    };
    // Aborted.
    let prepared = s.dataplane().prepare(&swapped).unwrap();
    settle(&allowed, &denied);
    let removed = prepared.abort();
    assert!(removed > 0, "the prepared entries were deleted");
    assert_eq!(s.dataplane().entry_counts().unwrap(), before);
    assert_eq!(s.dataplane().active_slot().unwrap(), slot);
    // Dropped.
    let prepared = s.dataplane().prepare(&swapped).unwrap();
    settle(&allowed, &denied);
    drop(prepared);
    assert_eq!(s.dataplane().entry_counts().unwrap(), before);
    assert_eq!(s.dataplane().active_slot().unwrap(), slot);
    settle(&allowed, &denied);
    let (allowed, denied) = (allowed.stop(), denied.stop());
    assert_eq!(
        (allowed.eperm, allowed.other.len()),
        (0, 0),
        "the live generation allowed throughout: {allowed:?}"
    );
    assert_eq!(denied.ok, 0, "and denied throughout: {denied:?}");

    // Committed: the next apply after an abort needs no reconciliation,
    // and the new generation decides.
    let stats = s.dataplane().prepare(&swapped).unwrap().commit().unwrap();
    assert!(!stats.reconciled, "{stats:?}");
    assert_eq!(stats.cleanup_error, None);
    assert_eq!(s.dataplane().active_slot().unwrap(), 1 - slot);
    let client = s.client("prod/client");
    assert_eq!(client.connect_tcp(server(7081)).unwrap(), Outcome::Ok);
    assert_eq!(client.connect_tcp(server(7080)).unwrap(), Outcome::Eperm);
}

/// A node address with a NodePort, for the host table tests.
const NODE_PORT_OBJECTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: InternalIP, address: 172.18.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.31
  ports:
  - {name: http, protocol: TCP, port: 80, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.0.20]
ports: [{name: http, protocol: TCP, port: 8080}]
"#;

#[test]
fn node_port_host_tables_are_staged_like_every_other_entry() {
    require_root();
    let mut s = Enforced::new(&policy()).unwrap();
    let before = s.dataplane().entry_counts().unwrap();
    assert_eq!(before.host_ports, 0);
    let slot = s.dataplane().active_slot().unwrap();
    let yaml = format!("{}\n---\n{NODE_PORT_OBJECTS}", policy());
    let (_, image) = s.image(&yaml, &Resolved::new(), false).unwrap();
    let host_ports = image.size().host_ports;
    assert!(host_ports > 0, "the NodePort has a host table");

    // Prepared, then aborted or dropped: the host tables go with the rest.
    let prepared = s.dataplane().prepare(&image).unwrap();
    assert!(prepared.abort() > 0, "the prepared entries were deleted");
    assert_eq!(s.dataplane().entry_counts().unwrap(), before);
    drop(s.dataplane().prepare(&image).unwrap());
    assert_eq!(s.dataplane().entry_counts().unwrap(), before);
    assert_eq!(s.dataplane().active_slot().unwrap(), slot);

    // Committed: in force, and exactly this generation's.
    let stats = s.dataplane().prepare(&image).unwrap().commit().unwrap();
    assert!(!stats.reconciled, "{stats:?}");
    assert_eq!(stats.cleanup_error, None);
    assert_eq!(stats.host_port_entries, host_ports);
    assert_eq!(s.dataplane().entry_counts().unwrap().host_ports, host_ports);
    assert_eq!(s.dataplane().active_slot().unwrap(), 1 - slot);

    // The next generation without the NodePort deletes them.
    s.apply(&policy(), &Resolved::new(), false).unwrap();
    assert_eq!(s.dataplane().entry_counts().unwrap().host_ports, 0);
}
