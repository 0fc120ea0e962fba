//! kubectl, pointed at one cluster: the local one (run inside the node's
//! network namespace, where the API server listens) or a kind cluster
//! (a kubeconfig context).

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use super::layout;

#[derive(Clone)]
pub struct Kubectl {
    netns: Option<String>,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
}

/// What a command run in a pod printed, and how it exited.
pub struct ExecOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    /// The local cluster of `cargo xtask k8s-test`.
    pub fn local() -> Self {
        Self {
            netns: Some(layout::NODE_NETNS.to_owned()),
            kubeconfig: Some(layout::kubeconfig()),
            context: None,
        }
    }

    /// The cluster of `kubeconfig`, reached from the caller's netns.
    pub fn with_kubeconfig(kubeconfig: PathBuf) -> Self {
        Self {
            netns: None,
            kubeconfig: Some(kubeconfig),
            context: None,
        }
    }

    /// A kubeconfig context, e.g. `kind-egress`.
    pub fn context(context: &str) -> Self {
        Self {
            netns: None,
            kubeconfig: None,
            context: Some(context.to_owned()),
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(netns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", layout::netns_path(netns).display()))
                    .arg("--")
                    .arg("kubectl");
                cmd
            }
            None => Command::new("kubectl"),
        };
        if let Some(kubeconfig) = &self.kubeconfig {
            cmd.arg(format!("--kubeconfig={}", kubeconfig.display()));
        }
        if let Some(context) = &self.context {
            cmd.arg(format!("--context={context}"));
        }
        // kubectl 1.2x against a 1.20 server warns about the skew on every
        // call; the warning is expected.
        cmd.arg("--warnings-as-errors=false");
        cmd
    }

    /// Runs `kubectl ARGS`; its stdout, or an error with its stderr.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `kubectl ARGS`, echoing it and its output.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        println!("k8s-test: $ kubectl {}", args.join(" "));
        let out = self.output(args)?;
        for line in out.lines() {
            println!("k8s-test:   {line}");
        }
        Ok(())
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        self.stdin(&["apply", "-f", "-"], yaml)
    }

    /// `kubectl ARGS` with `input` on stdin, echoing its output.
    pub fn stdin(&self, args: &[&str], input: &str) -> anyhow::Result<()> {
        println!("k8s-test: $ kubectl {}", args.join(" "));
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        child
            .stdin
            .take()
            .context("kubectl's stdin")?
            .write_all(input.as_bytes())
            .context("writing to kubectl")?;
        let out = child.wait_with_output().context("waiting for kubectl")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("k8s-test:   {line}");
        }
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Runs `sh -c SCRIPT` in the first container of pod `namespace/pod`.
    pub fn exec(&self, namespace: &str, pod: &str, script: &str) -> anyhow::Result<ExecOutput> {
        self.exec_in(namespace, pod, None, script)
    }

    /// Runs `sh -c SCRIPT` in `container` (default: the first) of pod
    /// `namespace/pod`.
    pub fn exec_in(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        script: &str,
    ) -> anyhow::Result<ExecOutput> {
        let mut cmd = self.command();
        cmd.args(["exec", "-n", namespace, pod]);
        if let Some(container) = container {
            cmd.args(["-c", container]);
        }
        let out = cmd
            .args(["--", "sh", "-c", script])
            .output()
            .context("running kubectl exec")?;
        Ok(ExecOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
