//! The image, checked against `compile::decide`: a model of the programs'
//! lookups over the image must give decide's verdict for every destination.

use std::{collections::BTreeMap, net::IpAddr};

use egress_common::{host_ports, PolicyInfo, PortEntry, Reason, EMPTY_SET, NO_RULE};
use ipnet::IpNet;

use super::*;
use crate::compile::{self, Destination, Verdict};
use egress_policy::{ports::Protocol, Source};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {cgroup: /root/prod/client/, addresses: [10.1.0.9]}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  cgroup: root/prod/web
  addresses: [10.1.0.1, "fd00:1::1"]
  ports: [{name: http, port: 8080}, {name: metrics, port: 9090, protocol: UDP}]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: gw, namespace: prod, labels: {app: gw}}
spec: {cgroup: root/prod/gw, addresses: [10.3.0.1]}
"#;

fn plan(extra: &[&str]) -> Plan {
    let mut text = BASE.to_owned();
    for o in extra {
        text.push_str("\n---\n");
        text.push_str(o);
    }
    let loaded = match egress_policy::load_sources(&[Source::new("image.yaml", text)]) {
        Ok(l) => l,
        Err(e) => panic!("test policy invalid: {:#?}", e.diagnostics),
    };
    compile::compile(&loaded.model)
}

fn ids(plan: &Plan) -> BTreeMap<ObjectId, u64> {
    plan.workloads
        .iter()
        .enumerate()
        .map(|(i, w)| (w.id.clone(), 100 + i as u64))
        .collect()
}

fn build(plan: &Plan, resolved: &[(&str, &[&str])]) -> MapImage {
    let resolved = resolved
        .iter()
        .map(|(name, addrs)| {
            (
                (*name).to_owned(),
                addrs.iter().map(|a| a.parse().unwrap()).collect(),
            )
        })
        .collect();
    MapImage::build(plan, &ids(plan), &resolved, false).expect("image builds")
}

const CLIENT_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 172.16.0.0/12, except: [172.16.5.0/24]}}]
    ports: [{port: 443}, {port: 8000, endPort: 8100}]
  - to: [{ipBlock: {cidr: 172.16.5.128/25}}]
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}, {port: metrics, protocol: UDP}]
  - to: [{ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:bad::/48"]}}]
    ports: [{port: 53, protocol: UDP}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"#;

const GATEWAY: &str = r#"
apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {name: egress, namespace: prod}
spec:
  selector: {podSelector: {matchLabels: {app: gw}}}
  clusterCIDRs: [10.0.0.0/8, "fd00::/8"]
  allowedHosts:
  - host: registry.example
    ports: [443]
  - host: 203.0.113.0/24
  - host: mirror.example
    ports: [80, {port: 53, protocol: UDP}]
  - host: nowhere.example
"#;

/// The programs' lookups, over the image: a longest-prefix match in a list
/// of (prefix, value), then the first matching port entry of the value's
/// set; or, for a flagged value, its host table first (as `decide.rs`).
fn simulate(image: &MapImage, workload: &ImageWorkload, dst: Destination) -> (bool, Reason, u32) {
    fn lpm<T: Copy>(entries: &[(IpNet, T)], ip: IpAddr) -> Option<T> {
        entries
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, set)| *set)
    }
    let proto = dst.protocol.number();
    let first_match = |set: Option<u32>| -> Option<u32> {
        let set = set.filter(|s| *s != EMPTY_SET)?;
        let entries = &image.port_sets()[set as usize - 1];
        entries
            .iter()
            .find(|e| e.matches(proto, dst.port))
            .map(|e| e.rule)
    };
    let all = |v4: &[(ipnet::Ipv4Net, u32)], v6: &[(ipnet::Ipv6Net, u32)]| -> Vec<(IpNet, u32)> {
        v4.iter()
            .map(|(n, s)| (IpNet::V4(*n), *s))
            .chain(v6.iter().map(|(n, s)| (IpNet::V6(*n), *s)))
            .collect()
    };
    let ip = dst.ip.to_canonical();
    let flags = workload.flags;
    let allow = all(&workload.allow_v4, &workload.allow_v6);
    // The host table of the longest allowed prefix, if it names one.
    let host = lpm(&allow, ip)
        .filter(|v| v & host_ports::ALLOW_FLAG != 0)
        .map(|v| &image.host_tables()[(v & !host_ports::ALLOW_FLAG) as usize - 1]);
    let listed = |kind: u8| -> Option<u32> {
        host?
            .entries
            .iter()
            .find(|(k, p, port, _)| *k == kind && *p == proto && *port == dst.port)
            .map(|e| e.3)
    };
    if ip.is_loopback() {
        return (true, Reason::Loopback, NO_RULE);
    }
    let mut gateway_host = None;
    if flags & PolicyInfo::HAS_CLUSTER != 0 {
        let cluster: Vec<(IpNet, u8)> = image
            .cluster_v4()
            .iter()
            .map(|n| (IpNet::V4(*n), host_ports::CLUSTER_INSIDE))
            .chain(
                image
                    .cluster_v6()
                    .iter()
                    .map(|n| (IpNet::V6(*n), host_ports::CLUSTER_INSIDE)),
            )
            .chain(
                image
                    .cluster_port_hosts()
                    .iter()
                    .map(|(a, v)| (IpNet::from(*a), *v)),
            )
            .collect();
        let inside = match lpm(&cluster, ip) {
            None => false,
            Some(host_ports::CLUSTER_PORTS) => listed(host_ports::OUTSIDE).is_none(),
            Some(host_ports::CLUSTER_ONLY_PORTS) => listed(host_ports::INSIDE).is_some(),
            Some(_) => true,
        };
        if !inside {
            if flags & PolicyInfo::GATEWAY == 0 {
                return (false, Reason::GatewayExclusivity, NO_RULE);
            }
            if flags & PolicyInfo::REGISTRY_ONLY != 0 {
                let gw = all(&workload.gateway_v4, &workload.gateway_v6);
                match first_match(lpm(&gw, ip)) {
                    Some(h) => gateway_host = Some(h),
                    None => return (false, Reason::GatewayAllowList, NO_RULE),
                }
            }
        }
    }
    if flags & PolicyInfo::ISOLATED != 0 {
        let rule = match (host, listed(host_ports::VERDICT)) {
            (Some(_), Some(host_ports::DENY)) => None,
            (Some(_), Some(rule)) => Some(rule),
            (Some(table), None) => first_match(Some(table.base)),
            (None, _) => first_match(lpm(&allow, ip)),
        };
        return match rule {
            Some(rule) => (true, Reason::Rule, rule),
            None => (false, Reason::DefaultDeny, NO_RULE),
        };
    }
    match gateway_host {
        Some(h) => (true, Reason::GatewayHost, h),
        None => (true, Reason::NotIsolated, NO_RULE),
    }
}

/// Destinations around every interesting edge of the test policies.
fn destinations() -> Vec<Destination> {
    let addrs = [
        "172.16.0.1",
        "172.16.5.9",
        "172.16.5.200",
        "172.31.255.255",
        "172.32.0.1",
        "10.1.0.1",
        "10.1.0.2",
        "10.3.0.1",
        "fd00:1::1",
        "fd00:1::2",
        "2001:db8::1",
        "2001:db8:bad::1",
        "2001:db9::1",
        "192.0.2.1",
        "203.0.113.9",
        "198.51.100.7",
        "198.51.100.8",
        "127.0.0.1",
        "::1",
        "::ffff:172.16.0.1",
        "::ffff:198.51.100.7",
        "::ffff:10.1.0.1",
        "::ffff:127.0.0.1",
        "172.18.0.2",
        "fd00:18::2",
        "::ffff:172.18.0.2",
        "192.0.2.50",
        "192.0.2.70",
        "10.96.0.20",
    ];
    let ports = [
        0u16, 53, 80, 443, 444, 8000, 8050, 8100, 8101, 8080, 9090, 30080, 30099, 30443,
    ];
    let mut out = Vec::new();
    for a in addrs {
        for port in ports {
            for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                out.push(Destination {
                    ip: a.parse().unwrap(),
                    port,
                    protocol,
                });
            }
        }
    }
    out
}

fn assert_matches_decide(plan: &Plan, image: &MapImage) {
    let mut checked = 0;
    for w in &plan.workloads {
        let iw = image.workload(&w.id).expect("placed");
        for dst in destinations() {
            let expected = compile::decide::decide(plan, w, dst);
            let (allowed, reason, rule) = simulate(image, iw, dst);
            let decided_allow = expected.verdict == Verdict::Allow;
            assert_eq!(
                allowed, decided_allow,
                "{} → {dst}: decide says {} ({}), the image says {reason:?}",
                w.id, expected.verdict, expected.reason
            );
            if let compile::Reason::Rule { rule: r } = &expected.reason {
                assert_eq!(
                    image.rules().get(rule as usize),
                    Some(r),
                    "{} → {dst}: attributed to another rule",
                    w.id
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 1000);
}

#[test]
fn networkpolicy_images_decide_like_compile_decide() {
    let plan = plan(&[CLIENT_POLICY]);
    let image = build(&plan, &[]);
    assert_matches_decide(&plan, &image);
}

/// Two nodes and Services: a NodePort to an allowed backend, one to a
/// backend that policy denies, one that leads outside; an external IP
/// whose backends are inside, one that leads outside.
const SERVICES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: "fd00:18::2"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: nodes, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 172.18.0.0/16}}]
    ports: [{port: 30443}, {port: 10250}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  externalIPs: [192.0.2.50]
  ports: [{name: http, protocol: TCP, port: 80, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: prod, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]
ports: [{name: http, protocol: TCP, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: prod}
spec:
  type: NodePort
  clusterIP: 10.96.0.21
  ports: [{protocol: TCP, port: 443, nodePort: 30443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: secure-1, namespace: prod, labels: {kubernetes.io/service-name: secure}}
addressType: IPv4
endpoints: [{addresses: [10.3.0.1]}]
ports: [{protocol: TCP, port: 443}]
---
apiVersion: v1
kind: Service
metadata: {name: out, namespace: prod}
spec:
  type: NodePort
  clusterIP: 10.96.0.22
  externalIPs: [192.0.2.70]
  ports: [{protocol: TCP, port: 80, nodePort: 30099}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: out-1, namespace: prod, labels: {kubernetes.io/service-name: out}}
addressType: IPv4
endpoints: [{addresses: [203.0.113.9]}]
ports: [{protocol: TCP, port: 80}]
"#;

#[test]
fn service_images_decide_like_compile_decide() {
    let gateway = GATEWAY.replace("10.0.0.0/8", "10.0.0.0/8, 172.18.0.0/16");
    for extra in [
        vec![CLIENT_POLICY, SERVICES],
        vec![CLIENT_POLICY, SERVICES, &gateway],
    ] {
        let plan = plan(&extra);
        let image = build(&plan, &[]);
        assert_matches_decide(&plan, &image);
    }
}

#[test]
fn a_node_address_gets_one_host_entry_naming_its_ports() {
    let plan = plan(&[CLIENT_POLICY, SERVICES, GATEWAY]);
    let image = build(&plan, &[]);
    let client = image
        .workload(&"prod/client".parse().unwrap())
        .expect("client");
    let node: ipnet::Ipv4Net = "172.18.0.2/32".parse().unwrap();
    let flagged: Vec<u32> = client
        .allow_v4
        .iter()
        .filter(|(n, _)| *n == node)
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(flagged.len(), 1, "{:?}", client.allow_v4);
    assert_ne!(flagged[0] & host_ports::ALLOW_FLAG, 0);
    let table = &image.host_tables()[(flagged[0] & !host_ports::ALLOW_FLAG) as usize - 1];
    let kinds: Vec<(u8, u16)> = table.entries.iter().map(|e| (e.0, e.2)).collect();
    assert!(kinds.contains(&(host_ports::VERDICT, 30080)), "{kinds:?}");
    assert!(kinds.contains(&(host_ports::VERDICT, 30443)), "{kinds:?}");
    assert!(kinds.contains(&(host_ports::OUTSIDE, 30099)), "{kinds:?}");
    // The workload that no policy isolates gets host entries too: gateway
    // exclusivity reads them.
    let web = image.workload(&"prod/web".parse().unwrap()).expect("web");
    assert!(web.allow_v4.iter().any(|(n, _)| *n == node));
    assert_eq!(
        image
            .cluster_port_hosts()
            .get(&"172.18.0.2".parse().unwrap()),
        Some(&host_ports::CLUSTER_PORTS)
    );
    assert_eq!(
        image
            .cluster_port_hosts()
            .get(&"192.0.2.50".parse().unwrap()),
        Some(&host_ports::CLUSTER_ONLY_PORTS)
    );
}

#[test]
fn gateway_images_decide_like_compile_decide_for_literal_hosts() {
    // decide only knows literal hosts; DNS hosts are left unresolved here.
    let plan = plan(&[CLIENT_POLICY, GATEWAY]);
    let image = build(&plan, &[]);
    assert_matches_decide(&plan, &image);
    assert_eq!(
        image.unresolved(),
        ["mirror.example", "nowhere.example", "registry.example"]
    );
}

#[test]
fn an_isolated_gateway_needs_both_its_host_list_and_a_rule() {
    let gw_policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: gw-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: gw}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.0/25}}]
"#;
    let plan = plan(&[GATEWAY, gw_policy]);
    let image = build(&plan, &[]);
    assert_matches_decide(&plan, &image);
}

#[test]
fn resolved_hosts_become_host_routes_with_their_ports_and_overlaps_merge() {
    let plan = plan(&[GATEWAY]);
    let image = build(
        &plan,
        &[
            ("registry.example", &["198.51.100.7", "2001:db8::7"]),
            // Inside 203.0.113.0/24, which allows any port: both apply.
            ("mirror.example", &["203.0.113.5", "::ffff:198.51.100.8"]),
        ],
    );
    let gw = image
        .workload(&ObjectId::new("prod", "gw"))
        .expect("gateway placed");
    assert_eq!(
        gw.flags & PolicyInfo::REGISTRY_ONLY,
        PolicyInfo::REGISTRY_ONLY
    );
    let set_of = |net: &str| -> &[PortEntry] {
        let net: IpNet = net.parse().unwrap();
        let set = match net {
            IpNet::V4(n) => gw.gateway_v4.iter().find(|(p, _)| *p == n).map(|(_, s)| *s),
            IpNet::V6(n) => gw.gateway_v6.iter().find(|(p, _)| *p == n).map(|(_, s)| *s),
        }
        .unwrap_or_else(|| panic!("{net} has an entry"));
        &image.port_sets()[set as usize - 1]
    };
    let hosts = image.gateway_hosts();
    assert_eq!(hosts[0].host, "registry.example");
    assert_eq!(set_of("198.51.100.7/32"), [PortEntry::new(0, 6, 443, 443)]);
    assert_eq!(set_of("2001:db8::7/128"), [PortEntry::new(0, 6, 443, 443)]);
    // The mapped address was canonicalised to IPv4.
    assert_eq!(
        set_of("198.51.100.8/32"),
        [PortEntry::new(2, 6, 80, 80), PortEntry::new(2, 17, 53, 53)]
    );
    assert_eq!(
        set_of("203.0.113.5/32"),
        [PortEntry::new(1, 0, 0, u16::MAX)],
        "the any-port /24 comes first and covers mirror's ports"
    );
    assert_eq!(image.unresolved(), ["nowhere.example"]);
}

#[test]
fn except_holes_are_entries_with_the_empty_set() {
    let plan = plan(&[CLIENT_POLICY]);
    let image = build(&plan, &[]);
    let client = image.workload(&ObjectId::new("prod", "client")).unwrap();
    let hole = client
        .allow_v4
        .iter()
        .find(|(n, _)| *n == "172.16.5.0/24".parse().unwrap())
        .expect("the hole has an entry");
    // Rule 4 (0.0.0.0/0 port 53) still covers the hole.
    let entries = &image.port_sets()[hole.1 as usize - 1];
    assert!(entries.iter().all(|e| e.start == 53 && e.end == 53));
    let v6_hole = client
        .allow_v6
        .iter()
        .find(|(n, _)| *n == "2001:db8:bad::/48".parse().unwrap())
        .expect("the v6 hole has an entry");
    assert_eq!(v6_hole.1, EMPTY_SET);
}

#[test]
fn workloads_carry_their_cgroup_depth_flags_and_ids() {
    let plan = plan(&[CLIENT_POLICY, GATEWAY]);
    let image = build(&plan, &[]);
    let client = image.workload(&ObjectId::new("prod", "client")).unwrap();
    assert_eq!(client.cgroup, "/root/prod/client/");
    // It lists addresses: its sources are checked against them.
    assert_eq!(
        client.flags,
        PolicyInfo::ISOLATED | PolicyInfo::HAS_CLUSTER | PolicyInfo::SOURCE_CHECK
    );
    assert!(!client.sources.is_empty());
    let web = image.workload(&ObjectId::new("prod", "web")).unwrap();
    assert_eq!(
        web.flags & !PolicyInfo::SOURCE_CHECK,
        PolicyInfo::HAS_CLUSTER
    );
    assert!(web.allow_v4.is_empty());
    assert!(image.has_cluster());
    assert_eq!(image.cluster_v4(), ["10.0.0.0/8".parse().unwrap()]);
    let size = image.size();
    assert_eq!(size.workloads, 3);
    assert_eq!(size.cluster, 2);
}

#[test]
fn a_workload_without_a_cgroup_id_is_left_out_and_listed() {
    let plan = plan(&[CLIENT_POLICY]);
    let mut ids = ids(&plan);
    ids.remove(&ObjectId::new("prod", "web"));
    let image = MapImage::build(&plan, &ids, &BTreeMap::new(), true).unwrap();
    assert_eq!(image.unplaced(), [ObjectId::new("prod", "web")]);
    assert_eq!(image.workloads().len(), 2);
    assert!(image.audit());
}

#[test]
fn two_workloads_on_one_cgroup_id_are_refused() {
    let plan = plan(&[]);
    let ids: BTreeMap<ObjectId, u64> = plan.workloads.iter().map(|w| (w.id.clone(), 7)).collect();
    let err = MapImage::build(&plan, &ids, &BTreeMap::new(), false).unwrap_err();
    assert!(
        matches!(err, ImageError::SharedCgroup { cgroup_id: 7, .. }),
        "{err}"
    );
}

#[test]
fn more_than_128_port_entries_for_a_prefix_is_an_error_naming_the_workload() {
    // 17 to 128 entries fit: the kernel follows a set into the next.
    let ports: Vec<String> = (0..128)
        .map(|i| format!("{{port: {}}}", 1000 + 2 * i))
        .collect();
    let fits = plan(&[&policy_with_ports(&ports)]);
    let image = MapImage::build(&fits, &ids(&fits), &BTreeMap::new(), false).expect("fits");
    assert!(image.port_sets().iter().any(|s| s.len() == 128));

    let ports: Vec<String> = (0..129)
        .map(|i| format!("{{port: {}}}", 1000 + 2 * i))
        .collect();
    let policy = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: many, namespace: prod}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress:\n\
         \x20 - ports: [{}]\n",
        ports.join(", ")
    );
    let plan = plan(&[&policy]);
    let err = MapImage::build(&plan, &ids(&plan), &BTreeMap::new(), false).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ImageError::PortSetTooLarge { entries: 129, .. }),
        "{text}"
    );
    assert!(text.contains("prod/client"), "{text}");

    // Consecutive ports of one rule merge into a range, and fit.
    let ports: Vec<String> = (0..40).map(|i| format!("{{port: {}}}", 1000 + i)).collect();
    let policy = policy_with_ports(&ports);
    let plan = self::plan(&[&policy]);
    let image = MapImage::build(&plan, &ids(&plan), &BTreeMap::new(), false).unwrap();
    assert_eq!(image.port_sets(), [vec![PortEntry::new(0, 6, 1000, 1039)]]);
}

fn policy_with_ports(ports: &[String]) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: many, namespace: prod}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress:\n\
         \x20 - ports: [{}]\n",
        ports.join(", ")
    )
}

#[test]
fn identical_port_sets_are_shared_across_workloads() {
    let both = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 443}]
"#;
    let plan = plan(&[both]);
    let image = build(&plan, &[]);
    assert_eq!(image.port_sets().len(), 1);
    assert_eq!(image.rules().len(), 1);
}
