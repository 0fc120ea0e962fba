//! What the running agent shows operators: verdict events from the
//! programs, `status`, and Prometheus metrics.
//!
//! The programs write deny, audit, redirect (and sampled allow) events to a
//! ring buffer; [`reader`] turns them into [`VerdictEvent`]s with names
//! ([`names`]) and keeps the last ones in an [`EventHub`]. A Unix socket
//! ([`server`], protocol in [`protocol`]) serves `events` and `status`;
//! [`http`] serves `/metrics` ([`metrics`]), `/healthz` and `/readyz`.
//! Status and metrics are built in the agent's event loop, which owns the
//! kernel state, from a [`Query`] sent over a channel. With `--ebpf-log`,
//! the programs' aya-log records join the agent's log ([`ebpf_log`]).

pub mod ebpf_log;
pub mod event;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod names;
pub mod protocol;
pub mod reader;
pub mod server;
pub mod status;
pub mod wallclock;

pub use event::{Filter, Verdict, VerdictEvent};
pub use hub::EventHub;
pub use names::Names;
pub use status::{KernelView, Status};

use tokio::sync::oneshot;

/// What the socket and HTTP servers ask the event loop for.
#[derive(Debug)]
pub enum Query {
    Status(oneshot::Sender<Status>),
    /// Prometheus text exposition.
    Metrics(oneshot::Sender<String>),
}

/// Where `run` creates the socket by default.
pub const DEFAULT_SOCKET: &str = "/run/egress-agent/agent.sock";

/// Events kept for `events` without `--follow`.
pub const RECENT_EVENTS: usize = 1024;
