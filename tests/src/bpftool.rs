//! `bpftool`, the kernel's own account of what is loaded and attached: the
//! independent witness for what the agent claims to have removed.

use std::{path::Path, process::Command};

/// `bpftool -j <args>`: whether it succeeded, and its JSON output.
pub fn bpftool(args: &[&str]) -> (bool, String) {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool runs (cargo xtask setup installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The ids of the programs attached to `cgroup` itself.
pub fn attached_ids(cgroup: &Path) -> Vec<u32> {
    let (ok, json) = bpftool(&["cgroup", "show", &cgroup.display().to_string()]);
    assert!(ok, "bpftool cgroup show {}: {json}", cgroup.display());
    ids(&json)
}

/// Whether the kernel still has program `id` loaded.
pub fn program_exists(id: u32) -> bool {
    bpftool(&["prog", "show", "id", &id.to_string()]).0
}

/// Whether the kernel still has map `id`.
pub fn map_exists(id: u32) -> bool {
    bpftool(&["map", "show", "id", &id.to_string()]).0
}

/// The ids of the maps that program `id` uses.
pub fn program_map_ids(id: u32) -> Vec<u32> {
    let (ok, json) = bpftool(&["prog", "show", "id", &id.to_string()]);
    if !ok {
        return Vec::new();
    }
    let Some(list) = json.split("\"map_ids\":[").nth(1) else {
        return Vec::new();
    };
    let list = list.split(']').next().unwrap_or_default();
    list.split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Every `"id":N` of a bpftool JSON listing.
fn ids(json: &str) -> Vec<u32> {
    json.split("\"id\":")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_from_a_listing() {
        let json = r#"[{"id":12,"attach_type":"cgroup_inet_egress"},{"id":7,"name":"x"}]"#;
        assert_eq!(ids(json), vec![12, 7]);
        assert_eq!(ids("[]"), Vec::<u32>::new());
    }
}
