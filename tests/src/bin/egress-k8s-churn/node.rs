//! The agent's side of the churn bench: the real agent (release) in
//! Kubernetes mode for one node, the probe pod's kubelet-style cgroup, a
//! listener for the probe, and the timings read from outside the agent
//! (time to a verdict, `status` and `/metrics` latency, CPU and RSS).
//!
//! Everything runs in the network namespace the xtask started this binary
//! in (the API server's): the agent reaches the API server on loopback,
//! and the probe connects to an address of that namespace's loopback. The
//! agent's cgroup programs judge by the socket's cgroup, not by the
//! namespace, so the verdict is the same as between two pods.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use integration_tests::loadgen::{first_line, Until};

/// Where this run's state lives; all of it is removed at the end.
pub struct Paths {
    pub dir: PathBuf,
    /// The agent's `--cgroup-root` (below the cgroup2 mount), with a
    /// kubelet (cgroupfs) layout below.
    pub cgroup_root: PathBuf,
    pub pins: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

pub const METRICS: &str = "127.0.0.1:9464";

impl Paths {
    pub fn new() -> anyhow::Result<Self> {
        let dir = PathBuf::from("/run/egress-k8s-churn");
        let mount = egress_agent::sys::cgroup2_mount().context("finding the cgroup2 mount")?;
        Ok(Self {
            cgroup_root: mount.join("egress-k8s-churn"),
            pins: PathBuf::from("/sys/fs/bpf/egress-k8s-churn"),
            socket: dir.join("agent.sock"),
            log: dir.join("agent.log"),
            dir,
        })
    }

    /// The pod directory a cgroupfs kubelet makes for a BestEffort pod.
    pub fn pod_cgroup(&self, uid: &str) -> PathBuf {
        self.cgroup_root
            .join("kubepods")
            .join("besteffort")
            .join(format!("pod{uid}"))
    }
}

/// The running agent; killed, uninstalled and its cgroups removed on drop.
pub struct Agent {
    child: Child,
    exe: PathBuf,
    paths: Paths,
}

impl Agent {
    /// Starts `exe run --kubernetes` for node `node` with a kubeconfig of
    /// `server` and `token`.
    pub fn start(exe: &Path, paths: Paths, server: &str, token: &str) -> anyhow::Result<Self> {
        fs::create_dir_all(&paths.dir)?;
        fs::create_dir_all(paths.cgroup_root.join("kubepods/besteffort"))
            .context("creating the kubelet cgroup layout (cgroup2 at /sys/fs/cgroup)")?;
        let policies = paths.dir.join("policies");
        fs::create_dir_all(&policies)?;
        let kubeconfig = paths.dir.join("kubeconfig");
        fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}\n\
                 users:\n- name: admin\n  user: {{token: {token}}}\ncontexts:\n- name: bench\n  context: {{cluster: bench, user: admin}}\n\
                 current-context: bench\n"
            ),
        )?;
        let log = fs::File::create(&paths.log)?;
        let child = Command::new(exe)
            .arg("run")
            .arg("--kubernetes")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--node-name", crate::NODE])
            .arg("--policies")
            .arg(&policies)
            .arg("--bpffs")
            .arg(&paths.pins)
            .arg("--cgroup-root")
            .arg(&paths.cgroup_root)
            .arg("--socket")
            .arg(&paths.socket)
            .args(["--metrics-addr", METRICS])
            .env("EGRESS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Self {
            child,
            exe: exe.to_owned(),
            paths,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.paths.log).unwrap_or_default()
    }

    pub fn applied(&self) -> usize {
        self.log().matches("policy applied").count()
    }

    /// Waits until `pred(log)`, failing with the log's tail after
    /// `within` or when the agent exits.
    pub fn wait_log(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if pred(&log) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the agent exited ({status}) before {what}:\n{}", tail(&log));
            }
            if Instant::now() > deadline {
                bail!(
                    "no {what} within {within:?}; the agent's log ends:\n{}",
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until no new apply for `quiet` (the agent may apply several
    /// times while a listing or a burst settles).
    pub fn settle(&mut self, quiet: Duration) -> anyhow::Result<()> {
        let mut seen = self.applied();
        loop {
            std::thread::sleep(quiet);
            let now = self.applied();
            if now == seen {
                return Ok(());
            }
            seen = now;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(&self.exe)
            .args(["uninstall", "--bpffs"])
            .arg(&self.paths.pins)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        remove_cgroups(&self.paths.cgroup_root);
        // The log outlives the run, for a failure's post-mortem.
        let _ = fs::copy(
            &self.paths.log,
            std::env::temp_dir().join("egress-k8s-churn-agent.log"),
        );
        let _ = fs::remove_dir_all(&self.paths.dir);
    }
}

/// Removes a cgroup tree bottom-up (cgroup directories go with rmdir
/// only, once empty).
pub fn remove_cgroups(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroups(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `egress-probe` (beside this binary) in `cgroup` (none: this process's).
pub fn probe(cgroup: Option<&Path>) -> anyhow::Result<Command> {
    let exe = std::env::current_exe()?
        .parent()
        .context("the binary's directory")?
        .join("egress-probe");
    let mut cmd = Command::new(exe);
    if let Some(cgroup) = cgroup {
        cmd.arg("--cgroup").arg(cgroup);
    }
    Ok(cmd)
}

/// An accept-and-close listener on `addr`, in this process's cgroup.
pub fn listener(addr: &str) -> anyhow::Result<Child> {
    let mut child = probe(None)?
        .args(["accept-close", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting accept-close")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let line = first_line(stdout)?;
    if !line.starts_with("LISTENING") {
        let _ = child.kill();
        bail!("accept-close on {addr} said {line:?}");
    }
    Ok(child)
}

/// `egress-probe until` in the probe pod's cgroup (see [`Until`]).
pub struct Waiter;

impl Waiter {
    /// Starts the probe, trying every millisecond; its first attempt must
    /// not have the wanted outcome yet (`want` is `ok` or `eperm`).
    pub fn start(cgroup: &Path, target: &str, want: &str) -> anyhow::Result<Until> {
        Until::before_change(probe(Some(cgroup))?, target, want)
    }

    /// Waits (up to 60 s) until the probe's outcome is `want`, whatever
    /// the first one was.
    pub fn reach(cgroup: &Path, target: &str, want: &str) -> anyhow::Result<()> {
        let (until, first) = Until::spawn(probe(Some(cgroup))?, target, want, 10, 60_000)?;
        until
            .wait()
            .map(drop)
            .with_context(|| format!("waiting for {want} on {target} (first attempt: {first})"))
    }
}

/// One `status` request on the agent's socket, as `egress-agent status`
/// sends it (without the CLI's process start): time to the whole answer.
pub fn time_status(socket: &Path) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let mut s = UnixStream::connect(socket).context("connecting to the agent socket")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"{\"request\":\"status\"}\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).context("reading the status")?;
    if !answer.starts_with(b"{") || answer.windows(8).any(|w| w == b"\"error\":") {
        bail!("status answered {:?}", String::from_utf8_lossy(&answer));
    }
    Ok(began.elapsed())
}

/// One `GET /metrics`: time to the whole body.
pub fn time_metrics() -> anyhow::Result<Duration> {
    let began = Instant::now();
    let mut s = TcpStream::connect(METRICS).context("connecting to /metrics")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).context("reading /metrics")?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!(
            "/metrics answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
    }
    Ok(began.elapsed())
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields count from after its ')'.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
        .context("utime/stime")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// `VmHWM` and `VmRSS` of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}
