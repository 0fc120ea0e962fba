//! Parser for `/proc/<pid>/mountinfo` (proc(5)).
//!
//! `/proc/self/mountinfo` is used rather than `/proc/mounts` because it
//! tells which part of a filesystem is mounted (the `root` field): a cgroup2
//! mount inside a cgroup namespace or a bind mount of a sub-directory is not
//! the hierarchy's root.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::SysError;

/// Where the running process's mount table is read from.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo: the fields the agent needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The directory of the filesystem that is mounted (field 4).
    pub root: PathBuf,
    /// Where it is mounted (field 5).
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `cgroup2`, `bpf` (first field after ` - `).
    pub fs_type: String,
    /// Source, e.g. `cgroup2`, `none`, `/dev/sda1`.
    pub source: String,
}

/// Reads and parses the calling process's mount table.
pub fn read_self() -> Result<Vec<Mount>, SysError> {
    read(Path::new(SELF_MOUNTINFO))
}

/// Reads and parses a mountinfo file.
pub fn read(path: &Path) -> Result<Vec<Mount>, SysError> {
    let text = fs::read_to_string(path).map_err(|source| SysError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|(line, reason)| SysError::MalformedMountinfo {
        path: path.to_owned(),
        line,
        reason,
    })
}

/// Parses mountinfo text. On error, returns the 1-based line number and the
/// reason.
pub fn parse(text: &str) -> Result<Vec<Mount>, (usize, &'static str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| parse_line(line).map_err(|reason| (i + 1, reason)))
        .collect()
}

fn parse_line(line: &str) -> Result<Mount, &'static str> {
    // `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`
    // The number of optional fields before ` - ` varies, so split there.
    let (before, after) = line
        .split_once(" - ")
        .ok_or("no ' - ' separator before the filesystem type")?;
    let mut before = before.split(' ');
    let (Some(_id), Some(_parent), Some(_dev), Some(root), Some(mount_point)) = (
        before.next(),
        before.next(),
        before.next(),
        before.next(),
        before.next(),
    ) else {
        return Err("fewer than 5 fields before the separator");
    };
    let mut after = after.split(' ');
    let (Some(fs_type), Some(source)) = (after.next(), after.next()) else {
        return Err("missing filesystem type or source after the separator");
    };
    Ok(Mount {
        root: PathBuf::from(unescape(root)),
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type: unescape(fs_type),
        source: unescape(source),
    })
}

/// Undoes the kernel's octal escapes (`\040` for space, `\011` tab, `\012`
/// newline, `\134` backslash). Anything else is kept as written.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount of type `fs_type` that a path lookup would reach: the last one
/// at its mount point (a later mount on the same directory hides the earlier
/// one), preferring mounts of the filesystem's root over bind mounts of a
/// sub-directory.
pub fn find(mounts: &[Mount], fs_type: &str) -> Option<Mount> {
    let visible = |(i, m): &(usize, &Mount)| {
        !mounts[i + 1..]
            .iter()
            .any(|later| later.mount_point == m.mount_point)
    };
    let candidates: Vec<&Mount> = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.fs_type == fs_type)
        .filter(visible)
        .map(|(_, m)| m)
        .collect();
    candidates
        .iter()
        .find(|m| m.root == Path::new("/"))
        .or_else(|| candidates.first())
        .map(|m| (*m).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian/systemd hybrid layout: v1 controllers, cgroup2 under
    /// `unified` (abridged from a real host).
    const HYBRID: &str = "\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
36 31 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
";

    /// Unified layout (systemd >= 247 default), with bpffs mounted.
    const UNIFIED: &str = "\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 22 0:25 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:5 - bpf bpf rw,mode=700
";

    /// A container whose cgroup namespace root is a sub-cgroup, plus a
    /// bind mount of that sub-directory elsewhere.
    const CONTAINER: &str = "\
600 500 0:24 /kubepods/pod1 /mnt/cg rw,relatime - cgroup2 cgroup2 rw
601 500 0:24 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_cgroup2_in_the_hybrid_layout() {
        let mounts = parse(HYBRID).expect("parses");
        let cgroup2 = find(&mounts, "cgroup2").expect("found");
        assert_eq!(cgroup2.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert!(find(&mounts, "bpf").is_none());
    }

    #[test]
    fn finds_cgroup2_and_bpffs_in_the_unified_layout() {
        let mounts = parse(UNIFIED).expect("parses");
        let cgroup2 = find(&mounts, "cgroup2").expect("found");
        assert_eq!(cgroup2.mount_point, Path::new("/sys/fs/cgroup"));
        assert_eq!(cgroup2.root, Path::new("/"));
        let bpf = find(&mounts, "bpf").expect("found");
        assert_eq!(bpf.mount_point, Path::new("/sys/fs/bpf"));
    }

    #[test]
    fn prefers_the_hierarchy_root_over_a_bind_of_a_sub_cgroup() {
        let mounts = parse(CONTAINER).expect("parses");
        let cgroup2 = find(&mounts, "cgroup2").expect("found");
        assert_eq!(cgroup2.mount_point, Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn a_later_mount_on_the_same_directory_hides_cgroup2() {
        let text = "\
26 22 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
40 26 0:40 / /sys/fs/cgroup rw - tmpfs tmpfs rw
";
        let mounts = parse(text).expect("parses");
        assert!(find(&mounts, "cgroup2").is_none());
    }

    #[test]
    fn optional_fields_of_any_number_are_skipped() {
        let text = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:2 propagate_from:3 - ext3 /dev/root rw\n\
                    37 35 98:0 / /mnt3 rw - ext4 /dev/sdb rw\n";
        let mounts = parse(text).expect("parses");
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].root, Path::new("/mnt1"));
        assert_eq!(mounts[0].mount_point, Path::new("/mnt2"));
        assert_eq!(mounts[0].fs_type, "ext3");
        assert_eq!(mounts[0].source, "/dev/root");
        assert_eq!(mounts[1].fs_type, "ext4");
    }

    #[test]
    fn octal_escapes_in_paths_are_decoded() {
        let text = "40 22 0:40 / /mnt/my\\040cgroup\\134x rw - cgroup2 none rw\n";
        let mounts = parse(text).expect("parses");
        assert_eq!(mounts[0].mount_point, Path::new("/mnt/my cgroup\\x"));
    }

    #[test]
    fn a_line_without_separator_is_an_error_with_its_line_number() {
        let text = "26 22 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\ngarbage\n";
        let (line, reason) = parse(text).expect_err("rejected");
        assert_eq!(line, 2);
        assert!(reason.contains("separator"), "{reason}");
    }

    #[test]
    fn a_line_with_too_few_fields_is_an_error() {
        let (line, _) = parse("26 22 / - cgroup2 cgroup2 rw\n").expect_err("rejected");
        assert_eq!(line, 1);
    }

    #[test]
    fn the_real_mount_table_parses() {
        // Whatever this machine looks like, its own table must parse.
        let mounts = read_self().expect("parses");
        assert!(!mounts.is_empty());
    }
}
