//! Kubernetes Events on the API objects the agent quarantines.
//!
//! A tenant who writes a NetworkPolicy the agent cannot enforce as it is
//! must be able to see it without access to the agent: `kubectl describe`
//! on the object shows a Warning with reason [`REASON`], naming the field
//! and why, what stands in for the object, and the node
//! (`reportingController` [`CONTROLLER`], `reportingInstance` the node
//! name). Events go through kube-runtime's [`Recorder`]
//! (`events.k8s.io/v1`, served since Kubernetes 1.19), which creates an
//! Event and, when the same one (object, version, field, [`action`])
//! comes again within its cache's lifetime (6 minutes), patches its
//! `series.count` instead: the RBAC is `create` and `patch` on
//! `events.k8s.io` `events`, nothing else.
//!
//! **Once per distinct problem.** Reloads are frequent; an object and its
//! findings are reported when they first appear ([`Dedupe`]), not at every
//! reload while they last. When the problem goes and comes back, or the
//! object changes (its `resourceVersion` is part of the reference, and
//! the first finding's field is its `fieldPath`, so a new problem is a new
//! Event, never a stale message with a higher count), it is reported again.
//!
//! **Not once per node.** Every agent judges every object, so each could
//! report every bad object: on a 1,000-node cluster one bad NetworkPolicy
//! would write 1,000 Events, a load any namespace admin could put on the
//! API server. An agent reports an object only when it holds back
//! something on its own node (a pod here is selected by it, or is it), or
//! when its node is the one the object hashes to among the cluster's Nodes
//! ([`designated`]: rendezvous hashing, the same answer on every agent),
//! so that an object that selects nothing anywhere is still reported once.
//!
//! In file mode there is no API server, and no Events.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, ObjectReference, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    core::DynamicObject,
    discovery::ApiResource,
    runtime::events::{Event, EventType, Recorder, Reporter},
    Api, Client,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::custom::Kind;
use crate::{
    errors::format_chain,
    observe::status::{Finding, Held, Quarantined},
};

/// The Event's reason.
pub const REASON: &str = "PolicyRejected";
/// The Event's action: what the agent put in the object's place. It is
/// part of the recorder's key, so a change of what stands in (last good,
/// then deny-all) is a new Event, never a count on one whose note says
/// otherwise.
pub fn action(held: Held) -> &'static str {
    match held {
        Held::LastGood => "KeepLastGood",
        Held::DenyAll => "DenyAll",
        Held::LeftOut => "LeaveOut",
    }
}
/// `reportingController` (`reportingComponent` in `v1` Events).
pub const CONTROLLER: &str = "egress-agent";
/// The API server refuses a longer note.
const NOTE_MAX: usize = 1024;
/// How often rejections whose Event could not be written are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(60);

/// One quarantined object, as the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub quarantined: Quarantined,
    /// It holds back a workload of this node: a pod here is selected by
    /// it, or is it.
    pub here: bool,
}

/// What the last reload came to, for the custom resources' status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// No reload yet.
    #[default]
    Pending,
    /// The policy set is in force as agent generation `generation`.
    Applied { generation: u64 },
    /// The policy set was rejected, or the kernel refused it; `in_force`
    /// stays.
    NotApplied { in_force: Option<u64>, why: String },
}

/// What the agent's event loop sends after each reload, for the Events
/// and for the custom resources' status ([`super::status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub rejections: Vec<Rejection>,
    /// The cluster's Node names, as the inventory has them.
    pub nodes: Vec<String>,
    /// What the reload came to.
    pub outcome: Verdict,
    /// The custom resources the reload judged: their generation by
    /// document name.
    pub custom: BTreeMap<String, i64>,
}

/// The node among `nodes` that reports `key` when no node is affected:
/// the one with the highest hash of (key, node). Every agent computes the
/// same answer from the same Nodes; when a node goes, only its share of
/// objects moves.
pub fn designated<'a>(key: &str, nodes: &'a [String]) -> Option<&'a str> {
    nodes
        .iter()
        .max_by_key(|node| {
            let mut bytes = Vec::with_capacity(key.len() + node.len() + 1);
            bytes.extend_from_slice(key.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(node.as_bytes());
            mixed_hash(&bytes)
        })
        .map(String::as_str)
}

/// 64-bit FNV-1a, then MurmurHash3's finalizer: stable across processes,
/// versions and architectures (std's hasher promises none of that), which
/// [`designated`] needs. FNV alone leaves the high bits of names that
/// differ only at the end (`node-1`, `node-2`) nearly equal, and the
/// largest hash would then pick the same few nodes for everything.
fn mixed_hash(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What makes a problem distinct.
type Key = (String, Held, Vec<Finding>);

fn key(q: &Quarantined) -> Key {
    let mut findings = q.findings.clone();
    findings.sort();
    (q.source.clone(), q.held, findings)
}

/// Which rejections are new, for one node.
#[derive(Debug)]
pub struct Dedupe {
    node: String,
    reported: HashSet<Key>,
}

impl Dedupe {
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            reported: HashSet::new(),
        }
    }

    /// The rejections of `report` that this node reports and has not
    /// reported yet; they count as reported from now on. Problems that are
    /// gone are forgotten, so that they are reported again if they return.
    pub fn due(&mut self, report: &Report) -> Vec<Rejection> {
        let present: HashSet<Key> = report
            .rejections
            .iter()
            .map(|r| key(&r.quarantined))
            .collect();
        self.reported.retain(|k| present.contains(k));
        report
            .rejections
            .iter()
            .filter(|r| {
                r.here
                    || report.nodes.is_empty()
                    || designated(&r.quarantined.source, &report.nodes) == Some(self.node.as_str())
            })
            .filter(|r| self.reported.insert(key(&r.quarantined)))
            .cloned()
            .collect()
    }

    /// `r` could not be reported: it is due again at the next look.
    pub fn forget(&mut self, r: &Rejection) {
        self.reported.remove(&key(&r.quarantined));
    }
}

/// The Event for `r`, as reported from `node`.
pub fn event(r: &Rejection, node: &str) -> Event {
    let q = &r.quarantined;
    let findings: Vec<String> = if q.findings.is_empty() {
        q.errors.clone()
    } else {
        q.findings.iter().map(ToString::to_string).collect()
    };
    let pod = q.source.starts_with("kubernetes/pods/");
    let held = match q.held {
        Held::LastGood if pod => "its last good version stays in force",
        Held::LastGood => "its last good version stays in force for the pods it selects",
        Held::DenyAll => {
            "the pods it selects are denied all egress until it is fixed (fail closed)"
        }
        Held::LeftOut if pod => {
            "nothing: the pod stays pending (loopback and cluster DNS only) until it is fixed"
        }
        Held::LeftOut => "nothing: it is left out until it is fixed",
    };
    let here = if r.here {
        "; this node runs pods it holds back"
    } else {
        ""
    };
    let note = format!(
        "Quarantined on node {node}, not enforced as it is: {}. In its place {held}{here}; every other object is enforced.",
        findings.join("; ")
    );
    Event {
        type_: EventType::Warning,
        reason: REASON.into(),
        note: Some(truncate(note, NOTE_MAX)),
        action: action(q.held).into(),
        secondary: None,
    }
}

/// At most `max` bytes, cut at a character boundary, marked with `…`.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let ellipsis = '…';
    let mut end = max - ellipsis.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push(ellipsis);
    s
}

/// The API resource, namespace and name of a source named
/// `kubernetes/<resource>/[<namespace>/]<name>`; `None` for other sources.
/// EndpointSlices made from `v1 Endpoints` have no object of that name;
/// the lookup then finds nothing and no Event is written.
pub fn resource_of(source: &str) -> Option<(ApiResource, Option<String>, String)> {
    let rest = source.strip_prefix("kubernetes/")?;
    let mut parts = rest.split('/');
    let resource = parts.next()?;
    let (api, namespaced) = match resource {
        "pods" => (ApiResource::erase::<Pod>(&()), true),
        "networkpolicies" => (ApiResource::erase::<NetworkPolicy>(&()), true),
        "services" => (ApiResource::erase::<Service>(&()), true),
        "endpointslices" => (ApiResource::erase::<EndpointSlice>(&()), true),
        "namespaces" => (ApiResource::erase::<Namespace>(&()), false),
        "nodes" => (ApiResource::erase::<Node>(&()), false),
        "serviceentries" => {
            let version = super::objects::SERVICE_ENTRY_VERSION.get()?;
            let gvk =
                kube::core::GroupVersionKind::gvk("networking.istio.io", version, "ServiceEntry");
            (
                ApiResource::from_gvk_with_plural(&gvk, "serviceentries"),
                true,
            )
        }
        custom => (
            Kind::ALL
                .into_iter()
                .find(|k| k.plural() == custom)?
                .api_resource(),
            true,
        ),
    };
    let names: Vec<&str> = parts.collect();
    match (namespaced, names.as_slice()) {
        (true, [ns, name]) => Some((api, Some((*ns).to_owned()), (*name).to_owned())),
        (false, [name]) => Some((api, None, (*name).to_owned())),
        _ => None,
    }
}

/// The reference to `object` (as read from the API server), pointing at
/// the field of the first finding.
pub fn reference(api: &ApiResource, object: &DynamicObject, q: &Quarantined) -> ObjectReference {
    ObjectReference {
        api_version: Some(api.api_version.clone()),
        kind: Some(api.kind.clone()),
        name: object.metadata.name.clone(),
        namespace: object.metadata.namespace.clone(),
        uid: object.metadata.uid.clone(),
        resource_version: object.metadata.resource_version.clone(),
        field_path: q.findings.first().and_then(|f| f.field.clone()),
    }
}

/// Starts the reporter for `node`: send it a [`Report`] after each reload.
pub fn spawn(client: Client, node: String) -> watch::Sender<Report> {
    let (tx, rx) = watch::channel(Report::default());
    tokio::spawn(publish_loop(client, node, rx));
    tx
}

async fn publish_loop(client: Client, node: String, mut reports: watch::Receiver<Report>) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER.into(),
            instance: Some(node.clone()),
        },
    );
    let mut dedupe = Dedupe::new(node.clone());
    // Failures are logged once per problem; a missing RBAC rule would
    // otherwise log at every retry.
    let mut warned: HashMap<String, String> = HashMap::new();
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { return },
            _ = retry.tick() => {}
        }
        let report = reports.borrow_and_update().clone();
        for r in dedupe.due(&report) {
            let source = r.quarantined.source.clone();
            match publish(&client, &recorder, &r, &node).await {
                Ok(true) => {
                    info!(object = %source, reason = REASON, "Event written on the quarantined object");
                    warned.remove(&source);
                }
                // The object is gone (or never existed under that name):
                // nothing to write on, and nothing to retry.
                Ok(false) => debug!(object = %source, "no such object; no Event"),
                Err(e) => {
                    let error = format_chain(&e);
                    if warned.get(&source) != Some(&error) {
                        warn!(object = %source, error = %error, "cannot write the Event on the quarantined object; retrying every minute (needs create and patch on events.k8s.io events)");
                        warned.insert(source, error);
                    }
                    dedupe.forget(&r);
                }
            }
        }
    }
}

/// Writes the Event for `r`; `Ok(false)` when the object does not exist.
async fn publish(
    client: &Client,
    recorder: &Recorder,
    r: &Rejection,
    node: &str,
) -> Result<bool, kube::Error> {
    let Some((api, namespace, name)) = resource_of(&r.quarantined.source) else {
        return Ok(false);
    };
    let objects: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &api),
        None => Api::all_with(client.clone(), &api),
    };
    let Some(object) = objects.get_opt(&name).await? else {
        return Ok(false);
    };
    recorder
        .publish(&event(r, node), &reference(&api, &object, &r.quarantined))
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use kube::core::ObjectMeta;

    use super::*;
    use egress_policy::diagnostic::ObjectRef;

    fn rejection(source: &str, message: &str, here: bool) -> Rejection {
        Rejection {
            quarantined: Quarantined {
                source: source.into(),
                object: Some(ObjectRef {
                    kind: "NetworkPolicy".into(),
                    namespace: Some("shop".into()),
                    name: "wide".into(),
                }),
                held: Held::LastGood,
                errors: vec![format!("{source}: error: {message}")],
                findings: vec![Finding {
                    field: Some("spec.egress[0].ports".into()),
                    message: message.into(),
                }],
            },
            here,
        }
    }

    const NP: &str = "kubernetes/networkpolicies/shop/wide";

    #[test]
    fn the_event_names_the_field_why_what_holds_and_the_node() {
        let e = event(&rejection(NP, "130 entries; at most 128", true), "node-a");
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.reason, "PolicyRejected");
        assert_eq!(e.action, "KeepLastGood");
        let note = e.note.expect("a note");
        assert!(
            note.contains("node node-a")
                && note.contains("spec.egress[0].ports: 130 entries; at most 128")
                && note.contains("last good version")
                && note.contains("this node runs pods it holds back"),
            "{note}"
        );
        // The API server refuses a note over 1 KiB.
        let long = event(&rejection(NP, &"é".repeat(2000), false), "node-a");
        let note = long.note.expect("a note");
        assert!(note.len() <= 1024 && note.ends_with('…'), "{}", note.len());
    }

    #[test]
    fn the_reference_is_the_object_at_its_version_pointing_at_the_field() {
        let (api, ns, name) = resource_of(NP).expect("a NetworkPolicy");
        assert_eq!(
            (api.api_version.as_str(), api.kind.as_str()),
            ("networking.k8s.io/v1", "NetworkPolicy")
        );
        assert_eq!((ns.as_deref(), name.as_str()), (Some("shop"), "wide"));
        let object = DynamicObject {
            types: None,
            metadata: ObjectMeta {
                name: Some("wide".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            data: serde_json::Value::Null,
        };
        let r = reference(&api, &object, &rejection(NP, "m", false).quarantined);
        assert_eq!(r.uid.as_deref(), Some("u-1"));
        assert_eq!(r.resource_version.as_deref(), Some("42"));
        assert_eq!(r.field_path.as_deref(), Some("spec.egress[0].ports"));
        assert_eq!(r.namespace.as_deref(), Some("shop"));
        // Cluster-scoped kinds, and names that are not API objects.
        let (node, ns, name) = resource_of("kubernetes/nodes/node-a").expect("a Node");
        assert_eq!(
            (node.kind.as_str(), ns, name.as_str()),
            ("Node", None, "node-a")
        );
        let (pod, ..) = resource_of("kubernetes/pods/shop/web").expect("a Pod");
        assert_eq!(pod.api_version, "v1");
        let (gateway, ns, name) =
            resource_of("kubernetes/egressgateways/istio-system/gw").expect("a custom resource");
        assert_eq!(
            (gateway.api_version.as_str(), gateway.plural.as_str()),
            ("egress.enforcer.dev/v1alpha1", "egressgateways")
        );
        assert_eq!((ns.as_deref(), name.as_str()), (Some("istio-system"), "gw"));
        assert!(resource_of("policies/np.yaml").is_none());
        assert!(resource_of("kubernetes/networkpolicies/only-a-name").is_none());
    }

    #[test]
    fn each_problem_is_reported_once_and_again_when_it_returns() {
        let mut d = Dedupe::new("node-a");
        let bad = Report {
            rejections: vec![rejection(NP, "invalid CIDR", true)],
            nodes: vec!["node-a".into(), "node-b".into()],
            ..Report::default()
        };
        assert_eq!(d.due(&bad).len(), 1);
        assert!(d.due(&bad).is_empty(), "not at every reload");
        // Another problem on the same object is a new Event.
        let other = Report {
            rejections: vec![rejection(NP, "another field", true)],
            ..bad.clone()
        };
        assert_eq!(d.due(&other).len(), 1);
        // Fixed, then broken again the same way: reported again.
        assert!(d.due(&Report::default()).is_empty());
        assert_eq!(d.due(&bad).len(), 1);
        // A failed write is due again at the next look.
        let r = d.due(&Report::default());
        assert!(r.is_empty());
        let due = d.due(&bad);
        d.forget(&due[0]);
        assert_eq!(d.due(&bad).len(), 1);
    }

    #[test]
    fn an_object_is_reported_by_the_nodes_it_affects_or_by_one_designated_node() {
        let nodes: Vec<String> = (0..50).map(|i| format!("node-{i}")).collect();
        let report = |here| Report {
            rejections: vec![rejection(NP, "m", here)],
            nodes: nodes.clone(),
            ..Report::default()
        };
        // Not affecting any node: exactly one node reports it.
        let reporters: Vec<&String> = nodes
            .iter()
            .filter(|n| !Dedupe::new(n.as_str()).due(&report(false)).is_empty())
            .collect();
        assert_eq!(reporters.len(), 1, "{reporters:?}");
        assert_eq!(designated(NP, &nodes), Some(reporters[0].as_str()));
        // Affecting a node: that node reports it whatever the hash says.
        let other = nodes.iter().find(|n| *n != reporters[0]).expect("a node");
        assert_eq!(Dedupe::new(other.as_str()).due(&report(true)).len(), 1);
        // Objects spread over the nodes.
        let chosen: HashSet<&str> = (0..200)
            .filter_map(|i| designated(&format!("kubernetes/networkpolicies/ns/p{i}"), &nodes))
            .collect();
        assert!(chosen.len() > 40, "{}", chosen.len());
        // Without any Node known, every agent reports (nothing is lost).
        let alone = Report {
            rejections: vec![rejection(NP, "m", false)],
            ..Report::default()
        };
        assert_eq!(Dedupe::new("node-a").due(&alone).len(), 1);
    }
}
