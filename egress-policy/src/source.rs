//! Policy sources: finding YAML files, splitting them into documents, and
//! remembering where every field is.
//!
//! serde_yaml reports a location only for the errors it raises itself. The
//! semantic checks that run after deserialization (a bad CIDR, an `except`
//! outside its block, an unknown field) would otherwise have no line, so a
//! document can also be walked with yaml-rust2's event parser to build a
//! field path → line index.
//!
//! That index is built only when a finding needs a line: a policy with 100k
//! `ipBlock`s has hundreds of thousands of fields, and indexing them all up
//! front cost more than the typed parse itself (hashing and cloning every
//! path), on every reload of a valid policy.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use yaml_rust2::{
    parser::{Event, Parser},
    scanner::Marker,
};

use super::diagnostic::{file_name, Diagnostic, FieldPath, Location, Segment};

/// One YAML file, already read.
///
/// The text is shared: in Kubernetes mode every API object is a source,
/// and the inventory that carries 10k of them is copied and compared on
/// every change; a copy is then a count, and an unchanged source compares
/// equal by pointer before any byte is read.
#[derive(Clone, Debug, Eq)]
pub struct Source {
    pub file: Arc<Path>,
    pub text: Arc<str>,
}

impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        (Arc::ptr_eq(&self.file, &other.file) || self.file == other.file)
            && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Source {
    /// A leading UTF-8 byte order mark is dropped, as kubectl drops it:
    /// yaml-rust2's scanner would otherwise refuse the stream. YAML 1.1's
    /// extra line breaks become `\n` (see [`yaml11_breaks_to_newlines`]).
    pub fn new(file: impl AsRef<Path>, text: impl Into<String>) -> Self {
        let mut text = text.into();
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        if text.contains(YAML11_BREAKS) {
            text = yaml11_breaks_to_newlines(&text);
        }
        Self {
            file: file_name(file.as_ref()),
            text: text.into(),
        }
    }
}

/// NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR end a line in YAML 1.1.
const YAML11_BREAKS: [char; 3] = ['\u{85}', '\u{2028}', '\u{2029}'];

/// The two parsers disagree on what ends a line: yaml-rust2 (YAML 1.2:
/// only `\r` and `\n`), which splits documents and locates fields, and
/// libyaml (serde_yaml, and go-yaml behind kubectl and the API server),
/// which reads the objects and also breaks at NEL, LS and PS. A `#
/// comment` followed by U+2028 and `---` was one document to the first and
/// two to the second: the typed parse saw fields the split never had, and
/// findings landed on other lines. Making these breaks plain newlines
/// gives both parsers libyaml's (kubectl's) reading. A `\r` before one is
/// already a break of its own, so it gets a line of its own too.
fn yaml11_breaks_to_newlines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after_cr = false;
    for c in text.chars() {
        if YAML11_BREAKS.contains(&c) {
            out.push_str(if after_cr { "\n\n" } else { "\n" });
        } else {
            out.push(c);
        }
        after_cr = c == '\r';
    }
    out
}

/// One document of a multi-document file.
#[derive(Debug)]
pub struct Document<'a> {
    pub file: &'a Arc<Path>,
    /// The document's text, starting at the beginning of a line so that
    /// indentation (and so the YAML structure) is preserved.
    pub text: &'a str,
    /// Lines of the file before `text` starts.
    pub line_offset: usize,
    /// What the first walk kept: the root's location, the header scalars.
    pub head: Head,
    /// Every field's location, built from `text` on first use.
    index: OnceLock<HashMap<FieldPath, Location>>,
}

impl Document<'_> {
    /// Where `field` is in the file, or the nearest enclosing field that was
    /// found (a missing field is reported at its parent).
    pub fn locate(&self, field: &FieldPath) -> Option<Location> {
        if field.is_root() {
            return self.head.root.map(|loc| self.shift(loc));
        }
        let index = self.index.get_or_init(|| index_fields(self.text));
        let mut path = field.clone();
        loop {
            if let Some(loc) = index.get(&path) {
                return Some(self.shift(*loc));
            }
            if path.is_root() {
                return self.head.root.map(|loc| self.shift(loc));
            }
            path.pop()?;
        }
    }

    /// Converts a location inside `text` to one in the whole file.
    pub fn shift(&self, loc: Location) -> Location {
        Location {
            line: loc.line + self.line_offset,
            column: loc.column,
        }
    }

    /// The string value of a top-level scalar key such as `kind`.
    pub fn top_level_scalar(&self, key: &str) -> Option<&str> {
        self.scalar(&FieldPath::of(&[key]))
    }

    /// The string value of any scalar, read before the typed parse (so an
    /// object can be named even when its schema is wrong).
    /// Only paths up to [`HEAD_DEPTH`] keys deep are kept.
    pub fn scalar(&self, path: &FieldPath) -> Option<&str> {
        self.head.scalars.get(path).map(String::as_str)
    }
}

/// How deep the first walk keeps scalars: `kind`, `metadata.name`.
const HEAD_DEPTH: usize = 2;

/// What the first walk of a document keeps.
#[derive(Clone, Debug, Default)]
pub struct Head {
    /// Where the document's root node starts (relative to its text).
    root: Option<Location>,
    /// Scalar values by path (`apiVersion`, `kind`, `metadata.name`), read
    /// before the typed parse decides which schema applies.
    scalars: HashMap<FieldPath, String>,
    /// The document held nothing but comments or whitespace.
    pub empty: bool,
}

/// Every field's location in one document's `text`. The text was already
/// parsed whole by [`documents`], so a parse error here cannot happen; if it
/// did, the index is just partial and findings fall back to a parent.
fn index_fields(text: &str) -> HashMap<FieldPath, Location> {
    let mut walker = Walker::indexing();
    let mut parser = Parser::new_from_str(text);
    while let Ok((event, mark)) = parser.next_token() {
        if event == Event::StreamEnd {
            break;
        }
        walker.on_event(event, mark);
    }
    walker
        .docs
        .into_iter()
        .next()
        .map(|doc| doc.locations)
        .unwrap_or_default()
}

/// Expands directories (recursively, `*.yaml` / `*.yml`, hidden entries
/// skipped) into a sorted list of files, so load order is deterministic.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Box<Diagnostic>> {
    let mut files = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).map_err(|e| {
            Box::new(Diagnostic::error(
                &file_name(path),
                format!("cannot read policy path: {e}"),
            ))
        })?;
        if meta.is_dir() {
            walk(path, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), Box<Diagnostic>> {
    let read_err = |e: std::io::Error| {
        Box::new(Diagnostic::error(
            &file_name(dir),
            format!("cannot read policy directory: {e}"),
        ))
    };
    let mut entries = fs::read_dir(dir)
        .map_err(read_err)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// Reads the files; unreadable ones become diagnostics, not a panic.
pub fn read(files: &[PathBuf]) -> (Vec<Source>, Vec<Diagnostic>) {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match fs::read_to_string(file) {
            Ok(text) => sources.push(Source::new(file, text)),
            Err(e) => errors.push(Diagnostic::error(
                &file_name(file),
                format!("cannot read policy file: {e}"),
            )),
        }
    }
    (sources, errors)
}

/// Splits a source into documents with their line indexes. A syntax error
/// rejects the whole file: after one, the parser cannot tell where the
/// following documents begin.
pub fn documents(source: &Source) -> Result<Vec<Document<'_>>, Box<Diagnostic>> {
    let mut walker = Walker::default();
    let mut parser = Parser::new_from_str(&source.text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            Box::new(
                Diagnostic::error(&source.file, format!("YAML syntax error: {}", e.info()))
                    .at(Some(location(e.marker()))),
            )
        })?;
        if event == Event::StreamEnd {
            break;
        }
        walker.on_event(event, mark);
    }

    let text = &source.text;
    let starts: Vec<usize> = byte_offsets(text, walker.docs.iter().map(|doc| doc.start))
        .into_iter()
        .map(|offset| line_start(text, offset))
        .collect();
    let mut docs = Vec::with_capacity(walker.docs.len());
    for (i, doc) in walker.docs.into_iter().enumerate() {
        let start = starts[i];
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let line_offset = line_breaks(&text[..start]);
        let mut head = doc.head;
        // The root was located against the whole file; store it relative
        // to the slice, the origin serde_yaml and the lazy index share.
        // Saturating: yaml-rust2 counts some runs of lone `\r` differently
        // from `line_breaks` (found by fuzzing: a subtraction overflow, a
        // panic in debug builds and a wrapped line number in release ones).
        // A root line off by the difference beats either.
        if let Some(root) = &mut head.root {
            root.line = root.line.saturating_sub(line_offset).max(1);
        }
        docs.push(Document {
            file: &source.file,
            text: &text[start..end],
            line_offset,
            head,
            index: OnceLock::new(),
        });
    }
    Ok(docs)
}

/// Where each document of a source is, and what its first walk kept:
/// enough to make its [`Document`]s again without walking the text (see
/// `ParseCache`).
#[derive(Clone, Debug)]
pub struct Layout(Vec<(std::ops::Range<usize>, usize, Head)>);

impl Layout {
    /// The layout of `docs`, which [`documents`] made from `source`.
    pub fn of(source: &Source, docs: &[Document<'_>]) -> Self {
        let base = source.text.as_ptr() as usize;
        Self(
            docs.iter()
                .map(|doc| {
                    let start = doc.text.as_ptr() as usize - base;
                    (
                        start..start + doc.text.len(),
                        doc.line_offset,
                        doc.head.clone(),
                    )
                })
                .collect(),
        )
    }

    /// The documents of `source`, whose text is the one this layout was
    /// made from.
    pub fn documents<'a>(&self, source: &'a Source) -> Vec<Document<'a>> {
        self.0
            .iter()
            .map(|(range, line_offset, head)| Document {
                file: &source.file,
                text: &source.text[range.clone()],
                line_offset: *line_offset,
                head: head.clone(),
                index: OnceLock::new(),
            })
            .collect()
    }
}

/// Line breaks as the YAML scanner counts them: `\r\n`, `\n` or `\r`.
fn line_breaks(text: &str) -> usize {
    text.matches('\n').count() + text.matches('\r').count() - text.matches("\r\n").count()
}

fn location(mark: &Marker) -> Location {
    Location {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

/// The byte offsets of characters `chars` (ascending) of `text`, in one
/// pass. yaml-rust2's [`Marker::index`] counts characters, not bytes: used
/// as a byte offset, any multi-byte character before a `---` moved the
/// document boundary (cutting lines off the previous document, or landing
/// inside a character).
fn byte_offsets(text: &str, chars: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut indices = text.char_indices().map(|(i, _)| i).enumerate().peekable();
    chars
        .into_iter()
        .map(|target| {
            while indices.next_if(|&(n, _)| n < target).is_some() {}
            indices.peek().map_or(text.len(), |&(_, i)| i)
        })
        .collect()
}

/// The byte offset of the start of the line containing `offset`, a
/// character boundary. A lone `\r` ends a line too, as it does for the
/// YAML scanner.
fn line_start(text: &str, offset: usize) -> usize {
    text[..offset].rfind(['\n', '\r']).map_or(0, |i| i + 1)
}

/// Tracks the path of the node being parsed from the event stream.
///
/// The first walk ([`Walker::default`]) keeps only each document's [`Head`];
/// [`Walker::indexing`] also records every field's location.
#[derive(Default)]
struct Walker {
    docs: Vec<DocIndex>,
    stack: Vec<Frame>,
    path: FieldPath,
    index_all: bool,
}

#[derive(Default)]
struct DocIndex {
    start: usize,
    head: Head,
    locations: HashMap<FieldPath, Location>,
}

enum Frame {
    /// `key` is `Some` while the mapping's next node is that key's value.
    Mapping {
        key: Option<String>,
    },
    Sequence {
        next: usize,
    },
}

impl Walker {
    fn indexing() -> Self {
        Self {
            index_all: true,
            ..Self::default()
        }
    }

    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => {
                self.docs.push(DocIndex {
                    start: mark.index(),
                    head: Head {
                        empty: true,
                        ..Head::default()
                    },
                    ..DocIndex::default()
                });
                self.stack.clear();
                self.path = FieldPath::root();
            }
            Event::Scalar(value, ..) => {
                // A document holding only comments parses as one null scalar.
                if self.stack.is_empty() && matches!(value.as_str(), "" | "~" | "null") {
                    return;
                }
                if let Some(Frame::Mapping { key }) = self.stack.last_mut() {
                    if key.is_none() {
                        // A key: the value that follows lives under it.
                        *key = Some(value.clone());
                        self.path.push(Segment::Key(value));
                        self.record(mark);
                        return;
                    }
                }
                self.begin_node(mark);
                let head_field = self.path.segments().len() <= HEAD_DEPTH;
                if let Some(doc) = self.docs.last_mut().filter(|_| head_field) {
                    doc.head.scalars.insert(self.path.clone(), value);
                }
                self.end_node();
            }
            Event::Alias(_) => {
                self.begin_node(mark);
                self.end_node();
            }
            Event::MappingStart(..) => {
                self.begin_node(mark);
                self.stack.push(Frame::Mapping { key: None });
            }
            Event::SequenceStart(..) => {
                self.begin_node(mark);
                self.stack.push(Frame::Sequence { next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.end_node();
            }
            _ => {}
        }
    }

    /// Called when a value node starts: in a sequence it gets the next index.
    fn begin_node(&mut self, mark: Marker) {
        if let Some(doc) = self.docs.last_mut() {
            doc.head.empty = false;
        }
        if let Some(Frame::Sequence { next }) = self.stack.last_mut() {
            let index = *next;
            *next += 1;
            self.path.push(Segment::Index(index));
            self.record(mark);
        } else if self.path.is_root() {
            self.record(mark);
        }
    }

    /// Called when a value node is complete: leave its path segment.
    fn end_node(&mut self) {
        let leaving = match self.stack.last_mut() {
            Some(Frame::Mapping { key }) => key.take().is_some(),
            Some(Frame::Sequence { .. }) => true,
            None => false,
        };
        if leaving {
            self.path.pop();
        }
    }

    fn record(&mut self, mark: Marker) {
        let Some(doc) = self.docs.last_mut() else {
            return;
        };
        if self.path.is_root() {
            doc.head.root.get_or_insert_with(|| location(&mark));
        }
        if self.index_all {
            doc.locations
                .entry(self.path.clone())
                .or_insert_with(|| location(&mark));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_DOCS: &str = "\
# leading comment
apiVersion: v1
kind: Namespace
metadata:
  name: a
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
spec:
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/8
";

    #[test]
    fn splits_documents_and_indexes_fields() {
        let source = Source::new("x.yaml", TWO_DOCS);
        let docs = documents(&source).expect("valid YAML");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].top_level_scalar("kind"), Some("Namespace"));
        assert_eq!(docs[1].top_level_scalar("kind"), Some("NetworkPolicy"));
        let cidr = FieldPath::of(&["spec", "egress"])
            .index(0)
            .key("to")
            .index(0)
            .key("ipBlock")
            .key("cidr");
        assert_eq!(docs[1].locate(&cidr).map(|l| l.line), Some(13));
        // A field that is absent is reported at its nearest present parent.
        assert_eq!(
            docs[1].locate(&cidr.key("missing")).map(|l| l.line),
            Some(13)
        );
        assert!(docs[1].text.starts_with("---"));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let source = Source::new("bad.yaml", "a: b\nc: [1, 2\nd: e\n");
        let err = documents(&source).expect_err("unterminated flow sequence");
        assert!(err.location.is_some(), "{err}");
        assert!(err.message.contains("syntax"), "{err}");
    }

    #[test]
    fn empty_documents_are_marked() {
        let source = Source::new("e.yaml", "---\n# nothing\n---\nkind: Namespace\n");
        let docs = documents(&source).expect("valid YAML");
        assert!(docs.iter().any(|d| d.head.empty));
        assert!(docs.iter().any(|d| !d.head.empty));
    }
}
