//! Builds the eBPF programs and leaves the object in `OUT_DIR/egress-ebpf`,
//! where `dataplane::object` embeds it.
//!
//! The programs target `bpfel-unknown-none`, which needs `core` built from
//! source by a compiler whose library sources match it exactly. The stable
//! toolchain that builds this crate has no such sources, so the nested build
//! runs under the `debian-rustc-web` toolchain (Debian's rustc with its
//! `rust-web-src`; see docs/toolchain.md), linked into rustup by
//! `cargo xtask setup`.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// The rustup toolchain name that `cargo xtask setup` links to `/usr`.
const EBPF_TOOLCHAIN: &str = "debian-rustc-web";

fn main() -> anyhow::Result<()> {
    let metadata_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&metadata_dir)
        .parent()
        .ok_or_else(|| anyhow!("{metadata_dir} has no parent"))?
        .join("egress-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;

    // `-Z build-std=core` is unstable. aya-build passes it only when it sees
    // RUSTC_BOOTSTRAP=1, and the nested cargo inherits this process's
    // environment. Setting it here, in the build script's own process, keeps
    // it out of the outer (stable) build.
    env::set_var("RUSTC_BOOTSTRAP", "1");
    // aya-build relays every line the nested cargo prints as a build-script
    // warning; progress lines would drown real warnings. Errors still show.
    env::set_var("CARGO_TERM_QUIET", "true");

    share_ebpf_target_dir()?;

    aya_build::build_ebpf(
        [Package {
            name: "egress-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF programs (is the toolchain installed? run `cargo xtask setup`)")
}

/// Points aya-build's per-`OUT_DIR` target directory at one directory shared
/// by every build of this crate.
///
/// cargo gives this build script a new `OUT_DIR` whenever the features or
/// dependencies of `egress-agent` differ between invocations (`cargo
/// clippy`, `cargo test --workspace`, `cargo test -p integration-tests` each
/// get one), and aya-build builds into `OUT_DIR/aya-build/target/<crate>`,
/// so each would rebuild `core` and the programs from scratch (~45 s).
/// Sharing the directory makes all but the first a no-op; the nested cargo's
/// own lock serialises concurrent builds. If `OUT_DIR` is not laid out as
/// `<profile>/build/<pkg>/out`, nothing is shared.
fn share_ebpf_target_dir() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let Some(profile_dir) = out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
    else {
        return Ok(());
    };
    let shared = profile_dir.join("egress-ebpf-target");
    let link_parent = out_dir.join("aya-build").join("target");
    let link = link_parent.join("egress-ebpf");
    if link.symlink_metadata().is_ok() {
        return Ok(());
    }
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    fs::create_dir_all(&link_parent)
        .with_context(|| format!("creating {}", link_parent.display()))?;
    std::os::unix::fs::symlink(&shared, &link)
        .with_context(|| format!("linking {} to {}", link.display(), shared.display()))
}
