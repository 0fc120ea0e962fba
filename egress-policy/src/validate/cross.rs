//! Cross-object checks, once every document is parsed: undeclared
//! namespaces, resources two workloads share, workloads two gateways or
//! redirects claim, and selectors that match nothing.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use super::{Builder, Loaded, NAMESPACE_NAME_LABEL};
use crate::{
    diagnostic::{Diagnostic, FieldPath, Location, ObjectRef},
    model::{Namespace, ObjectId, Workload},
    source::Document,
};

impl Builder {
    /// Cross-object checks, once everything is parsed.
    pub(super) fn finish(mut self, docs: &[Document<'_>]) -> Result<Loaded, crate::Rejected> {
        // Namespaces that workloads live in but nobody declared.
        for w in &self.model.workloads {
            let name = w.id.namespace.clone();
            self.model
                .namespaces
                .entry(name.clone())
                .or_insert_with(|| Namespace {
                    labels: BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), name.clone())]),
                    name,
                    declared: false,
                });
        }
        self.unique_workload_resources();
        self.exclusive_claims();
        self.hosts_from_service_entries();
        for use_ in std::mem::take(&mut self.selector_uses) {
            if self.model.select(&use_.selector).next().is_none() {
                let doc = &docs[use_.doc];
                self.diags.push(
                    Diagnostic::warning(doc.file, use_.what)
                        .at(doc.locate(&use_.field))
                        .on(&use_.object)
                        .field(use_.field),
                );
            }
        }
        let has_errors = self.diags.has_errors();
        let mut diagnostics = self.diags.into_vec();
        diagnostics.sort_by(|a, b| {
            (&a.file, a.location, b.severity).cmp(&(&b.file, b.location, a.severity))
        });
        if has_errors {
            return Err(crate::Rejected { diagnostics });
        }
        Ok(Loaded {
            model: self.model,
            warnings: diagnostics,
        })
    }

    /// Two workloads must not share a cgroup or an address: the data plane
    /// keys on both, and a shared key would give one workload the other's
    /// policy.
    fn unique_workload_resources(&mut self) {
        let mut cgroups: HashMap<&str, &Workload> = HashMap::new();
        let mut addresses: HashMap<IpAddr, &Workload> = HashMap::new();
        for w in &self.model.workloads {
            let object = ObjectRef {
                kind: "Workload".into(),
                namespace: Some(w.id.namespace.clone()),
                name: w.id.name.clone(),
            };
            let diag = |field: FieldPath, msg: String| {
                Diagnostic::error(&w.origin.file, msg)
                    .at(w.origin.line.map(|line| Location { line, column: 1 }))
                    .on(&object)
                    .field(field)
            };
            // Only this node's workloads are keyed by the data plane; a
            // peer elsewhere may briefly share an address with one that
            // replaced it (a pod moved), which must not reject the set.
            let Some(cgroup) = &w.cgroup else {
                continue;
            };
            if let Some(first) = cgroups.insert(cgroup.trim_matches('/'), w) {
                self.diags.push(diag(
                    FieldPath::of(&["spec", "cgroup"]),
                    format!("cgroup {cgroup:?} is already Workload {}'s", first.id),
                ));
            }
            for (i, addr) in w.addresses.iter().enumerate() {
                if let Some(first) = addresses.insert(*addr, w) {
                    if first.id != w.id {
                        self.diags.push(diag(
                            FieldPath::of(&["spec", "addresses"]).index(i),
                            format!("address {addr} is already Workload {}'s", first.id),
                        ));
                    }
                }
            }
        }
    }

    /// A workload belongs to at most one gateway and one redirect: two
    /// claims would leave its verdict to load order.
    fn exclusive_claims(&mut self) {
        let model = &self.model;
        let mut conflicts = Vec::new();
        for (kind, claims) in [
            (
                "EgressGateway",
                model
                    .gateways
                    .iter()
                    .map(|g| (&g.id, &g.selector))
                    .collect::<Vec<_>>(),
            ),
            (
                "Redirect",
                model
                    .redirects
                    .iter()
                    .map(|r| (&r.id, &r.capture))
                    .collect::<Vec<_>>(),
            ),
        ] {
            let mut owner: HashMap<&ObjectId, &ObjectId> = HashMap::new();
            for (id, selector) in claims {
                for w in model.select(selector) {
                    if let Some(first) = owner.insert(&w.id, id) {
                        conflicts.push((kind, id.clone(), w.id.clone(), first.clone()));
                    }
                }
            }
        }
        for (kind, id, workload, first) in conflicts {
            if let Some(base) = self.locations.get(&(kind, id)) {
                let mut d = base.clone();
                d.message = format!("workload {workload} is already claimed by {kind} {first}");
                self.diags.push(d);
            }
        }
    }
}
