//! An `nft` put first on the agent's `PATH` that fails, holds or hangs the
//! backstop's transactions (`nft -j -f -`) on demand, and is the real nft
//! otherwise (listings, `--version`, and transactions while no fault is
//! on).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::ensure;

use crate::names;

/// The shim's directory and the files that switch its faults.
pub struct NftShim {
    dir: PathBuf,
    fault: PathBuf,
    hold: PathBuf,
    hang: PathBuf,
    failed: PathBuf,
    entered: PathBuf,
}

impl NftShim {
    pub fn new() -> anyhow::Result<Self> {
        let real = Command::new("sh").args(["-c", "command -v nft"]).output()?;
        let real = String::from_utf8(real.stdout)?.trim().to_owned();
        ensure!(!real.is_empty(), "nft is not installed");
        let dir = std::env::temp_dir().join(names::unique("egress-nft-shim"));
        fs::create_dir_all(&dir)?;
        let shim = Self {
            fault: dir.join("fault"),
            hold: dir.join("hold"),
            hang: dir.join("hang"),
            failed: dir.join("failed"),
            entered: dir.join("entered"),
            dir,
        };
        // A hang sleeps in a child, as nft would sit in the kernel: only a
        // kill of the whole process group ends it.
        let script = format!(
            "#!/bin/sh\n\
             if [ \"$*\" = '-j -f -' ]; then\n\
             \x20   if [ -e '{hang}' ]; then\n\
             \x20       sleep 3600 &\n\
             \x20       echo \"$$ $!\" >> '{entered}'\n\
             \x20       wait\n\
             \x20   fi\n\
             \x20   if [ -e '{hold}' ]; then\n\
             \x20       echo \"$$\" >> '{entered}'\n\
             \x20       while [ -e '{hold}' ]; do sleep 0.05; done\n\
             \x20   fi\n\
             \x20   if [ -e '{fault}' ]; then\n\
             \x20       cat > /dev/null\n\
             \x20       echo x >> '{failed}'\n\
             \x20       echo 'Error: injected fault: the transaction was refused' >&2\n\
             \x20       exit 1\n\
             \x20   fi\n\
             fi\n\
             exec '{real}' \"$@\"\n",
            fault = shim.fault.display(),
            hold = shim.hold.display(),
            hang = shim.hang.display(),
            failed = shim.failed.display(),
            entered = shim.entered.display(),
        );
        let path = shim.dir.join("nft");
        fs::write(&path, script)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(shim)
    }

    /// `PATH` with the shim first.
    pub fn path(&self) -> String {
        let rest = std::env::var("PATH").unwrap_or_default();
        format!("{}:{rest}", self.dir.display())
    }

    /// While on, each transaction fails, as nft refusing it would.
    pub fn fail(&self, on: bool) -> anyhow::Result<()> {
        switch(&self.fault, on)
    }

    /// While on, each transaction waits; turning it off lets the waiting
    /// ones go on to the real nft.
    pub fn hold(&self, on: bool) -> anyhow::Result<()> {
        switch(&self.hold, on)
    }

    /// While on, each transaction hangs until it is killed.
    pub fn hang(&self, on: bool) -> anyhow::Result<()> {
        switch(&self.hang, on)
    }

    /// Transactions failed so far.
    pub fn failures(&self) -> usize {
        fs::read_to_string(&self.failed).map_or(0, |s| s.lines().count())
    }

    /// The transactions held or hung so far: each one's shell pid (which
    /// leads the process group the agent runs nft in), and for a hang its
    /// `sleep`'s.
    pub fn entered(&self) -> Vec<Vec<u32>> {
        fs::read_to_string(&self.entered)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .collect()
    }
}

fn switch(file: &Path, on: bool) -> anyhow::Result<()> {
    if on {
        fs::write(file, "")?;
    } else if file.exists() {
        fs::remove_file(file)?;
    }
    Ok(())
}

impl Drop for NftShim {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
