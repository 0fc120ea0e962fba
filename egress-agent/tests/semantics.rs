//! Policy semantics, table-driven: each case adds objects to a small
//! cluster, compiles it, and asks for one connection's verdict. Cases follow
//! the Kubernetes NetworkPolicy documentation and Istio's include/exclude
//! documentation; the verdict is read from the compiled plan, the same data
//! the kernel is programmed with.

use egress_agent::compile::{self, Destination, Reason, Verdict};
use egress_policy::{ports::Protocol, Source};

/// The cluster every case starts from.
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod, team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {env: dev}}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system, labels: {kube-system: "true"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, labels: {istio: system}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {cgroup: t/prod/client, addresses: [10.1.0.9, "fd00:1::9"], sidecar: true}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: web, namespace: prod, labels: {app: web, tier: front}}
spec:
  cgroup: t/prod/web
  addresses: [10.1.0.1, "fd00:1::1"]
  ports: [{name: http, port: 8080}, {name: metrics, port: 9090, protocol: UDP}]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: db, namespace: prod, labels: {app: db, tier: backend}}
spec: {cgroup: t/prod/db, addresses: [10.1.0.2], ports: [{name: pg, port: 5432}]}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: web, namespace: dev, labels: {app: web}}
spec: {cgroup: t/dev/web, addresses: [10.2.0.1], ports: [{name: http, port: 8081}]}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: dev, labels: {app: client}}
spec: {cgroup: t/dev/client, addresses: [10.2.0.9]}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {cgroup: t/kube-system/dns, addresses: [10.0.0.10]}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: gw, namespace: istio-system, labels: {istio: egressgateway}}
spec: {cgroup: t/istio-system/gw, addresses: [10.3.0.1]}
"#;

/// `policyTypes: [Egress]` policy in `prod` selecting `app: client`.
fn egress_policy(name: &str, egress: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: prod}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress:\n{egress}"
    )
}

fn redirect(extra: &str) -> String {
    format!(
        "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Redirect\nmetadata: {{name: sidecar, namespace: prod}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: client}}}}\n{extra}"
    )
}

/// `prod/plain`, selected like `prod/client`; `annotations` a flow map or
/// empty, `spec` more fields after its cgroup.
fn plain(annotations: &str, spec: &str) -> String {
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!("  annotations: {annotations}\n")
    };
    format!(
        "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: plain\n  namespace: prod\n  labels: {{app: client}}\n{annotations}spec: {{cgroup: t/prod/plain{spec}}}\n"
    )
}

/// An Istio ServiceEntry for `api.example.com` in `namespace`, with one
/// STATIC endpoint, 203.0.113.7, on HTTPS 443; `extra` more spec fields.
fn service_entry(namespace: &str, extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {{name: api, namespace: {namespace}}}\n\
         spec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
         \x20 ports: [{{number: 443, name: https, protocol: HTTPS}}]\n  endpoints: [{{address: 203.0.113.7}}]\n{extra}"
    )
}

fn gateway(extra: &str) -> String {
    format!(
        "apiVersion: egress.enforcer.dev/v1alpha1\nkind: EgressGateway\nmetadata: {{name: egress, namespace: istio-system}}\n\
         spec:\n  selector: {{podSelector: {{matchLabels: {{istio: egressgateway}}}}}}\n  clusterCIDRs: [10.0.0.0/8, \"fd00::/8\"]\n{extra}"
    )
}

/// The verdict, in a compact form the table compares against.
fn verdict(objects: &[String], from: &str, to: &str) -> String {
    let mut text = BASE.to_owned();
    for o in objects {
        text.push_str("\n---\n");
        text.push_str(o);
    }
    let loaded = match egress_policy::load_sources(&[Source::new("case.yaml", text)]) {
        Ok(l) => l,
        Err(e) => panic!("case policy invalid: {:#?}", e.diagnostics),
    };
    let plan = compile::compile(&loaded.model);
    let from = from.parse().expect("NS/NAME");
    let workload = plan.workload(&from).expect("workload in BASE");
    let (addr, proto) = to.rsplit_once('/').unwrap_or((to, "tcp"));
    let addr: std::net::SocketAddr = addr.parse().expect("IP:PORT");
    let protocol: Protocol = proto.parse().expect("protocol");
    let d = compile::decide(
        &plan,
        workload,
        Destination {
            ip: addr.ip(),
            port: addr.port(),
            protocol,
        },
    );
    match (d.verdict, d.reason) {
        (Verdict::Redirect { proxy }, _) => format!("redirect {proxy}"),
        (Verdict::Allow, Reason::Rule { rule }) => {
            format!("allow {}[{}]", rule.policy.name, rule.index)
        }
        (Verdict::Allow, Reason::NotIsolated) => "allow".to_owned(),
        (Verdict::Allow, Reason::Loopback) => "allow loopback".to_owned(),
        (Verdict::Deny, Reason::DefaultDeny { .. }) => "deny".to_owned(),
        (Verdict::Deny, Reason::GatewayExclusivity) => "deny exclusivity".to_owned(),
        (Verdict::Deny, Reason::GatewayAllowList { .. }) => "deny allow-list".to_owned(),
        (v, r) => format!("unexpected {v:?} {r:?}"),
    }
}

struct Case {
    name: &'static str,
    objects: Vec<String>,
    from: &'static str,
    to: &'static str,
    expect: &'static str,
}

fn case(
    name: &'static str,
    objects: Vec<String>,
    from: &'static str,
    to: &'static str,
    expect: &'static str,
) -> Case {
    Case {
        name,
        objects,
        from,
        to,
        expect,
    }
}

fn cases() -> Vec<Case> {
    let np = egress_policy;
    vec![
        // --- Kubernetes NetworkPolicy: isolation ---
        case("no policy: a pod is not isolated", vec![], "prod/client", "192.0.2.1:443", "allow"),
        case("Egress policy with no rules denies all", vec![np("deny-all", "    []\n")], "prod/client", "10.1.0.1:80", "deny"),
        // kube-apiserver 1.20 defaults an empty policyTypes like a missing
        // one: Egress applies because there are egress rules.
        case(
            "policyTypes: [] with egress rules isolates egress",
            vec!["apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: empty-types, namespace: prod}\nspec:\n  podSelector: {}\n  policyTypes: []\n  egress: [{ports: [{port: 53}]}]\n".into()],
            "prod/client", "10.1.0.1:80", "deny",
        ),
        // An invalid endPort is dropped as 1.20 drops it: only `port`.
        case("a reversed endPort leaves the port alone", vec![np("rev", "  - ports: [{port: 8080, endPort: 80}]\n")], "prod/client", "10.9.9.9:8080", "allow rev[0]"),
        case("a reversed endPort allows nothing below the port", vec![np("rev", "  - ports: [{port: 8080, endPort: 80}]\n")], "prod/client", "10.9.9.9:80", "deny"),
        case(
            "policyTypes Ingress only leaves egress open",
            vec!["apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ing, namespace: prod}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n".into()],
            "prod/client", "10.1.0.1:80", "allow",
        ),
        case(
            "no policyTypes but egress rules: egress is isolated",
            vec!["apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: implicit, namespace: prod}\nspec:\n  podSelector: {}\n  egress:\n  - ports: [{port: 53, protocol: UDP}]\n".into()],
            "prod/client", "10.1.0.1:80", "deny",
        ),
        case(
            "no policyTypes and no egress: only ingress is affected",
            vec!["apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ing-only, namespace: prod}\nspec:\n  podSelector: {}\n".into()],
            "prod/client", "10.1.0.1:80", "allow",
        ),
        case("an empty rule allows everything", vec![np("all", "  - {}\n")], "prod/client", "198.51.100.7:1234/udp", "allow all[0]"),
        case("podSelector that does not match leaves the pod open",
            vec!["apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: other, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: nobody}}\n  policyTypes: [Egress]\n".into()],
            "prod/client", "10.1.0.1:80", "allow"),
        case("a policy in another namespace does not apply",
            vec!["apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: devonly, namespace: dev}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n".into()],
            "prod/client", "10.1.0.1:80", "allow"),
        case("podSelector {} selects every pod in the namespace",
            vec!["apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: everyone, namespace: dev}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n".into()],
            "dev/client", "10.1.0.1:80", "deny"),
        // --- ipBlock ---
        case("ipBlock allows inside the CIDR", vec![np("cidr", "  - to: [{ipBlock: {cidr: 172.16.0.0/12}}]\n")], "prod/client", "172.17.1.1:443", "allow cidr[0]"),
        case("ipBlock denies outside the CIDR", vec![np("cidr", "  - to: [{ipBlock: {cidr: 172.16.0.0/12}}]\n")], "prod/client", "172.32.0.1:443", "deny"),
        case("except carves a hole", vec![np("hole", "  - to: [{ipBlock: {cidr: 172.16.0.0/12, except: [172.16.5.0/24]}}]\n")], "prod/client", "172.16.5.9:443", "deny"),
        case("except leaves the rest of the block", vec![np("hole", "  - to: [{ipBlock: {cidr: 172.16.0.0/12, except: [172.16.5.0/24]}}]\n")], "prod/client", "172.16.6.9:443", "allow hole[0]"),
        case("another rule of the same policy fills the hole",
            vec![np("fill", "  - to: [{ipBlock: {cidr: 172.16.0.0/12, except: [172.16.5.0/24]}}]\n  - to: [{ipBlock: {cidr: 172.16.5.128/25}}]\n")],
            "prod/client", "172.16.5.200:443", "allow fill[1]"),
        case("another policy fills the hole (policies are a union)",
            vec![np("a", "  - to: [{ipBlock: {cidr: 172.16.0.0/12, except: [172.16.5.0/24]}}]\n"), np("b", "  - to: [{ipBlock: {cidr: 172.16.5.0/24}}]\n")],
            "prod/client", "172.16.5.1:443", "allow b[0]"),
        case("IPv6 ipBlock", vec![np("v6", "  - to: [{ipBlock: {cidr: \"2001:db8::/32\", except: [\"2001:db8:bad::/48\"]}}]\n")], "prod/client", "[2001:db8:1::1]:443", "allow v6[0]"),
        case("IPv6 except", vec![np("v6", "  - to: [{ipBlock: {cidr: \"2001:db8::/32\", except: [\"2001:db8:bad::/48\"]}}]\n")], "prod/client", "[2001:db8:bad::1]:443", "deny"),
        case("IPv4-mapped IPv6 destination gets the IPv4 verdict", vec![np("cidr", "  - to: [{ipBlock: {cidr: 172.16.0.0/12}}]\n")], "prod/client", "[::ffff:172.16.0.1]:443", "allow cidr[0]"),
        case("IPv4-mapped IPv6 destination is denied like IPv4", vec![np("cidr", "  - to: [{ipBlock: {cidr: 172.16.0.0/12}}]\n")], "prod/client", "[::ffff:172.32.0.1]:443", "deny"),
        case("an IPv4-mapped CIDR is an IPv4 CIDR", vec![np("mapped", "  - to: [{ipBlock: {cidr: \"::ffff:172.16.0.0/108\"}}]\n")], "prod/client", "172.16.0.1:443", "allow mapped[0]"),
        // --- ports ---
        case("ports without `to` allow that port anywhere", vec![np("p", "  - ports: [{port: 443}]\n")], "prod/client", "203.0.113.5:443", "allow p[0]"),
        case("a different port is denied", vec![np("p", "  - ports: [{port: 443}]\n")], "prod/client", "203.0.113.5:80", "deny"),
        case("protocol defaults to TCP", vec![np("p", "  - ports: [{port: 443}]\n")], "prod/client", "203.0.113.5:443/udp", "deny"),
        case("UDP rule does not allow TCP", vec![np("dns", "  - ports: [{port: 53, protocol: UDP}]\n")], "prod/client", "10.0.0.10:53/tcp", "deny"),
        case("SCTP port", vec![np("sctp", "  - ports: [{port: 3868, protocol: SCTP}]\n")], "prod/client", "10.9.9.9:3868/sctp", "allow sctp[0]"),
        case("endPort includes its start", vec![np("range", "  - ports: [{port: 32000, endPort: 32768}]\n")], "prod/client", "10.9.9.9:32000", "allow range[0]"),
        case("endPort includes its end", vec![np("range", "  - ports: [{port: 32000, endPort: 32768}]\n")], "prod/client", "10.9.9.9:32768", "allow range[0]"),
        case("endPort excludes beyond", vec![np("range", "  - ports: [{port: 32000, endPort: 32768}]\n")], "prod/client", "10.9.9.9:32769", "deny"),
        case("peer and port are ANDed", vec![np("and", "  - to: [{ipBlock: {cidr: 10.9.0.0/16}}]\n    ports: [{port: 80}]\n")], "prod/client", "10.8.0.1:80", "deny"),
        case("named port resolves on the destination pod", vec![np("named", "  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: http}]\n")], "prod/client", "10.1.0.1:8080", "allow named[0]"),
        case("named port: another number is denied", vec![np("named", "  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: http}]\n")], "prod/client", "10.1.0.1:80", "deny"),
        case("named port: the protocol must match too", vec![np("named", "  - ports: [{port: metrics, protocol: TCP}]\n")], "prod/client", "10.1.0.1:9090", "deny"),
        case("named port with no `to` matches any pod declaring it", vec![np("named", "  - ports: [{port: http}]\n")], "prod/client", "10.2.0.1:8081", "allow named[0]"),
        case("named port resolves per pod: dev/web's http is 8081", vec![np("named", "  - ports: [{port: http}]\n")], "prod/client", "10.2.0.1:8080", "deny"),
        // --- selectors ---
        case("podSelector peer: same namespace only", vec![np("pods", "  - to: [{podSelector: {matchLabels: {app: web}}}]\n")], "prod/client", "10.2.0.1:80", "deny"),
        case("podSelector peer matches in the policy's namespace", vec![np("pods", "  - to: [{podSelector: {matchLabels: {app: web}}}]\n")], "prod/client", "[fd00:1::1]:80", "allow pods[0]"),
        case("namespaceSelector peer: every pod in matching namespaces", vec![np("ns", "  - to: [{namespaceSelector: {matchLabels: {env: dev}}}]\n")], "prod/client", "10.2.0.9:22", "allow ns[0]"),
        case("namespaceSelector {} matches all namespaces", vec![np("allns", "  - to: [{namespaceSelector: {}}]\n")], "prod/client", "10.0.0.10:53/udp", "allow allns[0]"),
        case("namespaceSelector does not match non-pod addresses", vec![np("allns", "  - to: [{namespaceSelector: {}}]\n")], "prod/client", "10.7.7.7:53/udp", "deny"),
        case("namespace AND pod selector in one peer: both must match",
            vec![np("and", "  - to: [{namespaceSelector: {matchLabels: {env: dev}}, podSelector: {matchLabels: {app: web}}}]\n")],
            "prod/client", "10.2.0.9:80", "deny"),
        case("namespace AND pod selector: the matching pod",
            vec![np("and", "  - to: [{namespaceSelector: {matchLabels: {env: dev}}, podSelector: {matchLabels: {app: web}}}]\n")],
            "prod/client", "10.2.0.1:80", "allow and[0]"),
        case("separate peers are ORed",
            vec![np("or", "  - to: [{namespaceSelector: {matchLabels: {env: dev}}}, {podSelector: {matchLabels: {app: web}}}]\n")],
            "prod/client", "10.2.0.9:80", "allow or[0]"),
        case("kubernetes.io/metadata.name is set on every namespace",
            vec![np("byname", "  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]\n")],
            "prod/client", "10.0.0.10:53/udp", "allow byname[0]"),
        case("matchExpressions In", vec![np("in", "  - to: [{podSelector: {matchExpressions: [{key: tier, operator: In, values: [backend, cache]}]}}]\n")], "prod/client", "10.1.0.2:5432", "allow in[0]"),
        case("matchExpressions NotIn (missing key matches)", vec![np("notin", "  - to: [{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}}]\n")], "prod/client", "10.1.0.9:1", "allow notin[0]"),
        case("matchExpressions NotIn excludes", vec![np("notin", "  - to: [{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}}]\n")], "prod/client", "10.1.0.1:1", "deny"),
        case("matchExpressions Exists", vec![np("ex", "  - to: [{podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]\n")], "prod/client", "10.1.0.1:1", "allow ex[0]"),
        case("matchExpressions DoesNotExist", vec![np("dne", "  - to: [{podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]\n")], "prod/client", "10.1.0.2:1", "deny"),
        // --- Istio include/exclude capture ---
        case("includeIPRanges \"*\" captures everything", vec![redirect("  includeIPRanges: \"*\"\n")], "prod/client", "203.0.113.5:443", "redirect 127.0.0.1:15001"),
        case("includeIPRanges list: outside is not captured", vec![redirect("  includeIPRanges: 10.0.0.0/8\n")], "prod/client", "203.0.113.5:443", "allow"),
        case("includeIPRanges list: inside is captured", vec![redirect("  includeIPRanges: \"10.0.0.0/8,172.16.0.0/12\"\n")], "prod/client", "172.16.0.1:443", "redirect 127.0.0.1:15001"),
        case("excludeIPRanges beats includeIPRanges", vec![redirect("  includeIPRanges: \"*\"\n  excludeIPRanges: [10.1.0.0/16]\n")], "prod/client", "10.1.0.1:80", "allow"),
        case("includePorts capture whatever the IP", vec![redirect("  includeIPRanges: \"\"\n  includePorts: [443]\n")], "prod/client", "203.0.113.5:443", "redirect 127.0.0.1:15001"),
        case("includePorts: other ports are not captured", vec![redirect("  includeIPRanges: \"\"\n  includePorts: [443]\n")], "prod/client", "203.0.113.5:80", "allow"),
        case("excludeIPRanges beats includePorts", vec![redirect("  includeIPRanges: \"\"\n  includePorts: [443]\n  excludeIPRanges: 203.0.113.0/24\n")], "prod/client", "203.0.113.5:443", "allow"),
        case("excludePorts are never captured", vec![redirect("  excludePorts: \"22,3306\"\n")], "prod/client", "203.0.113.5:22", "allow"),
        case("excludePorts beat includePorts", vec![redirect("  includePorts: [22]\n  excludePorts: [22]\n")], "prod/client", "203.0.113.5:22", "allow"),
        case("loopback is never captured", vec![redirect("  includeIPRanges: \"*\"\n")], "prod/client", "127.0.0.1:8080", "allow loopback"),
        case("UDP is never captured", vec![redirect("  includeIPRanges: \"*\"\n")], "prod/client", "203.0.113.5:443/udp", "allow"),
        case("custom proxy port", vec![redirect("  proxy: {port: 15006}\n")], "prod/client", "203.0.113.5:443", "redirect 127.0.0.1:15006"),
        case("the proxy's own connections are never captured",
            vec![redirect("  podSelector: {}\n  proxy: {selector: {podSelector: {matchLabels: {app: client}}}}\n").replacen("  podSelector: {matchLabels: {app: client}}\n", "", 1)],
            "prod/client", "203.0.113.5:443", "allow"),
        case("annotation includeOutboundIPRanges overrides the Redirect",
            vec![redirect("  includeIPRanges: \"*\"\n"), "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: annotated\n  namespace: prod\n  labels: {app: client}\n  annotations: {traffic.sidecar.istio.io/includeOutboundIPRanges: \"10.0.0.0/8\"}\nspec: {cgroup: t/prod/annotated, sidecar: true}\n".into()],
            "prod/annotated", "203.0.113.5:443", "allow"),
        case("annotation excludeOutboundPorts overrides the Redirect",
            vec![redirect("  includeIPRanges: \"*\"\n"), "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: annotated\n  namespace: prod\n  labels: {app: client}\n  annotations: {traffic.sidecar.istio.io/excludeOutboundPorts: \"443\"}\nspec: {cgroup: t/prod/annotated, sidecar: true}\n".into()],
            "prod/annotated", "203.0.113.5:443", "allow"),
        case("annotation includeOutboundPorts adds ports",
            vec![redirect("  includeIPRanges: \"\"\n"), "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: annotated\n  namespace: prod\n  labels: {app: client}\n  annotations: {traffic.sidecar.istio.io/includeOutboundPorts: \"8443\"}\nspec: {cgroup: t/prod/annotated, sidecar: true}\n".into()],
            "prod/annotated", "203.0.113.5:8443", "redirect 127.0.0.1:15001"),
        // --- which selected workloads are captured (Istio captures injected pods only) ---
        case("a selected workload without a sidecar is not captured (capture: Sidecar, the default)",
            vec![redirect("  includeIPRanges: \"*\"\n"), plain("", "")],
            "prod/plain", "203.0.113.5:443", "allow"),
        case("Istio's sidecar.istio.io/status annotation marks a sidecar",
            vec![redirect("  includeIPRanges: \"*\"\n"), plain(r#"{sidecar.istio.io/status: '{"containers":["istio-proxy"]}'}"#, "")],
            "prod/plain", "203.0.113.5:443", "redirect 127.0.0.1:15001"),
        case("capture: All captures workloads without a sidecar",
            vec![redirect("  capture: All\n"), plain("", "")],
            "prod/plain", "203.0.113.5:443", "redirect 127.0.0.1:15001"),
        case("interceptionMode NONE: not captured, even with a sidecar",
            vec![redirect(""), plain("{sidecar.istio.io/interceptionMode: NONE}", ", sidecar: true")],
            "prod/plain", "203.0.113.5:443", "allow"),
        case("interceptionMode NONE: not captured, even with capture: All",
            vec![redirect("  capture: All\n"), plain("{sidecar.istio.io/interceptionMode: NONE}", "")],
            "prod/plain", "203.0.113.5:443", "allow"),
        case("interceptionMode TPROXY captures outbound as REDIRECT does",
            vec![redirect(""), plain("{sidecar.istio.io/interceptionMode: TPROXY}", ", sidecar: true")],
            "prod/plain", "203.0.113.5:443", "redirect 127.0.0.1:15001"),
        // --- Istio ServiceEntries as the gateway's allow-list ---
        case("fromServiceEntries: an entry's endpoint at its port",
            vec![gateway("  allowedHosts: fromServiceEntries\n"), service_entry("prod", "")],
            "istio-system/gw", "203.0.113.7:443", "allow"),
        case("fromServiceEntries: another port of the endpoint",
            vec![gateway("  allowedHosts: fromServiceEntries\n"), service_entry("prod", "")],
            "istio-system/gw", "203.0.113.7:80", "deny allow-list"),
        case("fromServiceEntries: no entry allows nothing",
            vec![gateway("  allowedHosts: fromServiceEntries\n")],
            "istio-system/gw", "203.0.113.7:443", "deny allow-list"),
        case("fromServiceEntries: exportTo . hides it from other namespaces",
            vec![gateway("  allowedHosts: fromServiceEntries\n"), service_entry("prod", "  exportTo: [\".\"]\n")],
            "istio-system/gw", "203.0.113.7:443", "deny allow-list"),
        case("fromServiceEntries: exportTo . in the gateway's own namespace",
            vec![gateway("  allowedHosts: fromServiceEntries\n"), service_entry("istio-system", "  exportTo: [\".\"]\n")],
            "istio-system/gw", "203.0.113.7:443", "allow"),
        case("fromServiceEntries: exportTo names the gateway's namespace",
            vec![gateway("  allowedHosts: fromServiceEntries\n"), service_entry("prod", "  exportTo: [istio-system]\n")],
            "istio-system/gw", "203.0.113.7:443", "allow"),
        case("fromServiceEntries: exportTo ~ is nowhere",
            vec![gateway("  allowedHosts: fromServiceEntries\n"), service_entry("istio-system", "  exportTo: [\"~\"]\n")],
            "istio-system/gw", "203.0.113.7:443", "deny allow-list"),
        case("a listed allowedHosts ignores ServiceEntries",
            vec![gateway("  allowedHosts: [{host: 198.51.100.1}]\n"), service_entry("prod", "")],
            "istio-system/gw", "203.0.113.7:443", "deny allow-list"),
        // --- gateway exclusivity ---
        case("only the gateway reaches the internet, whatever policy allows",
            vec![gateway(""), np("open", "  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]\n")],
            "prod/client", "203.0.113.5:443", "deny exclusivity"),
        case("inside clusterCIDRs, NetworkPolicy decides",
            vec![gateway(""), np("open", "  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]\n")],
            "prod/client", "10.2.0.1:443", "allow open[0]"),
        case("the gateway reaches the internet (ALLOW_ANY)", vec![gateway("")], "istio-system/gw", "203.0.113.5:443", "allow"),
        case("REGISTRY_ONLY gateway: listed address and port",
            vec![gateway("  allowedHosts: [{host: 203.0.113.0/24, ports: [443]}]\n")],
            "istio-system/gw", "203.0.113.5:443", "allow"),
        case("REGISTRY_ONLY gateway: unlisted port",
            vec![gateway("  allowedHosts: [{host: 203.0.113.0/24, ports: [443]}]\n")],
            "istio-system/gw", "203.0.113.5:80", "deny allow-list"),
        case("REGISTRY_ONLY gateway: unlisted host",
            vec![gateway("  allowedHosts: [{host: example.com}]\n")],
            "istio-system/gw", "198.51.100.1:443", "deny allow-list"),
        case("IPv6 outside clusterCIDRs is the internet too", vec![gateway("")], "prod/client", "[2001:db8::1]:443", "deny exclusivity"),
        case("a captured connection goes to the proxy, not the internet",
            vec![gateway(""), redirect("")],
            "prod/client", "203.0.113.5:443", "redirect 127.0.0.1:15001"),
        case("uncaptured UDP from a captured pod still meets exclusivity",
            vec![gateway(""), redirect("")],
            "prod/client", "203.0.113.5:443/udp", "deny exclusivity"),
        case("gateway pods are still bound by NetworkPolicy",
            vec![gateway(""), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: gwpol, namespace: istio-system}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: 443}]\n".into()],
            "istio-system/gw", "203.0.113.5:80", "deny"),
    ]
}

#[test]
fn semantics_table() {
    let cases = cases();
    assert!(cases.len() >= 40, "the suite promises at least 40 cases");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let got = verdict(&c.objects, c.from, c.to);
            (got != c.expect).then(|| {
                format!(
                    "{}: {} → {}: expected {:?}, got {:?}",
                    c.name, c.from, c.to, c.expect, got
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The seed's flows, from the repository's own `policies/`.
#[test]
fn seed_flows_explain_as_documented() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let loaded = egress_policy::load(&[dir]).expect("policies/ is valid");
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let plan = compile::compile(&loaded.model);
    let ask = |from: &str, ip: &str, port, protocol| {
        let w = plan
            .workload(&from.parse().expect("id"))
            .expect("seed workload");
        compile::decide(
            &plan,
            w,
            Destination {
                ip: ip.parse().expect("ip"),
                port,
                protocol,
            },
        )
    };
    // edition.cnn.com, as the seed's curl resolves it.
    let d = ask("default/sleep", "151.101.65.67", 443, Protocol::Tcp);
    assert!(matches!(d.verdict, Verdict::Redirect { .. }), "{d:?}");
    let d = ask("test-egress/sleep", "151.101.65.67", 443, Protocol::Tcp);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::GatewayExclusivity)
    );
    let d = ask("test-egress/sleep", "10.244.0.10", 53, Protocol::Udp);
    assert_eq!(d.verdict, Verdict::Allow);
    match d.reason {
        Reason::Rule { rule } => {
            assert_eq!(
                rule.policy.to_string(),
                "test-egress/allow-egress-to-istio-system-and-kube-dns"
            );
            assert_eq!(rule.index, 0);
        }
        other => panic!("expected the seed policy's rule 0, got {other:?}"),
    }
    // The sidecar itself goes to the gateway, which is inside the cluster.
    let d = ask(
        "default/sleep-istio-proxy",
        "10.244.0.20",
        443,
        Protocol::Tcp,
    );
    assert_eq!(d.verdict, Verdict::Allow);
}

/// A Service with its EndpointSlice, as kube-proxy reads them: `ports` is
/// `(name, protocol, service port, target port)`, `backends` the ready
/// endpoint addresses.
fn service(
    ns: &str,
    name: &str,
    vip: &str,
    ports: &[(&str, &str, u16, u16)],
    backends: &[&str],
) -> String {
    let svc_ports: Vec<String> = ports
        .iter()
        .map(|(n, p, port, _)| format!("{{name: \"{n}\", protocol: {p}, port: {port}}}"))
        .collect();
    let slice_ports: Vec<String> = ports
        .iter()
        .map(|(n, p, _, target)| format!("{{name: \"{n}\", protocol: {p}, port: {target}}}"))
        .collect();
    let addresses: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{clusterIP: \"{vip}\", ports: [{}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-x1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [{}], conditions: {{ready: true}}}}]\nports: [{}]",
        svc_ports.join(", "),
        addresses.join(", "),
        slice_ports.join(", "),
    )
}

#[test]
fn services_are_judged_by_their_ready_backends() {
    let dns_policy = egress_policy(
        "dns",
        "  - to: [{namespaceSelector: {matchLabels: {kube-system: \"true\"}}}]\n    ports: [{protocol: UDP, port: 53}]\n",
    );
    let kube_dns = service(
        "kube-system",
        "kube-dns",
        "10.96.0.10",
        &[("dns", "UDP", 53, 53), ("dns-tcp", "TCP", 53, 53)],
        &["10.0.0.10"],
    );
    let objects = [dns_policy.clone(), kube_dns.clone()];
    assert_eq!(
        verdict(&objects, "prod/client", "10.96.0.10:53/udp"),
        "allow dns[0]"
    );
    assert_eq!(
        verdict(&objects, "prod/client", "10.96.0.10:53/tcp"),
        "deny"
    );
    // A port the Service does not have: nothing behind it.
    assert_eq!(
        verdict(&objects, "prod/client", "10.96.0.10:54/udp"),
        "deny"
    );

    // The target port counts, not the Service port.
    let web = service(
        "prod",
        "web",
        "10.96.0.20",
        &[("http", "TCP", 80, 8080)],
        &["10.1.0.1"],
    );
    let to_8080 = egress_policy(
        "web",
        "  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n",
    );
    let to_80 = egress_policy(
        "web",
        "  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 80}]\n",
    );
    assert_eq!(
        verdict(
            &[web.clone(), to_8080.clone()],
            "prod/client",
            "10.96.0.20:80"
        ),
        "allow web[0]"
    );
    assert_eq!(
        verdict(&[web.clone(), to_80], "prod/client", "10.96.0.20:80"),
        "deny"
    );
    // A named target port resolves through the backend's own ports.
    let named = egress_policy(
        "web",
        "  - to: [{podSelector: {}}]\n    ports: [{port: http}]\n",
    );
    assert_eq!(
        verdict(&[web.clone(), named], "prod/client", "10.96.0.20:80"),
        "allow web[0]"
    );

    // Mixed backends: kube-proxy may pick the denied one, so the Service
    // port is denied whole.
    let mixed = service(
        "prod",
        "mixed",
        "10.96.0.21",
        &[("", "TCP", 80, 8080)],
        &["10.1.0.1", "10.1.0.2"],
    );
    assert_eq!(
        verdict(&[mixed, to_8080.clone()], "prod/client", "10.96.0.21:80"),
        "deny"
    );

    // An ipBlock around the Service range does not open a Service whose
    // backends it does not allow.
    let range = egress_policy("range", "  - to: [{ipBlock: {cidr: 10.96.0.0/12}}]\n");
    let db = service(
        "prod",
        "db",
        "10.96.0.22",
        &[("", "TCP", 5432, 5432)],
        &["10.1.0.2"],
    );
    assert_eq!(
        verdict(
            &[db.clone(), range.clone()],
            "prod/client",
            "10.96.0.22:5432"
        ),
        "deny"
    );
    // ... while the rest of the range keeps its rule.
    assert_eq!(
        verdict(&[db, range], "prod/client", "10.96.0.99:5432"),
        "allow range[0]"
    );

    // No ready backend: denied for a policed workload.
    let empty = service("prod", "empty", "10.96.0.23", &[("", "TCP", 80, 8080)], &[]);
    assert_eq!(
        verdict(
            &[empty.clone(), to_8080.clone()],
            "prod/client",
            "10.96.0.23:80"
        ),
        "deny"
    );
    assert_eq!(verdict(&[empty], "dev/client", "10.96.0.23:80"), "allow");
}

#[test]
fn a_service_leading_outside_the_cluster_is_for_gateways_only() {
    // A selector-less Service whose endpoints are on the internet.
    let out = service(
        "dev",
        "out",
        "10.96.0.99",
        &[("", "TCP", 80, 80)],
        &["203.0.113.10"],
    );
    let gw = gateway("");
    let objects = [out.clone(), gw.clone()];
    assert_eq!(
        verdict(&objects, "dev/client", "10.96.0.99:80"),
        "deny exclusivity"
    );
    assert_eq!(
        verdict(&objects, "istio-system/gw", "10.96.0.99:80"),
        "allow"
    );
    // Other Service addresses stay inside the cluster.
    assert_eq!(verdict(&objects, "dev/client", "10.96.0.98:80"), "allow");
    assert_eq!(
        verdict(&[out], "dev/client", "10.96.0.99:80"),
        "allow",
        "no gateway, no exclusivity"
    );
}

#[test]
fn nodes_and_the_api_server_are_inside_the_cluster() {
    let api = service(
        "default",
        "kubernetes",
        "10.96.0.1",
        &[("https", "TCP", 443, 6443)],
        &["192.168.50.10"],
    );
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
                status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: Hostname, address: node-a}]}"
        .to_owned();
    let objects = [api.clone(), node.clone(), gateway("")];
    assert_eq!(
        verdict(&objects, "dev/client", "192.168.50.10:6443"),
        "allow"
    );
    assert_eq!(verdict(&objects, "dev/client", "10.96.0.1:443"), "allow");
    assert_eq!(verdict(&objects, "dev/client", "172.18.0.2:10250"), "allow");
    assert_eq!(
        verdict(&objects, "dev/client", "172.18.0.3:10250"),
        "deny exclusivity"
    );
    // A policed pod reaches the API through its ClusterIP when a policy
    // allows the API server's endpoint.
    let to_api = egress_policy(
        "api",
        "  - to: [{ipBlock: {cidr: 192.168.50.10/32}}]\n    ports: [{port: 6443}]\n",
    );
    let objects = [api, node, gateway(""), to_api];
    assert_eq!(
        verdict(&objects, "prod/client", "10.96.0.1:443"),
        "allow api[0]"
    );
}

#[test]
fn pods_on_other_nodes_are_peers_but_never_enforced_here() {
    let remote = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
                  metadata: {name: remote-web, namespace: prod, labels: {app: web}}\n\
                  spec: {nodeName: node-b, addresses: [10.9.0.5], ports: [{name: http, port: 8080}]}"
        .to_owned();
    let policy = egress_policy(
        "web",
        "  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: http}]\n",
    );
    let objects = [remote.clone(), policy];
    assert_eq!(
        verdict(&objects, "prod/client", "10.9.0.5:8080"),
        "allow web[0]"
    );
    assert_eq!(verdict(&objects, "prod/client", "10.9.0.5:8081"), "deny");

    let mut text = BASE.to_owned();
    text.push_str("\n---\n");
    text.push_str(&remote);
    let loaded = egress_policy::load_sources(&[Source::new("case.yaml", text)]).expect("valid");
    let plan = compile::compile(&loaded.model);
    assert!(plan.workload(&"prod/remote-web".parse().unwrap()).is_none());
}

/// Two nodes, as `kubectl get nodes -o yaml` gives them: a NodePort is
/// open on every node's addresses.
fn nodes() -> String {
    "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
     status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: \"fd00:18::2\"}]}\n---\n\
     apiVersion: v1\nkind: Node\nmetadata: {name: node-b}\n\
     status: {addresses: [{type: InternalIP, address: 172.18.0.3}, {type: ExternalIP, address: 198.51.100.3}]}"
        .to_owned()
}

/// A Service of `type` with one TCP port and its `nodePort`, `spec` fields
/// and a `status` besides, and a slice of ready `backends` at `target`.
fn typed_service(
    name: &str,
    ty: &str,
    (port, target, node_port): (u16, u16, u16),
    (spec, status): (&str, &str),
    backends: &[&str],
) -> String {
    let addresses: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: prod}}\n\
         spec: {{type: {ty}, clusterIP: 10.96.1.{node_low}, ports: [{{protocol: TCP, port: {port}, nodePort: {node_port}}}]{spec}}}\n\
         {status}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-x1, namespace: prod, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [{}], conditions: {{ready: true}}}}]\nports: [{{protocol: TCP, port: {target}}}]",
        addresses.join(", "),
        node_low = node_port % 250,
    )
}

#[test]
fn a_node_port_is_judged_by_its_backends_and_the_node_keeps_its_other_ports() {
    let web = typed_service(
        "web",
        "NodePort",
        (80, 8080, 30080),
        ("", ""),
        &["10.1.0.1"],
    );
    let to_web = egress_policy(
        "web",
        "  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n",
    );
    let objects = [nodes(), web.clone(), to_web];
    // The node address is denied, but its NodePort leads to an allowed
    // backend: on every node address of the Service's family.
    for node in ["172.18.0.2", "172.18.0.3", "198.51.100.3"] {
        assert_eq!(
            verdict(&objects, "prod/client", &format!("{node}:30080")),
            "allow web[0]",
            "{node}"
        );
        assert_eq!(
            verdict(&objects, "prod/client", &format!("{node}:10250")),
            "deny",
            "{node}: the node's own port"
        );
    }
    // An IPv4 Service has no NodePort on the node's IPv6 address (kube-proxy
    // programs each family apart): that port is the node's own.
    assert_eq!(
        verdict(&objects, "prod/client", "[fd00:18::2]:30080"),
        "deny"
    );
    assert_eq!(
        verdict(&objects, "prod/client", "[::ffff:172.18.0.2]:30080"),
        "allow web[0]",
        "IPv4-mapped is IPv4"
    );
    assert_eq!(
        verdict(&objects, "prod/client", "172.18.0.2:30080/udp"),
        "deny",
        "the NodePort is TCP"
    );

    // The node address is allowed, and a NodePort whose backend is not
    // is denied on its own.
    let nodes_allowed = egress_policy("nodes", "  - to: [{ipBlock: {cidr: 172.18.0.0/16}}]\n");
    let db = typed_service(
        "db",
        "NodePort",
        (5432, 5432, 30432),
        ("", ""),
        &["10.1.0.2"],
    );
    let objects = [nodes(), db, web, nodes_allowed];
    assert_eq!(verdict(&objects, "prod/client", "172.18.0.2:30432"), "deny");
    assert_eq!(
        verdict(&objects, "prod/client", "172.18.0.2:10250"),
        "allow nodes[0]"
    );
    assert_eq!(verdict(&objects, "prod/client", "172.18.0.3:30080"), "deny");
    // A node the Service's nodes do not list keeps its CIDR's answer.
    assert_eq!(
        verdict(&objects, "prod/client", "172.18.0.9:30432"),
        "allow nodes[0]"
    );
}

#[test]
fn a_node_port_leading_outside_is_for_gateways_only_though_the_node_is_inside() {
    let out = typed_service(
        "out",
        "NodePort",
        (80, 80, 30099),
        ("", ""),
        &["203.0.113.10"],
    );
    let objects = [nodes(), out, gateway("")];
    assert_eq!(
        verdict(&objects, "dev/client", "172.18.0.2:30099"),
        "deny exclusivity"
    );
    // The Service is IPv4 alone: the node's IPv6 address has no NodePort
    // to the internet, its port 30099 is the node's own.
    assert_eq!(
        verdict(&objects, "dev/client", "[fd00:18::2]:30099"),
        "allow"
    );
    assert_eq!(
        verdict(&objects, "dev/client", "172.18.0.2:10250"),
        "allow",
        "the node's other ports stay inside"
    );
    assert_eq!(
        verdict(&objects, "istio-system/gw", "172.18.0.2:30099"),
        "allow"
    );
}

#[test]
fn external_and_load_balancer_ips_are_judged_by_their_backends() {
    let web = typed_service(
        "web",
        "LoadBalancer",
        (80, 8080, 30080),
        (
            ", externalIPs: [192.0.2.50]",
            "status: {loadBalancer: {ingress: [{ip: 192.0.2.60}]}}\n",
        ),
        &["10.1.0.1"],
    );
    let to_web = egress_policy(
        "web",
        "  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n",
    );
    let everywhere = egress_policy(
        "all",
        "  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]\n    ports: [{port: 9999}]\n",
    );
    for ip in ["192.0.2.50", "192.0.2.60", "10.96.1.80"] {
        let objects = [web.clone(), to_web.clone()];
        assert_eq!(
            verdict(&objects, "prod/client", &format!("{ip}:80")),
            "allow web[0]",
            "{ip}"
        );
        assert_eq!(
            verdict(&objects, "prod/client", &format!("{ip}:8080")),
            "deny",
            "{ip}: not a port of the Service"
        );
        // An ipBlock around the address does not open the Service port.
        let objects = [web.clone(), everywhere.clone()];
        assert_eq!(
            verdict(&objects, "prod/client", &format!("{ip}:80")),
            "deny"
        );
    }
    // With gateway exclusivity: the Service ports of an external or load
    // balancer IP whose backends are inside stay inside, and nothing else
    // of that address does.
    let objects = [web, gateway("")];
    for ip in ["192.0.2.50", "192.0.2.60"] {
        assert_eq!(
            verdict(&objects, "dev/client", &format!("{ip}:80")),
            "allow"
        );
        assert_eq!(
            verdict(&objects, "dev/client", &format!("{ip}:443")),
            "deny exclusivity",
            "{ip}: whoever owns the address answers other ports"
        );
    }
    let out = typed_service(
        "out",
        "ClusterIP",
        (80, 80, 30099),
        (", externalIPs: [192.0.2.70]", ""),
        &["203.0.113.10"],
    );
    assert_eq!(
        verdict(&[out, gateway("")], "dev/client", "192.0.2.70:80"),
        "deny exclusivity",
        "an external IP leading outside stays outside"
    );
}
