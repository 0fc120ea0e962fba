//! k8s-test: a gateway's allow-list follows the DNS answers the gateway
//! itself gets (the DaemonSet runs the agent with `--follow-gateway-dns`),
//! for a name whose server hands every question a different address, as
//! CDNs do.
//!
//! `cdn.rotating.test` is served by `egress-rotating-dns` on node A's own
//! address (a resolver inside the cluster, as a VPC's is), each A question
//! answered with the next of [`POOL`] with TTL 0, so that kube-dns
//! (dnsmasq, which forwards the zone to it) caches next to nothing. The internet
//! answers HTTP on every address of the pool. A gateway of its own,
//! `istio-system/cdn-gateway`, may reach that name on [`PORT`], and
//! fetches it [`REQUESTS`] times, each resolving afresh through the
//! kube-dns Service: none may be refused.

use std::{
    fs,
    path::Path,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    layout::{self, INTERNET_NETNS, NODE_A},
    procs,
    scenario::{self, Checks, Cluster},
};
use crate::{host, run};

/// The rotating name, and the zone kube-dns forwards to its server.
pub const NAME: &str = "cdn.rotating.test";
pub const ZONE: &str = "rotating.test";
/// 203.0.113.100-127, local in the internet namespace (a /27 route).
const POOL: &str = "203.0.113.100-203.0.113.127";
const POOL_ROUTE: &str = "203.0.113.96/27";
/// The pool's web port: the seed hosts' own listeners hold port 80 on
/// their addresses, and a wildcard listener cannot share it.
const PORT: u16 = 8080;
const REQUESTS: usize = 1000;
const LOG: &str = "rotating-dns";

/// The rotating server's address: node A's, port 53.
pub fn server() -> String {
    NODE_A.ip.to_owned()
}

/// Builds and starts the rotating DNS server and the pool's web server;
/// before kube-dns, which forwards [`ZONE`] to it.
pub fn start() -> anyhow::Result<Vec<(&'static str, Child)>> {
    let binary = host::test_binary("egress-rotating-dns", false)?;
    run::check(std::process::Command::new("ip").args([
        "-n",
        INTERNET_NETNS,
        "route",
        "add",
        "local",
        POOL_ROUTE,
        "dev",
        "lo",
    ]))?;
    let www = layout::state("www/cdn");
    fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
    fs::write(www.join("index.html"), format!("{NAME}\n"))?;
    let httpd = procs::spawn(
        INTERNET_NETNS,
        "httpd-cdn",
        Path::new("/bin/busybox"),
        &strings(&[
            "httpd",
            "-f",
            "-p",
            &format!("0.0.0.0:{PORT}"),
            "-h",
            &www.display().to_string(),
        ]),
    )?;
    let dns = procs::spawn(
        NODE_A.name,
        LOG,
        &binary,
        &strings(&[&format!("{}:53", server()), NAME, POOL, "0"]),
    )?;
    Ok(vec![("httpd", httpd), ("rotating-dns", dns)])
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// The answers the rotating server has given so far, from its log.
fn answered() -> usize {
    fs::read_to_string(layout::log(LOG))
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("answered ")?.trim().parse().ok())
        .unwrap_or(0)
}

pub fn run(cluster: &Cluster<'_>, checks: &mut Checks) -> anyhow::Result<()> {
    let k = cluster.kubectl;
    let hosts = format!("\n  - host: {NAME}\n    ports: [{PORT}]");
    k.apply(&scenario::gateway_yaml(cluster, "cdn-gateway", &hosts))?;
    scenario::wait_ready(
        k,
        "istio-system",
        "pod/cdn-gateway",
        Duration::from_secs(120),
    )?;
    // `timeout`, not wget's own -T, which crashes busybox 1.35's wget
    // (SIGSEGV before it sends anything).
    let fetch = format!("timeout 8 wget -q -O /dev/null http://{NAME}:{PORT}/");
    // Until the agent has the pod and its relay.
    let began = Instant::now();
    let first = loop {
        let out = k.exec("istio-system", "cdn-gateway", &format!("{fetch} 2>&1"))?;
        if out.success || began.elapsed() > Duration::from_secs(30) {
            break out;
        }
        thread::sleep(Duration::from_millis(200));
    };
    checks.check(
        first.success,
        &format!(
            "istio-system/cdn-gateway fetches http://{NAME}:{PORT}/ (its first answer programmed; {:.1} s after Ready)",
            began.elapsed().as_secs_f32()
        ),
        format!("{}{}", first.stdout, first.stderr).trim(),
    );

    let before = answered();
    let began = Instant::now();
    let script = format!(
        "ok=0; fail=0; for i in $(seq {REQUESTS}); do \
         if out=$({fetch} 2>&1); then ok=$((ok+1)); else fail=$((fail+1)); echo \"$out\"; fi; \
         done; echo \"ok=$ok fail=$fail\""
    );
    let out = k.exec("istio-system", "cdn-gateway", &script)?;
    let took = began.elapsed();
    // The server reports its count once a second.
    thread::sleep(Duration::from_millis(1500));
    let fresh = answered().saturating_sub(before);
    let summary = out.stdout.lines().last().unwrap_or("").to_owned();
    let failures: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("ok="))
        .take(5)
        .collect();
    checks.check(
        summary == format!("ok={REQUESTS} fail=0"),
        &format!(
            "{REQUESTS} requests from cdn-gateway to the rotating {NAME}, each resolved afresh \
             through the kube-dns Service: none refused ({:.1} s, {:.1} ms each)",
            took.as_secs_f32(),
            took.as_secs_f64() * 1000.0 / REQUESTS as f64
        ),
        &format!("{summary}; {}", failures.join(" / ")),
    );
    // dnsmasq keeps even a TTL-0 answer until its clock's second turns,
    // so a few requests share one; most must not.
    checks.check(
        fresh >= REQUESTS / 2,
        &format!(
            "the server gave {fresh} answers meanwhile, each the next address of the {POOL} pool"
        ),
        &format!("{fresh} answers"),
    );
    k.run(&[
        "delete",
        "-n",
        "istio-system",
        "egressgateway/cdn-gateway",
        "pod/cdn-gateway",
        "--wait=false",
    ])?;
    Ok(())
}
