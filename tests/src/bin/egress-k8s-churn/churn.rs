//! P6: background changes to pods, NetworkPolicies and EndpointSlices at
//! a fixed rate, while the probe pod's verdict is toggled and timed and
//! the agent's `status` and `/metrics` are timed.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use kube::Client;
use serde_json::json;

use crate::{ms, node, node::Agent, objects, sample, time_verdict, Args};

/// P6: background changes at `rate` for `seconds`, the probe's verdict
/// toggled and timed meanwhile, status and /metrics timed every 100 ms.
pub async fn p6(
    client: &Client,
    agent: &Agent,
    args: &Args,
    cgroup: &std::path::Path,
    target: &str,
    probe_policy: &dyn Fn(bool) -> serde_json::Value,
) -> anyhow::Result<()> {
    let pid = agent.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let socket = agent.paths().socket.clone();
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut status, mut metrics, mut failures) = (Vec::new(), Vec::new(), Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match node::time_status(&socket) {
                    Ok(d) => status.push(ms(d)),
                    Err(e) => failures.push(format!("status: {e:#}")),
                }
                match node::time_metrics() {
                    Ok(d) => metrics.push(ms(d)),
                    Err(e) => failures.push(format!("/metrics: {e:#}")),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (status, metrics, failures)
        })
    };
    let cpu0 = node::cpu_seconds(pid)?;
    let applied0 = agent.applied();
    let began = Instant::now();
    let deadline = began + Duration::from_secs_f64(args.seconds);
    let errors = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (client, errors) = (client.clone(), errors.clone());
        let (rate, pods, policies, slices) = (args.rate, args.pods, args.policies, args.slices);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let limit = Arc::new(tokio::sync::Semaphore::new(64));
            let mut done = 0usize;
            let mut tasks = tokio::task::JoinSet::new();
            while Instant::now() < deadline {
                tick.tick().await;
                let permit = limit.clone().acquire_owned().await;
                let (client, errors) = (client.clone(), errors.clone());
                let i = done;
                tasks.spawn(async move {
                    if let Err(e) = change(&client, i, pods, policies, slices).await {
                        if errors.fetch_add(1, Ordering::SeqCst) < 5 {
                            eprintln!("churn: change {i} failed: {e:#}");
                        }
                    }
                    drop(permit);
                });
                done += 1;
            }
            while tasks.join_next().await.is_some() {}
            done
        })
    };
    let mut verdicts = Vec::new();
    let mut allow = true;
    while Instant::now() < deadline {
        let want = if allow { "ok" } else { "eperm" };
        let policy = probe_policy(allow);
        let took = time_verdict(cgroup, target, want, || async {
            objects::replace(client, &objects::policies(), &policy).await
        })
        .await?;
        verdicts.push(took);
        allow = !allow;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let changes = churn.await.context("the churn task")?;
    let wall = began.elapsed().as_secs_f64();
    let cpu = node::cpu_seconds(pid)? - cpu0;
    stop.store(true, Ordering::SeqCst);
    let (status, metrics, failures) = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    let applies = agent.applied() - applied0;
    let errors = errors.load(Ordering::SeqCst);
    eprintln!(
        "churn: {changes} changes in {wall:.1}s ({errors} failed), {} verdicts timed, {applies} applies, agent CPU {:.0} % of a core; {} status and {} /metrics samples, {} failed",
        verdicts.len(),
        cpu / wall * 100.0,
        status.len(),
        metrics.len(),
        failures.len()
    );
    for f in failures.iter().take(5) {
        eprintln!("churn: {f}");
    }
    if verdicts.is_empty() {
        bail!("no verdict was timed during the churn");
    }
    let size = args.pods;
    for (run, v) in verdicts.iter().enumerate() {
        sample("p6", "verdict", "ms", "ours", size, run, *v);
    }
    for (run, v) in status.iter().enumerate() {
        sample("p6", "status", "ms", "ours", size, run, *v);
    }
    for (run, v) in metrics.iter().enumerate() {
        sample("p6", "metrics", "ms", "ours", size, run, *v);
    }
    for (metric, unit, value) in [
        ("cpu", "%", cpu / wall * 100.0),
        ("rate", "/s", changes as f64 / wall),
        ("failed", "", errors as f64),
        ("probe_failed", "", failures.len() as f64),
        ("applies", "", applies as f64),
        ("seconds", "s", wall),
        ("policies", "", args.policies as f64),
        ("slices", "", args.slices as f64),
    ] {
        sample("p6", metric, unit, "ours", size, 0, value);
    }
    Ok(())
}

/// Background change number `i`: nine kinds in turn, so each kind runs at
/// a ninth of the rate; round `k = i / 9` names what it touches, and
/// deletes remove what the create of five rounds before made.
async fn change(
    client: &Client,
    i: usize,
    pods: usize,
    policies: usize,
    slices: usize,
) -> anyhow::Result<()> {
    let k = i / 9;
    let churn_pod = |k: usize| (format!("ns-{}", k % 20), format!("churn-{k:05}"));
    match i % 9 {
        0 => {
            let (ns, name) = churn_pod(k);
            let pod = objects::pod(
                &ns,
                &name,
                &format!("app-{}", k % 200),
                &format!("node-{}", k % 100),
            );
            objects::put(client, &objects::pods(), &pod).await?;
            let ip = format!("10.100.{}.{}", (k >> 8) & 255, k & 255);
            objects::status(client, &ns, &name, &ip).await
        }
        1 => {
            // A label change of a pod of the cluster (egress-k8s-mem's names).
            let j = k % pods.max(1);
            let app = format!("app-{}", j % 200);
            let name = format!("{app}-7d9f8c6b5-{j:05}");
            let patch = json!({"metadata": {"labels": {"version": format!("v{k}")}}});
            objects::merge(
                client,
                &objects::pods(),
                &format!("ns-{}", j % 20),
                &name,
                &patch,
            )
            .await
        }
        2 if k >= 5 => {
            let (ns, name) = churn_pod(k - 5);
            objects::delete(client, &objects::pods(), &ns, &name).await
        }
        3 => {
            objects::replace(
                client,
                &objects::policies(),
                &objects::policy(k % policies.max(1), k),
            )
            .await
        }
        4 => objects::put(
            client,
            &objects::policies(),
            &objects::policy(policies + k, 0),
        )
        .await
        .map(drop),
        5 if k >= 5 => {
            let j = policies + k - 5;
            objects::delete(
                client,
                &objects::policies(),
                &format!("ns-{}", j % 20),
                &format!("np-{j:04}"),
            )
            .await
        }
        6 => {
            objects::replace(
                client,
                &objects::slices(),
                &objects::slice(k % slices.max(1), k),
            )
            .await
        }
        7 => objects::put(client, &objects::slices(), &objects::slice(slices + k, 0))
            .await
            .map(drop),
        8 if k >= 5 => {
            let j = slices + k - 5;
            objects::delete(
                client,
                &objects::slices(),
                &format!("ns-{}", j % 20),
                &format!("svc-{j:04}-abcde"),
            )
            .await
        }
        _ => Ok(()),
    }
}
