//! Services on a node with a kube-proxy: the seed cluster with a kube-dns
//! Service, a selector-less Service that points at the internet, and pods
//! on another node, with an nft DNAT in the node namespace standing in for
//! kube-proxy's iptables rules. The cgroup hooks see the Service address
//! (the DNAT happens later, on the node), so these prove that a Service is
//! judged by its backends, with real connections, real DNS answers and a
//! listener on the far side.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context as _};
use egress_agent::policy::model::ObjectId;
use integration_tests::{
    netns::Netns,
    nftns::nft_script,
    node::SimNode,
    require_root,
    scenario::{id, seed_policies, Running},
    target_bin, Client, Listener, Outcome, Proto,
};

const ARRIVAL: Duration = Duration::from_millis(700);

/// kube-dns's ClusterIP, as kubeadm and kind give it.
const KUBE_DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A selector-less Service whose only endpoint is on the internet.
const NEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const NEWS_BACKEND_PORT: u16 = 8081;
/// Pods on another node (reached through the node's uplink here): one in
/// istio-system (the seed policy allows it), one in default (it does not).
const REMOTE_ALLOWED: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 10);
const REMOTE_DENIED: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 11);

fn services_yaml() -> String {
    let site = SimNode::INTERNET_V4;
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system}}
spec:
  clusterIP: {KUBE_DNS_VIP}
  ports: [{{name: dns, protocol: UDP, port: 53}}, {{name: dns-tcp, protocol: TCP, port: 53}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-x7k2p
  namespace: kube-system
  labels: {{kubernetes.io/service-name: kube-dns}}
addressType: IPv4
endpoints:
- addresses: [10.244.0.10]
  conditions: {{ready: true}}
ports: [{{name: dns, protocol: UDP, port: 53}}, {{name: dns-tcp, protocol: TCP, port: 53}}]
---
apiVersion: v1
kind: Service
metadata: {{name: news, namespace: default}}
spec:
  clusterIP: {NEWS_VIP}
  ports: [{{port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: news-1
  namespace: default
  labels: {{kubernetes.io/service-name: news}}
addressType: IPv4
endpoints:
- addresses: [{site}]
ports: [{{port: {NEWS_BACKEND_PORT}}}]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: istiod, namespace: istio-system, labels: {{app: istiod}}}}
spec: {{nodeName: node-b, addresses: [{REMOTE_ALLOWED}]}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: web, namespace: default, labels: {{app: web}}}}
spec: {{nodeName: node-b, addresses: [{REMOTE_DENIED}]}}
"#
    )
}

/// kube-proxy's iptables mode, reduced to its effect: DNAT of each
/// Service address and port to the (single) backend, in the node.
fn kube_proxy(node: &Netns) -> anyhow::Result<()> {
    let site = SimNode::INTERNET_V4;
    nft_script(
        node,
        &format!(
            "table ip sim-kube-proxy {{
               chain prerouting {{
                 type nat hook prerouting priority dstnat; policy accept;
                 ip daddr {KUBE_DNS_VIP} udp dport 53 dnat to 10.244.0.10:53
                 ip daddr {KUBE_DNS_VIP} tcp dport 53 dnat to 10.244.0.10:53
                 ip daddr {NEWS_VIP} tcp dport 80 dnat to {site}:{NEWS_BACKEND_PORT}
               }}
             }}"
        ),
    )
}

fn test_egress() -> ObjectId {
    id("test-egress/sleep")
}

fn kube_dns() -> ObjectId {
    id("kube-system/kube-dns")
}

struct Fixture {
    sim: SimNode,
    /// The news Service's backend, on the internet.
    news: Listener,
    remote_allowed: Listener,
    remote_denied: Listener,
}

fn fixture() -> anyhow::Result<Fixture> {
    let dir = std::env::temp_dir().join(integration_tests::names::unique("egress-svc"));
    fs::create_dir_all(&dir)?;
    for entry in fs::read_dir(seed_policies())? {
        let path = entry?.path();
        fs::copy(&path, dir.join(path.file_name().context("file name")?))?;
    }
    fs::write(dir.join("services.yaml"), services_yaml())?;
    let sim = SimNode::new(std::slice::from_ref(&dir))?;
    fs::remove_dir_all(&dir)?;
    kube_proxy(sim.node())?;
    let internet = sim.internet();
    for remote in [REMOTE_ALLOWED, REMOTE_DENIED] {
        internet.ip(&["addr", "add", &format!("{remote}/32"), "dev", "lo"])?;
    }
    let listen = |ip: Ipv4Addr, port| {
        Listener::start(internet, SocketAddr::new(IpAddr::V4(ip), port), Proto::Tcp)
    };
    Ok(Fixture {
        news: listen(SimNode::INTERNET_V4, NEWS_BACKEND_PORT)?,
        remote_allowed: listen(REMOTE_ALLOWED, 8080)?,
        remote_denied: listen(REMOTE_DENIED, 8080)?,
        sim,
    })
}

fn client<'a>(sim: &'a SimNode, who: &ObjectId) -> anyhow::Result<Client<'a>> {
    sim.client(who).with_context(|| format!("{who} is placed"))
}

fn vip(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// Without the agent, every path below works: the tests cannot pass
/// because the simulated kube-proxy is broken.
fn baseline(f: &Fixture) -> anyhow::Result<()> {
    let dns = client(&f.sim, &kube_dns())?;
    ensure!(
        dns.connect_tcp(vip(NEWS_VIP, 80))? == Outcome::Ok,
        "baseline: news"
    );
    ensure!(
        f.news.next_event(Duration::from_secs(3)).is_some(),
        "baseline: news arrived"
    );
    let sleep = client(&f.sim, &test_egress())?;
    for (listener, ip) in [
        (&f.remote_allowed, REMOTE_ALLOWED),
        (&f.remote_denied, REMOTE_DENIED),
    ] {
        ensure!(
            sleep.connect_tcp(vip(ip, 8080))? == Outcome::Ok,
            "baseline: {ip}"
        );
        ensure!(
            listener.next_event(Duration::from_secs(3)).is_some(),
            "baseline: {ip} arrived"
        );
    }
    Ok(())
}

#[test]
fn services_are_judged_by_their_backends_behind_a_kube_proxy() -> anyhow::Result<()> {
    require_root();
    let f = fixture()?;
    baseline(&f)?;
    let Fixture {
        sim,
        news,
        remote_allowed,
        remote_denied,
    } = f;
    let node = Running::start(sim, &[])?;

    // DNS through the kube-dns ClusterIP: the seed policy allows UDP/53 to
    // the kube-dns pods, and that is where the Service leads.
    let answer = node.lookup_through(&test_egress(), "edition.cnn.com", KUBE_DNS_VIP.into())?;
    let expected = node.sim.dns().records["edition.cnn.com"].clone();
    ensure!(
        expected.iter().all(|a| answer.contains(a)),
        "through {KUBE_DNS_VIP}: {answer:?}, expected {expected:?}"
    );
    // TCP/53 is the same Service, but the policy allows only UDP.
    let sleep = node.client(&test_egress())?;
    ensure!(sleep.connect_tcp(vip(KUBE_DNS_VIP, 53))? == Outcome::Eperm);

    // Pods on another node are peers: istio-system is allowed, default not.
    ensure!(sleep.connect_tcp(vip(REMOTE_ALLOWED, 8080))? == Outcome::Ok);
    ensure!(
        remote_allowed.next_event(ARRIVAL).is_some(),
        "istiod saw it"
    );
    ensure!(sleep.connect_tcp(vip(REMOTE_DENIED, 8080))? == Outcome::Eperm);
    ensure!(
        remote_denied.next_event(ARRIVAL).is_none(),
        "default/web saw nothing"
    );

    // A Service that leads to the internet is the gateway's alone, even
    // for a workload no NetworkPolicy selects.
    let dns = node.client(&kube_dns())?;
    ensure!(dns.connect_tcp(vip(NEWS_VIP, 80))? == Outcome::Eperm);
    ensure!(
        news.next_event(ARRIVAL).is_none(),
        "nothing reached the news site"
    );

    // explain names the Service and the backend it judged.
    let explain = Command::new(target_bin(
        "egress-agent",
        "CARGO_BIN_EXE_egress-agent",
        "cargo build -p egress-agent",
    ))
    .arg("explain")
    .arg(node.sim.policies_dir())
    .args([
        "--from",
        "kube-system/kube-dns",
        "--to",
        &format!("{NEWS_VIP}:80/tcp"),
    ])
    .output()?;
    let text = String::from_utf8_lossy(&explain.stdout);
    ensure!(text.contains("deny"), "{text}");
    ensure!(text.contains("Service default/news"), "{text}");
    ensure!(
        text.contains(&format!("{}:{NEWS_BACKEND_PORT}", SimNode::INTERNET_V4)),
        "{text}"
    );
    Ok(())
}

/// Without the nftables backstop, the kernel programs alone keep a
/// Service that leads outside closed (as under IPVS or an eBPF
/// kube-proxy, which a FORWARD backstop would not see).
#[test]
fn a_service_to_the_internet_stays_closed_without_the_backstop() -> anyhow::Result<()> {
    require_root();
    let f = fixture()?;
    baseline(&f)?;
    let news = f.news;
    let node = Running::start(f.sim, &["--no-nft"])?;
    ensure!(!node.sim.has_backstop_table(), "the backstop is off");
    for who in [kube_dns(), test_egress()] {
        let c = node.client(&who)?;
        ensure!(c.connect_tcp(vip(NEWS_VIP, 80))? == Outcome::Eperm, "{who}");
        ensure!(c.sendto(vip(NEWS_VIP, 80))? == Outcome::Eperm, "{who} UDP");
        ensure!(c.raw_udp(vip(NEWS_VIP, 80))? == Outcome::Eperm, "{who} raw");
    }
    ensure!(
        news.next_event(ARRIVAL).is_none(),
        "nothing reached the news site"
    );
    Ok(())
}
