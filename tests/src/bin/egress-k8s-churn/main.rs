//! `egress-k8s-churn`: the real agent (release) in Kubernetes mode against
//! a real API server, for `cargo xtask bench`'s P6 (churn), the API-event
//! P3 and the 10k-pod P5 figures. The xtask starts etcd and the API server
//! in a network namespace, creates the pods (`egress-k8s-mem create`) and
//! runs this inside that namespace. It:
//!
//! 1. creates the NetworkPolicies and EndpointSlices of the cluster, and a
//!    probe pod on this node ([`NODE`]) with a kubelet-style cgroup, whose
//!    own NetworkPolicy the measures toggle;
//! 2. starts the agent, waits for its first applies, and reads its peak
//!    and steady RSS (P5);
//! 3. P3 through the API: a full load of many CIDRs (spread over
//!    policies of [`objects::CIDRS_PER_POLICY`] each) and a one-CIDR
//!    change, each timed from the API write to the probe's first connect
//!    with the new verdict;
//! 4. P6: changes at a fixed rate (pods, NetworkPolicies, EndpointSlices:
//!    create, update, delete) while the probe's policy is toggled and
//!    timed, `status` and `/metrics` are timed every 100 ms, and the
//!    agent's CPU is read.
//!
//! Every figure is written to `--out` (a JSON list of samples, rewritten
//! after each step), which the xtask reads.

mod churn;
mod node;
mod objects;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Parser;
use futures_util::{StreamExt as _, TryStreamExt as _};
use integration_tests::loadgen::monotonic_ns;
use kube::Client;
use serde_json::json;

use crate::{
    node::{Agent, Paths, Waiter},
    objects::{PROBE_NS, PROBE_POD, TARGET},
};

/// The node the agent runs as: no pod of `egress-k8s-mem create` is on
/// it, so all of them are peers (as 10k pods are on a real cluster).
pub const NODE: &str = "bench-node";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    server: String,
    #[arg(long)]
    token: String,
    /// The agent binary (release).
    #[arg(long)]
    agent: PathBuf,
    /// The pods `egress-k8s-mem create` made (to update some).
    #[arg(long)]
    pods: usize,
    /// NetworkPolicies of the cluster.
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// EndpointSlices of the cluster.
    #[arg(long, default_value_t = 200)]
    slices: usize,
    /// CIDRs of the API-event P3.
    #[arg(long, default_value_t = 100_000)]
    p3_cidrs: usize,
    /// Changes per second during the churn.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long the churn lasts.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Leave out the API-event P3.
    #[arg(long)]
    skip_p3: bool,
    /// Leave out the churn (P6).
    #[arg(long)]
    skip_p6: bool,
    /// Where the samples go (JSON, the xtask's sample format).
    #[arg(long)]
    out: PathBuf,
}

/// The samples so far, written whole to `--out` by [`flush`].
static SAMPLES: std::sync::Mutex<Vec<serde_json::Value>> = std::sync::Mutex::new(Vec::new());

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = integration_tests::apiserver::runtime()?;
    rt.block_on(run(args))
}

/// One figure, in the xtask's sample format.
pub(crate) fn sample(
    measure: &str,
    metric: &str,
    unit: &str,
    variant: &str,
    size: usize,
    run: usize,
    value: f64,
) {
    let s = json!({"measure": measure, "metric": metric, "unit": unit, "variant": variant,
                   "cidrs": size, "run": run, "value": value});
    SAMPLES.lock().unwrap_or_else(|p| p.into_inner()).push(s);
}

/// Writes every sample so far: a later step that fails keeps the earlier
/// figures.
fn flush(out: &std::path::Path) -> anyhow::Result<()> {
    let all = SAMPLES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    std::fs::write(out, serde_json::to_vec(&all)?)
        .with_context(|| format!("writing {}", out.display()))
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = integration_tests::apiserver::client(&args.server, &args.token, None)?;
    let began = Instant::now();
    cluster(&client, &args).await?;
    eprintln!(
        "churn: {} NetworkPolicies and {} EndpointSlices created in {:.1}s",
        args.policies,
        args.slices,
        began.elapsed().as_secs_f64()
    );
    let uid = probe_pod(&client).await?;
    // The probe's target, on this namespace's loopback, and the probe
    // pod's address, which its connections must come from: the agent's
    // programs drop a workload's packets from addresses not its own, and
    // the kernel would pick the target itself as the source of a local
    // connection, so the target's local route names the source.
    for args in [
        vec!["addr", "replace", "192.0.2.60/32", "dev", "lo"],
        vec!["addr", "replace", "192.0.2.50/32", "dev", "lo"],
        vec![
            "route",
            "replace",
            "local",
            "192.0.2.50",
            "dev",
            "lo",
            "table",
            "local",
            "proto",
            "kernel",
            "scope",
            "host",
            "src",
            "192.0.2.60",
        ],
    ] {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .context("running ip")?;
        if !out.status.success() {
            bail!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let target = format!("{TARGET}:8080");
    let mut listener = node::listener(&target)?;
    let paths = Paths::new()?;
    let root = paths.cgroup_root.clone();
    let cgroup = paths.pod_cgroup(&uid);
    let result = match std::fs::create_dir_all(&cgroup) {
        Ok(()) => measure(&client, &args, paths, &cgroup, &target).await,
        Err(e) => Err(e).with_context(|| format!("creating {}", cgroup.display())),
    };
    let _ = listener.kill();
    let _ = listener.wait();
    // The agent removes them when it stops; this is for a failure before.
    node::remove_cgroups(&root);
    result
}

async fn measure(
    client: &Client,
    args: &Args,
    paths: Paths,
    cgroup: &std::path::Path,
    target: &str,
) -> anyhow::Result<()> {
    // The probe's policy: its destination allowed, or elsewhere only.
    let probe_policy = |allow: bool| {
        let cidr = if allow {
            format!("{TARGET}/32")
        } else {
            objects::ELSEWHERE.to_owned()
        };
        objects::probe_policy("probe", &[cidr])
    };
    objects::replace(client, &objects::policies(), &probe_policy(true)).await?;
    let started = Instant::now();
    let mut agent = Agent::start(&args.agent, paths, &args.server, &args.token)?;
    let pid = agent.pid();
    agent.wait_log("a first apply", Duration::from_secs(300), |l| {
        l.contains("policy applied")
    })?;
    Waiter::reach(cgroup, target, "ok")?;
    let first = started.elapsed();
    agent.settle(Duration::from_secs(2))?;
    let (peak, steady) = node::rss_mib(pid)?;
    eprintln!(
        "churn: agent enforcing the probe after {:.1}s; RSS peak {peak:.1} MiB, steady {steady:.1} MiB",
        first.as_secs_f64()
    );
    let size = args.pods;
    sample("p5k8s", "peak_rss", "MiB", "ours", size, 0, peak);
    sample("p5k8s", "steady_rss", "MiB", "ours", size, 0, steady);
    sample(
        "p5k8s",
        "policies",
        "",
        "ours",
        size,
        0,
        args.policies as f64,
    );
    sample(
        "p5k8s",
        "first_enforced",
        "s",
        "ours",
        size,
        0,
        first.as_secs_f64(),
    );

    flush(&args.out)?;
    // Both measures start from the deny state: NetworkPolicies add up, so
    // P3's policies can only make a difference while this one denies.
    objects::replace(client, &objects::policies(), &probe_policy(false)).await?;
    tokio::task::block_in_place(|| Waiter::reach(cgroup, target, "eperm"))?;
    if !args.skip_p3 {
        p3(client, &mut agent, args, cgroup, target).await?;
        flush(&args.out)?;
    }
    if !args.skip_p6 {
        churn::p6(client, &agent, args, cgroup, target, &probe_policy).await?;
        flush(&args.out)?;
    }
    Ok(())
}

/// Times one change of the probe's verdict: the waiter starts first, then
/// `write` runs; milliseconds from the write's start to the verdict.
pub(crate) async fn time_verdict<F, Fut>(
    cgroup: &std::path::Path,
    target: &str,
    want: &str,
    write: F,
) -> anyhow::Result<f64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (c, t, w) = (cgroup.to_owned(), target.to_owned(), want.to_owned());
    let waiter = tokio::task::spawn_blocking(move || Waiter::start(&c, &t, &w)).await??;
    let t0 = monotonic_ns();
    write().await?;
    let reached = tokio::task::spawn_blocking(move || waiter.wait()).await??;
    Ok(reached.saturating_sub(t0) as f64 / 1e6)
}

/// P3 through the API: the probe's CIDRs spread over policies, loaded
/// from the deny state (the last policy holds the target: the verdict
/// flips when all are in force), then the target removed from the last.
async fn p3(
    client: &Client,
    agent: &mut Agent,
    args: &Args,
    cgroup: &std::path::Path,
    target: &str,
) -> anyhow::Result<()> {
    let n = args.p3_cidrs;
    let chunks = n.div_ceil(objects::CIDRS_PER_POLICY);
    let chunk = |i: usize, with_target: bool| {
        let size = objects::CIDRS_PER_POLICY.min(n - i * objects::CIDRS_PER_POLICY);
        objects::probe_policy(
            &format!("probe-cidrs-{i}"),
            &objects::cidrs(
                size,
                i * objects::CIDRS_PER_POLICY,
                with_target && i + 1 == chunks,
            ),
        )
    };
    let full = time_verdict(cgroup, target, "ok", || async {
        for i in 0..chunks {
            objects::replace(client, &objects::policies(), &chunk(i, true)).await?;
        }
        Ok(())
    })
    .await?;
    tokio::task::block_in_place(|| agent.settle(Duration::from_millis(500)))?;
    let one = time_verdict(cgroup, target, "eperm", || async {
        objects::replace(client, &objects::policies(), &chunk(chunks - 1, false)).await
    })
    .await?;
    tokio::task::block_in_place(|| agent.settle(Duration::from_millis(500)))?;
    eprintln!("churn: P3 through the API at {n} CIDRs ({chunks} policies): full {full:.0} ms, one CIDR {one:.0} ms");
    sample("p3", "apply_full", "ms", "ours-api", n, 0, full);
    sample("p3", "apply_one", "ms", "ours-api", n, 0, one);
    sample("p3", "api_policies", "", "ours-api", n, 0, chunks as f64);
    for i in 0..chunks {
        objects::delete(
            client,
            &objects::policies(),
            PROBE_NS,
            &format!("probe-cidrs-{i}"),
        )
        .await?;
    }
    tokio::task::block_in_place(|| agent.settle(Duration::from_millis(500)))?;
    Ok(())
}

/// The cluster's NetworkPolicies and EndpointSlices (the pods are made by
/// `egress-k8s-mem create`, with the namespaces ns-0 … ns-19).
async fn cluster(client: &Client, args: &Args) -> anyhow::Result<()> {
    objects::put(
        client,
        &objects::resource("", "v1", "Namespace", "namespaces"),
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PROBE_NS}}),
    )
    .await?;
    futures_util::stream::iter(0..args.policies)
        .map(|i| async move {
            objects::put(client, &objects::policies(), &objects::policy(i, 0))
                .await
                .map(drop)
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    futures_util::stream::iter(0..args.slices)
        .map(|i| async move {
            objects::put(client, &objects::slices(), &objects::slice(i, 0))
                .await
                .map(drop)
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The probe pod, on this node, with its address; returns its UID (the
/// name of its cgroup, as the kubelet makes it).
async fn probe_pod(client: &Client) -> anyhow::Result<String> {
    let mut pod = objects::pod(PROBE_NS, PROBE_POD, PROBE_POD, NODE);
    pod["metadata"]["labels"] = json!({"app": PROBE_POD});
    let stored = objects::put(client, &objects::pods(), &pod).await?;
    objects::status(client, PROBE_NS, PROBE_POD, objects::PROBE_IP).await?;
    stored.metadata.uid.context("the probe pod has no uid")
}
