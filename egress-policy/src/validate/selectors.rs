//! Label selectors (Kubernetes' `matchLabels` / `matchExpressions`) and the
//! workload selectors built from them.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{Builder, Ctx};
use crate::{
    apimachinery::qualified_name_error,
    diagnostic::FieldPath,
    model::{NamespaceScope, ObjectId, WorkloadSelector},
    objects::WorkloadSelectorSpec,
    selector::{Requirement, Selector},
};

impl Builder {
    pub(super) fn workload_selector(
        &mut self,
        ctx: &Ctx<'_, '_>,
        owner: &ObjectId,
        spec: &WorkloadSelectorSpec,
        path: FieldPath,
    ) -> Option<WorkloadSelector> {
        let namespaces = match &spec.namespace_selector {
            Some(sel) => NamespaceScope::Selected(self.selector(
                ctx,
                Some(sel),
                path.key("namespaceSelector"),
            )?),
            None => NamespaceScope::Own(owner.namespace.clone()),
        };
        let pods = self.selector(ctx, spec.pod_selector.as_ref(), path.key("podSelector"))?;
        Some(WorkloadSelector { namespaces, pods })
    }

    /// Converts a Kubernetes label selector; absent means everything.
    pub(super) fn selector(
        &mut self,
        ctx: &Ctx<'_, '_>,
        sel: Option<&LabelSelector>,
        path: FieldPath,
    ) -> Option<Selector> {
        let Some(sel) = sel else {
            return Some(Selector::everything());
        };
        let mut requirements = Vec::new();
        let mut ok = self.labels(ctx, sel.match_labels.as_ref(), path.key("matchLabels"));
        for (key, value) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals {
                key: key.clone(),
                value: value.clone(),
            });
        }
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let e_path = path.key("matchExpressions").index(i);
            let key = expr.key.clone();
            // Kubernetes 1.20 checks the key, not the values.
            if let Some(err) = qualified_name_error(&key) {
                self.diags.push(ctx.error(e_path.key("key"), err));
                ok = false;
            }
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let needs_values = matches!(expr.operator.as_str(), "In" | "NotIn");
            if !needs_values && !matches!(expr.operator.as_str(), "Exists" | "DoesNotExist") {
                self.diags.push(ctx.error(
                    e_path.key("operator"),
                    format!(
                        "unknown operator {:?} (expected In, NotIn, Exists or DoesNotExist)",
                        expr.operator
                    ),
                ));
                ok = false;
                continue;
            }
            if needs_values && values.is_empty() {
                self.diags.push(ctx.error(
                    e_path.key("values"),
                    format!("operator {} needs at least one value", expr.operator),
                ));
                ok = false;
                continue;
            }
            if !needs_values && !values.is_empty() {
                self.diags.push(ctx.error(
                    e_path.key("values"),
                    format!("operator {} takes no values", expr.operator),
                ));
                ok = false;
                continue;
            }
            requirements.push(match expr.operator.as_str() {
                "In" => Requirement::In { key, values },
                "NotIn" => Requirement::NotIn { key, values },
                "Exists" => Requirement::Exists { key },
                _ => Requirement::DoesNotExist { key },
            });
        }
        ok.then(|| Selector::new(requirements))
    }
}
