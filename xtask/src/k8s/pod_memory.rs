//! `cargo xtask k8s-pod-memory`: the memory of the agent's slim Pod cache
//! at 10k pods (issue 11), against a real kube-apiserver 1.20.2 and etcd.
//!
//! Only the API server is needed: the pods are bound to fake node names
//! (`spec.nodeName`, so no scheduler) and nothing runs them (no kubelet);
//! their `status.podIP` is set through the status subresource, as a kubelet
//! would. Without kube-controller-manager, nothing garbage-collects pods of
//! nodes that do not exist, and the ServiceAccount admission plugin (whose
//! accounts the controller-manager creates) is disabled.
//!
//! Everything runs in its own network namespace ([`NETNS`]), with the API
//! server on that namespace's loopback, so it can run beside
//! `k8s-test` (which uses `egk8s-node`) and nothing listens outside. The
//! binaries are k8s-test's cached ones; the measure is `egress-k8s-mem`
//! (tests/src/bin), one fresh process per mode so neither inherits the
//! other's heap.

use std::{fs, path::Path, process::Command, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _};

use super::{layout, procs};
use crate::{host, run};

const NETNS: &str = "egk8s-mem";
const STATE: &str = "/var/lib/egress-k8s-mem";
/// A documentation address on the namespace's loopback, so the API server
/// has a non-loopback address to advertise; the namespace has no other
/// link and no route anywhere.
const ADVERTISE: &str = "192.0.2.1";
const SERVER_FLAG: &str = "--server=https://127.0.0.1:6443";
/// The admin token of this throwaway server (loopback of its own
/// namespace, deleted at the end).
const TOKEN: &str = "egress-k8s-mem-admin";

#[derive(clap::Args)]
pub struct PodMemoryArgs {
    /// How many pods to create.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Build the measure with the release profile.
    #[arg(long)]
    release: bool,
    /// Also measure kube-runtime's reflector of whole Pod objects, for
    /// comparison.
    #[arg(long)]
    compare: bool,
}

pub fn run(args: &PodMemoryArgs) -> anyhow::Result<ExitCode> {
    if let Some(why) = missing() {
        bail!("k8s-pod-memory cannot run: {why}");
    }
    measure(&Session {
        pods: args.pods,
        release: args.release,
        compare: args.compare,
        inventory: true,
        churn: None,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What one measurement does.
pub struct Session {
    /// How many pods to create.
    pub pods: usize,
    /// Build the measure with the release profile.
    pub release: bool,
    /// Also measure kube-runtime's reflector of whole Pods.
    pub compare: bool,
    /// Then run the agent's whole watch and time an EndpointSlice change.
    pub inventory: bool,
    /// Then run the real agent against the server (`egress-k8s-churn`):
    /// its arguments after `--pods`, and where it writes its samples.
    pub churn: Option<(Vec<String>, std::path::PathBuf)>,
}

/// Why this machine cannot measure, if it cannot: it needs root (for the
/// network namespace) and the API server and etcd that `cargo xtask
/// k8s-test --build-only` provides.
pub fn missing() -> Option<String> {
    if !host::is_root() {
        return Some(format!(
            "it needs root (euid {}): it creates a network namespace",
            host::euid()
        ));
    }
    let apiserver = layout::cache_bin("kube-apiserver");
    if !apiserver.exists() || !Path::new("/usr/bin/etcd").exists() {
        return Some(format!(
            "{} or /usr/bin/etcd is missing: run `cargo xtask k8s-test --build-only` first",
            apiserver.display()
        ));
    }
    None
}

/// Builds the measure, starts etcd and the API server in their namespace,
/// creates the pods and measures; everything is removed after, whatever
/// happened. Returns the measure's output lines (also printed).
pub fn measure(session: &Session) -> anyhow::Result<Vec<String>> {
    let apiserver = layout::cache_bin("kube-apiserver");
    let measure = host::test_binary("egress-k8s-mem", session.release)?;

    teardown();
    let mut children = Vec::new();
    let mut lines = Vec::new();
    let result = (|| {
        setup_netns()?;
        start(&apiserver, &mut children)?;
        let mut mem = |sub: &[&str]| -> anyhow::Result<()> {
            let ok = run::tee(
                Command::new("nsenter")
                    .arg(format!("--net={}", layout::netns_path(NETNS).display()))
                    .arg("--")
                    .arg(&measure)
                    .arg(SERVER_FLAG)
                    .arg(format!("--token={TOKEN}"))
                    .args(sub),
                |line| lines.push(line.to_owned()),
            )?;
            if !ok {
                bail!("egress-k8s-mem {} failed", sub.join(" "));
            }
            Ok(())
        };
        mem(&["create", "--pods", &session.pods.to_string()])?;
        mem(&["measure", "--mode", "slim"])?;
        if session.compare {
            mem(&["measure", "--mode", "full"])?;
        }
        if session.inventory {
            mem(&["inventory"])?;
        }
        if let Some((args, out)) = &session.churn {
            churn(session.pods, args, out)?;
        }
        Ok(())
    })();
    for (name, mut child) in children {
        let _ = child.kill();
        let _ = child.wait();
        println!("k8s-pod-memory: stopped {name}");
    }
    teardown();
    result.map(|()| lines)
}

/// `egress-k8s-churn` (release, with the release agent beside it) in the
/// namespace, against the pods just created.
fn churn(pods: usize, args: &[String], out: &Path) -> anyhow::Result<()> {
    let exe = host::test_binary("egress-k8s-churn", true)?;
    let agent = exe.with_file_name("egress-agent");
    if !agent.exists() {
        bail!(
            "{} is missing: `cargo build --release -p egress-agent` (cargo xtask bench does)",
            agent.display()
        );
    }
    let _ = fs::remove_file(out);
    run::check(
        Command::new("nsenter")
            .arg(format!("--net={}", layout::netns_path(NETNS).display()))
            .arg("--")
            .arg(&exe)
            .arg(SERVER_FLAG)
            .arg(format!("--token={TOKEN}"))
            .arg("--agent")
            .arg(&agent)
            .arg("--pods")
            .arg(pods.to_string())
            .arg("--out")
            .arg(out)
            .args(args),
    )
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run::check(Command::new("ip").args(args))
}

fn setup_netns() -> anyhow::Result<()> {
    ip(&["netns", "add", NETNS])?;
    ip(&["-n", NETNS, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        NETNS,
        "addr",
        "add",
        &format!("{ADVERTISE}/32"),
        "dev",
        "lo",
    ])
}

fn start(
    apiserver: &Path,
    children: &mut Vec<(&'static str, std::process::Child)>,
) -> anyhow::Result<()> {
    let state = Path::new(STATE);
    fs::create_dir_all(state.join("etcd")).context("creating the state dir")?;
    fs::create_dir_all(layout::LOG_DIR).context("creating the log dir")?;
    let sa_key = state.join("sa.key");
    let sa_pub = state.join("sa.pub");
    run::check(
        Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048"),
    )?;
    run::check(
        Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&sa_key)
            .arg("-out")
            .arg(&sa_pub),
    )?;
    let tokens = state.join("tokens.csv");
    fs::write(&tokens, format!("{TOKEN},admin,admin,\"system:masters\"\n"))
        .context("writing the token file")?;
    let etcd = procs::spawn(
        NETNS,
        "mem-etcd",
        Path::new("/usr/bin/etcd"),
        &strings(&[
            "--name=egk8smem",
            &format!("--data-dir={}", state.join("etcd").display()),
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=egk8smem=http://127.0.0.1:2380",
            "--unsafe-no-fsync",
            // 10k pods with managedFields are ~60 MiB of keys; the default
            // 2 GiB quota is far above, but keep the backend small to write.
            "--quota-backend-bytes=1073741824",
        ]),
    )?;
    children.push(("mem-etcd", etcd));
    let api = procs::spawn(
        NETNS,
        "mem-kube-apiserver",
        apiserver,
        &strings(&[
            "--etcd-servers=http://127.0.0.1:2379",
            // Loopback only. A self-signed serving certificate (the
            // server makes it in --cert-dir) and one static token: no
            // PKI to make for a throwaway server nobody else reaches.
            "--insecure-port=0",
            "--bind-address=127.0.0.1",
            "--secure-port=6443",
            &format!("--cert-dir={}", state.join("certs").display()),
            &format!("--token-auth-file={}", tokens.display()),
            &format!("--advertise-address={ADVERTISE}"),
            "--service-cluster-ip-range=10.96.0.0/12",
            "--disable-admission-plugins=ServiceAccount",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!("--service-account-signing-key-file={}", sa_key.display()),
            &format!("--service-account-key-file={}", sa_pub.display()),
            "--profiling=false",
            "--v=1",
        ]),
    )?;
    children.push(("mem-kube-apiserver", api));
    let (name, child) = children.last_mut().context("pushed")?;
    let took = procs::wait_until(
        "the API server's /readyz",
        Duration::from_secs(120),
        Some((name, child)),
        || {
            Command::new("nsenter")
                .arg(format!("--net={}", layout::netns_path(NETNS).display()))
                .args(["kubectl", SERVER_FLAG, "--insecure-skip-tls-verify"])
                .arg(format!("--token={TOKEN}"))
                .args(["get", "--raw=/readyz"])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ok"))
        },
    )?;
    println!(
        "k8s-pod-memory: API server ready after {:.1}s",
        took.as_secs_f64()
    );
    Ok(())
}

fn teardown() {
    let _ = Command::new("ip")
        .args(["netns", "del", NETNS])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = fs::remove_dir_all(STATE);
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}
