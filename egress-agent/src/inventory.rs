//! What the Kubernetes watch adds to the policy files at every reload.
//!
//! It lives below both [`crate::agent`] (which applies it) and
//! [`crate::kubernetes`] (which builds it), so that neither depends on the
//! other.

use crate::{compile::Guards, policy::Source};

/// What is added to the policy files at every reload: objects from the
/// Kubernetes API (as YAML documents, so they go through the same
/// validation as files) and the agent's guard entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub sources: Vec<Source>,
    pub guards: Guards,
}
