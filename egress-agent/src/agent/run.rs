//! The agent's event loop: what makes it reload, and the answers to
//! `status` and `/metrics`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{error, info};

use super::{
    mailbox::Request,
    reload::{format_chain, Enforcer, Inventory, Observer, Reloader},
    worker::{Outlets, Snapshot, Ticks, Worker},
};
use crate::{
    compile::Plan,
    kubernetes::events::Report,
    observe::{metrics, EventHub, Query, Status},
    resolve::{dns_names, HostResolver, ResolverSettings},
};

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
    #[error("cannot start the apply worker")]
    Worker(#[source] std::io::Error),
    #[error("the apply worker stopped (it panicked); exiting so that the agent is restarted")]
    WorkerGone,
}

/// Timing knobs of the loop and the worker.
#[derive(Clone, Debug)]
pub struct RunOptions {
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
/// The loop turns triggers (file changes, SIGHUP, inventories, DNS
/// answers) into requests to the apply worker ([`super::worker`]), which
/// owns `reloader` from the first apply on, and never waits for an apply
/// itself. A lone trigger is applied at once; those that come while an
/// apply runs are applied together right after it. `status` and
/// `/metrics` are answered all along, from what the worker last published.
///
/// With `inventory` (Kubernetes mode), nothing is applied before the first
/// inventory arrives: until the API server has listed every Pod,
/// Namespace and NetworkPolicy, a plan would lack policies and open what
/// they close. Pinned enforcement (and the pending policy) stays in force
/// while it waits.
pub async fn run<E: Enforcer + Send + 'static>(
    mut reloader: Reloader<E>,
    paths: &[PathBuf],
    options: RunOptions,
    observing: Option<Observing>,
    mut inventory: Option<watch::Receiver<Option<Inventory>>>,
) -> Result<(), RunError> {
    let (published, mut snapshots) = watch::channel(Snapshot::of(reloader.state()));
    let (ready, rejections) = match observing {
        Some(o) => {
            // Answered from now on, whatever the worker is doing, and
            // before it starts (while the first listing and the first DNS
            // answers are awaited).
            tokio::spawn(serve_queries(
                o.queries,
                snapshots.clone(),
                reloader.enforcer().observer(),
                o.hub,
            ));
            (Some(o.ready), o.rejections)
        }
        None => (None, None),
    };
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
    let worker = Worker::spawn(
        reloader,
        Ticks {
            reconcile_every: options.reconcile_every,
            pending_every: options.pending_every,
        },
        Outlets {
            snapshots: published,
            ready,
            rejections,
        },
    )
    .map_err(RunError::Worker)?;
    worker.post(Request::Reload);
    // The generation whose allowedHosts names the resolver watches.
    let mut named = None;
    let result = loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                worker.post(Request::Reload);
            }
            Some(()) = changes.recv() => {
                while changes.try_recv().is_ok() {}
                info!("policy files changed: reloading");
                worker.post(Request::Reload);
            }
            Some(()) = next_inventory(&mut inventory) => {
                if let Some(latest) = inventory.as_mut().and_then(|f| f.borrow_and_update().clone()) {
                    worker.post(Request::Inventory(latest));
                }
            }
            Ok(()) = hosts.changed() => {
                let snapshot = hosts.borrow_and_update().clone();
                info!(hosts = %describe(&snapshot), "allowedHosts addresses changed");
                worker.post(Request::Hosts(snapshot));
            }
            changed = snapshots.changed() => match changed {
                Ok(()) => {
                    let plan = snapshots.borrow_and_update().state.current.as_ref().map(|g| (g.number, Arc::clone(&g.plan)));
                    watch_names(plan, &mut named, &resolver);
                }
                // Only a panic ends the worker before the loop stops it.
                Err(_) => break Err(RunError::WorkerGone),
            },
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
        }
    };
    if snapshots.borrow().applying.is_some() {
        info!("waiting for the apply in progress to finish");
    }
    // The worker's end closes the snapshots, which ends the query server.
    if let Ok(Err(_)) = tokio::task::spawn_blocking(move || worker.stop()).await {
        error!("the apply worker panicked");
    }
    if result.is_ok() {
        info!("exiting; enforcement stays in force (pinned) until `egress-agent uninstall`");
    }
    result
}

/// Has the resolver watch the `allowedHosts` names of the plan in force,
/// when a reload put a new generation in force.
fn watch_names(plan: Option<(u64, Arc<Plan>)>, named: &mut Option<u64>, resolver: &HostResolver) {
    let Some((generation, plan)) = plan else {
        return;
    };
    if *named == Some(generation) {
        return;
    }
    *named = Some(generation);
    if let Err(e) = resolver.set_names(dns_names(&plan)) {
        error!(error = %format_chain(&e), "cannot watch the new allowedHosts names");
    }
}

/// Answers `status` and `/metrics`, one query at a time as the loop did,
/// from the worker's last snapshot and a fresh read of the kernel, until
/// the snapshots end (the agent exits). The read (every map, and nft for
/// the backstop's counters) runs on a blocking thread, so that nothing
/// async waits on it.
async fn serve_queries(
    mut queries: mpsc::Receiver<Query>,
    mut snapshots: watch::Receiver<Snapshot>,
    observer: Arc<dyn Observer>,
    hub: EventHub,
) {
    loop {
        let query = tokio::select! {
            query = queries.recv() => query,
            Err(_) = snapshots.changed() => None,
        };
        let Some(query) = query else {
            return;
        };
        let snapshot = snapshots.borrow().clone();
        let (observer, hub) = (Arc::clone(&observer), hub.clone());
        // A panic fails this query alone: its reply is dropped.
        let _ = tokio::task::spawn_blocking(move || {
            answer(query, &snapshot, observer.as_ref(), &hub);
        })
        .await;
    }
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

fn answer(query: Query, snapshot: &Snapshot, observer: &dyn Observer, hub: &EventHub) {
    let kernel = observer.view();
    let status = Status::build(
        &snapshot.state,
        snapshot.applying.as_ref(),
        &kernel,
        hub,
        snapshot.host_refreshes,
    );
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
