//! The status each node's agent reports on an EgressGateway or a Redirect.
//!
//! Every agent judges every object, so each writes the outcome on its own
//! node into one entry of `status.nodes`, a list-map keyed by `node`
//! (`x-kubernetes-list-type: map`), by server-side apply with the field
//! manager `egress-agent/<node>`: the API server merges the entries, and an
//! agent never overwrites another's. `status.programmed` (`"2/2"`) and
//! `status.nodeCount` summarise the entries for `kubectl get`; one agent
//! per object writes them (see the agent's `kubernetes::status`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The condition every node reports.
pub const PROGRAMMED: &str = "Programmed";

/// Why a node's `Programmed` condition is what it is.
pub mod reasons {
    /// True: this generation of the object is in force on the node.
    pub const APPLIED: &str = "Applied";
    /// False: the object is invalid and nothing of it is in force (it has
    /// no earlier valid version on this node).
    pub const INVALID: &str = "Invalid";
    /// False: this generation is invalid; its last valid version stays in
    /// force on the node.
    pub const QUARANTINED: &str = "Quarantined";
    /// False: the node's policy set as a whole was not applied (an error
    /// in the operator's files, or the kernel refused it); what was in
    /// force before stays.
    pub const NOT_APPLIED: &str = "NotApplied";
}

/// Each node's verdict on the object, and a summary of them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// One entry per node, written by that node's agent alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["node"]
    ))]
    pub nodes: Vec<NodeStatus>,
    /// `<programmed>/<reporting>`: the nodes whose entry says Programmed
    /// for the object's current generation, of the nodes with an entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programmed: Option<String>,
    /// The nodes with an entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i32>,
}

/// One node's verdict on the object.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node's name: the key of the entry.
    pub node: String,
    /// The object's `metadata.generation` the conditions are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Programmed`: True when this generation is in force on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

impl NodeStatus {
    /// The `Programmed` condition, if any.
    pub fn programmed(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == PROGRAMMED)
    }
}

impl PolicyStatus {
    /// `(programmed, reporting)` among the entries of `nodes` that `keep`
    /// keeps: programmed means `Programmed=True` for `generation`.
    pub fn count(&self, generation: Option<i64>, keep: impl Fn(&str) -> bool) -> (usize, usize) {
        let kept: Vec<&NodeStatus> = self.nodes.iter().filter(|n| keep(&n.node)).collect();
        let programmed = kept
            .iter()
            .filter(|n| {
                n.observed_generation == generation
                    && n.programmed().is_some_and(|c| c.status == "True")
            })
            .count();
        (programmed, kept.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_generations_programmed_entries_count() {
        let entry = |node: &str, generation, status: &str| NodeStatus {
            node: node.into(),
            observed_generation: Some(generation),
            conditions: vec![Condition {
                type_: PROGRAMMED.into(),
                status: status.into(),
                reason: reasons::APPLIED.into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Default::default(),
                ),
                observed_generation: Some(generation),
            }],
        };
        let status = PolicyStatus {
            nodes: vec![
                entry("a", 2, "True"),
                entry("b", 1, "True"),
                entry("c", 2, "False"),
            ],
            ..PolicyStatus::default()
        };
        assert_eq!(status.count(Some(2), |_| true), (1, 3));
        assert_eq!(status.count(Some(2), |n| n != "c"), (1, 2));
    }
}
