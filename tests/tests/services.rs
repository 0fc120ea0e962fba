//! Services on a node with a kube-proxy: the seed cluster with a kube-dns
//! Service, a selector-less Service that points at the internet, and pods
//! on another node, with an nft DNAT in the node namespace standing in for
//! kube-proxy's iptables rules. The cgroup hooks see the Service address
//! (the DNAT happens later, on the node), so these prove that a Service is
//! judged by its backends, with real connections, real DNS answers and a
//! listener on the far side: through ClusterIPs, NodePorts on the node's
//! own address (beside a port the node itself serves), external IPs and
//! load balancer IPs.

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
/// This node's address, as its Node object lists it (on the node's `lo`);
/// the IPv6 one is listed but not configured (refusals only).
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const NODE_IP6: &str = "fd00:18::2";
/// A port the node serves itself (a kubelet's).
const KUBELET: u16 = 10250;
/// NodePorts: to istiod (the seed policy allows istio-system), to
/// default/web (it does not), to the news site (outside the cluster).
const ISTIOD_NODE_PORT: u16 = 30443;
const WEB_NODE_PORT: u16 = 30080;
const NEWS_NODE_PORT: u16 = 30099;
/// istiod's Service's external IP and load balancer IP; the news
/// Service's external IP.
const ISTIOD_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const ISTIOD_LB_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 60);
const NEWS_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 70);

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
  type: NodePort
  clusterIP: {NEWS_VIP}
  externalIPs: [{NEWS_EXTERNAL_IP}]
  ports:
  - {{name: http, protocol: TCP, port: 80, nodePort: {NEWS_NODE_PORT}}}
  - {{name: udp, protocol: UDP, port: 80, nodePort: {NEWS_NODE_PORT}}}
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
ports:
- {{name: http, protocol: TCP, port: {NEWS_BACKEND_PORT}}}
- {{name: udp, protocol: UDP, port: {NEWS_BACKEND_PORT}}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status:
  addresses:
  - {{type: InternalIP, address: {NODE_IP}}}
  - {{type: InternalIP, address: "{NODE_IP6}"}}
---
apiVersion: v1
kind: Service
metadata: {{name: istiod, namespace: istio-system}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.30
  externalIPs: [{ISTIOD_EXTERNAL_IP}]
  ports: [{{protocol: TCP, port: 443, nodePort: {ISTIOD_NODE_PORT}}}]
status:
  loadBalancer: {{ingress: [{{ip: {ISTIOD_LB_IP}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: istiod-1
  namespace: istio-system
  labels: {{kubernetes.io/service-name: istiod}}
addressType: IPv4
endpoints:
- addresses: [{REMOTE_ALLOWED}]
ports: [{{protocol: TCP, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.0.31
  ports:
  - {{name: http, protocol: TCP, port: 80, nodePort: {WEB_NODE_PORT}}}
  - {{name: udp, protocol: UDP, port: 80, nodePort: {WEB_NODE_PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [{REMOTE_DENIED}]
ports:
- {{name: http, protocol: TCP, port: 8080}}
- {{name: udp, protocol: UDP, port: 8080}}
---
# A pod whose policy allows the node's address, and nothing else.
apiVersion: v1
kind: Namespace
metadata: {{name: apps}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: client, namespace: apps, labels: {{app: client}}}}
spec: {{cgroup: egress-demo/apps/client, addresses: [10.244.2.30]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: node-only, namespace: apps}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: {NODE_IP}/32}}}}]
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
/// Service address and port, and of each NodePort on the node's address,
/// to the (single) backend, in the node.
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
                 ip daddr {{ {NEWS_VIP}, {NEWS_EXTERNAL_IP} }} tcp dport 80 dnat to {site}:{NEWS_BACKEND_PORT}
                 ip daddr {{ {ISTIOD_EXTERNAL_IP}, {ISTIOD_LB_IP} }} tcp dport 443 dnat to {REMOTE_ALLOWED}:8080
                 ip daddr {NODE_IP} tcp dport {NEWS_NODE_PORT} dnat to {site}:{NEWS_BACKEND_PORT}
                 ip daddr {NODE_IP} udp dport {NEWS_NODE_PORT} dnat to {site}:{NEWS_BACKEND_PORT}
                 ip daddr {NODE_IP} tcp dport {ISTIOD_NODE_PORT} dnat to {REMOTE_ALLOWED}:8080
                 ip daddr {NODE_IP} tcp dport {WEB_NODE_PORT} dnat to {REMOTE_DENIED}:8080
                 ip daddr {NODE_IP} udp dport {WEB_NODE_PORT} dnat to {REMOTE_DENIED}:8080
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

fn apps_client() -> ObjectId {
    id("apps/client")
}

struct Fixture {
    sim: SimNode,
    /// The news Service's backend, on the internet.
    news: Listener,
    remote_allowed: Listener,
    remote_denied: Listener,
    /// The node's own port, on its own address.
    kubelet: Listener,
    /// UDP on the node's address, at a port that is no NodePort.
    node_udp: Listener,
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
    sim.node()
        .ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
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
        kubelet: Listener::start(sim.node(), vip(NODE_IP, KUBELET), Proto::Tcp)?,
        node_udp: Listener::start(sim.node(), vip(NODE_IP, WEB_NODE_PORT + 1), Proto::Udp)?,
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
    for (listener, to) in [
        (&f.remote_allowed, vip(REMOTE_ALLOWED, 8080)),
        (&f.remote_denied, vip(REMOTE_DENIED, 8080)),
        (&f.remote_allowed, vip(NODE_IP, ISTIOD_NODE_PORT)),
        (&f.remote_denied, vip(NODE_IP, WEB_NODE_PORT)),
        (&f.remote_allowed, vip(ISTIOD_EXTERNAL_IP, 443)),
        (&f.remote_allowed, vip(ISTIOD_LB_IP, 443)),
        (&f.news, vip(NODE_IP, NEWS_NODE_PORT)),
        (&f.kubelet, vip(NODE_IP, KUBELET)),
    ] {
        ensure!(sleep.connect_tcp(to)? == Outcome::Ok, "baseline: {to}");
        ensure!(
            listener.next_event(Duration::from_secs(3)).is_some(),
            "baseline: {to} arrived"
        );
    }
    ensure!(
        sleep.raw_udp(vip(NODE_IP, WEB_NODE_PORT + 1))? == Outcome::Ok,
        "baseline: UDP to the node"
    );
    ensure!(
        f.node_udp.next_event(Duration::from_secs(3)).is_some(),
        "baseline: UDP to the node arrived"
    );
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
        ..
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

/// A NodePort is the Service's port on the node's address: judged by its
/// backends, while the node's own ports keep the node's verdict; external
/// and load balancer IPs are judged by their backends too.
#[test]
fn node_ports_external_and_load_balancer_ips_are_judged_by_their_backends() -> anyhow::Result<()> {
    require_root();
    let f = fixture()?;
    baseline(&f)?;
    let Fixture {
        sim,
        news,
        remote_allowed,
        remote_denied,
        kubelet,
        node_udp,
    } = f;
    let node = Running::start(sim, &[])?;

    // test-egress/sleep: its policy allows istio-system, not the node. The
    // NodePort to istiod is allowed (an allow inside a denied address),
    // the node's own port is not, nor the NodePort to default/web.
    let sleep = node.client(&test_egress())?;
    ensure!(sleep.connect_tcp(vip(NODE_IP, ISTIOD_NODE_PORT))? == Outcome::Ok);
    ensure!(
        remote_allowed.next_event(ARRIVAL).is_some(),
        "istiod saw the NodePort connection"
    );
    ensure!(sleep.connect_tcp(vip(NODE_IP, KUBELET))? == Outcome::Eperm);
    ensure!(sleep.connect_tcp(vip(NODE_IP, WEB_NODE_PORT))? == Outcome::Eperm);
    let node6 = |port| SocketAddr::new(NODE_IP6.parse().expect("IPv6"), port);
    ensure!(sleep.connect_tcp(node6(KUBELET))? == Outcome::Eperm, "IPv6");
    ensure!(
        sleep.connect_tcp(node6(WEB_NODE_PORT))? == Outcome::Eperm,
        "IPv6"
    );
    // External and load balancer IPs lead to istiod too.
    for ip in [ISTIOD_EXTERNAL_IP, ISTIOD_LB_IP] {
        ensure!(sleep.connect_tcp(vip(ip, 443))? == Outcome::Ok, "{ip}");
        ensure!(remote_allowed.next_event(ARRIVAL).is_some(), "{ip} arrived");
        ensure!(sleep.connect_tcp(vip(ip, 80))? == Outcome::Eperm, "{ip}:80");
    }

    // apps/client: its policy allows the node's address and nothing else.
    // The node's ports are open to it, the NodePort to a backend it may
    // not reach is not (a deny inside an allowed address), on connect and
    // per packet.
    let apps = node.client(&apps_client())?;
    ensure!(apps.connect_tcp(vip(NODE_IP, KUBELET))? == Outcome::Ok);
    ensure!(kubelet.next_event(ARRIVAL).is_some(), "the kubelet saw it");
    ensure!(apps.connect_tcp(vip(NODE_IP, WEB_NODE_PORT))? == Outcome::Eperm);
    ensure!(apps.sendto(vip(NODE_IP, WEB_NODE_PORT))? == Outcome::Eperm);
    ensure!(apps.raw_udp(vip(NODE_IP, WEB_NODE_PORT))? == Outcome::Eperm);
    ensure!(
        remote_denied.next_event(ARRIVAL).is_none(),
        "default/web saw nothing"
    );
    ensure!(apps.raw_udp(vip(NODE_IP, WEB_NODE_PORT + 1))? == Outcome::Ok);
    ensure!(
        node_udp.next_event(ARRIVAL).is_some(),
        "the node's own UDP port got the datagram"
    );

    // kube-dns (no policy selects it): a NodePort that leads to the
    // internet is the gateway's alone, though the node's address is
    // inside the cluster and its other ports stay open.
    let dns = node.client(&kube_dns())?;
    ensure!(dns.connect_tcp(vip(NODE_IP, NEWS_NODE_PORT))? == Outcome::Eperm);
    ensure!(dns.raw_udp(vip(NODE_IP, NEWS_NODE_PORT))? == Outcome::Eperm);
    ensure!(
        dns.connect_tcp(node6(NEWS_NODE_PORT))? == Outcome::Eperm,
        "IPv6"
    );
    ensure!(dns.connect_tcp(vip(NEWS_EXTERNAL_IP, 80))? == Outcome::Eperm);
    ensure!(
        news.next_event(ARRIVAL).is_none(),
        "nothing reached the news site"
    );
    ensure!(dns.connect_tcp(vip(NODE_IP, KUBELET))? == Outcome::Ok);
    ensure!(kubelet.next_event(ARRIVAL).is_some(), "the kubelet saw it");
    // An external IP's Service port whose backends are inside is inside;
    // the address's other ports are whoever owns it on the internet.
    ensure!(dns.connect_tcp(vip(ISTIOD_EXTERNAL_IP, 443))? == Outcome::Ok);
    ensure!(
        remote_allowed.next_event(ARRIVAL).is_some(),
        "istiod saw it"
    );
    ensure!(dns.connect_tcp(vip(ISTIOD_EXTERNAL_IP, 80))? == Outcome::Eperm);

    // explain names the Service behind the NodePort and the backend.
    let explain = Command::new(target_bin(
        "egress-agent",
        "CARGO_BIN_EXE_egress-agent",
        "cargo build -p egress-agent",
    ))
    .arg("explain")
    .arg(node.sim.policies_dir())
    .args([
        "--from",
        "apps/client",
        "--to",
        &format!("{NODE_IP}:{WEB_NODE_PORT}/tcp"),
    ])
    .output()?;
    let text = String::from_utf8_lossy(&explain.stdout);
    ensure!(text.contains(": deny"), "{text}");
    ensure!(
        text.contains(&format!(
            "Service default/web port \"http\" (NodePort {NODE_IP}:{WEB_NODE_PORT}/tcp)"
        )),
        "{text}"
    );
    ensure!(
        text.contains(&format!("backend {REMOTE_DENIED}:8080: deny")),
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
        for to in [
            vip(NEWS_VIP, 80),
            vip(NEWS_EXTERNAL_IP, 80),
            vip(NODE_IP, NEWS_NODE_PORT),
        ] {
            ensure!(c.connect_tcp(to)? == Outcome::Eperm, "{who} → {to}");
            ensure!(c.sendto(to)? == Outcome::Eperm, "{who} → {to} UDP");
            ensure!(c.raw_udp(to)? == Outcome::Eperm, "{who} → {to} raw");
        }
    }
    ensure!(
        news.next_event(ARRIVAL).is_none(),
        "nothing reached the news site"
    );
    Ok(())
}
