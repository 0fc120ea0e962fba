//! The long-running agent: keeps the policy in `--policies` enforced.
//!
//! [`reload::Reloader`] owns the policy lifecycle (load → compile → enforce,
//! keeping the last good generation when a reload is rejected).
//! [`worker`] runs it on a thread of its own, one apply at a time, with the
//! requests that came meanwhile merged in its [`mailbox`]; [`run`] is the
//! event loop that posts them from the triggers (file changes, SIGHUP,
//! inventories, DNS changes) and answers `status` and `/metrics` all
//! along. The kernel side sits behind the [`reload::Enforcer`] trait so the
//! lifecycle is unit-tested without root.

pub mod kernel;
pub mod lock;
pub mod mailbox;
pub mod pending;
pub mod preflight;
pub mod quarantine;
pub mod reload;
pub mod run;
pub mod state;
pub mod worker;

pub use reload::{Enforcer, Reloader};
pub use state::{AgentState, Generation, ReloadOutcome};
