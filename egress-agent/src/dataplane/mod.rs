//! Programs the kernel: eBPF programs and maps.
//!
//! [`Dataplane`] owns one loaded copy of the eBPF object (built by
//! `build.rs`, embedded by [`object`]). It attaches the programs to cgroup v2
//! directories ([`Hook`]) and keeps the deny tries that the programs consult.
//! Dropping it detaches everything and frees the maps: nothing is pinned yet.
//!
//! ```no_run
//! use egress_agent::dataplane::{Dataplane, DenyRule};
//!
//! let mut dataplane = Dataplane::load()?;
//! dataplane.attach_all("/sys/fs/cgroup/unified/workload".as_ref())?;
//! dataplane.deny("203.0.113.0/24".parse().unwrap(), DenyRule::new(7))?;
//! # Ok::<(), egress_agent::dataplane::DataplaneError>(())
//! ```

mod attach;
mod counters;
mod deny;
mod error;
mod load;
pub mod nft;
pub mod object;

pub use attach::Hook;
pub use counters::VerdictCounts;
pub use egress_common::{Counter, DenyRule};
pub use error::DataplaneError;
pub use load::Dataplane;
