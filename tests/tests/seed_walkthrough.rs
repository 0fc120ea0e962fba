//! Scenarios: the seed docs' egress-gateway walkthrough, end to end on the
//! simulated node with `policies/` as shipped. The agent redirects
//! default/sleep's connections to its sidecar (`egress-agent proxy --mode
//! sidecar`, recognised by its cgroup), the sidecar sends them to the egress
//! gateway (`--mode gateway`, REGISTRY_ONLY from the EgressGateway), and the
//! gateway reaches edition.cnn.com. Every claim is checked where it can be
//! seen: the sidecar's and the gateway's access logs, the gateway's Envoy
//! counters, and the site's own access log (which client it saw).

use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Context as _};
use egress_policy::model::ObjectId;
use integration_tests::{
    agent::agent_exe,
    mesh::{counter, AccessLine, Mesh},
    require_root,
    scenario::{id, Running},
    Listener, Outcome, Proto, SILENCE,
};

const LOG_WAIT: Duration = Duration::from_secs(5);

fn sleep() -> ObjectId {
    id("default/sleep")
}

fn sidecar_of_sleep() -> ObjectId {
    id("default/sleep-istio-proxy")
}

fn test_egress() -> ObjectId {
    id("test-egress/sleep")
}

fn gateway() -> ObjectId {
    id("istio-system/istio-egressgateway")
}

/// The agent and the mesh on the seed node; the proxies stop first.
struct Walkthrough {
    mesh: Mesh,
    node: Running,
}

impl Walkthrough {
    fn start() -> anyhow::Result<Self> {
        let node = Running::seed(&[])?;
        let mesh = Mesh::start(&node.sim, &agent_exe())?;
        ensure!(
            mesh.sidecar(&sidecar_of_sleep()).is_some(),
            "sleep has a sidecar"
        );
        ensure!(mesh.gateway().is_some(), "the gateway runs");
        Ok(Self { mesh, node })
    }

    fn gateway_log(&self) -> Vec<AccessLine> {
        self.mesh
            .gateway()
            .map(|g| g.access_log())
            .unwrap_or_default()
    }

    fn sidecar_log(&self) -> Vec<AccessLine> {
        self.mesh
            .sidecar(&sidecar_of_sleep())
            .map(|s| s.access_log())
            .unwrap_or_default()
    }

    /// The gateway's Envoy counter `upstream_cx_total` for `port` and host.
    fn upstream_cx_total(&self, port: u16, host: &str) -> anyhow::Result<u64> {
        let gateway = self.mesh.gateway().context("gateway")?;
        let stats = self.mesh.stats(&self.node.sim, gateway)?;
        Ok(counter(
            &stats,
            &format!("cluster.outbound|{port}||{host}.upstream_cx_total"),
        )
        .unwrap_or(0))
    }

    /// Whether the site's last request came from the gateway's uplink.
    fn site_saw_the_gateway(&self, host: &str, uri: &str) -> anyhow::Result<bool> {
        let uplink = &self.node.sim.pod_of(&gateway()).context("pod")?.uplink;
        let served = self.node.sim.web().requests();
        let last = served.last().context("the site logged nothing")?;
        Ok(uplink.contains(&last.client) && last.host == host && last.uri == uri)
    }
}

/// 1, 2 and 6: HTTP by Host and HTTPS by SNI (passthrough) go through the
/// sidecar and the gateway; the site sees the gateway; the gateway's
/// per-destination counters match the requests sent.
#[test]
fn sleep_reaches_edition_cnn_com_through_its_sidecar_and_the_gateway() -> anyhow::Result<()> {
    require_root();
    let w = Walkthrough::start()?;
    let before80 = w.upstream_cx_total(80, "edition.cnn.com")?;
    let before443 = w.upstream_cx_total(443, "edition.cnn.com")?;
    let (http, https) = (3u64, 2u64);
    for _ in 0..http {
        let curl = w
            .node
            .sim
            .curl(&sleep(), "http://edition.cnn.com/politics")?;
        ensure!(curl.ok(), "HTTP: {curl:?}");
        ensure!(w.site_saw_the_gateway("edition.cnn.com", "/politics")?);
    }
    for _ in 0..https {
        let curl = w
            .node
            .sim
            .curl(&sleep(), "https://edition.cnn.com/politics")?;
        ensure!(curl.ok(), "HTTPS: {curl:?}");
        ensure!(w.site_saw_the_gateway("edition.cnn.com", "/politics")?);
    }
    let total = usize::try_from(http + https)?;
    let gateway = w
        .mesh
        .gateway()
        .context("gateway")?
        .wait_for_lines(total, LOG_WAIT);
    let allowed = |proto: &str| {
        gateway
            .iter()
            .filter(|l| {
                l.verdict == "allowed"
                    && l.authority.as_deref() == Some("edition.cnn.com")
                    && l.protocol.as_deref() == Some(proto)
            })
            .count() as u64
    };
    ensure!(allowed("http") == http, "gateway log by Host: {gateway:#?}");
    ensure!(allowed("tls") == https, "gateway log by SNI: {gateway:#?}");
    let sidecar = w.sidecar_log();
    let via_sidecar = sidecar
        .iter()
        .filter(|l| {
            l.verdict == "allowed"
                && l.original_dst.as_deref().is_some_and(|d| {
                    let site = w.node.sim.dns().records["edition.cnn.com"].clone();
                    d.parse::<SocketAddr>()
                        .is_ok_and(|a| site.contains(&a.ip()))
                })
        })
        .count();
    ensure!(
        via_sidecar == total,
        "the sidecar saw each original destination: {sidecar:#?}"
    );
    ensure!(w.upstream_cx_total(80, "edition.cnn.com")? - before80 == http);
    ensure!(w.upstream_cx_total(443, "edition.cnn.com")? - before443 == https);
    Ok(())
}

/// 3: without a sidecar, test-egress/sleep fails at once (EPERM, not a
/// timeout), and nothing reaches the gateway or the site.
#[test]
fn test_egress_without_a_sidecar_fails_at_once() -> anyhow::Result<()> {
    require_root();
    let w = Walkthrough::start()?;
    let served = w.node.sim.web().requests().len();
    for url in [
        "http://edition.cnn.com/politics",
        "https://edition.cnn.com/politics",
    ] {
        let curl = w.node.sim.curl(&test_egress(), url)?;
        ensure!(curl.refused_eperm(), "{url}: {curl:?}");
    }
    ensure!(w.gateway_log().is_empty(), "the gateway saw nothing");
    ensure!(
        w.node.sim.web().requests().len() == served,
        "the site saw nothing"
    );
    Ok(())
}

/// 4: "inject" a sidecar into test-egress (a proxy Workload in its pod, a
/// Redirect that selects the pod), and the same request succeeds through
/// the gateway.
#[test]
fn after_injecting_a_sidecar_test_egress_reaches_the_site_through_the_gateway() -> anyhow::Result<()>
{
    require_root();
    let mut w = Walkthrough::start()?;
    let refused = w
        .node
        .sim
        .curl(&test_egress(), "http://edition.cnn.com/politics")?;
    ensure!(refused.refused_eperm(), "before: {refused:?}");

    let proxy = id("test-egress/sleep-istio-proxy");
    let cgroup = w.node.sim.add_workload(
        proxy.clone(),
        "egress-demo/test-egress/sleep/istio-proxy",
        &test_egress(),
    )?;
    std::fs::write(
        w.node.sim.policies_dir().join("zz-inject-test-egress.yaml"),
        format!(
            "\
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata:
  name: sleep-istio-proxy
  namespace: test-egress
  labels: {{app: sleep, egress.enforcer.dev/container: istio-proxy}}
spec:
  cgroup: {cgroup}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Redirect
metadata:
  name: istio-sidecar
  namespace: test-egress
spec:
  podSelector: {{}}
  # The seed's test-egress/sleep Workload is written without a sidecar;
  # the injection is this file's proxy workload.
  capture: All
  proxy:
    address: 127.0.0.1
    port: 15001
    selector:
      podSelector:
        matchLabels: {{egress.enforcer.dev/container: istio-proxy}}
  includeIPRanges: \"*\"
"
        ),
    )?;
    w.node.wait_applied(2)?;
    let listen: SocketAddr = "127.0.0.1:15001".parse()?;
    w.mesh.inject(&w.node.sim, &proxy, listen)?;

    let curl = w
        .node
        .sim
        .curl(&test_egress(), "http://edition.cnn.com/politics")?;
    ensure!(curl.ok(), "after injection: {curl:?}");
    ensure!(w.site_saw_the_gateway("edition.cnn.com", "/politics")?);
    let injected = w.mesh.sidecar(&proxy).context("the injected sidecar")?;
    ensure!(
        injected
            .wait_for_lines(1, LOG_WAIT)
            .iter()
            .any(|l| l.verdict == "allowed"),
        "the injected sidecar carried it: {}",
        injected.log()
    );
    ensure!(w
        .gateway_log()
        .iter()
        .any(|l| l.authority.as_deref() == Some("edition.cnn.com")));
    Ok(())
}

/// 5: an excluded range (the cluster CIDRs) is not redirected: before the
/// exclusion the sidecar logs the connection and the pod never sees it;
/// after it, the pod is reached directly and the sidecar logs nothing.
#[test]
fn an_excluded_range_is_not_redirected() -> anyhow::Result<()> {
    require_root();
    let mut w = Walkthrough::start()?;
    let pod = w.node.sim.pod_of(&test_egress()).context("pod")?;
    let target = Listener::start(
        &pod.netns,
        SocketAddr::new(pod.addresses[0], 8080),
        Proto::Tcp,
    )?;
    let captured = w.node.client(&sleep())?.connect_tcp(target.addr())?;
    ensure!(
        captured == Outcome::Ok,
        "the sidecar accepts it: {captured:?}"
    );
    let lines = w
        .mesh
        .sidecar(&sidecar_of_sleep())
        .context("sidecar")?
        .wait_for_lines(1, LOG_WAIT);
    let dst = target.addr().to_string();
    ensure!(
        lines
            .iter()
            .any(|l| l.original_dst.as_deref() == Some(dst.as_str())),
        "captured: the sidecar logged {dst}: {lines:#?}"
    );
    ensure!(
        target.next_event(Duration::from_millis(300)).is_none(),
        "not direct"
    );

    w.node.replace_policy_file(
        "sidecar-redirect",
        "\
apiVersion: egress.enforcer.dev/v1alpha1
kind: Redirect
metadata:
  name: istio-sidecar
  namespace: default
spec:
  podSelector: {}
  proxy:
    address: 127.0.0.1
    port: 15001
    selector:
      podSelector:
        matchLabels: {egress.enforcer.dev/container: istio-proxy}
  includeIPRanges: \"*\"
  excludeIPRanges: \"10.244.0.0/16,10.96.0.0/12\"
",
    )?;
    w.node.wait_applied(2)?;
    let logged = w.sidecar_log().len();
    let direct = w.node.client(&sleep())?.connect_tcp(target.addr())?;
    ensure!(direct == Outcome::Ok, "direct: {direct:?}");
    let seen = target
        .next_event(Duration::from_secs(2))
        .context("reached directly")?;
    ensure!(seen.peer().ip() == w.node.sim.pod_of(&sleep()).context("pod")?.addresses[0]);
    // A silence check: had the connection gone through the sidecar, its
    // access-log line (written when the connection ends) would arrive.
    let sidecar = w.mesh.sidecar(&sidecar_of_sleep()).context("sidecar")?;
    let lines = sidecar.wait_for_lines(logged + 1, SILENCE);
    ensure!(
        lines.len() == logged,
        "the sidecar logged nothing new: {:?}",
        lines.get(logged..)
    );
    // The internet is still captured.
    let curl = w.node.sim.curl(&sleep(), "https://edition.cnn.com/")?;
    ensure!(curl.ok(), "{curl:?}");
    Ok(())
}
