//! Splitting files into YAML documents: whatever text surrounds the
//! objects (non-ASCII comments, a BOM, CRLF, empty documents, `...`), the
//! loader must see exactly the objects a YAML parser sees, and never panic.
//!
//! The regression behind these tests: document boundaries were taken from
//! the YAML scanner's *character* index and used as *byte* offsets, so a
//! non-ASCII comment before a `---` cut lines off the previous document (a
//! comment silently removed `ports: [{protocol: UDP, port: 53}]`, opening
//! the policy) or sliced inside a character (a panic).

use std::{fs, path::Path, process::Command};

use egress_agent::compile::compile;
use egress_policy::Source;
use proptest::prelude::*;

/// The shipped policy set, as `(file name, text)`.
fn shipped() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .expect("policies/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = format!("policies/{}", p.file_name().unwrap().to_string_lossy());
            (name, fs::read_to_string(&p).expect("readable policy"))
        })
        .collect()
}

/// The compiled plan of a policy set, as JSON: what the kernel would be
/// programmed with. Panics with the findings if the set is rejected.
fn plan_of(files: &[(String, String)]) -> serde_json::Value {
    let sources: Vec<Source> = files
        .iter()
        .map(|(name, text)| Source::new(name, text.as_str()))
        .collect();
    let loaded = egress_policy::load_sources(&sources).unwrap_or_else(|r| panic!("rejected: {r}"));
    serde_json::to_value(compile(&loaded.model)).expect("plans serialize")
}

fn with_file(files: &[(String, String)], name: &str, text: String) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                if n.ends_with(name) {
                    text.clone()
                } else {
                    t.clone()
                },
            )
        })
        .collect()
}

const SEED_POLICY: &str = "allow-egress-to-istio-system-and-kube-dns.yaml";

fn seed_policy_text(files: &[(String, String)]) -> String {
    files
        .iter()
        .find(|(n, _)| n.ends_with(SEED_POLICY))
        .map(|(_, t)| t.clone())
        .expect("the seed NetworkPolicy is shipped")
}

#[test]
fn a_non_ascii_comment_before_a_trailing_separator_changes_nothing() {
    let files = shipped();
    let baseline = plan_of(&files);
    let seed = seed_policy_text(&files);
    let cafe = format!("# équipe plateforme — café ☕☕☕☕☕☕☕☕\n{seed}---\n");
    let changed = plan_of(&with_file(&files, SEED_POLICY, cafe));
    assert_eq!(baseline, changed, "a comment changed the compiled plan");
}

#[test]
fn the_twelve_byte_reproducer_is_a_finding_or_nothing_not_a_panic() {
    let text = String::from_utf8(b"\xe0\xb7\x9c\xe0\xba\x80\xde\x95\n---".to_vec()).unwrap();
    // Loading must return (accepted or rejected), not unwind.
    let _ = egress_policy::load_sources(&[Source::new("d/x.yaml", text.clone())]);

    let dir = tempdir("twelve");
    fs::write(dir.join("x.yaml"), &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_egress-agent"))
        .arg("check")
        .arg(&dir)
        .output()
        .expect("egress-agent runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "check must exit 0 or 1, not {:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn surroundings_of_documents_do_not_change_the_plan() {
    let files = shipped();
    let baseline = plan_of(&files);
    let seed = seed_policy_text(&files);
    let crlf = seed.replace('\n', "\r\n");
    let variants = [
        ("a BOM", format!("\u{feff}{seed}")),
        ("CRLF line endings", crlf.clone()),
        ("CRLF and a BOM", format!("\u{feff}{crlf}")),
        (
            "empty documents around it",
            format!("---\n---\n# nothing\n---\n{seed}---\n---\n"),
        ),
        ("a trailing separator", format!("{seed}---\n")),
        ("a document end marker", format!("{seed}...\n")),
        (
            "end markers between documents",
            format!("---\n...\n---\n{seed}...\n---\n...\n"),
        ),
        (
            "non-ASCII comments everywhere",
            seed.lines()
                .map(|l| format!("{l} # ünïcødé 日本語 🚀\n# Ελληνικά ☕\n"))
                .collect::<String>(),
        ),
    ];
    for (what, text) in variants {
        let changed = plan_of(&with_file(&files, SEED_POLICY, text));
        assert_eq!(baseline, changed, "{what} changed the compiled plan");
    }
}

#[test]
fn non_ascii_values_before_a_separator_leave_later_findings_on_their_lines() {
    // A non-ASCII annotation value in the first document (a key must be
    // ASCII, as the API server requires); the invalid name after
    // the separator must still be reported on its own line, and the first
    // document must still be whole.
    let text = "\
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  annotations: {note: \"équipe café ☕ — plateforme\"}
  labels: {team: platform}
---
apiVersion: v1
kind: Namespace
metadata:
  name: ☕
";
    let rejected = egress_policy::load_sources(&[Source::new("p/ns.yaml", text)])
        .expect_err("a Namespace name must be a DNS label");
    assert_eq!(rejected.diagnostics.len(), 1, "{rejected}");
    let rendered = rejected.to_string();
    assert!(rendered.contains("p/ns.yaml:11:"), "{rendered}");

    let valid = text.replace("name: ☕", "name: ok");
    let loaded = egress_policy::load_sources(&[Source::new("p/ns.yaml", valid)]).expect("valid");
    let prod = &loaded.model.namespaces["prod"];
    assert_eq!(
        prod.labels.get("team").map(String::as_str),
        Some("platform")
    );
}

/// NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR end a line for libyaml
/// (serde_yaml) and for kubectl's go-yaml, but not for yaml-rust2, which
/// split the documents: a `---` after one in a comment was a separator to
/// the typed parse only, and the file was rejected with a bogus error (or
/// read differently by the two parsers).
#[test]
fn yaml_1_1_line_breaks_end_comments_and_lines_as_kubectl_reads_them() {
    for brk in ['\u{85}', '\u{2028}', '\u{2029}'] {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a}}\n# end of a{brk}---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: b}}\n"
        );
        let loaded = egress_policy::load_sources(&[Source::new("ns.yaml", text.as_str())])
            .unwrap_or_else(|r| {
                panic!(
                    "U+{:04X}: two Namespaces, as kubectl reads it: {r}",
                    brk as u32
                )
            });
        let names: Vec<&String> = loaded.model.namespaces.keys().collect();
        assert_eq!(names, ["a", "b"], "U+{:04X}", brk as u32);

        // A finding after one is on the line kubectl would count: line 8
        // is `metadata:` of the second document (the break made `---`
        // line 5).
        let bad = text.replace("name: b", "name: B_");
        let rejected = egress_policy::load_sources(&[Source::new("ns.yaml", bad)])
            .expect_err("an invalid Namespace name");
        let rendered = rejected.to_string();
        assert!(
            rendered.contains("ns.yaml:8:"),
            "U+{:04X}: {rendered}",
            brk as u32
        );
    }
    // After a `\r`, the break is a line of its own (CR, then NEL: two).
    let text = "apiVersion: v1\r\u{85}kind: Namespace\nmetadata: {name: B_}\n";
    let rendered = egress_policy::load_sources(&[Source::new("cr.yaml", text)])
        .expect_err("an invalid Namespace name")
        .to_string();
    assert!(rendered.contains("cr.yaml:4:"), "{rendered}");
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("egress-docs-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Text a comment may hold: anything but line breaks (which would end the
/// comment: `\r`, `\n`, and for kubectl's YAML 1.1 also NEL, LS and PS)
/// and the characters YAML forbids in a stream (C0 and C1 controls, DEL, a
/// BOM past the start, U+FFFE/U+FFFF).
fn comment_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..24).prop_map(|chars| {
        chars
            .into_iter()
            .filter(|&c| {
                c == '\t'
                    || (c >= ' '
                        && c != '\u{7f}'
                        && !('\u{80}'..='\u{9f}').contains(&c)
                        && c != '\u{feff}'
                        && !matches!(c, '\u{2028}' | '\u{2029}')
                        && !matches!(c, '\u{fffe}' | '\u{ffff}'))
            })
            .collect()
    })
}

/// Where to put a comment: on its own line before line `at`, or after the
/// content of line `at` (separated by a space, as YAML requires).
#[derive(Debug, Clone)]
struct Insertion {
    at: usize,
    own_line: bool,
    text: String,
}

fn insertions() -> impl Strategy<Value = Vec<Insertion>> {
    proptest::collection::vec(
        (0usize..200, any::<bool>(), comment_text()).prop_map(|(at, own_line, text)| Insertion {
            at,
            own_line,
            text,
        }),
        1..12,
    )
}

fn comment_in(text: &str, inserts: &[Insertion]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for ins in inserts {
        let at = ins.at % (lines.len() + 1);
        if ins.own_line || at == lines.len() {
            lines.insert(at, format!("# {}", ins.text));
        } else {
            lines[at].push_str(&format!(" # {}", ins.text));
        }
    }
    lines.join("\n") + "\n"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// For the shipped policy set, comments with arbitrary Unicode anywhere
    /// (own lines, ends of lines, around every `---`) leave the compiled
    /// plan identical.
    #[test]
    fn unicode_comments_anywhere_leave_the_plan_identical(
        file in 0usize..16,
        inserts in insertions(),
        joined in any::<bool>(),
    ) {
        let files = shipped();
        let baseline = plan_of(&files);
        let mut changed = files.clone();
        if joined {
            // All files as one multi-document file, so the comments land
            // around many separators.
            let all = files.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("---\n");
            changed = vec![("policies/all.yaml".into(), comment_in(&all, &inserts))];
        } else {
            let i = file % changed.len();
            changed[i].1 = comment_in(&changed[i].1, &inserts);
        }
        prop_assert_eq!(baseline, plan_of(&changed));
    }
}

/// Every input the loader fuzz target (fuzz/) crashed on: each must load
/// to a model or to findings, and render, without a panic.
#[test]
fn inputs_the_fuzzer_crashed_on_are_findings_not_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-crashes");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).expect("tests/fuzz-crashes exists") {
        let path = entry.expect("readable entry").path();
        let bytes = fs::read(&path).expect("readable input");
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        match egress_policy::load_sources(&[Source::new("fuzz.yaml", text)]) {
            Ok(loaded) => {
                let _ = serde_json::to_string(&compile(&loaded.model));
            }
            Err(rejected) => {
                let _ = rejected.to_string();
                for d in &rejected.diagnostics {
                    let _ = d.to_string();
                }
            }
        }
        seen += 1;
    }
    assert!(seen > 0, "no crash inputs in {}", dir.display());
}
