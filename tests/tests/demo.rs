//! Scenarios: the live demo (`cargo xtask demo`) and the simulated node it
//! runs on. The demo is run end to end, as a user runs it: on the seed
//! policies, on another policy directory, and interrupted by Ctrl-C; each
//! time nothing of it may be left behind.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use egress_policy::model::ObjectId;
use integration_tests::{
    agent::agent_exe,
    names,
    nftns::in_netns,
    node::{dns, SimNode},
    require_root, Outcome, Proto,
};

fn seed_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("policies")
}

fn demo(policies: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egress-demo"));
    cmd.arg("--policies")
        .arg(policies)
        .arg("--agent")
        .arg(agent_exe());
    cmd
}

/// Whatever a demo run with this pid left: namespaces, cgroups, pins and
/// scratch files all carry the pid in their names.
fn leftovers(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    let mut look = |dir: &Path, prefix: &str| {
        let prefix = format!("{prefix}-{pid}-");
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(entry.path().display().to_string());
            }
        }
    };
    look(Path::new("/run/netns"), names::NETNS_PREFIX);
    look(
        &egress_agent::sys::cgroup2_mount().unwrap(),
        names::CGROUP_PREFIX,
    );
    look(
        &egress_agent::sys::bpffs_mount().unwrap(),
        names::PIN_PREFIX,
    );
    look(&std::env::temp_dir(), names::CGROUP_PREFIX);
    found
}

fn run_to_end(mut cmd: Command) -> (Output, String, u32) {
    let child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    (output, stdout, pid)
}

/// The table line of the flow whose title starts with `flow`.
fn row<'a>(stdout: &'a str, flow: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| {
            let mut chars = l.chars();
            chars.next();
            chars.as_str().trim_start().starts_with(flow)
        })
        .unwrap_or_else(|| panic!("no row for {flow:?}"))
}

#[test]
fn the_demo_shows_every_seed_guarantee_with_real_connections_and_leaves_nothing_behind() {
    require_root();
    let start = Instant::now();
    let (output, stdout, pid) = run_to_end(demo(&seed_policies()));
    println!("demo took {:?}", start.elapsed());
    assert!(
        output.status.success(),
        "the demo failed: {}",
        output.status
    );
    assert!(!stdout.lines().any(|l| l.starts_with('✗')), "a ✗ row");

    let expect = |flow: &str, expected: &str, observed: &str| {
        let row = row(&stdout, flow);
        assert!(row.starts_with('✓'), "{row}");
        let words: Vec<&str> = row.split_whitespace().collect();
        assert!(words.contains(&expected), "{row}: expected {expected}");
        assert!(words.contains(&observed), "{row}: observed {observed}");
    };
    // The curl story: sleep goes through its sidecar and the gateway,
    // test-egress is refused at once, the gateway is served (the site saw
    // the gateway's uplink), httpbin.org is not allowed.
    for (request, outcome) in [
        (
            "default/sleep $ curl http://edition.cnn.com/politics",
            "[sidecar, gateway: allowed]",
        ),
        (
            "default/sleep $ curl https://edition.cnn.com/politics",
            "[sidecar, gateway: allowed]",
        ),
        (
            "default/sleep $ curl https://httpbin.org/headers",
            "gateway: denied",
        ),
        (
            "test-egress/sleep $ curl http://edition.cnn.com/politics",
            "refused at once",
        ),
        (
            "test-egress/sleep $ curl https://edition.cnn.com/politics",
            "refused at once",
        ),
        (
            "istio-system/istio-egressgateway $ curl http://edition.cnn.com/politics",
            "HTTP 200",
        ),
        (
            "istio-system/istio-egressgateway $ curl https://edition.cnn.com/politics",
            "SNI edition.cnn.com",
        ),
        (
            "istio-system/istio-egressgateway $ curl https://httpbin.org/headers",
            "refused at once",
        ),
    ] {
        let mut lines = stdout.lines().skip_while(|l| !l.ends_with(request));
        let title = lines
            .next()
            .unwrap_or_else(|| panic!("no request {request}"));
        assert!(title.starts_with('✓'), "{title}");
        let seen = lines.next().unwrap_or_default();
        assert!(seen.contains(outcome), "{request}: {seen}");
    }

    assert!(
        stdout.contains(
            "✓  gateway /stats: cluster.outbound|443||edition.cnn.com.upstream_cx_total: 1"
        ),
        "the gateway counted the request it carried"
    );

    let sleep = "test-egress/sleep →";
    expect(
        &format!("{sleep} edition.cnn.com 203.0.113.10:443/tcp"),
        "deny",
        "EPERM",
    );
    expect(
        &format!("{sleep} kube-system/kube-dns 10.244.0.10:53/udp DNS query"),
        "allow",
        "ok",
    );
    expect(
        &format!("{sleep} kube-system/kube-dns 10.244.0.10:53/tcp"),
        "deny",
        "EPERM",
    );
    expect(
        &format!("{sleep} istio-system/istio-egressgateway 10.244.0.20:443/tcp"),
        "allow",
        "ok",
    );
    expect(
        &format!("{sleep} edition.cnn.com 203.0.113.10:443/udp sendto"),
        "deny",
        "EPERM",
    );
    let gateway = "istio-system/istio-egressgateway → edition.cnn.com";
    expect(&format!("{gateway} 203.0.113.10:443/tcp"), "allow", "ok");
    expect(&format!("{gateway} 203.0.113.10:22/tcp"), "deny", "EPERM");
    expect(
        "test-egress/sleep pod, no cgroup → edition.cnn.com 203.0.113.10:443/tcp",
        "drop",
        "timeout",
    );
    // The DNS query was answered by dnsmasq, through the policy.
    assert!(stdout.contains("edition.cnn.com → 203.0.113.10"));
    // The rule behind each verdict is the plan's.
    assert!(stdout
        .contains("NetworkPolicy test-egress/allow-egress-to-istio-system-and-kube-dns egress[0]"));
    assert!(stdout.contains("gateway exclusivity"));
    // The captured connect to a denied address is rewritten to the
    // sidecar's proxy in the kernel, and reaches it.
    expect(
        "default/sleep → edition.cnn.com 203.0.113.10:443/tcp",
        "redirect",
        "ok",
    );
    assert!(stdout.contains("(reached the proxy)"));
    // Fail closed, adoption, uninstall.
    for step in [
        "SIGKILL the agent",
        "restart the agent",
        "SIGTERM the agent",
        "egress-agent uninstall",
        "once uninstalled",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(step))
            .unwrap_or_else(|| panic!("no step {step:?}"));
        assert!(line.starts_with('✓'), "{line}");
    }
    assert!(stdout.contains("nothing left behind"));
    assert!(stdout.contains(" 0 failed"));
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

/// A policy set unlike the seed: an IPv6 pod, a gateway whose allow-list is
/// a CIDR, no kube-dns (the DNS server then runs on the node).
const OTHER_POLICIES: &str = r#"
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  cgroup: shop/web
  addresses: ["10.50.1.10", "fd00:50::10"]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  cgroup: /shop/api
  addresses: ["10.50.1.20"]
  ports: [{name: grpc, port: 9090}]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: egress, namespace: shop, labels: {role: egress}}
spec: {cgroup: shop/egress, addresses: ["10.50.0.5"]}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {name: egress, namespace: shop}
spec:
  selector: {podSelector: {matchLabels: {role: egress}}}
  clusterCIDRs: [10.50.0.0/16, "fd00:50::/64"]
  allowedHosts:
  - {host: 203.0.113.0/24, ports: [443]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: grpc}]
"#;

/// A policy directory of the test's own, removed on drop.
struct PolicyDir(PathBuf);

impl PolicyDir {
    fn new(yaml: &str) -> Self {
        let dir = std::env::temp_dir().join(names::unique("egress-demo-policies"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("shop.yaml"), yaml).unwrap();
        Self(dir)
    }
}

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_demo_builds_its_node_from_any_policy_directory() {
    require_root();
    let dir = PolicyDir::new(OTHER_POLICIES);
    let (output, stdout, pid) = run_to_end(demo(&dir.0));
    assert!(
        output.status.success(),
        "the demo failed: {}",
        output.status
    );
    assert!(stdout.contains("pod: shop/web"));
    assert!(stdout.contains("10.50.1.10, fd00:50::10"));
    assert!(stdout.contains("DNS: dnsmasq on 127.0.0.1:53, on the node"));
    for (flow, observed) in [
        ("shop/web → edition.cnn.com 203.0.113.10:443/tcp", "EPERM"),
        (
            "shop/web → edition.cnn.com [2001:db8:113::10]:443/tcp",
            "EPERM",
        ),
        ("shop/web → shop/api 10.50.1.20:9090/tcp", "ok"),
        ("shop/egress → 203.0.113.0/24 203.0.113.1:443/tcp", "ok"),
        ("shop/egress → 203.0.113.0/24 203.0.113.1:22/tcp", "EPERM"),
        ("shop/api → edition.cnn.com 203.0.113.10:443/tcp", "EPERM"),
        ("shop/web pod, no cgroup → edition.cnn.com", "timeout"),
    ] {
        let row = row(&stdout, flow);
        assert!(row.starts_with('✓') && row.contains(observed), "{row}");
    }
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

#[test]
fn ctrl_c_in_the_middle_of_the_demo_leaves_nothing_behind() {
    require_root();
    let mut child = demo(&seed_policies())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Once the agent enforces and the first flow ran, everything exists:
    // namespaces, cgroups, dnsmasq, listeners, the agent and its pins.
    for line in lines.by_ref() {
        let line = line.unwrap();
        println!("{line}");
        if line.starts_with('✓') {
            break;
        }
    }
    assert!(!leftovers(pid).is_empty());
    let interrupted = Instant::now();
    // SAFETY: kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGINT) },
        0
    );
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    println!("{}", rest.join("\n"));
    println!("cleaned up {:?} after Ctrl-C", interrupted.elapsed());
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(rest.iter().any(|l| l.contains("nothing left behind")));
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

#[test]
fn a_simulated_node_routes_pods_to_each_other_and_the_internet_and_serves_dns() {
    require_root();
    let start = Instant::now();
    let dir = PolicyDir::new(OTHER_POLICIES);
    let sim = SimNode::new(&[seed_policies()]).unwrap();
    println!("seed node built in {:?}", start.elapsed());
    let id = |s: &str| s.parse::<ObjectId>().unwrap();

    // A sidecar (no addresses) shares the pod of its app.
    let sleep = sim.pod_of(&id("default/sleep")).unwrap();
    let sidecar = sim.pod_of(&id("default/sleep-istio-proxy")).unwrap();
    assert_eq!(sleep.netns.name(), sidecar.netns.name());
    for w in sim.workloads() {
        assert!(w.cgroup.is_dir(), "{}", w.cgroup.display());
        assert!(w.cgroup.starts_with(sim.cgroup_root()));
    }

    // Every workload reaches the internet and another pod through the
    // node, with its own pod address as the source (no NAT). (Not on 80
    // or 443: the internet's nginx has those.)
    let internet = SocketAddr::from((SimNode::INTERNET_V4, 8443));
    let gateway_pod = SocketAddr::from((Ipv4Addr::new(10, 244, 0, 20), 8443));
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8443));
    let outside = sim.listen(sim.internet(), any, Proto::Tcp).unwrap();
    let gateway_ns = &sim
        .pod_of(&id("istio-system/istio-egressgateway"))
        .unwrap()
        .netns;
    let inside = sim.listen(gateway_ns, gateway_pod, Proto::Tcp).unwrap();
    for w in sim.workloads() {
        let pod = &sim.pods()[w.pod];
        let client = sim.client(&w.id).unwrap();
        for (listener, dst) in [(&outside, internet), (&inside, gateway_pod)] {
            if pod.addresses.contains(&dst.ip()) {
                continue;
            }
            assert_eq!(
                client.connect_tcp(dst).unwrap(),
                Outcome::Ok,
                "{} → {dst}",
                w.id
            );
            let peer = listener.next_peer(Duration::from_secs(2)).unwrap();
            // A gateway pod leaves by its own uplink.
            let source = match pod.uplink.first() {
                Some(uplink) if dst == internet => *uplink,
                _ => pod.addresses[0],
            };
            assert_eq!(peer.ip(), source, "{} → {dst}", w.id);
        }
    }

    // dnsmasq, as kube-dns, answers a pod with the internet address.
    let dns = sim.dns().clone();
    assert_eq!(dns.address, "10.244.0.10:53".parse().unwrap());
    let pod = &sim.pod_of(&id("test-egress/sleep")).unwrap().netns;
    let answer = in_netns(pod, || {
        dns::query(
            dns.address,
            "edition.cnn.com",
            dns::RecordType::A,
            Duration::from_secs(2),
        )
    })
    .unwrap()
    .unwrap();
    assert_eq!(answer.addresses, vec![IpAddr::V4(SimNode::INTERNET_V4)]);
    assert_eq!(answer.ttl, Some(SimNode::DNS_TTL));

    // Another policy set: an IPv6 pod reaches the IPv6 internet.
    let other = SimNode::new(std::slice::from_ref(&dir.0)).unwrap();
    let v6 = SocketAddr::from((SimNode::INTERNET_V6, 8443));
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 8443));
    let outside6 = other.listen(other.internet(), any6, Proto::Tcp).unwrap();
    let web = other.client(&id("shop/web")).unwrap();
    assert_eq!(web.connect_tcp(v6).unwrap(), Outcome::Ok);
    let peer = outside6.next_peer(Duration::from_secs(2)).unwrap();
    assert_eq!(peer.ip(), "fd00:50::10".parse::<IpAddr>().unwrap());
    drop((outside6, web));

    // Teardown removes everything.
    let names: Vec<String> = std::iter::once(sim.node().name().to_owned())
        .chain(sim.pods().iter().map(|p| p.netns.name().to_owned()))
        .collect();
    let root = sim.cgroup_root().to_owned();
    drop((outside, inside));
    let report = sim.teardown();
    assert_eq!(report.left_behind, Vec::<String>::new());
    assert!(!root.exists());
    for name in names {
        assert!(!Path::new("/run/netns").join(name).exists());
    }
    assert!(other.teardown().left_behind.is_empty());
    println!("took {:?}", start.elapsed());
}
