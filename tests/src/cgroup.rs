//! A cgroup v2 leaf of the test's own.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::names;

/// A fresh cgroup directory directly under the cgroup2 mount, removed (with
/// any process still in it killed) on drop.
///
/// It sits under the hierarchy's root because the root is exempt from the
/// "no internal processes" rule, so moving a probe into the leaf works
/// whatever controllers the host has enabled.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> anyhow::Result<Self> {
        let mount = egress_agent::sys::cgroup2_mount().context("finding the cgroup2 mount")?;
        let path = mount.join(names::unique(names::CGROUP_PREFIX));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path relative to the cgroup2 mount, as workloads name cgroups.
    pub fn relative(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Creates `relative` (and its parents) below this cgroup; removed with
    /// it.
    pub fn child(&self, relative: &str) -> anyhow::Result<PathBuf> {
        let path = self.path.join(relative.trim_matches('/'));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }

    /// The pids currently in the cgroup.
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        pids(&self.path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

fn pids(path: &Path) -> io::Result<Vec<u32>> {
    Ok(fs::read_to_string(path.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Kills what is left in the cgroup and removes it, with its descendants
/// (deepest first). A cgroup cannot be removed while it has processes or
/// children, and killing is asynchronous, hence the polling.
pub(crate) fn remove(path: &Path) {
    // cgroup.kill (5.14+) kills every process in the subtree at once.
    let _ = fs::write(path.join("cgroup.kill"), "1");
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&entry.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(err) if Instant::now() >= deadline => {
                eprintln!(
                    "warning: removing cgroup {} (pids {:?}): {err}",
                    path.display(),
                    pids(path).unwrap_or_default()
                );
                return;
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}
