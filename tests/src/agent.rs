//! The real `egress-agent` binary, run as a daemon in a test namespace.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{names, netns::Netns};

/// How long an agent may take to load, attach and apply. A condition wait,
/// not a timing check: it ends as soon as the agent says so, and only bounds
/// a hang. 15 s was too short for a start on a 2-core machine with two
/// builds and a fuzzer running beside the tests.
pub const APPLY_WAIT: Duration = Duration::from_secs(60);

/// Where cargo put `egress-agent` (`EGRESS_AGENT` overrides it).
pub fn agent_exe() -> PathBuf {
    crate::target_bin(
        "egress-agent",
        "EGRESS_AGENT",
        "build it with `cargo build -p egress-agent` (cargo xtask test does)",
    )
}

/// `egress-agent status -o json` of the agent serving `socket`, which
/// must answer.
pub fn status_json(socket: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(agent_exe())
        .args(["status", "-o", "json", "--socket"])
        .arg(socket)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A running `egress-agent run`, its log captured to a file. Dropping it
/// kills the agent; the test's [`PinDir`](crate::pins::PinDir) then
/// uninstalls what it pinned, so a failing test leaves nothing attached.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
    pin_dir: PathBuf,
    netns: String,
    args: Vec<String>,
    pod: Option<InPod>,
    /// Set in the agent's environment, over the test's own.
    env: Vec<(String, String)>,
}

/// The agent as a DaemonSet container runs it: in its pod's cgroup, in a
/// private cgroup namespace (so `/proc/self/cgroup` says `0::/`), with its
/// pod UID from the downward API.
#[derive(Clone, Debug)]
pub struct InPod {
    pub cgroup: PathBuf,
    pub pod_uid: String,
}

impl Agent {
    /// Starts the agent in `netns` with `args` after `run`, and waits until
    /// it has applied a first generation.
    pub fn start(netns: &Netns, pin_dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_placed(netns, pin_dir, args, None, &[])
    }

    /// [`Agent::start`] with `env` in the agent's environment (a `PATH`
    /// that puts a fault-injecting `nft` first, say), for this start and
    /// every restart.
    pub fn start_with_env(
        netns: &Netns,
        pin_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_placed(netns, pin_dir, args, None, env)
    }

    /// [`Agent::start`], run as a pod's container ([`InPod`]).
    pub fn start_in_pod(
        netns: &Netns,
        pin_dir: &Path,
        args: &[&str],
        pod: InPod,
    ) -> anyhow::Result<Self> {
        Self::start_placed(netns, pin_dir, args, Some(pod), &[])
    }

    fn start_placed(
        netns: &Netns,
        pin_dir: &Path,
        args: &[&str],
        pod: Option<InPod>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("{}.log", names::unique("egress-agent")));
        let mut agent = Self {
            child: None,
            log,
            pin_dir: pin_dir.to_owned(),
            netns: netns.name().to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            pod,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        agent.spawn()?;
        agent.wait_for_log("policy applied", APPLY_WAIT)?;
        Ok(agent)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = match &self.pod {
            None => Command::new("nsenter"),
            Some(pod) => {
                // unshare execs nsenter, which execs the agent: one pid,
                // already in the pod's cgroup when the namespace is made.
                let mut c = Command::new("unshare");
                crate::node::enter_cgroup_on_spawn(&mut c, &pod.cgroup)?;
                c.args(["--cgroup", "nsenter"]).env("POD_UID", &pod.pod_uid);
                c
            }
        };
        let child = command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(agent_exe())
            .arg("run")
            .arg("--bpffs")
            .arg(&self.pin_dir)
            .args(&self.args)
            .env("EGRESS_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting egress-agent")?;
        self.child = Some(child);
        Ok(())
    }

    /// The agent's pid while it runs (`nsenter` execs it, so this is the
    /// agent itself), e.g. to read its `/proc/PID/status`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `count` times in all.
    pub fn wait_for_count(
        &mut self,
        needle: &str,
        count: usize,
        within: Duration,
    ) -> anyhow::Result<()> {
        if !self.logged_within(needle, count, within)? {
            bail!(
                "egress-agent did not log {needle:?} {count} time(s) within {within:?}:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// A silence check: fails if `needle` appears in the log once more than
    /// it has so far within `within`. A bounded wait for the arrival a
    /// regression would bring, not a timing check: a pass costs the whole
    /// window, a regression ends it early.
    pub fn expect_no_log(&mut self, needle: &str, within: Duration) -> anyhow::Result<()> {
        let seen = self.log().matches(needle).count();
        if self.logged_within(needle, seen + 1, within)? {
            bail!(
                "egress-agent logged {needle:?} within {within:?}, and must not have:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// Whether the log contains `needle` `count` times in all within
    /// `within`; an error if the agent exits first.
    fn logged_within(
        &mut self,
        needle: &str,
        count: usize,
        within: Duration,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            if self.log().matches(needle).count() >= count {
                return Ok(true);
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "egress-agent exited ({status}) before logging {needle:?}:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for_log(&mut self, needle: &str, within: Duration) -> anyhow::Result<()> {
        self.wait_for_count(needle, 1, within)
    }

    fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let Some(child) = &self.child else {
            bail!("the agent is not running");
        };
        let pid = i32::try_from(child.id()).context("pid")?;
        // SAFETY: plain kill(2) on our own child's pid.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn sighup(&self) -> anyhow::Result<()> {
        self.signal(libc::SIGHUP)
    }

    /// SIGKILL, as a crash would: nothing runs on the agent's side.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGKILL)?;
        if let Some(mut child) = self.child.take() {
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM)?;
        match self.child.take() {
            Some(mut child) => Ok(child.wait()?),
            None => bail!("the agent is not running"),
        }
    }

    /// Starts the agent again with the same arguments (after `kill`).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let before = self.log().matches("policy applied").count();
        self.spawn()?;
        self.wait_for_count("policy applied", before + 1, APPLY_WAIT)
    }

    /// Starts the agent again with the same arguments (after `kill`) and
    /// waits for `needle` in its log, for starts that apply nothing (a
    /// rejected policy set with an earlier generation pinned).
    pub fn restart_until(&mut self, needle: &str) -> anyhow::Result<()> {
        let before = self.log().matches(needle).count();
        self.spawn()?;
        self.wait_for_count(needle, before + 1, APPLY_WAIT)
    }

    /// Runs `egress-agent uninstall` for this agent's pin dir.
    pub fn uninstall(&self) -> anyhow::Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(agent_exe())
            .args(["uninstall", "--bpffs"])
            .arg(&self.pin_dir)
            .output()
            .context("running egress-agent uninstall")?;
        if !out.status.success() {
            bail!("uninstall failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.log);
    }
}
