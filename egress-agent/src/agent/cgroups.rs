//! Finds workloads' cgroups and their ids.
//!
//! `Workload.spec.cgroup` is written either relative to the cgroup2 mount
//! (`kubepods/pod1234/app`), as an absolute cgroup path the way
//! `/proc/PID/cgroup` prints it (`/kubepods/pod1234/app`), or as a full
//! filesystem path under the mount. All three name the same directory. On
//! cgroup2 a cgroup's id, which BPF helpers return, is the inode number of
//! its directory.

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use crate::{compile::Plan, policy::model::ObjectId};

/// A workload cgroup that exists: its directory, id and depth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupRef {
    pub path: PathBuf,
    /// The kernel's cgroup id: the directory's inode number.
    pub id: u64,
    /// Depth below the cgroup2 root (the root is level 0), as
    /// `bpf_get_current_ancestor_cgroup_id` counts it.
    pub level: u32,
}

/// The directory a workload's cgroup spec names under `mount`.
pub fn locate(mount: &Path, spec: &str) -> PathBuf {
    let spec_path = Path::new(spec);
    if spec_path.starts_with(mount) {
        return spec_path.to_path_buf();
    }
    let relative: PathBuf = spec_path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    mount.join(relative)
}

/// Reads a cgroup directory's id and level.
pub fn inspect(mount: &Path, path: &Path) -> io::Result<CgroupRef> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a directory",
        ));
    }
    let level = path
        .strip_prefix(mount)
        .map(|rel| rel.components().count())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "outside the cgroup2 mount"))?;
    Ok(CgroupRef {
        path: path.to_path_buf(),
        id: meta.ino(),
        level: u32::try_from(level).unwrap_or(u32::MAX),
    })
}

/// Every workload of `plan` whose cgroup exists, and the ones that do not
/// yet (a workload may be declared before its cgroup is created; it is
/// enforced as soon as the cgroup appears).
pub fn resolve(
    mount: &Path,
    plan: &Plan,
) -> (BTreeMap<ObjectId, CgroupRef>, BTreeMap<ObjectId, io::Error>) {
    let mut found = BTreeMap::new();
    let mut missing = BTreeMap::new();
    for w in &plan.workloads {
        match inspect(mount, &locate(mount, &w.cgroup)) {
            Ok(cg) => {
                found.insert(w.id.clone(), cg);
            }
            Err(e) => {
                missing.insert(w.id.clone(), e);
            }
        }
    }
    (found, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_spellings_name_one_directory() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        let want = Path::new("/sys/fs/cgroup/unified/kubepods/pod1/app");
        assert_eq!(locate(mount, "kubepods/pod1/app"), want);
        assert_eq!(locate(mount, "/kubepods/pod1/app"), want);
        assert_eq!(
            locate(mount, "/sys/fs/cgroup/unified/kubepods/pod1/app"),
            want
        );
    }

    #[test]
    fn dot_dot_cannot_climb_out_of_the_mount() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            locate(mount, "../../etc"),
            Path::new("/sys/fs/cgroup/unified/etc")
        );
    }

    #[test]
    fn id_is_the_inode_and_level_counts_from_the_mount() {
        let root = std::env::temp_dir().join(format!("egress-cg-{}", std::process::id()));
        let leaf = root.join("a/b");
        std::fs::create_dir_all(&leaf).expect("mkdir");
        let cg = inspect(&root, &leaf).expect("exists");
        assert_eq!(cg.level, 2);
        assert_eq!(cg.id, std::fs::metadata(&leaf).expect("stat").ino());
        assert!(inspect(&root, &root.join("missing")).is_err());
        std::fs::remove_dir_all(&root).ok();
    }
}
