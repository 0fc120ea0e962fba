//! The egress enforcer agent, as a library.
//!
//! Data flows through the modules in the order the folder tree shows:
//! the `egress_policy` crate (YAML → validated model) → [`compile`] (model
//! → per-workload plan) → [`dataplane`] (plan → kernel). Everything up to
//! the dataplane is a pure function of its input, so it is unit-tested
//! without root.
//!
//! Each module depends only on those below it: `sys` and `errors` at the
//! bottom; then `compile`, `resolve`; `dataplane`; `observe`
//! (what operators see); `inventory` (what the agent enforces besides
//! files) and `kubernetes`, which builds it; and [`agent`], the daemon, on
//! top.
//! `tests/module_cycles.rs` fails on a cycle, here or between submodules.

pub mod agent;
pub mod compile;
pub mod dataplane;
pub mod errors;
pub mod inventory;
pub mod kubernetes;
pub mod observe;
pub mod resolve;
pub mod sys;
