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
    require_root, Enforced, PinDir, Proto, RepeatOp, Resolved, TestCgroup, TestNet,
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
