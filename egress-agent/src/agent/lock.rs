//! One agent per pin directory.
//!
//! Two agents writing generations into the same maps would flip `ACTIVE`
//! under each other and break the one-complete-generation guarantee, so
//! `run` takes an exclusive lock first. bpffs holds no regular files, so
//! the lock lives under `/run`; the kernel releases it when the process
//! dies, so a crashed agent never blocks its successor.

use std::{
    fs::{self, File},
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

/// Where the locks live.
const LOCK_DIR: &str = "/run/egress-agent";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another egress-agent already manages {pin_dir} (lock {lock} is held)")]
    Held { pin_dir: PathBuf, lock: PathBuf },
    #[error("cannot open the lock file {lock}")]
    Open {
        lock: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Held for the life of the agent; released on drop or process exit.
#[derive(Debug)]
pub struct PinDirLock {
    _file: File,
    path: PathBuf,
}

impl PinDirLock {
    pub fn acquire(pin_dir: &Path) -> Result<Self, LockError> {
        Self::acquire_in(Path::new(LOCK_DIR), pin_dir)
    }

    fn acquire_in(dir: &Path, pin_dir: &Path) -> Result<Self, LockError> {
        let name: String = pin_dir
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{name}.lock"));
        let open_err = |source| LockError::Open {
            lock: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(open_err)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(open_err)?;
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.kind() == io::ErrorKind::WouldBlock {
                LockError::Held {
                    pin_dir: pin_dir.to_owned(),
                    lock: path,
                }
            } else {
                open_err(err)
            });
        }
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_on_the_same_pin_dir_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("egress-lock-{}", std::process::id()));
        let pins = Path::new("/sys/fs/bpf/egress-enforcer");
        let first = PinDirLock::acquire_in(&dir, pins).expect("first");
        let second = PinDirLock::acquire_in(&dir, pins).expect_err("held");
        assert!(
            second
                .to_string()
                .contains("already manages /sys/fs/bpf/egress-enforcer"),
            "{second}"
        );
        let other = PinDirLock::acquire_in(&dir, Path::new("/sys/fs/bpf/other"));
        assert!(other.is_ok(), "other pin dirs are independent");
        drop(first);
        assert!(
            PinDirLock::acquire_in(&dir, pins).is_ok(),
            "released on drop"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
