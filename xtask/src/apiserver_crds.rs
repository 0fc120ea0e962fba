//! `cargo xtask apiserver-diff`, second part: the CRDs of EgressGateway
//! and Redirect in the same real kube-apiserver 1.20.2.
//!
//! 1. `egress-agent crds` (what the types generate) must equal the
//!    committed `deploy/base/crds.yaml`, and the API server must take it
//!    and serve both kinds (Established);
//! 2. the seed's EgressGateway and Redirect (`policies/`) are created as
//!    custom resources, with kubectl's default validation;
//! 3. every object of `tests/apiserver-corpus-crds/` goes through the API
//!    server and `egress-agent check`, as the main corpus does. A schema
//!    cannot say everything the agent checks, so a file whose probe starts
//!    with `[agent only]` is expected to be accepted by the server and
//!    refused by the agent (listed); any other case must agree, and a
//!    schema that refuses what the agent accepts is always a disagreement;
//! 4. the agent's status writer (`egress-k8s-status`, the agent's own
//!    code) writes, as two nodes, each node's entry by server-side apply
//!    with its own field manager: both entries must end up on each seed
//!    object, with the summary `2/2`, which `kubectl get` then shows. It
//!    acts as the agent's ServiceAccount, with the ClusterRole of
//!    `deploy/base/rbac.yaml` and nothing else: that RBAC is enough.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::{
    apiserver_diff::{
        agent_verdict, create_namespaces, kubectl_in, oracle, print_table, read_corpus, Verdict,
    },
    host,
    k8s::kubectl::Kubectl,
};

/// The files' probes that only the agent can refuse start with this.
const AGENT_ONLY: &str = "[agent only]";
/// The agent's ServiceAccount, as a user name.
const AGENT_USER: &str = "system:serviceaccount:egress-enforcer:egress-agent";
/// The kinds' names in the OpenAPI document.
const OPENAPI_NAMES: [&str; 2] = [
    "dev.enforcer.egress.v1alpha1.EgressGateway",
    "dev.enforcer.egress.v1alpha1.Redirect",
];
/// The CRDs' names.
const CRDS: [&str; 2] = [
    "crd/egressgateways.egress.enforcer.dev",
    "crd/redirects.egress.enforcer.dev",
];

/// Runs the four steps; returns how many failed checks there were.
pub fn check(dir: &Path, kubectl: &Kubectl, agent: &Path) -> anyhow::Result<usize> {
    let root = host::workspace_root();
    let before = dir.join("kube-cache");
    // kubectl validates against the OpenAPI schema it cached: one read
    // before the CRDs were served knows nothing of their kinds, and lets
    // any field through. What follows the install gets a cache of its own.
    let cache = dir.join("kube-cache-crds");
    let kubectl_cmd = || kubectl_in(kubectl, &cache);
    let mut failures = 0;
    println!("\napiserver-diff: the CRDs of EgressGateway and Redirect");

    // 1. The generated CRDs, installed.
    let generated = run_agent(agent, &["crds"])?;
    let committed = fs::read_to_string(root.join("deploy/base/crds.yaml")).unwrap_or_default();
    if generated == committed {
        println!("✓  deploy/base/crds.yaml is what the types generate");
    } else {
        println!("✗  deploy/base/crds.yaml differs from `egress-agent crds`: regenerate it");
        failures += 1;
    }
    let manifest = dir.join("crds.yaml");
    fs::write(&manifest, &generated).context("writing the CRDs")?;
    expect_ok(
        kubectl_in(kubectl, &before)
            .args(["apply", "-f"])
            .arg(&manifest),
        "installing the CRDs",
    )?;
    let mut wait = kubectl_in(kubectl, &before);
    wait.args(["wait", "--for=condition=established", "--timeout=60s"])
        .args(CRDS);
    expect_ok(&mut wait, "waiting for the CRDs to be established")?;
    // kubectl's validation reads the schema from the OpenAPI document,
    // where the API server publishes a CRD a moment after it is
    // Established; until then any field would pass.
    let published = || {
        kubectl_in(kubectl, &before)
            .args(["get", "--raw=/openapi/v2"])
            .output()
            .is_ok_and(|o| {
                let doc = String::from_utf8_lossy(&o.stdout);
                OPENAPI_NAMES.iter().all(|name| doc.contains(name))
            })
    };
    let began = std::time::Instant::now();
    while !published() {
        if began.elapsed() > std::time::Duration::from_secs(60) {
            bail!("the CRDs' schemas are not in /openapi/v2 after 60s");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    println!(
        "✓  the API server serves both kinds (Established) and publishes their schemas after {:.1}s",
        began.elapsed().as_secs_f32()
    );

    // 2. The seed's objects, as custom resources.
    let _ = kubectl_cmd()
        .args(["create", "namespace", "istio-system"])
        .output();
    let mut seed = kubectl_cmd();
    seed.args(["apply", "--validate=true"]);
    for file in ["egress-gateway.yaml", "sidecar-redirect.yaml"] {
        seed.arg("-f").arg(root.join("policies").join(file));
    }
    match seed.output() {
        Ok(out) if out.status.success() => println!(
            "✓  the seed's EgressGateway and Redirect are accepted as custom resources: {}",
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .replace('\n', "; ")
        ),
        Ok(out) => {
            println!(
                "✗  the seed's EgressGateway and Redirect are refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            failures += 1;
        }
        Err(e) => bail!("running kubectl apply: {e}"),
    }

    // 3. The corpus.
    failures += corpus(
        &root.join("tests/apiserver-corpus-crds"),
        kubectl,
        &cache,
        agent,
    )?;

    // 4. Two nodes' status, by server-side apply.
    failures += status(dir, kubectl, &cache, &root)?;
    Ok(failures)
}

/// Step 3; returns the disagreements.
fn corpus(dir: &Path, kubectl: &Kubectl, cache: &Path, agent: &Path) -> anyhow::Result<usize> {
    let cases = read_corpus(dir)?;
    create_namespaces(kubectl, cache, &cases);
    let server = oracle(kubectl, cache, dir, &cases, false)?;
    let schema = oracle(kubectl, cache, dir, &cases, true)?;
    let agent: Vec<Verdict> = cases
        .iter()
        .map(|case| agent_verdict(agent, &case.path))
        .collect::<anyhow::Result<_>>()?;
    let (mut disagreements, mut agent_only, mut schema_only) = (Vec::new(), Vec::new(), Vec::new());
    for (i, case) in cases.iter().enumerate() {
        let (server, schema, agent) = (&server[i], &schema[i], &agent[i]);
        let marked = case.probe.starts_with(AGENT_ONLY);
        if !server.accepted && agent.accepted {
            // The schema refuses what the agent enforces: never right.
            disagreements.push((case, server, agent));
        } else if marked {
            if schema.accepted && !agent.accepted {
                agent_only.push((case, schema, agent));
            } else {
                // The schema says it now, or the agent accepts it: the
                // mark is out of date.
                disagreements.push((case, schema, agent));
            }
        } else if schema.accepted != agent.accepted {
            disagreements.push((case, schema, agent));
        } else if server.accepted && !schema.accepted {
            schema_only.push((case, schema, agent));
        }
    }
    println!(
        "apiserver-diff: custom resources: {} objects, {} agree, {} refused only by kubectl's \
         schema check (unknown fields: the server prunes them), {} refused by the agent alone \
         (expected: no schema can say it), {} disagree",
        cases.len(),
        cases.len() - disagreements.len() - agent_only.len() - schema_only.len(),
        schema_only.len(),
        agent_only.len(),
        disagreements.len()
    );
    if !schema_only.is_empty() {
        println!("\nRefused by kubectl's schema check, pruned by the server alone:");
        print_table(&schema_only);
    }
    if !agent_only.is_empty() {
        println!(
            "\nAccepted by the API server, refused by the agent (quarantined alone in a cluster):"
        );
        print_table(&agent_only);
    }
    if !disagreements.is_empty() {
        println!("\nDISAGREEMENTS (custom resources):");
        print_table(&disagreements);
    }
    Ok(disagreements.len())
}

/// Step 4; returns 1 if it failed.
fn status(dir: &Path, kubectl: &Kubectl, cache: &Path, root: &Path) -> anyhow::Result<usize> {
    let writer = host::test_binary("egress-k8s-status", false)?;
    let kubeconfig = fs::read_to_string(dir.join("admin.kubeconfig")).context("the kubeconfig")?;
    let server = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .map(str::trim)
        .context("no server in the kubeconfig")?;
    let tokens = fs::read_to_string(dir.join("pki/tokens.csv")).context("the token file")?;
    let token = tokens.split(',').next().context("no token")?;
    expect_ok(
        kubectl_in(kubectl, cache)
            .args(["apply", "-f"])
            .arg(root.join("deploy/base/rbac.yaml")),
        "applying the agent's RBAC",
    )?;
    let out = Command::new(&writer)
        .args(["--server", server, "--token", token])
        .args(["--impersonate", AGENT_USER])
        .args(["--node", "node-a", "--node", "node-b"])
        .output()
        .with_context(|| format!("running {}", writer.display()))?;
    let shown = String::from_utf8_lossy(if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    })
    .into_owned();
    let table = kubectl_in(kubectl, cache)
        .args(["get", "egressgateways,redirects", "-A"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ok = out.status.success() && table.matches(" 2/2 ").count() == 2;
    println!(
        "{}  two nodes' status entries, each written by server-side apply as its own field \
         manager (egress-agent/node-a, egress-agent/node-b) with the agent's RBAC, both \
         kept; summary 2/2:",
        if ok { "✓" } else { "✗" }
    );
    for line in shown.lines().chain(table.lines()) {
        println!("     {line}");
    }
    Ok(usize::from(!ok))
}

fn run_agent(agent: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(agent)
        .args(args)
        .output()
        .with_context(|| format!("running {}", agent.display()))?;
    if !out.status.success() {
        bail!(
            "egress-agent {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("egress-agent's output is not UTF-8")
}

fn expect_ok(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: running kubectl"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
