//! The agent socket's protocol: the client writes one JSON request line;
//! the agent answers with JSON lines and closes (or, for `follow`, keeps
//! writing events until the client goes).

use serde::{Deserialize, Serialize};

use super::Filter;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "request")]
pub enum Request {
    /// The buffered events (one `VerdictEvent` per line), then, with
    /// `follow`, live ones.
    Events {
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        filter: Filter,
    },
    /// One `Status` line.
    Status,
}

/// Sent instead of an answer when the request cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}
