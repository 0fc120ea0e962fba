//! A document read the way kubectl reads it: YAML 1.1, then JSON.
//!
//! kubectl (through sigs.k8s.io/yaml and gopkg.in/yaml.v2) resolves every
//! plain scalar with YAML 1.1's rules, turns the tree into JSON, and the API
//! server decodes that JSON strictly by type. So `port: 0120` is the
//! integer 80 (octal), `port: 1_000` is 1000, `port: 80.0` is sent as `80`,
//! and a label value `yes` is the boolean `true`, which no string field
//! accepts. YAML 1.2 parsers (serde_yaml included) read all four
//! differently, and leniently hand a number to a string field as its text.
//! Either difference makes the agent disagree with the API server, which
//! `cargo xtask apiserver-diff` measures; so the typed parse decodes the
//! JSON tree built here ([`Node`], which decodes as a [`serde_json::Value`]
//! would), and never the YAML text directly.
//!
//! Scalars are resolved exactly as yaml.v2's `resolve()` does, including
//! its use of Go's `strconv.ParseInt(s, 0, 64)` (`0x`, `0o`, `0b` and a
//! leading `0` for octal) after removing every `_`. Merge keys (`<<`) merge
//! as yaml.v2 does; a repeated key keeps its last value, as kubectl's JSON
//! does, with a note.

use std::collections::{BTreeMap, HashMap};

use serde_json::Number;
use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser, Tag},
    scanner::{Marker, ScanError, TScalarStyle},
};

use super::diagnostic::FieldPath;
pub use super::yaml_node::Node;

/// What YAML 1.1 makes of one untagged plain scalar.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str,
}

/// Go's `resolve()` from gopkg.in/yaml.v2 (the version kubectl 1.20 uses)
/// for a plain scalar. Timestamps are strings: yaml.v2 hands a timestamp
/// to an untyped target as its text.
pub fn resolve(plain: &str) -> Scalar {
    const TRUE: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
    ];
    const FALSE: &[&str] = &[
        "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
    ];
    if TRUE.contains(&plain) {
        return Scalar::Bool(true);
    }
    if FALSE.contains(&plain) {
        return Scalar::Bool(false);
    }
    match plain {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        _ => {}
    }
    match plain.as_bytes()[0] {
        // Not in the map above, so maybe a plain float (Go's ParseFloat,
        // without the digit-first regex).
        b'.' => go_parse_float(plain).map_or(Scalar::Str, Scalar::Float),
        b'+' | b'-' | b'0'..=b'9' => {
            let digits = plain.replace('_', "");
            if let Some(int) = go_parse_int(&digits) {
                return Scalar::Int(int);
            }
            if is_yaml_style_float(&digits) {
                if let Some(float) = go_parse_float(&digits) {
                    return Scalar::Float(float);
                }
            }
            Scalar::Str
        }
        _ => Scalar::Str,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`, falling back to `ParseUint` as
/// yaml.v2 does: an optional sign, then `0x`, `0o`, `0b`, a leading `0`
/// (octal) or decimal. (yaml.v2's own `0b` branch reads nothing more.)
fn go_parse_int(s: &str) -> Option<i128> {
    let (negative, unsigned) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        (16, hex)
    } else if let Some(oct) = unsigned
        .strip_prefix("0o")
        .or_else(|| unsigned.strip_prefix("0O"))
    {
        (8, oct)
    } else if let Some(bin) = unsigned
        .strip_prefix("0b")
        .or_else(|| unsigned.strip_prefix("0B"))
    {
        (2, bin)
    } else if unsigned.len() > 1 && unsigned.starts_with('0') {
        (8, &unsigned[1..])
    } else {
        (10, unsigned)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    let value = if negative {
        -i128::from(magnitude)
    } else {
        i128::from(magnitude)
    };
    // ParseInt's range, or ParseUint's for an unsigned text.
    let fits = if negative || s.starts_with('+') {
        i64::try_from(value).is_ok()
    } else {
        true
    };
    fits.then_some(value)
}

/// yaml.v2's `yamlStyleFloat`:
/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_style_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(at) => (&s[..at], Some(&s[at + 1..])),
        None => (s, None),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => !frac.is_empty() && all_digits(frac),
        Some((int, frac)) => !int.is_empty() && all_digits(int) && all_digits(frac),
        None => !mantissa.is_empty() && all_digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exponent_ok
}

/// Go's `strconv.ParseFloat(s, 64)` for the decimal forms yaml.v2 can reach
/// (no hex floats, no `inf`/`nan` words: those never get here as a
/// number). An overflow is an error in Go, `inf` in Rust.
fn go_parse_float(s: &str) -> Option<f64> {
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    if unsigned.is_empty()
        || !unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A plain scalar that YAML 1.1 reads as something other than its text,
/// or that a YAML 1.2 reader would read differently: where it is, what was
/// written, and what kubectl sends.
#[derive(Clone, Debug, PartialEq)]
pub struct Typed {
    pub path: FieldPath,
    pub written: String,
    pub read_as: Scalar,
}

impl Typed {
    /// "the integer 80", "the boolean true", as a message says it.
    pub fn describe(&self) -> String {
        match &self.read_as {
            Scalar::Null => "null".to_owned(),
            Scalar::Bool(b) => format!("the boolean {b}"),
            Scalar::Int(i) => format!("the integer {i}"),
            Scalar::Float(f) => format!("the number {f}"),
            Scalar::Str => format!("the string {:?}", self.written),
        }
    }

    /// "a number", "a boolean", "null".
    pub fn kind(&self) -> &'static str {
        match self.read_as {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::Float(_) => "a number",
            Scalar::Str => "a string",
        }
    }

    /// Whether a reader (or a YAML 1.2 parser) may take the written form
    /// for something else: a leading-zero octal, a `_`-grouped or `0b`
    /// integer, a float where an integer goes, or a boolean spelled
    /// `yes`/`no`/`on`/`off`/`y`/`n`. (`80`, `0x50`, `true` and `null` read
    /// the same in every YAML.)
    pub fn is_surprising(&self) -> bool {
        match &self.read_as {
            // YAML 1.2 reads decimal, `0x` and `0o` the same; not `0120`,
            // `1_000` or `0b1010000`.
            Scalar::Int(i) => {
                let unsigned = self.written.trim_start_matches(['+', '-']);
                let same_in_1_2 = ["0x", "0X", "0o", "0O"]
                    .iter()
                    .any(|p| unsigned.starts_with(p) && !unsigned.contains('_'));
                !same_in_1_2 && self.written.trim_start_matches('+') != i.to_string()
            }
            Scalar::Float(_) => true,
            Scalar::Bool(b) => !self.written.eq_ignore_ascii_case(&b.to_string()),
            Scalar::Null | Scalar::Str => false,
        }
    }
}

/// A document as kubectl would send it.
#[derive(Debug)]
pub struct Converted {
    pub value: Node,
    /// Every plain scalar value that is not a string (keys are not
    /// listed): for warnings, and to explain type errors.
    pub typed: Vec<Typed>,
    /// Problems kubectl would refuse the whole document for (a number with
    /// no JSON form, an unsupported key), or notes (a repeated key), each
    /// with its path; `fatal` tells which.
    pub problems: Vec<Problem>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub path: FieldPath,
    pub message: String,
    pub fatal: bool,
}

/// The first document of `text` as kubectl sends it, or the syntax error.
pub fn to_json(text: &str) -> Result<Converted, ScanError> {
    let mut builder = Builder::default();
    Parser::new_from_str(text).load(&mut builder, false)?;
    Ok(Converted {
        value: builder.root.unwrap_or(Node::Null),
        typed: builder.typed,
        problems: builder.problems,
    })
}

/// Where the value at `path` starts in `text` (line from 1, column from
/// 1): a type error is shown at the value, not at its key.
pub fn value_location(text: &str, path: &FieldPath) -> Option<(usize, usize)> {
    let mut builder = Builder {
        wanted: Some(path.clone()),
        ..Builder::default()
    };
    // A syntax error after the value does not hide where it was.
    let _ = Parser::new_from_str(text).load(&mut builder, false);
    builder.found.map(|mark| (mark.line(), mark.col() + 1))
}

/// One open collection.
enum Open {
    Map {
        path: FieldPath,
        anchor: usize,
        /// A `BTreeMap` while open (a repeated key replaces, and keys
        /// come out sorted); only the finished [`Node`] is kept.
        entries: BTreeMap<String, Node>,
        /// The key read, waiting for its value (`None` for a key that
        /// has no JSON form: the value is read and dropped).
        key: Option<Option<String>>,
    },
    Seq {
        path: FieldPath,
        anchor: usize,
        items: Vec<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    typed: Vec<Typed>,
    problems: Vec<Problem>,
    /// For [`value_location`]: the path looked for, and where it started.
    wanted: Option<FieldPath>,
    found: Option<Marker>,
}

/// Whether `tag` is the core schema's `!!name`.
fn is_core(tag: &Tag, name: &str) -> bool {
    matches!(tag.handle.as_str(), "!!" | "tag:yaml.org,2002:") && tag.suffix == name
}

impl Builder {
    /// Whether the next node is a mapping key.
    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Open::Map { key: None, .. }))
    }

    /// The path of the node that starts now (a value, never a key).
    fn next_path(&self) -> FieldPath {
        match self.stack.last() {
            None => FieldPath::root(),
            Some(Open::Map { path, key, .. }) => match key {
                Some(Some(k)) => path.key(k.clone()),
                _ => path.key("?"),
            },
            Some(Open::Seq { path, items, .. }) => path.index(items.len()),
        }
    }

    fn problem(&mut self, path: FieldPath, message: String, fatal: bool) {
        self.problems.push(Problem {
            path,
            message,
            fatal,
        });
    }

    /// A finished node: the key of a mapping, or a value where one is due.
    fn finish(&mut self, value: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Open::Seq { items, .. }) => items.push(value),
            Some(Open::Map { key, .. }) if key.is_none() => {
                // A collection as a key (scalar keys are set by `key`).
                let path = self.next_path();
                self.problem(
                    path,
                    "a mapping key that is a collection: kubectl cannot send it as JSON".to_owned(),
                    true,
                );
                self.set_key(None);
            }
            Some(Open::Map { key, .. }) => {
                let Some(Some(name)) = key.take() else {
                    return;
                };
                self.insert(name, value);
            }
        }
    }

    /// `name: value` into the innermost mapping; `<<` merges as yaml.v2
    /// does (its entries overwrite those before it).
    fn insert(&mut self, name: String, value: Node) {
        let Some(Open::Map { path, entries, .. }) = self.stack.last_mut() else {
            return;
        };
        if name == "<<" {
            let sources = match value {
                Node::Object(map) => vec![map],
                Node::Array(items) => items
                    .into_vec()
                    .into_iter()
                    .filter_map(|item| match item {
                        Node::Object(map) => Some(map),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for map in sources {
                entries.extend(map.into_vec().into_iter().map(|(k, v)| (k.into(), v)));
            }
            return;
        }
        let repeated = entries.insert(name.clone(), value).is_some();
        if repeated {
            let at = path.key(name.clone());
            self.problem(
                at,
                format!(
                    "`{name}` is given more than once; as for kubectl, the last one is what counts"
                ),
                false,
            );
        }
    }

    fn set_key(&mut self, text: Option<String>) {
        if let Some(Open::Map { key, .. }) = self.stack.last_mut() {
            *key = Some(text);
        }
    }

    /// A scalar mapping key, as sigs.k8s.io/yaml writes it into JSON:
    /// strings as they are, integers in decimal, booleans as `true` or
    /// `false`, floats with Go's `FormatFloat(f, 'g', -1, 32)` (and the
    /// infinities and NaN as YAML spells them). A null key has no JSON form.
    fn key(&mut self, text: String, resolved: Scalar) {
        let key = match resolved {
            Scalar::Str => Some(text.clone()),
            Scalar::Bool(b) => Some(b.to_string()),
            Scalar::Int(i) => Some(i.to_string()),
            Scalar::Float(f) if f.is_nan() => Some(".nan".to_owned()),
            Scalar::Float(f) if f.is_infinite() => {
                Some(if f > 0.0 { ".inf" } else { "-.inf" }.to_owned())
            }
            Scalar::Float(f) => Some(go_format_float32(f)),
            Scalar::Null => None,
        };
        if key.is_none() {
            let path = self.next_path();
            self.problem(
                path,
                format!("the mapping key `{text}` has no JSON form: kubectl cannot send it"),
                true,
            );
        }
        self.set_key(key);
    }

    /// A scalar value.
    fn scalar(&mut self, text: String, plain: bool, resolved: Scalar) -> Node {
        let path = self.next_path();
        if plain && resolved != Scalar::Str {
            self.typed.push(Typed {
                path: path.clone(),
                written: text.clone(),
                read_as: resolved.clone(),
            });
        }
        match resolved {
            Scalar::Str => Node::String(text.into_boxed_str()),
            Scalar::Null => Node::Null,
            Scalar::Bool(b) => Node::Bool(b),
            Scalar::Int(i) => json_int(i).unwrap_or(Node::Null),
            Scalar::Float(f) => match json_float(f) {
                Some(v) => v,
                None => {
                    self.problem(
                        path,
                        format!("`{text}` has no JSON form, so kubectl cannot send it"),
                        true,
                    );
                    Node::Null
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.found.is_none()
            && !self.expects_key()
            && matches!(
                event,
                Event::Scalar(..)
                    | Event::Alias(_)
                    | Event::MappingStart(..)
                    | Event::SequenceStart(..)
            )
            && self.wanted.as_ref() == Some(&self.next_path())
        {
            self.found = Some(mark);
        }
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == TScalarStyle::Plain;
                let resolved = match &tag {
                    Some(tag) if is_core(tag, "str") => Scalar::Str,
                    Some(tag) if is_core(tag, "null") => Scalar::Null,
                    // yaml.v2 resolves the text of a plain scalar, or of
                    // one tagged with a core type; anything else (quoted,
                    // block, or another tag) is a string.
                    Some(tag) if ["bool", "int", "float"].iter().any(|t| is_core(tag, t)) => {
                        resolve(&text)
                    }
                    Some(_) => Scalar::Str,
                    None if plain => resolve(&text),
                    None => Scalar::Str,
                };
                if self.expects_key() {
                    if anchor != 0 {
                        self.anchors
                            .insert(anchor, Node::String(text.clone().into_boxed_str()));
                    }
                    self.key(text, resolved);
                } else {
                    let value = self.scalar(text, plain, resolved);
                    self.finish(value, anchor);
                }
            }
            Event::Alias(id) => {
                let value = self.anchors.get(&id).cloned().unwrap_or(Node::Null);
                match value {
                    Node::String(text) if self.expects_key() => self.set_key(Some(text.into())),
                    value => self.finish(value, 0),
                }
            }
            Event::MappingStart(anchor, _) => {
                let path = self.next_path();
                self.stack.push(Open::Map {
                    path,
                    anchor,
                    entries: BTreeMap::new(),
                    key: None,
                });
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.next_path();
                self.stack.push(Open::Seq {
                    path,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Open::Map {
                        entries, anchor, ..
                    }) => (Node::object(entries), anchor),
                    Some(Open::Seq { items, anchor, .. }) => (Node::Array(items.into()), anchor),
                    None => return,
                };
                self.finish(value, anchor);
            }
            _ => {}
        }
    }
}

/// An integer as JSON: yaml.v2 yields int64 or uint64, both exact.
fn json_int(i: i128) -> Option<Node> {
    if let Ok(i) = i64::try_from(i) {
        return Some(Node::Number(i.into()));
    }
    u64::try_from(i).ok().map(|u| Node::Number(u.into()))
}

/// A float as kubectl's JSON has it: Go writes an integral float64 below
/// 1e21 without a fraction (`80.0` is sent as `80`), which the server then
/// decodes as an integer; NaN and the infinities have no JSON form.
fn json_float(f: f64) -> Option<Node> {
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0 && f.abs() < 1e21 {
        if let Some(v) = json_int(f as i128) {
            return Some(v);
        }
    }
    Number::from_f64(f).map(Node::Number)
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 32)`: the shortest digits of the
/// float32, in exponent form when the exponent is below -4 or at least 6
/// (`'g'` with the shortest precision decides as for precision 6).
fn go_format_float32(f: f64) -> String {
    let f = f as f32;
    let sci = format!("{f:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_as_yaml_v2_resolves_them() {
        let cases: &[(&str, Scalar)] = &[
            ("80", Scalar::Int(80)),
            ("0120", Scalar::Int(80)),
            ("0o120", Scalar::Int(80)),
            ("0x50", Scalar::Int(80)),
            ("0b1010000", Scalar::Int(80)),
            ("1_000", Scalar::Int(1000)),
            ("_80", Scalar::Str),
            ("+80", Scalar::Int(80)),
            ("-1", Scalar::Int(-1)),
            ("18446744073709551615", Scalar::Int(18446744073709551615)),
            ("80.0", Scalar::Float(80.0)),
            ("1e2", Scalar::Float(100.0)),
            ("08", Scalar::Float(8.0)),
            (".5", Scalar::Float(0.5)),
            ("yes", Scalar::Bool(true)),
            ("Off", Scalar::Bool(false)),
            ("n", Scalar::Bool(false)),
            ("~", Scalar::Null),
            ("", Scalar::Null),
            ("oN", Scalar::Str),
            ("1:20", Scalar::Str),
            ("2020-01-01", Scalar::Str),
            ("0x", Scalar::Str),
            ("web", Scalar::Str),
            ("10.0.0.0/8", Scalar::Str),
            ("1.2.3", Scalar::Str),
            ("0x_", Scalar::Str),
        ];
        for (text, want) in cases {
            assert_eq!(&resolve(text), want, "{text:?}");
        }
    }

    #[test]
    fn a_document_as_kubectl_sends_it() {
        let doc = "a: 0120\nb: \"0120\"\nc: 80.0\nd: yes\ne: 'yes'\nf: !!str 1_000\n\
                   g: [1_000, on, ~]\nh: &x {k: 1}\ni: *x\nyes: 1\n0x10: 2\n";
        let converted = to_json(doc).unwrap();
        assert_eq!(
            serde_json::Value::from(converted.value),
            serde_json::json!({
                "a": 80, "b": "0120", "c": 80, "d": true, "e": "yes", "f": "1_000",
                "g": [1000, true, null], "h": {"k": 1}, "i": {"k": 1},
                "true": 1, "16": 2,
            })
        );
        let surprising: Vec<String> = converted
            .typed
            .iter()
            .filter(|t| t.is_surprising())
            .map(|t| format!("{}: {}", t.path, t.describe()))
            .collect();
        assert_eq!(
            surprising,
            [
                "a: the integer 80",
                "c: the number 80",
                "d: the boolean true",
                "g[0]: the integer 1000",
                "g[1]: the boolean true",
            ]
        );
        assert!(converted.problems.is_empty());
    }

    #[test]
    fn what_kubectl_cannot_send() {
        let converted = to_json("a: .inf\nb: 1\nb: 2\n").unwrap();
        let problems: Vec<(String, bool)> = converted
            .problems
            .iter()
            .map(|p| (p.path.to_string(), p.fatal))
            .collect();
        assert_eq!(problems, [("a".to_owned(), true), ("b".to_owned(), false)]);
        assert_eq!(serde_json::Value::from(converted.value)["b"], 2);
    }

    #[test]
    fn merge_keys_merge() {
        let converted = to_json("base: &b {a: 1, b: 2}\nm:\n  <<: *b\n  b: 3\n").unwrap();
        assert_eq!(
            serde_json::Value::from(converted.value)["m"],
            serde_json::json!({"a": 1, "b": 3})
        );
    }

    #[test]
    fn float_keys_as_go_formats_them() {
        assert_eq!(go_format_float32(80.0), "80");
        assert_eq!(go_format_float32(1.5), "1.5");
        assert_eq!(go_format_float32(1e6), "1e+06");
        assert_eq!(go_format_float32(123456.0), "123456");
        assert_eq!(go_format_float32(0.00001), "1e-05");
    }
}
