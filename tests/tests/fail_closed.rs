//! Scenarios: enforcement outlives the agent. Programs and maps are pinned,
//! so an agent that dies (dropped without uninstall, or SIGKILLed in the
//! middle of an apply) leaves the last generation in force, and the next
//! agent adopts the pinned links without ever detaching them, then cleans
//! up whatever the dead one left half-written.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use integration_tests::{names, Enforced, Listener, Outcome, Proto, RepeatOp, Resolved, TestNet};

const ARRIVAL: Duration = Duration::from_secs(2);
const SILENCE: Duration = Duration::from_millis(300);

/// Allows `allowed` and nothing else (plus `bulk` host routes on port 80,
/// offset by `variant`, so that images differ).
fn policy(allowed: u16, bulk: usize, variant: u8) -> String {
    let mut yaml = format!(
        r#"
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: client, namespace: prod, labels: {{app: client}}}}
spec: {{cgroup: $ROOT/prod/client}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: client}}}}
  policyTypes: [Egress]
  egress:
  - ports: [{{port: {allowed}}}]
"#
    );
    if bulk > 0 {
        yaml.push_str("  - ports: [{port: 80}]\n    to:\n");
        for i in 0..bulk {
            let _ = writeln!(
                yaml,
                "    - ipBlock: {{cidr: 172.{}.{}.{}/32}}",
                16 + variant,
                i / 250,
                i % 250 + 1
            );
        }
    }
    yaml
}

fn server(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port)
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

#[test]
fn a_dropped_data_plane_keeps_enforcing_and_the_next_one_adopts_it_without_a_gap() {
    let mut s = Enforced::new(&policy(7050, 0, 0)).unwrap();
    let _ok = Listener::start(&s.net.server, any(7050), Proto::Tcp).unwrap();
    let denied_port = Listener::start(&s.net.server, any(7051), Proto::Tcp).unwrap();
    let before: Vec<_> = s.dataplane_ref().links().to_vec();
    let (allowed, denied) = {
        let client = s.client("prod/client");
        (
            client
                .repeat(RepeatOp::Connect, server(7050), Proto::Tcp)
                .unwrap(),
            client
                .repeat(RepeatOp::Connect, server(7051), Proto::Tcp)
                .unwrap(),
        )
    };
    denied.wait_for(5, Duration::from_secs(5));

    // The agent goes away without uninstalling.
    s.close();
    let n = denied.tally().total();
    denied.wait_for(n + 20, Duration::from_secs(5));
    assert_eq!(denied.tally().ok, 0, "still enforced with no agent");

    // A new agent adopts the very same links.
    let reopened = s.open().unwrap();
    assert!(reopened.replaced_links().is_empty());
    for (old, new) in before.iter().zip(reopened.links()) {
        assert!(new.adopted, "{:?} adopted", new.hook);
        assert_eq!((old.link_id, old.program_id), (new.link_id, new.program_id));
    }
    let n = denied.tally().total();
    denied.wait_for(n + 20, Duration::from_secs(5));
    let (allowed, denied) = (allowed.stop(), denied.stop());
    assert_eq!(denied.ok, 0, "a denied connect passed: {denied:?}");
    assert!(denied.eperm >= 40);
    assert_eq!((allowed.eperm, allowed.other.len()), (0, 0), "{allowed:?}");
    assert_eq!(denied_port.next_event(Duration::ZERO), None);

    // It programs the kernel as usual; nothing of the old agent is left.
    s.apply(&policy(7051, 0, 0), &Resolved::new(), false)
        .unwrap();
    let client = s.client("prod/client");
    assert_eq!(client.connect_tcp(server(7051)).unwrap(), Outcome::Ok);
    assert!(denied_port.next_event(ARRIVAL).is_some());
    assert_eq!(client.connect_tcp(server(7050)).unwrap(), Outcome::Eperm);
    let size = s.image.size();
    let counts = s.dataplane().entry_counts().unwrap();
    assert_eq!(
        (counts.policies, counts.allow, counts.port_sets),
        (size.policies, size.allow, size.port_sets)
    );
}

/// Policy files for the helper agent, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(names::unique("egress-test-policies"));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `egress-apply --loop` on `files` and SIGKILLs it at a pseudo-random
/// moment after its second apply; returns the milliseconds it had run.
fn kill_mid_apply(s: &Enforced, files: &[PathBuf], round: u32) -> u128 {
    let mut helper = Command::new(env!("CARGO_BIN_EXE_egress-apply"))
        .arg("--pin-dir")
        .arg(s.pin_dir())
        .arg("--cgroup-root")
        .arg(s.root.path())
        .arg("--loop")
        .args(files)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let mut apply_ms = 0u64;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("APPLIED ") {
            let mut words = rest.split_whitespace();
            let n: u32 = words.next().unwrap().parse().unwrap();
            apply_ms = words.next().unwrap().parse().unwrap();
            if n >= 1 {
                break;
            }
        }
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let delay = u64::from(nanos % 1000 + round * 337) % 1000 * (apply_ms + 1) / 1000;
    let start = Instant::now();
    thread::sleep(Duration::from_millis(delay));
    helper.kill().unwrap();
    helper.wait().unwrap();
    println!("round {round}: SIGKILL {delay} ms into an apply that takes about {apply_ms} ms");
    start.elapsed().as_millis()
}

#[test]
fn an_agent_killed_in_the_middle_of_an_apply_leaves_enforcement_in_force_and_the_next_cleans_up() {
    let mut s = Enforced::new(&policy(7050, 0, 0)).unwrap();
    s.close();
    let _ok = Listener::start(&s.net.server, any(7050), Proto::Tcp).unwrap();
    let denied_port = Listener::start(&s.net.server, any(7051), Proto::Tcp).unwrap();
    let dir = TempDir::new();
    let files = [
        dir.write("a.yaml", &s.yaml(&policy(7050, 20_000, 0))),
        dir.write("b.yaml", &s.yaml(&policy(7050, 20_000, 1))),
    ];
    let (allowed, denied) = {
        let client = s.client("prod/client");
        (
            client
                .repeat(RepeatOp::Connect, server(7050), Proto::Tcp)
                .unwrap(),
            client
                .repeat(RepeatOp::Connect, server(7051), Proto::Tcp)
                .unwrap(),
        )
    };
    denied.wait_for(5, Duration::from_secs(5));

    for round in 0..3 {
        kill_mid_apply(&s, &files, round);
        let n = denied.tally().total();
        denied.wait_for(n + 10, Duration::from_secs(5));
    }
    let (allowed, denied) = (allowed.stop(), denied.stop());
    assert_eq!(denied.ok, 0, "a denied connect passed: {denied:?}");
    assert!(denied.eperm >= 30);
    assert_eq!((allowed.eperm, allowed.other.len()), (0, 0), "{allowed:?}");
    assert!(allowed.ok >= 10);
    assert_eq!(denied_port.next_event(Duration::ZERO), None);

    // The next agent adopts, applies a changed policy, and nothing the
    // killed agents wrote is left.
    let reopened = s.open().unwrap();
    assert!(reopened.links().iter().all(|l| l.adopted));
    let stale = reopened.entry_counts().unwrap();
    let stats = s
        .apply(&policy(7051, 0, 0), &Resolved::new(), false)
        .unwrap();
    println!(
        "after the kills: {stale:?}; the next apply reconciled and removed {} entries",
        stats.removed
    );
    assert!(stats.reconciled);
    let client = s.client("prod/client");
    assert_eq!(client.connect_tcp(server(7051)).unwrap(), Outcome::Ok);
    assert!(denied_port.next_event(ARRIVAL).is_some());
    assert_eq!(client.connect_tcp(server(7050)).unwrap(), Outcome::Eperm);
    assert_eq!(denied_port.next_event(SILENCE), None);
    let size = s.image.size();
    let counts = s.dataplane().entry_counts().unwrap();
    assert_eq!(counts.allow, size.allow, "{counts:?}");
    assert_eq!(counts.policies, size.policies);
    assert_eq!(counts.port_sets, size.port_sets);
    assert_eq!(counts.workloads, size.workloads);
}
