//! One tenant's bad object must not freeze every other tenant's policy.
//!
//! Objects from the Kubernetes API arrive as one YAML document each, named
//! `kubernetes/<resource>/<namespace>/<name>`. Without this, a single
//! NetworkPolicy the agent cannot use (one any namespace admin can write)
//! rejects the whole set on every node: new pods stay pending and no
//! other namespace's change takes effect. Instead, an API object that has
//! an error is quarantined alone, and the rest loads:
//!
//! - it is replaced by its **last good version**, if there is one, so the
//!   pods it selects keep the policy they had;
//! - a NetworkPolicy with no good version becomes a **deny-all stand-in**
//!   (`policyTypes: [Egress]`, no rule) over the pods it selects, or over
//!   its whole namespace when its selector is what is broken: it fails
//!   closed for the pods it selects, and for nothing else;
//! - any other kind is **left out** (a pod without its Workload stays
//!   pending in the kernel; a Service without its entry is judged by the
//!   CIDRs around its address).
//!
//! The same holds for the one kernel limit an ordinary policy can reach,
//! the (protocol, port) list of one prefix
//! ([`crate::dataplane::port_overflows`]): it is checked on the compiled
//! plan before anything is applied, and the object that brought a pod's
//! list over is quarantined as if it were invalid ([`blame`] says which).
//!
//! The operator's own files are not quarantined: an error there rejects
//! the whole set, as before, and the previous generation stays in force.

use std::{collections::HashMap, path::Path, sync::Arc};

// `Held` and `Quarantined` are what `status` reports, so they live with the
// status types in `observe`, which must not depend on the agent.
pub use crate::observe::status::{Finding, Held, Quarantined};
use crate::{
    compile::{self, Plan},
    dataplane::{port_overflows, PortOverflow, MAX_PORTS_PER_PREFIX},
};
use egress_policy::{
    diagnostic::{FieldPath, Location, ObjectRef},
    model::Model,
    Diagnostic, Loaded, ParseCache, Rejected, Source,
};

/// A successful load, with what was quarantined to get there.
pub struct Outcome {
    pub loaded: Loaded,
    /// The compiled plan of `loaded` (without guards): every port list in
    /// it fits the kernel's.
    pub plan: Plan,
    pub quarantined: Vec<Quarantined>,
    /// The API objects that loaded as they are: the next last good set.
    pub good: HashMap<Arc<Path>, Source>,
}

/// Rounds of quarantining invalid objects before giving up: a stand-in can
/// fail once (a broken selector), and removing an object can expose a
/// cross-object error in another.
const ROUNDS: usize = 4;

/// Rounds of quarantining for port lists over the kernel's limit. Each
/// round takes at least one object out of every list that is over, so this
/// only runs out when many policies add up for one pod.
const LIMIT_ROUNDS: usize = 16;

/// Loads `paths` with the API objects `sources`, quarantining those with
/// errors, or that bring a pod's port list over the kernel's limit (see
/// the module doc). `last_good` is the previous [`Outcome::good`];
/// `parses` keeps the typed parses of unchanged documents between loads.
pub fn load(
    paths: &[std::path::PathBuf],
    sources: &[Source],
    last_good: &HashMap<Arc<Path>, Source>,
    parses: &mut ParseCache,
) -> Result<Outcome, Rejected> {
    let mut current: Vec<Source> = sources.to_vec();
    let mut quarantined: Vec<Quarantined> = Vec::new();
    let (mut invalid_rounds, mut limit_rounds) = (0, 0);
    loop {
        let errors: Vec<Diagnostic> = match egress_policy::load_with_cached(paths, &current, parses)
        {
            Ok(loaded) => {
                let plan = compile::compile(&loaded.model);
                let overflows = port_overflows(&plan);
                if overflows.is_empty() {
                    let bad: Vec<&str> = quarantined.iter().map(|q| q.source.as_str()).collect();
                    let good = sources
                        .iter()
                        .filter(|s| !bad.contains(&s.file.to_string_lossy().as_ref()))
                        .map(|s| (Arc::clone(&s.file), s.clone()))
                        .collect();
                    return Ok(Outcome {
                        loaded,
                        plan,
                        quarantined,
                        good,
                    });
                }
                let blamed = blame(&overflows, &loaded.model, &current, last_good)?;
                if limit_rounds == LIMIT_ROUNDS {
                    return Err(Rejected {
                        diagnostics: blamed,
                    });
                }
                limit_rounds += 1;
                blamed
            }
            Err(rejected) => {
                let errors: Vec<Diagnostic> = rejected
                    .diagnostics
                    .iter()
                    .filter(|d| d.is_error())
                    .cloned()
                    .collect();
                let from_api = |d: &Diagnostic| current.iter().any(|s| s.file == d.file);
                // An error in the operator's own files, or no progress
                // possible: the whole set is rejected.
                if invalid_rounds == ROUNDS || errors.is_empty() || !errors.iter().all(from_api) {
                    return Err(rejected);
                }
                invalid_rounds += 1;
                errors
            }
        };
        set_aside(&errors, &mut current, &mut quarantined, last_good);
    }
}

/// Quarantines the API objects that `errors` are about: each is replaced
/// by what stands in for it, one step further each time it fails again:
/// its last good version, then a deny-all stand-in over what it selects,
/// then one over its whole namespace (other kinds: left out).
fn set_aside(
    errors: &[Diagnostic],
    current: &mut Vec<Source>,
    quarantined: &mut Vec<Quarantined>,
    last_good: &HashMap<Arc<Path>, Source>,
) {
    let mut by_file: Vec<(Arc<Path>, Vec<&Diagnostic>)> = Vec::new();
    for d in errors {
        match by_file.iter_mut().find(|(f, _)| *f == d.file) {
            Some((_, list)) => {
                if !list.contains(&d) {
                    list.push(d);
                }
            }
            None => by_file.push((Arc::clone(&d.file), vec![d])),
        }
    }
    for (file, diagnostics) in by_file {
        let name = file.to_string_lossy().into_owned();
        let Some(index) = current.iter().position(|s| s.file == file) else {
            continue; // only API objects are ever blamed
        };
        let already = quarantined.iter().position(|q| q.source == name);
        let (held, replacement) = match already.map(|i| quarantined[i].held) {
            None => match last_good.get(&file) {
                Some(good) if *good != current[index] => (Held::LastGood, Some(good.clone())),
                _ => (Held::DenyAll, stand_in(&current[index], true)),
            },
            // The last good version fails too (with what changed around
            // it): deny what it selects.
            Some(Held::LastGood) => (Held::DenyAll, stand_in(&current[index], true)),
            // A stand-in that fails again: its selector was the problem.
            Some(_) => (Held::DenyAll, stand_in(&current[index], false)),
        };
        let held = if replacement.is_some() {
            held
        } else {
            Held::LeftOut
        };
        match replacement {
            Some(r) => current[index] = r,
            None => {
                current.remove(index);
            }
        }
        let errors: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        let findings: Vec<Finding> = diagnostics
            .iter()
            .map(|d| Finding {
                field: d.field.as_ref().map(ToString::to_string),
                message: d.message.clone(),
            })
            .collect();
        match already {
            Some(i) => {
                let q = &mut quarantined[i];
                q.held = held;
                for e in errors {
                    if !q.errors.contains(&e) {
                        q.errors.push(e);
                    }
                }
                for f in findings {
                    if !q.findings.contains(&f) {
                        q.findings.push(f);
                    }
                }
            }
            None => quarantined.push(Quarantined {
                source: name,
                object: diagnostics.iter().find_map(|d| d.object.clone()),
                held,
                errors,
                findings,
            }),
        }
    }
}

/// For each port list over the limit, the one object to quarantine this
/// round, as an error on it:
///
/// 1. a NetworkPolicy from the API server that changed since the
///    generation in force (or is new) and has entries in the list: the
///    change that brought it over, the largest first;
/// 2. else the pod itself, if it changed (new labels made more policies
///    select it): it keeps its last good version, or stays pending;
/// 3. else the API NetworkPolicy with the most entries in the list (one
///    held at its last good version goes on to a deny-all stand-in).
///
/// A list with no API object in it comes from the operator's files alone:
/// the whole set is rejected, as for any error there.
fn blame(
    overflows: &[PortOverflow],
    model: &Model,
    current: &[Source],
    last_good: &HashMap<Arc<Path>, Source>,
) -> Result<Vec<Diagnostic>, Rejected> {
    let api = |file: &Path| current.iter().find(|s| &*s.file == file);
    let changed = |file: &Path| api(file).is_some_and(|s| last_good.get(file) != Some(s));
    let mut blamed: Vec<Diagnostic> = Vec::new();
    let mut operators: Vec<Diagnostic> = Vec::new();
    for o in overflows {
        // The policies with entries in the list, most entries first, each
        // with its largest rule (the field the finding names).
        let mut policies: Vec<(&egress_policy::model::NetworkPolicy, usize, usize)> = Vec::new();
        for (rule, n) in &o.rules {
            let Some(np) = model.network_policies.iter().find(|p| p.id == *rule.policy) else {
                continue;
            };
            match policies.iter_mut().find(|(p, _, _)| p.id == np.id) {
                Some((_, total, _)) => *total += n,
                None => policies.push((np, *n, rule.index)),
            }
        }
        policies.sort_by_key(|p| std::cmp::Reverse(p.1));
        let limit = format!(
            "{} (protocol, port) entries for {}; the kernel checks at most {MAX_PORTS_PER_PREFIX} per prefix (merge ports into ranges, or split the rules across CIDRs)",
            o.entries, o.prefix
        );
        let on_policy = |(np, n, index): &(&egress_policy::model::NetworkPolicy, usize, usize)| {
            let others: Vec<String> = policies
                .iter()
                .filter(|(p, _, _)| p.id != np.id)
                .map(|(p, _, _)| format!("NetworkPolicy {}", p.id))
                .collect();
            let with = if others.is_empty() {
                String::new()
            } else {
                format!(" with {} ({n} of them from this policy)", others.join(", "))
            };
            Diagnostic::error(
                &np.origin.file,
                format!("for pod {}{with}: {limit}", o.workload),
            )
            .at(np.origin.line.map(|line| Location { line, column: 1 }))
            .on(&ObjectRef {
                kind: "NetworkPolicy".into(),
                namespace: Some(np.id.namespace.clone()),
                name: np.id.name.clone(),
            })
            .field(
                FieldPath::of(&["spec", "egress"])
                    .index(*index)
                    .key("ports"),
            )
        };
        let from_api: Vec<_> = policies
            .iter()
            .filter(|(p, _, _)| api(&p.origin.file).is_some())
            .collect();
        // The pod is only to blame for a list that an API policy is part
        // of; one from the operator's files alone is the operator's.
        let pod = model
            .workload(&o.workload)
            .filter(|w| !from_api.is_empty() && changed(&w.origin.file));
        let pick = if let Some(p) = from_api.iter().find(|(p, _, _)| changed(&p.origin.file)) {
            Some(on_policy(p))
        } else if let Some(w) = pod {
            let names: Vec<String> = policies.iter().map(|(p, _, _)| p.id.to_string()).collect();
            Some(
                Diagnostic::error(
                    &w.origin.file,
                    format!(
                        "the NetworkPolicies that now select it ({}) add up to {limit}",
                        names.join(", ")
                    ),
                )
                .on(&ObjectRef {
                    kind: "Workload".into(),
                    namespace: Some(w.id.namespace.clone()),
                    name: w.id.name.clone(),
                })
                .field(FieldPath::of(&["metadata", "labels"])),
            )
        } else {
            from_api.first().map(|p| on_policy(p))
        };
        match (pick, policies.first()) {
            (Some(d), _) => blamed.push(d),
            (None, Some(p)) => operators.push(on_policy(p)),
            // Not from any NetworkPolicy: it cannot happen (only their
            // rules fill these lists), but never loop on it silently.
            (None, None) => operators.push(Diagnostic::error(
                &model.workload(&o.workload).map_or_else(
                    || Arc::from(Path::new("(policy set)")),
                    |w| Arc::clone(&w.origin.file),
                ),
                format!("pod {}: {limit}", o.workload),
            )),
        }
    }
    if !operators.is_empty() {
        return Err(Rejected {
            diagnostics: operators,
        });
    }
    Ok(blamed)
}

/// A deny-all NetworkPolicy in place of `source`, selecting what it
/// selected (`keep_selector`) or its whole namespace. `None` for other
/// kinds.
fn stand_in(source: &Source, keep_selector: bool) -> Option<Source> {
    let name = source.file.to_string_lossy();
    let rest = name.strip_prefix("kubernetes/networkpolicies/")?;
    let (namespace, policy) = rest.split_once('/')?;
    let selector = keep_selector
        .then(|| {
            let value: serde_yaml::Value = serde_yaml::from_str(&source.text).ok()?;
            let selector = value.get("spec")?.get("podSelector")?.clone();
            serde_json::to_string(&selector).ok()
        })
        .flatten()
        .unwrap_or_else(|| "{}".to_owned());
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: \"{policy}\", namespace: \"{namespace}\"}}\n\
         spec:\n  podSelector: {selector}\n  policyTypes: [Egress]\n"
    );
    Some(Source::new(&*source.file, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::load`] with the parse cache a reloader keeps, shared by
    /// every load of a thread's test, so that quarantining is checked with
    /// cached parses too.
    fn load(
        paths: &[std::path::PathBuf],
        sources: &[Source],
        last_good: &HashMap<Arc<Path>, Source>,
    ) -> Result<Outcome, Rejected> {
        thread_local! {
            static PARSES: std::cell::RefCell<ParseCache> = Default::default();
        }
        PARSES.with(|p| super::load(paths, sources, last_good, &mut p.borrow_mut()))
    }

    fn api(name: &str, text: &str) -> Source {
        Source::new(name, text)
    }

    const POD: &str = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
        metadata: {name: web, namespace: shop, labels: {app: web}}\nspec: {cgroup: k/web, addresses: [10.1.0.5]}\n";
    const OTHER: &str = "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
        metadata: {name: api, namespace: blog, labels: {app: api}}\nspec: {cgroup: k/api, addresses: [10.2.0.5]}\n";

    fn np(ns: &str, selector: &str, cidr: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: {ns}}}\n\
             spec:\n  podSelector: {selector}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: {cidr}}}}}]\n"
        )
    }

    fn set(policy: &str) -> Vec<Source> {
        vec![
            api("kubernetes/pods/shop/web", POD),
            api("kubernetes/pods/blog/api", OTHER),
            api("kubernetes/networkpolicies/shop/p", policy),
        ]
    }

    fn verdict(o: &Outcome, who: &str, ip: &str) -> crate::compile::Verdict {
        let plan = crate::compile::compile(&o.loaded.model);
        let w = plan.workload(&who.parse().unwrap()).expect("workload");
        crate::compile::decide(
            &plan,
            w,
            crate::compile::Destination {
                ip: ip.parse().unwrap(),
                port: 80,
                protocol: egress_policy::ports::Protocol::Tcp,
            },
        )
        .verdict
    }

    #[test]
    fn a_bad_policy_without_a_good_version_denies_what_it_selects_and_nothing_else() {
        let bad = np("shop", "{matchLabels: {app: web}}", "10.0.0.0/33");
        let o = load(&[], &set(&bad), &HashMap::new()).expect("the rest loads");
        assert_eq!(o.quarantined.len(), 1);
        assert_eq!(o.quarantined[0].held, Held::DenyAll);
        assert!(
            o.quarantined[0].errors[0].contains("cidr"),
            "{:?}",
            o.quarantined
        );
        use crate::compile::Verdict;
        assert_eq!(verdict(&o, "shop/web", "10.0.0.1"), Verdict::Deny);
        assert_eq!(verdict(&o, "blog/api", "10.0.0.1"), Verdict::Allow);
    }

    #[test]
    fn a_bad_policy_keeps_its_last_good_version() {
        let good = np("shop", "{matchLabels: {app: web}}", "10.0.0.0/8");
        let first = load(&[], &set(&good), &HashMap::new()).expect("valid");
        assert!(first.quarantined.is_empty());
        let bad = np("shop", "{matchLabels: {app: web}}", "10.0.0.0/33");
        let o = load(&[], &set(&bad), &first.good).expect("the rest loads");
        assert_eq!(o.quarantined[0].held, Held::LastGood);
        use crate::compile::Verdict;
        assert_eq!(verdict(&o, "shop/web", "10.0.0.1"), Verdict::Allow);
        assert_eq!(verdict(&o, "shop/web", "192.0.2.1"), Verdict::Deny);
        assert!(!o
            .good
            .contains_key(Path::new("kubernetes/networkpolicies/shop/p")));
    }

    #[test]
    fn a_broken_selector_fails_closed_for_its_whole_namespace() {
        let bad = np(
            "shop",
            "{matchExpressions: [{key: app, operator: Nope}]}",
            "10.0.0.0/8",
        );
        let o = load(&[], &set(&bad), &HashMap::new()).expect("the rest loads");
        assert_eq!(o.quarantined[0].held, Held::DenyAll);
        use crate::compile::Verdict;
        assert_eq!(verdict(&o, "shop/web", "10.0.0.1"), Verdict::Deny);
        assert_eq!(verdict(&o, "blog/api", "10.0.0.1"), Verdict::Allow);
    }

    /// `name` in `ns`, selecting `selector`, allowing `ports` to 10/8.
    fn np_ports(ns: &str, name: &str, selector: &str, ports: &[u16]) -> String {
        let list: Vec<String> = ports.iter().map(|p| format!("{{port: {p}}}")).collect();
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec:\n  podSelector: {selector}\n  policyTypes: [Egress]\n  egress:\n\
             \x20 - to: [{{ipBlock: {{cidr: 10.0.0.0/8}}}}]\n    ports: [{}]\n",
            list.join(", ")
        )
    }

    /// `n` ports from `from`, every other one: nothing merges.
    fn spread(from: u16, n: u16) -> Vec<u16> {
        (0..n).map(|i| from + 2 * i).collect()
    }

    fn port_verdict(o: &Outcome, who: &str, port: u16) -> crate::compile::Verdict {
        let w = o.plan.workload(&who.parse().unwrap()).expect("workload");
        crate::compile::decide(
            &o.plan,
            w,
            crate::compile::Destination {
                ip: "10.0.0.1".parse().unwrap(),
                port,
                protocol: egress_policy::ports::Protocol::Tcp,
            },
        )
        .verdict
    }

    fn limit_set(shop: &str, blog: &str) -> Vec<Source> {
        vec![
            api("kubernetes/pods/shop/web", POD),
            api("kubernetes/pods/blog/api", OTHER),
            api("kubernetes/networkpolicies/shop/p", shop),
            api("kubernetes/networkpolicies/blog/q", blog),
        ]
    }

    #[test]
    fn a_policy_over_the_port_limit_keeps_its_last_good_version_and_others_go_on() {
        use crate::compile::Verdict::{Allow, Deny};
        let first = load(
            &[],
            &limit_set(
                &np_ports("shop", "p", "{}", &[80]),
                &np_ports("blog", "q", "{}", &[80]),
            ),
            &HashMap::new(),
        )
        .expect("valid");
        assert!(first.quarantined.is_empty());
        // shop/p grows to 129 separate ports, and blog/q changes at the
        // same time.
        let mut over = spread(1000, 129);
        over.push(80);
        let o = load(
            &[],
            &limit_set(
                &np_ports("shop", "p", "{}", &over),
                &np_ports("blog", "q", "{}", &[80, 443]),
            ),
            &first.good,
        )
        .expect("the rest loads");
        assert_eq!(o.quarantined.len(), 1, "{:?}", o.quarantined);
        let q = &o.quarantined[0];
        assert_eq!(q.source, "kubernetes/networkpolicies/shop/p");
        assert_eq!(q.held, Held::LastGood);
        assert_eq!(q.findings[0].field.as_deref(), Some("spec.egress[0].ports"));
        assert!(
            q.findings[0]
                .message
                .contains("130 (protocol, port) entries")
                && q.findings[0].message.contains("at most 128"),
            "{:?}",
            q.findings
        );
        assert_eq!(port_verdict(&o, "shop/web", 80), Allow, "its last good");
        assert_eq!(port_verdict(&o, "shop/web", 1000), Deny, "not the new one");
        assert_eq!(
            port_verdict(&o, "blog/api", 443),
            Allow,
            "the other tenant's change"
        );
        // With no good version, it denies what it selects and no more.
        let o = load(
            &[],
            &limit_set(
                &np_ports("shop", "p", "{}", &over),
                &np_ports("blog", "q", "{}", &[443]),
            ),
            &HashMap::new(),
        )
        .expect("the rest loads");
        assert_eq!(o.quarantined[0].held, Held::DenyAll);
        assert_eq!(port_verdict(&o, "shop/web", 80), Deny);
        assert_eq!(port_verdict(&o, "blog/api", 443), Allow);
    }

    #[test]
    fn when_two_policies_add_up_the_one_that_changed_is_quarantined() {
        use crate::compile::Verdict::{Allow, Deny};
        let set = |b: &[u16]| {
            vec![
                api("kubernetes/pods/shop/web", POD),
                api(
                    "kubernetes/networkpolicies/shop/a",
                    &np_ports("shop", "a", "{}", &spread(1000, 100)),
                ),
                api(
                    "kubernetes/networkpolicies/shop/b",
                    &np_ports("shop", "b", "{}", b),
                ),
            ]
        };
        let first = load(&[], &set(&[80]), &HashMap::new()).expect("valid");
        let o = load(&[], &set(&spread(5001, 40)), &first.good).expect("loads");
        assert_eq!(o.quarantined.len(), 1);
        assert_eq!(o.quarantined[0].source, "kubernetes/networkpolicies/shop/b");
        assert!(
            o.quarantined[0].errors[0].contains("with NetworkPolicy shop/a"),
            "{:?}",
            o.quarantined[0].errors
        );
        assert_eq!(port_verdict(&o, "shop/web", 1000), Allow, "a is untouched");
        assert_eq!(port_verdict(&o, "shop/web", 80), Allow, "b's last good");
        assert_eq!(port_verdict(&o, "shop/web", 5001), Deny);
    }

    #[test]
    fn a_pod_whose_new_labels_bring_it_over_is_the_one_held() {
        let pod = |labels: &str| {
            format!(
                "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
                 metadata: {{name: web, namespace: shop, labels: {labels}}}\nspec: {{cgroup: k/web}}\n"
            )
        };
        let set = |labels: &str| {
            vec![
                api("kubernetes/pods/shop/web", &pod(labels)),
                api(
                    "kubernetes/networkpolicies/shop/a",
                    &np_ports("shop", "a", "{matchLabels: {app: web}}", &spread(1000, 70)),
                ),
                api(
                    "kubernetes/networkpolicies/shop/b",
                    &np_ports("shop", "b", "{matchLabels: {tier: x}}", &spread(5001, 70)),
                ),
            ]
        };
        let first = load(&[], &set("{app: web}"), &HashMap::new()).expect("valid");
        let o = load(&[], &set("{app: web, tier: x}"), &first.good).expect("loads");
        assert_eq!(o.quarantined.len(), 1, "{:?}", o.quarantined);
        assert_eq!(o.quarantined[0].source, "kubernetes/pods/shop/web");
        assert_eq!(o.quarantined[0].held, Held::LastGood);
        assert_eq!(
            port_verdict(&o, "shop/web", 1000),
            crate::compile::Verdict::Allow
        );
    }

    #[test]
    fn the_operators_files_over_the_port_limit_reject_the_set() {
        let dir =
            std::env::temp_dir().join(format!("egress-quarantine-limit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("np.yaml"),
            np_ports("shop", "p", "{}", &spread(1000, 129)),
        )
        .unwrap();
        let rejected = match load(
            std::slice::from_ref(&dir),
            &[api("kubernetes/pods/shop/web", POD)],
            &HashMap::new(),
        ) {
            Ok(_) => panic!("the operator's policy is over the limit"),
            Err(r) => r,
        };
        assert!(
            rejected.diagnostics[0].to_string().contains("at most 128"),
            "{:?}",
            rejected.diagnostics
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_custom_resource_named_like_a_file_object_is_left_out_naming_both() {
        let dir =
            std::env::temp_dir().join(format!("egress-quarantine-clash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gateway = |cidr: &str| {
            format!(
                "apiVersion: egress.enforcer.dev/v1alpha1\nkind: EgressGateway\n\
                 metadata: {{name: gw, namespace: shop}}\n\
                 spec: {{selector: {{podSelector: {{matchLabels: {{app: web}}}}}}, clusterCIDRs: [{cidr}]}}\n"
            )
        };
        std::fs::write(dir.join("gw.yaml"), gateway("10.0.0.0/8")).unwrap();
        let cr = api("kubernetes/egressgateways/shop/gw", &gateway("10.1.0.0/16"));
        let o = load(
            std::slice::from_ref(&dir),
            &[api("kubernetes/pods/shop/web", POD), cr],
            &HashMap::new(),
        )
        .expect("the file's object stays in force");
        assert_eq!(o.quarantined.len(), 1, "{:?}", o.quarantined);
        let q = &o.quarantined[0];
        assert_eq!(
            (q.source.as_str(), q.held),
            ("kubernetes/egressgateways/shop/gw", Held::LeftOut)
        );
        let message = &q.findings[0].message;
        assert!(
            message.contains("duplicate EgressGateway shop/gw")
                && message.contains("gw.yaml")
                && message.contains("custom resource and a file"),
            "{message}"
        );
        assert_eq!(o.loaded.model.gateways.len(), 1);
        assert_eq!(
            o.loaded.model.gateways[0].cluster_cidrs[0].to_string(),
            "10.0.0.0/8"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn errors_in_the_operators_files_still_reject_the_set() {
        let dir = std::env::temp_dir().join(format!("egress-quarantine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.yaml"), "apiVersion: v1\nkind: Nope\n").unwrap();
        let good = np("shop", "{}", "10.0.0.0/8");
        assert!(load(std::slice::from_ref(&dir), &set(&good), &HashMap::new()).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
