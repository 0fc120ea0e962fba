//! Applying, reading and removing the backstop's table.

use std::{
    ffi::{OsStr, OsString},
    time::Duration,
};

use super::{counters, exec, ruleset, BackstopCounts, NftError, Operation, TABLE};
use crate::compile::NodeRules;

/// Drives `nft` for the backstop's table.
///
/// nft runs in the network namespace of the calling *thread* (a child
/// inherits it from the thread that spawns it), so another namespace is
/// programmed by calling from a thread that has `setns`'d into it.
///
/// Every run of nft is bounded by a timeout ([`DEFAULT_TIMEOUT`] unless
/// [`Backstop::with_timeout`]); one that does not finish in time is
/// killed, and the operation fails with [`NftError::TimedOut`].
///
/// Needs `CAP_NET_ADMIN`, and nft built with JSON support (`nft -j`;
/// Debian's is). Minimum kernel: 4.10, for named counters (nf_tables
/// stateful objects).
#[derive(Clone, Debug)]
pub struct Backstop {
    program: OsString,
    timeout: Duration,
}

/// How long one run of nft may take. The backstop's tables hold the node
/// rules only (cluster CIDRs, gateway and workload addresses, ports), not
/// the policies' prefixes, so a transaction takes milliseconds: one that
/// takes seconds more than that is stuck.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Backstop {
    fn default() -> Self {
        Self::new()
    }
}

impl Backstop {
    /// Uses `nft` from `PATH`.
    pub fn new() -> Self {
        Self::with_program("nft")
    }

    /// Uses another nft executable: a pinned path, or a wrapper in tests.
    pub fn with_program(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds each run of nft by `timeout` instead of [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What `nft --version` says: checks that nft runs at all.
    pub fn version(&self) -> Result<String, NftError> {
        exec::version(&self.program, self.timeout)
    }

    /// Makes the tables exactly what `rules` describe, in one transaction
    /// (see [`ruleset()`](fn@super::ruleset)). Idempotent; restarts the counters.
    pub fn apply(&self, rules: &NodeRules) -> Result<(), NftError> {
        exec::apply(
            &self.program,
            self.timeout,
            &ruleset::ruleset(rules),
            Operation::Apply,
        )
    }

    /// Deletes the tables and nothing else. Succeeds when they are already
    /// gone.
    pub fn uninstall(&self) -> Result<(), NftError> {
        exec::apply(
            &self.program,
            self.timeout,
            &ruleset::uninstall_batch(),
            Operation::Uninstall,
        )
    }

    /// The named counters' current values. Fails when a table is not
    /// installed.
    pub fn counters(&self) -> Result<BackstopCounts, NftError> {
        let operation = Operation::ReadCounters;
        let listings = ruleset::FAMILIES
            .into_iter()
            .map(|family| {
                exec::list(
                    &self.program,
                    self.timeout,
                    &[
                        "list",
                        "counters",
                        "table",
                        counters::family_name(family),
                        TABLE,
                    ],
                    operation,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        counters::parse(&listings).map_err(|source| NftError::Output {
            operation,
            program: self.program.clone(),
            source,
        })
    }
}
