//! Long-running processes of the local cluster, each started inside a
//! network namespace with its output in a log file.
//!
//! Processes are entered into a namespace with `nsenter --net`, never with
//! `ip netns exec`: the latter remounts /sys, which would hide the cgroup
//! and BPF filesystems from the kubelet and containerd. nsenter execs the
//! program, so the pid is the program's.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::layout;

/// Starts `program args` in netns `netns`, its stdout and stderr appended
/// to the log `name`.
pub fn spawn(netns: &str, name: &str, program: &Path, args: &[String]) -> anyhow::Result<Child> {
    spawn_logged(Some(netns), name, &layout::log(name), program, args)
}

/// Starts `program args` (in netns `netns`, or in the caller's), its
/// stdout and stderr appended to `log_path`.
pub fn spawn_logged(
    netns: Option<&str>,
    name: &str,
    log_path: &Path,
    program: &Path,
    args: &[String],
) -> anyhow::Result<Child> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let err = log.try_clone().context("duplicating the log file")?;
    let mut cmd = match netns {
        Some(netns) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", layout::netns_path(netns).display()))
                .arg("--")
                .arg(program);
            cmd
        }
        None => Command::new(program),
    };
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))?;
    println!(
        "k8s-test:   started {name} (pid {}) in {}; log {}",
        child.id(),
        netns.unwrap_or("the host's netns"),
        log_path.display()
    );
    Ok(child)
}

/// Polls `ready` every 200 ms until it returns true, for at most `limit`.
/// `child` is checked on each round, so a process that died fails at once
/// with the tail of its log.
pub fn wait_until(
    what: &str,
    limit: Duration,
    child: Option<(&str, &mut Child)>,
    ready: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let child = child.map(|(name, child)| (name, layout::log(name), child));
    wait_logged(what, limit, child, ready)
}

/// [`wait_until`] for a process whose log is at an explicit path.
pub fn wait_logged(
    what: &str,
    limit: Duration,
    mut child: Option<(&str, PathBuf, &mut Child)>,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(start.elapsed());
        }
        if let Some((name, log, child)) = child.as_mut() {
            if let Some(status) = child.try_wait().context("polling a child")? {
                bail!(
                    "{name} exited ({status}) while waiting for {what}; its log ends:\n{}",
                    tail_of(log, 30)
                );
            }
        }
        if start.elapsed() > limit {
            bail!("{what}: not ready after {}s", limit.as_secs());
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The last `lines` lines of the log `name`.
pub fn log_tail(name: &str, lines: usize) -> String {
    tail_of(&layout::log(name), lines)
}

/// The last `lines` lines of the file at `path`.
pub fn tail_of(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
