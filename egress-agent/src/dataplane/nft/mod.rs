//! The node-level nftables backstop: traffic from non-gateway workloads
//! to destinations outside the cluster is dropped at node level, and so is
//! traffic whose source its workload's interface does not vouch for.
//!
//! The cgroup eBPF programs enforce per workload, but only for sockets in
//! the cgroups they are attached to. Traffic that a pod sends through the
//! node is caught here too, whatever cgroup, socket or device in the pod
//! made it: only egress gateways may leave the cluster, and only with their
//! own address from their own interface (see [`ruleset()`](fn@ruleset)).
//!
//! The agent owns exactly two tables, `inet` and `bridge` [`TABLE`], and
//! never touches any other: kube-proxy's, Docker's or an administrator's
//! tables keep their own behaviour. [`ruleset`] builds them as a pure
//! function of [`NodeRules`]; [`Backstop`] applies both in one nft
//! transaction.
//!
//! ```no_run
//! use egress_agent::{compile::{NodeRules, WorkloadPort}, dataplane::nft::{Backstop, DenyCounter}};
//!
//! let rules = NodeRules {
//!     cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
//!     gateway_addresses: vec!["10.244.1.2".parse().unwrap()],
//!     workload_addresses: vec!["10.244.2.2".parse().unwrap()],
//!     // The gateway's port: the node's end of its pod's veth.
//!     ports: vec![WorkloadPort {
//!         interface: "veth1".into(),
//!         addresses: vec!["10.244.1.2".parse().unwrap()],
//!     }],
//! };
//! let backstop = Backstop::new();
//! backstop.apply(&rules)?;
//! let forged = backstop.counters()?.get(DenyCounter::BridgedForgedV4).packets;
//! backstop.uninstall()?;
//! # Ok::<(), egress_agent::dataplane::nft::NftError>(())
//! ```

mod backstop;
mod counters;
mod error;
mod exec;
mod ruleset;

pub use backstop::{Backstop, DEFAULT_TIMEOUT};
pub use counters::{BackstopCounts, CounterValue, DenyCounter};
pub use error::{NftError, Operation};
pub use ruleset::{ruleset, uninstall_batch, FAMILIES, LOG_PREFIX};

/// The name of the only tables (one `inet`, one `bridge`) the agent
/// creates, replaces and deletes. Defined here,
/// not in `ruleset`, so that `counters` (which `ruleset` uses) need not
/// depend on `ruleset` in turn.
pub const TABLE: &str = "egress_enforcer";

#[cfg(doc)]
use crate::compile::NodeRules;
