//! The seed docs' mesh on a [`SimNode`]: `egress-agent proxy` as the
//! sidecar of every captured workload (in its proxy Workload's cgroup, in
//! the app's pod) and as the egress gateway (in the gateway Workload's
//! cgroup and pod), each with a JSON access log and an admin endpoint.
//!
//! Which proxies run is read from the node's plan, as a mesh would read
//! its config: a Workload that is some Redirect's proxy gets a sidecar on
//! that Redirect's proxy address; a Workload an EgressGateway claims gets a
//! gateway on ports 80 and 443 with that EgressGateway's `allowedHosts`.
//! Sidecars send everything through the first gateway (PROXY v2 header).

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use egress_policy::model::ObjectId;
use serde::Deserialize;

use crate::{nftns::in_netns, node::SimNode};

/// Where every proxy serves its admin endpoint, inside its pod.
pub const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
/// The gateway's listeners (Istio's per-port gateway servers).
pub const GATEWAY_PORTS: [u16; 2] = [80, 443];

/// One line of a proxy's JSON access log.
#[derive(Clone, Debug, Deserialize)]
pub struct AccessLine {
    pub mode: String,
    pub downstream: Option<String>,
    pub original_dst: Option<String>,
    pub protocol: Option<String>,
    pub authority: Option<String>,
    pub upstream: Option<String>,
    pub cluster: Option<String>,
    pub verdict: String,
    pub reason: Option<String>,
}

/// A running proxy; killed on drop.
pub struct Proxy {
    pub workload: ObjectId,
    pub mode: &'static str,
    pub listen: Vec<SocketAddr>,
    child: Child,
    access_log: PathBuf,
    stderr: PathBuf,
}

impl Proxy {
    /// Every access-log line so far.
    pub fn access_log(&self) -> Vec<AccessLine> {
        fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until the access log has `n` lines (a line is written when a
    /// connection ends, just after the client sees its end).
    pub fn wait_for_lines(&self, n: usize, within: Duration) -> Vec<AccessLine> {
        let deadline = Instant::now() + within;
        loop {
            let lines = self.access_log();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the proxy wrote to stderr (its own log).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sidecars and gateways of a node.
pub struct Mesh {
    pub sidecars: Vec<Proxy>,
    pub gateways: Vec<Proxy>,
    /// The `egress-agent` binary the proxies run.
    exe: PathBuf,
}

impl Mesh {
    /// Starts every proxy the node's plan calls for, as `exe proxy …`
    /// (the `egress-agent` binary), and waits until each accepts.
    pub fn start(sim: &SimNode, exe: &Path) -> anyhow::Result<Self> {
        let plan = sim.plan();
        let mut gateways = Vec::new();
        for w in plan.workloads.iter().filter(|w| w.gateway.is_some()) {
            let Some(pod) = sim.pod_of(&w.id).filter(|p| !p.addresses.is_empty()) else {
                continue;
            };
            let policy = w.gateway.as_ref().map(|g| g.gateway.to_string());
            let mut args: Vec<String> = vec!["--mode".into(), "gateway".into()];
            for port in GATEWAY_PORTS {
                args.extend(["--listen".into(), format!("0.0.0.0:{port}")]);
            }
            args.extend([
                "--policies".into(),
                sim.policies_dir().display().to_string(),
            ]);
            args.extend(["--gateway".into(), policy.unwrap_or_default()]);
            // The sidecars send PROXY headers from pod addresses; nothing
            // else may.
            for cidr in &plan.node.cluster_cidrs {
                args.extend(["--proxy-protocol-from".into(), cidr.to_string()]);
            }
            let listen = GATEWAY_PORTS
                .iter()
                .map(|p| SocketAddr::new(pod.addresses[0], *p))
                .collect();
            gateways.push(spawn(sim, exe, &w.id, "gateway", args, listen)?);
        }
        let via = gateways
            .first()
            .and_then(|g| g.listen.last().copied())
            .map(|a| a.to_string());
        let mut sidecars = Vec::new();
        for w in plan.workloads.iter().filter(|w| !w.proxy_for.is_empty()) {
            // The proxy address of a Redirect it serves, as its captured
            // workloads' plans carry it.
            let Some(proxy) = plan
                .workloads
                .iter()
                .filter_map(|app| app.capture.as_ref())
                .find(|c| w.proxy_for.contains(&c.redirect))
                .map(|c| c.proxy)
            else {
                continue;
            };
            sidecars.push(sidecar(sim, exe, &w.id, proxy, via.as_deref())?);
        }
        let mesh = Self {
            sidecars,
            gateways,
            exe: exe.to_owned(),
        };
        for proxy in mesh.sidecars.iter().chain(&mesh.gateways) {
            wait_listening(sim, proxy)?;
        }
        Ok(mesh)
    }

    /// Starts the sidecar of `workload` (a proxy Workload added after the
    /// mesh started, as an injection would), listening on `listen`.
    pub fn inject(
        &mut self,
        sim: &SimNode,
        workload: &ObjectId,
        listen: SocketAddr,
    ) -> anyhow::Result<&Proxy> {
        let via = self
            .gateways
            .first()
            .and_then(|g| g.listen.last())
            .map(|a| a.to_string());
        let proxy = sidecar(sim, &self.exe, workload, listen, via.as_deref())?;
        wait_listening(sim, &proxy)?;
        self.sidecars.push(proxy);
        Ok(self.sidecars.last().expect("just pushed"))
    }

    /// The sidecar running as `workload`'s proxy.
    pub fn sidecar(&self, workload: &ObjectId) -> Option<&Proxy> {
        self.sidecars.iter().find(|p| &p.workload == workload)
    }

    pub fn gateway(&self) -> Option<&Proxy> {
        self.gateways.first()
    }

    /// `GET /stats` of the proxy, from inside its pod.
    pub fn stats(&self, sim: &SimNode, proxy: &Proxy) -> anyhow::Result<String> {
        let pod = sim.pod_of(&proxy.workload).context("the proxy's pod")?;
        in_netns(&pod.netns, || http_get(ADMIN, "/stats"))?
    }
}

/// A sidecar on `proxy`, and on `[::1]` at the same port when `proxy` is
/// IPv4 loopback: the kernel sends IPv6 connects to the IPv6 loopback.
fn sidecar(
    sim: &SimNode,
    exe: &Path,
    workload: &ObjectId,
    proxy: SocketAddr,
    via: Option<&str>,
) -> anyhow::Result<Proxy> {
    let mut listen = vec![proxy];
    if proxy.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        listen.push(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            proxy.port(),
        ));
    }
    let mut args: Vec<String> = vec!["--mode".into(), "sidecar".into()];
    for addr in &listen {
        args.extend(["--listen".into(), addr.to_string()]);
    }
    if let Some(via) = via {
        args.extend(["--via-gateway".into(), via.to_owned()]);
    }
    spawn(sim, exe, workload, "sidecar", args, listen)
}

/// `egress-agent proxy <args>` in `workload`'s cgroup and pod, with the
/// pod's resolv.conf (the gateway resolves names through kube-dns).
fn spawn(
    sim: &SimNode,
    exe: &Path,
    workload: &ObjectId,
    mode: &'static str,
    mut args: Vec<String>,
    listen: Vec<SocketAddr>,
) -> anyhow::Result<Proxy> {
    let base = sim
        .scratch_dir()
        .join(format!("{mode}-{}-{}", workload.namespace, workload.name));
    let access_log = base.with_extension("access.log");
    let stderr = base.with_extension("log");
    args.extend(["--admin".into(), ADMIN.to_string()]);
    args.extend(["--access-log".into(), access_log.display().to_string()]);
    args.extend(["--access-log-format".into(), "json".into()]);
    let log =
        fs::File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
    let child = sim
        .pod_command(workload, &exe.display().to_string())?
        .arg("proxy")
        .args(&args)
        .env("EGRESS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting the {mode} proxy of {workload}"))?;
    Ok(Proxy {
        workload: workload.clone(),
        mode,
        listen,
        child,
        access_log,
        stderr,
    })
}

/// Waits until the proxy's admin endpoint answers inside its pod.
fn wait_listening(sim: &SimNode, proxy: &Proxy) -> anyhow::Result<()> {
    let pod = sim.pod_of(&proxy.workload).context("the proxy's pod")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if in_netns(&pod.netns, || http_get(ADMIN, "/ready"))?.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the {} proxy of {} does not answer:\n{}",
                proxy.mode,
                proxy.workload,
                proxy.log()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal `GET`, for the admin endpoint (an HTTP/1.0 exchange that the
/// server closes).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP response from {addr}{path}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{addr}{path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// The value of an Envoy-style counter line `name: N` in `/stats` output.
pub fn counter(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(": ")?
            .trim()
            .parse()
            .ok()
    })
}
