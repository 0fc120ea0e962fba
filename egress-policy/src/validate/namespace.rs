//! `v1 Namespace`: its labels, with the name label Kubernetes adds.

use k8s_openapi::api::core::v1::Namespace as K8sNamespace;

use super::{Builder, Ctx, NAMESPACE_NAME_LABEL};
use crate::{diagnostic::FieldPath, model::Namespace, objects};

impl Builder {
    pub(super) fn namespace(&mut self, ctx: &mut Ctx<'_, '_>, ns: K8sNamespace) {
        let Some(id) = self.identify(ctx, ns.metadata.name.as_ref(), None, false) else {
            return;
        };
        self.metadata(ctx, &ns.metadata);
        let finalizers = ns.spec.as_ref().and_then(|s| s.finalizers.as_deref());
        self.finalizers(ctx, finalizers, FieldPath::of(&["spec", "finalizers"]));
        let mut labels = objects::string_map(&ns.metadata.labels);
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), id.name.clone());
        if !self.keep {
            return;
        }
        self.model.namespaces.insert(
            id.name.clone(),
            Namespace {
                name: id.name,
                labels,
                declared: true,
            },
        );
    }
}
