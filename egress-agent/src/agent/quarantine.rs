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
//! The operator's own files are not quarantined: an error there rejects
//! the whole set, as before, and the previous generation stays in force.

use std::{collections::HashMap, path::Path, sync::Arc};

// `Held` and `Quarantined` are what `status` reports, so they live with the
// status types in `observe`, which must not depend on the agent.
pub use crate::observe::status::{Held, Quarantined};
use crate::policy::{self, Diagnostic, Loaded, Rejected, Source};

/// A successful load, with what was quarantined to get there.
pub struct Outcome {
    pub loaded: Loaded,
    pub quarantined: Vec<Quarantined>,
    /// The API objects that loaded as they are: the next last good set.
    pub good: HashMap<Arc<Path>, Source>,
}

/// Rounds of quarantining before giving up: a stand-in can fail once (a
/// broken selector), and removing an object can expose a cross-object
/// error in another.
const ROUNDS: usize = 4;

/// Loads `paths` with the API objects `sources`, quarantining those with
/// errors (see the module doc). `last_good` is the previous
/// [`Outcome::good`].
pub fn load(
    paths: &[std::path::PathBuf],
    sources: &[Source],
    last_good: &HashMap<Arc<Path>, Source>,
) -> Result<Outcome, Rejected> {
    let mut current: Vec<Source> = sources.to_vec();
    let mut quarantined: Vec<Quarantined> = Vec::new();
    for round in 0..=ROUNDS {
        let rejected = match policy::load_with(paths, &current) {
            Ok(loaded) => {
                let bad: Vec<&str> = quarantined.iter().map(|q| q.source.as_str()).collect();
                let good = sources
                    .iter()
                    .filter(|s| !bad.contains(&s.file.to_string_lossy().as_ref()))
                    .map(|s| (Arc::clone(&s.file), s.clone()))
                    .collect();
                return Ok(Outcome {
                    loaded,
                    quarantined,
                    good,
                });
            }
            Err(rejected) => rejected,
        };
        let errors: Vec<&Diagnostic> = rejected
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .collect();
        let from_api = |d: &&Diagnostic| current.iter().any(|s| s.file == d.file);
        // An error in the operator's own files, or no progress possible:
        // the whole set is rejected.
        if round == ROUNDS || errors.is_empty() || !errors.iter().all(from_api) {
            return Err(rejected);
        }
        let mut by_file: Vec<(Arc<Path>, Vec<&Diagnostic>)> = Vec::new();
        for d in errors {
            match by_file.iter_mut().find(|(f, _)| *f == d.file) {
                Some((_, list)) => list.push(d),
                None => by_file.push((Arc::clone(&d.file), vec![d])),
            }
        }
        for (file, diagnostics) in by_file {
            let name = file.to_string_lossy().into_owned();
            let index = current
                .iter()
                .position(|s| s.file == file)
                .expect("errors come from a current source");
            let already = quarantined.iter().position(|q| q.source == name);
            let (held, replacement) = match (already, last_good.get(&file)) {
                // A stand-in that fails again: its selector was the problem.
                (Some(_), _) => (Held::DenyAll, stand_in(&current[index], false)),
                (None, Some(good)) if *good != current[index] => {
                    (Held::LastGood, Some(good.clone()))
                }
                (None, _) => (Held::DenyAll, stand_in(&current[index], true)),
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
            let entry = Quarantined {
                source: name,
                object: diagnostics.iter().find_map(|d| d.object.clone()),
                held,
                errors: diagnostics.iter().map(ToString::to_string).collect(),
            };
            match already {
                Some(i) => quarantined[i].held = entry.held,
                None => quarantined.push(entry),
            }
        }
    }
    unreachable!("the last round returns")
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
                protocol: policy::ports::Protocol::Tcp,
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
