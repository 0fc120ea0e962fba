//! A pin directory of the test's own on bpffs.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use egress_agent::dataplane::Dataplane;

use crate::names;

/// A fresh, not yet created, directory under the bpffs mount for one
/// test's data plane. On drop, [`Dataplane::uninstall`] removes whatever
/// the data plane pinned there (detaching its programs).
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new() -> anyhow::Result<Self> {
        let mount = egress_agent::sys::bpffs_mount().context("finding the bpffs mount")?;
        Ok(Self {
            path: mount.join(names::unique(names::PIN_PREFIX)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(err) = Dataplane::uninstall(&self.path) {
            eprintln!("warning: uninstalling {}: {err}", self.path.display());
        }
    }
}
