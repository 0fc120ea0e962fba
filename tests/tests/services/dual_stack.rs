//! The seed made dual-stack (its pods and the node get IPv6 addresses, the
//! EgressGateway lists IPv6 pod and service ranges, as on a dual-stack
//! kubeadm cluster), with IPv6 and dual-stack Services behind a DNAT per
//! family: the IPv6 ClusterIP of a Service is judged by its IPv6
//! endpoints, the IPv4 one by its IPv4 endpoints, as kube-proxy sends
//! them; NodePorts are judged on the node's IPv6 address too.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{ensure, Context as _};
use integration_tests::{node::SimNode, Listener, Outcome, Proto};

use super::{
    apps_client, at, client, connects, explain, kube_dns, kube_proxy, nothing_reached,
    refused_every_way, says, sim_node, started, test_egress, Dnat, ARRIVAL,
};

/// Pods on another node, reached through the node's uplink: istiod (the
/// seed policy allows istio-system) and default/web (it does not).
const ISTIOD_POD: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(10, 244, 3, 10),
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 3, 0, 0, 0, 0x10),
);
const WEB_POD: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(10, 244, 3, 11),
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 3, 0, 0, 0, 0x11),
);
/// istiod's dual-stack Service: 443 to the pods' 8080, 15014 to 9090.
const ISTIOD_VIPS: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(10, 96, 0, 40),
    Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x40),
);
/// A second istiod Service, single-stack IPv6.
const ISTIOD_V6_ONLY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x42);
/// default/web's dual-stack Service: 80 (TCP and UDP) to the pods' 8080.
const WEB_VIPS: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(10, 96, 0, 41),
    Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x41),
);
/// A selector-less single-stack IPv6 Service whose endpoint is on the
/// internet.
const NEWS_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x99);
const NEWS_BACKEND_PORT: u16 = 8081;
/// This node's addresses (on the node's `lo`).
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
/// A port the node serves itself (a kubelet's).
const KUBELET: u16 = 10250;
/// NodePorts: to istiod, to default/web, to the news site.
const ISTIOD_NODE_PORT: u16 = 30443;
const WEB_NODE_PORT: u16 = 30080;
const NEWS_NODE_PORT: u16 = 30099;

/// The seed's pods and clusterCIDRs, dual-stack.
fn dual_stack(text: &str) -> String {
    text.replace(
        r#"addresses: ["10.244.2.10"]"#,
        r#"addresses: ["10.244.2.10", "fd00:10:244:2::10"]"#,
    )
    .replace(
        r#"addresses: ["10.244.0.10"]"#,
        r#"addresses: ["10.244.0.10", "fd00:10:244::10"]"#,
    )
    .replace(
        "  - 10.96.0.0/12    # services",
        "  - 10.96.0.0/12    # services\n  - fd00:10:244::/56\n  - fd00:10:96::/112",
    )
}

fn services_yaml() -> String {
    let (istiod4, istiod6) = ISTIOD_POD;
    let (web4, web6) = WEB_POD;
    let (istiod_vip4, istiod_vip6) = ISTIOD_VIPS;
    let (web_vip4, web_vip6) = WEB_VIPS;
    let site = SimNode::INTERNET_V6;
    format!(
        r#"apiVersion: v1
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
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: {istiod_vip4}
  clusterIPs: [{istiod_vip4}, "{istiod_vip6}"]
  ports:
  - {{name: https, protocol: TCP, port: 443, targetPort: 8080, nodePort: {ISTIOD_NODE_PORT}}}
  - {{name: metrics, protocol: TCP, port: 15014, targetPort: 9090}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: istiod-v4
  namespace: istio-system
  labels: {{kubernetes.io/service-name: istiod}}
addressType: IPv4
endpoints:
- addresses: [{istiod4}]
  conditions: {{ready: true}}
ports: [{{name: https, protocol: TCP, port: 8080}}, {{name: metrics, protocol: TCP, port: 9090}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: istiod-v6
  namespace: istio-system
  labels: {{kubernetes.io/service-name: istiod}}
addressType: IPv6
endpoints:
- addresses: ["{istiod6}"]
  conditions: {{ready: true}}
ports: [{{name: https, protocol: TCP, port: 8080}}, {{name: metrics, protocol: TCP, port: 9090}}]
---
apiVersion: v1
kind: Service
metadata: {{name: istiod-v6, namespace: istio-system}}
spec:
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: "{ISTIOD_V6_ONLY}"
  ports: [{{protocol: TCP, port: 443, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: istiod-v6-1
  namespace: istio-system
  labels: {{kubernetes.io/service-name: istiod-v6}}
addressType: IPv6
endpoints:
- addresses: ["{istiod6}"]
ports: [{{protocol: TCP, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [{web_vip4}, "{web_vip6}"]
  ports:
  - {{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: {WEB_NODE_PORT}}}
  - {{name: udp, protocol: UDP, port: 80, targetPort: 8080, nodePort: {WEB_NODE_PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v4
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [{web4}]
ports: [{{name: http, protocol: TCP, port: 8080}}, {{name: udp, protocol: UDP, port: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv6
endpoints:
- addresses: ["{web6}"]
ports: [{{name: http, protocol: TCP, port: 8080}}, {{name: udp, protocol: UDP, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: news, namespace: default}}
spec:
  type: NodePort
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: "{NEWS_VIP}"
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
addressType: IPv6
endpoints:
- addresses: ["{site}"]
ports:
- {{name: http, protocol: TCP, port: {NEWS_BACKEND_PORT}}}
- {{name: udp, protocol: UDP, port: {NEWS_BACKEND_PORT}}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: istiod, namespace: istio-system, labels: {{app: istiod}}}}
spec: {{nodeName: node-b, addresses: [{istiod4}, "{istiod6}"]}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: web, namespace: default, labels: {{app: web}}}}
spec: {{nodeName: node-b, addresses: [{web4}, "{web6}"]}}
---
# A pod whose policy was written for IPv4: istiod's IPv4 address at
# 8080, and the node's IPv6 address.
apiVersion: v1
kind: Namespace
metadata: {{name: apps}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: client, namespace: apps, labels: {{app: client}}}}
spec: {{cgroup: egress-demo/apps/client, addresses: [10.244.2.30, "fd00:10:244:2::30"]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: istiod-v4, namespace: apps}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: {istiod4}/32}}}}]
    ports: [{{protocol: TCP, port: 8080}}]
  - to: [{{ipBlock: {{cidr: "{NODE_IP6}/128"}}}}]
"#
    )
}

/// kube-proxy's rules for the Services above: iptables for the IPv4
/// addresses, ip6tables for the IPv6 ones.
fn dnat() -> Vec<Dnat> {
    let (tcp, udp) = (Proto::Tcp, Proto::Udp);
    let news = at(SimNode::INTERNET_V6, NEWS_BACKEND_PORT);
    let mut rules = Vec::new();
    let families: [[IpAddr; 4]; 2] = [
        [
            ISTIOD_VIPS.0.into(),
            WEB_VIPS.0.into(),
            ISTIOD_POD.0.into(),
            WEB_POD.0.into(),
        ],
        [
            ISTIOD_VIPS.1.into(),
            WEB_VIPS.1.into(),
            ISTIOD_POD.1.into(),
            WEB_POD.1.into(),
        ],
    ];
    for [istiod_vip, web_vip, istiod, web] in families {
        rules.extend([
            Dnat::new(at(istiod_vip, 443), tcp, at(istiod, 8080)),
            Dnat::new(at(istiod_vip, 15014), tcp, at(istiod, 9090)),
            Dnat::new(at(web_vip, 80), tcp, at(web, 8080)),
            Dnat::new(at(web_vip, 80), udp, at(web, 8080)),
        ]);
    }
    let (istiod6, web6) = (ISTIOD_POD.1, WEB_POD.1);
    rules.extend([
        Dnat::new(at(ISTIOD_V6_ONLY, 443), tcp, at(istiod6, 8080)),
        Dnat::new(at(NEWS_VIP, 80), tcp, news),
        Dnat::new(at(NEWS_VIP, 80), udp, news),
        Dnat::new(at(NODE_IP6, ISTIOD_NODE_PORT), tcp, at(istiod6, 8080)),
        Dnat::new(at(NODE_IP6, WEB_NODE_PORT), tcp, at(web6, 8080)),
        Dnat::new(at(NODE_IP6, WEB_NODE_PORT), udp, at(web6, 8080)),
        Dnat::new(at(NODE_IP6, NEWS_NODE_PORT), tcp, news),
        Dnat::new(at(NODE_IP6, NEWS_NODE_PORT), udp, news),
    ]);
    rules
}

/// One listener per family.
struct Pair {
    v4: Listener,
    v6: Listener,
}

struct Listeners {
    istiod: Pair,
    /// istiod's metrics port (15014 → 9090).
    istiod_metrics: Pair,
    web: Pair,
    /// web's UDP port, IPv6.
    web_udp6: Listener,
    /// The news Service's backend, on the internet (TCP and UDP).
    news: Listener,
    news_udp: Listener,
    /// The node's own ports on its IPv6 address.
    kubelet6: Listener,
    node_udp6: Listener,
}

fn fixture() -> anyhow::Result<(SimNode, Listeners)> {
    let sim = sim_node(dual_stack, &services_yaml())?;
    kube_proxy(sim.node(), &dnat())?;
    let node = sim.node();
    node.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
    let node6 = format!("{NODE_IP6}/128");
    node.ip(&["-6", "addr", "add", &node6, "dev", "lo"])?;
    let internet = sim.internet();
    for (v4, v6) in [ISTIOD_POD, WEB_POD] {
        internet.ip(&["addr", "add", &format!("{v4}/32"), "dev", "lo"])?;
        internet.ip(&["-6", "addr", "add", &format!("{v6}/128"), "dev", "lo"])?;
    }
    let pair = |(v4, v6): (Ipv4Addr, Ipv6Addr), port| -> anyhow::Result<Pair> {
        Ok(Pair {
            v4: Listener::start(internet, at(v4, port), Proto::Tcp)?,
            v6: Listener::start(internet, at(v6, port), Proto::Tcp)?,
        })
    };
    let news = at(SimNode::INTERNET_V6, NEWS_BACKEND_PORT);
    let listeners = Listeners {
        istiod: pair(ISTIOD_POD, 8080)?,
        istiod_metrics: pair(ISTIOD_POD, 9090)?,
        web: pair(WEB_POD, 8080)?,
        web_udp6: Listener::start(internet, at(WEB_POD.1, 8080), Proto::Udp)?,
        news: Listener::start(internet, news, Proto::Tcp)?,
        news_udp: Listener::start(internet, news, Proto::Udp)?,
        kubelet6: Listener::start(node, at(NODE_IP6, KUBELET), Proto::Tcp)?,
        node_udp6: Listener::start(node, at(NODE_IP6, WEB_NODE_PORT + 1), Proto::Udp)?,
    };
    Ok((sim, listeners))
}

/// Without the agent, every path below works, in both families: the
/// tests cannot pass because the simulated kube-proxy (or the node's
/// IPv6) is broken. The first packets also resolve neighbours on the way,
/// hence the longer wait here.
fn baseline(sim: &SimNode, l: &Listeners) -> anyhow::Result<()> {
    let first = Duration::from_secs(3);
    let sleep = client(sim, &test_egress())?;
    for (to, backend) in [
        (at(ISTIOD_VIPS.0, 443), &l.istiod.v4),
        (at(ISTIOD_VIPS.1, 443), &l.istiod.v6),
        (at(ISTIOD_VIPS.0, 15014), &l.istiod_metrics.v4),
        (at(ISTIOD_VIPS.1, 15014), &l.istiod_metrics.v6),
        (at(ISTIOD_V6_ONLY, 443), &l.istiod.v6),
        (at(WEB_VIPS.0, 80), &l.web.v4),
        (at(WEB_VIPS.1, 80), &l.web.v6),
        (at(NEWS_VIP, 80), &l.news),
        (at(NODE_IP6, ISTIOD_NODE_PORT), &l.istiod.v6),
        (at(NODE_IP6, WEB_NODE_PORT), &l.web.v6),
        (at(NODE_IP6, NEWS_NODE_PORT), &l.news),
        (at(NODE_IP6, KUBELET), &l.kubelet6),
    ] {
        connects(&sleep, to, backend, first).context("baseline")?;
    }
    for (to, backend) in [
        (at(NODE_IP6, WEB_NODE_PORT), &l.web_udp6),
        (at(NEWS_VIP, 80), &l.news_udp),
        (at(NODE_IP6, WEB_NODE_PORT + 1), &l.node_udp6),
    ] {
        ensure!(sleep.raw_udp(to)? == Outcome::Ok, "baseline: UDP {to}");
        let seen = backend.next_event(first);
        ensure!(seen.is_some(), "baseline: UDP {to} arrived");
    }
    // The other two pods have IPv6 too.
    for who in [kube_dns(), apps_client()] {
        let c = client(sim, &who)?;
        connects(&c, at(NODE_IP6, KUBELET), &l.kubelet6, first)
            .with_context(|| format!("baseline: {who}"))?;
    }
    Ok(())
}

#[test]
fn ipv6_and_dual_stack_cluster_ips_are_judged_by_their_own_familys_backends() -> anyhow::Result<()>
{
    let (node, l) = started(fixture, baseline, &[])?;

    // test-egress/sleep: its policy allows istio-system, not default.
    let sleep = node.client(&test_egress())?;
    for (to, backend) in [
        (at(ISTIOD_VIPS.0, 443), &l.istiod.v4),
        (at(ISTIOD_VIPS.1, 443), &l.istiod.v6),
        (at(ISTIOD_V6_ONLY, 443), &l.istiod.v6),
    ] {
        connects(&sleep, to, backend, ARRIVAL)?;
    }
    ensure!(sleep.connect_tcp(at(WEB_VIPS.0, 80))? == Outcome::Eperm);
    refused_every_way(&sleep, at(WEB_VIPS.1, 80))?;
    nothing_reached(&[&l.web.v4, &l.web.v6])?;

    // apps/client: its policy names istiod's IPv4 address at 8080 only.
    // The IPv4 ClusterIP leads there (IPv4 goes to IPv4 endpoints alone);
    // the IPv6 one leads to an address the policy does not name, and the
    // metrics port to a target port it does not allow.
    let apps = node.client(&apps_client())?;
    connects(&apps, at(ISTIOD_VIPS.0, 443), &l.istiod.v4, ARRIVAL)?;
    for to in [
        at(ISTIOD_VIPS.1, 443),
        at(ISTIOD_V6_ONLY, 443),
        at(ISTIOD_VIPS.0, 15014),
        at(ISTIOD_VIPS.1, 15014),
    ] {
        ensure!(apps.connect_tcp(to)? == Outcome::Eperm, "{to}");
    }
    let metrics = &l.istiod_metrics;
    nothing_reached(&[&l.istiod.v6, &metrics.v4, &metrics.v6])?;

    // kube-dns (no policy selects it) reaches the Services inside, in
    // either family, but not the one whose IPv6 endpoint is outside; nor
    // does test-egress/sleep.
    let dns = node.client(&kube_dns())?;
    connects(&dns, at(WEB_VIPS.1, 80), &l.web.v6, ARRIVAL)?;
    for c in [&dns, &sleep] {
        refused_every_way(c, at(NEWS_VIP, 80))?;
    }
    nothing_reached(&[&l.news, &l.news_udp])?;

    // explain names the Service and the backend of the flow's family.
    let (istiod4, istiod6) = ISTIOD_POD;
    let vip6 = ISTIOD_VIPS.1;
    let text = explain(&node, "apps/client", &format!("[{vip6}]:443/tcp"))?;
    says(
        &text,
        &[
            ": deny",
            &format!("Service istio-system/istiod port \"https\" (ClusterIP [{vip6}]:443/tcp)"),
            &format!("backend [{istiod6}]:8080: deny"),
        ],
    )?;
    ensure!(!text.contains(&istiod4.to_string()), "{text}");
    let to = format!("[{NEWS_VIP}]:80/tcp");
    let text = explain(&node, "kube-system/kube-dns", &to)?;
    let site = SimNode::INTERNET_V6;
    says(
        &text,
        &[
            "gateway exclusivity",
            "Service default/news",
            &format!("backend [{site}]:{NEWS_BACKEND_PORT}"),
        ],
    )
}

/// NodePorts on the node's IPv6 address: judged by the Service's IPv6
/// backends, on connect and per packet, while the node's own ports keep
/// the node's verdict.
#[test]
fn node_ports_on_the_nodes_ipv6_address_are_judged_by_their_backends() -> anyhow::Result<()> {
    let (node, l) = started(fixture, baseline, &[])?;

    // test-egress/sleep: istio-system is allowed, the node is not.
    let sleep = node.client(&test_egress())?;
    connects(
        &sleep,
        at(NODE_IP6, ISTIOD_NODE_PORT),
        &l.istiod.v6,
        ARRIVAL,
    )?;
    ensure!(sleep.connect_tcp(at(NODE_IP6, KUBELET))? == Outcome::Eperm);
    ensure!(sleep.connect_tcp(at(NODE_IP6, WEB_NODE_PORT))? == Outcome::Eperm);

    // apps/client: the node's IPv6 address is allowed; the NodePorts to
    // backends whose IPv6 address the policy does not name are not.
    let apps = node.client(&apps_client())?;
    connects(&apps, at(NODE_IP6, KUBELET), &l.kubelet6, ARRIVAL)?;
    refused_every_way(&apps, at(NODE_IP6, WEB_NODE_PORT))?;
    ensure!(apps.connect_tcp(at(NODE_IP6, ISTIOD_NODE_PORT))? == Outcome::Eperm);
    nothing_reached(&[&l.web.v6, &l.web_udp6, &l.istiod.v6])?;
    ensure!(apps.raw_udp(at(NODE_IP6, WEB_NODE_PORT + 1))? == Outcome::Ok);
    ensure!(
        l.node_udp6.next_event(ARRIVAL).is_some(),
        "the node's own UDP port got the datagram"
    );

    // kube-dns: the NodePort that leads to the internet is the gateway's
    // alone, though the node's address is inside and its other ports open.
    let dns = node.client(&kube_dns())?;
    refused_every_way(&dns, at(NODE_IP6, NEWS_NODE_PORT))?;
    nothing_reached(&[&l.news, &l.news_udp])?;
    connects(&dns, at(NODE_IP6, KUBELET), &l.kubelet6, ARRIVAL)?;

    // explain names the Service behind the IPv6 NodePort and its backend.
    let to = format!("[{NODE_IP6}]:{WEB_NODE_PORT}/tcp");
    let text = explain(&node, "apps/client", &to)?;
    says(
        &text,
        &[
            ": deny",
            &format!("Service default/web port \"http\" (NodePort {})", &to),
            &format!("backend [{}]:8080: deny", WEB_POD.1),
        ],
    )
}

/// Without the nftables backstop, the kernel programs alone keep the IPv6
/// Service that leads outside closed, through its ClusterIP and its
/// NodePort.
#[test]
fn an_ipv6_service_to_the_internet_stays_closed_without_the_backstop() -> anyhow::Result<()> {
    let (node, l) = started(fixture, baseline, &["--no-nft"])?;
    ensure!(!node.sim.has_backstop_table(), "the backstop is off");
    for who in [kube_dns(), test_egress()] {
        let c = node.client(&who)?;
        for to in [at(NEWS_VIP, 80), at(NODE_IP6, NEWS_NODE_PORT)] {
            refused_every_way(&c, to).with_context(|| format!("{who}"))?;
        }
    }
    nothing_reached(&[&l.news, &l.news_udp])?;
    Ok(())
}
