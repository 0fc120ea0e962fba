//! The Kubernetes watch path, from an API object's JSON to the compiled
//! plan: each object is deserialized as the type its watch reads, reduced
//! by the agent's conversion (`kubernetes::pod` and `kubernetes::objects`),
//! and the documents go through `agent::quarantine::load` (validation,
//! quarantine of the objects in error, compilation) and the guards, as
//! `agent::reload` does. Any panic is a bug: a bad object from the API
//! server must be quarantined or left out, never crash the agent.
//!
//! The input is a stream of JSON values (several objects reach the
//! cross-object checks: selectors, Services and their slices); each goes
//! to the conversion of its `kind`, as the API server only sends a watch
//! objects of its kind. Seeds: fuzz/seeds/k8s_objects/.
//!
//! Properties: every document the objects conversion writes is named
//! `kubernetes/...` and is not empty (rendering "cannot fail"), and every
//! quarantined source names its object.

#![no_main]

use std::{collections::HashMap, path::Path};

use egress_agent::{
    agent::quarantine,
    compile::Guards,
    kubernetes::{
        cgroups::CgroupIndex,
        events, objects,
        pod::{self, PodState},
    },
};
use egress_policy::{ParseCache, Source};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::DynamicObject;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

/// This agent's node: pods on it are local, the others are peers.
const NODE: &str = "node-a";
const SIDECAR: &str = "istio-proxy";
/// More objects only slow the run; the cross-object checks need a few.
const MAX_OBJECTS: usize = 32;

fuzz_target!(|data: &[u8]| {
    let mut pods = Vec::new();
    let mut sources = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(data).into_iter::<serde_json::Value>();
    let mut start = 0;
    for _ in 0..MAX_OBJECTS {
        let Some(Ok(value)) = stream.next() else {
            break;
        };
        let end = stream.byte_offset();
        // The typed object is read from the bytes, as the watcher reads
        // it, not from the `Value`.
        let bytes = &data[start..end];
        start = end;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "Pod" => {
                if let Some(p) = typed::<Pod>(bytes) {
                    pods.extend(pod::slim(&p, NODE, SIDECAR));
                }
            }
            "Namespace" => {
                sources.extend(typed::<Namespace>(bytes).map(|o| objects::namespace(&o)))
            }
            "NetworkPolicy" => {
                sources.extend(typed::<NetworkPolicy>(bytes).map(|o| objects::network_policy(&o)))
            }
            "Node" => sources.extend(typed::<Node>(bytes).map(|o| objects::node(&o))),
            "Service" => sources.extend(typed::<Service>(bytes).map(|o| objects::service(&o))),
            "EndpointSlice" => {
                if let Some(o) = typed::<DynamicObject>(bytes) {
                    sources.extend(objects::dynamic_endpoint_slice(&o).ok());
                }
            }
            "Endpoints" => {
                if let Some(o) = typed::<Endpoints>(bytes) {
                    sources.extend(objects::endpoints(&o));
                }
            }
            _ => {}
        }
    }
    for s in &sources {
        assert!(
            s.file.starts_with("kubernetes"),
            "document named {}",
            s.file.display()
        );
        assert!(!s.text.is_empty(), "{} rendered empty", s.file.display());
    }

    // As `kubernetes::build`: local pods through `convert` (every uid has
    // a pod directory, so conversion gets past the cgroup walk; container
    // directories are looked up under a mount that does not exist), the
    // others through `peer`.
    let index = CgroupIndex {
        pods: pods
            .iter()
            .filter_map(|p| p.local.as_ref()?.uid.clone())
            .map(|uid| {
                let dir = format!("kubepods/pod{uid}");
                (uid, dir)
            })
            .collect(),
        roots: vec!["kubepods".into()],
    };
    let mount = Path::new("/nonexistent/egress-fuzz/cgroup");
    let mut guards = Guards {
        pending: vec!["kubepods".into()],
        exempt: Vec::new(),
    };
    let mut problems = Vec::new();
    for p in &pods {
        if p.local.is_some() {
            match pod::convert(p, &index, mount, SIDECAR, &mut problems) {
                PodState::Ready(docs) => sources.extend(docs),
                PodState::Exempt { id, cgroup } => guards.exempt.push((id, cgroup)),
                PodState::Waiting(_) => {}
            }
        } else {
            sources.extend(pod::peer(p, &mut problems));
        }
    }
    for p in &problems {
        let _ = p.to_string();
    }

    load(&sources, &guards);
});

/// The object, if the bytes are one of type `K`; a watcher skips (and
/// logs) an object it cannot deserialize.
fn typed<K: DeserializeOwned>(bytes: &[u8]) -> Option<K> {
    serde_json::from_slice(bytes).ok()
}

/// As `agent::reload`, without policy files: twice through one parse
/// cache, as a reloader does, and the second load (its parses cached) must
/// give the first one's answer.
fn load(sources: &[Source], guards: &Guards) {
    let mut parses = ParseCache::default();
    let first = quarantine::load(&[], sources, &HashMap::new(), &mut parses);
    let again = quarantine::load(&[], sources, &HashMap::new(), &mut parses);
    let answer = |outcome: &Result<quarantine::Outcome, egress_policy::Rejected>| match outcome {
        Ok(o) => format!("{:?} {:?} {:?}", o.loaded.model, o.loaded.warnings, o.quarantined),
        Err(r) => format!("{:?}", r.diagnostics),
    };
    assert_eq!(answer(&first), answer(&again), "a cached load changed the answer");
    match first {
        Ok(outcome) => {
            for q in &outcome.quarantined {
                assert!(
                    sources
                        .iter()
                        .any(|s| s.file.as_os_str() == q.source.as_str()),
                    "quarantined {} is not one of the sources",
                    q.source
                );
                let _ = events::resource_of(&q.source);
            }
            for warning in &outcome.loaded.warnings {
                let _ = warning.to_string();
            }
            let plan = outcome.plan.guarded(guards);
            let _ = serde_json::to_vec(&plan).expect("a plan always serializes");
        }
        Err(rejected) => {
            for diagnostic in &rejected.diagnostics {
                let _ = diagnostic.to_string();
            }
        }
    }
}
