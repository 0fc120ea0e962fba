//! Scenario: a workload allowed to 100,000 CIDRs. Measures a full apply and
//! a one-CIDR change (which, with generations, rewrites the workload's
//! prefixes under fresh ids), and checks that both take effect. Then the
//! same policy over many replicas, which share one copy of its tables.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use egress_agent::dataplane::{cgroup_ids, ApplyStats, MapImage};
use integration_tests::policies::isolated_client;
use integration_tests::{Enforced, Listener, Outcome, Proto, RepeatOp, Resolved, TestNet};

const CIDRS: usize = 100_000;

/// The workload, isolated with no rule.
fn before() -> String {
    isolated_client("")
}

/// `prod/client` may reach port 7090 on 100,000 /32s in 172.16.0.0/12,
/// plus `last`.
fn policy(last: &str) -> String {
    let mut yaml = isolated_client("  - ports: [{port: 7090}]\n    to:\n");
    for i in 0..CIDRS - 1 {
        let _ = writeln!(
            yaml,
            "    - ipBlock: {{cidr: 172.{}.{}.{}/32}}",
            16 + i / 62_500,
            i / 250 % 250,
            i % 250 + 1
        );
    }
    let _ = writeln!(yaml, "    - ipBlock: {{cidr: {last}}}");
    yaml
}

/// Compiles `yaml` (timed) and builds its image (timed).
fn image(s: &Enforced, yaml: &str) -> (MapImage, Duration, Duration) {
    let start = Instant::now();
    let plan = s.plan(yaml).unwrap();
    let compiled = start.elapsed();
    let start = Instant::now();
    let ids = cgroup_ids(&plan, s.mount());
    let image = MapImage::build(&plan, &ids, &Resolved::new(), false).unwrap();
    (image, compiled, start.elapsed())
}

fn report(what: &str, stats: &ApplyStats, compiled: Duration, built: Duration) {
    println!(
        "{what}: YAML→plan {compiled:?}, plan→image {built:?}; apply {:?} = write {:?} + grace {:?} + cleanup {:?} ({} prefixes written, {} entries removed)",
        stats.total, stats.write, stats.grace, stats.cleanup, stats.allow_entries, stats.removed
    );
}

/// Replicas of `prod/client` (`prod/client-1` …), selected by the same
/// policy.
const REPLICAS: usize = 25;

fn replicas(yaml: &str) -> String {
    let mut yaml = yaml.to_owned();
    for n in 1..REPLICAS {
        let _ = write!(
            yaml,
            "---\napiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
             metadata: {{name: client-{n}, namespace: prod, labels: {{app: client}}}}\n\
             spec: {{cgroup: $ROOT/prod/client-{n}}}\n"
        );
    }
    yaml
}

/// 25 replicas × 100k CIDRs would be 2.5M trie entries, more than
/// `ALLOW_V4` holds (2²¹) even for one generation, if each replica had its
/// own copy. Equal tables are one policy: written once, and every replica
/// is enforced by it.
#[test]
fn replicas_under_a_100k_cidr_policy_share_one_table() {
    let server = |port| SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port);
    let mut s = Enforced::new(&replicas(&before())).unwrap();
    let allowed = Listener::start(&s.net.server, server(7090), Proto::Tcp).unwrap();
    let _denied = Listener::start(&s.net.server, server(7091), Proto::Tcp).unwrap();

    let (full, compiled, built) = image(&s, &replicas(&policy("10.200.0.2/32")));
    let stats = s.dataplane().apply(&full).unwrap();
    report("25 replicas × 100k CIDRs", &stats, compiled, built);
    assert_eq!((stats.policies, stats.allow_entries), (1, CIDRS));
    let counts = s.dataplane().entry_counts().unwrap();
    assert_eq!(
        (counts.workloads, counts.policies, counts.allow),
        (REPLICAS, 1, CIDRS)
    );
    for workload in ["prod/client", "prod/client-1", "prod/client-24"] {
        let client = s.client(workload);
        assert_eq!(client.connect_tcp(server(7090)).unwrap(), Outcome::Ok);
        assert!(allowed.next_event(Duration::from_secs(2)).is_some());
        assert_eq!(
            client.connect_tcp(server(7091)).unwrap(),
            Outcome::Eperm,
            "{workload}"
        );
    }
}

#[test]
fn a_workload_with_100k_cidrs_applies_and_a_one_cidr_change_takes_effect() {
    let server = |port| SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port);
    // Before: the workload may go nowhere.
    let mut s = Enforced::new(&before()).unwrap();
    let listener = Listener::start(&s.net.server, server(7090), Proto::Tcp).unwrap();

    // Full: a generation with every prefix.
    let (full, compiled, built) = image(&s, &policy("192.0.2.1/32"));
    let first = s.dataplane().apply(&full).unwrap();
    report("100k CIDRs, full apply", &first, compiled, built);
    assert_eq!(first.allow_entries, CIDRS);
    assert_eq!(
        s.client("prod/client").connect_tcp(server(7090)).unwrap(),
        Outcome::Eperm
    );

    // One CIDR changed: 192.0.2.1 out, the server in.
    let (changed, compiled, built) = image(&s, &policy("10.200.0.2/32"));
    let second = s.dataplane().apply(&changed).unwrap();
    report("100k CIDRs, one-CIDR change", &second, compiled, built);
    // The policy's table changed by one prefix, so it is updated in place
    // under its id (one upsert, one delete); its port set did not change,
    // so it is kept.
    assert_eq!(
        (second.updated_in_place, second.in_place_entries),
        (1, 2),
        "{second:?}"
    );
    assert_eq!(second.removed, 1, "only the prefix that went");
    assert_eq!(second.reused_port_sets, 1);
    assert_eq!(
        s.client("prod/client").connect_tcp(server(7090)).unwrap(),
        Outcome::Ok
    );
    assert!(listener.next_event(Duration::from_secs(2)).is_some());
    assert_eq!(s.dataplane().entry_counts().unwrap().allow, CIDRS);

    // What a decision costs with these tries, per program run, from the
    // kernel's own accounting (kernel.bpf_stats_enabled, restored after).
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let was = fs::read_to_string(stats_path).unwrap_or_else(|_| "0".into());
    fs::write(stats_path, "1").unwrap();
    let repeater = s
        .client("prod/client")
        .repeat(RepeatOp::Connect, server(7090), Proto::Tcp)
        .unwrap();
    repeater.wait_for(200, Duration::from_secs(10));
    let tally = repeater.stop();
    for link in s.dataplane_ref().links() {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &link.program_id.to_string()])
            .output()
            .unwrap();
        let json = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> u64 {
            json.split(&format!("\"{name}\":"))
                .nth(1)
                .and_then(|rest| {
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        let (ns, runs) = (field("run_time_ns"), field("run_cnt"));
        if let Some(per_run) = ns.checked_div(runs) {
            println!("{:?}: {per_run} ns per run over {runs} runs", link.hook);
        }
    }
    fs::write(stats_path, was.trim()).unwrap();
    assert_eq!(tally.eperm, 0, "{tally:?}");
}
