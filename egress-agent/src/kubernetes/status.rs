//! Each node's verdict on every custom resource, in the object's status.
//!
//! After each reload the agent knows, for every EgressGateway and Redirect
//! it judged, whether that generation is in force on its node. It writes
//! that as its own entry of `status.nodes` (a list-map keyed by `node`):
//! `Programmed` True (reason `Applied`) or False (`Invalid`,
//! `Quarantined`, `NotApplied`), with the object's `observedGeneration`.
//!
//! **No agent overwrites another's entry.** Each writes by server-side
//! apply as the field manager `egress-agent/<node>`, sending only its own
//! entry: the API server merges the entries by key and records each as
//! owned by its node, so concurrent writers never race on a
//! read-modify-write, and none needs a lock or a retry on conflict.
//!
//! **The summary has one writer per object.** `status.programmed`
//! (`"2/2"`, for `kubectl get`) and `status.nodeCount` are computed from
//! the entries by the one node the object hashes to among the cluster's
//! Nodes ([`designated`], as for Events), and written as the field manager
//! [`SUMMARY_MANAGER`]. Every write changes the object, so every agent sees
//! the entries as they end up; the designated one writes the summary again
//! whenever it differs from what the entries say, and never when it does
//! not. It therefore converges on the final entries once they stop
//! changing, with no write loop: two nodes that briefly both think they
//! are designated (their Node lists differ) write the same value from the
//! same object, under the same manager. Writing it from every node would
//! be N writes per change; one keeps it at one.
//!
//! **Level-triggered.** What is written is compared with what the watch
//! last read of the object, not with what this agent last sent: an entry
//! someone removed, or an object recreated under the same name, is written
//! again. A `True` entry is not rewritten when only the agent's generation
//! moved on (every pod change anywhere makes a new one): its message names
//! the generation that first put this version of the object in force.
//!
//! Entries of nodes that left the cluster stay until the object goes;
//! the summary counts only the nodes that exist.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    api::{Patch, PatchParams},
    core::DynamicObject,
    Api, Client,
};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    custom::{Custom, Kind},
    events::{designated, truncate, Report, Verdict},
    CustomCaches,
};
use crate::{errors::format_chain, observe::status::Held};
use egress_policy::{
    objects::EXTENSION_API_VERSION,
    status::{reasons, NodeStatus, PolicyStatus, PROGRAMMED},
};

/// The field manager of the summary fields, whichever node writes them.
pub const SUMMARY_MANAGER: &str = "egress-agent/summary";
/// How often the caches are compared with the verdicts, besides after
/// each reload.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long an object whose status could not be written is left alone.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The longest message written (the Events' limit, for one style).
const MESSAGE_MAX: usize = 1024;

/// The field manager of `node`'s entries. The API server refuses a
/// manager name over 128 bytes.
pub fn manager(node: &str) -> String {
    let mut name = format!("egress-agent/{node}");
    if name.len() > 128 {
        let mut end = 128;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// `node`'s entry for the object named `source`, as the last reload
/// (`report`) judged it, or `None` when nothing is to be written: the
/// reload did not judge the object yet, or `actual` already says it.
pub fn desired(
    report: &Report,
    source: &str,
    actual: Option<&NodeStatus>,
    node: &str,
    now: Time,
) -> Option<NodeStatus> {
    let generation = *report.custom.get(source)?;
    let (status, reason, message) = match &report.outcome {
        Verdict::Pending => return None,
        Verdict::Applied { generation: agent } => {
            match report
                .rejections
                .iter()
                .find(|r| r.quarantined.source == source)
            {
                None => (
                    "True",
                    reasons::APPLIED,
                    format!("in force on node {node} since agent generation {agent}"),
                ),
                Some(r) => {
                    let q = &r.quarantined;
                    let findings: Vec<String> = if q.findings.is_empty() {
                        q.errors.clone()
                    } else {
                        q.findings.iter().map(ToString::to_string).collect()
                    };
                    let (reason, held) = match q.held {
                        Held::LastGood => (
                            reasons::QUARANTINED,
                            "its last valid version stays in force",
                        ),
                        Held::DenyAll | Held::LeftOut => {
                            (reasons::INVALID, "nothing of it is in force")
                        }
                    };
                    (
                        "False",
                        reason,
                        format!(
                            "not in force on node {node}: {}; {held}",
                            findings.join("; ")
                        ),
                    )
                }
            }
        }
        Verdict::NotApplied { in_force, why } => {
            // What is in force did not change: an entry that says this
            // generation is programmed still holds.
            if actual.is_some_and(|a| {
                a.observed_generation == Some(generation)
                    && a.programmed().is_some_and(|c| c.status == "True")
            }) {
                return None;
            }
            let stays = in_force.map_or_else(
                || "nothing is in force yet".to_owned(),
                |g| format!("agent generation {g} stays in force"),
            );
            (
                "False",
                reasons::NOT_APPLIED,
                format!("the policy set of node {node} was not applied ({why}); {stays}"),
            )
        }
    };
    let message = truncate(message, MESSAGE_MAX);
    let before = actual.and_then(NodeStatus::programmed);
    let unchanged = before.is_some_and(|c| {
        c.status == status
            && c.reason == reason
            // A True message only moves with the agent's generation.
            && (status == "True" || c.message == message)
    });
    if unchanged && actual.is_some_and(|a| a.observed_generation == Some(generation)) {
        return None;
    }
    let last_transition_time = match before {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now,
    };
    Some(NodeStatus {
        node: node.to_owned(),
        observed_generation: Some(generation),
        conditions: vec![Condition {
            type_: PROGRAMMED.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: Some(generation),
        }],
    })
}

/// The summary of `custom`'s entries when `node` is the one to write it
/// and it differs from what the object says: `(programmed, nodeCount)`.
pub fn summary(report: &Report, custom: &Custom, node: &str) -> Option<(String, i32)> {
    let key = custom.source.file.to_string_lossy();
    if !report.nodes.is_empty() && designated(&key, &report.nodes) != Some(node) {
        return None;
    }
    let (programmed, reporting) = custom.status.count(Some(custom.generation), |n| {
        report.nodes.is_empty() || report.nodes.iter().any(|known| known == n)
    });
    let text = format!("{programmed}/{reporting}");
    let count = i32::try_from(reporting).unwrap_or(i32::MAX);
    let status = &custom.status;
    (status.programmed.as_deref() != Some(text.as_str()) || status.node_count != Some(count))
        .then_some((text, count))
}

/// The server-side apply body that sets `status` on `kind`
/// `namespace/name`.
pub fn apply_body(
    kind: Kind,
    namespace: &str,
    name: &str,
    status: &PolicyStatus,
) -> serde_json::Value {
    json!({
        "apiVersion": EXTENSION_API_VERSION,
        "kind": kind.name(),
        "metadata": {"name": name, "namespace": namespace},
        "status": status,
    })
}

/// Applies `status` on the status subresource as `manager`. Forced: the
/// fields a manager sends are its own (a node's entry, the summary), so a
/// conflict can only be with a hand edit, which the agent's verdict
/// overrides.
pub async fn apply(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    manager: &str,
    status: &PolicyStatus,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &kind.api_resource());
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(apply_body(kind, namespace, name, status)),
    )
    .await
    .map(drop)
}

/// Starts the status writer of `node`: it compares the verdicts of each
/// reload (`reports`) with the objects in `caches`, and writes what
/// differs.
pub fn spawn(client: Client, node: String, reports: watch::Receiver<Report>, caches: CustomCaches) {
    tokio::spawn(write_loop(client, node, reports, caches));
}

async fn write_loop(
    client: Client,
    node: String,
    mut reports: watch::Receiver<Report>,
    caches: CustomCaches,
) {
    let manager = manager(&node);
    // Objects whose write failed, and when: left alone for RETRY_AFTER,
    // and each failure logged once.
    let mut failed: HashMap<String, (Instant, String)> = HashMap::new();
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<(Report, [u64; 2])> = None;
    loop {
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { return },
            _ = look.tick() => {}
        }
        let report = reports.borrow_and_update().clone();
        let generations = [caches[0].1.generation(), caches[1].1.generation()];
        if seen.as_ref() == Some(&(report.clone(), generations)) && failed.is_empty() {
            continue;
        }
        seen = Some((report.clone(), generations));
        let objects: Vec<(Kind, Custom)> = caches
            .iter()
            .flat_map(|(kind, cache)| {
                cache.read(|items| {
                    items
                        .values()
                        .map(|c| (*kind, c.clone()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        failed.retain(|_, (at, _)| at.elapsed() < RETRY_AFTER);
        let now = now();
        for (kind, custom) in &objects {
            let source = custom.source.file.to_string_lossy().into_owned();
            if failed.contains_key(&source) {
                continue;
            }
            let Some((_, namespace, name)) = Kind::of_source(&source) else {
                continue;
            };
            let actual = custom.status.nodes.iter().find(|n| n.node == node);
            let mut writes: Vec<(&str, PolicyStatus)> = Vec::new();
            if let Some(entry) = desired(&report, &source, actual, &node, now.clone()) {
                writes.push((
                    &manager,
                    PolicyStatus {
                        nodes: vec![entry],
                        ..PolicyStatus::default()
                    },
                ));
            }
            if let Some((programmed, count)) = summary(&report, custom, &node) {
                writes.push((
                    SUMMARY_MANAGER,
                    PolicyStatus {
                        programmed: Some(programmed),
                        node_count: Some(count),
                        ..PolicyStatus::default()
                    },
                ));
            }
            for (by, status) in writes {
                match apply(&client, *kind, namespace, name, by, &status).await {
                    Ok(()) => debug!(object = %source, manager = by, "status written"),
                    // Deleted since it was read: nothing to write on.
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        let error = format_chain(&e);
                        warn!(object = %source, error = %error, "cannot write the status; trying again in 30s (needs patch on egressgateways/status and redirects/status)");
                        failed.insert(source.clone(), (Instant::now(), error));
                        break;
                    }
                }
            }
        }
        if !objects.is_empty() && failed.is_empty() {
            // Every agent's write wakes every other: debug, not info.
            debug!(
                objects = objects.len(),
                "custom resources' status up to date"
            );
        }
    }
}

/// Now, to the second, as conditions carry it.
fn now() -> Time {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        kubernetes::events::Rejection,
        observe::status::{Finding, Quarantined},
    };

    const GW: &str = "kubernetes/egressgateways/istio-system/gw";

    fn time(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("a time"))
    }

    fn report(outcome: Verdict, rejections: Vec<Rejection>) -> Report {
        Report {
            rejections,
            nodes: vec!["node-a".into(), "node-b".into()],
            outcome,
            custom: BTreeMap::from([(GW.to_owned(), 4)]),
        }
    }

    fn rejection(held: Held) -> Rejection {
        Rejection {
            quarantined: Quarantined {
                source: GW.into(),
                object: None,
                held,
                errors: vec![],
                findings: vec![Finding {
                    field: Some("spec.clusterCIDRs[0]".into()),
                    message: "invalid CIDR \"10.0.0.0/33\"".into(),
                }],
            },
            here: false,
        }
    }

    fn condition(entry: &NodeStatus) -> (&str, &str, &str) {
        let c = entry.programmed().expect("Programmed");
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn an_applied_object_is_programmed_with_its_generation() {
        let r = report(Verdict::Applied { generation: 12 }, vec![]);
        let entry = desired(&r, GW, None, "node-a", time(100)).expect("written");
        assert_eq!(entry.node, "node-a");
        assert_eq!(entry.observed_generation, Some(4));
        assert_eq!(
            condition(&entry),
            (
                "True",
                "Applied",
                "in force on node node-a since agent generation 12"
            )
        );
        // Written once: a later agent generation changes nothing…
        let later = report(Verdict::Applied { generation: 13 }, vec![]);
        assert_eq!(desired(&later, GW, Some(&entry), "node-a", time(200)), None);
        // …but a new generation of the object does, keeping the transition
        // time of a status that stayed True.
        let mut newer = later.clone();
        newer.custom.insert(GW.into(), 5);
        let next = desired(&newer, GW, Some(&entry), "node-a", time(300)).expect("written");
        assert_eq!(next.observed_generation, Some(5));
        assert_eq!(next.conditions[0].last_transition_time, time(100));
        // An object the reload did not judge yet: nothing.
        assert_eq!(
            desired(&r, "kubernetes/redirects/a/b", None, "node-a", time(1)),
            None
        );
        assert_eq!(
            desired(
                &report(Verdict::Pending, vec![]),
                GW,
                None,
                "node-a",
                time(1)
            ),
            None
        );
    }

    #[test]
    fn a_quarantined_object_says_why_and_what_stays() {
        let r = report(
            Verdict::Applied { generation: 12 },
            vec![rejection(Held::LastGood)],
        );
        let entry = desired(&r, GW, None, "node-a", time(1)).expect("written");
        let (status, reason, message) = condition(&entry);
        assert_eq!((status, reason), ("False", "Quarantined"));
        assert!(
            message.contains("spec.clusterCIDRs[0]: invalid CIDR")
                && message.contains("last valid version stays in force"),
            "{message}"
        );
        let r = report(
            Verdict::Applied { generation: 12 },
            vec![rejection(Held::LeftOut)],
        );
        let entry = desired(&r, GW, None, "node-a", time(1)).expect("written");
        assert_eq!(condition(&entry).1, "Invalid");
    }

    #[test]
    fn a_set_not_applied_leaves_a_programmed_generation_alone() {
        let applied = report(Verdict::Applied { generation: 12 }, vec![]);
        let entry = desired(&applied, GW, None, "node-a", time(1)).expect("written");
        let broken = report(
            Verdict::NotApplied {
                in_force: Some(12),
                why: "policies/x.yaml: error: unknown kind".into(),
            },
            vec![],
        );
        assert_eq!(desired(&broken, GW, Some(&entry), "node-a", time(2)), None);
        // A generation that came with the broken set is not in force.
        let mut newer = broken.clone();
        newer.custom.insert(GW.into(), 5);
        let entry = desired(&newer, GW, Some(&entry), "node-a", time(3)).expect("written");
        let (status, reason, message) = condition(&entry);
        assert_eq!((status, reason), ("False", "NotApplied"));
        assert!(
            message.contains("unknown kind") && message.contains("agent generation 12 stays"),
            "{message}"
        );
        assert_eq!(entry.conditions[0].last_transition_time, time(3));
    }

    #[test]
    fn the_summary_has_one_writer_and_converges() {
        let r = report(Verdict::Applied { generation: 12 }, vec![]);
        let entry = |node: &str| desired(&r, GW, None, node, time(1)).expect("written");
        let mut custom = Custom {
            source: egress_policy::Source::new(GW, ""),
            generation: 4,
            status: PolicyStatus {
                nodes: vec![entry("node-a"), entry("node-b")],
                ..PolicyStatus::default()
            },
        };
        let writers: Vec<&str> = ["node-a", "node-b"]
            .into_iter()
            .filter(|n| summary(&r, &custom, n).is_some())
            .collect();
        assert_eq!(writers.len(), 1, "{writers:?}");
        let writer = writers[0];
        assert_eq!(summary(&r, &custom, writer), Some(("2/2".into(), 2)));
        // Once written, nothing more to write.
        custom.status.programmed = Some("2/2".into());
        custom.status.node_count = Some(2);
        assert_eq!(summary(&r, &custom, writer), None);
        // A new generation not yet programmed anywhere, and a node that
        // left the cluster: neither counts.
        custom.generation = 5;
        custom.status.nodes.push(NodeStatus {
            node: "node-gone".into(),
            ..entry("node-gone")
        });
        assert_eq!(summary(&r, &custom, writer), Some(("0/2".into(), 2)));
    }

    #[test]
    fn the_apply_body_carries_only_this_nodes_entry() {
        let r = report(Verdict::Applied { generation: 12 }, vec![]);
        let entry = desired(&r, GW, None, "node-a", time(0)).expect("written");
        let body = apply_body(
            Kind::EgressGateway,
            "istio-system",
            "gw",
            &PolicyStatus {
                nodes: vec![entry],
                ..PolicyStatus::default()
            },
        );
        assert_eq!(
            body,
            json!({
                "apiVersion": "egress.enforcer.dev/v1alpha1",
                "kind": "EgressGateway",
                "metadata": {"name": "gw", "namespace": "istio-system"},
                "status": {"nodes": [{
                    "node": "node-a",
                    "observedGeneration": 4,
                    "conditions": [{
                        "type": "Programmed", "status": "True", "reason": "Applied",
                        "message": "in force on node node-a since agent generation 12",
                        "lastTransitionTime": "1970-01-01T00:00:00Z",
                        "observedGeneration": 4
                    }]
                }]}
            })
        );
        assert_eq!(manager("node-a"), "egress-agent/node-a");
        assert_eq!(manager(&"n".repeat(300)).len(), 128);
    }
}
