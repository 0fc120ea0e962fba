//! The policy lifecycle: load → compile → enforce, never losing the policy
//! in force.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use tracing::{error, info, warn};

use super::{
    pending::PendingTracker,
    quarantine::{self, Held},
    state::{AgentState, ApplyFailure, ApplyTrigger, Generation, ReloadOutcome},
};
use crate::{compile::Plan, resolve::ResolvedHosts};
use egress_policy::{ParseCache, Severity, Source};

/// Programs the kernel with a plan. Implementations must be atomic: on
/// error, whatever was in force before stays in force, in every layer
/// (for the kernel enforcer: the eBPF maps and the nftables backstop), so
/// that the generation the agent reports is the one the kernel enforces.
pub trait Enforcer {
    type Error: std::error::Error + Send + Sync + 'static;

    fn enforce(&mut self, plan: &Plan, hosts: &ResolvedHosts) -> Result<(), Self::Error>;

    /// True when part of `plan` could not be enforced at the last apply (a
    /// workload whose cgroup did not exist) and can be now.
    fn needs_reconcile(&self, _plan: &Plan) -> bool {
        false
    }

    /// Called on every tick of the apply worker, for periodic work such as
    /// reporting audit findings.
    fn poll(&mut self) {}

    /// Hands the enforcer the running resolver, for what follows DNS
    /// answers (the gateways' relay, `run --follow-gateway-dns`).
    fn use_resolver(&mut self, _resolver: &crate::resolve::HostResolver) {}

    /// Stops what follows DNS answers, before the agent exits; true when
    /// the data plane must be applied again for it (the gateways' DNS no
    /// longer sent to relays that are about to close).
    fn stop_relaying(&mut self) -> bool {
        false
    }

    /// What `status` and `/metrics` read of the kernel side. It is read on
    /// other threads, while this enforcer applies, so it shares no state
    /// with it but what it is given here.
    fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(Unobserved)
    }
}

/// Reads what `status` and `/metrics` show of the kernel side (see
/// [`Enforcer::observer`]).
pub trait Observer: Send + Sync {
    fn view(&self) -> crate::observe::KernelView;
}

/// An enforcer with nothing of the kernel to show.
struct Unobserved;

impl Observer for Unobserved {
    fn view(&self) -> crate::observe::KernelView {
        crate::observe::KernelView::default()
    }
}

pub use crate::inventory::Inventory;

/// Owns the policy paths, the enforcer and the agent state.
pub struct Reloader<E> {
    paths: Vec<PathBuf>,
    inventory: Inventory,
    enforcer: E,
    state: AgentState,
    hosts: ResolvedHosts,
    /// The warnings of the last valid reload, logged once.
    warned: std::collections::HashSet<String>,
    /// The API objects of the generation in force that loaded as they
    /// are: what a quarantined object falls back to.
    last_good: HashMap<Arc<Path>, Source>,
    /// The typed parses of the documents of the last load: a reload parses
    /// only what changed.
    parses: ParseCache,
    pending: PendingTracker,
}

impl<E: Enforcer> Reloader<E> {
    pub fn new(paths: Vec<PathBuf>, enforcer: E, audit: bool) -> Self {
        Self {
            paths,
            inventory: Inventory::default(),
            enforcer,
            state: AgentState {
                audit,
                ..AgentState::default()
            },
            hosts: ResolvedHosts::default(),
            warned: std::collections::HashSet::new(),
            last_good: HashMap::new(),
            parses: ParseCache::default(),
            pending: PendingTracker::default(),
        }
    }

    /// Looks again for pods stuck pending (see [`super::pending`]) and
    /// keeps them in the state for `status` and `/metrics`.
    pub fn refresh_pending(&mut self) {
        let plan = self.state.current.as_ref().map(|g| Arc::clone(&g.plan));
        self.state.pending_pods = self.pending.refresh(
            &self.inventory.guards.pending,
            plan.as_deref(),
            &self.inventory.waiting,
            std::time::Instant::now(),
        );
    }

    /// The inventory the next reload adds to the policy files.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    pub fn enforcer(&self) -> &E {
        &self.enforcer
    }

    pub fn enforcer_mut(&mut self) -> &mut E {
        &mut self.enforcer
    }

    /// Sets what the next reloads add to the policy files.
    pub fn set_inventory(&mut self, inventory: Inventory) {
        self.inventory = inventory;
    }

    /// The plan in force, if any.
    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.state.current.as_ref().map(|g| Arc::clone(&g.plan))
    }

    /// Reads the policy paths again and, if they are valid, enforces them.
    /// An invalid set is logged with every finding and changes nothing.
    pub fn reload(&mut self) -> &ReloadOutcome {
        self.state.reloads += 1;
        let started = std::time::Instant::now();
        let outcome = match quarantine::load(
            &self.paths,
            &self.inventory.sources,
            &self.last_good,
            &mut self.parses,
        ) {
            Err(rejected) => {
                for d in &rejected.diagnostics {
                    match d.severity {
                        Severity::Error => error!(target: "policy", "{d}"),
                        Severity::Warning => warn!(target: "policy", "{d}"),
                    }
                }
                error!(
                    errors = rejected.error_count(),
                    generation = self.state.current.as_ref().map(|g| g.number),
                    "policy rejected; the previous generation stays in force"
                );
                ReloadOutcome::Rejected {
                    diagnostics: rejected.diagnostics,
                }
            }
            Ok(quarantine::Outcome {
                loaded,
                plan,
                quarantined,
                good,
            }) => {
                for q in &quarantined {
                    if !self.state.quarantined.contains(q) {
                        for e in &q.errors {
                            error!(target: "policy", "{e}");
                        }
                        error!(source = %q.source, held = ?q.held, "object quarantined: the rest of the policy set goes on");
                    }
                }
                // Each warning once while it lasts: with objects from the
                // API server, reloads are frequent, and a NetworkPolicy
                // that selects no pod on this node is normal there.
                let now: std::collections::HashSet<String> =
                    loaded.warnings.iter().map(ToString::to_string).collect();
                for d in &now {
                    if !self.warned.contains(d) {
                        warn!(target: "policy", "{d}");
                    }
                }
                self.warned = now;
                let plan = Arc::new(plan.guarded(&self.inventory.guards));
                match self.enforcer.enforce(&plan, &self.hosts) {
                    Ok(()) => {
                        let number = self.state.current.as_ref().map_or(1, |g| g.number + 1);
                        info!(
                            generation = number,
                            workloads = plan.workloads.len(),
                            "policy applied"
                        );
                        self.state.current = Some(Generation {
                            number,
                            plan,
                            loaded_at: SystemTime::now(),
                            warnings: loaded.warnings,
                        });
                        // A quarantined object held at its last good
                        // version keeps that version for next time.
                        let mut next = good;
                        for q in quarantined.iter().filter(|q| q.held == Held::LastGood) {
                            if let Some((file, source)) =
                                self.last_good.get_key_value(Path::new(&q.source))
                            {
                                next.insert(Arc::clone(file), source.clone());
                            }
                        }
                        self.last_good = next;
                        self.state.quarantined = quarantined;
                        ReloadOutcome::Applied { generation: number }
                    }
                    Err(e) => {
                        let error = format_chain(&e);
                        self.apply_failed(ApplyTrigger::Reload, &error);
                        ReloadOutcome::Failed { error }
                    }
                }
            }
        };
        if !outcome.is_applied() {
            self.state.failed_reloads += 1;
        }
        self.state.last_reload_duration = started.elapsed();
        self.state.reload_seconds_total += self.state.last_reload_duration.as_secs_f64();
        self.state.last_reload_at = Some(SystemTime::now());
        self.refresh_pending();
        self.state.last_reload.insert(outcome)
    }

    /// Sets the resolved `allowedHosts` addresses for the next apply.
    pub fn set_hosts(&mut self, hosts: ResolvedHosts) {
        self.hosts = hosts;
    }

    /// Re-enforces the plan in force, e.g. after DNS answers changed or a
    /// workload's cgroup appeared. Returns false when nothing is in force.
    /// A failure is logged and counted; what was in force stays.
    pub fn reenforce(&mut self, hosts: Option<ResolvedHosts>) -> Result<bool, E::Error> {
        let trigger = if hosts.is_some() {
            ApplyTrigger::AllowedHosts
        } else {
            ApplyTrigger::Reconcile
        };
        // Kept even if the apply fails: they are what the next apply (a
        // reload, a reconcile) should program, and the resolver publishes
        // them only once.
        if let Some(hosts) = hosts {
            self.hosts = hosts;
        }
        let Some(plan) = self.plan() else {
            return Ok(false);
        };
        if let Err(e) = self.enforcer.enforce(&plan, &self.hosts) {
            self.apply_failed(trigger, &format_chain(&e));
            return Err(e);
        }
        Ok(true)
    }

    /// Logs and counts an apply the kernel refused. The enforcer is
    /// atomic, so the generation in force stays as it was.
    fn apply_failed(&mut self, trigger: ApplyTrigger, error: &str) {
        let generation = self.state.current.as_ref().map(|g| g.number);
        error!(
            %trigger,
            error,
            generation,
            "cannot program the kernel; the previous generation stays in force"
        );
        self.state.apply_failures += 1;
        self.state.last_apply_failure = Some(ApplyFailure {
            trigger,
            error: error.to_owned(),
            at: SystemTime::now(),
            generation,
        });
    }
}

pub use crate::errors::format_chain;

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// Records what it was asked to enforce; can be told to fail.
    #[derive(Default)]
    struct Recorder {
        applied: Vec<usize>,
        fail: bool,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("kernel said no")]
    struct No;

    impl Enforcer for Recorder {
        type Error = No;

        fn enforce(&mut self, plan: &Plan, _: &ResolvedHosts) -> Result<(), No> {
            if self.fail {
                return Err(No);
            }
            self.applied.push(plan.workloads.len());
            Ok(())
        }
    }

    const WORKLOAD: &str = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
        metadata: {name: w, namespace: ns}\nspec: {cgroup: t/w}\n";

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("egress-reload-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn an_invalid_reload_keeps_the_generation_in_force() {
        let d = dir("invalid");
        fs::write(d.join("w.yaml"), WORKLOAD).expect("write");
        let mut r = Reloader::new(vec![d.clone()], Recorder::default(), false);
        assert!(r.reload().is_applied());
        fs::write(d.join("bad.yaml"), "apiVersion: v1\nkind: Nope\n").expect("write");
        assert!(
            matches!(r.reload(), ReloadOutcome::Rejected { diagnostics } if !diagnostics.is_empty())
        );
        assert_eq!(r.state().current.as_ref().map(|g| g.number), Some(1));
        assert_eq!(
            r.enforcer().applied,
            [1],
            "the kernel was not touched by the bad reload"
        );
        fs::remove_file(d.join("bad.yaml")).expect("rm");
        assert!(matches!(
            r.reload(),
            ReloadOutcome::Applied { generation: 2 }
        ));
        assert_eq!((r.state().reloads, r.state().failed_reloads), (3, 1));
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn an_enforcer_failure_keeps_the_generation_in_force() {
        let d = dir("enforce");
        fs::write(d.join("w.yaml"), WORKLOAD).expect("write");
        let mut r = Reloader::new(vec![d.clone()], Recorder::default(), false);
        r.reload();
        r.enforcer_mut().fail = true;
        assert!(matches!(r.reload(), ReloadOutcome::Failed { error } if error == "kernel said no"));
        assert_eq!(r.state().current.as_ref().map(|g| g.number), Some(1));
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_refused_apply_of_any_trigger_is_counted_with_the_generation_that_stayed() {
        let d = dir("apply-failures");
        fs::write(d.join("w.yaml"), WORKLOAD).expect("write");
        let mut r = Reloader::new(vec![d.clone()], Recorder::default(), false);
        r.reload();
        r.enforcer_mut().fail = true;
        assert!(r.reenforce(Some(ResolvedHosts::default())).is_err());
        let failure = r.state().last_apply_failure.clone().expect("recorded");
        assert_eq!(
            (failure.trigger, failure.generation, failure.error.as_str()),
            (ApplyTrigger::AllowedHosts, Some(1), "kernel said no")
        );
        assert!(r.reenforce(None).is_err());
        assert!(!r.reload().is_applied());
        let state = r.state();
        assert_eq!(state.apply_failures, 3);
        assert_eq!(
            state.failed_reloads, 1,
            "only the reload is a failed reload"
        );
        assert_eq!(
            state.last_apply_failure.as_ref().map(|f| f.trigger),
            Some(ApplyTrigger::Reload)
        );
        assert_eq!(state.current.as_ref().map(|g| g.number), Some(1));
        r.enforcer_mut().fail = false;
        assert!(matches!(
            r.reload(),
            ReloadOutcome::Applied { generation: 2 }
        ));
        assert_eq!(r.state().apply_failures, 3, "a success resets nothing");
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn nothing_is_enforced_before_a_first_valid_policy() {
        let d = dir("first");
        fs::write(d.join("bad.yaml"), "kind: [").expect("write");
        let mut r = Reloader::new(vec![d.clone()], Recorder::default(), false);
        assert!(!r.reload().is_applied());
        assert!(r.state().current.is_none());
        assert!(!r.reenforce(None).expect("no plan, no error"));
        fs::remove_dir_all(&d).ok();
    }
}
