//! Errors of the DNS resolver, each naming the name and servers involved.
//!
//! hickory's errors are boxed: they are large, and these travel in every
//! `Result` of the resolver.

use hickory_resolver::{net::NetError, proto::ProtoError};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("invalid resolver settings: {reason}")]
    Settings { reason: String },
    #[error("reading the system DNS configuration (/etc/resolv.conf)")]
    SystemConfig {
        #[source]
        source: Box<NetError>,
    },
    #[error("/etc/resolv.conf lists no nameserver")]
    NoSystemServers,
    #[error("building the DNS client for {servers}")]
    Build {
        servers: String,
        #[source]
        source: Box<NetError>,
    },
    /// The resolver runs on the caller's Tokio runtime.
    #[error("the DNS resolver must be started from within a Tokio runtime")]
    NoRuntime,
    #[error("allowed host {name:?} is not a valid DNS name")]
    InvalidName {
        name: String,
        #[source]
        source: ProtoError,
    },
    /// Timeout, SERVFAIL, REFUSED, unreachable server: no usable answer.
    /// NXDOMAIN and "no such record" are answers, not this error.
    #[error("looking up {record} records of {name} via {servers}")]
    Lookup {
        name: String,
        record: &'static str,
        servers: String,
        #[source]
        source: Box<NetError>,
    },
    /// The lookup task died (panicked or was cancelled) before answering.
    #[error("looking up {record} records of {name} via {servers}: the lookup task ended early")]
    LookupAborted {
        name: String,
        record: &'static str,
        servers: String,
    },
    #[error("the DNS resolver task has stopped")]
    Stopped,
}
