//! Diagnostics: what is wrong with a policy, and exactly where.
//!
//! Every finding names the file, the object (kind/namespace/name), the field
//! path and the reason, plus the line when the YAML parser can give one, so a
//! user never has to guess which of a hundred objects broke a reload.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Serialize;

/// How serious a finding is. Errors reject the whole policy set; warnings
/// (for example a selector that matches nothing) do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// A 1-based line and column in a source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One step of a [`FieldPath`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path to a field inside one object, printed the way `kubectl explain`
/// users read it: `spec.egress[0].to[1].ipBlock.cidr`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    pub fn root() -> Self {
        Self::default()
    }

    /// Builds a path from dotted keys, e.g. `FieldPath::of(&["spec", "cidr"])`.
    pub fn of(keys: &[&str]) -> Self {
        Self(keys.iter().map(|k| Segment::Key((*k).to_owned())).collect())
    }

    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.into()));
        next
    }

    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    pub fn push(&mut self, segment: Segment) {
        self.0.push(segment);
    }

    pub fn pop(&mut self) -> Option<Segment> {
        self.0.pop()
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                // Annotation keys hold dots and slashes; bracket them so the
                // path stays unambiguous.
                Segment::Key(key) if key.contains(['.', '/', ' ']) => write!(f, "[{key:?}]")?,
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Which object a finding is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One finding about the policy set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    #[serde(serialize_with = "serialize_path")]
    pub file: Arc<Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<FieldPath>,
    pub message: String,
}

fn serialize_path<S: serde::Serializer>(path: &Arc<Path>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&path.display())
}

impl Diagnostic {
    pub fn error(file: &Arc<Path>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: Arc::clone(file),
            location: None,
            object: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn warning(file: &Arc<Path>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(file, message)
        }
    }

    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    pub fn on(mut self, object: &ObjectRef) -> Self {
        self.object = Some(object.clone());
        self
    }

    pub fn field(mut self, field: FieldPath) -> Self {
        self.field = Some(field);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(Location { line, column }) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {severity}: ")?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The policy set was rejected. Carries every finding, errors and warnings,
/// so `check` can report all of them at once rather than the first.
#[derive(Debug, thiserror::Error)]
#[error("{} error(s) in the policy set{}", self.error_count(), self.first_error())]
pub struct Rejected {
    pub diagnostics: Vec<Diagnostic>,
}

impl Rejected {
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    fn first_error(&self) -> String {
        self.diagnostics
            .iter()
            .find(|d| d.is_error())
            .map(|d| format!("; first: {d}"))
            .unwrap_or_default()
    }
}

/// Collects findings while a policy set is loaded and validated.
#[derive(Debug, Default)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.0
    }
}

/// Turns a user-supplied path into a shared file name for diagnostics.
pub fn file_name(path: &Path) -> Arc<Path> {
    Arc::from(PathBuf::from(path).into_boxed_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_path_prints_like_kubectl() {
        let path = FieldPath::of(&["spec", "egress"])
            .index(0)
            .key("to")
            .index(1)
            .key("ipBlock")
            .key("cidr");
        assert_eq!(path.to_string(), "spec.egress[0].to[1].ipBlock.cidr");
    }

    #[test]
    fn diagnostic_names_file_line_object_and_field() {
        let file = file_name(Path::new("policies/np.yaml"));
        let d = Diagnostic::error(&file, "invalid CIDR")
            .at(Some(Location {
                line: 12,
                column: 9,
            }))
            .on(&ObjectRef {
                kind: "NetworkPolicy".into(),
                namespace: Some("test-egress".into()),
                name: "np".into(),
            })
            .field(FieldPath::of(&["spec", "egress"]));
        assert_eq!(
            d.to_string(),
            "policies/np.yaml:12:9: error: NetworkPolicy test-egress/np: spec.egress: invalid CIDR"
        );
    }
}
