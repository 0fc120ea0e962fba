//! The apply worker: loads, compiles and applies on a thread of its own,
//! one apply at a time, so that the event loop never waits for one.
//!
//! An apply of a large policy set takes seconds (1.4 s for 100k CIDRs: the
//! compile, then a whole generation written and the old one deleted), and
//! nft may hang until its timeout. Run inline, it held the event loop, and
//! with it `status`, `/metrics`, the file watcher and the API server's
//! inventories, for as long. Here the worker owns the [`Reloader`], and so
//! the enforcer and the agent's state; the event loop only posts requests
//! to its [`Mailbox`], and `status` and `/metrics` read what the worker
//! last published ([`Snapshot`]) beside a fresh read of the kernel
//! ([`Observer`](super::reload::Observer)).
//!
//! # Why the guarantees still hold
//!
//! - **One apply at a time, in order.** Only this thread calls the
//!   enforcer, so applies never overlap, and they reach the kernel in the
//!   order they run. Generation numbers are given by the reloader on this
//!   thread, after the kernel took the generation: a higher number is
//!   always a later apply.
//! - **The newest state wins, and none is lost.** A request is posted
//!   after the change it reports has happened (a file is complete, an
//!   inventory published), and the worker takes its requests before it
//!   reads anything. A change made after that take posts again, and is
//!   applied by the next round. Requests merged in the mailbox each name
//!   the newest state (see [`super::mailbox`]): intermediate states may be
//!   skipped, never the last.
//! - **Status, log and kernel agree on the generation in force.** The
//!   worker publishes a snapshot after each apply has returned and been
//!   logged, and `status` and `/metrics` show only what was published. So
//!   neither names a generation before the kernel has it in force and the
//!   log has said so. During an apply they show the generation before it,
//!   which stays in force unless the apply succeeds, and say an apply is
//!   under way (`applying`); the kernel may have flipped at the very end
//!   of it, just before the snapshot that says so.
//! - **Fail closed, quarantine, readiness** are the reloader's and the
//!   enforcer's, unchanged: an apply that fails leaves the previous
//!   generation in force, in every layer. Readiness and the rejections
//!   reported as Events are sent after each reload, as before, once the
//!   snapshot that shows it is published.
//! - **Exit.** When the loop stops, the worker finishes the apply in
//!   progress (nft's timeout bounds it) and drops what was not taken: no
//!   apply is cut short by the process exiting.

use std::{
    io,
    sync::Arc,
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;

use super::{
    mailbox::{Mailbox, Request, Taken, Work},
    reload::{Enforcer, Inventory, Reloader},
    state::{AgentState, ApplyTrigger, Applying, ReloadOutcome},
};
use crate::{
    compile::{Egress, Plan},
    kubernetes::events::{Rejection, Report, Verdict},
};
use egress_policy::model::ObjectId;

/// What the worker publishes for `status` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The agent's state after the last apply or pending-pod look.
    pub state: Arc<AgentState>,
    /// The apply under way, if any.
    pub applying: Option<Applying>,
    /// New `allowedHosts` addresses programmed so far.
    pub host_refreshes: u64,
}

impl Snapshot {
    /// Before the worker has published anything.
    pub fn of(state: &AgentState) -> Self {
        Self {
            state: Arc::new(state.clone()),
            ..Self::default()
        }
    }
}

/// Where the worker's results go.
pub struct Outlets {
    pub snapshots: watch::Sender<Snapshot>,
    /// Set once a generation is in force (`/readyz`).
    pub ready: Option<watch::Sender<bool>>,
    /// Kubernetes mode: the quarantined objects to report as Events.
    pub rejections: Option<watch::Sender<Report>>,
}

/// The worker's periodic work, done between applies.
#[derive(Clone, Copy, Debug)]
pub struct Ticks {
    /// How often the enforcer is polled, and workloads whose cgroup did
    /// not exist yet are looked for.
    pub reconcile_every: Duration,
    /// How often the guarded roots are walked for pods stuck pending
    /// (besides after every reload).
    pub pending_every: Duration,
}

/// The apply worker's thread, and its mailbox.
pub struct Worker {
    mailbox: Arc<Mailbox>,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Starts the worker with `reloader`. It applies nothing until asked.
    pub fn spawn<E: Enforcer + Send + 'static>(
        reloader: Reloader<E>,
        ticks: Ticks,
        outlets: Outlets,
    ) -> io::Result<Self> {
        let mailbox = Arc::new(Mailbox::default());
        let applier = Applier {
            state: Arc::new(reloader.state().clone()),
            reloader,
            outlets,
            host_refreshes: 0,
        };
        let thread = {
            let mailbox = Arc::clone(&mailbox);
            thread::Builder::new()
                .name("apply".into())
                .spawn(move || applier.run(&mailbox, ticks))?
        };
        Ok(Self { mailbox, thread })
    }

    /// Asks for `request`, merged with what the worker has not taken yet.
    pub fn post(&self, request: Request) {
        self.mailbox.post(request);
    }

    /// Stops the worker once the apply in progress, if any, is done, and
    /// waits for it (a blocking call). `Err` when it panicked.
    pub fn stop(self) -> thread::Result<()> {
        self.mailbox.close();
        self.thread.join()
    }
}

/// The worker's side: the reloader and what it publishes.
struct Applier<E> {
    reloader: Reloader<E>,
    outlets: Outlets,
    /// The state last published.
    state: Arc<AgentState>,
    host_refreshes: u64,
}

impl<E: Enforcer> Applier<E> {
    fn run(mut self, mailbox: &Mailbox, ticks: Ticks) {
        let mut next_poll = Instant::now() + ticks.reconcile_every;
        let mut next_pending = Instant::now() + ticks.pending_every;
        loop {
            match mailbox.take(next_poll.min(next_pending)) {
                Taken::Closed => return self.stop_relaying(),
                Taken::Work(work) => self.apply(work),
                Taken::Idle => {}
            }
            let now = Instant::now();
            if now >= next_poll {
                self.poll();
                next_poll = now + ticks.reconcile_every;
            }
            if now >= next_pending {
                self.reloader.refresh_pending();
                self.publish_state();
                next_pending = now + ticks.pending_every;
            }
        }
    }

    /// Nothing will answer on the gateways' relays once the agent is
    /// gone: their DNS goes back to the servers they ask, first.
    fn stop_relaying(&mut self) {
        if self.reloader.enforcer_mut().stop_relaying() {
            tracing::info!(
                "stopping the gateways' DNS relays: their queries go to their own servers again"
            );
            // Logged and counted by the reloader.
            let _ = self.reloader.reenforce(None);
        }
    }

    fn apply(&mut self, work: Work) {
        let Work {
            reload,
            inventory,
            hosts,
        } = work;
        self.publish_applying(if reload {
            ApplyTrigger::Reload
        } else {
            ApplyTrigger::AllowedHosts
        });
        if let Some(inventory) = inventory {
            self.reloader.set_inventory(inventory);
        }
        // A reload that reaches the kernel (applied, or refused there)
        // programs the new addresses too; one rejected before it, or none,
        // leaves them to a re-apply of the plan in force.
        let mut programmed = false;
        if reload {
            if let Some(hosts) = &hosts {
                self.reloader.set_hosts(hosts.clone());
            }
            let outcome = self.reloader.reload();
            programmed = !matches!(outcome, ReloadOutcome::Rejected { .. });
            if outcome.is_applied() && hosts.is_some() {
                self.host_refreshes += 1;
            }
        }
        if let Some(hosts) = hosts.filter(|_| !programmed) {
            // A failure is logged and counted by the reloader; the
            // addresses in force stay.
            if self.reloader.reenforce(Some(hosts)).is_ok() {
                self.host_refreshes += 1;
            }
        }
        // `status` first, then `/readyz`: ready never shows before the
        // generation that made it so.
        self.publish_state();
        if reload {
            self.after_reload();
        }
        // What the apply built and dropped goes back to the kernel.
        crate::sys::heap::trim();
    }

    /// The enforcer's periodic work, then a reconcile when part of the
    /// plan in force could not be enforced before and can be now.
    fn poll(&mut self) {
        self.reloader.enforcer_mut().poll();
        let due = self
            .reloader
            .plan()
            .is_some_and(|plan| self.reloader.enforcer().needs_reconcile(&plan));
        if due {
            self.publish_applying(ApplyTrigger::Reconcile);
            // Logged and counted by the reloader.
            let _ = self.reloader.reenforce(None);
            self.publish_state();
        }
    }

    /// Publishes that an apply starts, with the state from before it.
    fn publish_applying(&mut self, trigger: ApplyTrigger) {
        self.publish(Some(Applying {
            trigger,
            since: SystemTime::now(),
        }));
    }

    /// Publishes the state as it is now, with no apply under way.
    fn publish_state(&mut self) {
        self.state = Arc::new(self.reloader.state().clone());
        self.publish(None);
    }

    fn publish(&self, applying: Option<Applying>) {
        self.outlets.snapshots.send_replace(Snapshot {
            state: Arc::clone(&self.state),
            applying,
            host_refreshes: self.host_refreshes,
        });
    }

    /// Publishes what a reload changed: readiness, and the quarantined
    /// objects to report as Events.
    fn after_reload(&self) {
        if let Some(ready) = &self.outlets.ready {
            ready.send_replace(self.reloader.state().current.is_some());
        }
        if let Some(tx) = &self.outlets.rejections {
            let report = report(&self.reloader);
            tx.send_if_modified(|current| {
                let changed = *current != report;
                if changed {
                    *current = report;
                }
                changed
            });
        }
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

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        fs,
        path::PathBuf,
        sync::{mpsc, Mutex, PoisonError},
    };

    use super::*;
    use crate::resolve::ResolvedHosts;
    use egress_policy::Source;

    /// Far longer than any step takes: a bound on a hang, not a timing.
    const HANG: Duration = Duration::from_secs(60);

    /// Records the workloads of each plan it is asked to enforce, and,
    /// when gated, holds each apply until the test lets it go.
    struct Gated {
        applied: Arc<Mutex<Vec<usize>>>,
        entered: mpsc::Sender<usize>,
        release: Option<mpsc::Receiver<()>>,
    }

    impl Enforcer for Gated {
        type Error = Infallible;

        fn enforce(&mut self, plan: &Plan, _: &ResolvedHosts) -> Result<(), Infallible> {
            let _ = self.entered.send(plan.workloads.len());
            if let Some(release) = &self.release {
                let _ = release.recv_timeout(HANG);
            }
            self.applied
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(plan.workloads.len());
            Ok(())
        }
    }

    fn workload(name: &str) -> String {
        format!(
            "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
             metadata: {{name: {name}, namespace: ns}}\nspec: {{cgroup: t/{name}}}\n"
        )
    }

    /// An inventory of `n` workloads from the API server.
    fn inventory(n: usize) -> Inventory {
        Inventory {
            sources: (0..n)
                .map(|i| {
                    Source::new(
                        format!("kubernetes/workloads/ns/api-{i}"),
                        workload(&format!("api-{i}")),
                    )
                })
                .collect(),
            ..Inventory::default()
        }
    }

    /// A policy directory with one workload.
    fn policies(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("egress-worker-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        fs::write(d.join("w.yaml"), workload("file")).expect("write");
        d
    }

    struct Harness {
        worker: Worker,
        snapshots: watch::Receiver<Snapshot>,
        ready: watch::Receiver<bool>,
        applied: Arc<Mutex<Vec<usize>>>,
        entered: mpsc::Receiver<usize>,
        release: Option<mpsc::Sender<()>>,
    }

    impl Harness {
        fn start(dir: &std::path::Path, gated: bool) -> Self {
            let (entered_tx, entered) = mpsc::channel();
            let (release_tx, release_rx) = mpsc::channel();
            let applied = Arc::default();
            let enforcer = Gated {
                applied: Arc::clone(&applied),
                entered: entered_tx,
                release: gated.then_some(release_rx),
            };
            let reloader = Reloader::new(vec![dir.to_owned()], enforcer, false);
            let (snapshots_tx, snapshots) = watch::channel(Snapshot::of(reloader.state()));
            let (ready_tx, ready) = watch::channel(false);
            let ticks = Ticks {
                reconcile_every: HANG,
                pending_every: HANG,
            };
            let outlets = Outlets {
                snapshots: snapshots_tx,
                ready: Some(ready_tx),
                rejections: None,
            };
            let worker = Worker::spawn(reloader, ticks, outlets).expect("thread");
            Self {
                worker,
                snapshots,
                ready,
                applied,
                entered,
                release: gated.then_some(release_tx),
            }
        }

        /// The workloads of the next plan the enforcer is given.
        fn entered(&self) -> usize {
            self.entered.recv_timeout(HANG).expect("an apply started")
        }

        fn release(&self) {
            let release = self.release.as_ref().expect("gated");
            release.send(()).expect("the apply waits");
        }

        /// Waits until the worker publishes a snapshot that `done` accepts.
        fn wait(&self, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
            let deadline = Instant::now() + HANG;
            loop {
                let snapshot = self.snapshots.borrow().clone();
                if done(&snapshot) {
                    return snapshot;
                }
                assert!(Instant::now() < deadline, "{what}: {snapshot:?}");
                thread::sleep(Duration::from_millis(5));
            }
        }

        fn stop(self) -> Vec<usize> {
            self.worker.stop().expect("the worker did not panic");
            let applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
            applied.clone()
        }
    }

    fn generation(s: &Snapshot) -> Option<u64> {
        s.state.current.as_ref().map(|g| g.number)
    }

    #[test]
    fn a_lone_change_applies_at_once_and_a_burst_during_an_apply_once_after_it() {
        let dir = policies("burst");
        let h = Harness::start(&dir, true);

        // Alone: taken at once.
        h.worker.post(Request::Reload);
        assert_eq!(h.entered(), 1, "the files' workload");
        let during = h.snapshots.borrow().clone();
        assert_eq!(
            during.applying.map(|a| a.trigger),
            Some(ApplyTrigger::Reload),
            "status says an apply is under way"
        );
        assert_eq!(generation(&during), None, "and nothing is in force yet");
        assert!(!*h.ready.borrow());

        // A burst while it applies: merged, with the newest inventory.
        for n in [2, 5, 0, 3] {
            h.worker.post(Request::Inventory(inventory(n)));
            h.worker.post(Request::Reload);
        }
        h.release();
        assert_eq!(h.entered(), 1 + 3, "the newest inventory, in one apply");
        let between = h.snapshots.borrow().clone();
        assert_eq!(generation(&between), Some(1), "the first apply is in force");
        assert!(between.applying.is_some());
        assert!(
            *h.ready.borrow(),
            "ready once the first generation is in force"
        );
        h.release();
        let after = h.wait("generation 2", |s| {
            generation(s) == Some(2) && s.applying.is_none()
        });
        assert!(after
            .state
            .last_reload
            .as_ref()
            .is_some_and(ReloadOutcome::is_applied));
        assert_eq!(h.stop(), [1, 4], "two applies, no more");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn new_addresses_ride_on_a_reload_or_else_reapply_the_plan_in_force() {
        let dir = policies("hosts");
        let (entered, _entered) = mpsc::channel();
        let applied = Arc::default();
        let enforcer = Gated {
            applied: Arc::clone(&applied),
            entered,
            release: None,
        };
        let reloader = Reloader::new(vec![dir.clone()], enforcer, false);
        let (snapshots, published) = watch::channel(Snapshot::of(reloader.state()));
        let mut applier = Applier {
            state: Arc::new(reloader.state().clone()),
            reloader,
            outlets: Outlets {
                snapshots,
                ready: None,
                rejections: None,
            },
            host_refreshes: 0,
        };
        let addresses = || Some(ResolvedHosts::default());
        let applies = || applied.lock().unwrap_or_else(PoisonError::into_inner).len();
        let reload = |hosts| Work {
            reload: true,
            inventory: None,
            hosts,
        };
        applier.apply(reload(None));
        assert_eq!(applies(), 1);

        // With a reload that applies: one apply programs both.
        applier.apply(reload(addresses()));
        let s = published.borrow().clone();
        assert_eq!(
            (applies(), generation(&s), s.host_refreshes),
            (2, Some(2), 1)
        );

        // With a reload that is rejected: the plan in force again, with
        // the new addresses.
        fs::write(dir.join("bad.yaml"), "apiVersion: v1\nkind: Nope\n").expect("write");
        applier.apply(reload(addresses()));
        let s = published.borrow().clone();
        assert_eq!(
            (applies(), generation(&s), s.host_refreshes),
            (3, Some(2), 2)
        );
        assert!(matches!(
            s.state.last_reload,
            Some(ReloadOutcome::Rejected { .. })
        ));

        // Alone: the plan in force again.
        applier.apply(Work {
            hosts: addresses(),
            ..Work::default()
        });
        let s = published.borrow().clone();
        assert_eq!(
            (applies(), generation(&s), s.host_refreshes),
            (4, Some(2), 3)
        );
        assert!(s.applying.is_none());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn stopping_waits_for_the_apply_in_progress_and_drops_the_rest() {
        let dir = policies("stop");
        let h = Harness::start(&dir, true);
        h.worker.post(Request::Reload);
        assert_eq!(h.entered(), 1);
        h.worker.post(Request::Inventory(inventory(2)));
        // What `stop` does first; the apply goes on only after it.
        h.worker.mailbox.close();
        h.release();
        assert_eq!(
            h.stop(),
            [1],
            "the apply in progress finished; the rest was dropped"
        );
        fs::remove_dir_all(&dir).ok();
    }
}
