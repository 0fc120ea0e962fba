//! `/metrics`: Prometheus text, built fresh for each scrape from the
//! kernel's counters (which live in pinned maps and count across agent
//! restarts) and the agent's state.
//!
//! Label values come from the policy set and from fixed enums only
//! (workload, namespace, policy, verdict, reason, hook, map), never from
//! addresses or ports, so the number of series is bounded by the number of
//! workloads times policies times reasons.

use std::{collections::BTreeMap, sync::atomic::AtomicU64};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{
    names::{slug, Names},
    status::Status,
};
use crate::dataplane::{program_name, Counters};

type Labels = Vec<(&'static str, String)>;

/// Renders every metric.
pub fn render(status: &Status, counters: Option<&Counters>, names: &Names) -> String {
    let mut registry = Registry::with_prefix("egress");
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };

    if let Some(counters) = counters {
        let verdicts = counter(
            &mut registry,
            "verdicts",
            "Decisions per workload, by verdict (allow, deny, audit), reason and deciding policy (or the reason when no object decided), summed over hooks",
        );
        let mut sums: BTreeMap<Labels, u64> = BTreeMap::new();
        for hit in counters.hits() {
            let Some(workload) = names.workload(hit.cgroup_id) else {
                continue; // a cgroup of an earlier generation
            };
            let verdict = if hit.verdict.audit {
                "audit"
            } else if hit.verdict.reason.denies() {
                "deny"
            } else {
                "allow"
            };
            let decider = names.decider(
                hit.verdict.reason,
                hit.rule.unwrap_or(egress_common::NO_RULE),
            );
            let labels = vec![
                ("namespace", workload.namespace.clone()),
                ("workload", workload.name.clone()),
                ("verdict", verdict.to_owned()),
                ("reason", slug(hit.verdict.reason).to_owned()),
                ("policy", decider.policy),
            ];
            *sums.entry(labels).or_default() += hit.count;
        }
        for (labels, n) in &sums {
            verdicts.get_or_create(labels).inc_by(*n);
        }
        let decisions = counter(
            &mut registry,
            "decisions",
            "Every decision of every program (unmanaged cgroups included), by program, verdict and reason",
        );
        for (kind, n) in counters.verdicts() {
            let verdict = if kind.audit {
                "audit"
            } else if kind.reason.denies() {
                "deny"
            } else {
                "allow"
            };
            decisions
                .get_or_create(&vec![
                    ("program", program_name(kind.hook).to_owned()),
                    ("verdict", verdict.to_owned()),
                    ("reason", slug(kind.reason).to_owned()),
                ])
                .inc_by(n);
        }
    }

    let events = counter(
        &mut registry,
        "kernel_events",
        "Verdict events in the kernel: emitted to the ring, suppressed by the rate limit, or lost to a full ring",
    );
    let k = &status.kernel_events;
    for (outcome, n) in [
        ("emitted", k.emitted),
        ("suppressed", k.suppressed),
        ("ring_full", k.ring_full),
    ] {
        events
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc_by(n);
    }
    let agent = counter(
        &mut registry,
        "agent_events",
        "Verdict events in the agent: received, undecodable, skipped by a slow follower",
    );
    let a = &status.agent_events;
    for (stage, n) in [
        ("received", a.received),
        ("undecodable", a.undecodable),
        ("follower_lagged", a.follower_lagged),
    ] {
        agent
            .get_or_create(&vec![("stage", stage.to_owned())])
            .inc_by(n);
    }
    let redirects = counter(
        &mut registry,
        "redirect_events",
        "Redirect verdict events received, by workload (rate-limited like every event)",
    );
    for (workload, n) in &status.redirect_events {
        let (namespace, name) = workload.split_once('/').unwrap_or(("", workload));
        redirects
            .get_or_create(&vec![
                ("namespace", namespace.to_owned()),
                ("workload", name.to_owned()),
            ])
            .inc_by(*n);
    }

    let plain = |registry: &mut Registry, name: &str, help: &str, n: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(n);
        registry.register(name, help, c);
    };
    plain(&mut registry, "reloads", "Reload attempts", status.reloads);
    plain(
        &mut registry,
        "reload_failures",
        "Reloads rejected (invalid policy) or failed (kernel)",
        status.failed_reloads,
    );
    plain(
        &mut registry,
        "apply_failures",
        "Applies the kernel refused (eBPF maps or nftables backstop; the generation in force stayed, in both)",
        status.apply_failures,
    );
    plain(
        &mut registry,
        "allowed_hosts_refreshes",
        "Times new allowedHosts addresses were programmed",
        status.allowed_hosts_refreshes,
    );
    let seconds = Counter::<f64, AtomicU64>::default();
    seconds.inc_by(status.reload_seconds_total);
    registry.register("reload_duration_seconds", "Time spent in reloads", seconds);
    let generation = Gauge::<i64>::default();
    generation.set(status.generation.as_ref().map_or(0, |g| g.number as i64));
    registry.register(
        "policy_generation",
        "Generation in force (0 = none)",
        generation,
    );
    let applying = Gauge::<i64>::default();
    applying.set(i64::from(status.applying.is_some()));
    registry.register(
        "apply_in_progress",
        "1 while an apply (a reload, an allowedHosts refresh or a reconcile) runs",
        applying,
    );
    let quarantined = gauge(
        &mut registry,
        "quarantined_objects",
        "API objects the agent could not use as they are (1 each), held at their last good version, replaced by a deny-all stand-in, or left out",
    );
    for q in &status.quarantined {
        let (kind, namespace, name) = object_labels(q);
        quarantined
            .get_or_create(&vec![
                ("kind", kind),
                ("namespace", namespace),
                ("name", name),
                ("held", format!("{:?}", q.held).to_lowercase()),
            ])
            .set(1);
    }
    let pending = Gauge::<i64>::default();
    pending.set(status.pending_pods.len() as i64);
    registry.register(
        "pending_pods",
        "Pods below a guarded root with no policy of their own in force (the pending policy: loopback and cluster DNS only)",
        pending,
    );
    let oldest = Gauge::<i64>::default();
    oldest.set(
        status
            .pending_pods
            .iter()
            .map(|p| p.seconds as i64)
            .max()
            .unwrap_or(0),
    );
    registry.register(
        "pending_oldest_seconds",
        "How long the longest-pending pod has been pending (0 = none)",
        oldest,
    );
    let audit = Gauge::<i64>::default();
    audit.set(i64::from(status.audit));
    registry.register("audit_mode", "1 when nothing is denied (audit mode)", audit);
    let programs = Gauge::<i64>::default();
    programs.set(status.programs.len() as i64);
    registry.register(
        "programs_attached",
        "Programs attached at the cgroup root",
        programs,
    );

    let entries = gauge(&mut registry, "map_entries", "Entries in each map");
    let capacity = gauge(&mut registry, "map_capacity", "Capacity of each map");
    for m in &status.maps {
        let labels = vec![("map", m.name.clone())];
        entries.get_or_create(&labels).set(m.entries as i64);
        capacity.get_or_create(&labels).set(m.capacity as i64);
    }
    let nft = counter(
        &mut registry,
        "nft_dropped_packets",
        "Packets dropped by the nftables backstop since its table was last written",
    );
    for (name, n) in &status.nft.dropped_packets {
        nft.get_or_create(&vec![("counter", name.clone())])
            .inc_by(*n);
    }

    if let Some(dns) = &status.gateway_dns {
        let relays = Gauge::<i64>::default();
        relays.set(i64::try_from(dns.relays).unwrap_or(i64::MAX));
        registry.register(
            "gateway_dns_relays",
            "Gateway pods whose DNS the agent relays",
            relays,
        );
        let queries = counter(
            &mut registry,
            "gateway_dns_queries",
            "Gateways' DNS queries relayed, by what became of them",
        );
        for (result, n) in [
            ("programmed", dns.programmed),
            ("late", dns.late),
            ("upstream_failure", dns.upstream_failures),
            (
                "other",
                dns.queries
                    .saturating_sub(dns.programmed + dns.late + dns.upstream_failures),
            ),
        ] {
            queries
                .get_or_create(&vec![("result", result.to_owned())])
                .inc_by(n);
        }
    }

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// `kind`, `namespace` and `name` of a quarantined object: from its
/// findings, else from its source name `kubernetes/<resource>/[<ns>/]<name>`
/// (a document that does not parse names no object), so every series
/// names its object.
fn object_labels(q: &super::status::Quarantined) -> (String, String, String) {
    if let Some(o) = &q.object {
        return (
            o.kind.clone(),
            o.namespace.clone().unwrap_or_default(),
            o.name.clone(),
        );
    }
    let parts: Vec<&str> = q
        .source
        .strip_prefix("kubernetes/")
        .map(|rest| rest.split('/').collect())
        .unwrap_or_default();
    let kind = |resource: &str| {
        match resource {
            "pods" => "Pod",
            "networkpolicies" => "NetworkPolicy",
            "namespaces" => "Namespace",
            "nodes" => "Node",
            "services" => "Service",
            "endpointslices" => "EndpointSlice",
            "serviceentries" => "ServiceEntry",
            other => other,
        }
        .to_owned()
    };
    match parts.as_slice() {
        [resource, namespace, name] => {
            (kind(resource), (*namespace).to_owned(), (*name).to_owned())
        }
        [resource, name] => (kind(resource), String::new(), (*name).to_owned()),
        _ => (String::new(), String::new(), q.source.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::status::{Held, PendingPod, Quarantined};

    #[test]
    fn each_quarantined_object_is_a_series_labelled_by_kind_namespace_and_name() {
        let status = Status {
            quarantined: vec![
                Quarantined {
                    source: "kubernetes/networkpolicies/shop/wide".into(),
                    object: Some(egress_policy::diagnostic::ObjectRef {
                        kind: "NetworkPolicy".into(),
                        namespace: Some("shop".into()),
                        name: "wide".into(),
                    }),
                    held: Held::LastGood,
                    errors: vec![],
                    findings: vec![],
                },
                // A document that did not parse: no object in its findings.
                Quarantined {
                    source: "kubernetes/pods/blog/api".into(),
                    object: None,
                    held: Held::LeftOut,
                    errors: vec![],
                    findings: vec![],
                },
            ],
            pending_pods: vec![
                PendingPod {
                    cgroup: "kubepods/poda".into(),
                    uid: "a".into(),
                    pod: None,
                    reason: "r".into(),
                    seconds: 3,
                },
                PendingPod {
                    cgroup: "kubepods/podb".into(),
                    uid: "b".into(),
                    pod: None,
                    reason: "r".into(),
                    seconds: 42,
                },
            ],
            ..Status::default()
        };
        let text = render(&status, None, &Names::default());
        assert!(
            text.contains(r#"egress_quarantined_objects{kind="NetworkPolicy",namespace="shop",name="wide",held="lastgood"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"egress_quarantined_objects{kind="Pod",namespace="blog",name="api",held="leftout"} 1"#),
            "{text}"
        );
        assert!(text.contains("egress_pending_pods 2"), "{text}");
        assert!(text.contains("egress_pending_oldest_seconds 42"), "{text}");
    }
}
