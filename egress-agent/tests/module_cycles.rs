//! The crate's top-level modules must form a layered graph: each module may
//! use only those below it, so that a newcomer can read the tree in the
//! order data flows (policy → compile → dataplane → agent → cli) and a
//! change to a low module cannot be entangled with its consumers.
//!
//! This scans `src/` for `crate::<module>` paths (and, in the binary's
//! `cli`, `egress_agent::<module>` paths), builds the graph of top-level
//! modules and fails on any cycle, printing it with the files that make
//! each edge. Comments are ignored: a doc link to a higher module is not a
//! dependency.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Top-level modules of the crate (the library's and the binary's `cli`).
const MODULES: &[&str] = &[
    "agent",
    "cli",
    "compile",
    "dataplane",
    "errors",
    "inventory",
    "kubernetes",
    "observe",
    "policy",
    "proxy",
    "resolve",
    "sys",
];

/// Edges allowed even though they close a cycle. Empty: every entry here
/// must say why it cannot be removed yet.
const ALLOWED: &[(&str, &str)] = &[];

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn top_level_modules_have_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(
        graph.values().map(|to| to.len()).sum::<usize>() > 5,
        "the scan found almost no edges; is it reading {}?",
        src.display()
    );
    let cycles = cycles(&graph);
    if !cycles.is_empty() {
        let mut report = String::new();
        for cycle in &cycles {
            report.push_str(&format!("cycle: {}\n", cycle.join(" → ")));
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
        panic!("the top-level module graph has cycles:\n{report}");
    }
}

/// Inside each module, its submodules must not form a cycle either (for
/// example `compile::plan` ⇄ `compile::prefix`, or `dataplane::nft`'s
/// `counters` ⇄ `ruleset`): each graph of siblings is checked on its own.
#[test]
fn submodules_have_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graphs = submodule_graphs(&src);
    assert!(
        graphs.contains_key("compile"),
        "the scan found no edges inside compile: is it reading {}?",
        src.display()
    );
    let mut report = String::new();
    for (parent, graph) in &graphs {
        for cycle in cycles(graph) {
            report.push_str(&format!("cycle in {parent}: {}\n", cycle.join(" → ")));
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
    assert!(report.is_empty(), "submodules have cycles:\n{report}");
}

/// The scanner itself: a cycle it cannot see is a test that cannot fail.
#[test]
fn the_scanner_sees_grouped_imports_and_ignores_comments() {
    let text = "//! See [`crate::agent`].\n\
                use crate::{compile::Plan, observe::{self, Status}};\n\
                /// Not a use: crate::kubernetes\n\
                fn f() { crate::sys::now(); } // crate::proxy\n";
    let found: BTreeSet<String> = references(text).into_iter().collect();
    let expected: BTreeSet<String> = ["compile", "observe", "sys"]
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

fn module_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str();
        let first = first.to_string_lossy();
        let from = match first.trim_end_matches(".rs") {
            // The binary's root declares `mod cli` and is part of it.
            "main" => "cli".to_string(),
            m if MODULES.contains(&m) => m.to_string(),
            _ => continue,
        };
        let text = fs::read_to_string(&file).unwrap();
        for to in references(&text) {
            if to != from && !ALLOWED.contains(&(from.as_str(), to.as_str())) {
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
fn submodule_graphs(src: &Path) -> BTreeMap<String, Graph> {
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
        for to in paths(&text, &from) {
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

/// The absolute paths a file's code names with `crate::`, `super::` and
/// `self::` (groups expanded to their first segment), for the module at
/// `here`.
fn paths(text: &str, here: &[String]) -> Vec<Vec<String>> {
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

/// The top-level modules a file's code (not its comments) refers to.
fn references(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(strip_comment)
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    for prefix in ["crate::", "egress_agent::"] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + prefix.len()..];
            // `my_crate::x` is not `crate::x`.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                out.extend(group_heads(group));
            } else {
                out.push(ident(rest));
            }
        }
    }
    out.retain(|m| MODULES.contains(&m.as_str()));
    out
}

/// The first path segment of every item in `a, b::c, d::{e, f}}`, up to
/// the brace that closes the group.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut at_item = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item = true,
            c if at_item && (c.is_alphabetic() || c == '_') => {
                heads.push(ident(&group[i..]));
                at_item = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
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
