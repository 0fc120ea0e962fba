//! Pods stuck pending: counted, named and timed for `status` and
//! `/metrics`.
//!
//! A pod is pending when its `pod<uid>` cgroup sits below a guarded root
//! and no workload of the generation in force covers it: the kernel then
//! gives it the pending policy (loopback and cluster DNS only), with no
//! agent round trip (see `compile::guard`). That is normal for the few
//! milliseconds between the kubelet's `mkdir` and the agent's next apply;
//! a pod that stays pending has a reason the operator must see: its Pod
//! object is not known, its sidecar has not started, or the object was
//! quarantined. Only the cgroup tree says which pods are there, so the
//! guarded roots are walked (the same bounded walk as Kubernetes mode's),
//! and compared with the plan in force, not with what the agent meant to
//! apply.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use crate::{
    compile::{Guard, Plan},
    dataplane::cgroup_relative,
    inventory::Waiting,
    kubernetes::cgroups,
    observe::status::PendingPod,
};

/// Remembers since when each pending pod has been seen pending.
#[derive(Debug, Default)]
pub struct PendingTracker {
    /// The cgroup2 mount; looked up at the first refresh when `None`.
    mount: Option<PathBuf>,
    /// Pod cgroup (relative to the mount) → first seen pending.
    since: BTreeMap<String, Instant>,
}

impl PendingTracker {
    /// A tracker for the cgroup2 hierarchy mounted at `mount`.
    pub fn at(mount: impl Into<PathBuf>) -> Self {
        Self {
            mount: Some(mount.into()),
            since: BTreeMap::new(),
        }
    }

    /// The pods below `guarded` (roots relative to the mount) that no
    /// workload of `plan` (the plan in force, `None` before the first)
    /// covers, oldest first. `waiting` names the Pods of this node that
    /// the Kubernetes watch could not enforce yet, by UID.
    pub fn refresh(
        &mut self,
        guarded: &[String],
        plan: Option<&Plan>,
        waiting: &BTreeMap<String, Waiting>,
        now: Instant,
    ) -> Vec<PendingPod> {
        if guarded.is_empty() {
            self.since.clear();
            return Vec::new();
        }
        if self.mount.is_none() {
            self.mount = crate::sys::cgroup2_mount().ok();
        }
        let Some(mount) = self.mount.as_deref() else {
            return Vec::new();
        };
        let covered = covered(mount, plan);
        let mut found: BTreeMap<String, String> = BTreeMap::new();
        for root in guarded {
            let index = cgroups::scan(mount, root, cgroups::MAX_DEPTH);
            for (uid, dir) in index.pods {
                if !is_covered(&dir, &covered) {
                    found.insert(dir, uid);
                }
            }
        }
        self.since.retain(|dir, _| found.contains_key(dir));
        let mut pending: Vec<(Instant, PendingPod)> = found
            .into_iter()
            .map(|(dir, uid)| {
                let since = *self.since.entry(dir.clone()).or_insert(now);
                let known = waiting.get(&uid);
                let reason = match (known, plan) {
                    (Some(w), _) => w.why.to_owned(),
                    (None, None) => "no policy applied yet".to_owned(),
                    (None, Some(_)) => "no workload of the policy in force has this cgroup (its Pod is not known yet, or quarantined)".to_owned(),
                };
                let pod = PendingPod {
                    cgroup: dir,
                    pod: known.map(|w| w.pod.to_string()),
                    uid,
                    reason,
                    seconds: now.saturating_duration_since(since).as_secs(),
                };
                (since, pod)
            })
            .collect();
        pending.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cgroup.cmp(&b.1.cgroup)));
        pending.into_iter().map(|(_, p)| p).collect()
    }
}

/// The cgroups (relative to the mount) that have a policy of their own:
/// every workload and exempt entry of the plan, not the pending roots.
fn covered(mount: &Path, plan: Option<&Plan>) -> Vec<String> {
    plan.map(|p| {
        p.workloads
            .iter()
            .filter(|w| w.guard != Some(Guard::Pending))
            .map(|w| cgroup_relative(mount, &w.cgroup))
            .collect()
    })
    .unwrap_or_default()
}

/// A pod is covered when a workload sits at its cgroup or below it (a
/// sidecar's container): its processes then have a policy of their own.
fn is_covered(dir: &str, covered: &[String]) -> bool {
    covered.iter().any(|c| {
        c == dir
            || c.strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::compile::{self, Guards};
    use egress_policy::{model::ObjectId, Source};

    const KNOWN: &str = "0b6a3c1e-8a52-4f1e-9c1a-2f4d5e6a7b8c";
    const NEW: &str = "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a";
    const SIDECAR: &str = "a9e1f6c2-7d3b-4c5a-8e9f-0a1b2c3d4e5f";

    fn plan(cgroups: &[&str]) -> Plan {
        let docs: Vec<Source> = cgroups
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Source::new(
                    format!("w{i}.yaml"),
                    format!(
                        "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
                         metadata: {{name: w{i}, namespace: shop}}\nspec: {{cgroup: {c}}}\n"
                    ),
                )
            })
            .collect();
        let loaded = egress_policy::load_sources(&docs).expect("valid");
        compile::compile(&loaded.model).guarded(&Guards {
            pending: vec!["kubepods".into()],
            exempt: Vec::new(),
        })
    }

    #[test]
    fn pod_cgroups_without_a_policy_of_their_own_are_pending_and_timed() {
        let mount = std::env::temp_dir().join(format!("egress-pending-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&mount);
        for uid in [KNOWN, NEW, SIDECAR] {
            std::fs::create_dir_all(mount.join(format!("kubepods/burstable/pod{uid}/ctr")))
                .expect("mkdir");
        }
        // Outside the guarded root: not pending, whatever it is.
        std::fs::create_dir_all(mount.join(format!("elsewhere/pod{NEW}"))).expect("mkdir");
        let guarded = vec!["kubepods".to_owned()];
        let mut tracker = PendingTracker::at(&mount);
        let waiting = BTreeMap::from([(
            SIDECAR.to_owned(),
            Waiting {
                pod: ObjectId::new("shop", "mesh"),
                why: "sidecar container not started yet",
            },
        )]);
        let t0 = Instant::now();

        // Before any policy, every pod is pending.
        let all = tracker.refresh(&guarded, None, &waiting, t0);
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all.iter().any(|p| p.reason == "no policy applied yet"));

        // The known pod's own cgroup, and a workload on a container of
        // another: both covered. The sidecar pod is still waiting.
        let applied = plan(&[
            &format!("kubepods/burstable/pod{KNOWN}"),
            &format!("/kubepods/burstable/pod{NEW}/ctr"),
        ]);
        let later = t0 + Duration::from_secs(7);
        let pending = tracker.refresh(&guarded, Some(&applied), &waiting, later);
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].uid, SIDECAR);
        assert_eq!(pending[0].pod.as_deref(), Some("shop/mesh"));
        assert_eq!(pending[0].reason, "sidecar container not started yet");
        assert_eq!(pending[0].seconds, 7, "timed from when it was first seen");

        // Without the Pod's name, it still counts.
        let pending = tracker.refresh(&guarded, Some(&applied), &BTreeMap::new(), later);
        assert_eq!(pending.len(), 1);
        assert!(pending[0].reason.contains("not known yet, or quarantined"));
        std::fs::remove_dir_all(&mount).ok();
    }

    #[test]
    fn a_cgroup_that_only_shares_a_prefix_is_not_covered() {
        let covered = vec!["kubepods/pod-ab".to_owned()];
        assert!(!is_covered("kubepods/pod-a", &covered));
        assert!(is_covered("kubepods/pod-ab", &covered));
        assert!(is_covered("kubepods", &["kubepods/x".to_owned()]));
    }
}
