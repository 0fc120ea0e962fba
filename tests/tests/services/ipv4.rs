//! The seed cluster, IPv4 alone: a kube-dns Service (real DNS answers
//! through its ClusterIP), a selector-less Service that points at the
//! internet, NodePorts on the node's address, external and load balancer
//! IPs, and pods on another node.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{ensure, Context as _};
use integration_tests::{node::SimNode, Listener, Outcome, Proto};

use super::{
    apps_client, at, client, connects, explain, kube_dns, kube_proxy, nothing_reached,
    refused_every_way, says, sim_node, started, test_egress, Dnat, ARRIVAL,
};

/// kube-dns's ClusterIP, as kubeadm and kind give it.
const KUBE_DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The kube-dns pod (the seed's).
const KUBE_DNS_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
/// A selector-less Service whose only endpoint is on the internet.
const NEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const NEWS_BACKEND_PORT: u16 = 8081;
/// Pods on another node (reached through the node's uplink here): one in
/// istio-system (the seed policy allows it), one in default (it does not).
const REMOTE_ALLOWED: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 10);
const REMOTE_DENIED: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 11);
/// This node's address, as its Node object lists it (on the node's `lo`).
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
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
- addresses: [{KUBE_DNS_POD}]
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

/// kube-proxy's rules for the Services above.
fn dnat() -> Vec<Dnat> {
    let news = at(SimNode::INTERNET_V4, NEWS_BACKEND_PORT);
    let (tcp, udp) = (Proto::Tcp, Proto::Udp);
    vec![
        Dnat::new(at(KUBE_DNS_VIP, 53), udp, at(KUBE_DNS_POD, 53)),
        Dnat::new(at(KUBE_DNS_VIP, 53), tcp, at(KUBE_DNS_POD, 53)),
        Dnat::new(at(NEWS_VIP, 80), tcp, news),
        Dnat::new(at(NEWS_EXTERNAL_IP, 80), tcp, news),
        Dnat::new(at(ISTIOD_EXTERNAL_IP, 443), tcp, at(REMOTE_ALLOWED, 8080)),
        Dnat::new(at(ISTIOD_LB_IP, 443), tcp, at(REMOTE_ALLOWED, 8080)),
        Dnat::new(at(NODE_IP, NEWS_NODE_PORT), tcp, news),
        Dnat::new(at(NODE_IP, NEWS_NODE_PORT), udp, news),
        Dnat::new(at(NODE_IP, ISTIOD_NODE_PORT), tcp, at(REMOTE_ALLOWED, 8080)),
        Dnat::new(at(NODE_IP, WEB_NODE_PORT), tcp, at(REMOTE_DENIED, 8080)),
        Dnat::new(at(NODE_IP, WEB_NODE_PORT), udp, at(REMOTE_DENIED, 8080)),
    ]
}

struct Listeners {
    /// The news Service's backend, on the internet.
    news: Listener,
    remote_allowed: Listener,
    remote_denied: Listener,
    /// The node's own port, on its own address.
    kubelet: Listener,
    /// UDP on the node's address, at a port that is no NodePort.
    node_udp: Listener,
}

fn fixture() -> anyhow::Result<(SimNode, Listeners)> {
    let sim = sim_node(str::to_owned, &services_yaml())?;
    kube_proxy(sim.node(), &dnat())?;
    sim.node()
        .ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
    let internet = sim.internet();
    for remote in [REMOTE_ALLOWED, REMOTE_DENIED] {
        internet.ip(&["addr", "add", &format!("{remote}/32"), "dev", "lo"])?;
    }
    let listen = |ip: Ipv4Addr, port| Listener::start(internet, at(ip, port), Proto::Tcp);
    let listeners = Listeners {
        news: listen(SimNode::INTERNET_V4, NEWS_BACKEND_PORT)?,
        remote_allowed: listen(REMOTE_ALLOWED, 8080)?,
        remote_denied: listen(REMOTE_DENIED, 8080)?,
        kubelet: Listener::start(sim.node(), at(NODE_IP, KUBELET), Proto::Tcp)?,
        node_udp: Listener::start(sim.node(), at(NODE_IP, WEB_NODE_PORT + 1), Proto::Udp)?,
    };
    Ok((sim, listeners))
}

/// Without the agent, every path below works: the tests cannot pass
/// because the simulated kube-proxy is broken.
fn baseline(sim: &SimNode, l: &Listeners) -> anyhow::Result<()> {
    let first = Duration::from_secs(3);
    let dns = client(sim, &kube_dns())?;
    connects(&dns, at(NEWS_VIP, 80), &l.news, first).context("baseline")?;
    let sleep = client(sim, &test_egress())?;
    for (backend, to) in [
        (&l.remote_allowed, at(REMOTE_ALLOWED, 8080)),
        (&l.remote_denied, at(REMOTE_DENIED, 8080)),
        (&l.remote_allowed, at(NODE_IP, ISTIOD_NODE_PORT)),
        (&l.remote_denied, at(NODE_IP, WEB_NODE_PORT)),
        (&l.remote_allowed, at(ISTIOD_EXTERNAL_IP, 443)),
        (&l.remote_allowed, at(ISTIOD_LB_IP, 443)),
        (&l.news, at(NODE_IP, NEWS_NODE_PORT)),
        (&l.kubelet, at(NODE_IP, KUBELET)),
    ] {
        connects(&sleep, to, backend, first).context("baseline")?;
    }
    ensure!(
        sleep.raw_udp(at(NODE_IP, WEB_NODE_PORT + 1))? == Outcome::Ok,
        "baseline: UDP to the node"
    );
    ensure!(
        l.node_udp.next_event(first).is_some(),
        "baseline: UDP to the node arrived"
    );
    Ok(())
}

#[test]
fn services_are_judged_by_their_backends_behind_a_kube_proxy() -> anyhow::Result<()> {
    let (
        node,
        Listeners {
            news,
            remote_allowed,
            remote_denied,
            ..
        },
    ) = started(fixture, baseline, &[])?;

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
    ensure!(sleep.connect_tcp(at(KUBE_DNS_VIP, 53))? == Outcome::Eperm);

    // Pods on another node are peers: istio-system is allowed, default not.
    connects(&sleep, at(REMOTE_ALLOWED, 8080), &remote_allowed, ARRIVAL)?;
    ensure!(sleep.connect_tcp(at(REMOTE_DENIED, 8080))? == Outcome::Eperm);
    nothing_reached(&[&remote_denied])?;

    // A Service that leads to the internet is the gateway's alone, even
    // for a workload no NetworkPolicy selects.
    let dns = node.client(&kube_dns())?;
    ensure!(dns.connect_tcp(at(NEWS_VIP, 80))? == Outcome::Eperm);
    nothing_reached(&[&news])?;

    // explain names the Service and the backend it judged.
    let text = explain(&node, "kube-system/kube-dns", &format!("{NEWS_VIP}:80/tcp"))?;
    let site = SimNode::INTERNET_V4;
    says(
        &text,
        &[
            "deny",
            "Service default/news",
            &format!("{site}:{NEWS_BACKEND_PORT}"),
        ],
    )
}

/// A NodePort is the Service's port on the node's address: judged by its
/// backends, while the node's own ports keep the node's verdict; external
/// and load balancer IPs are judged by their backends too.
#[test]
fn node_ports_external_and_load_balancer_ips_are_judged_by_their_backends() -> anyhow::Result<()> {
    let (
        node,
        Listeners {
            news,
            remote_allowed,
            remote_denied,
            kubelet,
            node_udp,
        },
    ) = started(fixture, baseline, &[])?;

    // test-egress/sleep: its policy allows istio-system, not the node. The
    // NodePort to istiod is allowed (an allow inside a denied address),
    // the node's own port is not, nor the NodePort to default/web.
    let sleep = node.client(&test_egress())?;
    connects(
        &sleep,
        at(NODE_IP, ISTIOD_NODE_PORT),
        &remote_allowed,
        ARRIVAL,
    )?;
    ensure!(sleep.connect_tcp(at(NODE_IP, KUBELET))? == Outcome::Eperm);
    ensure!(sleep.connect_tcp(at(NODE_IP, WEB_NODE_PORT))? == Outcome::Eperm);
    // External and load balancer IPs lead to istiod too.
    for ip in [ISTIOD_EXTERNAL_IP, ISTIOD_LB_IP] {
        connects(&sleep, at(ip, 443), &remote_allowed, ARRIVAL)?;
        ensure!(sleep.connect_tcp(at(ip, 80))? == Outcome::Eperm, "{ip}:80");
    }

    // apps/client: its policy allows the node's address and nothing else.
    // The node's ports are open to it, the NodePort to a backend it may
    // not reach is not (a deny inside an allowed address), on connect and
    // per packet.
    let apps = node.client(&apps_client())?;
    connects(&apps, at(NODE_IP, KUBELET), &kubelet, ARRIVAL)?;
    refused_every_way(&apps, at(NODE_IP, WEB_NODE_PORT))?;
    nothing_reached(&[&remote_denied])?;
    ensure!(apps.raw_udp(at(NODE_IP, WEB_NODE_PORT + 1))? == Outcome::Ok);
    ensure!(
        node_udp.next_event(ARRIVAL).is_some(),
        "the node's own UDP port got the datagram"
    );

    // kube-dns (no policy selects it): a NodePort that leads to the
    // internet is the gateway's alone, though the node's address is
    // inside the cluster and its other ports stay open.
    let dns = node.client(&kube_dns())?;
    ensure!(dns.connect_tcp(at(NODE_IP, NEWS_NODE_PORT))? == Outcome::Eperm);
    ensure!(dns.raw_udp(at(NODE_IP, NEWS_NODE_PORT))? == Outcome::Eperm);
    ensure!(dns.connect_tcp(at(NEWS_EXTERNAL_IP, 80))? == Outcome::Eperm);
    nothing_reached(&[&news])?;
    connects(&dns, at(NODE_IP, KUBELET), &kubelet, ARRIVAL)?;
    // An external IP's Service port whose backends are inside is inside;
    // the address's other ports are whoever owns it on the internet.
    connects(&dns, at(ISTIOD_EXTERNAL_IP, 443), &remote_allowed, ARRIVAL)?;
    ensure!(dns.connect_tcp(at(ISTIOD_EXTERNAL_IP, 80))? == Outcome::Eperm);

    // explain names the Service behind the NodePort and the backend.
    let to = format!("{NODE_IP}:{WEB_NODE_PORT}/tcp");
    let text = explain(&node, "apps/client", &to)?;
    says(
        &text,
        &[
            ": deny",
            &format!("Service default/web port \"http\" (NodePort {to})"),
            &format!("backend {REMOTE_DENIED}:8080: deny"),
        ],
    )
}

/// Without the nftables backstop, the kernel programs alone keep a
/// Service that leads outside closed (as under IPVS or an eBPF
/// kube-proxy, which a FORWARD backstop would not see).
#[test]
fn a_service_to_the_internet_stays_closed_without_the_backstop() -> anyhow::Result<()> {
    let (node, Listeners { news, .. }) = started(fixture, baseline, &["--no-nft"])?;
    ensure!(!node.sim.has_backstop_table(), "the backstop is off");
    for who in [kube_dns(), test_egress()] {
        let c = node.client(&who)?;
        for to in [
            at(NEWS_VIP, 80),
            at(NEWS_EXTERNAL_IP, 80),
            at(NODE_IP, NEWS_NODE_PORT),
        ] {
            refused_every_way(&c, to).with_context(|| format!("{who}"))?;
        }
    }
    nothing_reached(&[&news])?;
    Ok(())
}
