//! Docs that cannot rot: every example in README.md and docs/*.md is run
//! against the code.
//!
//! - Every ```yaml block must pass `egress-agent check`. The rule: a block
//!   is checked alone first; if that fails, it is checked together with the
//!   repository's `policies/` (the seed objects it may name, such as its
//!   Namespaces' labels or the gateway's `clusterCIDRs`). It must pass one
//!   of the two. A block that is deliberately a fragment or deliberately
//!   invalid carries `<!-- not-a-policy -->` on the line before its fence;
//!   only those are skipped, and the test says how many.
//! - In every ```sh (or bash, shell), ```console and ```text block, every
//!   `egress-agent SUBCOMMAND` must be a real subcommand and every
//!   `--flag` (or `-x`) after it on that command line must be one that
//!   `egress-agent SUBCOMMAND --help` lists: the clap definitions live in
//!   the binary, so the binary is asked.
//! - The metrics table of docs/observability.md lists exactly the metrics
//!   that `observe::metrics::render` produces.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

const MARK: &str = "<!-- not-a-policy -->";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_egress-agent"))
}

/// README.md and every page of the book.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

struct Block {
    page: String,
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    marked: bool,
    text: String,
}

/// Fenced blocks, also those indented inside list items (the indentation
/// of the fence is removed from every line).
fn blocks(page: &Path) -> Vec<Block> {
    let text = fs::read_to_string(page).unwrap();
    let name = page.strip_prefix(root()).unwrap().display().to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            let indent = lines[i].len() - trimmed.len();
            let marked = i > 0 && lines[i - 1].trim() == MARK;
            let start = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                let l = lines[i];
                let cut = l.len() - l.trim_start().len();
                body.push(&l[cut.min(indent)..]);
                i += 1;
            }
            out.push(Block {
                page: name.clone(),
                line: start + 1,
                lang: lang.trim().to_owned(),
                marked,
                text: body.join("\n") + "\n",
            });
        }
        i += 1;
    }
    out
}

fn all_blocks() -> Vec<Block> {
    pages().iter().flat_map(|p| blocks(p)).collect()
}

#[test]
fn every_yaml_example_passes_check() {
    let dir = std::env::temp_dir().join(format!("egress-docs-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let policies = root().join("policies");
    let (mut checked, mut skipped, mut with_seed_only) = (0, 0, 0);
    let mut failures = Vec::new();
    for block in all_blocks().iter().filter(|b| b.lang == "yaml") {
        if block.marked {
            skipped += 1;
            continue;
        }
        checked += 1;
        let file = dir.join(format!("example-{checked}.yaml"));
        fs::write(&file, &block.text).unwrap();
        let alone = agent().arg("check").arg(&file).output().unwrap();
        if alone.status.success() {
            continue;
        }
        let with_seed = agent()
            .arg("check")
            .arg(&policies)
            .arg(&file)
            .output()
            .unwrap();
        if with_seed.status.success() {
            with_seed_only += 1;
        } else {
            failures.push(format!(
                "{}:{}: this yaml block fails `egress-agent check` alone:\n{}\
                 and together with policies/:\n{}",
                block.page,
                block.line,
                String::from_utf8_lossy(&alone.stderr),
                String::from_utf8_lossy(&with_seed.stderr),
            ));
        }
        fs::remove_file(&file).unwrap();
    }
    fs::remove_dir_all(&dir).unwrap();
    eprintln!(
        "docs: {checked} yaml block(s) checked ({with_seed_only} of them together with policies/), \
         {skipped} marked {MARK} and skipped"
    );
    assert!(checked > 0, "no yaml block found: is the scan broken?");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The long and short flags that `--help` lists.
fn flags_in_help(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        for word in line.split([' ', ',', '=', '[', '<']) {
            let name: String = word
                .chars()
                .take_while(|c| *c == '-' || c.is_alphanumeric())
                .collect();
            if name.starts_with('-') && name.len() > 1 && name == word {
                flags.insert(name);
            }
        }
    }
    flags
}

fn subcommands() -> BTreeSet<String> {
    let help = agent().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut subs = BTreeSet::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
        } else if in_commands {
            match line.strip_prefix("  ") {
                Some(rest) if !rest.starts_with(' ') => {
                    subs.insert(rest.split_whitespace().next().unwrap().to_owned());
                }
                Some(_) => {}
                None => in_commands = false,
            }
        }
    }
    // Hidden from `--help`, but real (the docs mention it).
    subs.insert("completions".into());
    subs
}

/// Every `egress-agent SUB ...` command line in a block: its subcommand and
/// the flags written after it (continuation lines joined, a `#` comment or
/// a pipe ends it).
fn commands(text: &str) -> Vec<(String, Vec<String>)> {
    let joined = text.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("egress-agent ") {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + "egress-agent ".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '/' || c == '_') {
                continue;
            }
            let sub: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            if sub.is_empty() {
                continue; // `egress-agent 0.1.0 (pid …)`: output, not a command
            }
            let end = [" # ", " | ", " && ", "; "]
                .iter()
                .filter_map(|s| rest.find(s))
                .min()
                .unwrap_or(rest.len());
            let args = &rest[sub.len()..end];
            let flags = args
                .split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '=')
                .filter(|w| w.starts_with('-') && w.len() > 1)
                .map(|w| {
                    w.chars()
                        .take_while(|c| *c == '-' || c.is_alphanumeric())
                        .collect::<String>()
                })
                .filter(|w| w.len() > 1 && w != "--")
                .collect();
            out.push((sub, flags));
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_cli_example_uses_real_subcommands_and_flags() {
    let subs = subcommands();
    assert!(
        subs.contains("check") && subs.contains("run"),
        "could not read the subcommands from `egress-agent --help`: {subs:?}"
    );
    let mut helps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let (mut blocks_seen, mut commands_seen) = (0, 0);
    let mut failures = Vec::new();
    for block in all_blocks().iter().filter(|b| {
        matches!(
            b.lang.as_str(),
            "sh" | "bash" | "shell" | "console" | "text"
        )
    }) {
        blocks_seen += 1;
        for (sub, flags) in commands(&block.text) {
            commands_seen += 1;
            if !subs.contains(&sub) {
                failures.push(format!(
                    "{}:{}: `egress-agent {sub}` is not a subcommand (known: {subs:?})",
                    block.page, block.line
                ));
                continue;
            }
            let known = helps.entry(sub.clone()).or_insert_with(|| {
                let out = agent().args([sub.as_str(), "--help"]).output().unwrap();
                flags_in_help(&String::from_utf8_lossy(&out.stdout))
            });
            for flag in flags {
                if !known.contains(&flag) {
                    failures.push(format!(
                        "{}:{}: `egress-agent {sub}` has no flag {flag} (it has {known:?})",
                        block.page, block.line
                    ));
                }
            }
        }
    }
    eprintln!("docs: {commands_seen} egress-agent command(s) in {blocks_seen} sh/console/text block(s) checked");
    assert!(
        commands_seen > 10,
        "too few commands found: is the scan broken?"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_command_scanner_reads_flags() {
    let cmds = commands(
        "$ egress-agent explain policies/ --from a/b --to 1.2.3.4:5 -o json # --not\n\
         egress-agent run --policies p/ [--audit] \\\n    [--log-format text|json]\n\
         egress-agent 0.1.0 (pid 1)\n",
    );
    assert_eq!(
        cmds,
        vec![
            (
                "explain".into(),
                vec!["--from".into(), "--to".into(), "-o".into()]
            ),
            (
                "run".into(),
                vec!["--policies".into(), "--audit".into(), "--log-format".into()]
            ),
        ]
    );
    let help = "  -o, --output <OUTPUT>  [default: text]\n      --from <NS/W>\n  -h, --help\n";
    let flags = flags_in_help(help);
    for f in ["-o", "--output", "--from", "-h", "--help"] {
        assert!(flags.contains(f), "{f} in {flags:?}");
    }
}

/// The metric names in the first column of docs/observability.md's table.
fn documented_metrics() -> BTreeSet<String> {
    let page = fs::read_to_string(root().join("docs/observability.md")).unwrap();
    let mut names = BTreeSet::new();
    for line in page.lines().filter(|l| l.starts_with("| `egress_")) {
        let first = line.split('|').nth(1).unwrap();
        for part in first.split('`').skip(1).step_by(2) {
            names.insert(part.to_owned());
        }
    }
    names
}

#[test]
fn the_metrics_table_matches_the_code() {
    use egress_agent::{
        dataplane::Counters,
        observe::{metrics::render, Names, Status},
    };
    // With counters present every family is registered, also those that
    // have no sample yet; counters are exposed with `_total`.
    // And with every optional part on (the gateways' DNS relay).
    let status = Status {
        gateway_dns: Some(Default::default()),
        ..Status::default()
    };
    let text = render(&status, Some(&Counters::default()), &Names::default());
    let produced: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().unwrap();
            match words.next() {
                Some("counter") => format!("{name}_total"),
                _ => name.to_owned(),
            }
        })
        .collect();
    assert!(produced.len() > 5, "render produced: {text}");
    let documented = documented_metrics();
    let missing: Vec<_> = produced.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&produced).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/observability.md's metrics table is out of date:\n\
         produced but not documented: {missing:?}\n\
         documented but not produced: {stale:?}"
    );
}
