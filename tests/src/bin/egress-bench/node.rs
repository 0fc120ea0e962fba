//! The benchmark's simulated node: a client pod (with a sidecar proxy
//! Workload), a server pod, the real agent, and the helpers every measure
//! uses to run things in them.
//!
//! ```text
//!  client pod 10.244.1.10            server pod 10.244.2.10, .11
//!    bench/client (app: client)        accept-close on :8080, :8081
//!    bench/client-proxy (sidecar)      iperf3 -s on :5201
//!      accept-close on 0.0.0.0:15001
//! ```
//!
//! Baselines run their clients in a "bare" cgroup outside the agent's
//! cgroup root, so none of the agent's cgroup programs sees them; only the
//! agent's own variant runs in the Workload's cgroup. The proxy stand-in
//! runs where a sidecar runs, in its Workload's cgroup, for every variant:
//! the agent then sees its accepted sockets close, as on a real node, and
//! drops each redirected connection's `ORIG_DST` entry with it (outside
//! the root, every entry stayed until LRU eviction, and from the first
//! 64k connects on each redirect paid an eviction). The agent runs for
//! the whole benchmark, so its node-level nftables backstop (in the node
//! namespace, on forwarded packets) is in force for every variant alike.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use integration_tests::{
    node::{enter_cgroup_on_spawn, SimNode},
    probe::probe_exe,
    scenario::{id, Running},
    TestCgroup,
};

pub const CLIENT: &str = "bench/client";
pub const SERVER: &str = "bench/server";
/// The client pod's sidecar, where the proxy stand-in runs.
pub const CLIENT_PROXY: &str = "bench/client-proxy";
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
/// The server's second address: never in the CIDR list, so denied to an
/// enforced client (and reachable by an unenforced one).
pub const SERVER_OTHER_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
pub const IPERF_PORT: u16 = 5201;
/// The accept-and-close listeners in the server pod.
pub const SERVER_ACCEPT_PORT: u16 = 8080;
pub const OTHER_ACCEPT_PORT: u16 = 8081;
/// The sidecar proxy's port, as Istio's.
pub const PROXY_PORT: u16 = 15001;
/// A destination inside `includeIPRanges` (the service range), where
/// nothing listens: only a redirect reaches the proxy.
pub const SERVICE_DST: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 96, 0, 50)), 80);
pub const INCLUDE_RANGE: &str = "10.96.0.0/12";
/// Excluded, as istio-iptables `-x` would (the API server's service IP).
pub const EXCLUDE_RANGE: &str = "10.96.0.1/32";

/// The policy the node starts with: namespaces, the gateway that defines
/// the cluster CIDRs, the client (captured by a Redirect to its sidecar)
/// and the server. No NetworkPolicy: [`cidr_policy`] adds one.
pub fn base_policy() -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: bench}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: gw}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {{name: gateway, namespace: gw}}
spec:
  selector: {{podSelector: {{matchLabels: {{app: gateway}}}}}}
  clusterCIDRs: [10.0.0.0/8]
  allowedHosts: []
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: gateway, namespace: gw, labels: {{app: gateway}}}}
spec: {{cgroup: bench/gw/gateway, addresses: ["10.244.0.20"]}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: client, namespace: bench, labels: {{app: client}}}}
spec: {{cgroup: bench/client/app, addresses: ["{CLIENT_V4}"], sidecar: true}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata:
  name: client-proxy
  namespace: bench
  labels: {{app: client, egress.enforcer.dev/container: istio-proxy}}
spec: {{cgroup: bench/client/proxy}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: server, namespace: bench, labels: {{app: server}}}}
spec: {{cgroup: bench/server, addresses: ["{SERVER_V4}", "{SERVER_OTHER_V4}"]}}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Redirect
metadata: {{name: sidecar, namespace: bench}}
spec:
  podSelector: {{matchLabels: {{app: client}}}}
  proxy:
    address: 127.0.0.1
    port: {PROXY_PORT}
    selector: {{podSelector: {{matchLabels: {{egress.enforcer.dev/container: istio-proxy}}}}}}
  includeIPRanges: "{INCLUDE_RANGE}"
  excludeIPRanges: "{EXCLUDE_RANGE}"
"#
    )
}

/// `n` distinct /32s, none adjacent to another (so nothing could merge
/// them), from 10.128.0.0; then the server's address last, so that a rule
/// list evaluated in order matches it at the end (the worst case for a
/// linear list, and the one a long-lived list drifts to).
pub fn cidrs(n: usize) -> Vec<String> {
    if n == 0 {
        return Vec::new();
    }
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    let mut out: Vec<String> = (0..n - 1)
        .map(|i| {
            let step = u32::try_from(i).unwrap_or(u32::MAX / 2).saturating_mul(2);
            format!("{}/32", Ipv4Addr::from(base.saturating_add(step)))
        })
        .collect();
    out.push(format!("{SERVER_V4}/32"));
    out
}

/// A NetworkPolicy isolating the client for egress to `cidrs`.
pub fn cidr_policy(cidrs: &[String]) -> String {
    let mut yaml = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: client-cidrs, namespace: bench}\nspec:\n  \
         podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n",
    );
    for c in cidrs {
        let _ = writeln!(yaml, "    - ipBlock: {{cidr: {c}}}");
    }
    yaml
}

/// The file name the NetworkPolicy lives under in the node's policies.
pub const CIDR_POLICY_FILE: &str = "900-bench-cidrs.yaml";

/// The node, the agent, and the cgroups the benchmark adds.
pub struct Bench {
    pub running: Running,
    /// Outside the agent's cgroup root: no program of the agent runs here.
    pub bare: TestCgroup,
    /// Where P4's probes wait before joining their new Workload's cgroup.
    pub staging: TestCgroup,
    servers: Vec<Child>,
    source: PathBuf,
}

impl Bench {
    pub fn start() -> anyhow::Result<Self> {
        let source = std::env::temp_dir().join(format!("egress-bench-{}", std::process::id()));
        fs::create_dir_all(&source).with_context(|| format!("creating {}", source.display()))?;
        fs::write(source.join("bench.yaml"), base_policy())?;
        let sim = SimNode::new(std::slice::from_ref(&source)).context("building the node")?;
        let running = Running::start(sim, &[]).context("starting the agent")?;
        let mut bench = Self {
            running,
            bare: TestCgroup::new()?,
            staging: TestCgroup::new()?,
            servers: Vec::new(),
            source,
        };
        bench.start_servers()?;
        Ok(bench)
    }

    pub fn sim(&self) -> &SimNode {
        &self.running.sim
    }

    pub fn pod_netns(&self, who: &str) -> anyhow::Result<String> {
        Ok(self
            .sim()
            .pod_of(&id(who))
            .with_context(|| format!("no pod for {who}"))?
            .netns
            .name()
            .to_owned())
    }

    pub fn workload_cgroup(&self, who: &str) -> anyhow::Result<PathBuf> {
        Ok(self
            .sim()
            .workload(&id(who))
            .with_context(|| format!("no workload {who}"))?
            .cgroup
            .clone())
    }

    /// The servers every measure uses: the proxy stand-in in the client
    /// pod's sidecar cgroup; accept-close listeners and iperf3 in the
    /// server pod, in the bare cgroup.
    fn start_servers(&mut self) -> anyhow::Result<()> {
        let client = self.pod_netns(CLIENT)?;
        let server = self.pod_netns(SERVER)?;
        let bare = self.bare.path().to_owned();
        let sidecar = self.workload_cgroup(CLIENT_PROXY)?;
        for (cgroup, netns, addr) in [
            (
                &sidecar,
                &client,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, PROXY_PORT)),
            ),
            (
                &bare,
                &server,
                SocketAddr::from((SERVER_V4, SERVER_ACCEPT_PORT)),
            ),
            (
                &bare,
                &server,
                SocketAddr::from((SERVER_OTHER_V4, OTHER_ACCEPT_PORT)),
            ),
        ] {
            let mut child = probe(cgroup, netns)
                .args(["accept-close", &addr.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting an accept-close listener")?;
            let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
            self.servers.push(child);
            let line = first_line(stdout)?;
            if !line.starts_with("LISTENING") {
                bail!("accept-close on {addr} said {line:?}");
            }
        }
        let log_path = self.source.join("iperf3.log");
        let iperf_log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut iperf = in_pod(&bare, &server, "iperf3")?;
        iperf
            .args(["--server", "--bind", &SERVER_V4.to_string()])
            .args(["--port", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(iperf_log.try_clone()?)
            .stderr(iperf_log);
        let iperf = iperf
            .spawn()
            .context("starting iperf3 (apt package iperf3)")?;
        let pid = iperf.id();
        self.servers.push(iperf);
        // iperf3 prints nothing machine-readable when it is ready, and a
        // connection that is not a test upsets it: watch its namespace's
        // socket table for the listener instead.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(pid, IPERF_PORT) {
            if Instant::now() > deadline {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                bail!("iperf3 -s on {SERVER_V4}:{IPERF_PORT} is not listening: {log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Writes `yaml` as the node's policy file `name`: written beside the
    /// directory and renamed in, so the agent never reads half a file.
    pub fn put_policy(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.source.join(format!(".{name}.tmp"));
        fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        let dest = self.sim().policies_dir().join(name);
        fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))
    }

    /// Removes the node's policy file `name`, if present.
    pub fn remove_policy(&self, name: &str) -> anyhow::Result<bool> {
        let path = self.sim().policies_dir().join(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// How many generations the agent has applied so far.
    pub fn applied(&self) -> usize {
        self.running.agent.log().matches("policy applied").count()
    }

    /// Waits until the agent has applied more than `before` generations and
    /// then applied nothing more for a while (one file change can wake the
    /// watcher twice).
    pub fn wait_applied_after(&mut self, before: usize) -> anyhow::Result<()> {
        self.running.agent.wait_for_count(
            "policy applied",
            before + 1,
            Duration::from_secs(120),
        )?;
        let mut seen = self.applied();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.applied();
            if now == seen {
                return Ok(());
            }
            seen = now;
        }
    }

    /// Puts the client's NetworkPolicy with `cidrs` in force (none: no
    /// NetworkPolicy) and waits until the agent applied it.
    pub fn set_cidrs(&mut self, cidrs: &[String]) -> anyhow::Result<()> {
        let before = self.applied();
        let changed = if cidrs.is_empty() {
            self.remove_policy(CIDR_POLICY_FILE)?
        } else {
            self.put_policy(CIDR_POLICY_FILE, &cidr_policy(cidrs))?;
            true
        };
        if changed {
            self.wait_applied_after(before)?;
        }
        Ok(())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.source);
    }
}

/// Whether the network namespace of `pid` has a TCP listener on `port`
/// (`/proc/PID/net/tcp*` show the socket tables of the process's
/// namespace).
fn listening(pid: u32, port: u16) -> bool {
    let local = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|table| {
        fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let mut fields = line.split_whitespace().skip(1);
                let addr = fields.next().unwrap_or_default();
                let state = fields.nth(1).unwrap_or_default();
                addr.ends_with(&local) && state == "0A"
            })
    })
}

/// `egress-probe --cgroup CGROUP --netns NETNS …`.
pub fn probe(cgroup: &Path, netns: &str) -> Command {
    let mut cmd = Command::new(probe_exe());
    cmd.arg("--cgroup").arg(cgroup).args(["--netns", netns]);
    cmd
}

/// `program` started in `cgroup` and the network namespace `netns`.
pub fn in_pod(cgroup: &Path, netns: &str, program: impl AsRef<OsStr>) -> anyhow::Result<Command> {
    // Not `ip netns exec`: it remounts /sys, which hides the cgroup2 mount.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(program);
    enter_cgroup_on_spawn(&mut cmd, cgroup)?;
    Ok(cmd)
}

/// Runs `program args` in `netns` with `input` on stdin; fails with its
/// stderr unless it succeeds. Returns how long it took.
pub fn run_in_netns(
    netns: &str,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Some(input) = input {
            stdin
                .write_all(input.as_bytes())
                .with_context(|| format!("writing to {program}"))?;
        }
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

pub use integration_tests::loadgen::first_line;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_lists_end_with_the_server_and_never_touch() {
        assert!(cidrs(0).is_empty());
        let list = cidrs(3);
        assert_eq!(list, ["10.128.0.0/32", "10.128.0.2/32", "10.244.2.10/32"]);
        let big = cidrs(100_000);
        assert_eq!(big.len(), 100_000);
        let unique: std::collections::BTreeSet<_> = big.iter().collect();
        assert_eq!(unique.len(), big.len());
    }
}
