//! Apply by difference: an apply keeps what the live generation already
//! holds and writes only the rest, so it must leave exactly the kernel
//! state a full apply of the same policy leaves. Checked by dumping the
//! maps (ids replaced by what they name, see
//! `Dataplane::canonical_dump`) after every step of 1,000 random change
//! sequences, against a data plane that applied the same image in full:
//! from empty maps after each step, and on a fresh pin directory after
//! the last step of every sequence. One policy has a larger table of
//! nested prefixes, a few of which change at a time, so that policies are
//! both updated in place (same id, see `generation::in_place`) and, where
//! that is declined, written whole; the test checks that both happened.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use egress_agent::{
    compile,
    dataplane::{cgroup_ids, ApplyStats, Dataplane, MapImage},
};
use egress_policy::Source;
use integration_tests::{require_root, PinDir, TestCgroup};

const SEQUENCES: u64 = 1000;
/// The first apply of a sequence, then one change. Each step costs three
/// applies (each with an RCU grace period) and two dumps: 3 steps took
/// 7.5 minutes on a shared 2-core machine, 2 steps fit a test run better.
const STEPS: usize = 2;

/// splitmix64: small, seedable, good enough to pick changes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Small pools, so that random changes often leave a table as it was (and
/// the apply can keep it).
const CIDRS: &[&str] = &[
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "10.2.0.0/16",
    "192.168.0.0/24",
    "203.0.113.7/32",
    "0.0.0.0/0",
    "fd00:1::/32",
    "fd00:1:2::/48",
    "fd00:1:2::3/128",
    "2001:db8::/64",
];
const PORTS: &[u16] = &[53, 80, 443, 7000, 7001, 8080];
const CLUSTER: &[&str] = &[
    "10.200.0.0/24",
    "10.1.0.0/16",
    "fd00:200::/64",
    "fd00:1::/32",
];
const HOSTS: &[&str] = &["203.0.113.7", "203.0.113.8", "2001:db8::9"];
const LABELS: &[&str] = &["a", "b", "c"];
/// The label whose policy, when it exists, also has a larger table: an
/// extra rule to `BULK` of the prefixes `bulk_cidr` numbers, nested /16s
/// and /24s, so that a few of them changing is updated in place.
const BULK_LABEL: &str = "a";
const BULK: usize = 24;
const BULK_POOL: u32 = 120;
const WORKLOADS: usize = 6;

#[derive(Clone, Debug)]
struct Rule {
    ports: Vec<(u16, bool)>,
    to: Vec<&'static str>,
}

#[derive(Clone, Debug)]
struct World {
    /// Workload `wN`: its label, if it exists.
    workloads: Vec<Option<&'static str>>,
    /// NetworkPolicy per label: its rules, if it exists.
    policies: BTreeMap<&'static str, Vec<Rule>>,
    gateway: bool,
    cluster: Vec<&'static str>,
    hosts: Vec<(&'static str, u16)>,
    /// The label whose workloads are captured, if any.
    redirect: Option<(&'static str, u16, &'static str)>,
    audit: bool,
    /// `BULK_LABEL`'s larger table, by `bulk_cidr` number.
    bulk: Vec<u32>,
}

/// Prefix number `n` of the larger table: every fifth a /16, the others
/// /24s, some inside those /16s.
fn bulk_cidr(n: u32) -> String {
    let (b, c) = (16 + n / 40, n % 40);
    if n.is_multiple_of(5) {
        format!("172.{b}.0.0/16")
    } else {
        format!("172.{b}.{c}.0/24")
    }
}

impl World {
    fn random(rng: &mut Rng) -> Self {
        let mut world = Self {
            workloads: (0..WORKLOADS)
                .map(|_| rng.chance(70).then(|| *rng.pick(LABELS)))
                .collect(),
            policies: BTreeMap::new(),
            gateway: rng.chance(50),
            cluster: vec![*rng.pick(CLUSTER)],
            hosts: vec![(*rng.pick(HOSTS), *rng.pick(PORTS))],
            redirect: None,
            audit: false,
            bulk: Vec::new(),
        };
        while world.bulk.len() < BULK {
            let n = rng.below(BULK_POOL as usize) as u32;
            if !world.bulk.contains(&n) {
                world.bulk.push(n);
            }
        }
        for label in LABELS {
            if rng.chance(70) {
                let rules = (0..1 + rng.below(2)).map(|_| Self::rule(rng)).collect();
                world.policies.insert(label, rules);
            }
        }
        if rng.chance(30) {
            world.redirect = Some((*rng.pick(LABELS), *rng.pick(PORTS), *rng.pick(CIDRS)));
        }
        world
    }

    fn rule(rng: &mut Rng) -> Rule {
        Rule {
            ports: (0..rng.below(3))
                .map(|_| (*rng.pick(PORTS), rng.chance(30)))
                .collect(),
            to: (0..1 + rng.below(3)).map(|_| *rng.pick(CIDRS)).collect(),
        }
    }

    /// One or two random changes, each of the kind a reload brings.
    fn change(&mut self, rng: &mut Rng) {
        for _ in 0..1 + rng.below(2) {
            match rng.below(12) {
                // A pod comes, goes or moves to another policy.
                0..=2 => {
                    let w = rng.below(WORKLOADS);
                    self.workloads[w] = rng.chance(75).then(|| *rng.pick(LABELS));
                }
                // One CIDR of one rule changes.
                3 | 4 => {
                    let label = *rng.pick(LABELS);
                    let rules = self
                        .policies
                        .entry(label)
                        .or_insert_with(|| vec![Self::rule(rng)]);
                    let r = rng.below(rules.len());
                    let to = &mut rules[r].to;
                    let i = rng.below(to.len());
                    if rng.chance(50) {
                        to[i] = *rng.pick(CIDRS);
                    } else if rng.chance(50) || to.len() == 1 {
                        to.push(*rng.pick(CIDRS));
                    } else {
                        to.remove(i);
                    }
                }
                // The ports of a rule change.
                5 => {
                    if let Some(rules) = self.policies.get_mut(rng.pick(LABELS)) {
                        let r = rng.below(rules.len());
                        rules[r] = Rule {
                            to: rules[r].to.clone(),
                            ..Self::rule(rng)
                        };
                    }
                }
                // A policy comes or goes.
                6 => {
                    let label = *rng.pick(LABELS);
                    if self.policies.remove(label).is_none() {
                        self.policies.insert(label, vec![Self::rule(rng)]);
                    }
                }
                // The cluster's CIDRs change.
                7 => {
                    self.gateway = true;
                    let c = *rng.pick(CLUSTER);
                    if let Some(i) = self.cluster.iter().position(|x| *x == c) {
                        if self.cluster.len() > 1 {
                            self.cluster.remove(i);
                        }
                    } else {
                        self.cluster.push(c);
                    }
                }
                // The gateway's hosts change, or the gateway comes or goes.
                8 => {
                    if rng.chance(30) {
                        self.gateway = !self.gateway;
                    } else {
                        self.hosts = vec![(*rng.pick(HOSTS), *rng.pick(PORTS))];
                        if rng.chance(50) {
                            self.hosts.push((*rng.pick(HOSTS), *rng.pick(PORTS)));
                        }
                    }
                }
                // A few prefixes of the larger table come, go or change.
                10 | 11 => {
                    for _ in 0..1 + rng.below(3) {
                        let n = rng.below(BULK_POOL as usize) as u32;
                        match self.bulk.iter().position(|x| *x == n) {
                            Some(i) => {
                                self.bulk.remove(i);
                            }
                            None => self.bulk.push(n),
                        }
                    }
                }
                // Capture, or audit mode.
                _ => {
                    if rng.chance(80) {
                        self.redirect = match self.redirect {
                            Some(_) if rng.chance(40) => None,
                            _ => Some((*rng.pick(LABELS), *rng.pick(PORTS), *rng.pick(CIDRS))),
                        };
                    } else {
                        self.audit = !self.audit;
                    }
                }
            }
        }
    }

    fn yaml(&self, root: &str) -> String {
        let mut y = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: egress}\n",
        );
        let mut workload = |name: &str, ns: &str, labels: &str| {
            let _ = write!(
                y,
                "---\napiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
                 metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
                 spec: {{cgroup: {root}/{ns}/{name}}}\n"
            );
        };
        for (n, label) in self.workloads.iter().enumerate() {
            if let Some(label) = label {
                workload(&format!("w{n}"), "apps", &format!("app: {label}"));
            }
        }
        workload("proxy", "apps", "app: proxy, role: proxy");
        if self.gateway {
            workload("gw", "egress", "gateway: gw");
        }
        for (label, rules) in &self.policies {
            let _ = write!(
                y,
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: p-{label}, namespace: apps}}\nspec:\n  \
                 podSelector: {{matchLabels: {{app: {label}}}}}\n  policyTypes: [Egress]\n  egress:\n"
            );
            for rule in rules {
                let to: Vec<String> = rule
                    .to
                    .iter()
                    .map(|c| format!("{{ipBlock: {{cidr: \"{c}\"}}}}"))
                    .collect();
                let _ = writeln!(y, "  - to: [{}]", to.join(", "));
                if !rule.ports.is_empty() {
                    let ports: Vec<String> = rule
                        .ports
                        .iter()
                        .map(|(p, udp)| {
                            format!(
                                "{{port: {p}, protocol: {}}}",
                                if *udp { "UDP" } else { "TCP" }
                            )
                        })
                        .collect();
                    let _ = writeln!(y, "    ports: [{}]", ports.join(", "));
                }
            }
            if *label == BULK_LABEL && !self.bulk.is_empty() {
                let to: Vec<String> = self
                    .bulk
                    .iter()
                    .map(|n| format!("{{ipBlock: {{cidr: \"{}\"}}}}", bulk_cidr(*n)))
                    .collect();
                let _ = writeln!(y, "  - to: [{}]", to.join(", "));
            }
        }
        if self.gateway {
            let cluster: Vec<String> = self.cluster.iter().map(|c| format!("\"{c}\"")).collect();
            let _ = write!(
                y,
                "---\napiVersion: egress.enforcer.dev/v1alpha1\nkind: EgressGateway\n\
                 metadata: {{name: gw, namespace: egress}}\nspec:\n  \
                 selector: {{podSelector: {{matchLabels: {{gateway: gw}}}}}}\n  \
                 clusterCIDRs: [{}]\n  allowedHosts:\n",
                cluster.join(", ")
            );
            for (host, port) in &self.hosts {
                let _ = writeln!(y, "  - host: \"{host}\"\n    ports: [{port}]");
            }
        }
        if let Some((label, port, exclude)) = self.redirect {
            let _ = write!(
                y,
                "---\napiVersion: egress.enforcer.dev/v1alpha1\nkind: Redirect\n\
                 metadata: {{name: sidecar, namespace: apps}}\nspec:\n  \
                 podSelector: {{matchLabels: {{app: {label}}}}}\n  proxy:\n    \
                 address: 127.0.0.1\n    port: 15001\n    \
                 selector: {{podSelector: {{matchLabels: {{role: proxy}}}}}}\n  \
                 excludeIPRanges: [\"{exclude}\"]\n  includePorts: [{port}]\n"
            );
        }
        y
    }
}

struct Fixture {
    root: TestCgroup,
    mount: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        require_root();
        let root = TestCgroup::new().unwrap();
        let mount = egress_agent::sys::cgroup2_mount().unwrap();
        for n in 0..WORKLOADS {
            root.child(&format!("apps/w{n}")).unwrap();
        }
        root.child("apps/proxy").unwrap();
        root.child("egress/gw").unwrap();
        Self { root, mount }
    }

    fn image(&self, world: &World) -> Result<MapImage, String> {
        let yaml = world.yaml(&self.root.relative());
        let loaded = egress_policy::load_sources(&[Source::new("diff.yaml", yaml.clone())])
            .map_err(|e| format!("invalid policy {:#?}\n{yaml}", e.diagnostics))?;
        let plan = compile::compile(&loaded.model);
        MapImage::build(
            &plan,
            &cgroup_ids(&plan, &self.mount),
            &BTreeMap::new(),
            world.audit,
        )
        .map_err(|e| format!("{e}\n{yaml}"))
    }

    fn open(&self, pins: &Path) -> Dataplane {
        Dataplane::open(pins, self.root.path()).unwrap()
    }
}

#[derive(Default)]
struct Totals {
    applies: usize,
    reused_policies: usize,
    reused_port_sets: usize,
    reused_host_tables: usize,
    reused_cluster: usize,
    written: usize,
    updated_in_place: usize,
    in_place_entries: usize,
    in_place_declined: usize,
}

impl Totals {
    fn add(&mut self, stats: &ApplyStats) {
        self.applies += 1;
        self.reused_policies += stats.reused_policies;
        self.reused_port_sets += stats.reused_port_sets;
        self.reused_host_tables += stats.reused_host_tables;
        self.reused_cluster += usize::from(stats.reused_cluster);
        self.written += stats.written;
        self.updated_in_place += stats.updated_in_place;
        self.in_place_entries += stats.in_place_entries;
        self.in_place_declined += stats.in_place_declined;
    }
}

#[test]
fn an_incremental_apply_leaves_the_state_of_a_full_apply() {
    let fixture = Fixture::new();
    let seed = std::env::var("APPLY_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("seed {seed} (APPLY_DIFF_SEED={seed} repeats this run)");
    let start = Instant::now();
    let incremental_pins = PinDir::new().unwrap();
    let full_pins = PinDir::new().unwrap();
    let mut incremental = fixture.open(incremental_pins.path());
    let mut full = fixture.open(full_pins.path());
    let empty = MapImage::default();
    let mut totals = Totals::default();
    let mut fresh_checks = 0;
    let mut aborts = 0;
    for sequence in 0..SEQUENCES {
        let mut rng = Rng(seed ^ sequence.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut world = World::random(&mut rng);
        for step in 0..STEPS {
            if step > 0 {
                world.change(&mut rng);
            }
            let image = fixture
                .image(&world)
                .unwrap_or_else(|e| panic!("seed {seed}, sequence {sequence}: {e}"));
            // Taken back before the flip, a staged generation leaves the
            // maps exactly as they were: the objects it kept included.
            if rng.chance(10) {
                let before = incremental.canonical_dump().unwrap();
                incremental.prepare(&image).unwrap().abort();
                let after = incremental.canonical_dump().unwrap();
                assert!(
                    before == after,
                    "seed {seed}, sequence {sequence}, step {step}: abort changed the maps\n\
                     --- before\n{before}\n--- after\n{after}"
                );
                aborts += 1;
            }
            let stats = incremental.apply(&image).unwrap();
            assert!(stats.cleanup_error.is_none(), "{stats:?}");
            totals.add(&stats);
            // The same image, applied in full on maps emptied first.
            full.apply(&empty).unwrap();
            full.apply(&image).unwrap();
            let got = incremental.canonical_dump().unwrap();
            let want = full.canonical_dump().unwrap();
            assert!(
                got == want,
                "seed {seed}, sequence {sequence}, step {step}: the incremental apply's maps \
                 differ from a full apply's\n--- world\n{world:?}\n--- incremental\n{got}\n\
                 --- full\n{want}"
            );
        }
        // Against a data plane that never applied anything else, every
        // 25th sequence (opening one loads and verifies the programs).
        if sequence % 25 == 0 {
            let pins = PinDir::new().unwrap();
            let mut fresh = fixture.open(pins.path());
            fresh.apply(&fixture.image(&world).unwrap()).unwrap();
            let got = incremental.canonical_dump().unwrap();
            let want = fresh.canonical_dump().unwrap();
            assert!(
                got == want,
                "seed {seed}, sequence {sequence}: differs from a fresh data plane's\n\
                 --- incremental\n{got}\n--- fresh\n{want}"
            );
            drop(fresh);
            fresh_checks += 1;
        }
    }
    println!(
        "{SEQUENCES} sequences × {STEPS} steps in {:?}: {} applies, {} policies / {} port sets / \
         {} host tables / {} cluster tags kept, {} entries written; {} policies updated in \
         place ({} entries), {} written whole instead; {fresh_checks} checks against a fresh \
         data plane, {aborts} aborts",
        start.elapsed(),
        totals.applies,
        totals.reused_policies,
        totals.reused_port_sets,
        totals.reused_host_tables,
        totals.reused_cluster,
        totals.written,
        totals.updated_in_place,
        totals.in_place_entries,
        totals.in_place_declined,
    );
    // Not vacuous: policies, port sets and cluster tags were kept. (Host
    // tables need NodePort Services, which these worlds do not have.)
    assert!(totals.reused_policies > 0, "seed {seed}");
    assert!(totals.reused_port_sets > 0, "seed {seed}");
    assert!(totals.reused_cluster > 0, "seed {seed}");
    assert!(aborts > 0, "seed {seed}");
    // Both ways of changing a policy were taken: its tries updated in
    // place, and (too many entries changed, or its info, or a workload
    // left it) a fresh object.
    assert!(totals.updated_in_place > 0, "seed {seed}");
    assert!(totals.in_place_declined > 0, "seed {seed}");
}
