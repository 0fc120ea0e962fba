//! The Debian packages the local cluster needs, installed idempotently.

use std::{fs, path::Path};

use anyhow::Context as _;

use crate::{host, setup};

/// Building Kubernetes from Debian's source package (Go 1.19, the reflect2
/// that works under Go ≥ 1.18, `make` and `rsync` for its build scripts,
/// a static libc for the pause binary) and running it (etcd, containerd,
/// runc, the CNI plugins, umoci for images, busybox for the pods, dnsmasq
/// for kube-dns, openssl for the certificates).
pub const PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-modern-go-reflect2-dev",
    "dpkg-dev",
    "make",
    "rsync",
    "gcc",
    "libc6-dev",
    "etcd-server",
    "etcd-client",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "umoci",
    "busybox-static",
    "dnsmasq-base",
    "openssl",
    "iproute2",
    "util-linux",
    "curl",
];

/// The bookworm source index: `kubernetes` 1.20.2 is fetched from it with
/// `apt-get source`. Later Debian releases strip the bundled Go
/// dependencies and build only kubectl, so it must be bookworm.
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/egress-enforcer-src.sources";
const DEB_SRC: &str = "Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// Installs what is missing; a second run only checks. Returns what it did.
pub fn ensure() -> anyhow::Result<String> {
    let mut done = Vec::new();
    let mut update = false;
    if !Path::new(DEB_SRC_FILE).exists() {
        fs::write(DEB_SRC_FILE, DEB_SRC).with_context(|| format!("writing {DEB_SRC_FILE}"))?;
        done.push(format!("added {DEB_SRC_FILE}"));
        update = true;
    }
    let mut wanted: Vec<&str> = PACKAGES.to_vec();
    // kubectl ships on these machines' image; elsewhere Debian's own
    // (1.20, the server's version) is used.
    if !host::on_path("kubectl") {
        wanted.push("kubernetes-client");
    }
    let missing = setup::missing_packages(&wanted);
    if !missing.is_empty() {
        setup::apt_install(&wanted, &missing)?;
        done.push(format!("installed {}", missing.join(" ")));
    } else if update {
        setup::apt(&["update", "-q"])?;
    }
    Ok(if done.is_empty() {
        "present".to_owned()
    } else {
        done.join("; ")
    })
}
