//! Workload cgroups: ids, levels, and the root the programs are attached to.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

use super::DataplaneError;
use crate::{compile::Plan, sys};
use egress_policy::model::ObjectId;

/// The cgroup id of every workload of `plan` whose cgroup exists under
/// `cgroup2_mount`. On cgroup v2 a cgroup's id is the inode number of its
/// directory, which is what `bpf_get_current_ancestor_cgroup_id` returns.
/// Workloads whose cgroup does not exist (yet) are left out.
pub fn cgroup_ids(plan: &Plan, cgroup2_mount: &Path) -> BTreeMap<ObjectId, u64> {
    plan.workloads
        .iter()
        .filter_map(|w| {
            let path = cgroup2_mount.join(relative(cgroup2_mount, &w.cgroup));
            let meta = std::fs::metadata(path).ok()?;
            meta.is_dir().then(|| (w.id.clone(), meta.ino()))
        })
        .collect()
}

/// A workload's cgroup relative to the mount, as `a/b` (no leading or
/// trailing `/`). Workloads name it relative to the mount (`a/b`), as an
/// absolute cgroup path as `/proc/PID/cgroup` prints it (`/a/b`), or as a
/// full path under the mount (`/sys/fs/cgroup/a/b`); `..` never climbs.
pub fn relative(mount: &Path, cgroup: &str) -> String {
    let spec = Path::new(cgroup.trim());
    let spec = spec.strip_prefix(mount).unwrap_or(spec);
    spec.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The cgroup v2 directory the programs are attached to, and where it sits.
#[derive(Clone, Debug)]
pub(super) struct CgroupRoot {
    /// As given to `Dataplane::open`.
    pub(super) path: PathBuf,
    /// Where the cgroup2 hierarchy is mounted.
    pub(super) mount: PathBuf,
    /// Its id (inode number).
    pub(super) id: u64,
    /// Relative to the cgroup2 mount, `a/b` (empty for the mount's root).
    pub(super) relative: String,
    /// Level, in the kernel's hierarchy, of the directory mounted at the
    /// cgroup2 mount point: 0, unless a sub-cgroup is mounted there (the
    /// mount's root in mountinfo), in which case every level shifts by its
    /// depth. A cgroup namespace hides that shift and is not supported.
    pub(super) mount_level: u32,
}

impl CgroupRoot {
    pub(super) fn inspect(path: &Path) -> Result<Self, DataplaneError> {
        let inspect = |source| DataplaneError::Inspect {
            path: path.to_owned(),
            source,
        };
        if !sys::is_cgroup2_dir(path).map_err(inspect)? {
            return Err(DataplaneError::NotCgroup2 {
                path: path.to_owned(),
            });
        }
        let mount = sys::cgroup2_mount_entry().map_err(inspect)?;
        let io = |source| DataplaneError::Io {
            action: "inspecting cgroup",
            path: path.to_owned(),
            source,
        };
        let canonical = path.canonicalize().map_err(io)?;
        let relative = canonical.strip_prefix(&mount.mount_point).map_err(|_| {
            DataplaneError::RootOutsideMount {
                path: path.to_owned(),
                mount: mount.mount_point.clone(),
            }
        })?;
        let relative = relative
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("/");
        let mount_level = mount
            .root
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count();
        Ok(Self {
            path: path.to_owned(),
            mount: mount.mount_point.clone(),
            id: std::fs::metadata(&canonical).map_err(io)?.ino(),
            relative,
            mount_level: u32::try_from(mount_level).unwrap_or(u32::MAX),
        })
    }

    /// Where a workload's cgroup is: relative to the mount, and its level
    /// in the kernel's hierarchy (the root is level 0).
    pub(super) fn place(&self, cgroup: &str) -> (String, u32) {
        let relative = relative(&self.mount, cgroup);
        let depth = relative.split('/').filter(|c| !c.is_empty()).count();
        let level = self
            .mount_level
            .saturating_add(u32::try_from(depth).unwrap_or(u32::MAX));
        (relative, level)
    }

    /// Whether `relative` (as [`relative`] gives it) is the root or below.
    pub(super) fn contains(&self, relative: &str) -> bool {
        self.relative.is_empty()
            || relative == self.relative
            || relative
                .strip_prefix(&self.relative)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(relative: &str) -> CgroupRoot {
        CgroupRoot {
            path: PathBuf::new(),
            mount: PathBuf::from("/sys/fs/cgroup/unified"),
            id: 1,
            relative: relative.to_owned(),
            mount_level: 0,
        }
    }

    #[test]
    fn a_root_contains_itself_and_its_descendants_only() {
        assert!(root("").contains("a/b"));
        assert!(root("a").contains("a"));
        assert!(root("a").contains("a/b/c"));
        assert!(!root("a").contains("ab/c"));
        assert!(!root("a/b").contains("a"));
    }

    #[test]
    fn the_three_spellings_of_a_cgroup_are_one_place() {
        let root = root("k");
        for spelling in [
            "k/pod/app",
            "/k/pod/app/",
            "/sys/fs/cgroup/unified/k/pod/app",
            "k/../k/pod/app",
        ] {
            let (relative, level) = root.place(spelling);
            assert_eq!(
                relative,
                if spelling.contains("..") {
                    "k/k/pod/app"
                } else {
                    "k/pod/app"
                }
            );
            assert_eq!(level, relative.split('/').count() as u32, "{spelling}");
        }
        let shifted = CgroupRoot {
            mount_level: 2,
            ..root
        };
        assert_eq!(
            shifted.place("a").1,
            3,
            "a sub-cgroup mounted at the mount point"
        );
    }
}
