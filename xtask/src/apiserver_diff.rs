//! `cargo xtask apiserver-diff`: the API server is the oracle for what a
//! valid NetworkPolicy or Namespace is.
//!
//! Every object of the corpus (`tests/apiserver-corpus/*.yaml`, one per
//! file) goes through `kubectl apply --dry-run=server` against a real
//! kube-apiserver 1.20.2 and through `egress-agent check`; the verdicts
//! (accepted or rejected) are compared. The corpus records no expected
//! verdicts: the API server decides at run time, so a validator change or
//! a different API server is measured, never assumed.
//!
//! Only etcd and kube-apiserver run, on loopback ports picked at random,
//! with their state, certificates and logs in a temporary directory that
//! is removed afterwards (failures included) unless `--keep`.
//!
//! Two oracle runs per object, because kubectl checks the object against
//! the server's OpenAPI schema before sending it:
//! - the server alone (`--validate=false`): what any API client (client-go,
//!   controllers, Helm) gets. The server silently drops unknown fields,
//!   including `endPort`, which 1.20 does not have.
//! - kubectl's default (schema validation, then the server): what a user
//!   applying the file gets; it rejects unknown fields and wrong types.
//!
//! The agent disagrees when it accepts what the server alone rejects, or
//! rejects what kubectl's default accepts. Between the two (accepted by the
//! server, refused by kubectl's schema check) either verdict is allowed: the
//! agent refuses unknown fields as kubectl does, because a silently dropped
//! typo (`protocl: UDP`, `tоo:`) would widen a policy. Those cases are
//! listed, not counted.
//!
//! Then the CRDs of EgressGateway and Redirect are installed in the same
//! server and checked the same way ([`crate::apiserver_crds`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ExitCode, Output},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    apiserver_crds, host,
    k8s::{
        control_plane::{self, ETCD},
        kube_build,
        kubectl::Kubectl,
        layout::cache_bin,
        packages, pki, procs,
    },
    run,
};

#[derive(clap::Args)]
pub struct ApiserverDiffArgs {
    /// The corpus: one object per `*.yaml` file, whose first line is a
    /// `#` comment saying what it probes.
    #[arg(long, default_value = "tests/apiserver-corpus")]
    corpus: PathBuf,
    /// Leave etcd and the API server running, and their directory
    /// (certificates, kubeconfig, logs), for a closer look.
    #[arg(long)]
    keep: bool,
}

/// One corpus file.
pub(crate) struct Case {
    pub(crate) path: PathBuf,
    /// The file name, which names the case in the table.
    pub(crate) name: String,
    /// What it probes: its first line, without the `#`.
    pub(crate) probe: String,
}

/// A verdict and, for a rejection, why.
#[derive(Clone)]
pub(crate) struct Verdict {
    pub(crate) accepted: bool,
    reason: String,
}

impl Verdict {
    fn word(&self) -> &'static str {
        if self.accepted {
            "accepted"
        } else {
            "rejected"
        }
    }
}

pub fn run(args: &ApiserverDiffArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let root = host::workspace_root();
    let corpus_dir = root.join(&args.corpus);
    let cases = read_corpus(&corpus_dir)?;
    println!(
        "apiserver-diff: {} objects in {}",
        cases.len(),
        corpus_dir.display()
    );
    ensure_binaries()?;
    let agent = build_agent(&root)?;

    let mut cluster = TempCluster::create(args.keep)?;
    let result = cluster.start().and_then(|kubectl| {
        let disagreements = compare(&cluster, &kubectl, &agent, &corpus_dir, &cases)?;
        let crds = apiserver_crds::check(&cluster.dir, &kubectl, &agent)?;
        Ok((disagreements, crds))
    });
    drop(cluster);
    let (disagreements, crds) = result?;
    println!(
        "apiserver-diff: {} objects, {} disagreement(s); CRDs: {} failed check(s); {:.1}s",
        cases.len(),
        disagreements,
        crds,
        started.elapsed().as_secs_f32()
    );
    Ok(if disagreements == 0 && crds == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) fn read_corpus(dir: &Path) -> anyhow::Result<Vec<Case>> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut cases = Vec::new();
    for entry in entries {
        let path = entry.context("listing the corpus")?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let Some(probe) = text.lines().next().and_then(|l| l.strip_prefix('#')) else {
            bail!(
                "{}: line 1 must be a `#` comment saying what the object probes",
                path.display()
            );
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        cases.push(Case {
            probe: probe.trim().to_owned(),
            name,
            path,
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    if cases.is_empty() {
        bail!("no *.yaml objects in {}", dir.display());
    }
    Ok(cases)
}

/// etcd and kube-apiserver 1.20.2 as `cargo xtask k8s-test` gets them: the
/// packages step installs etcd, the build step builds (or finds cached)
/// the Kubernetes binaries.
fn ensure_binaries() -> anyhow::Result<()> {
    if Path::new(ETCD).exists() && cache_bin("kube-apiserver").exists() {
        return Ok(());
    }
    if !host::is_root() {
        bail!(
            "etcd ({ETCD}) or kube-apiserver ({}) is missing, and installing them needs root \
             (or run `cargo xtask k8s-test --build-only` as root once)",
            cache_bin("kube-apiserver").display()
        );
    }
    println!("apiserver-diff: packages: {}", packages::ensure()?);
    println!(
        "apiserver-diff: kubernetes binaries: {}",
        kube_build::ensure()?
    );
    Ok(())
}

fn build_agent(root: &Path) -> anyhow::Result<PathBuf> {
    run::check(
        run::cargo()
            .args(["build", "-p", "egress-agent", "--bin", "egress-agent"])
            .current_dir(root),
    )?;
    Ok(host::target_dir(root).join("debug").join("egress-agent"))
}

/// etcd and kube-apiserver in a temporary directory; dropping it kills
/// them (only these children, by pid) and removes the directory.
struct TempCluster {
    dir: PathBuf,
    keep: bool,
    children: Vec<(&'static str, Child)>,
}

impl TempCluster {
    fn create(keep: bool) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("egress-apiserver-diff.{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir,
            keep,
            children: Vec::new(),
        })
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Starts etcd and the API server; a kubectl for it once it is ready.
    fn start(&mut self) -> anyhow::Result<Kubectl> {
        let [etcd_client, etcd_peer, api] = free_ports()?;
        let server = format!("https://127.0.0.1:{api}");
        let pki = pki::create_in(&self.dir.join("pki"), &server, &self.kubeconfig())?;

        let etcd_dir = self.dir.join("etcd");
        let etcd = procs::spawn_logged(
            None,
            "etcd",
            &self.dir.join("etcd.log"),
            Path::new(ETCD),
            &control_plane::etcd_args(&etcd_dir, etcd_client, etcd_peer),
        )?;
        self.children.push(("etcd", etcd));
        let apiserver_log = self.dir.join("kube-apiserver.log");
        let apiserver = procs::spawn_logged(
            None,
            "kube-apiserver",
            &apiserver_log,
            &cache_bin("kube-apiserver"),
            &control_plane::apiserver_args(
                &pki,
                &format!("http://127.0.0.1:{etcd_client}"),
                "127.0.0.1",
                api,
                "127.0.0.1",
            ),
        )?;
        self.children.push(("kube-apiserver", apiserver));

        let kubectl = Kubectl::with_kubeconfig(self.kubeconfig());
        let cache = self.dir.join("kube-cache");
        let ready = || {
            kubectl_in(&kubectl, &cache)
                .args(["get", "--raw=/readyz", "--request-timeout=2s"])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ok"))
        };
        let (name, child) = self.children.last_mut().context("apiserver was pushed")?;
        let after = procs::wait_logged(
            "the API server's /readyz",
            Duration::from_secs(120),
            Some((name, apiserver_log, child)),
            ready,
        )?;
        println!(
            "apiserver-diff: kube-apiserver ready on {server} after {:.1}s",
            after.as_secs_f32()
        );
        Ok(kubectl)
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if self.keep {
            let pids: Vec<String> = self
                .children
                .iter()
                .map(|(name, child)| format!("{name} {}", child.id()))
                .collect();
            println!(
                "apiserver-diff: --keep: still running: {}; kubectl --kubeconfig {}; \
                 remove {} afterwards",
                pids.join(", "),
                self.kubeconfig().display(),
                self.dir.display()
            );
            return;
        }
        // The API server first, so that it does not log etcd's departure.
        for (name, child) in self.children.iter_mut().rev() {
            if let Err(err) = child.kill() {
                eprintln!("apiserver-diff: stopping {name}: {err}");
            }
            let _ = child.wait();
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("apiserver-diff: removing {}: {err}", self.dir.display());
        }
    }
}

/// Three loopback ports that were free a moment ago. Another process may
/// take one in between; then etcd or the API server fails to bind and the
/// run fails with its log, which is rare enough not to retry.
fn free_ports() -> anyhow::Result<[u16; 3]> {
    let listeners = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    let mut ports = [0u16; 3];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().context("a listener's port")?.port();
    }
    Ok(ports)
}

/// kubectl for the temporary cluster, its discovery cache in `cache`
/// rather than the user's ~/.kube.
pub(crate) fn kubectl_in(kubectl: &Kubectl, cache: &Path) -> std::process::Command {
    let mut cmd = kubectl.command();
    cmd.arg(format!("--cache-dir={}", cache.display()));
    cmd
}

fn compare(
    cluster: &TempCluster,
    kubectl: &Kubectl,
    agent: &Path,
    corpus_dir: &Path,
    cases: &[Case],
) -> anyhow::Result<usize> {
    let cache = cluster.dir.join("kube-cache");
    create_namespaces(kubectl, &cache, cases);

    let began = Instant::now();
    let server = oracle(kubectl, &cache, corpus_dir, cases, false)?;
    let schema = oracle(kubectl, &cache, corpus_dir, cases, true)?;
    println!(
        "apiserver-diff: API server verdicts in {:.1}s",
        began.elapsed().as_secs_f32()
    );
    let began = Instant::now();
    let agent: Vec<Verdict> = cases
        .iter()
        .map(|case| agent_verdict(agent, &case.path))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "apiserver-diff: agent verdicts in {:.1}s",
        began.elapsed().as_secs_f32()
    );

    let mut disagreements = Vec::new();
    let mut schema_only = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (server, schema, agent) = (&server[i], &schema[i], &agent[i]);
        if !server.accepted && agent.accepted {
            disagreements.push((case, server, agent));
        } else if schema.accepted && !agent.accepted {
            disagreements.push((case, schema, agent));
        } else if server.accepted && !schema.accepted {
            schema_only.push((case, schema, agent));
        }
    }
    let agreed = cases.len() - disagreements.len() - schema_only.len();
    println!(
        "\napiserver-diff: {agreed} agree, {} disagree, \
         {} refused only by kubectl's schema check",
        disagreements.len(),
        schema_only.len()
    );
    if !schema_only.is_empty() {
        println!("\nRefused by kubectl's schema check, accepted by the server alone (either agent verdict is allowed):");
        print_table(&schema_only);
    }
    if !disagreements.is_empty() {
        println!("\nDISAGREEMENTS:");
        print_table(&disagreements);
    }
    Ok(disagreements.len())
}

pub(crate) fn print_table(rows: &[(&Case, &Verdict, &Verdict)]) {
    let width = rows.iter().map(|(c, _, _)| c.name.len()).max().unwrap_or(4);
    println!("{:width$}  {:9} {:8}  probe", "file", "apiserver", "agent");
    for (case, api, agent) in rows {
        println!(
            "{:width$}  {:9} {:8}  {}",
            case.name,
            api.word(),
            agent.word(),
            case.probe
        );
        for (who, v) in [("apiserver", api), ("agent", agent)] {
            if !v.reason.is_empty() {
                println!("{:width$}    {who}: {}", "", one_line(&v.reason, 200));
            }
        }
    }
}

fn one_line(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// Creates the namespaces the corpus's objects live in, since the API
/// server refuses a namespaced object in a namespace that does not exist
/// (an admission check, not validation; the agent creates namespaces
/// implicitly). A name the API server refuses is left to the objects that
/// use it, which it then refuses for the same reason.
pub(crate) fn create_namespaces(kubectl: &Kubectl, cache: &Path, cases: &[Case]) {
    let mut names = BTreeSet::new();
    for case in cases {
        let text = fs::read_to_string(&case.path).unwrap_or_default();
        for line in text.lines() {
            // `metadata.namespace` in the corpus's block style.
            if let Some(ns) = line.strip_prefix("  namespace:") {
                let ns = ns.trim().trim_matches('"').trim_matches('\'');
                if !ns.is_empty() && ns != "default" {
                    names.insert(ns.to_owned());
                }
            }
        }
    }
    for ns in &names {
        let _ = kubectl_in(kubectl, cache)
            .args(["create", "namespace", ns])
            .output();
    }
}

/// The API server's verdict on every case, from one `kubectl apply
/// --dry-run=server` of the whole corpus (one kubectl per object would
/// take minutes). kubectl goes on after a failed object and names its
/// file in the error, so a case is rejected exactly when its path appears
/// in kubectl's errors; the number of dry-run successes on stdout must
/// then equal the number of cases left, or the attribution is wrong.
pub(crate) fn oracle(
    kubectl: &Kubectl,
    cache: &Path,
    corpus_dir: &Path,
    cases: &[Case],
    schema: bool,
) -> anyhow::Result<Vec<Verdict>> {
    let validate = if schema {
        "--validate=true"
    } else {
        "--validate=false"
    };
    let out: Output = kubectl_in(kubectl, cache)
        .args(["apply", "--dry-run=server", validate, "-f"])
        .arg(corpus_dir)
        .output()
        .context("running kubectl apply")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut reasons: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    // An error names its file as `"<path>"`; kubectl may print paths as
    // given or absolute, so the file name (unique in the corpus) decides.
    // kubectl may also join several files' errors on one line: each case
    // keeps its part, from its name to the next file's.
    for line in stderr.lines() {
        for case in cases {
            // `"<path>"` for the server's and the schema's errors, and
            // `<path>: ` for a file kubectl cannot even parse.
            let quoted = format!("{}\"", case.name);
            let parsed = format!("{}: ", case.name);
            let found = line.find(&quoted).or_else(|| {
                line.find(&parsed)
                    .filter(|_| line.contains("error parsing"))
            });
            if let Some(at) = found {
                let rest = &line[at..];
                let end = rest[quoted.len()..]
                    .find("error validating \"")
                    .map_or(rest.len(), |e| e + quoted.len());
                reasons.entry(&case.name).or_default().push(&rest[..end]);
            }
        }
    }
    let verdicts: Vec<Verdict> = cases
        .iter()
        .map(|case| match reasons.get(case.name.as_str()) {
            Some(lines) => Verdict {
                accepted: false,
                reason: lines.join(" "),
            },
            None => Verdict {
                accepted: true,
                reason: String::new(),
            },
        })
        .collect();
    let accepted = verdicts.iter().filter(|v| v.accepted).count();
    let dry_runs = stdout
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    if accepted != dry_runs {
        bail!(
            "kubectl apply {validate}: {dry_runs} objects passed the dry run, but {accepted} \
             files are not named in its errors; its output cannot be attributed.\n\
             stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    Ok(verdicts)
}

/// `egress-agent check FILE -o json`: valid or not, and its first error.
pub(crate) fn agent_verdict(agent: &Path, file: &Path) -> anyhow::Result<Verdict> {
    let out = std::process::Command::new(agent)
        .arg("check")
        .arg(file)
        .args(["-o", "json"])
        .output()
        .with_context(|| format!("running {}", agent.display()))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "egress-agent check {}: no JSON report (exit {}): {}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    let accepted = report["valid"]
        .as_bool()
        .context("report without `valid`")?;
    if accepted != out.status.success() {
        bail!(
            "egress-agent check {}: report says valid={accepted} but exit status is {}",
            file.display(),
            out.status
        );
    }
    let reason = report["diagnostics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| accepted || d["severity"] == "error")
        .map(|d| {
            format!(
                "{}: {}: {}",
                d["severity"].as_str().unwrap_or("?"),
                d["field"].as_str().unwrap_or("(document)"),
                d["message"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Verdict { accepted, reason })
}
