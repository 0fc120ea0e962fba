//! The seed scenario on a real cluster, proven with real pods and
//! `kubectl exec`. Shared by `k8s-test` (the local 1.20 cluster) and
//! `kind-test`.
//!
//! 1. A test-egress pod cannot reach the internet, but can reach DNS.
//! 2. The egress gateway can reach its allowed host, and only that.
//! 3. A new pod is enforced from its first packet: its command connects
//!    out from t=0 in a loop and logs each attempt against the node's
//!    uptime clock; not one attempt may reach the internet.
//! 4. Deleting the NetworkPolicy changes the verdict (and re-creating it
//!    changes it back).
//! 5. The sidecar Redirect: an app's connection goes to its istio-proxy
//!    container, which is exempt from the redirect and still denied.
//! 6. With no agent running, enforcement stays in force; the replacement
//!    adopts the pinned links. Where the host is at hand, the agent is
//!    also SIGKILLed.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::kubectl::Kubectl;

/// What differs between clusters.
pub struct Cluster<'a> {
    pub kubectl: &'a Kubectl,
    /// The image with busybox (`sh`, `nc`, `nslookup`, `httpd`).
    pub toolbox_image: &'a str,
    pub image_pull_policy: &'a str,
    /// edition.cnn.com's address on the simulated internet (allowed for
    /// the gateway) and httpbin.org's (not allowed).
    pub allowed_host: (&'a str, &'a str),
    pub other_host: (&'a str, &'a str),
    /// kube-dns's pod address (a TCP connection to its port 53 is what the
    /// seed NetworkPolicy forbids, and deleting it allows).
    pub dns_pod_ip: String,
    /// The repository's policies/ directory.
    pub policies: &'a Path,
    /// Reads the node's clock (seconds since boot, as /proc/uptime), which
    /// the pods read too.
    pub node_uptime: &'a dyn Fn() -> anyhow::Result<f64>,
    /// SIGKILLs the agent's process from the host and returns its pid,
    /// where the test can see the node's processes (on `app_node`).
    pub kill_agent: Option<&'a dyn Fn() -> anyhow::Result<u32>>,
    /// Reboots a node as far as the enforcer can tell (see
    /// [`super::reboot`]), where the test runs the nodes itself.
    pub reboot: Option<&'a RebootNode<'a>>,
    /// Where the gateway and DNS run, and where the applications run
    /// (a `kubernetes.io/hostname` nodeSelector); None: anywhere.
    pub gateway_node: Option<&'a str>,
    pub app_node: Option<&'a str>,
    /// Probe as a user would: by external and Service names (resolved
    /// through the pod's resolv.conf, i.e. the kube-dns Service) with
    /// busybox wget, instead of by literal addresses.
    pub by_name: bool,
}

/// Reboots one node (see [`Cluster::reboot`]).
pub type RebootNode<'a> = dyn Fn(&super::layout::NodeSpec) -> anyhow::Result<()> + 'a;

/// The measured times, for the summary.
#[derive(Default)]
pub struct Timings {
    pub first_packet_ms: Option<f64>,
    pub policy_applied_ms: Option<f64>,
    pub np_delete_effect_ms: Option<f64>,
    pub np_create_effect_ms: Option<f64>,
    pub agent_gap_ms: Option<f64>,
    pub agent_replaced_ms: Option<f64>,
}

/// One check's outcome, printed as it happens.
pub struct Checks {
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Self {
            passed: 0,
            failed: Vec::new(),
        }
    }

    pub fn check(&mut self, ok: bool, what: &str, observed: &str) {
        if ok {
            self.passed += 1;
            println!("✓  {what}: {observed}");
        } else {
            self.failed.push(what.to_owned());
            println!("✗  {what}: {observed}");
        }
    }

    pub fn passed(&self) -> usize {
        self.passed
    }

    pub fn failed(&self) -> &[String] {
        &self.failed
    }
}

/// What one connection attempt from a pod came to.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Outcome {
    /// Connected (and, for HTTP, answered).
    Ok,
    /// connect() failed with EPERM: refused by the agent's programs.
    Eperm,
    Refused,
    Timeout,
    /// The name did not resolve (busybox: "bad address").
    Unresolved,
    Other,
}

impl Outcome {
    fn classify(success: bool, text: &str) -> Self {
        if text.contains("Operation not permitted") {
            Self::Eperm
        } else if text.contains("refused") {
            Self::Refused
        } else if text.contains("timed out")
            || text.contains("Terminated")
            // `timeout` killed the command (SIGTERM): nothing answered.
            || text.contains("exit code 143")
        {
            Self::Timeout
        } else if text.contains("bad address") {
            Self::Unresolved
        } else if success {
            Self::Ok
        } else {
            Self::Other
        }
    }
}

/// An HTTP/1.0 GET with busybox nc: the answer's first line, or nc's
/// error.
fn http_get(ip: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 6 nc -w 4 {ip} {port} 2>&1")
}

/// A bare TCP connect: `nc -e true` runs `true` once connected, which
/// closes the connection at once, whatever the server speaks.
fn tcp_connect(ip: &str, port: u16) -> String {
    format!("timeout 6 nc -w 4 {ip} {port} -e true 2>&1")
}

/// An HTTP request from `namespace/pod` to `ip:port`; returns the outcome
/// and the first line printed.
pub fn probe(
    kubectl: &Kubectl,
    namespace: &str,
    pod: &str,
    ip: &str,
    port: u16,
) -> anyhow::Result<(Outcome, String)> {
    probe_in(kubectl, namespace, pod, None, ip, port)
}

/// A bare TCP connect from `namespace/pod` to `ip:port`, whatever the
/// port: the outcome, and the first line printed.
pub fn probe_connect(
    kubectl: &Kubectl,
    namespace: &str,
    pod: &str,
    ip: &str,
    port: u16,
) -> anyhow::Result<(Outcome, String)> {
    let out = kubectl.exec_in(namespace, pod, None, &tcp_connect(ip, port))?;
    let text = format!("{}{}", out.stdout, out.stderr);
    Ok((Outcome::classify(out.success, &text), first_line(&text)))
}

/// As [`probe`], from `container` of the pod.
pub fn probe_in(
    kubectl: &Kubectl,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    ip: &str,
    port: u16,
) -> anyhow::Result<(Outcome, String)> {
    let script = if port == 80 {
        http_get(ip, port)
    } else {
        tcp_connect(ip, port)
    };
    let out = kubectl.exec_in(namespace, pod, container, &script)?;
    let text = format!("{}{}", out.stdout, out.stderr);
    Ok((Outcome::classify(out.success, &text), first_line(&text)))
}

/// `wget http://HOST/` (busybox) from `namespace/pod`, `HOST` a name
/// resolved by the pod's resolver: the outcome, and the status line or
/// wget's error.
pub fn fetch(
    kubectl: &Kubectl,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    host: &str,
) -> anyhow::Result<(Outcome, String)> {
    // -S prints the status line on stderr; `timeout` bounds a connect
    // that is never answered (a dropped SYN).
    let script = format!("timeout 8 wget -S -q -O- http://{host}/ 2>&1");
    let out = kubectl.exec_in(namespace, pod, container, &script)?;
    let text = format!("{}{}", out.stdout, out.stderr);
    let shown = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("HTTP/") || l.starts_with("wget:") || l.contains("Terminated"))
        .collect::<Vec<_>>()
        .join(" / ");
    let shown = if shown.is_empty() {
        first_line(&text)
    } else {
        shown
    };
    Ok((Outcome::classify(out.success, &text), shown))
}

/// [`fetch`] by `name` when the cluster probes by name, else [`probe`]
/// of `ip:80`; the target as shown.
fn fetch_or_probe(
    cluster: &Cluster<'_>,
    namespace: &str,
    pod: &str,
    (name, ip): (&str, &str),
) -> anyhow::Result<(Outcome, String, String)> {
    if cluster.by_name {
        let (outcome, text) = fetch(cluster.kubectl, namespace, pod, None, name)?;
        Ok((outcome, text, format!("http://{name}/")))
    } else {
        let (outcome, text) = probe(cluster.kubectl, namespace, pod, ip, 80)?;
        Ok((outcome, text, format!("{name} {ip}:80")))
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if line.is_empty() {
        "(connected; nothing printed)".to_owned()
    } else {
        line.trim().to_owned()
    }
}

/// `spec:` lines that keep a pod on `node` (the way a user pins a pod,
/// with the node's hostname label), or none.
pub fn node_selector(node: Option<&str>) -> String {
    node.map_or(String::new(), |node| {
        format!("  nodeSelector:\n    kubernetes.io/hostname: {node}\n")
    })
}

/// A pod of the toolbox image that runs `script`, on `node` if given.
pub fn pod_yaml_on(
    cluster: &Cluster<'_>,
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    script: &str,
    node: Option<&str>,
) -> String {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    let script = script.replace('\n', "\n        ");
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels:
{labels}spec:
{selector}  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {image}
    imagePullPolicy: {policy}
    command:
    - sh
    - -c
    - |
        {script}
",
        image = cluster.toolbox_image,
        policy = cluster.image_pull_policy,
        selector = node_selector(node),
    )
}

/// A gateway of its own on the gateway node: `istio-system/NAME`, a pod
/// that sleeps, labelled `istio: NAME`, and the EgressGateway that selects
/// it, with the seed's clusterCIDRs and `allowed_hosts` (the YAML value of
/// `allowedHosts`, indented as under the key).
pub fn gateway_yaml(cluster: &Cluster<'_>, name: &str, allowed_hosts: &str) -> String {
    let pod = pod_yaml_on(
        cluster,
        "istio-system",
        name,
        &[("istio", name)],
        "exec sleep 3600",
        cluster.gateway_node,
    );
    format!(
        "{pod}---
apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata:
  name: {name}
  namespace: istio-system
spec:
  selector:
    podSelector:
      matchLabels: {{istio: {name}}}
  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]
  allowedHosts:{allowed_hosts}
"
    )
}

/// A ClusterIP Service `name` in `namespace` on TCP `port`, selecting
/// pods by `selector` (one `key: value`).
pub fn service_yaml(namespace: &str, name: &str, selector: &str, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector:
    {selector}
  ports:
  - name: http
    port: {port}
    protocol: TCP
    targetPort: {port}
"
    )
}

/// Waits for pods matching `selector` in `namespace` to be Ready.
pub fn wait_ready(
    kubectl: &Kubectl,
    namespace: &str,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    kubectl
        .output(&[
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            &format!("--timeout={}s", timeout.as_secs()),
            what,
        ])
        .map(|_| ())
}

pub fn pod_ip(kubectl: &Kubectl, namespace: &str, pod: &str) -> anyhow::Result<String> {
    let ip = kubectl.output(&[
        "get",
        "pod",
        "-n",
        namespace,
        pod,
        "-o",
        "jsonpath={.status.podIP}",
    ])?;
    if ip.trim().is_empty() {
        bail!("pod {namespace}/{pod} has no IP");
    }
    Ok(ip.trim().to_owned())
}

/// The seed's namespaces with their labels, plus the
/// `kubernetes.io/metadata.name` label that 1.21+ adds by itself.
fn apply_namespaces(cluster: &Cluster<'_>) -> anyhow::Result<()> {
    let file = cluster.policies.join("namespaces.yaml");
    let yaml = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    cluster.kubectl.apply(&yaml)?;
    for ns in ["default", "istio-system", "kube-system", "test-egress"] {
        cluster.kubectl.output(&[
            "label",
            "namespace",
            ns,
            &format!("kubernetes.io/metadata.name={ns}"),
            "--overwrite",
        ])?;
    }
    Ok(())
}

const NETWORK_POLICY: &str = "allow-egress-to-istio-system-and-kube-dns";

fn apply_network_policy(cluster: &Cluster<'_>) -> anyhow::Result<()> {
    let file = cluster.policies.join(format!("{NETWORK_POLICY}.yaml"));
    let yaml = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    cluster.kubectl.apply(&yaml)
}

/// Step 0: the namespaces (before kube-dns and the agent).
pub fn prepare(cluster: &Cluster<'_>) -> anyhow::Result<()> {
    apply_namespaces(cluster)
}

/// Runs the scenario on a cluster whose agent is Ready.
pub fn run(cluster: &Cluster<'_>, checks: &mut Checks) -> anyhow::Result<Timings> {
    let k = cluster.kubectl;
    let mut timings = Timings::default();
    let (allowed_name, allowed_ip) = cluster.allowed_host;

    apply_network_policy(cluster)?;
    let gateway_script = "mkdir -p /tmp/www && echo istio-egressgateway > /tmp/www/index.html\n\
                          exec httpd -f -p 80 -h /tmp/www";
    k.apply(&pod_yaml_on(
        cluster,
        "istio-system",
        "istio-egressgateway",
        &[("app", "istio-egressgateway"), ("istio", "egressgateway")],
        gateway_script,
        cluster.gateway_node,
    ))?;
    // The gateway's Service, as istioctl installs it: clients name the
    // Service, never a pod.
    k.apply(&service_yaml(
        "istio-system",
        "istio-egressgateway",
        "istio: egressgateway",
        80,
    ))?;
    k.apply(&pod_yaml_on(
        cluster,
        "test-egress",
        "sleep",
        &[("app", "sleep")],
        "exec sleep 3600",
        cluster.app_node,
    ))?;
    wait_ready(
        k,
        "istio-system",
        "pod/istio-egressgateway",
        Duration::from_secs(120),
    )?;
    wait_ready(k, "test-egress", "pod/sleep", Duration::from_secs(120))?;
    let gateway_ip = pod_ip(k, "istio-system", "istio-egressgateway")?;

    println!(
        "\nk8s-test: 1. a pod without the gateway's role cannot reach the internet; DNS works"
    );
    let (outcome, text, target) =
        fetch_or_probe(cluster, "test-egress", "sleep", cluster.allowed_host)?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!("test-egress/sleep → {target} denied (EPERM)"),
        &text,
    );
    // By name, resolv.conf names the kube-dns Service (a ClusterIP); the
    // seed NetworkPolicy allows UDP 53 to kube-system's pods, its
    // backends.
    let (script, via) = if cluster.by_name {
        (
            format!("nslookup {allowed_name}"),
            "the kube-dns Service (resolv.conf)".to_owned(),
        )
    } else {
        (
            format!("nslookup {allowed_name} {}", cluster.dns_pod_ip),
            format!("kube-dns ({}:53/udp)", cluster.dns_pod_ip),
        )
    };
    let out = k.exec("test-egress", "sleep", &script)?;
    let resolved = out.stdout.lines().any(|l| l.contains(allowed_ip));
    checks.check(
        resolved,
        &format!("test-egress/sleep resolves {allowed_name} through {via}"),
        &format!("{}{}", out.stdout, out.stderr)
            .lines()
            .filter(|l| l.contains("Address") || l.contains("can't") || l.contains("timed out"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; "),
    );
    let (outcome, text, target) = fetch_or_probe(
        cluster,
        "test-egress",
        "sleep",
        ("istio-egressgateway.istio-system", &gateway_ip),
    )?;
    checks.check(
        outcome == Outcome::Ok,
        &format!("test-egress/sleep → the gateway {target} allowed (NetworkPolicy egress[1])"),
        &text,
    );

    println!("\nk8s-test: 2. the egress gateway reaches its allowed host, and only that");
    let (outcome, text, target) = fetch_or_probe(
        cluster,
        "istio-system",
        "istio-egressgateway",
        cluster.allowed_host,
    )?;
    checks.check(
        outcome == Outcome::Ok && text.contains("HTTP/1"),
        &format!("istio-system/istio-egressgateway → {target} allowed"),
        &text,
    );
    let (outcome, text, target) = fetch_or_probe(
        cluster,
        "istio-system",
        "istio-egressgateway",
        cluster.other_host,
    )?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!("istio-system/istio-egressgateway → {target} denied (not in allowedHosts)"),
        &text,
    );

    println!("\nk8s-test: 3. a new pod is enforced from its first packet");
    first_packet(cluster, checks, &gateway_ip, &mut timings)?;

    println!("\nk8s-test: 4. deleting the NetworkPolicy changes the verdict");
    let dns = cluster.dns_pod_ip.clone();
    let (outcome, text) = probe(k, "test-egress", "sleep", &dns, 53)?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!("with the NetworkPolicy: test-egress/sleep → kube-dns {dns}:53/tcp denied (only UDP 53 is allowed)"),
        &text,
    );
    k.run(&[
        "delete",
        "networkpolicy",
        "-n",
        "test-egress",
        NETWORK_POLICY,
    ])?;
    let (outcome, took) = poll_outcome(k, "test-egress", "sleep", &dns, 53, Outcome::Ok)?;
    timings.np_delete_effect_ms = Some(took);
    checks.check(
        outcome == Outcome::Ok,
        &format!("without it: test-egress/sleep → kube-dns {dns}:53/tcp allowed ({took:.0} ms after the delete)"),
        &format!("{outcome:?}"),
    );
    let (outcome, text) = probe(k, "test-egress", "sleep", allowed_ip, 80)?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!(
            "without it: test-egress/sleep → {allowed_name} still denied (gateway exclusivity)"
        ),
        &text,
    );
    apply_network_policy(cluster)?;
    let (outcome, took) = poll_outcome(k, "test-egress", "sleep", &dns, 53, Outcome::Eperm)?;
    timings.np_create_effect_ms = Some(took);
    checks.check(
        outcome == Outcome::Eperm,
        &format!("re-created: test-egress/sleep → kube-dns {dns}:53/tcp denied again ({took:.0} ms after the apply)"),
        &format!("{outcome:?}"),
    );

    println!("\nk8s-test: 5. the sidecar Redirect: the app's connections go to its istio-proxy");
    sidecar(cluster, checks)?;
    without_sidecar(cluster, checks, &gateway_ip)?;

    println!(
        "\nk8s-test: 6. with no agent running, enforcement stays; the replacement adopts the pins"
    );
    agent_gap(cluster, checks, &gateway_ip, &mut timings)?;
    if let Some(kill) = cluster.kill_agent {
        sigkill(cluster, checks, kill)?;
    }
    Ok(timings)
}

/// default/sleep with a sidecar container named istio-proxy that serves
/// HTTP on 127.0.0.1:15001 (the seed Redirect's proxy address): the app's
/// request to edition.cnn.com is answered by the sidecar, and the sidecar,
/// exempt from the redirect, is refused the internet like any pod.
fn sidecar(cluster: &Cluster<'_>, checks: &mut Checks) -> anyhow::Result<()> {
    let k = cluster.kubectl;
    let (allowed_name, allowed_ip) = cluster.allowed_host;
    let yaml = format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: sleep
  namespace: default
  labels:
    app: sleep
spec:
{selector}  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  containers:
  - name: sleep
    image: {image}
    imagePullPolicy: {policy}
    command: [sh, -c, 'exec sleep 3600']
  - name: istio-proxy
    image: {image}
    imagePullPolicy: {policy}
    command:
    - sh
    - -c
    - mkdir -p /tmp/www && echo 'answered by the istio-proxy sidecar' > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:15001 -h /tmp/www
",
        image = cluster.toolbox_image,
        policy = cluster.image_pull_policy,
        selector = node_selector(cluster.app_node),
    );
    k.apply(&yaml)?;
    wait_ready(k, "default", "pod/sleep", Duration::from_secs(120))?;
    let script = if cluster.by_name {
        format!("timeout 8 wget -S -O- http://{allowed_name}/ 2>&1")
    } else {
        http_get(allowed_ip, 80)
    };
    // Ready is the kubelet's word; until the agent has matched the new
    // pod to its Redirect, the pod is pending and its connections are
    // refused (fail closed). So a refusal is retried, for a while, and the
    // wait is reported; anything else ends the wait.
    let created = Instant::now();
    let text = loop {
        let out = k.exec_in("default", "sleep", Some("sleep"), &script)?;
        let text = format!("{}{}", out.stdout, out.stderr);
        if !text.contains("Operation not permitted") || created.elapsed() > Duration::from_secs(20)
        {
            break text;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let waited = created.elapsed().as_secs_f64() * 1000.0;
    checks.check(
        text.contains("answered by the istio-proxy sidecar"),
        &format!(
            "default/sleep → {allowed_name} {allowed_ip}:80 redirected to its sidecar on 127.0.0.1:15001 \
             ({waited:.0} ms after Ready)"
        ),
        &text
            .lines()
            .map(str::trim)
            .filter(|l| {
                l.starts_with("HTTP/")
                    || l.contains("answered")
                    || l.contains("nc:")
                    || l.starts_with("wget:")
            })
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" / "),
    );
    let (outcome, text) = if cluster.by_name {
        fetch(k, "default", "sleep", Some("istio-proxy"), allowed_name)?
    } else {
        probe_in(k, "default", "sleep", Some("istio-proxy"), allowed_ip, 80)?
    };
    checks.check(
        outcome == Outcome::Eperm,
        &format!(
            "default/sleep's istio-proxy → {allowed_name} not redirected, and denied (only the gateway leaves)"
        ),
        &text,
    );
    Ok(())
}

/// default/plain, in the Redirect's namespace but without a sidecar: the
/// Redirect (`capture: Sidecar`, the default) leaves it alone, as Istio
/// leaves pods it did not inject, so it reaches a Service directly (a
/// captured pod without a proxy would get ECONNREFUSED on every TCP
/// connect), and is still refused the internet.
fn without_sidecar(
    cluster: &Cluster<'_>,
    checks: &mut Checks,
    gateway_ip: &str,
) -> anyhow::Result<()> {
    let k = cluster.kubectl;
    k.apply(&pod_yaml_on(
        cluster,
        "default",
        "plain",
        &[("app", "plain")],
        "exec sleep 3600",
        cluster.app_node,
    ))?;
    wait_ready(k, "default", "pod/plain", Duration::from_secs(120))?;
    let target = ("istio-egressgateway.istio-system", gateway_ip);
    // Until the agent has matched the new pod it is pending (refused);
    // the same wait as for a sidecar'd pod.
    let created = Instant::now();
    let (outcome, text, shown) = loop {
        let got = fetch_or_probe(cluster, "default", "plain", target)?;
        if got.0 != Outcome::Eperm || created.elapsed() > Duration::from_secs(20) {
            break got;
        }
        thread::sleep(Duration::from_millis(200));
    };
    checks.check(
        outcome == Outcome::Ok && text.contains("HTTP/1"),
        &format!(
            "default/plain (no sidecar, same namespace) → the gateway Service {shown} directly, not captured"
        ),
        &text,
    );
    let out = k.exec("default", "plain", &http_get(gateway_ip, 80))?;
    let body = format!("{}{}", out.stdout, out.stderr);
    checks.check(
        body.contains("istio-egressgateway") && !body.contains("answered by the istio-proxy"),
        "default/plain's answer comes from the gateway pod itself, not a proxy",
        &first_line(&body),
    );
    let (outcome, text, shown) = fetch_or_probe(cluster, "default", "plain", cluster.allowed_host)?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!("default/plain → {shown} denied (not captured, and not the gateway)"),
        &text,
    );
    Ok(())
}

/// SIGKILLs the agent's process (no clean exit at all), probes before the
/// kubelet has restarted it, then checks that the restarted container
/// adopted the pins.
fn sigkill(
    cluster: &Cluster<'_>,
    checks: &mut Checks,
    kill: &dyn Fn() -> anyhow::Result<u32>,
) -> anyhow::Result<()> {
    let k = cluster.kubectl;
    let (allowed_name, allowed_ip) = cluster.allowed_host;
    let pod = agent_pod(k, cluster.app_node)?;
    let pid = kill()?;
    let (outcome, text) = probe(k, "test-egress", "sleep", allowed_ip, 80)?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!("agent SIGKILLed (pid {pid}): test-egress/sleep → {allowed_name} still denied"),
        &text,
    );
    // The kubelet restarts the container in the same pod.
    let start = Instant::now();
    loop {
        let restarts = k.output(&[
            "get",
            "pod",
            "-n",
            AGENT_NS,
            &pod,
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])?;
        if !matches!(restarts.trim(), "" | "0") {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the kubelet did not restart the agent's container after SIGKILL");
        }
        thread::sleep(Duration::from_millis(200));
    }
    let took = wait_agent(k, Duration::from_secs(120))?;
    let status = agent_cli(k, &pod, &["status", "-o", "json"])?;
    let adopted = status.matches("\"adopted\":true").count();
    let fresh = status.matches("\"adopted\":false").count();
    checks.check(
        adopted > 0 && fresh == 0,
        &format!(
            "the restarted container adopted the pinned links (Ready {:.1}s after the restart was seen)",
            took.as_secs_f32()
        ),
        &format!("{adopted} link(s) adopted, {fresh} attached anew"),
    );
    Ok(())
}

/// Polls a probe (up to 30 s) until it gives `want`; returns the last
/// outcome and the milliseconds it took.
pub fn poll_outcome(
    kubectl: &Kubectl,
    namespace: &str,
    pod: &str,
    ip: &str,
    port: u16,
    want: Outcome,
) -> anyhow::Result<(Outcome, f64)> {
    let start = Instant::now();
    loop {
        let (outcome, _) = probe(kubectl, namespace, pod, ip, port)?;
        if outcome == want || start.elapsed() > Duration::from_secs(30) {
            return Ok((outcome, start.elapsed().as_secs_f64() * 1000.0));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A pod whose command, from its first instruction, tries the internet
/// and the gateway in turn every 50 ms for 15 s, logging
/// `<uptime> internet|gateway <outcome>`.
fn first_packet(
    cluster: &Cluster<'_>,
    checks: &mut Checks,
    gateway_ip: &str,
    timings: &mut Timings,
) -> anyhow::Result<()> {
    let k = cluster.kubectl;
    let (_, internet_ip) = cluster.allowed_host;
    let script = format!(
        "try() {{ if out=$(timeout 3 nc -w 2 \"$2\" \"$3\" -e true 2>&1); then r=ok; \
         else case \"$out\" in *'not permitted'*) r=EPERM;; *refused*) r=refused;; *) r=fail;; esac; fi; \
         read up _ </proc/uptime; echo \"$up $1 $r\"; }}\n\
         end=$(( $(cut -d. -f1 /proc/uptime) + 15 ))\n\
         while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do try internet {internet_ip} 80; try gateway {gateway_ip} 80; sleep 0.05; done\n\
         echo done\n\
         exec sleep 3600"
    );
    let yaml = pod_yaml_on(
        cluster,
        "test-egress",
        "first-packet",
        &[("app", "first-packet")],
        &recorded(&script),
        cluster.app_node,
    );
    let created = (cluster.node_uptime)()?;
    k.apply(&yaml)?;
    // The loop runs 15 s from the container's start.
    let logs = output_until_done(k, "test-egress", "first-packet", Duration::from_secs(90));
    let attempts: Vec<(f64, &str, &str)> = logs
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let t = w.next()?.parse::<f64>().ok()?;
            Some((t, w.next()?, w.next()?))
        })
        .collect();
    let internet: Vec<_> = attempts.iter().filter(|a| a.1 == "internet").collect();
    let reached = internet.iter().filter(|a| a.2 == "ok").count();
    let first = internet.first();
    checks.check(
        !internet.is_empty() && reached == 0,
        "test-egress/first-packet: no attempt reached the internet, from the first",
        &format!(
            "{} attempts, {reached} reached it; the first ({}) at +{} ms after creation",
            internet.len(),
            first.map_or("none", |a| a.2),
            first.map_or("?".to_owned(), |a| format!(
                "{:.0}",
                (a.0 - created) * 1000.0
            ))
        ),
    );
    timings.first_packet_ms = first.map(|a| (a.0 - created) * 1000.0);
    let gateway_ok = attempts.iter().find(|a| a.1 == "gateway" && a.2 == "ok");
    timings.policy_applied_ms = gateway_ok.map(|a| (a.0 - created) * 1000.0);
    let before_ok = attempts
        .iter()
        .filter(|a| a.1 == "gateway" && gateway_ok.is_some_and(|g| a.0 < g.0))
        .map(|a| a.2)
        .collect::<Vec<_>>();
    checks.check(
        gateway_ok.is_some(),
        "test-egress/first-packet: its allowed flow (to the gateway) works once the agent knows the pod",
        &match gateway_ok {
            Some(g) => format!(
                "first allowed at +{:.0} ms after creation; before that {} attempt(s): {}",
                (g.0 - created) * 1000.0,
                before_ok.len(),
                summarize(&before_ok)
            ),
            None => "never".to_owned(),
        },
    );
    if let Ok(started) = k.output(&[
        "get",
        "pod",
        "-n",
        "test-egress",
        "first-packet",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.running.startedAt}",
    ]) {
        println!("k8s-test:   (container startedAt {})", started.trim());
    }
    k.output(&[
        "delete",
        "pod",
        "-n",
        "test-egress",
        "first-packet",
        "--wait=false",
    ])?;
    Ok(())
}

/// Probes `namespace/pod` → `ip:port` every 200 ms until it is allowed,
/// for at most 20 s from `since`; returns the last outcome. For a pod the
/// agent may not have matched yet (pending, and refused until then).
pub fn probe_until_ok(
    k: &Kubectl,
    namespace: &str,
    pod: &str,
    ip: &str,
    port: u16,
    since: Instant,
) -> anyhow::Result<(Outcome, String)> {
    loop {
        let (outcome, text) = probe(k, namespace, pod, ip, port)?;
        if outcome == Outcome::Ok || since.elapsed() > Duration::from_secs(20) {
            return Ok((outcome, text));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `script`, with everything it prints also kept in the container, in
/// `/tmp/out`, for [`output_until_done`] and [`output_of`].
///
/// Why not `kubectl logs`: both kubelets of the local cluster write pod
/// logs to the one /var/log/pods (a path the kubelet does not let us
/// move), and each kubelet's garbage collection removes the log
/// directories of pods it does not run, the other node's pods included.
/// A pod's log can then vanish mid-check, while the file in the container
/// cannot.
pub fn recorded(script: &str) -> String {
    format!("{{\n{script}\n}} 2>&1 | tee /tmp/out")
}

/// What a [`recorded`] script in `namespace/pod` has printed so far.
pub fn output_of(k: &Kubectl, namespace: &str, pod: &str) -> String {
    k.exec_in(namespace, pod, None, "cat /tmp/out 2>/dev/null")
        .map(|out| out.stdout)
        .unwrap_or_default()
}

/// What a [`recorded`] script in `namespace/pod` printed, once it has
/// printed a line `done` (or after `limit`, as far as it got).
pub fn output_until_done(k: &Kubectl, namespace: &str, pod: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let out = output_of(k, namespace, pod);
        if out.lines().any(|l| l.trim() == "done") || start.elapsed() > limit {
            return out;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

fn summarize(outcomes: &[&str]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for o in outcomes {
        match counts.iter_mut().find(|(k, _)| k == o) {
            Some((_, n)) => *n += 1,
            None => counts.push((o, 1)),
        }
    }
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n}× {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub const AGENT_NS: &str = "egress-enforcer";

/// `egress-agent ARGS` in the agent's pod `pod`, its output. The image
/// has no shell: the verb runs directly (`kubectl exec … -- egress-agent`).
pub fn agent_cli(kubectl: &Kubectl, pod: &str, args: &[&str]) -> anyhow::Result<String> {
    let exec = ["exec", "-n", AGENT_NS, pod, "--", "egress-agent"];
    kubectl.output(&[&exec[..], args].concat())
}
const AGENT_SELECTOR: &str = "app.kubernetes.io/name=egress-agent";

/// How long the "no agent" checks wait once the agent's pods are gone:
/// past every DNS TTL the agent held for allowedHosts (kube-dns answers
/// with TTL 0, which the agent keeps for its minimum of 5 s, asking again
/// after 3.75 s), twice over. The checks then test the pinned state alone,
/// at the same point every run, whatever the kubelet took to stop the
/// agent.
const NO_AGENT_PAST_TTL: Duration = Duration::from_secs(12);

/// The agent's pod (on `node`, if given).
pub fn agent_pod(kubectl: &Kubectl, node: Option<&str>) -> anyhow::Result<String> {
    let pods = agent_pods(kubectl, node)?;
    match pods.first() {
        Some(pod) => Ok(pod.clone()),
        None => bail!(
            "no agent pod{}",
            node.map_or(String::new(), |n| format!(" on {n}"))
        ),
    }
}

/// The agent's pods (on `node`, if given).
pub fn agent_pods(kubectl: &Kubectl, node: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut args = vec!["get", "pod", "-n", AGENT_NS, "-l", AGENT_SELECTOR];
    let field = node.map(|n| format!("spec.nodeName={n}"));
    if let Some(field) = &field {
        args.extend(["--field-selector", field]);
    }
    args.extend(["-o", "jsonpath={.items[*].metadata.name}"]);
    Ok(kubectl
        .output(&args)?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// Whether the DaemonSet has seen its latest spec and has a Ready,
/// up-to-date pod on every node it wants one on.
fn daemonset_ready(kubectl: &Kubectl) -> bool {
    let status = kubectl
        .output(&[
            "get",
            "daemonset",
            "-n",
            AGENT_NS,
            "egress-agent",
            "-o",
            "jsonpath={.metadata.generation} {.status.observedGeneration} \
             {.status.desiredNumberScheduled} {.status.numberReady} {.status.updatedNumberScheduled}",
        ])
        .unwrap_or_default();
    let v: Vec<&str> = status.split_whitespace().collect();
    matches!(v.as_slice(), [generation, observed, desired, ready, updated]
        if generation == observed && desired != &"0" && desired == ready && desired == updated)
}

/// Waits for the agent's pods (one per node) to be Ready; returns how
/// long it took.
pub fn wait_agent(kubectl: &Kubectl, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if daemonset_ready(kubectl)
            && kubectl
                .output(&[
                    "wait",
                    "-n",
                    AGENT_NS,
                    "--for=condition=Ready",
                    "pod",
                    "-l",
                    AGENT_SELECTOR,
                    "--timeout=5s",
                ])
                .is_ok()
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            let logs = kubectl
                .output(&["logs", "-n", AGENT_NS, "-l", AGENT_SELECTOR, "--tail=40"])
                .unwrap_or_default();
            let describe = kubectl
                .output(&["describe", "pod", "-n", AGENT_NS, "-l", AGENT_SELECTOR])
                .unwrap_or_default();
            bail!(
                "the agent is not Ready after {}s\n--- describe ---\n{describe}\n--- logs ---\n{logs}",
                timeout.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Keeps the DaemonSet from scheduling (a nodeSelector nothing matches),
/// so that the agent's pod is deleted gracefully and not replaced; probes
/// with no agent anywhere; then lets it schedule again.
fn agent_gap(
    cluster: &Cluster<'_>,
    checks: &mut Checks,
    gateway_ip: &str,
    timings: &mut Timings,
) -> anyhow::Result<()> {
    let k = cluster.kubectl;
    let (allowed_name, allowed_ip) = cluster.allowed_host;
    let old = agent_pods(k, None)?;
    k.run(&[
        "patch",
        "daemonset",
        "-n",
        AGENT_NS,
        "egress-agent",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"nodeSelector":{"egress-enforcer.dev/paused":"true"}}}}}"#,
    ])?;
    let gone = Instant::now();
    for pod in &old {
        k.output(&[
            "wait",
            "-n",
            AGENT_NS,
            "--for=delete",
            &format!("pod/{pod}"),
            // The kubelet finishes a deletion on its own schedule (tens of
            // seconds on a loaded machine); the time is reported below.
            "--timeout=180s",
        ])?;
    }
    let left = k
        .output(&[
            "get",
            "pod",
            "-n",
            AGENT_NS,
            "-l",
            AGENT_SELECTOR,
            "-o",
            "name",
        ])?
        .trim()
        .to_owned();
    checks.check(
        left.is_empty(),
        &format!(
            "the agent's pods {} terminated (SIGTERM) and none replaced them",
            old.join(", ")
        ),
        &format!(
            "gone after {:.1}s; agent pods now: [{left}]",
            gone.elapsed().as_secs_f32()
        ),
    );
    thread::sleep(NO_AGENT_PAST_TTL);
    let waited = NO_AGENT_PAST_TTL.as_secs();
    let (outcome, text) = probe(k, "test-egress", "sleep", allowed_ip, 80)?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!(
            "no agent ({waited}s past the pods' end): test-egress/sleep → {allowed_name} {allowed_ip}:80 still denied"
        ),
        &text,
    );
    // On two nodes the gateway is on the other node: its pod address is
    // a peer the client's node learnt from the whole cluster.
    let (outcome, mut text) = probe(k, "istio-system", "istio-egressgateway", allowed_ip, 80)?;
    if outcome != Outcome::Ok {
        // The programs refuse at connect (EPERM) and nothing expires in
        // the kernel while no agent runs; a timeout is a drop after the
        // connect was allowed, or a slow exchange. Say which, for the
        // post-mortem: a bare connect, then the same request again.
        let (connect, connect_text) =
            probe_connect(k, "istio-system", "istio-egressgateway", allowed_ip, 80)?;
        let (again, again_text) = probe(k, "istio-system", "istio-egressgateway", allowed_ip, 80)?;
        text = format!(
            "{outcome:?}: {text}; then a bare connect: {connect:?} {connect_text}; \
             the request again: {again:?} {again_text}"
        );
    }
    checks.check(
        outcome == Outcome::Ok,
        &format!(
            "no agent ({waited}s past the pods' end): istio-system/istio-egressgateway → {allowed_name} still allowed"
        ),
        &text,
    );
    let (outcome, text) = probe(k, "test-egress", "sleep", gateway_ip, 80)?;
    checks.check(
        outcome == Outcome::Ok,
        "no agent: test-egress/sleep → the gateway still allowed",
        &text,
    );
    timings.agent_gap_ms = Some(gone.elapsed().as_secs_f64() * 1000.0);
    k.run(&[
        "patch",
        "daemonset",
        "-n",
        AGENT_NS,
        "egress-agent",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]"#,
    ])?;
    let took = wait_agent(k, Duration::from_secs(120))?;
    timings.agent_replaced_ms = Some(took.as_secs_f64() * 1000.0);
    for new in agent_pods(k, None)? {
        let node = k
            .output(&[
                "get",
                "pod",
                "-n",
                AGENT_NS,
                &new,
                "-o",
                "jsonpath={.spec.nodeName}",
            ])?
            .trim()
            .to_owned();
        let status = k.output(&[
            "exec",
            "-n",
            AGENT_NS,
            &new,
            "--",
            "egress-agent",
            "status",
            "-o",
            "json",
        ])?;
        let adopted = status.matches("\"adopted\":true").count();
        let fresh = status.matches("\"adopted\":false").count();
        checks.check(
            adopted > 0 && fresh == 0,
            &format!("the replacement {new} on {node} adopted its node's pinned links (Ready {:.1}s after it was allowed to schedule)", took.as_secs_f32()),
            &format!("{adopted} link(s) adopted, {fresh} attached anew"),
        );
    }
    let (outcome, text) = probe(k, "test-egress", "sleep", allowed_ip, 80)?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!("after the replacement: test-egress/sleep → {allowed_name} denied"),
        &text,
    );
    Ok(())
}
