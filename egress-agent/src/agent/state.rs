//! What the agent has in force, and what happened at the last reload.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    compile::{Egress, Plan},
    observe::{
        status::{ApplyingStatus, GenerationStatus, LastReload, WorkloadStatus},
        wallclock::rfc3339,
        EventHub, KernelView, Status,
    },
};
use egress_policy::Diagnostic;

/// One applied policy set. Generations count up from 1 for the life of the
/// agent process.
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub number: u64,
    #[serde(skip)]
    pub plan: Arc<Plan>,
    #[serde(with = "unix_seconds")]
    pub loaded_at: SystemTime,
    pub warnings: Vec<Diagnostic>,
}

/// The result of one reload attempt.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum ReloadOutcome {
    /// The new policy set is in force.
    Applied { generation: u64 },
    /// The policy set was invalid; the previous generation stays in force.
    Rejected { diagnostics: Vec<Diagnostic> },
    /// Valid, but the kernel could not be programmed; the previous
    /// generation stays in force.
    Failed { error: String },
}

impl ReloadOutcome {
    pub fn is_applied(&self) -> bool {
        matches!(self, Self::Applied { .. })
    }
}

/// What asked the kernel to be programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ApplyTrigger {
    /// A reload of the policy set (files, SIGHUP, the API server).
    Reload,
    /// New `allowedHosts` addresses for the plan in force.
    AllowedHosts,
    /// A workload's cgroup appeared.
    Reconcile,
}

impl std::fmt::Display for ApplyTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reload => "reload",
            Self::AllowedHosts => "allowedHosts refresh",
            Self::Reconcile => "reconcile",
        })
    }
}

/// An apply under way on the apply worker (see `agent::worker`): `status`
/// says so beside the generation in force, which stays in force unless it
/// succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applying {
    pub trigger: ApplyTrigger,
    pub since: SystemTime,
}

/// An apply the kernel refused. The enforcer is atomic, so the generation
/// in force before it stayed in force, in the eBPF maps and the nftables
/// backstop alike.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyFailure {
    pub trigger: ApplyTrigger,
    pub error: String,
    #[serde(with = "unix_seconds")]
    pub at: SystemTime,
    /// The generation that stayed in force (`None`: none applied by this
    /// agent).
    pub generation: Option<u64>,
}

/// The agent's state, as `status` will show it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    pub current: Option<Generation>,
    pub last_reload: Option<ReloadOutcome>,
    pub reloads: u64,
    pub failed_reloads: u64,
    pub audit: bool,
    /// When the last reload attempt ended, and how long it took.
    #[serde(skip)]
    pub last_reload_at: Option<SystemTime>,
    #[serde(skip)]
    pub last_reload_duration: Duration,
    /// Time spent in reload attempts, in all.
    pub reload_seconds_total: f64,
    /// API objects of the generation in force that were quarantined.
    pub quarantined: Vec<super::quarantine::Quarantined>,
    /// Pods below a guarded root with no policy of their own in force, as
    /// of the last look (see `agent::pending`).
    pub pending_pods: Vec<crate::observe::status::PendingPod>,
    /// Applies the kernel refused, whatever triggered them (a failed
    /// reload counts here and in `failed_reloads`), and the last one.
    pub apply_failures: u64,
    pub last_apply_failure: Option<ApplyFailure>,
}

// `status` is built here rather than in `observe`, so that `observe` (the
// report types) stays below the agent whose state it reports.
impl Status {
    pub fn build(
        state: &AgentState,
        applying: Option<&Applying>,
        kernel: &KernelView,
        hub: &EventHub,
        allowed_hosts_refreshes: u64,
    ) -> Self {
        let ids: std::collections::BTreeMap<String, u64> = kernel
            .names
            .workload_ids()
            .map(|(id, w)| (w.to_string(), id))
            .collect();
        let workloads = state
            .current
            .as_ref()
            .map(|g| {
                g.plan
                    .workloads
                    .iter()
                    .map(|w| {
                        let (egress, policies) = match &w.egress {
                            Egress::Unrestricted => ("unrestricted", vec![]),
                            Egress::Isolated { policies, .. } => (
                                "isolated",
                                policies.iter().map(ToString::to_string).collect(),
                            ),
                        };
                        let role = if w.gateway.is_some() {
                            "gateway"
                        } else if !w.proxy_for.is_empty() {
                            "proxy"
                        } else {
                            "workload"
                        };
                        WorkloadStatus {
                            workload: w.id.to_string(),
                            cgroup: w.cgroup.clone(),
                            cgroup_id: ids.get(&w.id.to_string()).copied(),
                            role: role.into(),
                            egress: egress.into(),
                            policies,
                            redirect: w.capture.as_ref().map(|c| c.redirect.to_string()),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let last_reload = state.last_reload.as_ref().map(|outcome| {
            let (result, generation, errors) = match outcome {
                ReloadOutcome::Applied { generation } => ("applied", Some(*generation), vec![]),
                ReloadOutcome::Rejected { diagnostics } => (
                    "rejected",
                    None,
                    diagnostics
                        .iter()
                        .filter(|d| d.severity == egress_policy::Severity::Error)
                        .map(ToString::to_string)
                        .collect(),
                ),
                ReloadOutcome::Failed { error } => ("failed", None, vec![error.clone()]),
            };
            LastReload {
                result: result.into(),
                generation,
                errors,
                at: state.last_reload_at.map(rfc3339).unwrap_or_default(),
                duration_ms: state.last_reload_duration.as_millis() as u64,
            }
        });
        Self {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            audit: state.audit,
            pin_dir: kernel.pin_dir.clone(),
            cgroup_root: kernel.cgroup_root.clone(),
            programs: kernel.programs.clone(),
            ready: state.current.is_some(),
            generation: state.current.as_ref().map(|g| GenerationStatus {
                number: g.number,
                loaded_at: rfc3339(g.loaded_at),
            }),
            applying: applying.map(|a| ApplyingStatus {
                trigger: a.trigger.to_string(),
                since: rfc3339(a.since),
            }),
            last_reload,
            reloads: state.reloads,
            failed_reloads: state.failed_reloads,
            allowed_hosts_refreshes,
            workloads,
            maps: kernel.maps.clone(),
            nft: kernel.nft.clone(),
            kernel_events: kernel.events,
            gateway_dns: kernel.gateway_dns,
            agent_events: hub.stats(),
            redirect_events: hub.redirects(),
            reload_seconds_total: state.reload_seconds_total,
            quarantined: state.quarantined.clone(),
            pending_pods: state.pending_pods.clone(),
            apply_failures: state.apply_failures,
            last_apply_failure: state.last_apply_failure.as_ref().map(|f| {
                crate::observe::status::ApplyFailureStatus {
                    trigger: f.trigger.to_string(),
                    error: f.error.clone(),
                    at: rfc3339(f.at),
                    generation: f.generation,
                }
            }),
        }
    }
}

mod unix_seconds {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        s.serialize_f64(secs)
    }
}
