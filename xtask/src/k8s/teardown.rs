//! Removes everything `k8s-test` creates, whether or not it is there:
//! processes, mounts, network namespaces, cgroups, bpffs pins, state.
//!
//! It runs before every bring-up (to sweep a run that was killed) and after
//! every run, passed or failed. Only what is provably the test's is
//! touched: processes inside its network namespaces or its cgroups, mounts
//! under its directories, its own names.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use super::{
    layout::{self, BPFFS_DIR, CGROUP_ROOT, INTERNET_NETNS, NODES, RUN_DIR, STATE_DIR},
    network,
    node::cgroup_mounts,
};

/// Kernel settings the kubelet changes on start-up (it sets the values its
/// kube-proxy-less defaults expect); saved before and restored after.
pub const KUBELET_SYSCTLS: &[&str] = &[
    "/proc/sys/vm/overcommit_memory",
    "/proc/sys/vm/panic_on_oom",
    "/proc/sys/kernel/panic",
    "/proc/sys/kernel/panic_on_oops",
    "/proc/sys/kernel/keys/root_maxkeys",
    "/proc/sys/kernel/keys/root_maxbytes",
];

/// Saves [`KUBELET_SYSCTLS`] (unless a previous run's save is still there:
/// that one holds the values from before any kubelet ran).
pub fn save_sysctls() -> std::io::Result<()> {
    let saved = sysctl_file();
    if saved.exists() {
        return Ok(());
    }
    let mut text = String::new();
    for path in KUBELET_SYSCTLS {
        if let Ok(value) = fs::read_to_string(path) {
            text.push_str(&format!("{path} {}\n", value.trim()));
        }
    }
    fs::write(saved, text)
}

fn sysctl_file() -> PathBuf {
    Path::new("/var/lib").join("egress-k8s-test.sysctls")
}

/// Tears everything down; reports what it removed. Never fails: each step
/// is attempted whatever the previous did, and problems are printed.
pub fn run() -> Vec<String> {
    let mut report = Vec::new();
    let uids = pod_uids();
    // 1. The kubelets first, so that they restart nothing; then every
    //    process in the pods' cgroups; then all left in the test's
    //    namespaces (control plane, containerd and its shims, kube-proxy,
    //    the internet's servers).
    let killed_kubelet: usize = NODES
        .iter()
        .map(|n| kill_in_netns(n.name, Some("kubelet")))
        .sum();
    let killed_pods = kill_cgroups();
    let mut killed: usize = NODES.iter().map(|n| kill_in_netns(n.name, None)).sum();
    killed += kill_in_netns(INTERNET_NETNS, None);
    if killed_kubelet + killed_pods + killed > 0 {
        report.push(format!(
            "killed {} process(es): kubelet {killed_kubelet}, in pods {killed_pods}, other {killed}",
            killed_kubelet + killed_pods + killed
        ));
    }
    // 2. Mounts under the test's directories (pod volumes, container root
    //    filesystems, sandbox shm, pod netns), innermost first.
    let unmounted = unmount_under(&[STATE_DIR, RUN_DIR]);
    if unmounted > 0 {
        report.push(format!("unmounted {unmounted} mount(s)"));
    }
    // 3. The namespaces: with them go the veths, routes, nft tables and
    //    kube-proxy's and the kubelets' iptables rules.
    let had_netns = network::existing().len();
    network::delete();
    if had_netns > 0 {
        report.push(format!("deleted {had_netns} network namespace(s)"));
    }
    // 4. cgroups, deepest first, in every hierarchy.
    let removed = remove_cgroups();
    if removed > 0 {
        report.push(format!("removed {removed} cgroup(s) under /{CGROUP_ROOT}"));
    }
    // 5. The agent's pins: unpinning the links detaches the programs.
    if Path::new(BPFFS_DIR).exists() {
        match fs::remove_dir_all(BPFFS_DIR) {
            Ok(()) => report.push(format!("removed bpffs pins {BPFFS_DIR}")),
            Err(err) => report.push(format!("WARNING: removing {BPFFS_DIR}: {err}")),
        }
    }
    // 6. Kernel settings the kubelet changed.
    if let Ok(text) = fs::read_to_string(sysctl_file()) {
        for line in text.lines() {
            if let Some((path, value)) = line.split_once(' ') {
                if let Err(err) = fs::write(path, value) {
                    report.push(format!("WARNING: restoring {path}: {err}"));
                }
            }
        }
        let _ = fs::remove_file(sysctl_file());
        report.push("restored the kubelet's sysctls".to_owned());
    }
    // 7. State. Pod logs go to /var/log/pods, a path the kubelet does not
    //    let us move: only this cluster's pods are removed from it.
    for dir in [STATE_DIR, RUN_DIR] {
        if Path::new(dir).exists() {
            match fs::remove_dir_all(dir) {
                Ok(()) => report.push(format!("removed {dir}")),
                Err(err) => report.push(format!("WARNING: removing {dir}: {err}")),
            }
        }
    }
    let logs = remove_pod_logs(&uids);
    if logs > 0 {
        report.push(format!("removed {logs} pod log dir(s) from /var/log/pods"));
    }
    report
}

/// The inode of a named netns, to recognise the processes inside it.
fn netns_inode(name: &str) -> Option<u64> {
    fs::metadata(layout::netns_path(name)).ok().map(|m| m.ino())
}

fn pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn in_netns(pid: i32, inode: u64) -> bool {
    fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == inode)
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// SIGKILLs the processes in netns `name` (only those called `only`, if
/// given) and waits for them to go. Returns how many there were.
pub(super) fn kill_in_netns(name: &str, only: Option<&str>) -> usize {
    let Some(inode) = netns_inode(name) else {
        return 0;
    };
    let me = std::process::id() as i32;
    let victims: Vec<i32> = pids()
        .into_iter()
        .filter(|&pid| pid != me && in_netns(pid, inode))
        .filter(|&pid| only.is_none_or(|c| comm(pid) == c))
        .collect();
    kill_and_wait(&victims);
    victims.len()
}

fn kill_and_wait(victims: &[i32]) {
    for &pid in victims {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let start = Instant::now();
    while victims
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(*pid))
        && start.elapsed() < Duration::from_secs(10)
    {
        thread::sleep(Duration::from_millis(50));
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Kills every process in the cgroup root's subtree (the pods'
/// containers). Returns how many there were.
fn kill_cgroups() -> usize {
    kill_cgroups_under(CGROUP_ROOT)
}

/// Kills every process in `rel`'s subtree, in every hierarchy.
pub(super) fn kill_cgroups_under(rel: &str) -> usize {
    let (v1, v2) = cgroup_mounts();
    let mut victims = Vec::new();
    for hierarchy in v2.iter().chain(v1.iter()) {
        for dir in subtree(&hierarchy.join(rel)) {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                victims.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
    }
    victims.sort_unstable();
    victims.dedup();
    kill_and_wait(&victims);
    victims.len()
}

/// `dir` and every directory below it, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(subtree(&entry.path()));
            }
        }
    }
    if dir.is_dir() {
        out.push(dir.to_owned());
    }
    out
}

fn remove_cgroups() -> usize {
    remove_cgroups_under(CGROUP_ROOT)
}

/// Removes `rel` and every cgroup below it, in every hierarchy.
pub(super) fn remove_cgroups_under(rel: &str) -> usize {
    let (v1, v2) = cgroup_mounts();
    let mut removed = 0;
    for hierarchy in v2.iter().chain(v1.iter()) {
        for dir in subtree(&hierarchy.join(rel)) {
            // A cgroup is removed with rmdir, never recursively: its files
            // are not real files. Retry briefly: a killed task can linger.
            let start = Instant::now();
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => {
                        removed += 1;
                        break;
                    }
                    Err(_) if start.elapsed() < Duration::from_secs(3) => {
                        thread::sleep(Duration::from_millis(50));
                    }
                    Err(err) => {
                        eprintln!(
                            "k8s-test: WARNING: removing cgroup {}: {err}",
                            dir.display()
                        );
                        break;
                    }
                }
            }
        }
    }
    removed
}

/// Lazily unmounts every mount point under `dirs`, innermost first.
pub(super) fn unmount_under(dirs: &[&str]) -> usize {
    let mut count = 0;
    // A mount may be stacked; go round until nothing is left (bounded).
    for _ in 0..5 {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| {
                dirs.iter()
                    .any(|d| p == d || p.starts_with(&format!("{d}/")))
            })
            .collect();
        if points.is_empty() {
            break;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            if Command::new("umount")
                .args(["-l", &point])
                .status()
                .is_ok_and(|s| s.success())
            {
                count += 1;
            }
        }
    }
    count
}

/// The uids of the pods this cluster's kubelets ran (each root dir keeps a
/// directory per pod).
fn pod_uids() -> Vec<String> {
    NODES
        .iter()
        .flat_map(|node| {
            fs::read_dir(layout::node_state(node, "kubelet/pods"))
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Removes /var/log/pods/<namespace>_<pod>_<uid> of the pods `uids`, and
/// the /var/log/containers links into them.
fn remove_pod_logs(uids: &[String]) -> usize {
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir("/var/log/pods") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if uids.iter().any(|uid| name.ends_with(&format!("_{uid}"))) {
                let _ = fs::remove_dir_all(entry.path());
                removed.push(entry.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/var/log/containers") {
        for entry in entries.flatten() {
            let target = fs::read_link(entry.path()).unwrap_or_default();
            if removed.iter().any(|dir| target.starts_with(dir)) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    removed.len()
}
