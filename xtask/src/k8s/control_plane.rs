//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler, in
//! the node's network namespace (so their loopback ports are private to
//! it and cannot clash with anything on the host).

use std::{fs, path::Path, process::Child, process::Command, time::Duration};

use anyhow::Context as _;

use super::{
    layout::{self, cache_bin, NODE_IP, NODE_NETNS, SERVICE_CIDR},
    pki::Pki,
    procs,
};

/// Debian's etcd-server.
pub const ETCD: &str = "/usr/bin/etcd";

pub struct ControlPlane {
    pub children: Vec<(&'static str, Child)>,
    pub api_ready_after: Duration,
}

pub fn start(pki: &Pki) -> anyhow::Result<ControlPlane> {
    let mut children = Vec::new();
    let etcd_dir = layout::state("etcd");
    fs::create_dir_all(&etcd_dir).context("creating etcd's data dir")?;
    let etcd = procs::spawn(
        NODE_NETNS,
        "etcd",
        Path::new(ETCD),
        &etcd_args(&etcd_dir, 2379, 2380),
    )?;
    children.push(("etcd", etcd));

    let apiserver = procs::spawn(
        NODE_NETNS,
        "kube-apiserver",
        &cache_bin("kube-apiserver"),
        &apiserver_args(pki, "http://127.0.0.1:2379", "0.0.0.0", 443, NODE_IP),
    )?;
    children.push(("kube-apiserver", apiserver));
    let api_ready_after = {
        let (name, child) = children.last_mut().context("apiserver was pushed")?;
        procs::wait_until(
            "the API server's /readyz",
            Duration::from_secs(90),
            Some((name, child)),
            api_ready,
        )?
    };

    let kubeconfig = format!("--kubeconfig={}", layout::kubeconfig().display());
    let cm = procs::spawn(
        NODE_NETNS,
        "kube-controller-manager",
        &cache_bin("kube-controller-manager"),
        &strings(&[
            &kubeconfig,
            "--leader-elect=false",
            "--port=0",
            "--bind-address=127.0.0.1",
            // Issues each ServiceAccount its token secret, with this CA.
            &format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ),
            &format!("--root-ca-file={}", pki.ca_cert.display()),
            "--use-service-account-credentials=false",
            "--allocate-node-cidrs=false",
            "--v=1",
        ]),
    )?;
    children.push(("kube-controller-manager", cm));
    let scheduler = procs::spawn(
        NODE_NETNS,
        "kube-scheduler",
        &cache_bin("kube-scheduler"),
        &strings(&[
            &kubeconfig,
            "--leader-elect=false",
            "--port=0",
            "--bind-address=127.0.0.1",
            "--v=1",
        ]),
    )?;
    children.push(("kube-scheduler", scheduler));
    Ok(ControlPlane {
        children,
        api_ready_after,
    })
}

/// A single-member etcd on loopback, keeping its data in `data_dir`.
pub fn etcd_args(data_dir: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    strings(&[
        "--name=egk8s",
        &format!("--data-dir={}", data_dir.display()),
        &format!("--listen-client-urls={client}"),
        &format!("--advertise-client-urls={client}"),
        &format!("--listen-peer-urls={peer}"),
        &format!("--initial-advertise-peer-urls={peer}"),
        &format!("--initial-cluster=egk8s={peer}"),
        // A throwaway cluster: durability only costs time.
        "--unsafe-no-fsync",
    ])
}

/// kube-apiserver on `bind:port` (TLS only), storing in the etcd at
/// `etcd_url`, authenticating with `pki`'s admin token and authorizing
/// with RBAC.
pub fn apiserver_args(
    pki: &Pki,
    etcd_url: &str,
    bind: &str,
    port: u16,
    advertise: &str,
) -> Vec<String> {
    strings(&[
        &format!("--etcd-servers={etcd_url}"),
        &format!("--bind-address={bind}"),
        &format!("--secure-port={port}"),
        "--insecure-port=0",
        &format!("--advertise-address={advertise}"),
        &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        &format!("--tls-cert-file={}", pki.serving_cert.display()),
        &format!("--tls-private-key-file={}", pki.serving_key.display()),
        &format!("--client-ca-file={}", pki.ca_cert.display()),
        &format!("--token-auth-file={}", pki.token_file.display()),
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        &format!(
            "--service-account-signing-key-file={}",
            pki.sa_key.display()
        ),
        &format!("--service-account-key-file={}", pki.sa_pub.display()),
        "--allow-privileged=true",
        "--kubelet-preferred-address-types=InternalIP",
        "--profiling=false",
        "--v=1",
    ])
}

/// Whether the API server answers `/readyz` with ok (the admin token
/// authenticates the probe).
fn api_ready() -> bool {
    let kubeconfig = layout::kubeconfig();
    Command::new("nsenter")
        .arg(format!(
            "--net={}",
            layout::netns_path(NODE_NETNS).display()
        ))
        .arg("kubectl")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(["get", "--raw=/readyz", "--request-timeout=2s"])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ok"))
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}
