//! Finding pods' cgroups by searching the cgroup2 tree, never by assuming a
//! layout.
//!
//! The kubelet names a pod's cgroup after its UID, in one of these layouts:
//!
//! - cgroupfs driver: `…/kubepods/<qos>/pod<uid>/<container-id>` (the
//!   Guaranteed class has no `<qos>` level; CRI-O names the container
//!   `crio-<id>`);
//! - systemd driver: `…/kubepods.slice/kubepods-<qos>.slice/
//!   kubepods-<qos>-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
//!   (`docker-<id>.scope`, `crio-<id>.scope` with other runtimes);
//! - kind's nodes (systemd driver, kubelet `cgroupRoot: /kubelet`):
//!   `…/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-<qos>.slice/
//!   kubelet-kubepods-<qos>-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`.
//!
//! The prefix above the pods root depends on the kubelet's `--cgroup-root`
//! and on where the cgroup2 hierarchy is mounted, so the tree is walked
//! (bounded in depth, never below a pod's directory) and directories are
//! recognised by name: a pod directory by the UID it embeds, a container
//! directory by the container id, and the pods root by its name. systemd
//! names a slice after its whole path (`a-b.slice` is `b` inside `a`), so a
//! slice is recognised by its `kubepods` component, wherever it sits.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

/// What one walk of the tree found. Paths are relative to the cgroup2
/// mount, `a/b/c`, as Workloads name their cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIndex {
    /// Pod UID (with dashes, as the API writes it) → its directory.
    pub pods: BTreeMap<String, String>,
    /// The kubelet's pods roots (`kubepods`, `kubepods.slice`).
    pub roots: Vec<String>,
}

/// How deep below the starting point the walk goes. The kubelet's
/// `--cgroup-root` plus `kubepods/<qos>/pod<uid>` is rarely more than 6
/// levels; 10 leaves room and keeps a walk of a busy host cheap.
pub const MAX_DEPTH: usize = 10;

/// Walks `mount/base` (base relative to the mount, `""` for the mount
/// itself) up to `max_depth` levels. Directories that vanish during the walk
/// are skipped: pods come and go. `base` itself counts as a pods root when
/// it is one: an agent attached right at `kubepods.slice` guards it.
pub fn scan(mount: &Path, base: &str, max_depth: usize) -> CgroupIndex {
    let mut index = CgroupIndex::default();
    let start = mount.join(base);
    let base = base.trim_matches('/');
    if base.rsplit('/').next().is_some_and(is_pods_root) {
        index.roots.push(base.to_owned());
    }
    walk(mount, &start, 0, max_depth, &mut index);
    index.roots.sort();
    index
}

fn walk(mount: &Path, dir: &Path, depth: usize, max_depth: usize, index: &mut CgroupIndex) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        // `file_type` does not follow symlinks: cgroupfs has none, and a
        // link could only make the walk loop.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let relative = || relative(mount, &path);
        if let Some(uid) = pod_uid(name) {
            index.pods.insert(uid, relative());
            continue; // containers below are looked up per pod
        }
        if is_pods_root(name) {
            index.roots.push(relative());
        }
        if depth + 1 < max_depth {
            walk(mount, &path, depth + 1, max_depth, index);
        }
    }
}

fn relative(mount: &Path, path: &Path) -> String {
    path.strip_prefix(mount)
        .unwrap_or(path)
        .to_string_lossy()
        .trim_matches('/')
        .to_owned()
}

/// `kubepods` (cgroupfs), `kubepods.slice` (systemd) or a slice whose last
/// component is `kubepods` (`kubelet-kubepods.slice` on kind's nodes).
pub fn is_pods_root(name: &str) -> bool {
    if name == "kubepods" {
        return true;
    }
    name.strip_suffix(".slice")
        .is_some_and(|stem| stem.rsplit('-').next() == Some("kubepods"))
}

/// The pod UID a directory name embeds: `pod<uid>` (cgroupfs) or a slice
/// `…kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd, kind).
pub fn pod_uid(name: &str) -> Option<String> {
    if let Some(uid) = name.strip_prefix("pod") {
        return is_uid(uid).then(|| uid.to_owned());
    }
    let stem = name.strip_suffix(".slice")?;
    let (parents, uid) = stem.rsplit_once("-pod")?;
    // The pod's slice is always below a `kubepods` slice, so one of the
    // path components before it is `kubepods` (`system-pod….slice` is not
    // a pod).
    if !parents.split('-').any(|c| c == "kubepods") {
        return None;
    }
    let uid = uid.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// A Kubernetes UID: an RFC 4122 UUID in its 36-character text form.
fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The container id of a `status.containerStatuses[].containerID`
/// (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`).
pub fn container_id(status_id: &str) -> Option<&str> {
    let (_, id) = status_id.split_once("://")?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric())).then_some(id)
}

/// The directory of container `id` in the pod directory `pod` (relative to
/// `mount`): named `<id>` (cgroupfs, containerd), `<runtime>-<id>`
/// (cgroupfs, CRI-O) or `<runtime>-<id>.scope` (systemd). CRI-O's monitor
/// (`crio-conmon-<id>.scope`) has the same id and is not the container.
pub fn container_dir(mount: &Path, pod: &str, id: &str) -> Option<String> {
    let dir: PathBuf = mount.join(pod);
    let direct = dir.join(id);
    if direct.is_dir() {
        return Some(relative(mount, &direct));
    }
    let is_container = |name: &str| {
        let stem = name.strip_suffix(".scope").unwrap_or(name);
        stem.strip_suffix(id)
            .and_then(|runtime| runtime.strip_suffix('-'))
            .is_some_and(|runtime| !runtime.is_empty() && !runtime.contains("conmon"))
    };
    fs::read_dir(&dir)
        .ok()?
        .flatten()
        .find(|e| {
            e.file_type().is_ok_and(|t| t.is_dir())
                && e.file_name().to_str().is_some_and(is_container)
        })
        .map(|e| relative(mount, &e.path()))
}

/// The calling process's cgroup v2 path, relative to the cgroup2 mount,
/// from `/proc/self/cgroup` (the `0::` line).
pub fn own_cgroup() -> std::io::Result<String> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().trim_matches('/').to_owned())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "/proc/self/cgroup has no cgroup v2 (0::) line",
            )
        })
}

/// The agent's own cgroup (relative to the mount), where exempting it
/// means something.
///
/// `/proc/self/cgroup` names it relative to the process's cgroup
/// namespace: in a container with a private cgroup namespace (the default
/// on cgroup v2 hosts) that is `/`, which says nothing. Then the pod UID
/// (the downward API's `metadata.uid`, `$POD_UID` in the DaemonSet) finds
/// the pod's directory in the host's tree, as for any pod. `None`: neither
/// works, and the agent cannot know where it runs.
pub fn own_cgroup_in(mount: &Path, base: &str, pod_uid: Option<&str>) -> Option<String> {
    let own = own_cgroup().ok().filter(|own| !own.is_empty());
    if let Some(own) = own.filter(|own| mount.join(own).is_dir()) {
        return Some(own);
    }
    let uid = pod_uid?;
    scan(mount, base, MAX_DEPTH).pods.remove(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6a3c1e-8a52-4f1e-9c1a-2f4d5e6a7b8c";
    const CID: &str = "4f2c0a9d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f";

    fn tree(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("egress-cg-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn the_cgroupfs_layout_is_found_by_uid() {
        let mount = tree("cgroupfs");
        let pod = format!("k8stest/kubepods/burstable/pod{UID}");
        fs::create_dir_all(mount.join(&pod).join(CID)).expect("mkdir");
        fs::create_dir_all(mount.join("k8stest/kubepods/besteffort")).expect("mkdir");
        fs::create_dir_all(mount.join("system.slice/containerd.service")).expect("mkdir");
        let index = scan(&mount, "", MAX_DEPTH);
        assert_eq!(index.pods.get(UID), Some(&pod));
        assert_eq!(index.roots, ["k8stest/kubepods"]);
        assert_eq!(
            container_dir(&mount, &pod, CID),
            Some(format!("{pod}/{CID}"))
        );
        assert_eq!(container_dir(&mount, &pod, "abc"), None);
        fs::remove_dir_all(&mount).ok();
    }

    #[test]
    fn the_systemd_layout_is_found_by_uid() {
        let mount = tree("systemd");
        let under = UID.replace('-', "_");
        let pod =
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice");
        let guaranteed_uid = "11111111-2222-3333-4444-555555555555";
        let guaranteed = format!(
            "kubepods.slice/kubepods-pod{}.slice",
            guaranteed_uid.replace('-', "_")
        );
        fs::create_dir_all(mount.join(&pod).join(format!("cri-containerd-{CID}.scope")))
            .expect("mkdir");
        fs::create_dir_all(mount.join(&guaranteed)).expect("mkdir");
        let index = scan(&mount, "", MAX_DEPTH);
        assert_eq!(index.pods.get(UID), Some(&pod));
        assert_eq!(index.pods.get(guaranteed_uid), Some(&guaranteed));
        assert_eq!(index.roots, ["kubepods.slice"]);
        assert_eq!(
            container_dir(&mount, &pod, CID),
            Some(format!("{pod}/cri-containerd-{CID}.scope"))
        );
        // Attached at the pods root itself (deploy/overlays/systemd): the
        // same pods, and the root is guarded.
        let narrow = scan(&mount, "kubepods.slice", MAX_DEPTH);
        assert_eq!(narrow.pods, index.pods);
        assert_eq!(narrow.roots, ["kubepods.slice"]);
        fs::remove_dir_all(&mount).ok();
    }

    #[test]
    fn kinds_layout_is_found_by_uid() {
        let mount = tree("kind");
        let under = UID.replace('-', "_");
        let root = "kubelet.slice/kubelet-kubepods.slice";
        let pod = format!(
            "{root}/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{under}.slice"
        );
        fs::create_dir_all(mount.join(&pod).join(format!("cri-containerd-{CID}.scope")))
            .expect("mkdir");
        fs::create_dir_all(mount.join("system.slice/containerd.service")).expect("mkdir");
        let index = scan(&mount, "", MAX_DEPTH);
        assert_eq!(index.pods.get(UID), Some(&pod));
        assert_eq!(index.roots, [root]);
        assert_eq!(
            container_dir(&mount, &pod, CID),
            Some(format!("{pod}/cri-containerd-{CID}.scope"))
        );
        fs::remove_dir_all(&mount).ok();
    }

    #[test]
    fn cri_o_containers_are_found_under_both_drivers_and_conmon_is_not_one() {
        let mount = tree("crio");
        let under = UID.replace('-', "_");
        let systemd =
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice");
        fs::create_dir_all(
            mount
                .join(&systemd)
                .join(format!("crio-conmon-{CID}.scope")),
        )
        .expect("mkdir");
        fs::create_dir_all(mount.join(&systemd).join(format!("crio-{CID}.scope"))).expect("mkdir");
        assert_eq!(
            container_dir(&mount, &systemd, CID),
            Some(format!("{systemd}/crio-{CID}.scope"))
        );
        let cgroupfs = format!("kubepods/burstable/pod{UID}");
        fs::create_dir_all(mount.join(&cgroupfs).join(format!("crio-conmon-{CID}")))
            .expect("mkdir");
        assert_eq!(container_dir(&mount, &cgroupfs, CID), None, "conmon only");
        fs::create_dir_all(mount.join(&cgroupfs).join(format!("crio-{CID}"))).expect("mkdir");
        assert_eq!(
            container_dir(&mount, &cgroupfs, CID),
            Some(format!("{cgroupfs}/crio-{CID}"))
        );
        fs::remove_dir_all(&mount).ok();
    }

    #[test]
    fn names_that_only_look_like_pods_are_not_pods() {
        assert_eq!(pod_uid("pod"), None);
        assert_eq!(pod_uid("podcast"), None);
        assert_eq!(pod_uid(&format!("pod{UID}x")), None);
        assert_eq!(pod_uid("kubepods-burstable.slice"), None);
        assert_eq!(
            pod_uid(&format!("system-pod{}.slice", UID.replace('-', "_"))),
            None
        );
        assert_eq!(pod_uid(&format!("pod{UID}")).as_deref(), Some(UID));
        assert!(!is_pods_root("kubepods-besteffort.slice"));
        assert!(!is_pods_root("kubelet-kubepods-burstable.slice"));
        assert!(!is_pods_root("mykubepods.slice"));
        assert!(is_pods_root("kubelet-kubepods.slice"));
        assert_eq!(
            pod_uid(&format!(
                "kubelet-kubepods-pod{}.slice",
                UID.replace('-', "_")
            ))
            .as_deref(),
            Some(UID)
        );
    }

    #[test]
    fn container_ids_come_from_the_status_with_any_runtime_scheme() {
        assert_eq!(container_id(&format!("containerd://{CID}")), Some(CID));
        assert_eq!(container_id("cri-o://abc123"), Some("abc123"));
        assert_eq!(container_id("abc123"), None);
        assert_eq!(container_id("containerd://"), None);
        assert_eq!(container_id("containerd://../../etc"), None);
    }

    #[test]
    fn the_walk_is_bounded_in_depth() {
        let mount = tree("deep");
        let deep = format!("a/b/c/d/pod{UID}");
        fs::create_dir_all(mount.join(&deep)).expect("mkdir");
        assert!(scan(&mount, "", 3).pods.is_empty());
        assert_eq!(scan(&mount, "", 5).pods.get(UID), Some(&deep));
        assert_eq!(scan(&mount, "a/b", 3).pods.get(UID), Some(&deep));
        fs::remove_dir_all(&mount).ok();
    }
}
