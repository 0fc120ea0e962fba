//! Timing, not a test: what an apply costs with 100,000 CIDRs in force,
//! for a full apply, a one-CIDR change and a new pod under the same
//! policy. Prints the times; asserts nothing about them. Run with
//! `cargo test -p integration-tests --test apply_timing -- --ignored --nocapture`.

use std::{collections::BTreeMap, fmt::Write as _, time::Instant};

use egress_agent::{
    compile,
    dataplane::{cgroup_ids, ApplyStats, Dataplane, MapImage},
};
use egress_policy::Source;
use integration_tests::{require_root, PinDir, TestCgroup};

const CIDRS: usize = 100_000;

/// `pods` workloads labelled `app: client`, allowed to 100,000 /32s plus
/// `last`.
fn yaml(root: &str, pods: usize, last: &str) -> String {
    let mut y = String::new();
    for n in 0..pods {
        let _ = write!(
            y,
            "---\napiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
             metadata: {{name: client-{n}, namespace: prod, labels: {{app: client}}}}\n\
             spec: {{cgroup: {root}/prod/client-{n}}}\n"
        );
    }
    y.push_str(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: client, namespace: prod}\nspec:\n  \
         podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  \
         - ports: [{port: 7090}]\n    to:\n",
    );
    for i in 0..CIDRS - 1 {
        let _ = writeln!(
            y,
            "    - ipBlock: {{cidr: 172.{}.{}.{}/32}}",
            16 + i / 62_500,
            i / 250 % 250,
            i % 250 + 1
        );
    }
    let _ = writeln!(y, "    - ipBlock: {{cidr: {last}}}");
    y
}

fn image(root: &TestCgroup, pods: usize, last: &str) -> MapImage {
    for n in 0..pods {
        root.child(&format!("prod/client-{n}")).unwrap();
    }
    let mount = egress_agent::sys::cgroup2_mount().unwrap();
    let start = Instant::now();
    let yaml = yaml(&root.relative(), pods, last);
    let generated = start.elapsed();
    let loaded = egress_policy::load_sources(&[Source::new("timing.yaml", yaml)]).unwrap();
    let parsed = start.elapsed();
    let plan = compile::compile(&loaded.model);
    let compiled = start.elapsed();
    let image =
        MapImage::build(&plan, &cgroup_ids(&plan, &mount), &BTreeMap::new(), false).unwrap();
    let built = start.elapsed();
    println!(
        "image ({pods} pods, last {last}): parse and validate {:?}, compile {:?}, build {:?}",
        parsed - generated,
        compiled - parsed,
        built - compiled
    );
    image
}

fn report(what: &str, stats: &ApplyStats) {
    println!(
        "{what}: {:?} = write {:?} + grace {:?} + cleanup {:?}; {} prefixes written, {} entries \
         removed; {} entries and {} WORKLOADS entries written, {} policies and {} port sets kept; \
         {} policies updated in place ({} entries)",
        stats.total,
        stats.write,
        stats.grace,
        stats.cleanup,
        stats.allow_entries,
        stats.removed,
        stats.written,
        stats.workload_writes,
        stats.reused_policies,
        stats.reused_port_sets,
        stats.updated_in_place,
        stats.in_place_entries,
    );
}

#[test]
#[ignore = "a timing harness: prints, asserts nothing; run with --ignored --nocapture"]
fn apply_times_at_100k_cidrs() {
    require_root();
    let root = TestCgroup::new().unwrap();
    let pins = PinDir::new().unwrap();
    let mut dataplane = Dataplane::open(pins.path(), root.path()).unwrap();
    let first = image(&root, 1, "10.9.0.1/32");
    let changed = image(&root, 1, "10.9.0.2/32");
    let new_pod = image(&root, 2, "10.9.0.2/32");
    let start = Instant::now();
    let stats = dataplane.apply(&first).unwrap();
    report("(3) full apply, 100k CIDRs", &stats);
    let stats = dataplane.apply(&changed).unwrap();
    report("(1) one CIDR changed", &stats);
    let stats = dataplane.apply(&new_pod).unwrap();
    report("(2) a new pod under the 100k policy", &stats);
    println!("all three in {:?}", start.elapsed());
}
