//! The egress enforcer agent, as a library.
//!
//! Data flows through the modules in the order the folder tree shows:
//! [`policy`] (YAML → validated model) → [`compile`] (model → per-workload
//! plan) → [`dataplane`] (plan → kernel). Everything up to the dataplane is a
//! pure function of its input, so it is unit-tested without root.

pub mod agent;
pub mod compile;
pub mod dataplane;
pub mod errors;
pub mod inventory;
pub mod kubernetes;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod resolve;
pub mod sys;
