//! Typed parsing of one YAML document, reporting every unknown field and the
//! path and line of any type error.

use serde::de::DeserializeOwned;

use super::{
    diagnostic::{Diagnostic, Diagnostics, FieldPath, Location, ObjectRef, Segment},
    source::Document,
};

/// Deserializes `doc` as `T`. Unknown fields are errors (a typo such as
/// `podSelecter` must not silently widen a policy) but do not stop the parse,
/// so all of them are reported together.
pub fn typed<T: DeserializeOwned>(
    doc: &Document<'_>,
    object: &ObjectRef,
    diags: &mut Diagnostics,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let de = serde_yaml::Deserializer::from_str(doc.text);
        let de = serde_path_to_error::Deserializer::new(de, &mut track);
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
    match result {
        Ok(value) => Some(value),
        Err(err) => {
            let field = tracked_path(&track.path());
            let location = err
                .location()
                .map(|l| {
                    doc.shift(Location {
                        line: l.line(),
                        column: l.column(),
                    })
                })
                .or_else(|| doc.locate(&field));
            diags.push(
                Diagnostic::error(doc.file, bare_message(&err))
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

/// serde_yaml prefixes its message with its own path and suffixes the
/// location; both are reported as structured fields instead.
fn bare_message(err: &serde_yaml::Error) -> String {
    let mut msg = err.to_string();
    if let Some(loc) = err.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = msg.strip_suffix(&suffix) {
            msg = stripped.to_owned();
        }
    }
    match msg.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') && !rest.is_empty() => rest.to_owned(),
        _ => msg,
    }
}
