//! `cargo xtask netpol-e2e`: the upstream NetworkPolicy e2e suite
//! (`test/e2e/network/network_policy.go`, `[Feature:NetworkPolicy]`) from
//! the same Kubernetes source as the cluster, run on the local two-node
//! cluster (kube-proxy, DNS through a Service) with the agent as the only
//! enforcer.
//!
//! Every case that only needs egress enforcement must pass ([`EGRESS_CASES`]);
//! the others expect the *server's* Ingress rules to refuse a connection,
//! which an egress enforcer does not do, and are reported out of scope with
//! the reason. The suite's clients connect to Service ClusterIPs, so it
//! also judges the agent's Services handling.
//!
//! Writes `target/netpol-e2e/summary.json` (one entry per case) and, with
//! `--write-docs`, the table in `docs/netpol-e2e.md`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};

use super::{
    kube_build,
    layout::{self, LOG_DIR, NODE_A},
    packages,
    scenario::Checks,
    step, K8sTestArgs,
};
use crate::host;

/// The image name the 1.20 suite asks for (`test/utils/image/manifest.go`).
pub const AGNHOST_IMAGE: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";

#[derive(clap::Args)]
pub struct NetpolE2eArgs {
    /// Only build (or find cached) `e2e.test` and `agnhost`.
    #[arg(long)]
    build_only: bool,
    /// Run every `[Feature:NetworkPolicy]` case, not only the egress ones
    /// (about half an hour here).
    #[arg(long)]
    full: bool,
    /// Write the results table to docs/netpol-e2e.md (use with `--full`).
    #[arg(long)]
    write_docs: bool,
    /// Leave the cluster running afterwards (see `k8s-test --keep`).
    #[arg(long)]
    keep: bool,
}

/// What to run of the suite, and where its results go.
pub struct Suite {
    focus: String,
    out: PathBuf,
    write_docs: bool,
}

pub fn run(args: &NetpolE2eArgs) -> anyhow::Result<ExitCode> {
    if !host::is_root() {
        bail!(
            "netpol-e2e needs root (euid {}): it runs a local cluster",
            host::euid()
        );
    }
    step("packages", packages::ensure)?;
    step("e2e binaries", kube_build::ensure_e2e)?;
    if args.build_only {
        return Ok(ExitCode::SUCCESS);
    }
    let suite = Suite {
        focus: if args.full {
            r"\[Feature:NetworkPolicy\]".to_owned()
        } else {
            egress_focus()
        },
        out: host::target_dir(&host::workspace_root()).join("netpol-e2e"),
        write_docs: args.write_docs,
    };
    let k8s = K8sTestArgs {
        keep: args.keep,
        teardown: false,
        release: false,
        build_only: false,
        no_agent: false,
    };
    super::run_with(&k8s, Some(&suite))
}

/// Runs the suite on the cluster that is up, and records one check per
/// case that must pass.
pub fn run_suite(suite: &Suite, checks: &mut Checks) -> anyhow::Result<()> {
    let junit = suite.out.join("junit");
    if junit.exists() {
        fs::remove_dir_all(&junit).with_context(|| format!("clearing {}", junit.display()))?;
    }
    fs::create_dir_all(&junit).with_context(|| format!("creating {}", junit.display()))?;
    let log = Path::new(LOG_DIR).join("netpol-e2e.log");
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    println!(
        "netpol-e2e: running e2e.test (focus {:?}); its log is {}",
        suite.focus,
        log.display()
    );
    let began = Instant::now();
    // The suite runs where the API server is reachable: node A's network
    // namespace. SCTP cannot run here (no SCTP in this kernel).
    let status = Command::new("nsenter")
        .arg(format!(
            "--net={}",
            layout::netns_path(NODE_A.name).display()
        ))
        .arg(layout::cache_bin("e2e.test"))
        .arg("--kubeconfig")
        .arg(layout::kubeconfig())
        .args(["--provider", "skeleton", "--num-nodes", "2"])
        .arg(format!("--ginkgo.focus={}", suite.focus))
        .arg("--ginkgo.skip=SCTP")
        .args(["--ginkgo.noColor", "--disable-log-dump"])
        .arg("--report-dir")
        .arg(&junit)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("running e2e.test")?;
    println!(
        "netpol-e2e: e2e.test exited {status} after {:.0}s",
        began.elapsed().as_secs_f32()
    );
    let mut cases = Vec::new();
    for entry in fs::read_dir(&junit)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "xml") {
            let xml =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            cases.extend(parse_junit(&xml));
        }
    }
    let results = classify(&cases);
    if results.is_empty() {
        bail!(
            "e2e.test reported no NetworkPolicy case; see {}",
            log.display()
        );
    }
    for case in &results {
        println!("netpol-e2e: {:<13} {}", case.result, case.name);
        if EGRESS_CASES.iter().any(|c| case.name.contains(c)) {
            checks.check(case.result == "passed", &case.name, &case.reason);
        }
    }
    let summary = suite.out.join("summary.json");
    fs::write(&summary, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", summary.display()))?;
    println!("netpol-e2e: wrote {}", summary.display());
    if suite.write_docs {
        let docs = host::workspace_root().join("docs/netpol-e2e.md");
        fs::write(&docs, table(&results, began.elapsed().as_secs()))
            .with_context(|| format!("writing {}", docs.display()))?;
        println!("netpol-e2e: wrote {}", docs.display());
    }
    Ok(())
}

/// One entry per NetworkPolicy case the report names.
fn classify(cases: &[(String, Option<bool>)]) -> Vec<CaseResult> {
    let mut out: Vec<CaseResult> = cases
        .iter()
        .filter(|(name, _)| name.contains("NetworkPolicy"))
        .map(|(name, outcome)| {
            let ran = match outcome {
                Some(true) => "passed",
                Some(false) => "failed",
                None => "not run",
            };
            if EGRESS_CASES.iter().any(|c| name.contains(c)) {
                CaseResult {
                    name: name.clone(),
                    result: if *outcome == Some(true) {
                        "passed"
                    } else {
                        "failed"
                    },
                    reason: format!(
                        "egress only: every denial it expects is of traffic a pod sends ({ran})"
                    ),
                }
            } else {
                CaseResult {
                    name: name.clone(),
                    result: "out-of-scope",
                    reason: format!("{} ({ran})", out_of_scope_reason(name)),
                }
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

fn table(results: &[CaseResult], seconds: u64) -> String {
    let passed = results.iter().filter(|r| r.result == "passed").count();
    let failed = results.iter().filter(|r| r.result == "failed").count();
    let out = results
        .iter()
        .filter(|r| r.result == "out-of-scope")
        .count();
    let mut text = format!(
        "# The upstream NetworkPolicy e2e suite\n\n\
         `cargo xtask netpol-e2e` runs Kubernetes 1.20.2's\n\
         `test/e2e/network/network_policy.go` (`e2e.test` and `agnhost` built from\n\
         the same Debian source as the cluster, agnhost packed as\n\
         `k8s.gcr.io/e2e-test-images/agnhost:2.21` without a registry) on the local\n\
         two-node cluster (kube-proxy in iptables mode, DNS through a Service), with\n\
         the agent as the only enforcer. The suite's clients connect to Service\n\
         ClusterIPs, so every case also exercises Services judged by their backends.\n\n\
         Every case that only needs egress enforcement must pass; CI runs exactly\n\
         those (`cargo xtask netpol-e2e`). The others expect a *server's* Ingress\n\
         rules to refuse a connection, which an egress enforcer does not do, and are\n\
         out of scope, each with its reason (and, in parentheses, what the case did\n\
         when run). `summary.json` is written to `target/netpol-e2e/`.\n\n\
         This table is from a full run (`cargo xtask netpol-e2e --full\n\
         --write-docs`), which took {seconds} s.\n\n\
         **{passed} passed, {failed} failed, {out} out of scope.**\n\n\
         | case | result | why |\n|---|---|---|\n"
    );
    for r in results {
        let name = r.name.replace('|', "\\|");
        text.push_str(&format!("| {name} | {} | {} |\n", r.result, r.reason));
    }
    text
}

/// One case of the suite, as written to `summary.json`.
#[derive(Debug, serde::Serialize)]
pub struct CaseResult {
    pub name: String,
    /// `passed`, `failed` or `out-of-scope`.
    pub result: &'static str,
    pub reason: String,
}

/// The cases that only need egress enforcement: every denial they expect
/// is of a connection *from* a pod that an Egress policy selects. They
/// must pass. Matched by a distinctive part of the case's name.
pub const EGRESS_CASES: &[&str] = &[
    "should support a 'default-deny-all' policy",
    "should allow egress access on one named port",
    "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
    "should enforce multiple egress policies with egress allow-all policy taking precedence",
    "should allow egress access to server in CIDR block",
    "should enforce except clause while egress access to server in CIDR block",
    "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
];

/// Why a case that is not in [`EGRESS_CASES`] is out of scope.
pub fn out_of_scope_reason(name: &str) -> String {
    if name.contains("NetworkPolicy API") {
        return "exercises the API server's NetworkPolicy endpoints (create, list, watch, patch, delete), not any enforcement; not tagged [Feature:NetworkPolicy]".to_owned();
    }
    if name.contains("SCTP") {
        return "needs SCTP, which this kernel does not have".to_owned();
    }
    if name.contains("Ingress,Egress specified together") {
        return "one of its denials (client-b to port 81 of a pod whose policy allows only port 80 in) is decided by the server's Ingress rules; an egress enforcer filters what pods send, not what they receive".to_owned();
    }
    if name.contains("ingress and egress policies can be controlled independently") {
        return "its denial (pod-b to pod-a) comes from pod-a's Ingress: [] while pod-b sends freely; an egress enforcer filters what pods send, not what they receive".to_owned();
    }
    "every denial it expects comes from an Ingress policy on the server pod (the client has no Egress policy); an egress enforcer filters what pods send, not what they receive".to_owned()
}

/// The ginkgo focus that runs exactly [`EGRESS_CASES`].
pub fn egress_focus() -> String {
    EGRESS_CASES
        .iter()
        .map(|c| regex_escape(c))
        .collect::<Vec<_>>()
        .join("|")
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `(name, outcome)` of every `<testcase>` in a ginkgo JUnit report:
/// `Some(true)` passed, `Some(false)` failed, `None` skipped.
pub fn parse_junit(xml: &str) -> Vec<(String, Option<bool>)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<testcase ") {
        rest = &rest[start..];
        let head_end = rest.find('>').unwrap_or(rest.len());
        let head = &rest[..head_end];
        let name = attribute(head, "name").map(unescape).unwrap_or_default();
        let (body, next) = if head.ends_with('/') {
            ("", &rest[head_end..])
        } else {
            match rest.find("</testcase>") {
                Some(end) => (&rest[head_end..end], &rest[end..]),
                None => (&rest[head_end..], ""),
            }
        };
        let outcome = if body.contains("<skipped") {
            None
        } else {
            Some(!body.contains("<failure") && !body.contains("<error"))
        };
        out.push((name, outcome));
        rest = &next[next.len().min(1)..];
    }
    out
}

fn attribute<'a>(head: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!(" {key}=\"");
    let start = head.find(&needle)? + needle.len();
    let len = head[start..].find('"')?;
    Some(&head[start..start + len])
}

fn unescape(s: &str) -> String {
    s.replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_cases_are_read_with_their_outcome() {
        let xml = r#"<testsuite><testcase name="[sig-network] NetworkPolicy a &#39;default-deny-all&#39; x" classname="k" time="1"></testcase>
<testcase name="[sig-network] NetworkPolicy b" classname="k"><failure message="m">boom</failure></testcase>
<testcase name="[sig-storage] c" classname="k"><skipped></skipped></testcase></testsuite>"#;
        assert_eq!(
            parse_junit(xml),
            vec![
                (
                    "[sig-network] NetworkPolicy a 'default-deny-all' x".to_owned(),
                    Some(true)
                ),
                ("[sig-network] NetworkPolicy b".to_owned(), Some(false)),
                ("[sig-storage] c".to_owned(), None),
            ]
        );
    }

    #[test]
    fn the_focus_matches_exactly_the_egress_cases() {
        let focus = egress_focus();
        assert_eq!(focus.matches('|').count() + 1, EGRESS_CASES.len());
        assert!(focus.contains(r"IPBlock\.CIDR"));
    }
}
