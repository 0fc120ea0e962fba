//! The cluster's credentials: a CA, the API server's serving certificate,
//! the service-account signing key, and one static admin token.
//!
//! The CA is what pods get as `ca.crt` in their service-account token
//! secret, so in-cluster clients (the agent) verify the API server as on a
//! real cluster. Everything else authenticates with the admin token: this
//! is a throwaway single-user cluster.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use super::layout::{self, API_SERVICE_IP, NODE_IP};

pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub token_file: PathBuf,
}

/// The local cluster's credentials, with a kubeconfig for its API server
/// on the node's address.
pub fn create() -> anyhow::Result<Pki> {
    create_in(
        &layout::state("pki"),
        &format!("https://{NODE_IP}:443"),
        &layout::kubeconfig(),
    )
}

/// Credentials in `dir`, and at `kubeconfig` an admin kubeconfig for the
/// API server at `server` (its certificate is valid for the node's
/// addresses and 127.0.0.1, so a loopback-only API server can use it too).
pub fn create_in(dir: &Path, server: &str, kubeconfig: &Path) -> anyhow::Result<Pki> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        token_file: dir.join("tokens.csv"),
    };
    let csr = dir.join("apiserver.csr");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=egk8s-ca",
        "-keyout",
        &path(&pki.ca_key),
        "-out",
        &path(&pki.ca_cert),
    ])?;
    let sans = format!(
        "subjectAltName=IP:{NODE_IP},IP:{API_SERVICE_IP},IP:127.0.0.1,DNS:kubernetes,\
         DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    );
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=kube-apiserver",
        "-addext",
        &sans,
        "-keyout",
        &path(&pki.serving_key),
        "-out",
        &path(&csr),
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-copy_extensions",
        "copyall",
        "-in",
        &path(&csr),
        "-CA",
        &path(&pki.ca_cert),
        "-CAkey",
        &path(&pki.ca_key),
        "-CAcreateserial",
        "-out",
        &path(&pki.serving_cert),
    ])?;
    openssl(&["genrsa", "-out", &path(&pki.sa_key), "2048"])?;
    openssl(&[
        "rsa",
        "-in",
        &path(&pki.sa_key),
        "-pubout",
        "-out",
        &path(&pki.sa_pub),
    ])?;

    let token = random_token()?;
    fs::write(
        &pki.token_file,
        format!("{token},admin,admin,\"system:masters\"\n"),
    )
    .context("writing the token file")?;
    let config = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: egk8s
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: egk8s
  context:
    cluster: egk8s
    user: admin
current-context: egk8s
",
        ca = pki.ca_cert.display()
    );
    fs::write(kubeconfig, config).context("writing the kubeconfig")?;
    Ok(pki)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Runs openssl quietly (key generation draws progress dots on stderr),
/// showing its output only if it fails.
fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
