//! The agent's event loop: what makes it reload.

use std::{path::PathBuf, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
    time::{interval, sleep, MissedTickBehavior},
};
use tracing::{error, info};

use super::{
    reload::{format_chain, Enforcer, Inventory, Reloader},
    state::ReloadOutcome,
};
use crate::{
    compile::{Egress, Plan},
    kubernetes::events::{Rejection, Report, Verdict},
    observe::{metrics, EventHub, Query, Status},
    resolve::{dns_names, HostResolver, ResolverSettings},
};
use egress_policy::model::ObjectId;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot install the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {path} for changes")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot start the DNS resolver for allowedHosts")]
    Resolver(#[source] crate::resolve::ResolveError),
    #[error("the Kubernetes inventory ended before its first listing")]
    InventoryGone,
}

/// Timing knobs of the loop.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Several files may be completed at once (`cp -r`, a ConfigMap
    /// update); completions closer together than this become one reload.
    pub debounce: Duration,
    /// How often workloads whose cgroup did not exist yet are looked for.
    pub reconcile_every: Duration,
    pub resolver: ResolverSettings,
    /// How long the first apply waits for `allowedHosts` to resolve.
    pub initial_dns_wait: Duration,
    /// How often the guarded roots are walked for pods stuck pending
    /// (besides after every reload).
    pub pending_every: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(50),
            reconcile_every: Duration::from_millis(100),
            resolver: ResolverSettings::default(),
            initial_dns_wait: Duration::from_secs(2),
            pending_every: Duration::from_secs(1),
        }
    }
}

/// The event loop's side of `status` and `/metrics`.
pub struct Observing {
    pub queries: mpsc::Receiver<Query>,
    pub hub: EventHub,
    /// Set once a generation is in force (`/readyz`).
    pub ready: watch::Sender<bool>,
    /// Kubernetes mode: where quarantined objects go to be reported as
    /// Events (see `kubernetes::events`).
    pub rejections: Option<watch::Sender<Report>>,
}

/// Runs until SIGTERM or SIGINT. Exiting never removes enforcement: the
/// programs and maps stay pinned (fail closed); only `uninstall` removes
/// them.
///
/// With `inventory` (Kubernetes mode), nothing is applied before the first
/// inventory arrives: until the API server has listed every Pod,
/// Namespace and NetworkPolicy, a plan would lack policies and open what
/// they close. Pinned enforcement (and the pending policy) stays in force
/// while it waits. Each new inventory is applied after `debounce`, like a
/// file change.
pub async fn run<E: Enforcer>(
    mut reloader: Reloader<E>,
    paths: &[PathBuf],
    options: RunOptions,
    observing: Option<Observing>,
    mut inventory: Option<watch::Receiver<Option<Inventory>>>,
) -> Result<(), RunError> {
    let (mut queries, hub, ready, rejections) = match observing {
        Some(o) => (Some(o.queries), o.hub, Some(o.ready), o.rejections),
        None => (None, EventHub::new(0), None, None),
    };
    let mut host_refreshes: u64 = 0;
    let sig = |kind, name| {
        signal(kind).map_err(|source| RunError::Signal {
            signal: name,
            source,
        })
    };
    let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;

    let (changes_tx, mut changes) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if is_complete_change(&event.kind) {
                let _ = changes_tx.send(());
            }
        }
    })
    .map_err(|source| RunError::Watch {
        path: PathBuf::new(),
        source,
    })?;
    for path in paths {
        watcher
            .watch(path, RecursiveMode::Recursive)
            .map_err(|source| RunError::Watch {
                path: path.clone(),
                source,
            })?;
    }

    if let Some(feed) = inventory.as_mut() {
        info!("waiting for the first complete listing from the Kubernetes API");
        let first = tokio::select! {
            first = feed.wait_for(Option::is_some) => first.ok().and_then(|i| i.clone()),
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        };
        match first {
            Some(first) => reloader.set_inventory(first),
            // The sender is gone: the watch task ended, which it only does
            // when it cannot start; its error was logged.
            None => return Err(RunError::InventoryGone),
        }
    }

    let resolver = HostResolver::spawn(options.resolver.clone(), []).map_err(RunError::Resolver)?;
    reloader.enforcer_mut().use_resolver(&resolver);
    let mut hosts = resolver.subscribe();

    resolve_first(
        &mut reloader,
        paths,
        &resolver,
        &mut hosts,
        options.initial_dns_wait,
    )
    .await;
    reload(&mut reloader, &resolver);
    after_reload(&ready, &rejections, &reloader);
    let mut tick = interval(options.reconcile_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pending_tick = interval(options.pending_every);
    pending_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
                    _ = hup.recv() => {
                        info!("SIGHUP: reloading");
                        reload(&mut reloader, &resolver);
                        after_reload(&ready, &rejections, &reloader);
                    }
                    Some(()) = changes.recv() => {
                        sleep(options.debounce).await;
                        while changes.try_recv().is_ok() {}
                        info!("policy files changed: reloading");
                        reload(&mut reloader, &resolver);
                        after_reload(&ready, &rejections, &reloader);
                    }
                    Some(()) = next_inventory(&mut inventory) => {
                        sleep(options.debounce).await;
                        if let Some(latest) = inventory.as_mut().and_then(|f| f.borrow_and_update().clone()) {
                            reloader.set_inventory(latest);
                            reload(&mut reloader, &resolver);
                            after_reload(&ready, &rejections, &reloader);
                        }
                    }
                    Ok(()) = hosts.changed() => {
                        let snapshot = hosts.borrow_and_update().clone();
        info!(hosts = %describe(&snapshot), "allowedHosts addresses changed");
                        // A failure is logged and counted by the reloader;
                        // the addresses in force stay.
                        if reloader.reenforce(Some(snapshot)).is_ok() {
                            host_refreshes += 1;
                        }
                    }
                    _ = tick.tick() => {
                        reloader.enforcer_mut().poll();
                        let due = reloader.plan().is_some_and(|plan| reloader.enforcer().needs_reconcile(&plan));
                        if due {
                            // Logged and counted by the reloader.
                            let _ = reloader.reenforce(None);
                        }
                    }
                    _ = pending_tick.tick() => reloader.refresh_pending(),
                    Some(query) = next_query(&mut queries) => {
                        answer(query, &reloader, &hub, host_refreshes);
                    }
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
    }
    // Nothing will answer on the gateways' relays once this process is
    // gone: hand their DNS back to the servers they ask first.
    if reloader.enforcer_mut().stop_relaying() {
        info!("stopping the gateways' DNS relays: their queries go to their own servers again");
        let _ = reloader.reenforce(None);
    }
    info!("exiting; enforcement stays in force (pinned) until `egress-agent uninstall`");
    Ok(())
}

/// Whether a watcher event marks a policy file as complete, so that a
/// reload sees a whole file: closed after writing (inotify's
/// IN_CLOSE_WRITE), moved or renamed into place (IN_MOVED_TO, the atomic
/// write of `rename(2)` and of kubelet's ConfigMap volumes), moved away or
/// deleted. A plain modification (IN_MODIFY, IN_CREATE) is a writer still
/// at work: a file truncated and rewritten in place in several steps would
/// otherwise be applied at each step, empty or cut short, and either could
/// open what the whole file closes.
fn is_complete_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Name(mode)) => !matches!(mode, RenameMode::Other),
        // IN_MODIFY, IN_CREATE, IN_ATTRIB, opens and reads: a write in
        // progress, or nothing that changes content.
        _ => false,
    }
}

/// Resolves the policy's `allowedHosts` names before the first apply. A
/// restarted agent adopts the pinned generation, which holds the addresses;
/// applying before DNS answers would take them away from the gateway until
/// it does. Pinned enforcement stays in force while this waits, and the
/// wait is bounded: a name that does not resolve in time is simply
/// unreachable until it does (fail closed).
async fn resolve_first<E: Enforcer>(
    reloader: &mut Reloader<E>,
    paths: &[PathBuf],
    resolver: &HostResolver,
    hosts: &mut tokio::sync::watch::Receiver<crate::resolve::ResolvedHosts>,
    wait: Duration,
) {
    let Ok(loaded) = egress_policy::load(paths) else {
        return; // the first reload reports the errors
    };
    let names = dns_names(&crate::compile::compile(&loaded.model));
    if names.is_empty() || resolver.set_names(names.clone()).is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let resolved = hosts.borrow_and_update().clone();
        if names.iter().all(|n| !resolved.addresses(n).is_empty()) {
            break;
        }
        match tokio::time::timeout_at(deadline, hosts.changed()).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    let resolved = hosts.borrow().clone();
    info!(hosts = %describe(&resolved), "allowedHosts addresses changed");
    reloader.set_hosts(resolved);
}

/// `name=count` for each resolved name, for logs.
fn describe(hosts: &crate::resolve::ResolvedHosts) -> String {
    hosts
        .iter()
        .map(|(name, addrs)| format!("{name}={}", addrs.len()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Resolves when a new inventory is published; never without a feed (or
/// once its sender is gone).
async fn next_inventory(feed: &mut Option<watch::Receiver<Option<Inventory>>>) -> Option<()> {
    match feed {
        Some(f) => match f.changed().await {
            Ok(()) => Some(()),
            Err(_) => {
                error!("the Kubernetes inventory stopped; the last one stays in force");
                *feed = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// The next query, or never when nobody observes.
async fn next_query(queries: &mut Option<mpsc::Receiver<Query>>) -> Option<Query> {
    match queries {
        Some(q) => q.recv().await,
        None => std::future::pending().await,
    }
}

fn answer<E: Enforcer>(query: Query, reloader: &Reloader<E>, hub: &EventHub, refreshes: u64) {
    let kernel = reloader.enforcer().view();
    let status = Status::build(reloader.state(), &kernel, hub, refreshes);
    // A client that went away is not an error.
    let _ = match query {
        Query::Status(reply) => reply.send(status).map_err(drop),
        Query::Metrics(reply) => reply
            .send(metrics::render(
                &status,
                kernel.counters.as_ref(),
                &kernel.names,
            ))
            .map_err(drop),
    };
}

/// Publishes what a reload changed: readiness, and the quarantined objects
/// to report as Events.
fn after_reload<E: Enforcer>(
    ready: &Option<watch::Sender<bool>>,
    rejections: &Option<watch::Sender<Report>>,
    reloader: &Reloader<E>,
) {
    if let Some(ready) = ready {
        ready.send_replace(reloader.state().current.is_some());
    }
    if let Some(tx) = rejections {
        let report = report(reloader);
        tx.send_if_modified(|current| {
            let changed = *current != report;
            if changed {
                *current = report;
            }
            changed
        });
    }
}

/// The quarantined objects of the generation in force, each with whether
/// it holds back a workload of this node, and the cluster's Nodes.
fn report<E: Enforcer>(reloader: &Reloader<E>) -> Report {
    let state = reloader.state();
    let plan = state.current.as_ref().map(|g| &g.plan);
    let inventory = reloader.inventory();
    let rejections = state
        .quarantined
        .iter()
        .map(|q| Rejection {
            quarantined: q.clone(),
            here: holds_back_here(&q.source, plan.map(|p| &**p), inventory),
        })
        .collect();
    let nodes = inventory
        .sources
        .iter()
        .filter_map(|s| s.file.to_str()?.strip_prefix("kubernetes/nodes/"))
        .map(str::to_owned)
        .collect();
    let in_force = state.current.as_ref().map(|g| g.number);
    let outcome = match &state.last_reload {
        None => Verdict::Pending,
        Some(ReloadOutcome::Applied { generation }) => Verdict::Applied {
            generation: *generation,
        },
        Some(ReloadOutcome::Rejected { diagnostics }) => {
            let errors: Vec<&egress_policy::Diagnostic> =
                diagnostics.iter().filter(|d| d.is_error()).collect();
            let first = errors.first().map(ToString::to_string).unwrap_or_default();
            Verdict::NotApplied {
                in_force,
                why: match errors.len() {
                    0 | 1 => format!("rejected: {first}"),
                    n => format!("rejected with {n} errors, the first: {first}"),
                },
            }
        }
        Some(ReloadOutcome::Failed { error }) => Verdict::NotApplied {
            in_force,
            why: format!("the kernel refused it: {error}"),
        },
    };
    Report {
        rejections,
        nodes,
        outcome,
        custom: inventory.custom.clone(),
    }
}

/// Whether the object named `source` holds back a workload of this node: a
/// NetworkPolicy that selects one (its stand-in keeps its name), or a pod
/// of this node (its document has a cgroup; a peer's has none).
fn holds_back_here(source: &str, plan: Option<&Plan>, inventory: &Inventory) -> bool {
    if let Some(rest) = source.strip_prefix("kubernetes/networkpolicies/") {
        let (Some(plan), Ok(id)) = (plan, rest.parse::<ObjectId>()) else {
            return false;
        };
        return plan.workloads.iter().any(|w| {
            w.guard.is_none()
                && matches!(&w.egress, Egress::Isolated { policies, .. } if policies.contains(&id))
        });
    }
    if source.starts_with("kubernetes/pods/") {
        return inventory
            .sources
            .iter()
            .find(|s| s.file.to_str() == Some(source))
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s.text).ok())
            .is_some_and(|doc| doc["spec"]["cgroup"].is_string());
    }
    false
}

fn reload<E: Enforcer>(reloader: &mut Reloader<E>, resolver: &HostResolver) {
    if reloader.reload().is_applied() {
        if let Some(plan) = reloader.plan() {
            if let Err(e) = resolver.set_names(dns_names(&plan)) {
                error!(error = %format_chain(&e), "cannot watch the new allowedHosts names");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, MetadataKind, ModifyKind,
        RemoveKind, RenameMode,
    };

    use super::is_complete_change;

    #[test]
    fn only_completed_files_trigger_a_reload() {
        let complete = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Remove(RemoveKind::Folder),
        ];
        for kind in complete {
            assert!(is_complete_change(&kind), "{kind:?}");
        }
        let in_progress = [
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Create(CreateKind::File),
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ];
        for kind in in_progress {
            assert!(!is_complete_change(&kind), "{kind:?}");
        }
    }
}
