//! What the agent has in force, and what happened at the last reload.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{compile::Plan, policy::Diagnostic};

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
