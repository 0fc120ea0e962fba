//! What the Kubernetes watch adds to the policy files at every reload.
//!
//! It lives below both [`crate::agent`] (which applies it) and
//! [`crate::kubernetes`] (which builds it), so that neither depends on the
//! other.

use std::collections::BTreeMap;

use crate::compile::Guards;
use egress_policy::{model::ObjectId, Source};

/// What is added to the policy files at every reload: objects from the
/// Kubernetes API (as YAML documents, so they go through the same
/// validation as files) and the agent's guard entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub sources: Vec<Source>,
    pub guards: Guards,
    /// Pods of this node whose `pod<uid>` cgroup exists but that cannot be
    /// enforced yet, by UID: what `status` says of a pending pod. Empty in
    /// file mode.
    pub waiting: BTreeMap<String, Waiting>,
    /// The `metadata.generation` of each custom resource (EgressGateway,
    /// Redirect) among `sources`, by document name: what the status a
    /// node writes on it is about. Empty in file mode.
    pub custom: BTreeMap<String, i64>,
}

/// A pod of this node that is not enforced yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub pod: ObjectId,
    /// For example "sidecar container not started yet".
    pub why: &'static str,
}
