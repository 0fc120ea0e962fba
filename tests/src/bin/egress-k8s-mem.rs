//! Memory of the agent's slim Pod cache at N pods, against a real API
//! server (started by `cargo xtask k8s-pod-memory`, which runs this inside
//! its network namespace).
//!
//! - `create --pods N`: creates N pods bound to fake nodes (no kubelet: the
//!   API server only stores them) and sets each one's `status.podIP`
//!   through the status subresource, as a kubelet would.
//! - `measure --mode slim|full`: a fresh process lists and watches every
//!   pod, with the agent's own watch ([`kubernetes::watch_pods`]) or, for
//!   comparison, kube-runtime's reflector of whole Pod objects, and prints
//!   the live heap (counted by a global allocator, exact) and the RSS
//!   (what the kernel charges, allocator slack included) before and after.
//! - `inventory`: runs the agent's whole Kubernetes watch
//!   ([`kubernetes::spawn`]) and checks what it publishes: peers, a Node,
//!   a Service and its EndpointSlice in the version the server serves
//!   (v1beta1 on 1.20, found by discovery), converted to v1; then changes
//!   the slice and reports how long the new inventory took.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use egress_agent::kubernetes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use integration_tests::apiserver::resource;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Patch, PatchParams, PostParams},
    runtime::{reflector, watcher, WatchStreamExt as _},
    Api, Client,
};

/// Counts the bytes currently allocated, so the cache's cost is measured
/// exactly rather than inferred from RSS, which includes freed memory the
/// allocator keeps.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Parser)]
struct Args {
    /// The API server (on loopback, inside the bench's netns; its
    /// certificate is self-signed, so it is not verified).
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    server: String,
    /// A bearer token for it.
    #[arg(long)]
    token: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create N pods on fake nodes, with addresses.
    Create {
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Pods per fake node (so the node names repeat as on a cluster).
        #[arg(long, default_value_t = 100)]
        per_node: usize,
    },
    /// Run the agent's whole watch and check the inventory it publishes.
    Inventory,
    /// List and watch every pod, and report the memory it costs.
    Measure {
        #[arg(long, value_enum, default_value_t = Mode::Slim)]
        mode: Mode,
        /// The node the agent pretends to run on (its pods keep the local
        /// fields).
        #[arg(long, default_value = "node-0")]
        node: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// The agent's watch: slim pods.
    Slim,
    /// kube-runtime's reflector: whole Pod objects.
    Full,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = integration_tests::apiserver::runtime()?;
    rt.block_on(async move {
        let client = integration_tests::apiserver::client(&args.server, &args.token, None)?;
        match args.command {
            Command::Create { pods, per_node } => create(client, pods, per_node).await,
            Command::Measure { mode, node } => measure(client, mode, node).await,
            Command::Inventory => inventory(client).await,
        }
    })
}

/// A pod as a Deployment would make it: a few labels, one container with
/// a named port, resources, an env var; bound to `node`.
fn pod(i: usize, node: &str) -> anyhow::Result<Pod> {
    let app = format!("app-{}", i % 200);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{app}-7d9f8c6b5-{i:05}"),
            "namespace": format!("ns-{}", i % 20),
            "labels": {"app": app, "pod-template-hash": "7d9f8c6b5",
                       "version": "v1", "team": format!("team-{}", i % 7)},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-07T07:00:00Z"}
        },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app",
                "image": "registry.example/shop/app:1.4.2",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"memory": "256Mi"}}
            }]
        }
    }))
    .context("pod")
}

async fn create(client: Client, pods: usize, per_node: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    for n in 0..20 {
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": format!("ns-{n}")}}))?;
        match Api::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context("creating a namespace"),
        }
    }
    let results = futures_util::stream::iter(0..pods)
        .map(|i| {
            let client = client.clone();
            async move {
                let node = format!("node-{}", i / per_node.max(1));
                let p = pod(i, &node)?;
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(client, &ns);
                match api.create(&PostParams::default(), &p).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!("creating {ns}/{name}")))
                    }
                }
                // 10.0.0.0/8 addresses, unique per pod.
                let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                let status = serde_json::json!({"status": {
                    "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "hostIP": "192.0.2.1"
                }});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .with_context(|| format!("setting the status of {ns}/{name}"))?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await;
    results?;
    println!(
        "created {pods} pods on {} fake nodes in {:.1}s",
        pods.div_ceil(per_node.max(1)),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn rss_kib() -> anyhow::Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

async fn measure(client: Client, mode: Mode, node: String) -> anyhow::Result<()> {
    // The client's TLS and connection setup is not the cache's: warm it.
    Api::<Pod>::all(client.clone())
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
        .context("listing pods")?;
    let (heap0, rss0) = (live(), rss_kib()?);
    let started = Instant::now();
    let (count, extra) = match mode {
        Mode::Slim => {
            let (touch, mut touched) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move { while touched.recv().await.is_some() {} });
            let mut cache = kubernetes::watch_pods(client, node, "istio-proxy".into(), touch);
            if !cache.wait_until_ready().await {
                bail!("the pod watch ended before its listing");
            }
            let listed = started.elapsed();
            settle().await;
            let count = cache.len();
            let (heap1, rss1) = (live(), rss_kib()?);
            report("slim cache", count, listed, heap1 - heap0, rss1 - rss0);
            // What the agent then also holds: every peer as its Workload
            // document (the build keeps them between rebuilds), and how long
            // writing them all takes (done when any pod changes).
            let began = Instant::now();
            let mut problems = Vec::new();
            let docs: Vec<_> = cache.read(|pods| {
                pods.values()
                    .filter_map(|p| kubernetes::pod::peer(p, &mut problems))
                    .collect()
            });
            let render = began.elapsed();
            let (heap2, rss2) = (live(), rss_kib()?);
            let text: usize = docs.iter().map(|d| d.text.len()).sum();
            println!(
                "peer documents: {} written in {:.0} ms; +{:.1} MiB live heap ({} B/pod, {} B of YAML/pod); RSS +{:.1} MiB",
                docs.len(),
                render.as_secs_f64() * 1000.0,
                mib(heap2 - heap1),
                (heap2 - heap1) / docs.len().max(1) as isize,
                text / docs.len().max(1),
                (rss2 - rss1) as f64 / 1024.0
            );
            let local = cache.read(|pods| pods.values().filter(|p| p.local.is_some()).count());
            (count, format!("{local} of them local"))
        }
        Mode::Full => {
            let (reader, writer) = reflector::store::<Pod>();
            let stream = watcher(Api::<Pod>::all(client), watcher::Config::default())
                .default_backoff()
                .reflect(writer);
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while stream.next().await.is_some() {}
            });
            reader.wait_until_ready().await.context("reflector")?;
            let listed = started.elapsed();
            settle().await;
            let count = reader.state().len();
            let (heap1, rss1) = (live(), rss_kib()?);
            report(
                "reflector of whole Pods",
                count,
                listed,
                heap1 - heap0,
                rss1 - rss0,
            );
            (count, String::new())
        }
    };
    println!("pods kept: {count} {extra}");
    Ok(())
}

/// Lets the watch's buffers of the initial listing be freed.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn report(what: &str, count: usize, listed: Duration, heap: isize, rss_kib: i64) {
    let per = |b: isize| b / count.max(1) as isize;
    println!(
        "{what}: {count} pods listed in {:.1}s; live heap +{:.1} MiB ({} B/pod); RSS +{:.1} MiB ({} B/pod)",
        listed.as_secs_f64(),
        mib(heap),
        per(heap),
        rss_kib as f64 / 1024.0,
        per(rss_kib as isize * 1024)
    );
}

/// Creates an object given as JSON, or merges it into the existing one,
/// with the API resource it belongs to: typed k8s-openapi has no v1beta1
/// EndpointSlice.
async fn apply(
    client: &Client,
    resource: &kube::discovery::ApiResource,
    object: serde_json::Value,
) -> anyhow::Result<()> {
    let o: kube::core::DynamicObject = serde_json::from_value(object.clone()).context("object")?;
    let name = o.metadata.name.clone().unwrap_or_default();
    let api: Api<kube::core::DynamicObject> = match &o.metadata.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    };
    match api.create(&PostParams::default(), &o).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&object))
                .await
                .map_err(|e| anyhow::anyhow!("updating {} {name}: {e:?}", resource.kind))?;
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("creating {} {name}: {e:?}", resource.kind)),
    }
}

fn slice(address: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "ns-0",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": true},
                       "topology": {"kubernetes.io/hostname": "node-1"}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
    })
}

async fn inventory(client: Client) -> anyhow::Result<()> {
    let slices = resource(
        "discovery.k8s.io",
        "v1beta1",
        "EndpointSlice",
        "endpointslices",
    );
    apply(
        &client,
        &resource("", "v1", "Node", "nodes"),
        serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}),
    )
    .await?;
    // A Node's addresses are status: set as a kubelet would.
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch_status(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]}})),
        )
        .await
        .context("node status")?;
    apply(
        &client,
        &resource("", "v1", "Service", "services"),
        serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "ns-0"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                 "selector": {"app": "app-0"}}}),
    )
    .await?;
    apply(&client, &slices, slice("10.0.0.0")).await?;

    let settings = kubernetes::KubeSettings {
        kubeconfig: None,
        node_name: "node-0".into(),
        sidecar: "istio-proxy".into(),
        mount: std::env::temp_dir().join("egress-k8s-mem-no-cgroups"),
        search_base: String::new(),
        guarded: Vec::new(),
        exempt: Vec::new(),
    };
    let started = Instant::now();
    let (mut rx, _custom) = kubernetes::spawn(client.clone(), settings);
    let first = tokio::time::timeout(Duration::from_secs(120), rx.wait_for(Option::is_some))
        .await
        .context("no inventory within 120 s")?
        .context("the watch ended")?
        .clone()
        .context("published")?;
    println!(
        "first inventory after {:.1}s: {} documents",
        started.elapsed().as_secs_f64(),
        first.sources.len()
    );
    let doc = |inv: &egress_agent::inventory::Inventory, name: &str| {
        inv.sources
            .iter()
            .find(|s| s.file.to_str() == Some(name))
            .map(|s| s.text.clone())
    };
    // Documents are JSON (API objects) or YAML (the agent's Workloads);
    // YAML reads both.
    let parse = |text: &str| serde_yaml::from_str::<serde_yaml::Value>(text).ok();
    let slice_doc = doc(&first, "kubernetes/endpointslices/ns-0/web-1")
        .context("the v1beta1 slice is not in the inventory")?;
    let converted = parse(&slice_doc).unwrap_or_default();
    if converted["apiVersion"].as_str() != Some("discovery.k8s.io/v1")
        || converted["endpoints"][0]["nodeName"].as_str() != Some("node-1")
    {
        bail!("the slice was not converted to v1:\n{slice_doc}");
    }
    let node_doc = doc(&first, "kubernetes/nodes/node-1").context("no Node")?;
    if !node_doc.contains("192.0.2.11") {
        bail!("the Node has no address:\n{node_doc}");
    }
    doc(&first, "kubernetes/services/ns-0/web").context("no Service")?;
    let peers = first
        .sources
        .iter()
        .filter(|s| s.file.starts_with("kubernetes/pods"))
        .filter(|s| parse(&s.text).is_some_and(|d| d["spec"]["cgroup"].is_null()))
        .count();
    println!("inventory: the v1beta1 slice as v1 (node from topology), the Node, the Service, {peers} peers");
    // The policy layer accepts the whole set; how long validating and
    // compiling it takes is what a reload adds to the path to a verdict.
    let began = Instant::now();
    let loaded = egress_policy::load_sources(&first.sources);
    if let Ok(l) = &loaded {
        let plan = egress_agent::compile::compile(&l.model);
        println!(
            "policy layer: {} documents validated and compiled in {:.0} ms ({} workloads enforced here)",
            first.sources.len(),
            began.elapsed().as_secs_f64() * 1000.0,
            plan.workloads.len()
        );
    }
    if let Err(e) = loaded {
        let errors: Vec<String> = e
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        if !errors.is_empty() {
            bail!("the policy layer rejects the inventory: {errors:#?}");
        }
    }
    // An endpoint change, to the next inventory.
    let mut times = Vec::new();
    for (i, address) in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
        .iter()
        .enumerate()
    {
        let began = Instant::now();
        apply(&client, &slices, slice(address)).await?;
        let has_address = |text: &str| {
            parse(text).is_some_and(|d| {
                d["endpoints"][0]["addresses"]
                    .as_sequence()
                    .is_some_and(|a| a.iter().any(|a| a.as_str() == Some(address)))
            })
        };
        tokio::time::timeout(
            Duration::from_secs(30),
            rx.wait_for(|inv| {
                inv.as_ref()
                    .and_then(|inv| doc(inv, "kubernetes/endpointslices/ns-0/web-1"))
                    .is_some_and(|t| has_address(&t))
            }),
        )
        .await
        .with_context(|| format!("change {i} not in the inventory within 30 s"))?
        .context("the watch ended")?;
        times.push(began.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "EndpointSlice change → published inventory, with {peers} peers: {} ms",
        times
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
