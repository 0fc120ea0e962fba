//! Container images without a registry: packed as OCI layouts with umoci
//! from files of this machine, then imported into containerd.
//!
//! - `pause`: the static pause binary built with Kubernetes.
//! - `toolbox`: busybox (static) with its applets, plus dnsmasq (kube-dns)
//!   and curl (an in-cluster API client with its service-account token),
//!   with the shared libraries they link.
//! - `egress-agent`: the agent binary and `nft` (the nftables backstop
//!   drives it), with their shared libraries: the same content as the
//!   `Containerfile`'s image, built offline.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use super::layout::{self, cache_bin, NodeSpec};
use crate::run;

/// An image to pack: files copied in (with the shared libraries of each
/// executable), symlinks, and the entrypoint.
struct Image<'a> {
    name: &'a str,
    files: Vec<(PathBuf, &'a str)>,
    links: Vec<(String, String)>,
    dirs: &'a [&'a str],
    etc: &'a [(&'a str, &'a str)],
    entrypoint: &'a [&'a str],
}

pub const PAUSE: &str = "docker.io/local/pause:latest";
pub const TOOLBOX: &str = "docker.io/local/toolbox:latest";

const PASSWD: &str = "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Packs the images (the agent's only if `agent_binary` is given) and
/// returns their tarballs.
pub fn build_all(agent_binary: Option<&Path>) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let applets = busybox_applets()?;
    let images = [
        Image {
            name: "pause",
            files: vec![(cache_bin("pause"), "/pause")],
            links: Vec::new(),
            dirs: &[],
            etc: &[],
            entrypoint: &["/pause"],
        },
        Image {
            name: "toolbox",
            files: vec![
                (PathBuf::from("/bin/busybox"), "/bin/busybox"),
                (PathBuf::from("/usr/sbin/dnsmasq"), "/usr/sbin/dnsmasq"),
                (PathBuf::from("/usr/bin/curl"), "/usr/bin/curl"),
            ],
            links: applets
                .iter()
                .filter(|a| a.as_str() != "busybox")
                .map(|a| (format!("/bin/{a}"), "busybox".to_owned()))
                .collect(),
            dirs: &["/tmp", "/var/run", "/var/lib/misc"],
            etc: &[("passwd", PASSWD), ("group", GROUP)],
            entrypoint: &["/bin/sh"],
        },
    ];
    let agent = agent_binary.map(|binary| Image {
        name: "egress-agent",
        files: vec![
            (binary.to_owned(), "/usr/local/bin/egress-agent"),
            (PathBuf::from("/usr/sbin/nft"), "/usr/sbin/nft"),
        ],
        links: Vec::new(),
        dirs: &["/tmp", "/run"],
        etc: &[("passwd", PASSWD), ("group", GROUP)],
        entrypoint: &["/usr/local/bin/egress-agent"],
    });
    images
        .iter()
        .chain(agent.as_ref())
        .map(|image| Ok((image.name.to_owned(), pack(image)?)))
        .collect()
}

/// The e2e suite's probe image: `agnhost` (static, from the same
/// Kubernetes tree) and busybox, whose `sh` and `seq` its client pods run.
pub fn agnhost() -> anyhow::Result<PathBuf> {
    let applets = busybox_applets()?;
    pack(&Image {
        name: "agnhost",
        files: vec![
            (cache_bin("agnhost"), "/agnhost"),
            (PathBuf::from("/bin/busybox"), "/bin/busybox"),
        ],
        links: applets
            .iter()
            .filter(|a| a.as_str() != "busybox")
            .map(|a| (format!("/bin/{a}"), "busybox".to_owned()))
            .collect(),
        dirs: &["/tmp"],
        etc: &[("passwd", PASSWD), ("group", GROUP)],
        entrypoint: &["/agnhost"],
    })
}

/// [`import`], then tagged as `reference` too: the exact name a workload
/// asks for, so that no registry is ever asked.
pub fn import_as(
    node: &NodeSpec,
    name: &str,
    tarball: &Path,
    reference: &str,
) -> anyhow::Result<()> {
    import(node, name, tarball)?;
    run::check(
        Command::new("ctr")
            .arg("--address")
            .arg(layout::containerd_socket(node))
            .args(["-n", "k8s.io", "images", "tag", "--force"])
            .arg(format!("docker.io/local/{name}:latest"))
            .arg(reference),
    )
}

/// `ctr images import` into `node`'s containerd, in the CRI's namespace,
/// as docker.io/local/NAME.
pub fn import(node: &NodeSpec, name: &str, tarball: &Path) -> anyhow::Result<()> {
    run::check(
        Command::new("ctr")
            .arg("--address")
            .arg(layout::containerd_socket(node))
            .args(["-n", "k8s.io", "images", "import", "--base-name"])
            .arg(format!("docker.io/local/{name}"))
            .arg(tarball),
    )
}

fn pack(image: &Image<'_>) -> anyhow::Result<PathBuf> {
    let dir = layout::state("images");
    let oci = dir.join(format!("{}-oci", image.name));
    let bundle = dir.join(format!("{}-bundle", image.name));
    let tarball = dir.join(format!("{}.tar", image.name));
    for old in [&oci, &bundle] {
        if old.exists() {
            fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tag = format!("{}:latest", oci.display());
    umoci(&["init", "--layout", &oci.display().to_string()])?;
    umoci(&["new", "--image", &tag])?;
    umoci(&["unpack", "--image", &tag, &bundle.display().to_string()])?;
    let rootfs = bundle.join("rootfs");

    let mut libs = BTreeSet::new();
    for (source, dest) in &image.files {
        copy_into(&rootfs, source, dest)?;
        libs.extend(shared_libraries(source)?);
    }
    for lib in &libs {
        let lib = lib.display().to_string();
        copy_into(&rootfs, Path::new(&lib), &lib)?;
    }
    for (link, target) in &image.links {
        let at = rootfs.join(link.trim_start_matches('/'));
        symlink(target, &at).with_context(|| format!("linking {}", at.display()))?;
    }
    for d in image.dirs {
        fs::create_dir_all(rootfs.join(d.trim_start_matches('/')))
            .with_context(|| format!("creating {d} in {}", image.name))?;
    }
    for (file, text) in image.etc {
        let etc = rootfs.join("etc");
        fs::create_dir_all(&etc).context("creating /etc")?;
        fs::write(etc.join(file), text).with_context(|| format!("writing /etc/{file}"))?;
    }
    umoci(&["repack", "--image", &tag, &bundle.display().to_string()])?;
    let mut config = vec!["config".to_owned(), "--image".to_owned(), tag.clone()];
    for arg in image.entrypoint {
        config.push(format!("--config.entrypoint={arg}"));
    }
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    umoci(&config)?;
    // umoci config makes a new manifest under the same tag; drop the old.
    umoci(&["gc", "--layout", &oci.display().to_string()])?;
    run::check(
        Command::new("tar")
            .arg("-C")
            .arg(&oci)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
    )?;
    fs::remove_dir_all(&bundle).with_context(|| format!("removing {}", bundle.display()))?;
    fs::remove_dir_all(&oci).with_context(|| format!("removing {}", oci.display()))?;
    Ok(tarball)
}

fn umoci(args: &[&str]) -> anyhow::Result<()> {
    run::check(Command::new("umoci").args(args))
}

/// Copies `source` (following symlinks) to `dest` inside `rootfs`.
fn copy_into(rootfs: &Path, source: &Path, dest: &str) -> anyhow::Result<()> {
    let at = rootfs.join(dest.trim_start_matches('/'));
    if let Some(parent) = at.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(source, &at)
        .with_context(|| format!("copying {} into the image", source.display()))?;
    Ok(())
}

/// The absolute paths `ldd` lists for `binary` (none for a static one).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    // ldd exits 1 with "not a dynamic executable" for static binaries.
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Ok(Vec::new());
    }
    if text.contains("not found") {
        bail!(
            "{} needs libraries that are missing:\n{text}",
            binary.display()
        );
    }
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => line.split(' ').next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn busybox_applets() -> anyhow::Result<Vec<String>> {
    let out = run::output("/bin/busybox", ["--list"])
        .context("`busybox --list` failed: install busybox-static")?;
    Ok(out.lines().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_paths_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f00)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f01)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }
}
