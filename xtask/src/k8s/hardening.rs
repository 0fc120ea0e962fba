//! The hardened install, as the cluster runs it: the DaemonSet's security
//! settings as the API server stored them, metrics on the pod's addresses
//! only, and the two overlays of `deploy/overlays/` rendered by `kubectl
//! kustomize` with what each is meant to change.

use std::process::Command;

use super::{
    kubectl::Kubectl,
    layout::{self, NodeSpec, METRICS_PORT, NODES},
    scenario::Checks,
};
use crate::host;

/// Every check of the hardened deploy.
pub fn check(kubectl: &Kubectl, checks: &mut Checks) {
    stored_spec(kubectl, checks);
    for node in NODES {
        metrics_not_on_loopback(node, checks);
    }
    overlays(checks);
}

/// The DaemonSet as stored: seccomp RuntimeDefault, the cgroup mount
/// read-only, metrics on `$(POD_IPS)`, the namespace's PSA labels.
fn stored_spec(kubectl: &Kubectl, checks: &mut Checks) {
    let get = |args: &[&str]| kubectl.output(args).unwrap_or_else(|e| format!("{e:#}"));
    let ds = [
        "get",
        "daemonset",
        "-n",
        "egress-enforcer",
        "egress-agent",
        "-o",
    ];
    let seccomp = get(&[
        &ds[..],
        &["jsonpath={.spec.template.spec.securityContext.seccompProfile.type}"],
    ]
    .concat());
    checks.check(
        seccomp.trim() == "RuntimeDefault",
        "the agent's pods run with seccomp RuntimeDefault",
        seccomp.trim(),
    );
    let cgroup = get(&[
        &ds[..],
        &["jsonpath={.spec.template.spec.containers[0].volumeMounts[?(@.name==\"cgroup\")].readOnly}"],
    ]
    .concat());
    checks.check(
        cgroup.trim() == "true",
        "the agent's cgroup2 mount is read-only",
        &format!("readOnly: {}", cgroup.trim()),
    );
    let args = get(&[
        &ds[..],
        &["jsonpath={.spec.template.spec.containers[0].args}"],
    ]
    .concat());
    checks.check(
        args.contains("--metrics-addr=$(POD_IPS)"),
        "metrics are bound to the pod's addresses ($(POD_IPS))",
        &args,
    );
    let labels = get(&[
        "get",
        "namespace",
        "egress-enforcer",
        "-o",
        "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}",
    ]);
    checks.check(
        labels.trim() == "privileged",
        "namespace egress-enforcer carries its Pod Security level (enforce: privileged)",
        labels.trim(),
    );
}

/// The agent serves the node's address (checked by `check_metrics`), and
/// nothing on the node's loopback: it is bound to the pod's addresses, not
/// to every address of the node.
fn metrics_not_on_loopback(node: &NodeSpec, checks: &mut Checks) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", layout::netns_path(node.name).display()))
        .args(["curl", "-sS", "--max-time", "3", "-o", "/dev/null"])
        .arg(format!("http://127.0.0.1:{METRICS_PORT}/metrics"))
        .output();
    let (refused, said) = match out {
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
            // curl's exit code 7: it could not connect (nothing listens
            // there); anything else (a timeout, an answer) is not that.
            (o.status.code() == Some(7), err)
        }
        Err(e) => (false, e.to_string()),
    };
    checks.check(
        refused,
        &format!(
            "the agent on {} does not serve metrics on 127.0.0.1:{METRICS_PORT}",
            node.name
        ),
        &said,
    );
}

/// `kubectl kustomize` of each overlay: it renders, and changes what it is
/// for.
fn overlays(checks: &mut Checks) {
    let deploy = host::workspace_root().join("deploy");
    // Every object of the base, and no other, in each overlay.
    let base_objects = objects(&render(&deploy.join("base")).unwrap_or_default());
    for (overlay, expect, what) in [
        (
            "dual-stack",
            "ipFamilyPolicy: PreferDualStack",
            "a dual-stack metrics Service",
        ),
        (
            "systemd",
            "--cgroup-root=/sys/fs/cgroup/kubepods.slice",
            "the programs attached at kubepods.slice",
        ),
    ] {
        let (ok, said) = match render(&deploy.join("overlays").join(overlay)) {
            Ok(text) => {
                let n = objects(&text);
                (
                    text.contains(expect) && n == base_objects && n > 0,
                    format!("{n} objects, as the base"),
                )
            }
            Err(e) => (false, e),
        };
        checks.check(
            ok,
            &format!("deploy/overlays/{overlay} renders the base with {what}"),
            &said,
        );
    }
}

/// `kubectl kustomize DIR`: the rendered YAML, or what kubectl said.
fn render(dir: &std::path::Path) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// How many objects a rendering holds.
fn objects(yaml: &str) -> usize {
    yaml.lines().filter(|l| l.starts_with("kind: ")).count()
}
