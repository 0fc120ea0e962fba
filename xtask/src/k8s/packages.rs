//! The Debian packages the local cluster needs, installed idempotently.

use std::{fs, path::Path};

use anyhow::{bail, Context as _};

use crate::{run, setup};

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

/// kubectl must be ≥ 1.21: `kubectl apply -k` with a directory base needs
/// the kustomize that 1.21 embeds (Debian bookworm's kubectl is 1.20).
/// These machines' image ships one; it is not installed here.
fn check_kubectl() -> anyhow::Result<()> {
    let minor = run::output("kubectl", ["version", "--client", "-o", "json"])
        .as_deref()
        .and_then(client_minor);
    match minor {
        Some(minor) if minor >= 21 => Ok(()),
        Some(minor) => {
            bail!("kubectl is 1.{minor}; k8s-test needs kubectl ≥ 1.21 (for `apply -k`)")
        }
        None => bail!("kubectl ≥ 1.21 is not on PATH (https://kubernetes.io/docs/tasks/tools/)"),
    }
}

/// The client's minor version from `kubectl version --client -o json`
/// (`"minor": "32+"`).
fn client_minor(json: &str) -> Option<u32> {
    let after = json.split("\"minor\"").nth(1)?;
    let value = after.split('"').nth(1)?;
    value.trim_end_matches('+').parse().ok()
}

/// Installs what is missing; a second run only checks. Returns what it did.
pub fn ensure() -> anyhow::Result<String> {
    let mut done = Vec::new();
    let mut update = false;
    if !Path::new(DEB_SRC_FILE).exists() {
        fs::write(DEB_SRC_FILE, DEB_SRC).with_context(|| format!("writing {DEB_SRC_FILE}"))?;
        done.push(format!("added {DEB_SRC_FILE}"));
        update = true;
    }
    check_kubectl()?;
    let wanted: Vec<&str> = PACKAGES.to_vec();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kubectls_minor_version() {
        let json = r#"{"clientVersion": {"major": "1", "minor": "32+", "gitVersion": "v1.32.4"}}"#;
        assert_eq!(client_minor(json), Some(32));
        assert_eq!(client_minor(r#"{"minor": "20"}"#), Some(20));
        assert_eq!(client_minor("garbage"), None);
    }
}
