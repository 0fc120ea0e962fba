//! The CRDs as the manifest `deploy/base/crds.yaml` holds them.
//!
//! `egress-agent crds` prints [`manifest`]; a unit test fails when the
//! committed file differs from it, so the schema the API server enforces
//! is always the one the agent's types generate.

use egress_policy::crd;

/// What heads the manifest.
const HEADER: &str = "\
# The CustomResourceDefinitions of EgressGateway and Redirect
# (egress.enforcer.dev/v1alpha1), generated from the agent's types:
#   egress-agent crds > deploy/base/crds.yaml
# Do not edit: a unit test fails when this file differs from what the
# types generate. See docs/kubernetes.md (Custom resources).
";

/// Both CRDs as one YAML stream, with [`HEADER`].
pub fn manifest() -> String {
    let mut out = String::from(HEADER);
    for (i, definition) in crd::crds().iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        // A CRD is plain data (strings, maps, lists): it always serializes.
        out.push_str(&serde_yaml::to_string(definition).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drift check: regenerate with `egress-agent crds >
    /// deploy/base/crds.yaml` (or `cargo run -p egress-agent -- crds`).
    #[test]
    fn the_committed_crds_are_what_the_types_generate() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/crds.yaml");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == manifest(),
            "{} is out of date with the types in egress-policy: run \
             `cargo run -p egress-agent -- crds > deploy/base/crds.yaml`",
            path.display()
        );
    }

    #[test]
    fn the_manifest_holds_both_definitions() {
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&manifest())
            .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
            .collect();
        let names: Vec<&str> = docs
            .iter()
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "egressgateways.egress.enforcer.dev",
                "redirects.egress.enforcer.dev"
            ]
        );
    }
}
