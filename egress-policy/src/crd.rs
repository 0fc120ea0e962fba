//! The CustomResourceDefinitions of `EgressGateway` and `Redirect`, and
//! the status each node's agent reports on them.
//!
//! The CRDs are derived (kube's `CustomResource`, schemars) from the spec
//! types the loader parses ([`crate::objects`]), so the schema the API
//! server enforces is the parse the agent does. A schema cannot say
//! everything the agent checks (a CIDR's syntax, a DNS name, a selector
//! that matches nothing): the API server refuses what the schema can say,
//! and the agent still validates the rest, quarantining the object alone.
//!
//! Both kinds have a status subresource; what goes in it is
//! [`crate::status`].

use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use crate::objects::{
    AllowedHostsSpec, EgressGatewayResource, PortList, RedirectResource, StringOrList,
};

/// The two CRDs, as the API server takes them.
pub fn crds() -> [CustomResourceDefinition; 2] {
    [EgressGatewayResource::crd(), RedirectResource::crd()]
}

// The untagged enums below accept a string or a list. A structural schema
// gives every node one type, and forbids types inside `anyOf`, so these
// keep the value as written (`x-kubernetes-preserve-unknown-fields`); the
// agent's parse checks it, and quarantines an object that fails it.

impl JsonSchema for StringOrList {
    fn schema_name() -> Cow<'static, str> {
        "StringOrList".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A list of CIDRs, or one comma-separated string of them (Istio's form; \"*\" is every address).",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

impl JsonSchema for PortList {
    fn schema_name() -> Cow<'static, str> {
        "PortList".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A list of ports, or one comma-separated string of them (Istio's form; \"*\" is every port).",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

impl JsonSchema for AllowedHostsSpec {
    fn schema_name() -> Cow<'static, str> {
        "AllowedHostsSpec".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// A list of hosts or the word `fromServiceEntries`, so the list's
    /// items get no schema either: `items` (or `properties`) on a node
    /// without a type makes the API server's server-side apply take the
    /// node for a list (an object), and refuse every later write of an
    /// object holding the other shape there, status writes included
    /// (found by `cargo xtask apiserver-diff`: `expected map, got 80`).
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The external hosts the gateway may reach: a list of {host, ports} (ports as numbers or {port, protocol, name}, as in an Istio ServiceEntry), or \"fromServiceEntries\" for the hosts of the Istio ServiceEntries visible to the gateway's namespace. Absent: any host.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Every node of a structural schema has a type, or is one of the two
    /// extensions that stand for one; `anyOf`/`oneOf`/`allOf`/`not` carry
    /// no type. Returns the paths that break it.
    fn unstructural(schema: &Value, path: &str, found: &mut Vec<String>) {
        let Some(obj) = schema.as_object() else {
            return;
        };
        let typed = obj.get("type").is_some_and(|t| t.as_str().is_some())
            || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
            || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if !typed {
            found.push(format!("{path}: no type"));
        }
        for junctor in ["anyOf", "oneOf", "allOf", "not"] {
            let subs = match obj.get(junctor) {
                Some(Value::Array(list)) => list.iter().collect(),
                Some(one) => vec![one],
                None => vec![],
            };
            if subs.iter().any(|s| s.get("type").is_some()) {
                found.push(format!("{path}.{junctor}: a type inside a junctor"));
            }
        }
        for (key, value) in obj
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            unstructural(value, &format!("{path}.{key}"), found);
        }
        if let Some(items) = obj.get("items") {
            unstructural(items, &format!("{path}[]"), found);
        }
        if let Some(extra) = obj.get("additionalProperties").filter(|a| a.is_object()) {
            unstructural(extra, &format!("{path}{{}}"), found);
        }
    }

    fn schema_of(crd: &CustomResourceDefinition) -> Value {
        let version = &crd.spec.versions[0];
        serde_json::to_value(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("a schema"),
        )
        .expect("JSON")
    }

    #[test]
    fn every_schema_is_structural() {
        for crd in crds() {
            let mut found = Vec::new();
            unstructural(&schema_of(&crd), &crd.spec.names.kind, &mut found);
            assert!(found.is_empty(), "{found:#?}");
        }
    }

    #[test]
    fn the_schema_says_what_it_can_of_the_agents_checks() {
        let [gateway, redirect] = crds().map(|c| schema_of(&c));
        let spec = &redirect["properties"]["spec"]["properties"];
        assert_eq!(
            spec["capture"]["enum"],
            serde_json::json!(["Sidecar", "All"])
        );
        for port in [
            &spec["proxy"]["properties"]["port"],
            &spec["captureDNS"]["properties"]["port"],
        ] {
            assert_eq!(
                (port["minimum"].as_f64(), port["maximum"].as_f64()),
                (Some(1.0), Some(65535.0))
            );
        }
        assert_eq!(
            spec["includeIPRanges"]["x-kubernetes-preserve-unknown-fields"],
            Value::Bool(true)
        );
        let spec = &gateway["properties"]["spec"];
        assert_eq!(
            spec["required"],
            serde_json::json!(["clusterCIDRs", "selector"])
        );
        assert_eq!(
            spec["properties"]["clusterCIDRs"]["minItems"].as_u64(),
            Some(1)
        );
        let status = &gateway["properties"]["status"]["properties"]["nodes"];
        assert_eq!(status["x-kubernetes-list-type"], "map");
        assert_eq!(
            status["x-kubernetes-list-map-keys"],
            serde_json::json!(["node"])
        );
    }

    #[test]
    fn both_kinds_have_a_status_subresource_and_a_programmed_column() {
        for crd in crds() {
            let version = &crd.spec.versions[0];
            assert!(version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()));
            let columns = version
                .additional_printer_columns
                .as_deref()
                .unwrap_or_default();
            assert!(
                columns.iter().any(|c| c.json_path == ".status.programmed"),
                "{columns:?}"
            );
            assert_eq!(crd.spec.group, "egress.enforcer.dev");
            assert_eq!(crd.spec.scope, "Namespaced");
        }
    }
}
