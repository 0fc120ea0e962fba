//! Scenario: one tenant cannot freeze the others (issue 13, "Tenancy").
//!
//! Namespace `a`'s admin changes its NetworkPolicy to one the API server
//! accepts but the kernel cannot hold (130 separate ports on one CIDR;
//! the programs check at most 128 per prefix). Then, in namespace `b`, a
//! new pod starts and `b`'s policy changes. Both must be in force within
//! 1 s (measured and printed), while `a`'s pods keep the last good version of `a`'s policy.
//!
//! The agent runs its Kubernetes path in this process, in the real
//! kernel, with no API server: Pods, Namespaces and NetworkPolicies are
//! handed to `kubernetes::simulated` as a watcher would deliver them, and
//! from there on everything is the agent's own code (the slim caches, the
//! inventory builder with its cgroup walk and inotify on the guarded root,
//! the event loop, quarantine, the eBPF maps). `status`, `/metrics` and
//! the report that becomes Kubernetes Events are read the way the socket
//! and HTTP servers read them.
//!
//! Here "the cluster" is the server's IPv6 address (the EgressGateway's
//! only clusterCIDR): each pod's policy allows ports of it.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use egress_agent::{
    agent::{
        kernel::KernelEnforcer,
        run::{run, Observing, RunOptions},
        Reloader,
    },
    dataplane::{Capacities, EbpfLogLevel},
    kubernetes::{events::Report, simulated::Simulated, KubeSettings},
    observe::{metrics, status::Held, EventHub, Query, Status},
};
use egress_common::EventConfig;
use integration_tests::{
    cgroup::TestCgroup,
    names,
    netns::TestNet,
    pins::PinDir,
    probe::{Client, Listener, Outcome, Proto},
    require_root,
};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use tokio::sync::{mpsc, oneshot, watch};

/// The target from the objects reaching the agent to enforcement:
/// printed against the measurement, not asserted (a loaded machine is
/// slower without a bug). What is asserted is that b's changes happen at
/// all: a policy set frozen by a's quarantined object never applies them,
/// and `until` gives up after 10 s.
const TARGET: Duration = Duration::from_secs(1);

const WEB: &str = "0b6a3c1e-8a52-4f1e-9c1a-2f4d5e6a7b8c";
const OLD: &str = "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a";
const NEW: &str = "a9e1f6c2-7d3b-4c5a-8e9f-0a1b2c3d4e5f";
const MESH: &str = "3f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
const STRAY: &str = "7c6b5a49-3827-4165-9f8e-7d6c5b4a3928";

fn cluster(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(TestNet::SERVER_V6), port)
}

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("an API object")
}

fn namespace(name: &str) -> Namespace {
    from(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}}))
}

/// A running pod of node-a, without addresses (every pod of this test
/// sends from the client namespace's address, so none is source-checked).
fn pod(ns: &str, name: &str, uid: &str, sidecar: bool) -> Pod {
    let mut containers = vec![serde_json::json!({"name": "app", "image": "x"})];
    if sidecar {
        containers.push(serde_json::json!({"name": "istio-proxy", "image": "proxy"}));
    }
    from(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"app": name},
                     "resourceVersion": "1"},
        "spec": {"nodeName": "node-a", "containers": containers},
        "status": {"phase": "Running"}
    }))
}

/// `name` in `ns`, every pod of it, to the cluster address on `ports`.
fn policy(ns: &str, name: &str, ports: &[u16], version: u32) -> NetworkPolicy {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| serde_json::json!({"protocol": "TCP", "port": p}))
        .collect();
    from(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns, "uid": format!("np-{ns}-{name}"),
                     "resourceVersion": version.to_string()},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": format!("{}/128", TestNet::SERVER_V6)}}],
                             "ports": ports}]}
    }))
}

/// The agent's event loop, in this process, on its own runtime.
struct Agent {
    runtime: tokio::runtime::Runtime,
    queries: mpsc::Sender<Query>,
    reports: watch::Receiver<Report>,
}

impl Agent {
    fn status(&self) -> anyhow::Result<Status> {
        let (tx, rx) = oneshot::channel();
        self.runtime.block_on(async {
            self.queries.send(Query::Status(tx)).await?;
            Ok(rx.await?)
        })
    }

    fn metrics(&self) -> anyhow::Result<String> {
        let (tx, rx) = oneshot::channel();
        self.runtime.block_on(async {
            self.queries.send(Query::Metrics(tx)).await?;
            Ok(rx.await?)
        })
    }

    /// Polls `status` until `done` says so.
    fn wait_status(&self, what: &str, done: impl Fn(&Status) -> bool) -> anyhow::Result<Status> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status()?;
            if done(&status) {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{status}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Connects until `want` comes (or 10 s pass); how long it took.
fn until(
    client: &Client,
    to: SocketAddr,
    want: Outcome,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(10);
    loop {
        let got = client.connect_tcp(to)?;
        if got == want {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "still {got:?} (not {want:?}) to {to} after 10 s"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

struct PolicyDir(PathBuf);

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn gateway(dir: &Path) -> anyhow::Result<()> {
    fs::write(
        dir.join("gateway.yaml"),
        format!(
            "apiVersion: egress.enforcer.dev/v1alpha1\nkind: EgressGateway\n\
             metadata: {{name: gw, namespace: istio-system}}\n\
             spec:\n  selector: {{podSelector: {{matchLabels: {{istio: egressgateway}}}}}}\n\
             \x20 clusterCIDRs: [\"{}/128\"]\n",
            TestNet::SERVER_V6
        ),
    )?;
    Ok(())
}

#[test]
fn a_bad_policy_in_one_namespace_does_not_hold_back_another() -> anyhow::Result<()> {
    require_root();
    let net = TestNet::new()?;
    let root = TestCgroup::new()?;
    let rel = root.relative();
    let pod_dir = |uid: &str| format!("kubepods/burstable/pod{uid}");
    for uid in [WEB, OLD] {
        root.child(&pod_dir(uid))?;
    }
    let dir = PolicyDir(std::env::temp_dir().join(names::unique("egress-tenancy")));
    fs::create_dir_all(&dir.0)?;
    gateway(&dir.0)?;
    let _listeners = [8080, 9090]
        .map(|port| Listener::start(&net.server, cluster(port), Proto::Tcp))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pins = PinDir::new()?;
    let mount = egress_agent::sys::cgroup2_mount()?;
    let guarded = format!("{rel}/kubepods");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let enforcer = KernelEnforcer::open(
        pins.path(),
        Some(root.path()),
        false,
        None,
        EventConfig {
            sample_allow: 0,
            interval_ms: 1000,
        },
        EbpfLogLevel::Off,
        Capacities::default(),
    )?;
    let reloader = Reloader::new(vec![dir.0.clone()], enforcer, false);
    let settings = KubeSettings {
        kubeconfig: None,
        node_name: "node-a".into(),
        sidecar: "istio-proxy".into(),
        mount,
        search_base: rel.clone(),
        guarded: vec![guarded.clone()],
        exempt: Vec::new(),
    };
    let (api, feed) = {
        let _inside = runtime.enter();
        Simulated::start(settings)
    };
    for ns in ["a", "b"] {
        api.namespace(&namespace(ns));
    }
    api.node(&from(
        serde_json::json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}),
    ));
    api.pod(&pod("a", "web", WEB, false));
    api.pod(&pod("b", "old", OLD, false));
    api.network_policy(&policy("a", "allow", &[8080], 1));
    api.network_policy(&policy("b", "allow", &[8080], 1));
    api.listed();

    let (queries_tx, queries) = mpsc::channel(4);
    let (ready, _ready) = watch::channel(false);
    let (rejections, reports) = watch::channel(Report::default());
    let paths = vec![dir.0.clone()];
    runtime.spawn(async move {
        let observing = Observing {
            queries,
            hub: EventHub::new(16),
            ready,
            rejections: Some(rejections),
        };
        if let Err(e) = run(
            reloader,
            &paths,
            RunOptions::default(),
            Some(observing),
            Some(feed),
        )
        .await
        {
            eprintln!("the agent's loop ended: {e:#}");
        }
    });
    let agent = Agent {
        runtime,
        queries: queries_tx,
        reports,
    };

    let web = Client::in_cgroup(&net.client, &root.path().join(pod_dir(WEB)));
    let old = Client::in_cgroup(&net.client, &root.path().join(pod_dir(OLD)));
    agent.wait_status("the first generation", |s| s.generation.is_some())?;
    let t = Instant::now();
    until(&web, cluster(8080), Outcome::Ok, t).context("a/web's policy")?;
    until(&old, cluster(8080), Outcome::Ok, t).context("b/old's policy")?;
    assert_eq!(web.connect_tcp(cluster(9090))?, Outcome::Eperm);
    assert_eq!(old.connect_tcp(cluster(9090))?, Outcome::Eperm);

    // 1. Namespace a: its policy grows to 130 separate ports (8080, 9090
    // and 128 more), which the API server accepts and the kernel cannot
    // hold for one prefix.
    let mut ports: Vec<u16> = (0..128).map(|i| 20_000 + 2 * i).collect();
    ports.extend([8080, 9090]);
    api.network_policy(&policy("a", "allow", &ports, 2));
    let status = agent.wait_status("a/allow quarantined", |s| {
        s.quarantined
            .iter()
            .any(|q| q.source == "kubernetes/networkpolicies/a/allow")
    })?;
    let q = &status.quarantined[0];
    assert_eq!(q.held, Held::LastGood, "{status}");
    assert!(
        q.errors
            .iter()
            .any(|e| e.contains("130 (protocol, port) entries")),
        "{status}"
    );
    let generation = status.generation.as_ref().map(|g| g.number);
    println!("a/allow quarantined in generation {generation:?}:\n{status}");

    // 2. Namespace b: a new pod starts (its cgroup, then its Pod object)
    // and b's policy changes, 8080 → 8080 and 9090.
    let started = Instant::now();
    let new_dir = root.child(&pod_dir(NEW))?;
    let new = Client::in_cgroup(&net.client, &new_dir);
    api.pod(&pod("b", "new", NEW, false));
    api.network_policy(&policy("b", "allow", &[8080, 9090], 2));
    let new_in_force = until(&new, cluster(8080), Outcome::Ok, started)?;
    let change_in_force = until(&old, cluster(9090), Outcome::Ok, started)?;
    let verdict = |d: Duration| if d <= TARGET { "met" } else { "MISSED" };
    println!(
        "namespace b, with a's policy quarantined: the new pod's policy in force after {new_in_force:?}, the changed policy after {change_in_force:?} (target {TARGET:?}: {}, {})",
        verdict(new_in_force),
        verdict(change_in_force)
    );
    assert_eq!(new.connect_tcp(cluster(9090))?, Outcome::Ok);

    // a's pods keep a's last good version: 8080, and not what the bad
    // version added.
    assert_eq!(web.connect_tcp(cluster(8080))?, Outcome::Ok);
    assert_eq!(web.connect_tcp(cluster(9090))?, Outcome::Eperm);

    // 3. What the operator and the tenant see: status, the metric by
    // object, and the report that becomes an Event (a/web runs here).
    let status = agent.status()?;
    assert_eq!(status.quarantined.len(), 1, "{status}");
    let metrics = agent.metrics()?;
    assert!(
        metrics.contains(
            r#"egress_quarantined_objects{kind="NetworkPolicy",namespace="a",name="allow",held="lastgood"} 1"#
        ),
        "{metrics}"
    );
    let report = agent.reports.borrow().clone();
    assert_eq!(report.nodes, ["node-a"]);
    assert_eq!(report.rejections.len(), 1, "{report:?}");
    assert!(report.rejections[0].here, "a/web on this node is held back");
    let finding = &report.rejections[0].quarantined.findings[0];
    assert_eq!(finding.field.as_deref(), Some("spec.egress[0].ports"));

    // 4. Pods stuck pending are counted: one whose sidecar has not
    // started, and a pod cgroup no Pod object names.
    root.child(&pod_dir(MESH))?;
    root.child(&format!("kubepods/besteffort/pod{STRAY}"))?;
    api.pod(&pod("b", "mesh", MESH, true));
    let status = agent.wait_status("two pending pods", |s| s.pending_pods.len() == 2)?;
    println!("{status}");
    let mesh = status
        .pending_pods
        .iter()
        .find(|p| p.uid == MESH)
        .context("b/mesh pending")?;
    assert_eq!(mesh.pod.as_deref(), Some("b/mesh"));
    assert_eq!(mesh.reason, "sidecar container not started yet");
    let stray = status
        .pending_pods
        .iter()
        .find(|p| p.uid == STRAY)
        .context("the stray cgroup pending")?;
    assert_eq!(stray.pod, None);
    let rendered = metrics::render(&status, None, &Default::default());
    assert!(rendered.contains("egress_pending_pods 2"), "{rendered}");
    assert!(status.to_string().contains("pending pods: 2"), "{status}");

    // 5. Fixed: the quarantine ends, and so does the report.
    api.network_policy(&policy("a", "allow", &[8080, 9090], 3));
    agent.wait_status("a/allow fixed", |s| s.quarantined.is_empty())?;
    let t = Instant::now();
    until(&web, cluster(9090), Outcome::Ok, t)?;
    assert!(agent.reports.borrow().rejections.is_empty());
    drop(agent);
    Ok(())
}
