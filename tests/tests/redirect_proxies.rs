//! Unmodified proxies behind the redirect: Debian's Squid in intercept mode
//! and redsocks, each as the sidecar of the seed's `default/sleep` pod
//! (its `istio-proxy` workload, listening on 127.0.0.1:15001), reading the
//! original destination with `getsockopt(SO_ORIGINAL_DST)` as they do
//! behind iptables' REDIRECT.
//!
//! The upstream is an HTTP server (Python's) in the gateway pod, inside the
//! cluster. The app connects and closes 10k times before the proxy can
//! accept: behind iptables the conntrack entry outlives the client, and
//! the proxy must keep serving afterwards here too (Squid stops accepting
//! on its intercept port after one failed lookup).

use std::{
    fs,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use egress_agent::dataplane::{Dataplane, FlowEvent};
use egress_policy::model::ObjectId;
use integration_tests::{
    require_root,
    scenario::{id, Running},
};

const UPSTREAM_PORT: u16 = 8080;
const EARLY_CLOSES: usize = 10_000;
/// Small enough that redsocks (2,500 connections at most, each relayed
/// through Squid before it sees the client gone) never reaches its limit
/// between two fetches, even on a loaded machine.
const REDSOCKS_BATCH: usize = 200;

fn app() -> ObjectId {
    id("default/sleep")
}

fn sidecar() -> ObjectId {
    id("default/sleep-istio-proxy")
}

fn gateway() -> ObjectId {
    id("istio-system/istio-egressgateway")
}

/// A child process killed (with its process group) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd`, its output in `log`.
fn spawn(mut cmd: Command, what: &str, log: &Path) -> anyhow::Result<Daemon> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    Ok(Daemon(child))
}

fn upstream(node: &Running) -> anyhow::Result<(Daemon, SocketAddr)> {
    let pod = node.sim.pod_of(&gateway()).context("gateway pod")?;
    let addr = SocketAddr::new(pod.addresses[0], UPSTREAM_PORT);
    let dir = node.sim.scratch_dir().join("upstream");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("index.html"), "upstream says hello\n")?;
    let mut cmd = node.sim.workload_command(&gateway(), "python3")?;
    cmd.args(["-m", "http.server", &UPSTREAM_PORT.to_string(), "--bind"])
        .arg(addr.ip().to_string())
        .arg("--directory")
        .arg(&dir);
    Ok((
        spawn(cmd, "python3 -m http.server", &dir.join("log"))?,
        addr,
    ))
}

/// Squid 5 in the sidecar with a forward-proxy port (which Squid insists
/// on, and redsocks uses) and, when `intercept`, the port the redirect
/// sends to.
fn squid(node: &Running, dir: &Path, intercept: bool) -> anyhow::Result<Daemon> {
    fs::create_dir_all(dir)?;
    // Squid drops root for the `proxy` user: its files must be writable.
    Command::new("chown").arg("proxy:proxy").arg(dir).status()?;
    let conf = dir.join("squid.conf");
    let intercept_port = if intercept {
        "http_port 127.0.0.1:15001 intercept\n"
    } else {
        ""
    };
    fs::write(
        &conf,
        format!(
            "{intercept_port}http_port 127.0.0.1:3128\n\
             http_access allow all\n\
             cache deny all\n\
             pid_filename {dir}/squid.pid\n\
             access_log stdio:{dir}/access.log\n\
             cache_log {dir}/cache.log\n\
             coredump_dir {dir}\n\
             shutdown_lifetime 0 seconds\n",
            dir = dir.display()
        ),
    )?;
    let mut cmd = node.sim.workload_command(&sidecar(), "squid")?;
    cmd.arg("-N").arg("-f").arg(&conf);
    spawn(cmd, "squid", &dir.join("stderr"))
}

/// `curl` from the app through the redirect; `Ok(body)` on HTTP 200.
fn fetch(node: &Running, url: &str) -> anyhow::Result<Result<String, String>> {
    let out = node
        .sim
        .workload_command(&app(), "curl")?
        .args(["--silent", "--show-error", "--max-time", "5"])
        .args(["--write-out", "\n%{http_code}", url])
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Ok(if code.trim() == "200" {
        Ok(body.to_owned())
    } else {
        Err(format!(
            "HTTP {code}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })
}

/// Waits until the app gets the upstream's page through the proxy.
fn wait_served(node: &Running, url: &str, within: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + within;
    loop {
        match fetch(node, url)? {
            Ok(body) => return Ok(body),
            Err(e) if Instant::now() > deadline => bail!("never served {url}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `count` connects from the app to `to`, each closed at once, before the
/// proxy has a chance to accept most of them.
fn early_closes(node: &Running, to: SocketAddr, count: usize) -> anyhow::Result<()> {
    let script = format!(
        "import socket\n\
         ok = 0\n\
         for _ in range({count}):\n\
         \x20   s = socket.create_connection(('{ip}', {port}), timeout=5)\n\
         \x20   s.close()\n\
         \x20   ok += 1\n\
         print(ok)\n",
        ip = to.ip(),
        port = to.port()
    );
    let out = node
        .sim
        .workload_command(&app(), "python3")?
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && printed.trim() == count.to_string(),
        "early closes: {} {printed} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The kernel's own count: every `SO_ORIGINAL_DST` the proxy asked was
/// answered, and every redirected connection was recorded.
fn ensure_every_lookup_answered(node: &Running) -> anyhow::Result<()> {
    let counters = Dataplane::open(node.sim.pin_dir(), node.sim.cgroup_root())?.counters()?;
    let (established, failed, answered, unknown) = (
        counters.flow(FlowEvent::RedirectEstablished),
        counters.flow(FlowEvent::RedirectRecordFailed),
        counters.flow(FlowEvent::OriginalDstAnswered),
        counters.flow(FlowEvent::OriginalDstUnknown),
    );
    println!("redirected {established}, not recorded {failed}, lookups answered {answered}, unknown {unknown}");
    ensure!(
        established > EARLY_CLOSES as u64,
        "{established} redirected"
    );
    ensure!(
        failed == 0 && unknown == 0,
        "{failed} not recorded, {unknown} lookups unanswered"
    );
    Ok(())
}

#[test]
fn squid_in_intercept_mode_keeps_serving_after_10k_early_closes() -> anyhow::Result<()> {
    require_root();
    let node = Running::seed(&[])?;
    let (_upstream, to) = upstream(&node)?;
    let dir = node.sim.scratch_dir().join("squid");
    let _squid = squid(&node, &dir, true)?;
    let url = format!("http://{to}/");
    let body = wait_served(&node, &url, Duration::from_secs(20))?;
    ensure!(body.contains("upstream says hello"), "{body}");

    early_closes(&node, to, EARLY_CLOSES)?;
    // Squid still answers on its intercept port, with the right upstream.
    let body = wait_served(&node, &url, Duration::from_secs(10))?;
    ensure!(body.contains("upstream says hello"), "{body}");
    let log = fs::read_to_string(dir.join("cache.log")).unwrap_or_default();
    ensure!(
        !log.contains("NF getsockopt(ORIGINAL_DST) failed"),
        "Squid failed a lookup:\n{log}"
    );
    let accesses = fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    ensure!(
        accesses.lines().any(|l| l.contains(&url)),
        "Squid served {url}:\n{accesses}"
    );
    ensure_every_lookup_answered(&node)
}

#[test]
fn redsocks_keeps_serving_after_10k_early_closes() -> anyhow::Result<()> {
    require_root();
    let node = Running::seed(&[])?;
    let (_upstream, to) = upstream(&node)?;
    // redsocks relays each intercepted connection as an HTTP CONNECT
    // through Squid's forward port (its own port 15001 is the redirect's).
    let dir = node.sim.scratch_dir().join("redsocks");
    let _squid = squid(&node, &node.sim.scratch_dir().join("squid-forward"), false)?;
    fs::create_dir_all(&dir)?;
    let conf = dir.join("redsocks.conf");
    fs::write(
        &conf,
        "base { log_debug = off; log_info = on; log = stderr; daemon = off; redirector = iptables; }\n\
         redsocks { local_ip = 127.0.0.1; local_port = 15001; ip = 127.0.0.1; port = 3128; type = http-connect; }\n",
    )?;
    let mut cmd = node.sim.workload_command(&sidecar(), "redsocks")?;
    cmd.arg("-c").arg(&conf);
    let _redsocks = spawn(cmd, "redsocks", &dir.join("log"))?;

    let url = format!("http://{to}/");
    let body = wait_served(&node, &url, Duration::from_secs(20))?;
    ensure!(body.contains("upstream says hello"), "{body}");
    let log = || fs::read_to_string(dir.join("log")).unwrap_or_default();
    // redsocks relays every accepted connection through Squid before it
    // sees the client gone, so it drains slowly (as behind iptables): the
    // early closes come in batches, each followed by a fetch that must
    // get through.
    for _ in 0..EARLY_CLOSES / REDSOCKS_BATCH {
        early_closes(&node, to, REDSOCKS_BATCH).with_context(|| format!("redsocks:\n{}", log()))?;
        let body = wait_served(&node, &url, Duration::from_secs(120))
            .with_context(|| format!("redsocks:\n{}", log()))?;
        ensure!(body.contains("upstream says hello"), "{body}");
    }
    ensure_every_lookup_answered(&node)?;
    let failed = log().lines().filter(|l| l.contains("getsockopt")).count();
    ensure!(failed == 0, "redsocks failed {failed} lookups:\n{}", log());
    Ok(())
}

/// Two captured pods, each with its own sidecar on 127.0.0.1:15001.
const TWO_PODS: &str = r#"
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: a, namespace: default, labels: {app: a}}
spec: {cgroup: egress-demo/default/a/app, addresses: ["10.244.1.21"], sidecar: true}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: a-istio-proxy, namespace: default, labels: {app: a, egress.enforcer.dev/container: istio-proxy}}
spec: {cgroup: egress-demo/default/a/istio-proxy}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: b, namespace: default, labels: {app: b}}
spec: {cgroup: egress-demo/default/b/app, addresses: ["10.244.1.22"], sidecar: true}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: b-istio-proxy, namespace: default, labels: {app: b, egress.enforcer.dev/container: istio-proxy}}
spec: {cgroup: egress-demo/default/b/istio-proxy}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Redirect
metadata: {name: sidecars, namespace: default}
spec:
  podSelector: {}
  proxy:
    address: 127.0.0.1
    port: 15001
    selector: {podSelector: {matchLabels: {egress.enforcer.dev/container: istio-proxy}}}
"#;

/// A sidecar that accepts only after a pause (by then its app has
/// connected and given up), then asks `SO_ORIGINAL_DST` as Envoy does and
/// prints the answer.
const LATE_PROXY: &str = "\
import socket, struct, time
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('127.0.0.1', 15001))
l.listen(16)
print('LISTENING', flush=True)
time.sleep(3)
c, peer = l.accept()
try:
    raw = c.getsockopt(socket.SOL_IP, 80, 16)
    port, = struct.unpack('!H', raw[2:4])
    print('ORIGINAL', peer[1], socket.inet_ntoa(raw[4:8]) + ':' + str(port), flush=True)
except OSError as e:
    print('ORIGINAL', peer[1], 'errno', e.errno, flush=True)
";

#[test]
fn two_pods_on_the_same_local_port_each_get_their_own_original_destination() -> anyhow::Result<()> {
    require_root();
    let dir = std::env::temp_dir().join(integration_tests::names::unique("egress-two-pods"));
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("two-pods.yaml"), TWO_PODS)?;
    let sim = integration_tests::node::SimNode::new(std::slice::from_ref(&dir))?;
    fs::remove_dir_all(&dir)?;
    let node = Running::start(sim, &[])?;

    let mut proxies = Vec::new();
    for pod in ["a", "b"] {
        let mut cmd = node
            .sim
            .workload_command(&id(&format!("default/{pod}-istio-proxy")), "python3")?;
        let mut child = cmd
            .args(["-c", LATE_PROXY])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line)?;
        ensure!(line.starts_with("LISTENING"), "{pod}'s proxy: {line:?}");
        proxies.push((Daemon(child), out));
    }
    // Both apps from 127.0.0.1:40000, each in its own pod, to different
    // destinations; both give up before their proxy accepts.
    for (pod, port) in [("a", 8081), ("b", 8082)] {
        let out = node
            .sim
            .workload_command(&id(&format!("default/{pod}")), "curl")?
            .args(["--silent", "--local-port", "40000", "--max-time", "1"])
            .arg(format!("http://198.51.100.77:{port}/"))
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.code() == Some(28),
            "{pod}: curl should time out waiting for the proxy: {out:?}"
        );
    }
    for ((_, out), expected) in proxies
        .iter_mut()
        .zip(["198.51.100.77:8081", "198.51.100.77:8082"])
    {
        let mut line = String::new();
        std::io::BufRead::read_line(out, &mut line)?;
        ensure!(
            line.trim() == format!("ORIGINAL 40000 {expected}"),
            "a proxy got {line:?}, expected its own app's {expected}"
        );
    }
    Ok(())
}
