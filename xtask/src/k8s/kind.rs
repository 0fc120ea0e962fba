//! `cargo xtask kind-test`: the same scenario on a kind cluster, for
//! machines with Docker and kind (and a registry for kind's node image and
//! busybox).
//!
//! 1. builds `egress-agent` (release) and its image from the
//!    `Containerfile`, and loads it into the cluster's node;
//! 2. creates the kind cluster `egress-enforcer` (kept if it exists);
//! 3. the simulated internet: two busybox httpd containers on kind's
//!    Docker network (outside the cluster's CIDRs), named in CoreDNS with
//!    a `hosts` block as edition.cnn.com and httpbin.org;
//! 4. applies `deploy/` with an overlay for the image, then runs
//!    [`scenario`];
//! 5. deletes the cluster and the containers (unless `--keep`).

use std::{
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    kubectl::Kubectl,
    scenario::{self, Checks, Cluster},
};
use crate::{host, run};

const CLUSTER: &str = "egress-enforcer";
const NODE: &str = "egress-enforcer-control-plane";
const IMAGE: &str = "egress-agent:kind-test";
const TOOLBOX: &str = "docker.io/library/busybox:1.36";
const INTERNET: [(&str, &str); 2] = [
    ("edition.cnn.com", "egress-kind-edition"),
    ("httpbin.org", "egress-kind-httpbin"),
];

#[derive(clap::Args)]
pub struct KindTestArgs {
    /// Leave the kind cluster and the internet containers running.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: &KindTestArgs) -> anyhow::Result<ExitCode> {
    let mut missing = Vec::new();
    for (tool, how) in [
        (
            "docker",
            "Docker Engine (https://docs.docker.com/engine/install/)",
        ),
        (
            "kind",
            "kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)",
        ),
        ("kubectl", "kubectl"),
    ] {
        if !host::on_path(tool) {
            missing.push(format!("`{tool}` is not on PATH: install {how}"));
        }
    }
    if missing.is_empty()
        && run::output("docker", ["info", "--format", "{{.ServerVersion}}"]).is_none()
    {
        missing.push(
            "`docker info` fails: is the Docker daemon running, and may this user use it?"
                .to_owned(),
        );
    }
    if !missing.is_empty() {
        bail!(
            "kind-test cannot run here:\n  - {}\n(`cargo xtask k8s-test` runs the same scenario on a local \
             Kubernetes without Docker)",
            missing.join("\n  - ")
        );
    }
    let mut checks = Checks::new();
    let result = bring_up_and_test(&mut checks);
    if let Err(err) = &result {
        println!("\nkind-test: FAILED: {err:#}");
    }
    if args.keep {
        println!("\nkind-test: --keep: cluster `{CLUSTER}` (kubectl --context kind-{CLUSTER}) is still up");
    } else {
        teardown();
    }
    println!(
        "kind-test: {} passed, {} failed",
        checks.passed(),
        checks.failed().len() + usize::from(result.is_err())
    );
    Ok(if result.is_err() || !checks.failed().is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn bring_up_and_test(checks: &mut Checks) -> anyhow::Result<()> {
    let root = host::workspace_root();
    run::check(
        run::cargo()
            .args(["build", "--release", "-p", "egress-agent", "--bins"])
            .current_dir(&root),
    )?;
    let binary = host::target_dir(&root).join("release/egress-agent");
    let binary = binary
        .strip_prefix(&root)
        .context("the target dir must be inside the workspace for `docker build`")?;
    run::check(
        Command::new("docker")
            .args(["build", "-f", "Containerfile", "-t", IMAGE, "--build-arg"])
            .arg(format!("BINARY={}", binary.display()))
            .arg(".")
            .current_dir(&root),
    )?;

    let clusters = run::output("kind", ["get", "clusters"]).unwrap_or_default();
    if !clusters.lines().any(|c| c == CLUSTER) {
        run::check(
            Command::new("kind").args(["create", "cluster", "--name", CLUSTER, "--wait", "120s"]),
        )?;
    }
    run::check(Command::new("kind").args(["load", "docker-image", IMAGE, "--name", CLUSTER]))?;
    // The agent pins under /sys/fs/bpf: make sure the node has a bpffs there.
    let mounted = run::output(
        "docker",
        [
            "exec",
            NODE,
            "sh",
            "-c",
            "mount | grep -c ' /sys/fs/bpf type bpf'",
        ],
    );
    if mounted.as_deref().unwrap_or("0") == "0" {
        run::check(Command::new("docker").args([
            "exec",
            NODE,
            "mount",
            "-t",
            "bpf",
            "bpf",
            "/sys/fs/bpf",
        ]))?;
    }

    let mut hosts = Vec::new();
    for (name, container) in INTERNET {
        let _ = Command::new("docker")
            .args(["rm", "-f", container])
            .output();
        run::check(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            container,
            "--network",
            "kind",
            TOOLBOX,
            "sh",
            "-c",
            "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www",
        ]))?;
        let ip = run::output(
            "docker",
            [
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                container,
            ],
        )
        .context("reading an internet container's address")?;
        hosts.push((name, ip));
    }
    let kubectl = Kubectl::context(&format!("kind-{CLUSTER}"));
    patch_coredns(&kubectl, &hosts)?;
    let dns_pod_ip = kubectl
        .output(&[
            "get",
            "pod",
            "-n",
            "kube-system",
            "-l",
            "k8s-app=kube-dns",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ])?
        .trim()
        .to_owned();

    let overlay = std::env::temp_dir().join("egress-kind-overlay");
    std::fs::create_dir_all(&overlay).context("creating the overlay dir")?;
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- {deploy}
images:
- name: egress-agent
  newName: egress-agent
  newTag: kind-test
",
            deploy = super::relative_to(&overlay, &root.join("deploy")).display()
        ),
    )
    .context("writing the overlay")?;
    let policies = root.join("policies");
    let uptime = || -> anyhow::Result<f64> {
        let text = run::output("docker", ["exec", NODE, "cat", "/proc/uptime"])
            .context("reading the node's uptime")?;
        text.split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .context("parsing /proc/uptime")
    };
    let (allowed_ip, other_ip) = (hosts[0].1.clone(), hosts[1].1.clone());
    let cluster = Cluster {
        kubectl: &kubectl,
        toolbox_image: TOOLBOX,
        image_pull_policy: "IfNotPresent",
        allowed_host: (INTERNET[0].0, &allowed_ip),
        other_host: (INTERNET[1].0, &other_ip),
        dns_pod_ip,
        policies: &policies,
        node_uptime: &uptime,
        kill_agent: None,
        reboot: None,
        gateway_node: None,
        app_node: None,
        by_name: false,
    };
    scenario::prepare(&cluster)?;
    kubectl.run(&["apply", "-k", &overlay.display().to_string()])?;
    let began = Instant::now();
    scenario::wait_agent(&kubectl, Duration::from_secs(180))?;
    println!(
        "kind-test: the agent is Ready after {:.1}s",
        began.elapsed().as_secs_f32()
    );
    scenario::run(&cluster, checks)?;
    Ok(())
}

/// Adds a `hosts` block naming the internet containers to CoreDNS's
/// Corefile, so that pods and the agent resolve the seed's hosts to them.
fn patch_coredns(kubectl: &Kubectl, hosts: &[(&str, String)]) -> anyhow::Result<()> {
    let corefile = kubectl.output(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "coredns",
        "-o",
        "jsonpath={.data.Corefile}",
    ])?;
    if corefile.contains("egress-enforcer") {
        return Ok(());
    }
    let entries: String = hosts
        .iter()
        .map(|(name, ip)| format!("       {ip} {name}\n"))
        .collect();
    let block = format!("    hosts {{ # egress-enforcer kind-test\n{entries}       fallthrough\n    }}\n    kubernetes");
    let patched = corefile.replacen("    kubernetes", &block, 1);
    let escaped = serde_json_string(&patched);
    kubectl.run(&[
        "patch",
        "configmap",
        "-n",
        "kube-system",
        "coredns",
        "--type=merge",
        "-p",
        &format!("{{\"data\":{{\"Corefile\":{escaped}}}}}"),
    ])?;
    kubectl.run(&[
        "rollout",
        "restart",
        "-n",
        "kube-system",
        "deployment/coredns",
    ])?;
    kubectl.run(&[
        "rollout",
        "status",
        "-n",
        "kube-system",
        "deployment/coredns",
        "--timeout=120s",
    ])
}

/// `text` as a JSON string literal.
fn serde_json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn teardown() {
    println!("\nkind-test: teardown");
    let _ = run::status(Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]));
    for (_, container) in INTERNET {
        let _ = run::status(Command::new("docker").args(["rm", "-f", container]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corefile_text_is_escaped_as_a_json_string() {
        assert_eq!(serde_json_string("a \"b\"\n\tc\\"), r#""a \"b\"\n\tc\\""#);
    }
}
