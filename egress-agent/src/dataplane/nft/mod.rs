//! The node-level nftables backstop: forwarded traffic from non-gateway
//! workloads to destinations outside the cluster is dropped.
//!
//! The cgroup eBPF programs enforce per workload, but only for sockets in
//! the cgroups they are attached to. Traffic that a pod sends through the
//! node (the `forward` hook) is caught here too, whatever cgroup it came
//! from: only egress gateways may leave the cluster.
//!
//! The agent owns exactly one table, `inet` [`TABLE`], and never touches
//! any other: kube-proxy's, Docker's or an administrator's tables keep
//! their own behaviour. [`ruleset`] builds it as a pure function of
//! [`NodeRules`]; [`Backstop`] applies it in one nft transaction.
//!
//! ```no_run
//! use egress_agent::{compile::NodeRules, dataplane::nft::{Backstop, DenyCounter}};
//!
//! let rules = NodeRules {
//!     cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
//!     gateway_addresses: vec!["10.244.1.2".parse().unwrap()],
//!     workload_addresses: vec!["10.244.2.2".parse().unwrap()],
//! };
//! let backstop = Backstop::new();
//! backstop.apply(&rules)?;
//! let dropped = backstop.counters()?.get(DenyCounter::ForwardV4).packets;
//! backstop.uninstall()?;
//! # Ok::<(), egress_agent::dataplane::nft::NftError>(())
//! ```

mod backstop;
mod counters;
mod error;
mod exec;
mod ruleset;

pub use backstop::Backstop;
pub use counters::{BackstopCounts, CounterValue, DenyCounter};
pub use error::{NftError, Operation};
pub use ruleset::{ruleset, uninstall_batch, LOG_PREFIX};

/// The only table the agent creates, replaces and deletes. Defined here,
/// not in `ruleset`, so that `counters` (which `ruleset` uses) need not
/// depend on `ruleset` in turn.
pub const TABLE: &str = "egress_enforcer";

#[cfg(doc)]
use crate::compile::NodeRules;
