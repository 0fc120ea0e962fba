//! Kubernetes server binaries, built offline from Debian bookworm's
//! `kubernetes` source package and cached by version.
//!
//! The package bundles its Go dependencies, so `apt-get source` is all the
//! network it needs. One fix is required: its vendored
//! `github.com/modern-go/reflect2` 1.0.1 crashes under Go ≥ 1.18 (it reads
//! runtime internals that moved), so Debian's 1.0.2 replaces it. The build
//! must run from a GOPATH layout through the project's own `make`: a plain
//! `go build -mod=vendor` fails on its staging repositories.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};

use super::layout::{cache_bin, cache_dir, K8S_VERSION};
use crate::{host, run};

/// What the test runs; `pause` is the sandbox image's binary. kube-proxy
/// (iptables mode) makes Service ClusterIPs work as on a real node.
pub const SERVER_BINARIES: &[&str] = &[
    "kube-apiserver",
    "kubelet",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
];

/// Disk the build needs while it runs (freed when it ends).
const BUILD_SPACE: u64 = 4_000_000_000;

const REFLECT2_FIXED: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";

/// The upstream NetworkPolicy e2e suite and its probe image's binary,
/// from the same tree as the servers (`cargo xtask netpol-e2e`).
pub const E2E_BINARIES: &[(&str, &str)] = &[
    ("test/e2e/e2e.test", "e2e.test"),
    ("test/images/agnhost", "agnhost"),
];

/// Ensures the server binaries (and `pause`) are in the cache; builds them
/// if not. Returns a description of what it found or did.
pub fn ensure() -> anyhow::Result<String> {
    let servers: Vec<(String, &str)> = SERVER_BINARIES
        .iter()
        .map(|b| (format!("cmd/{b}"), *b))
        .collect();
    ensure_set("", &servers, true)
}

/// Ensures `e2e.test` and `agnhost` are in the cache (in their own build,
/// so that a k8s-test run elsewhere never shares a build tree with it).
pub fn ensure_e2e() -> anyhow::Result<String> {
    let targets: Vec<(String, &str)> = E2E_BINARIES
        .iter()
        .map(|(what, name)| ((*what).to_owned(), *name))
        .collect();
    ensure_set("e2e", &targets, false)
}

/// Builds `targets` (make target, binary name) from one unpacked tree in
/// `build[-<set>]`, copies the binaries to the cache and stamps the set
/// (`complete[-<set>]`; the servers' names predate the other sets).
fn ensure_set(set: &str, targets: &[(String, &str)], pause: bool) -> anyhow::Result<String> {
    let suffix = if set.is_empty() {
        String::new()
    } else {
        format!("-{set}")
    };
    let stamp = version_dir().join(format!("complete{suffix}"));
    let present = targets.iter().all(|(_, b)| cache_bin(b).is_file())
        && (!pause || cache_bin("pause").is_file());
    if stamp.exists() && present {
        return Ok(format!("cached in {}", version_dir().display()));
    }
    let began = Instant::now();
    fs::create_dir_all(cache_dir())
        .with_context(|| format!("creating {}", cache_dir().display()))?;
    // The tree, Go's build cache and _output peak at about 3 GB.
    let free = host::free_bytes(&cache_dir()).unwrap_or(u64::MAX);
    if free < BUILD_SPACE {
        bail!(
            "building Kubernetes needs about 4 GB free under {}; {} MB are",
            cache_dir().display(),
            free / 1_000_000
        );
    }
    let build_dir = cache_dir().join(format!("build{suffix}"));
    let tree = unpack_source(&build_dir)?;
    fix_reflect2(&tree)?;
    let what: Vec<&str> = targets.iter().map(|(w, _)| w.as_str()).collect();
    build(&tree, &build_dir, &what.join(" "))?;
    let bin = version_dir().join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for (_, name) in targets {
        let built = tree.join("_output/local/go/bin").join(name);
        let built = if built.exists() {
            built
        } else {
            tree.join("_output/bin").join(name)
        };
        fs::copy(&built, bin.join(name))
            .with_context(|| format!("copying {} into the cache", built.display()))?;
    }
    if pause {
        build_pause(&tree, &bin.join("pause"))?;
    }
    fs::write(&stamp, format!("{K8S_VERSION}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    // The tree and its _output are ~1.5 GB; only the binaries are kept.
    fs::remove_dir_all(&build_dir).with_context(|| format!("removing {}", build_dir.display()))?;
    let names: Vec<&str> = targets.iter().map(|(_, n)| *n).collect();
    Ok(format!(
        "built {}{} in {:.0}s, cached in {}",
        names.join(", "),
        if pause { " and pause" } else { "" },
        began.elapsed().as_secs_f32(),
        version_dir().display()
    ))
}

fn version_dir() -> PathBuf {
    cache_dir().join(K8S_VERSION)
}

/// Downloads (once) and extracts the source package; returns the tree.
fn unpack_source(build: &Path) -> anyhow::Result<PathBuf> {
    let src = cache_dir().join("src");
    fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    if find_dsc(&src)?.is_none() {
        run::check(
            Command::new("apt-get")
                .args(["source", "--download-only", "kubernetes/bookworm"])
                .current_dir(&src),
        )
        .context(
            "downloading the kubernetes source package (needs the deb-src entry for bookworm)",
        )?;
    }
    let dsc = find_dsc(&src)?.context("apt-get source left no kubernetes_*.dsc")?;
    if build.exists() {
        fs::remove_dir_all(build).with_context(|| format!("removing {}", build.display()))?;
    }
    fs::create_dir_all(build).with_context(|| format!("creating {}", build.display()))?;
    let tree = build.join("gopath/src/k8s.io/kubernetes");
    fs::create_dir_all(tree.parent().context("tree has a parent")?)?;
    run::check(Command::new("dpkg-source").arg("-x").arg(&dsc).arg(&tree))?;
    Ok(tree)
}

fn find_dsc(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("kubernetes_") && name.ends_with(".dsc") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn fix_reflect2(tree: &Path) -> anyhow::Result<()> {
    let vendored = tree.join("vendor/github.com/modern-go/reflect2");
    if !Path::new(REFLECT2_FIXED).is_dir() {
        bail!("{REFLECT2_FIXED} is missing: install golang-github-modern-go-reflect2-dev");
    }
    fs::remove_dir_all(&vendored).with_context(|| format!("removing {}", vendored.display()))?;
    run::check(
        Command::new("cp")
            .arg("-rL")
            .arg(REFLECT2_FIXED)
            .arg(&vendored),
    )?;
    // A go.mod inside vendor/ makes the go tool treat it as a module.
    let go_mod = vendored.join("go.mod");
    if go_mod.exists() {
        fs::remove_file(&go_mod).with_context(|| format!("removing {}", go_mod.display()))?;
    }
    Ok(())
}

fn build(tree: &Path, build_dir: &Path, what: &str) -> anyhow::Result<()> {
    let gopath = build_dir.join("gopath");
    run::check(
        Command::new("make")
            .arg(format!("WHAT={what}"))
            .current_dir(tree)
            .env("GOPATH", &gopath)
            .env("CGO_ENABLED", "0")
            .env("KUBE_GIT_VERSION", K8S_VERSION)
            .env("GOFLAGS", "")
            .env_remove("GO111MODULE"),
    )
    .context("building Kubernetes")
}

/// The sandbox ("pause") container's binary, static so that its image is
/// one file.
fn build_pause(tree: &Path, out: &Path) -> anyhow::Result<()> {
    let source = tree.join("build/pause/linux/pause.c");
    run::check(
        Command::new("gcc")
            .args(["-Os", "-static", "-DVERSION=v1.20.2-egress", "-o"])
            .arg(out)
            .arg(&source),
    )
    .with_context(|| format!("compiling {}", source.display()))
}
