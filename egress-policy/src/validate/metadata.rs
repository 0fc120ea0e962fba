//! What every object's metadata must satisfy, whatever its kind: a valid
//! name and namespace, no duplicate, and the label, annotation and
//! finalizer rules kube-apiserver applies.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Builder, Ctx};
use crate::{
    apimachinery::{
        finalizer_error, is_dns_label, is_dns_subdomain, label_value_error, qualified_name_error,
    },
    diagnostic::FieldPath,
    model::ObjectId,
};

impl Builder {
    /// Reads `metadata.name`/`namespace`, names the object in `ctx`, and
    /// refuses duplicates. Returns `None` when the object has no usable name.
    /// A duplicate is still validated (so all its errors are reported) but
    /// never enters the model, where it would trip cross-object checks.
    pub(super) fn identify(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        name: Option<&String>,
        namespace: Option<&String>,
        namespaced: bool,
    ) -> Option<ObjectId> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            self.diags.push(ctx.error(
                FieldPath::of(&["metadata", "name"]),
                "required: every object needs a name",
            ));
            return None;
        };
        let namespace = if namespaced {
            namespace
                .filter(|n| !n.is_empty())
                .cloned()
                .unwrap_or_else(|| "default".to_owned())
        } else {
            String::new()
        };
        ctx.object.name = name.clone();
        ctx.object.namespace = namespaced.then(|| namespace.clone());
        // As Kubernetes: a Namespace's name and every metadata.namespace are
        // DNS labels (no dots, at most 63); other names are DNS subdomains.
        let name_ok = if namespaced {
            is_dns_subdomain(name)
        } else {
            is_dns_label(name)
        };
        if !name_ok {
            self.diags.push(ctx.error(
                FieldPath::of(&["metadata", "name"]),
                if namespaced {
                    format!("{name:?} is not a valid Kubernetes name: a lower-case DNS subdomain (alphanumerics, '-' and '.', at most 253)")
                } else {
                    format!("{name:?} is not a valid Kubernetes name for a namespace: a lower-case DNS label (alphanumerics and '-', at most 63)")
                },
            ));
        }
        if namespaced && !is_dns_label(&namespace) {
            self.diags.push(ctx.error(
                FieldPath::of(&["metadata", "namespace"]),
                format!("{namespace:?} is not a valid Kubernetes name for a namespace: a lower-case DNS label (alphanumerics and '-', at most 63)"),
            ));
        }
        let key = (ctx.object.kind.clone(), namespace.clone(), name.clone());
        let here = (Arc::clone(ctx.doc.file), ctx.doc.locate(&FieldPath::root()));
        if let Some((file, loc)) = self.seen.get(&key) {
            let at = match loc {
                Some(l) => format!("{}:{}", file.display(), l.line),
                None => file.display().to_string(),
            };
            // Files are loaded before API objects, so a custom resource
            // named like a file's object is the one found second.
            let api = |f: &Path| f.starts_with("kubernetes");
            let hint = if api(ctx.doc.file) && !api(file) {
                "; a custom resource and a file of --policies cannot share a name: \
                 the file's object stays in force and this custom resource is left out \
                 (rename one, or delete one)"
            } else {
                ""
            };
            self.diags.push(ctx.error(
                FieldPath::of(&["metadata", "name"]),
                format!(
                    "duplicate {} {}: already defined at {at}{hint}",
                    ctx.object.kind,
                    ctx.object_label()
                ),
            ));
            self.keep = false;
        } else {
            self.keep = true;
            self.seen.insert(key, here);
        }
        Some(ObjectId::new(namespace, name.clone()))
    }

    /// What kube-apiserver checks in every object's metadata besides its
    /// name: label keys and values, annotation keys, finalizers.
    pub(super) fn metadata(&mut self, ctx: &Ctx<'_, '_>, meta: &ObjectMeta) {
        let path = FieldPath::of(&["metadata"]);
        self.labels(ctx, meta.labels.as_ref(), path.key("labels"));
        for key in meta.annotations.iter().flatten().map(|(k, _)| k) {
            // Kubernetes checks annotation keys lower-cased.
            if let Some(err) = qualified_name_error(&key.to_lowercase()) {
                self.diags
                    .push(ctx.error(path.key("annotations").key(key.clone()), err));
            }
        }
        self.finalizers(ctx, meta.finalizers.as_deref(), path.key("finalizers"));
    }

    pub(super) fn finalizers(
        &mut self,
        ctx: &Ctx<'_, '_>,
        names: Option<&[String]>,
        path: FieldPath,
    ) {
        for (i, name) in names.into_iter().flatten().enumerate() {
            if let Some(err) = finalizer_error(name) {
                self.diags.push(ctx.error(path.index(i), err));
            }
        }
    }

    /// Label keys must be qualified names and values label values, in
    /// metadata and in `matchLabels` alike.
    pub(super) fn labels(
        &mut self,
        ctx: &Ctx<'_, '_>,
        labels: Option<&BTreeMap<String, String>>,
        path: FieldPath,
    ) -> bool {
        let mut ok = true;
        for (key, value) in labels.into_iter().flatten() {
            let error = qualified_name_error(key).or_else(|| label_value_error(value));
            if let Some(err) = error {
                self.diags.push(ctx.error(path.key(key.clone()), err));
                ok = false;
            }
        }
        ok
    }
}
