//! k8s-test: the seed's EgressGateway and Redirect as custom resources.
//!
//! `deploy/base` installs the CRDs (`crds.yaml`) and still mounts the
//! ConfigMap of files, the option for clusters without them. This test
//! runs the seed through the custom resources *instead*: [`OVERLAY`]
//! empties the ConfigMap (an object in both would be a name clash, which
//! leaves the custom resource out), and [`prepare`] installs the CRDs and
//! creates the objects from `policies/` before the agent starts, so its
//! first inventory has them. Every gateway and capture check of the
//! scenario then proves the custom-resource path (watch, validation,
//! enforcement); the ConfigMap path stays covered by file mode, the
//! simulated node and kind-test, which applies `deploy/` as it is.
//!
//! [`check`] then asks the API server what the agents wrote: each seed
//! object `Programmed=True` on both nodes (`2/2` in `kubectl get`), and
//! an object the schema can refuse refused.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    kubectl::Kubectl,
    layout::{NODE_A, NODE_B},
    scenario::Checks,
};
use crate::host;

/// Appended to the k8s-test overlay's `patches:`: the ConfigMap keeps only
/// a note (a file the agent does not read), so the seed's objects come
/// from the custom resources alone.
pub const OVERLAY: &str = "\
- target:
    kind: ConfigMap
    name: egress-policies
  patch: |-
    - op: replace
      path: /data
      value:
        README: \"k8s-test: the seed's EgressGateway and Redirect are custom resources\"
";

/// The seed's objects, as `policies/` has them.
const SEED: [&str; 2] = ["egress-gateway.yaml", "sidecar-redirect.yaml"];

/// `kubectl get` of both kinds in every namespace.
const KINDS: &str = "egressgateways,redirects";

/// Installs the CRDs and creates the seed's objects as custom resources;
/// before the agent, after the seed's Namespaces.
pub fn prepare(kubectl: &Kubectl) -> anyhow::Result<()> {
    let root = host::workspace_root();
    let crds = root.join("deploy/base/crds.yaml");
    kubectl.run(&["apply", "-f", &path(&crds)])?;
    kubectl.run(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/egressgateways.egress.enforcer.dev",
        "crd/redirects.egress.enforcer.dev",
    ])?;
    let mut args = vec!["apply".to_owned()];
    for file in SEED {
        args.push("-f".into());
        args.push(path(&root.join("policies").join(file)));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kubectl
        .run(&args)
        .context("creating the seed's EgressGateway and Redirect as custom resources")
}

/// What the agents wrote, and what the API server refuses.
pub fn check(kubectl: &Kubectl, checks: &mut Checks) {
    let (ok, observed) = programmed_everywhere(kubectl, Duration::from_secs(120));
    checks.check(
        ok,
        "kubectl get egressgateways,redirects -A: the seed's objects are Programmed=True on both nodes (2/2)",
        &observed,
    );
    // Invalid where the schema can say it: the API server refuses it, so
    // no agent ever sees it.
    let invalid = "apiVersion: egress.enforcer.dev/v1alpha1
kind: Redirect
metadata:
  name: k8s-test-invalid
  namespace: default
spec:
  capture: Everyone
  proxy:
    port: 70000
";
    let refused = kubectl.stdin(&["apply", "--dry-run=server", "-f", "-"], invalid);
    let why = match &refused {
        Ok(()) => "accepted".to_owned(),
        Err(e) => format!("{e:#}"),
    };
    checks.check(
        refused.is_err() && why.contains("spec.capture") && why.contains("spec.proxy.port"),
        "the API server refuses a Redirect with capture: Everyone and proxy.port 70000",
        &why,
    );
}

/// Polls until every seed object shows `2/2` and both nodes' entries say
/// `Programmed=True` for its generation; what was seen last, as text.
fn programmed_everywhere(kubectl: &Kubectl, limit: Duration) -> (bool, String) {
    let entries = "{range .items[*]}{.kind} {.metadata.namespace}/{.metadata.name} \
                   generation {.metadata.generation}:{range .status.nodes[*]} \
                   {.node}={.conditions[?(@.type==\"Programmed\")].status}\
                   ({.conditions[?(@.type==\"Programmed\")].reason}, \
                   observedGeneration {.observedGeneration}){end}{\"\\n\"}{end}";
    let began = Instant::now();
    loop {
        let table = kubectl.output(&["get", KINDS, "-A"]).unwrap_or_default();
        let nodes = kubectl
            .output(&["get", KINDS, "-A", "-o", &format!("jsonpath={entries}")])
            .unwrap_or_default();
        let lines: Vec<&str> = nodes.lines().filter(|l| !l.trim().is_empty()).collect();
        let ok = table.matches(" 2/2 ").count() == SEED.len()
            && lines.len() == SEED.len()
            && lines.iter().all(|l| {
                [NODE_A.name, NODE_B.name]
                    .iter()
                    .all(|n| l.contains(&format!("{n}=True(Applied")))
            });
        if ok || began.elapsed() > limit {
            let observed = format!(
                "after {:.1}s\n{}\n{}",
                began.elapsed().as_secs_f32(),
                table.trim_end(),
                nodes.trim_end()
            );
            return (ok, observed);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
