//! Bad input: every case must name the file, the object, the field and the
//! reason (and the line where the parser gives one), and `check` must report
//! all errors at once and exit 1.

use std::{fs, path::PathBuf, process::Command};

use egress_policy::{
    ports::{PortMatch, PortRange},
    Diagnostic, Severity, Source,
};

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---\n";
const WORKLOAD: &str = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
    metadata: {name: app, namespace: prod, labels: {app: web}}\nspec: {cgroup: t/app, addresses: [10.1.0.1]}\n---\n";

fn np(egress: &str) -> String {
    format!(
        "{NS}{WORKLOAD}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\n  namespace: prod\n\
         spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n{egress}"
    )
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match egress_policy::load_sources(&[Source::new("policies/case.yaml", text)]) {
        Ok(loaded) => panic!("expected rejection; warnings: {:#?}", loaded.warnings),
        Err(rejected) => rejected
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
    }
}

/// Asserts exactly one error, whose rendering contains every fragment.
fn one_error(text: &str, fragments: &[&str]) -> Diagnostic {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let rendered = errs[0].to_string();
    for f in fragments {
        assert!(rendered.contains(f), "{rendered:?} lacks {f:?}");
    }
    errs[0].clone()
}

#[test]
fn yaml_syntax_error_names_file_and_line() {
    let d = one_error(
        "apiVersion: v1\nkind: [Namespace\nmetadata: {}\n",
        &["policies/case.yaml:", "YAML syntax error"],
    );
    assert!(d.location.is_some());
}

#[test]
fn unknown_kind_is_refused_with_the_known_ones() {
    let d = one_error(
        "apiVersion: egress.enforcer.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: x}\n",
        &[
            "policies/case.yaml:2:1",
            "kind",
            "unknown kind \"EgressPolicy\"",
            "EgressGateway",
        ],
    );
    assert_eq!(d.field.map(|f| f.to_string()).as_deref(), Some("kind"));
}

#[test]
fn wrong_api_version_for_a_known_kind() {
    one_error(
        "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {}\n",
        &["policies/case.yaml:1:", "apiVersion", "networking.k8s.io/v1"],
    );
}

#[test]
fn unknown_fields_are_errors_with_path_and_line() {
    let text = np("  - to:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelektor: {}\n");
    one_error(
        &text,
        &[
            "policies/case.yaml:21:7",
            "NetworkPolicy prod/np",
            "spec.egress[0].to[0].podSelektor",
            "unknown field `podSelektor`",
        ],
    );
}

#[test]
fn bad_cidr() {
    one_error(
        &np("  - to:\n    - ipBlock: {cidr: 10.0.0.0/33}\n"),
        &[
            "policies/case.yaml:20:17",
            "NetworkPolicy prod/np",
            "spec.egress[0].to[0].ipBlock.cidr",
            "invalid CIDR \"10.0.0.0/33\"",
        ],
    );
}

#[test]
fn except_outside_cidr() {
    one_error(
        &np("  - to:\n    - ipBlock:\n        cidr: 10.0.0.0/8\n        except: [10.1.0.0/16, 192.168.0.0/16]\n"),
        &["policies/case.yaml:22:31", "spec.egress[0].to[0].ipBlock.except[1]", "except 192.168.0.0/16 is not a strict subset of cidr 10.0.0.0/8"],
    );
}

/// The warnings of a policy set that must be accepted.
fn warnings(text: &str) -> Vec<Diagnostic> {
    match egress_policy::load_sources(&[Source::new("policies/case.yaml", text)]) {
        Ok(loaded) => loaded.warnings,
        Err(rejected) => panic!("expected acceptance: {:#?}", rejected.diagnostics),
    }
}

/// Asserts one warning whose rendering contains every fragment.
fn has_warning(text: &str, fragments: &[&str]) {
    let rendered: Vec<String> = warnings(text).iter().map(ToString::to_string).collect();
    assert!(
        rendered
            .iter()
            .any(|w| fragments.iter().all(|f| w.contains(f))),
        "no warning with {fragments:?} in {rendered:#?}"
    );
}

/// kube-apiserver 1.20 has no endPort and drops it, so it accepts any
/// value: the agent too, ignoring one it cannot honour, with a warning.
#[test]
fn end_port_below_port_is_ignored_with_a_warning() {
    has_warning(
        &np("  - ports:\n    - port: 8080\n      endPort: 80\n"),
        &[
            "policies/case.yaml:21:7",
            "spec.egress[0].ports[0].endPort",
            "endPort 80 is ignored",
            "only `port` applies",
        ],
    );
}

/// kube-apiserver 1.20 accepts a zero-padded prefix length (Go's
/// ParseCIDR); the agent enforces the canonical network and says so.
#[test]
fn zero_padded_prefix_is_accepted_with_a_warning() {
    has_warning(
        &np("  - to:\n    - ipBlock: {cidr: 10.20.0.0/016}\n"),
        &[
            "NetworkPolicy prod/np",
            "spec.egress[0].to[0].ipBlock.cidr",
            "zero-padded prefix length",
            "enforced as 10.20.0.0/16",
        ],
    );
}

/// kube-apiserver 1.20 refuses what Go's ParseCIDR refuses: a leading
/// zero in an IPv4 octet, a bare address, surrounding space.
#[test]
fn cidrs_go_refuses_are_refused() {
    for cidr in ["010.1.2.3/8", "10.0.0.0", "' 10.0.0.0/8'"] {
        one_error(
            &np(&format!("  - to:\n    - ipBlock: {{cidr: {cidr}}}\n")),
            &["spec.egress[0].to[0].ipBlock.cidr", "invalid CIDR"],
        );
    }
}

#[test]
fn invalid_label_key_in_a_selector() {
    one_error(
        &np("  - to:\n    - podSelector: {matchLabels: {Example.com/app: web}}\n"),
        &[
            "NetworkPolicy prod/np",
            "spec.egress[0].to[0].podSelector.matchLabels[\"Example.com/app\"]",
            "not a qualified name",
        ],
    );
}

#[test]
fn invalid_label_value_on_a_namespace() {
    one_error(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {team: -a}}\n",
        &[
            "Namespace prod",
            "metadata.labels.team",
            "not a valid label value",
        ],
    );
}

#[test]
fn namespace_names_are_dns_labels() {
    one_error(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n",
        &["metadata.name", "DNS label"],
    );
}

#[test]
fn unquoted_number_as_a_label_value() {
    one_error(
        &np("  - to:\n    - podSelector: {matchLabels: {tier: 1}}\n"),
        &[
            "spec.egress[0].to[0].podSelector.matchLabels.tier",
            "a number to kubectl (YAML 1.1), where Kubernetes expects a string",
        ],
    );
}

/// kubectl reads YAML 1.1, where a plain `yes` is a boolean; the API
/// server refuses it wherever a string goes, and so does the agent.
#[test]
fn unquoted_yaml11_boolean_where_a_string_goes() {
    for (egress, field) in [
        (
            "  - to:\n    - podSelector: {matchLabels: {tier: yes}}\n",
            "spec.egress[0].to[0].podSelector.matchLabels.tier",
        ),
        (
            "  - ports:\n    - port: 80\n      protocol: on\n",
            "spec.egress[0].ports[0].protocol",
        ),
        (
            "  - to:\n    - podSelector:\n        matchExpressions: [{key: app, operator: In, values: [n]}]\n",
            "spec.egress[0].to[0].podSelector.matchExpressions[0].values[0]",
        ),
    ] {
        one_error(
            &np(egress),
            &[field, "to kubectl (YAML 1.1)", "a boolean", "quote it"],
        );
    }
    // A named port is a string too: `yes` is no port name to kubectl.
    one_error(
        &np("  - ports:\n    - port: yes\n"),
        &[
            "policies/case.yaml:20:13",
            "spec.egress[0].ports[0].port",
            "`yes` is the boolean true to kubectl",
        ],
    );
}

/// `0120` is octal 80 to kubectl, `1_000` is 1000 and `80.0` is sent as
/// 80: the API server stores those numbers, and the agent enforces them,
/// saying how it read them.
#[test]
fn yaml11_numbers_are_enforced_as_kubectl_reads_them() {
    for (written, port) in [("0120", 80), ("1_000", 1000), ("80.0", 80), ("0x50", 80)] {
        let text = np(&format!(
            "  - ports:\n    - port: {written}\n      protocol: TCP\n"
        ));
        let loaded = egress_policy::load_sources(&[Source::new("policies/case.yaml", text)])
            .unwrap_or_else(|r| panic!("{written}: {r:#?}"));
        let spec = &loaded.model.network_policies[0].egress[0].ports[0];
        let range = PortRange::new(port, port).expect("a port");
        assert_eq!(spec.port, PortMatch::Range(range), "{written}");
        // `0x50` means 80 in every YAML: nothing to say about it.
        let warned = loaded.warnings.iter().any(|w| {
            let w = w.to_string();
            w.contains("spec.egress[0].ports[0].port") && w.contains("in YAML 1.1")
        });
        assert_eq!(
            warned,
            written != "0x50",
            "{written}: {:#?}",
            loaded.warnings
        );
    }
}

#[test]
fn port_out_of_range() {
    one_error(
        &np("  - ports:\n    - port: 65536\n"),
        &[
            "policies/case.yaml:20:7",
            "spec.egress[0].ports[0].port",
            "port 65536 is out of range",
        ],
    );
}

#[test]
fn wrong_type_has_path_and_line() {
    one_error(
        &np("  - ports:\n    - port: [80]\n"),
        &[
            "policies/case.yaml:20:13",
            "NetworkPolicy prod/np",
            "spec.egress[0].ports[0].port",
        ],
    );
}

#[test]
fn selector_matching_nothing_is_a_warning() {
    let text = np("  - to:\n    - podSelector: {matchLabels: {app: ghost}}\n");
    let loaded = egress_policy::load_sources(&[Source::new("policies/case.yaml", text)])
        .expect("only a warning");
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);
    let w = loaded.warnings[0].to_string();
    for f in [
        "policies/case.yaml:20:",
        "warning",
        "NetworkPolicy prod/np",
        "spec.egress[0].to[0]",
        "matches no workload",
    ] {
        assert!(w.contains(f), "{w:?} lacks {f:?}");
    }
}

#[test]
fn two_gateways_claiming_one_workload() {
    let gw = |name: &str| {
        format!(
            "---\napiVersion: egress.enforcer.dev/v1alpha1\nkind: EgressGateway\nmetadata: {{name: {name}, namespace: prod}}\n\
             spec:\n  selector: {{podSelector: {{matchLabels: {{app: web}}}}}}\n  clusterCIDRs: [10.0.0.0/8]\n"
        )
    };
    let text = format!("{NS}{WORKLOAD}{}{}", gw("first"), gw("second"));
    one_error(
        &text,
        &[
            "policies/case.yaml:",
            "EgressGateway prod/second",
            "spec.selector",
            "workload prod/app is already claimed by EgressGateway prod/first",
        ],
    );
}

#[test]
fn duplicate_object_names() {
    let text = format!("{NS}{WORKLOAD}{}", WORKLOAD.trim_end_matches("---\n"));
    one_error(
        &text,
        &[
            "policies/case.yaml:",
            "Workload prod/app",
            "metadata.name",
            "duplicate Workload prod/app: already defined at policies/case.yaml:5",
        ],
    );
}

#[test]
fn duplicates_across_files_name_both_files() {
    let a = Source::new("a.yaml", NS);
    let b = Source::new("b.yaml", NS.trim_end_matches("---\n"));
    let err = egress_policy::load_sources(&[a, b]).expect_err("duplicate namespace");
    let rendered = err.diagnostics[0].to_string();
    assert!(
        rendered.starts_with("b.yaml:") && rendered.contains("already defined at a.yaml:1"),
        "{rendered}"
    );
}

#[test]
fn bad_istio_annotation_on_a_workload() {
    let text = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: w\n  namespace: prod\n  annotations:\n    \
        traffic.sidecar.istio.io/excludeOutboundIPRanges: \"10.0.0.0/8,not-a-cidr\"\nspec: {cgroup: t/w}\n";
    one_error(
        text,
        &[
            "policies/case.yaml:7:",
            "Workload prod/w",
            "metadata.annotations[\"traffic.sidecar.istio.io/excludeOutboundIPRanges\"]",
            "item 1: invalid CIDR \"not-a-cidr\"",
        ],
    );
}

#[test]
fn all_errors_are_reported_not_only_the_first() {
    let text = np("  - to:\n    - ipBlock: {cidr: 300.0.0.0/8}\n    ports:\n    - port: 0\n    - port: 90\n      endPort: 80\n      protocol: ICMP\n");
    let errs = errors(&text);
    let messages: Vec<String> = errs.iter().map(ToString::to_string).collect();
    // The reversed endPort is only a warning (see above).
    assert_eq!(errs.len(), 3, "{messages:#?}");
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_egress-agent"))
}

fn repo_policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

#[test]
fn check_accepts_the_seed_policies() {
    let out = agent()
        .arg("check")
        .arg(repo_policies())
        .output()
        .expect("run egress-agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok:"));
}

#[test]
fn check_exits_1_and_prints_every_error_to_stderr() {
    let dir = std::env::temp_dir().join(format!("egress-bad-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    fs::write(
        dir.join("a.yaml"),
        np("  - to:\n    - ipBlock: {cidr: 10.0.0.0/40}\n"),
    )
    .expect("write");
    fs::write(
        dir.join("b.yml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n",
    )
    .expect("write");
    fs::write(dir.join("ignored.txt"), "not yaml: [").expect("write");
    let out = agent()
        .arg("check")
        .arg(&dir)
        .output()
        .expect("run egress-agent");
    fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a.yaml:20:17") && stderr.contains("invalid CIDR"),
        "{stderr}"
    );
    assert!(
        stderr.contains("b.yml:3:") && stderr.contains("not a valid Kubernetes name"),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s)"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn explain_cli_reports_verdict_and_rule() {
    let out = agent()
        .args(["explain"])
        .arg(repo_policies())
        .args([
            "--from",
            "test-egress/sleep",
            "--to",
            "10.244.0.10:53/udp",
            "-o",
            "json",
        ])
        .output()
        .expect("run egress-agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["verdict"], "allow");
    assert_eq!(
        v["reason"]["rule"]["policy"]["name"],
        "allow-egress-to-istio-system-and-kube-dns"
    );
    assert_eq!(v["reason"]["rule"]["index"], 0);
}

#[test]
fn bad_service_and_endpoint_addresses_name_the_object_and_field() {
    one_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\n\
         spec:\n  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n",
        &[
            "policies/case.yaml:5:",
            "Service prod/web",
            "spec.clusterIP",
            "invalid IP address \"10.96.0.300\"",
        ],
    );
    // Both findings of one slice are reported together.
    let errs = errors(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: web-1, namespace: prod, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nendpoints:\n- addresses: [10.1.0.1, nope]\nports: [{port: 70000}]\n",
    );
    let rendered: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 2, "{rendered:#?}");
    assert!(
        rendered
            .iter()
            .all(|r| r.contains("EndpointSlice prod/web-1")),
        "{rendered:#?}"
    );
    assert!(
        rendered
            .iter()
            .any(|r| r.contains("endpoints[0].addresses[1]")),
        "{rendered:#?}"
    );
    assert!(
        rendered.iter().any(|r| r.contains("ports[0].port")),
        "{rendered:#?}"
    );
    let errs = errors(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
         status: {addresses: [{type: InternalIP, address: 10.0.0.300}]}\n",
    );
    assert!(errs[0].to_string().contains("Node n1"), "{errs:#?}");
    assert!(
        errs[0].to_string().contains("status.addresses[0].address"),
        "{errs:#?}"
    );
}

#[test]
fn redirect_capture_must_be_sidecar_or_all() {
    let redirect = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Redirect\n\
        metadata: {name: r, namespace: prod}\nspec: {podSelector: {}, capture: Everyone}\n";
    one_error(
        &format!("{NS}{WORKLOAD}{redirect}"),
        &[
            "policies/case.yaml",
            "Redirect prod/r",
            "spec.capture",
            "`Everyone`",
            "Sidecar",
            "All",
        ],
    );
}

#[test]
fn an_unknown_interception_mode_names_the_annotation() {
    let workload = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
        metadata:\n  name: app\n  namespace: prod\n  annotations: {sidecar.istio.io/interceptionMode: redirect}\n\
        spec: {cgroup: t/app}\n";
    one_error(
        &format!("{NS}{workload}"),
        &[
            "Workload prod/app",
            "sidecar.istio.io/interceptionMode",
            "\"redirect\"",
            "REDIRECT, TPROXY or NONE",
        ],
    );
}

#[test]
fn allowed_hosts_is_a_list_or_from_service_entries() {
    let gateway = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: EgressGateway\n\
        metadata: {name: gw, namespace: prod}\n\
        spec: {selector: {podSelector: {}}, clusterCIDRs: [10.0.0.0/8], allowedHosts: fromEverything}\n";
    one_error(
        &format!("{NS}{WORKLOAD}{gateway}"),
        &[
            "EgressGateway prod/gw",
            "spec.allowedHosts",
            "\"fromEverything\"",
            "fromServiceEntries",
        ],
    );
}

#[test]
fn a_service_entry_port_out_of_range_names_the_entry_and_the_field() {
    let entry = "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\n\
        metadata: {name: cnn, namespace: prod}\n\
        spec: {hosts: [edition.cnn.com], ports: [{number: 70000, name: https, protocol: TLS}]}\n";
    one_error(
        &format!("{NS}{entry}"),
        &["ServiceEntry prod/cnn", "spec.ports[0].number", "70000"],
    );
}

#[test]
fn a_wildcard_service_entry_host_is_a_warning_and_the_rest_holds() {
    let entry = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: {name: wiki, namespace: prod}\n\
        spec: {hosts: [\"*.wikipedia.org\", en.wikipedia.org], ports: [{number: 443, name: tls, protocol: TLS}]}\n";
    let loaded =
        egress_policy::load_sources(&[Source::new("policies/case.yaml", format!("{NS}{entry}"))])
            .expect("a wildcard host is not an error");
    let warning = loaded
        .warnings
        .iter()
        .map(ToString::to_string)
        .find(|w| w.contains("*.wikipedia.org"))
        .expect("a warning names the wildcard");
    assert!(warning.contains("spec.hosts[0]"), "{warning}");
    let entry = &loaded.model.service_entries[0];
    assert_eq!(
        entry.hosts.len(),
        1,
        "en.wikipedia.org stays: {:?}",
        entry.hosts
    );
}
