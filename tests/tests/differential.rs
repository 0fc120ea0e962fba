//! The kernel against `explain`: random flows over a random policy set,
//! each decided twice, by a real `connect()`, `sendto()` or raw datagram
//! from the workload's cgroup and address, and by `compile::decide` (what
//! `egress-agent explain` prints). Any disagreement fails the test with
//! the flow, the seed and both answers.
//!
//! The policy set is drawn from a seeded generator (the seed is printed;
//! `DIFFERENTIAL_SEED=<n>` replays one, `DIFFERENTIAL_FLOWS=<n>` changes
//! the number of flows): workloads in two namespaces with addresses and
//! named ports, NetworkPolicies with ipBlock and `except`, pod and
//! namespace selectors, ports, `endPort` ranges, named ports and bare
//! protocols, and usually an EgressGateway with clusterCIDRs (sometimes
//! REGISTRY_ONLY with literal hosts). Destinations are drawn mostly where
//! the rules draw lines: inside blocks and their holes, at range ends and
//! one past them, at workload addresses, inside and outside the cluster.
//!
//! Every destination answers at once: the server namespace owns the
//! remote ranges and the client namespace the pod range (`ip route add
//! local …`), so an allowed TCP connect
//! is refused by a reset, and a denied one fails with EPERM. A connect
//! that times out was let through by `connect4/6` and dropped by
//! `cgroup_skb`: a disagreement too. UDP goes through `connect()` +
//! `send()`, unconnected `sendto()`, or a raw socket that only
//! `cgroup_skb` sees.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use egress_agent::compile::{self, Destination, Verdict};
use egress_policy::{model::ObjectId, ports::Protocol};
use integration_tests::{Enforced, Outcome, TestNet};

/// Workloads in the random set.
const WORKLOADS: usize = 5;
const DEFAULT_FLOWS: usize = 3000;
/// How long an allowed connect may take to be refused.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// The server namespace owns these: every address in them answers.
const REMOTE_V4: [&str; 5] = [
    "10.244.128.0/17",
    "10.96.0.0/16",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
];
const REMOTE_V6: [&str; 3] = ["fd00:244:8000::/33", "fd00:96::/64", "2001:db8::/32"];
/// Inside the cluster, whatever a gateway's clusterCIDRs leave out.
const CLUSTER: [&str; 4] = [
    "10.244.0.0/16",
    "10.96.0.0/16",
    "fd00:244::/32",
    "fd00:96::/64",
];
/// Ports the rules are drawn from.
const PORTS: [u16; 8] = [53, 80, 443, 5000, 7000, 8080, 8443, 9000];

/// SplitMix64: small, seedable, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` %.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A prefix as (address, length).
type Net = (IpAddr, u8);

fn parse_net(text: &str) -> Net {
    let (addr, len) = text.split_once('/').expect("CIDR");
    (addr.parse().expect("address"), len.parse().expect("length"))
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn from_bits(value: u128, width: u8) -> IpAddr {
    if width == 32 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

/// A random address inside `net`.
fn inside(rng: &mut Rng, (addr, len): Net) -> IpAddr {
    let (value, width) = bits(addr);
    let host_bits = u32::from(width - len);
    let mask = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    let random = (u128::from(rng.next()) << 64 | u128::from(rng.next())) & mask;
    from_bits((value & !mask) | random, width)
}

/// The prefix of length `len` that holds `addr`, canonical.
fn prefix_of(addr: IpAddr, len: u8) -> Net {
    let (value, width) = bits(addr);
    let host_bits = u32::from(width - len);
    let mask = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    (from_bits(value & !mask, width), len)
}

fn show((addr, len): Net) -> String {
    format!("\"{addr}/{len}\"")
}

/// A workload of the random set.
struct Workload {
    id: String,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

/// The random policy set, its YAML, and the places its rules draw lines.
struct PolicySet {
    yaml: String,
    workloads: Vec<Workload>,
    /// Blocks and holes, to draw destinations from.
    nets: Vec<Net>,
    /// Ports named by a rule, a range or a host (and their neighbours).
    ports: Vec<u16>,
}

fn random_net(rng: &mut Rng) -> Net {
    let v6 = rng.chance(35);
    let base = if v6 {
        parse_net(rng.pick::<&str>(&REMOTE_V6))
    } else {
        parse_net(rng.pick::<&str>(&REMOTE_V4))
    };
    let pods = if v6 {
        "fd00:244:1::/64"
    } else {
        "10.244.1.0/24"
    };
    let base = if rng.chance(20) {
        parse_net(pods)
    } else {
        base
    };
    let width = if v6 { 128 } else { 32 };
    let len = base.1 + rng.below(usize::from(width - base.1) + 1) as u8;
    prefix_of(inside(rng, base), len)
}

fn policy_set(rng: &mut Rng) -> PolicySet {
    let mut yaml = String::new();
    let mut nets = Vec::new();
    let mut ports: Vec<u16> = PORTS.to_vec();
    let tiers = ["web", "db"];
    for (ns, team) in [("na", "a"), ("nb", "b")] {
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: {team}}}}}\n---\n"
        );
    }
    let mut workloads = Vec::new();
    for i in 0..WORKLOADS {
        let ns = *rng.pick(&["na", "nb"]);
        let name = format!("w{i}");
        let tier = *rng.pick(&tiers);
        let v4 = Ipv4Addr::new(10, 244, 1, i as u8 + 1);
        let v6 = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, i as u16 + 1);
        let named = if rng.chance(60) {
            let port = *rng.pick(&PORTS);
            ports.push(port);
            format!(", ports: [{{name: http, port: {port}}}]")
        } else {
            String::new()
        };
        let _ = write!(
            yaml,
            "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
             metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}, tier: {tier}}}}}\n\
             spec: {{cgroup: $ROOT/{ns}/{name}, addresses: [{v4}, \"{v6}\"]{named}}}\n---\n"
        );
        workloads.push(Workload {
            id: format!("{ns}/{name}"),
            v4,
            v6,
        });
    }
    if rng.chance(75) {
        let cluster: Vec<&str> = CLUSTER.iter().copied().filter(|_| rng.chance(80)).collect();
        let cluster = if cluster.is_empty() {
            vec![CLUSTER[0]]
        } else {
            cluster
        };
        let gateway = &workloads[0].id;
        let (ns, name) = gateway.split_once('/').expect("NS/NAME");
        let mut hosts = String::new();
        if rng.chance(50) {
            hosts.push_str("  allowedHosts:\n");
            for _ in 0..1 + rng.below(3) {
                // A host or a small block, inside the ranges that answer.
                let block = random_net(rng);
                let width = if block.0.is_ipv4() { 32 } else { 128 };
                let len = block.1.max(width - rng.below(9) as u8);
                let net = prefix_of(block.0, len);
                nets.push(net);
                let _ = writeln!(hosts, "  - host: {}", show(net));
                if rng.chance(60) {
                    let port = *rng.pick(&PORTS);
                    ports.push(port);
                    let _ = writeln!(hosts, "    ports: [{port}]");
                }
            }
        }
        let _ = write!(
            yaml,
            "apiVersion: egress.enforcer.dev/v1alpha1\nkind: EgressGateway\n\
             metadata: {{name: gw, namespace: {ns}}}\n\
             spec:\n  selector: {{podSelector: {{matchLabels: {{app: {name}}}}}}}\n  \
             clusterCIDRs: [{}]\n{hosts}---\n",
            cluster
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for p in 0..1 + rng.below(4) {
        let ns = *rng.pick(&["na", "nb"]);
        let selector = match rng.below(3) {
            0 => "{}".to_owned(),
            1 => format!("{{matchLabels: {{app: w{}}}}}", rng.below(WORKLOADS)),
            _ => format!("{{matchLabels: {{tier: {}}}}}", rng.pick(&tiers)),
        };
        let _ = write!(
            yaml,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: p{p}, namespace: {ns}}}\n\
             spec:\n  podSelector: {selector}\n  policyTypes: [Egress]\n  egress:"
        );
        let rules = rng.below(4);
        if rules == 0 {
            yaml.push_str(" []\n");
        } else {
            yaml.push('\n');
        }
        for _ in 0..rules {
            let mut rule = Vec::new();
            if rng.chance(85) {
                let peers: Vec<String> = (0..1 + rng.below(2))
                    .map(|_| peer(rng, &mut nets, &tiers))
                    .collect();
                rule.push(format!("to: [{}]", peers.join(", ")));
            }
            if rng.chance(70) {
                let entries: Vec<String> = (0..1 + rng.below(2))
                    .map(|_| port_entry(rng, &mut ports))
                    .collect();
                rule.push(format!("ports: [{}]", entries.join(", ")));
            }
            let _ = writeln!(yaml, "  - {{{}}}", rule.join(", "));
        }
        yaml.push_str("---\n");
    }
    let neighbours: Vec<u16> = ports
        .iter()
        .flat_map(|p| [p.saturating_sub(1), *p, p.saturating_add(1)])
        .filter(|p| *p != 0)
        .collect();
    PolicySet {
        yaml,
        workloads,
        nets,
        ports: neighbours,
    }
}

fn peer(rng: &mut Rng, nets: &mut Vec<Net>, tiers: &[&str]) -> String {
    match rng.below(5) {
        0..=2 => {
            let net = random_net(rng);
            nets.push(net);
            let width = if net.0.is_ipv4() { 32 } else { 128 };
            let mut holes = Vec::new();
            if net.1 < width {
                for _ in 0..rng.below(3) {
                    let len = net.1 + 1 + rng.below(usize::from(width - net.1)) as u8;
                    let hole = prefix_of(inside(rng, net), len.min(width));
                    nets.push(hole);
                    holes.push(show(hole));
                }
            }
            if holes.is_empty() {
                format!("{{ipBlock: {{cidr: {}}}}}", show(net))
            } else {
                format!(
                    "{{ipBlock: {{cidr: {}, except: [{}]}}}}",
                    show(net),
                    holes.join(", ")
                )
            }
        }
        3 => format!(
            "{{podSelector: {{matchLabels: {{tier: {}}}}}}}",
            rng.pick(tiers)
        ),
        _ => format!(
            "{{namespaceSelector: {{matchLabels: {{team: {}}}}}}}",
            rng.pick(&["a", "b"])
        ),
    }
}

fn port_entry(rng: &mut Rng, ports: &mut Vec<u16>) -> String {
    let protocol = *rng.pick(&["TCP", "UDP"]);
    let port = *rng.pick(&PORTS);
    match rng.below(4) {
        0 => format!("{{protocol: {protocol}}}"),
        1 => {
            let end = port + 1 + rng.below(200) as u16;
            ports.push(end);
            format!("{{protocol: {protocol}, port: {port}, endPort: {end}}}")
        }
        2 => format!("{{protocol: {protocol}, port: http}}"),
        _ => format!("{{protocol: {protocol}, port: {port}}}"),
    }
}

/// How the kernel is asked.
#[derive(Clone, Copy, Debug)]
enum Method {
    Connect,
    Sendto,
    Raw,
}

struct Flow {
    workload: usize,
    dst: SocketAddr,
    protocol: Protocol,
    method: Method,
}

fn flow(rng: &mut Rng, set: &PolicySet) -> Flow {
    let family_v6 = rng.chance(40);
    let ip = match rng.below(10) {
        0..=4 if !set.nets.is_empty() => {
            let net = *rng.pick(&set.nets);
            inside(rng, net)
        }
        5 | 6 => {
            let w = rng.pick(&set.workloads);
            if family_v6 {
                IpAddr::V6(w.v6)
            } else {
                IpAddr::V4(w.v4)
            }
        }
        _ => {
            let remote = if family_v6 {
                parse_net(rng.pick::<&str>(&REMOTE_V6))
            } else {
                parse_net(rng.pick::<&str>(&REMOTE_V4))
            };
            inside(rng, remote)
        }
    };
    let port = if rng.chance(85) {
        *rng.pick(&set.ports)
    } else {
        1 + rng.below(65_535) as u16
    };
    let (protocol, method) = match rng.below(4) {
        0 | 1 => (Protocol::Tcp, Method::Connect),
        2 => (Protocol::Udp, *rng.pick(&[Method::Connect, Method::Sendto])),
        _ => (Protocol::Udp, Method::Raw),
    };
    Flow {
        workload: rng.below(set.workloads.len()),
        dst: SocketAddr::new(ip, port),
        protocol,
        method,
    }
}

impl Flow {
    fn line(&self, set: &PolicySet) -> String {
        let w = &set.workloads[self.workload];
        let from = if self.dst.is_ipv4() {
            IpAddr::V4(w.v4)
        } else {
            IpAddr::V6(w.v6)
        };
        let proto = if self.protocol == Protocol::Tcp {
            "tcp"
        } else {
            "udp"
        };
        match self.method {
            Method::Connect => format!("connect {from} {}/{proto}", self.dst),
            Method::Sendto => format!("sendto {from} {}/udp", self.dst),
            Method::Raw => format!("raw {from} {}/udp", self.dst),
        }
    }
}

/// The namespaces, as the test's network sees them: the workloads'
/// addresses in the client namespace, every remote range local to the
/// server namespace.
fn wire(net: &TestNet, set: &PolicySet) -> anyhow::Result<()> {
    let (c, s) = (&net.client, &net.server);
    for w in &set.workloads {
        c.ip(&["addr", "add", &format!("{}/32", w.v4), "dev", "eth0"])?;
        let v6 = format!("{}/128", w.v6);
        c.ip(&["-6", "addr", "add", &v6, "dev", "eth0", "nodad"])?;
    }
    // The rest of the pod ranges answers in the client namespace.
    c.ip(&["route", "add", "local", "10.244.1.0/24", "dev", "lo"])?;
    c.ip(&[
        "-6",
        "route",
        "add",
        "local",
        "fd00:244:1::/64",
        "dev",
        "lo",
    ])?;
    let server4 = TestNet::SERVER_V4.to_string();
    c.ip(&["route", "add", "default", "via", &server4])?;
    let server6 = TestNet::SERVER_V6.to_string();
    c.ip(&["-6", "route", "add", "default", "via", &server6])?;
    for net in REMOTE_V4 {
        s.ip(&["route", "add", "local", net, "dev", "lo"])?;
    }
    for net in REMOTE_V6 {
        s.ip(&["-6", "route", "add", "local", net, "dev", "lo"])?;
    }
    let client4 = TestNet::CLIENT_V4.to_string();
    s.ip(&["route", "add", "10.244.1.0/24", "via", &client4])?;
    let client6 = TestNet::CLIENT_V6.to_string();
    s.ip(&["-6", "route", "add", "fd00:244:1::/64", "via", &client6])?;
    Ok(())
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn the_kernel_decides_random_flows_as_explain_does() {
    let seed = env_number("DIFFERENTIAL_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let count = env_number("DIFFERENTIAL_FLOWS").map_or(DEFAULT_FLOWS, |n| n as usize);
    println!("seed {seed} (DIFFERENTIAL_SEED={seed} replays it), {count} flows");
    let mut rng = Rng(seed);
    let set = policy_set(&mut rng);
    let s = Enforced::new(&set.yaml)
        .unwrap_or_else(|e| panic!("seed {seed}: the policy set applies: {e:#}\n{}", set.yaml));
    wire(&s.net, &set).expect("wiring the namespaces");
    let flows: Vec<Flow> = (0..count).map(|_| flow(&mut rng, &set)).collect();

    let start = Instant::now();
    let mut kernel: BTreeMap<usize, Outcome> = BTreeMap::new();
    for (w, workload) in set.workloads.iter().enumerate() {
        let mine: Vec<usize> = (0..flows.len())
            .filter(|i| flows[*i].workload == w)
            .collect();
        let lines: Vec<String> = mine.iter().map(|i| flows[*i].line(&set)).collect();
        let outcomes = s
            .client(&workload.id)
            .batch(&lines, CONNECT_TIMEOUT)
            .expect("the probe runs the batch");
        kernel.extend(mine.into_iter().zip(outcomes));
    }
    let took = start.elapsed();

    let mut disagreements = Vec::new();
    let (mut allowed, mut denied) = (0, 0);
    for (i, flow) in flows.iter().enumerate() {
        let workload = &set.workloads[flow.workload];
        let id: ObjectId = workload.id.parse().expect("NS/NAME");
        let plan = s.plan.workload(&id).expect("the workload is planned");
        let decision = compile::decide(
            &s.plan,
            plan,
            Destination {
                ip: flow.dst.ip(),
                port: flow.dst.port(),
                protocol: flow.protocol,
            },
        );
        let outcome = &kernel[&i];
        let kernel_allows = match outcome {
            Outcome::Ok | Outcome::Refused => Some(true),
            Outcome::Eperm => Some(false),
            _ => None,
        };
        let explain_allows = match decision.verdict {
            Verdict::Allow => true,
            Verdict::Deny => false,
            Verdict::Redirect { .. } => panic!("no Redirect in the set"),
        };
        if explain_allows {
            allowed += 1;
        } else {
            denied += 1;
        }
        if kernel_allows != Some(explain_allows) {
            disagreements.push(format!(
                "{} ({:?}): kernel {outcome}, explain {} ({})",
                flow.line(&set),
                flow.method,
                decision.verdict,
                decision.reason
            ));
        }
    }
    println!(
        "{count} flows ({allowed} allowed, {denied} denied by explain) through the kernel in {took:?}"
    );
    if !disagreements.is_empty() {
        let counters = s.dataplane_ref().counters().expect("counters");
        let verdicts: Vec<String> = counters
            .verdicts()
            .map(|(kind, n)| format!("{kind:?}: {n}"))
            .collect();
        panic!(
            "seed {seed}: {} of {count} flows disagree:\n{}\nkernel counters:\n{}\npolicy set:\n{}",
            disagreements.len(),
            disagreements.join("\n"),
            verdicts.join("\n"),
            set.yaml
        );
    }
}
