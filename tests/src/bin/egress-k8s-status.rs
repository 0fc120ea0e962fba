//! The agent's status writer against a real API server (run by `cargo
//! xtask apiserver-diff` once the CRDs and the seed's custom resources are
//! in): one writer per `--node`, as the agents of as many nodes would run
//! them, each told that its last reload put every custom resource in
//! force. Exits 0 once every object's status has a `Programmed=True`
//! entry of every node for its generation and the summary says so
//! (`n/n`), printing each object's status; 1 if that does not happen in
//! time.
//!
//! Everything but the reload is the agent's code: API discovery of the
//! CRDs, the watch ([`kubernetes::custom`]), what is written and by which
//! field manager ([`kubernetes::status`]), server-side apply on the status
//! subresource.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Parser;
use egress_agent::kubernetes::{
    custom::{self, Kind},
    events::{Report, Verdict},
    status,
};
use kube::{core::DynamicObject, Api, Client};
use tokio::sync::{mpsc, watch};

#[derive(Parser)]
struct Args {
    /// The API server's URL.
    #[arg(long)]
    server: String,
    /// A bearer token of a user allowed to read and patch the objects.
    #[arg(long)]
    token: String,
    /// Act as this user (impersonation by the token's user), e.g. the
    /// agent's ServiceAccount, to prove its RBAC is enough.
    #[arg(long)]
    impersonate: Option<String>,
    /// A node to write as (repeat for several).
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// How long to wait for the statuses, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = integration_tests::apiserver::runtime()?;
    rt.block_on(async move {
        let client = integration_tests::apiserver::client(
            &args.server,
            &args.token,
            args.impersonate.clone(),
        )?;
        run(client, &args).await
    })
}

async fn run(client: Client, args: &Args) -> anyhow::Result<()> {
    let (touch, _touched) = mpsc::unbounded_channel();
    let caches = custom::watch(client.clone(), touch);
    for (kind, cache) in &caches {
        if !cache.clone().wait_until_ready().await {
            bail!(
                "the watch of {} ended before its first listing",
                kind.name()
            );
        }
    }
    // What a reload that applied every object would report.
    let mut judged = BTreeMap::new();
    for (_, cache) in &caches {
        cache.read(|items| {
            for c in items.values() {
                judged.insert(c.source.file.to_string_lossy().into_owned(), c.generation);
            }
        });
    }
    if judged.is_empty() {
        bail!("no EgressGateway or Redirect found (are the CRDs and the seed's objects in?)");
    }
    let (reports, _) = watch::channel(Report {
        nodes: args.nodes.clone(),
        outcome: Verdict::Applied { generation: 1 },
        custom: judged.clone(),
        ..Report::default()
    });
    for node in &args.nodes {
        status::spawn(
            client.clone(),
            node.clone(),
            reports.subscribe(),
            caches.clone(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let want = format!("{n}/{n}", n = args.nodes.len());
    loop {
        let mut done = true;
        let mut shown = Vec::new();
        for source in judged.keys() {
            let (kind, namespace, name) =
                Kind::of_source(source).context("a custom resource's document name")?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &kind.api_resource());
            let object = api
                .get(name)
                .await
                .with_context(|| format!("reading {source}"))?;
            let generation = object.metadata.generation;
            let st = &object.data["status"];
            let programmed_everywhere = args.nodes.iter().all(|node| {
                st["nodes"].as_array().into_iter().flatten().any(|e| {
                    e["node"] == node.as_str()
                        && e["observedGeneration"].as_i64() == generation
                        && e["conditions"][0]["status"] == "True"
                })
            });
            done &= programmed_everywhere && st["programmed"] == want.as_str();
            shown.push(format!(
                "{} {namespace}/{name} (generation {}): {}",
                kind.name(),
                generation.unwrap_or_default(),
                serde_json::to_string(st).unwrap_or_default()
            ));
        }
        if done {
            for line in shown {
                println!("{line}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            for line in shown {
                eprintln!("{line}");
            }
            bail!(
                "not every node's entry says Programmed=True with summary {want} after {}s",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
