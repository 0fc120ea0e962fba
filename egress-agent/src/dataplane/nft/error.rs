//! Errors from driving `nft`.

use std::{ffi::OsString, fmt, io, process::ExitStatus, time::Duration};

use super::counters::ParseError;

/// What the backstop was doing when `nft` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Uninstall,
    ReadCounters,
    /// `nft --version`, to check before the start that nft runs.
    Version,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Apply => "applying the nftables backstop",
            Operation::Uninstall => "uninstalling the nftables backstop",
            Operation::ReadCounters => "reading the nftables backstop's counters",
            Operation::Version => "asking nft for its version",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The program could not be started or talked to (not installed?).
    #[error("{operation}: running {program:?}")]
    Run {
        operation: Operation,
        program: OsString,
        #[source]
        source: io::Error,
    },
    /// nft ran and refused; its stderr says why (a kernel without
    /// nf_tables, a syntax the installed nft does not know, …).
    #[error("{operation}: {program:?} exited with {status}: {stderr}")]
    Failed {
        operation: Operation,
        program: OsString,
        status: ExitStatus,
        stderr: String,
    },
    /// nft did not exit within the timeout (see
    /// [`Backstop::with_timeout`](super::Backstop::with_timeout)); it was
    /// killed, with every process of its group.
    #[error("{operation}: `{command}` did not finish within {timeout:?}; it was killed")]
    TimedOut {
        operation: Operation,
        /// The program and its arguments.
        command: String,
        timeout: Duration,
    },
    #[error("{operation}: serializing the batch for nft")]
    Serialize {
        operation: Operation,
        #[source]
        source: serde_json::Error,
    },
    #[error("{operation}: unexpected output from {program:?}")]
    Output {
        operation: Operation,
        program: OsString,
        #[source]
        source: ParseError,
    },
}
