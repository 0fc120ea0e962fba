//! Typed parsing of one YAML document, reporting every unknown field and the
//! path and line of any type error.

use serde::de::DeserializeOwned;

use super::{
    diagnostic::{Diagnostic, Diagnostics, FieldPath, Location, ObjectRef, Segment},
    source::Document,
    yaml11,
};

/// Deserializes `doc` as `T`, reading it as kubectl does (see
/// [`yaml11`]): YAML 1.1 scalars, then a strict decode of the JSON. Unknown
/// fields are errors (a typo such as `podSelecter` must not silently widen
/// a policy) but do not stop the parse, so all of them are reported
/// together.
pub fn typed<T: DeserializeOwned>(
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
