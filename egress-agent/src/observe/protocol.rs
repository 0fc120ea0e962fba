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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Verdict;

    #[test]
    fn requests_are_one_json_object_each() {
        let r = Request::Events {
            follow: true,
            filter: Filter {
                workload: Some("test-egress/sleep".into()),
                verdict: Some(Verdict::Deny),
            },
        };
        let line = serde_json::to_string(&r).expect("serialize");
        assert_eq!(
            line,
            r#"{"request":"events","follow":true,"filter":{"workload":"test-egress/sleep","verdict":"deny"}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).expect("parse"), r);
        let bare: Request = serde_json::from_str(r#"{"request":"events"}"#).expect("defaults");
        assert_eq!(
            bare,
            Request::Events {
                follow: false,
                filter: Filter::default()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"request":"reboot"}"#).is_err());
    }
}
