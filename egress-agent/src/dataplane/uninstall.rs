//! Removing everything the agent pinned, and nothing else.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use egress_common::map;

use super::{links, DataplaneError};

/// What [`Dataplane::uninstall`](super::Dataplane::uninstall) removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UninstallReport {
    /// Unpinned links: their programs are detached (and unloaded, once no
    /// process holds them).
    pub links: Vec<PathBuf>,
    /// Unpinned maps (freed once no program or process holds them).
    pub maps: Vec<PathBuf>,
    /// Directories removed.
    pub directories: Vec<PathBuf>,
    /// Entries found in the pin directory that the agent did not create,
    /// left alone (with the directories that hold them).
    pub kept: Vec<PathBuf>,
}

impl UninstallReport {
    /// Whether there was nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.maps.is_empty() && self.directories.is_empty()
    }
}

pub(super) fn uninstall(pin_dir: &Path) -> Result<UninstallReport, DataplaneError> {
    let mut report = UninstallReport::default();
    if !pin_dir.exists() {
        return Ok(report);
    }
    let links_dir = pin_dir.join("links");
    let maps_dir = pin_dir.join("maps");
    // Links first: the programs stop before their maps go.
    for (_, _, path) in links::pinned(&links_dir)? {
        if remove(&path)? {
            report.links.push(path);
        }
    }
    for name in map::ALL {
        let path = maps_dir.join(name);
        if remove(&path)? {
            report.maps.push(path);
        }
    }
    for dir in [&links_dir, &maps_dir] {
        if let Ok(entries) = fs::read_dir(dir) {
            report.kept.extend(entries.flatten().map(|e| e.path()));
        }
    }
    for dir in [links_dir.as_path(), maps_dir.as_path(), pin_dir] {
        match fs::remove_dir(dir) {
            Ok(()) => report.directories.push(dir.to_owned()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            // Not empty: someone else's entries, already listed in `kept`.
            Err(err) if err.raw_os_error() == Some(libc::ENOTEMPTY) => {
                if dir == pin_dir {
                    if let Ok(entries) = fs::read_dir(pin_dir) {
                        report.kept.extend(
                            entries
                                .flatten()
                                .map(|e| e.path())
                                .filter(|p| p != &links_dir && p != &maps_dir),
                        );
                    }
                }
            }
            Err(source) => {
                return Err(DataplaneError::Io {
                    action: "removing",
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
    Ok(report)
}

/// Unpins `path`; `Ok(false)` if it was not there.
fn remove(path: &Path) -> Result<bool, DataplaneError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(DataplaneError::Io {
            action: "unpinning",
            path: path.to_owned(),
            source,
        }),
    }
}
