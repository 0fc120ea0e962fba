//! The long-running agent: keeps the policy in `--policies` enforced.
//!
//! [`reload::Reloader`] owns the policy lifecycle (load → compile → enforce,
//! keeping the last good generation when a reload is rejected), and
//! [`run`] drives it from its triggers: file changes, SIGHUP, DNS changes
//! and a periodic reconcile. The kernel side sits behind the
//! [`reload::Enforcer`] trait so the lifecycle is unit-tested without root.

pub mod kernel;
pub mod lock;
pub mod pending;
pub mod preflight;
pub mod quarantine;
pub mod reload;
pub mod run;
pub mod state;

pub use reload::{Enforcer, Reloader};
pub use state::{AgentState, Generation, ReloadOutcome};
