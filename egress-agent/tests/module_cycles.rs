//! Each crate's top-level modules must form a layered graph: each module
//! may use only those below it, so that a newcomer can read the tree in the
//! order data flows (policy → compile → dataplane → agent → cli) and a
//! change to a low module cannot be entangled with its consumers.
//!
//! This scans a crate's `src/` for `crate::`, `super::` and `self::` paths
//! (and, in the agent's binary, `egress_agent::` paths), builds the graph
//! of top-level modules and fails on any cycle, printing it with the files
//! that make each edge. Comments are ignored: a doc link to a higher module
//! is not a dependency. The libraries split out of the agent
//! (`egress-policy`, `egress-proxy`) are scanned too: their modules were
//! the agent's `policy` and `proxy` submodules, held to the same rule.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The crates scanned, by directory, each with the name its binary (if it
/// has one) uses for its library.
const CRATES: &[(&str, &str)] = &[
    ("egress-agent", "egress_agent"),
    ("egress-policy", "egress_policy"),
    ("egress-proxy", "egress_proxy"),
];

/// Edges allowed even though they close a cycle. Empty: every entry here
/// must say why it cannot be removed yet.
const ALLOWED: &[(&str, &str)] = &[];

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn src_of(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir)
        .join("src")
}

#[test]
fn top_level_modules_have_no_cycles() {
    let mut report = String::new();
    for (dir, lib) in CRATES {
        let src = src_of(dir);
        let graph = module_graph(&src, lib);
        assert!(
            graph.values().map(|to| to.len()).sum::<usize>() > 2,
            "the scan found almost no edges; is it reading {}?",
            src.display()
        );
        report_cycles(&mut report, dir, &graph);
    }
    assert!(
        report.is_empty(),
        "the top-level module graph has cycles:\n{report}"
    );
}

/// Inside each module, its submodules must not form a cycle either (for
/// example `compile::plan` ⇄ `compile::prefix`, or `dataplane::nft`'s
/// `counters` ⇄ `ruleset`): each graph of siblings is checked on its own.
#[test]
fn submodules_have_no_cycles() {
    let mut report = String::new();
    for (dir, lib) in CRATES {
        let src = src_of(dir);
        let graphs = submodule_graphs(&src, lib);
        if *dir == "egress-agent" {
            assert!(
                graphs.contains_key("compile"),
                "the scan found no edges inside compile: is it reading {}?",
                src.display()
            );
        }
        for (parent, graph) in &graphs {
            report_cycles(&mut report, &format!("{dir} {parent}"), graph);
        }
    }
    assert!(report.is_empty(), "submodules have cycles:\n{report}");
}

/// Appends each cycle of `graph` to `report`, with the files that make
/// each of its edges.
fn report_cycles(report: &mut String, place: &str, graph: &Graph) {
    for cycle in cycles(graph) {
        report.push_str(&format!("cycle in {place}: {}\n", cycle.join(" → ")));
        for pair in cycle.windows(2) {
            let files = &graph[&pair[0]][&pair[1]];
            report.push_str(&format!(
                "  {} → {}: {}\n",
                pair[0],
                pair[1],
                files.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
}

/// The scanner itself: a cycle it cannot see is a test that cannot fail.
#[test]
fn the_scanner_sees_grouped_imports_and_ignores_comments() {
    let text = "//! See [`crate::agent`].\n\
                use crate::{compile::Plan, observe::{self, Status}};\n\
                use super::dataplane::Dataplane;\n\
                use egress_agent::resolve;\n\
                /// Not a use: crate::kubernetes\n\
                fn f() { crate::sys::now(); } // crate::proxy\n";
    let found: BTreeSet<String> = paths(text, &["cli".to_string()], "egress_agent")
        .into_iter()
        .filter_map(|p| p.first().cloned())
        .collect();
    let expected: BTreeSet<String> = ["compile", "dataplane", "observe", "resolve", "sys"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);

    let mut graph = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .entry(a.into())
            .or_default()
            .entry(b.into())
            .or_default()
            .insert("x.rs".into());
    }
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c", "a"]]);
}

/// The graph of a crate's top-level modules: `src/x.rs` and `src/x/` are
/// module `x`; the binary's root (`main.rs`) declares `mod cli` and is
/// part of it, and names the library as `lib`.
fn module_graph(src: &Path, lib: &str) -> Graph {
    let files = rust_files(src);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| top_level(&module_path(f.strip_prefix(src).unwrap())))
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        let here = module_path(rel);
        let from = top_level(&here);
        if from == "lib" {
            continue; // the crate root declares every module
        }
        let text = fs::read_to_string(file).unwrap();
        for to in paths(&text, &here, lib) {
            let Some(to) = to.into_iter().next() else {
                continue;
            };
            if to != from
                && modules.contains(&to)
                && !ALLOWED.contains(&(from.as_str(), to.as_str()))
            {
                graph
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    graph
}

/// The top-level module a file's module path belongs to.
fn top_level(path: &[String]) -> String {
    match path[0].as_str() {
        "main" => "cli".to_string(),
        m => m.to_string(),
    }
}

/// The module path of a file: `compile/plan.rs` is `compile::plan`,
/// `dataplane/nft/mod.rs` is `dataplane::nft`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut path: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if path.last().is_some_and(|l| l == "mod") {
        path.pop();
    }
    path
}

/// For each module with submodules, the graph of its direct submodules:
/// an edge `a → b` when code in `a` (or below it) names something in its
/// sibling `b` (or below it), through `crate::`, `super::` or `self::`.
fn submodule_graphs(src: &Path, lib: &str) -> BTreeMap<String, Graph> {
    let files = rust_files(src);
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .map(|f| module_path(f.strip_prefix(src).unwrap()))
        .collect();
    let mut graphs: BTreeMap<String, Graph> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        let from = module_path(rel);
        if from.len() < 2 {
            continue; // top level: the other test
        }
        let text = fs::read_to_string(file).unwrap();
        for to in paths(&text, &from, lib) {
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == 0 || common >= from.len() || common >= to.len() {
                continue; // another top-level module, or an ancestor
            }
            // Only modules count, not items: `super::Plan` is the parent.
            if !modules.contains(&to[..=common]) {
                continue;
            }
            graphs
                .entry(from[..common].join("::"))
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .entry(to[common].clone())
                .or_default()
                .insert(rel.display().to_string());
        }
    }
    graphs
}

/// The absolute paths a file's code names with `crate::`, `super::`,
/// `self::` and `LIB::` (the binary naming its library; groups expanded to
/// their first segment), for the module at `here`.
fn paths(text: &str, here: &[String], lib: &str) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(strip_comment)
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("::") {
        // The path's start: the identifiers and `::` just before.
        let head = &rest[..i];
        let start = head
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |j| j + 1);
        let first = &head[start..];
        rest = &rest[i + 2..];
        let mut base: Vec<String> = match first {
            "crate" => vec![],
            l if l == lib => vec![],
            "self" => here.to_vec(),
            "super" => here[..here.len().saturating_sub(1)].to_vec(),
            _ => continue,
        };
        // `super::super::x`
        let mut tail = rest;
        while let Some(t) = tail.strip_prefix("super::") {
            base.pop();
            tail = t;
        }
        let heads = match tail.strip_prefix('{') {
            Some(group) => group_paths(group),
            None => vec![path_segments(tail)],
        };
        for h in heads {
            let mut p = base.clone();
            p.extend(h);
            out.push(p);
        }
    }
    out
}

/// `a::b::C` → `[a, b, C]`.
fn path_segments(s: &str) -> Vec<String> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    s[..end]
        .split("::")
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The paths of a `{a::b, c, d::{e, f}}` group, to the depth of its first
/// level (enough to name the module).
fn group_paths(group: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut at_item = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item = true,
            c if at_item && depth == 0 && (c.is_alphabetic() || c == '_') => {
                let mut p = path_segments(&group[i..]);
                if p.first().is_some_and(|s| s == "self") {
                    p.clear();
                }
                out.push(p);
                at_item = false;
            }
            _ => {}
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A line without its `//` comment. A `//` inside a string literal (a URL)
/// is kept: only a `//` outside quotes starts a comment.
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => in_string = !in_string,
            '/' if !in_string && prev == '/' => return &line[..i - 1],
            _ => {}
        }
        prev = c;
    }
    line
}

/// Every elementary cycle found by a depth-first search, each once, as the
/// list of modules with the first repeated at the end.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut seen = BTreeSet::new();
    for start in graph.keys() {
        let mut path = vec![start.clone()];
        walk(graph, start, &mut path, &mut found, &mut seen);
    }
    found
}

fn walk(
    graph: &Graph,
    start: &str,
    path: &mut Vec<String>,
    found: &mut Vec<Vec<String>>,
    seen: &mut BTreeSet<BTreeSet<String>>,
) {
    let here = path.last().unwrap().clone();
    for next in graph.get(&here).into_iter().flat_map(|to| to.keys()) {
        if next == start {
            // Each cycle is reported once, from its smallest module.
            let members: BTreeSet<String> = path.iter().cloned().collect();
            if members.iter().next().map(String::as_str) == Some(start) && seen.insert(members) {
                let mut cycle = path.clone();
                cycle.push(start.to_string());
                found.push(cycle);
            }
        } else if !path.contains(next) {
            path.push(next.clone());
            walk(graph, start, path, found, seen);
            path.pop();
        }
    }
}
