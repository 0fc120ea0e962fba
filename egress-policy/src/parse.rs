//! Typed parsing of one YAML document, reporting every unknown field and the
//! path and line of any type error.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    hash::{BuildHasher as _, RandomState},
};

use serde::de::DeserializeOwned;

use super::{
    diagnostic::{Diagnostic, Diagnostics, FieldPath, Location, ObjectRef, Segment},
    source::{self, Document, Layout, Source},
    yaml11,
};

/// Typed parses of the documents that parsed without a finding, by their
/// text: a reload reads every source again, and without this, one changed
/// object out of a thousand costs a thousand YAML parses. Only documents
/// of up to [`ParseCache::MAX_TEXT`] bytes are kept: the typed parse of a
/// policy of 100k CIDRs takes about 30 MiB, which would stay in memory
/// beside the model to save its parse (about 0.4 s) only when some other
/// object changes (measured: a new pod beside it 769 → 360 ms, steady RSS
/// 34 → 66 MiB; the memory is the scarcer of the two on every node).
///
/// A document with any finding is parsed every time, so that its findings
/// are reported, at their place in the file, on every load. An entry not
/// used by the last load is dropped ([`ParseCache::end`]): the cache holds
/// at most what is in force.
#[derive(Default)]
pub struct ParseCache {
    by_type: HashMap<TypeId, HashMap<Box<str>, Cached>>,
    /// Each source's documents, by a digest of its text: splitting a
    /// source walks all of its YAML, as much as a fifth of parsing it.
    /// A digest rather than the text, which would double what a large
    /// file costs: 128 bits of two SipHashes under this process's own
    /// random keys, which no one can aim a collision at.
    layouts: HashMap<u128, (Layout, u64)>,
    keys: (RandomState, RandomState),
    load: u64,
}

struct Cached {
    value: Box<dyn Any + Send + Sync>,
    /// The load that last used it.
    load: u64,
}

impl ParseCache {
    /// The largest document text whose typed parse is kept.
    pub const MAX_TEXT: usize = 64 * 1024;

    /// Starts a load: what it does not use is dropped at its [`end`].
    ///
    /// [`end`]: ParseCache::end
    pub fn begin(&mut self) {
        self.load += 1;
    }

    /// Ends a load, dropping what it did not use.
    pub fn end(&mut self) {
        let load = self.load;
        self.layouts.retain(|_, (_, used)| *used == load);
        for entries in self.by_type.values_mut() {
            entries.retain(|_, cached| cached.load == load);
        }
        self.by_type.retain(|_, entries| !entries.is_empty());
    }

    /// Documents kept.
    pub fn len(&self) -> usize {
        self.by_type.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The documents of `source`, from the last load's split of the same
    /// text when there is one.
    pub fn documents<'a>(
        &mut self,
        source: &'a Source,
    ) -> Result<Vec<Document<'a>>, Box<Diagnostic>> {
        let digest = self.digest(&source.text);
        let load = self.load;
        if let Some((layout, used)) = self.layouts.get_mut(&digest) {
            *used = load;
            return Ok(layout.documents(source));
        }
        let docs = source::documents(source)?;
        self.layouts
            .insert(digest, (Layout::of(source, &docs), load));
        Ok(docs)
    }

    fn digest(&self, text: &str) -> u128 {
        let (a, b) = (&self.keys.0, &self.keys.1);
        (u128::from(a.hash_one(text)) << 64) | u128::from(b.hash_one(text))
    }

    fn get<T: Clone + 'static>(&mut self, text: &str) -> Option<T> {
        let load = self.load;
        let cached = self.by_type.get_mut(&TypeId::of::<T>())?.get_mut(text)?;
        cached.load = load;
        cached.value.downcast_ref::<T>().cloned()
    }

    fn put<T: Send + Sync + 'static>(&mut self, text: &str, value: T) {
        let load = self.load;
        self.by_type.entry(TypeId::of::<T>()).or_default().insert(
            text.into(),
            Cached {
                value: Box::new(value),
                load,
            },
        );
    }
}

/// [`typed_uncached`], answered from `cache` for a document parsed before
/// without a finding.
pub fn typed<T: DeserializeOwned + Clone + Send + Sync + 'static>(
    doc: &Document<'_>,
    object: &ObjectRef,
    diags: &mut Diagnostics,
    cache: &mut ParseCache,
) -> Option<T> {
    let kept = doc.text.len() <= ParseCache::MAX_TEXT;
    if kept {
        if let Some(value) = cache.get::<T>(doc.text) {
            return Some(value);
        }
    }
    let findings = diags.len();
    let value = typed_uncached::<T>(doc, object, diags)?;
    if kept && diags.len() == findings {
        cache.put(doc.text, value.clone());
    }
    Some(value)
}

/// Deserializes `doc` as `T`, reading it as kubectl does (see
/// [`yaml11`]): YAML 1.1 scalars, then a strict decode of the JSON. Unknown
/// fields are errors (a typo such as `podSelecter` must not silently widen
/// a policy) but do not stop the parse, so all of them are reported
/// together.
fn typed_uncached<T: DeserializeOwned>(
    doc: &Document<'_>,
    object: &ObjectRef,
    diags: &mut Diagnostics,
) -> Option<T> {
    let converted = match yaml11::to_json(doc.text) {
        Ok(converted) => converted,
        Err(err) => {
            let marker = err.marker();
            diags.push(
                Diagnostic::error(doc.file, err.info().to_owned())
                    .at(Some(doc.shift(Location {
                        line: marker.line(),
                        column: marker.col() + 1,
                    })))
                    .on(object),
            );
            return None;
        }
    };
    let mut fatal = false;
    for problem in &converted.problems {
        fatal |= problem.fatal;
        let diagnostic = if problem.fatal {
            Diagnostic::error(doc.file, problem.message.clone())
        } else {
            Diagnostic::warning(doc.file, problem.message.clone())
        };
        diags.push(
            diagnostic
                .at(doc.locate(&problem.path))
                .on(object)
                .field(problem.path.clone()),
        );
    }
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let de = serde_path_to_error::Deserializer::new(converted.value, &mut track);
        serde_ignored::deserialize(de, |path| unknown.push(ignored_path(&path)))
    };
    for field in unknown {
        let name = match field.segments().last() {
            Some(Segment::Key(key)) => key.clone(),
            _ => field.to_string(),
        };
        diags.push(
            Diagnostic::error(doc.file, format!("unknown field `{name}`"))
                .at(doc.locate(&field))
                .on(object)
                .field(field),
        );
    }
    let typed_at = |field: &FieldPath| converted.typed.iter().find(|t| &t.path == field);
    match result {
        Ok(value) if !fatal => {
            // What a reader may not expect kubectl (and so the agent) to
            // make of what they wrote: `0120` is 80, `yes` is true.
            for typed in converted.typed.iter().filter(|t| t.is_surprising()) {
                diags.push(
                    Diagnostic::warning(
                        doc.file,
                        format!(
                            "`{}` is {} in YAML 1.1, as kubectl reads it, and is enforced so; \
                             write it that way, or quote it for a string",
                            typed.written,
                            typed.describe()
                        ),
                    )
                    .at(doc.locate(&typed.path))
                    .on(object)
                    .field(typed.path.clone()),
                );
            }
            Some(value)
        }
        Ok(_) => None,
        Err(err) => {
            let field = tracked_path(&track.path());
            let mut message = err.to_string();
            if let Some(typed) = typed_at(&field) {
                message = if message.contains("expected a string") {
                    format!(
                        "unquoted, `{}` is {} to kubectl (YAML 1.1), where Kubernetes \
                         expects a string: quote it",
                        typed.written,
                        typed.kind()
                    )
                } else {
                    format!(
                        "{message} (unquoted, `{}` is {} to kubectl, which reads YAML 1.1)",
                        typed.written,
                        typed.describe()
                    )
                };
            }
            let location = yaml11::value_location(doc.text, &field)
                .map(|(line, column)| doc.shift(Location { line, column }))
                .or_else(|| doc.locate(&field));
            diags.push(
                Diagnostic::error(doc.file, message)
                    .at(location)
                    .on(object)
                    .field(field),
            );
            None
        }
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> FieldPath {
    use serde_ignored::Path;
    match path {
        Path::Root => FieldPath::root(),
        Path::Seq { parent, index } => ignored_path(parent).index(*index),
        Path::Map { parent, key } => ignored_path(parent).key(key.clone()),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

fn tracked_path(path: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment as S;
    let mut out = FieldPath::root();
    for segment in path.iter() {
        match segment {
            S::Seq { index } => out.push(Segment::Index(*index)),
            S::Map { key } => out.push(Segment::Key(key.clone())),
            S::Enum { .. } | S::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::{load_sources, load_sources_cached, ParseCache, Source};

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
        metadata: {name: web, namespace: prod}\nspec:\n  podSelector: {}\n  \
        policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8}\n";
    /// `ports: [{port: 0120}]`: 80 in YAML 1.1, which is worth a warning.
    const SURPRISING: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
        metadata: {name: odd, namespace: prod}\nspec:\n  podSelector: {}\n  \
        policyTypes: [Egress]\n  egress:\n  - ports: [{port: 0120}]\n";

    fn sources(texts: &[&str]) -> Vec<Source> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| Source::new(format!("p{i}.yaml"), *text))
            .collect()
    }

    #[test]
    fn a_cached_load_gives_the_model_and_findings_of_an_uncached_one() {
        let set = sources(&[POLICY, SURPRISING]);
        let mut cache = ParseCache::default();
        for _ in 0..3 {
            let cached = load_sources_cached(&set, &mut cache).expect("valid");
            let fresh = load_sources(&set).expect("valid");
            assert_eq!(format!("{:?}", cached.model), format!("{:?}", fresh.model));
            // The warning is about the document itself, so that document
            // is parsed, and warned about, on every load.
            let yaml11 = cached
                .warnings
                .iter()
                .filter(|w| w.to_string().contains("`0120`"));
            assert_eq!(yaml11.count(), 1, "{:?}", cached.warnings);
            assert_eq!(
                cached
                    .warnings
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                fresh
                    .warnings
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            );
            assert_eq!(cache.len(), 1, "only the document without a finding");
        }
    }

    #[test]
    fn what_the_last_load_did_not_use_is_dropped() {
        let mut cache = ParseCache::default();
        load_sources_cached(&sources(&[POLICY]), &mut cache).expect("valid");
        assert_eq!(cache.len(), 1);
        let changed = POLICY.replace("10.0.0.0/8", "10.1.0.0/16");
        let loaded = load_sources_cached(&sources(&[&changed]), &mut cache).expect("valid");
        assert!(format!("{:?}", loaded.model).contains("10.1.0.0/16"));
        assert_eq!(cache.len(), 1, "the old text's parse went with it");
    }

    #[test]
    fn findings_in_a_later_document_keep_their_line_when_the_split_is_cached() {
        let file = format!("{POLICY}---\n{SURPRISING}");
        let set = sources(&[&file]);
        let fresh = load_sources(&set).expect("valid");
        let lines = |w: &[crate::Diagnostic]| -> Vec<String> {
            w.iter().map(|d| format!("{:?} {d}", d.location)).collect()
        };
        let mut cache = ParseCache::default();
        for _ in 0..2 {
            let cached = load_sources_cached(&set, &mut cache).expect("valid");
            assert_eq!(lines(&cached.warnings), lines(&fresh.warnings));
        }
        let yaml11 = fresh
            .warnings
            .iter()
            .find(|w| w.to_string().contains("`0120`"))
            .expect("the YAML 1.1 warning");
        assert_eq!(yaml11.location.map(|l| l.line), Some(18), "{yaml11}");
    }

    #[test]
    fn a_document_larger_than_the_limit_is_not_kept() {
        let mut big = POLICY.to_owned();
        while big.len() <= ParseCache::MAX_TEXT {
            big.push_str("    - ipBlock: {cidr: 10.0.0.0/8}\n");
        }
        let mut cache = ParseCache::default();
        load_sources_cached(&sources(&[&big]), &mut cache).expect("valid");
        assert!(cache.is_empty());
    }
}
