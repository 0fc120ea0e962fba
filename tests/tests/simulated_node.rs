//! Scenarios: the seed docs' cluster on a simulated node (pods on a
//! bridge, kube-dns, a gateway pod with its own uplink, an internet serving
//! edition.cnn.com and httpbin.org over HTTP and TLS), with the real agent
//! running in the node namespace as a hostNetwork DaemonSet would. Every
//! verdict is a real connection, a real DNS answer or a real HTTP response;
//! successes are confirmed from the receiving side (the site's access log,
//! a listener's accept), refusals by the kernel's EPERM and by nothing
//! arriving.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Context as _};
use egress_policy::model::ObjectId;
use integration_tests::{
    bpftool::{attached_ids, map_exists, program_exists, program_map_ids},
    node::SimNode,
    require_root,
    scenario::{dual_stack_seed, id, seed_policies, Running},
    Client, Event, Listener, Outcome, Proto,
};

const ARRIVAL: Duration = Duration::from_millis(500);
const RELOAD: Duration = Duration::from_secs(15);

/// The seed NetworkPolicy's file.
const SEED_NETWORK_POLICY: &str = "allow-egress-to-istio-system-and-kube-dns";

fn test_egress() -> ObjectId {
    id("test-egress/sleep")
}

fn gateway() -> ObjectId {
    id("istio-system/istio-egressgateway")
}

/// The seed NetworkPolicy without its istio-system rule: DNS only.
const DNS_ONLY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-egress-to-istio-system-and-kube-dns
  namespace: test-egress
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels:
          kube-system: \"true\"
    ports:
    - protocol: UDP
      port: 53
";

/// 1. DNS through kube-dns and anything in istio-system; nothing else in
///    the cluster.
#[test]
fn a_test_egress_pod_reaches_kube_dns_and_anything_in_istio_system_only() -> anyhow::Result<()> {
    require_root();
    let node = Running::seed(&[])?;
    let sleep = node.client(&test_egress())?;

    let answer = node.lookup(&test_egress(), "edition.cnn.com")?;
    let expected = node.sim.dns().records["edition.cnn.com"].clone();
    ensure!(
        expected.iter().all(|a| answer.contains(a)),
        "kube-dns answered {answer:?}, expected {expected:?}"
    );

    for (port, proto) in [(443, Proto::Tcp), (8080, Proto::Tcp), (15012, Proto::Udp)] {
        let listener = node.listen_in(&gateway(), port, proto)?;
        let outcome = sleep.connect(listener.addr(), proto, Duration::from_secs(2))?;
        ensure!(outcome == Outcome::Ok, "{proto:?} {port}: {outcome:?}");
        ensure!(
            listener.next_event(ARRIVAL).is_some(),
            "the gateway pod saw the {proto:?} connection on {port}"
        );
    }

    let other = node.listen_in(&id("default/sleep"), 8080, Proto::Tcp)?;
    ensure!(sleep.connect_tcp(other.addr())? == Outcome::Eperm);
    ensure!(
        other.next_event(ARRIVAL).is_none(),
        "nothing reached default/sleep"
    );
    Ok(())
}

/// 2. The internet is out of reach by TCP (EPERM at once), UDP, a raw
///    socket and IPv6; a process that escapes the pod's cgroup is still
///    stopped at the node by nftables. Each bypass is first shown to work
///    without the agent, so the test cannot pass by accident.
#[test]
fn a_test_egress_pod_cannot_reach_the_internet_by_tcp_udp_raw_socket_or_ipv6() -> anyhow::Result<()>
{
    require_root();
    let scratch = tempdir()?;
    let sim = SimNode::new(&[dual_stack_seed(&scratch)?])?;
    fs::remove_dir_all(&scratch)?;
    let internet = sim.internet();
    let site4 = sim.host_address("edition.cnn.com").context("address")?;
    let udp4 = Listener::start(internet, SocketAddr::new(site4, 5000), Proto::Udp)?;
    let site6 = sim.dns().records["edition.cnn.com"]
        .iter()
        .copied()
        .find(IpAddr::is_ipv6)
        .context("an IPv6 address")?;
    let udp6 = Listener::start(internet, SocketAddr::new(site6, 5000), Proto::Udp)?;
    {
        // The first packets also resolve neighbours on the way (a lost
        // first solicitation is retried after 1 s): allow for that here,
        // so that later "nothing arrived" waits see warm caches.
        let first = Duration::from_secs(3);
        let sleep = sim.client(&test_egress()).context("placed")?;
        for listener in [&udp4, &udp6] {
            ensure!(sleep.sendto(listener.addr())? == Outcome::Ok);
            ensure!(
                listener.next_event(first).is_some(),
                "baseline: UDP to {}",
                listener.addr()
            );
            ensure!(sleep.raw_udp(listener.addr())? == Outcome::Ok);
            ensure!(
                listener.next_event(first).is_some(),
                "baseline: raw to {}",
                listener.addr()
            );
        }
        ensure!(sim.curl(&test_egress(), "https://edition.cnn.com/")?.ok());
    }
    let baseline_requests = sim.web().requests().len();

    let node = Running::start(sim, &[])?;
    let sleep = node.client(&test_egress())?;
    let curl = node
        .sim
        .curl(&test_egress(), "http://edition.cnn.com/politics")?;
    ensure!(curl.refused_eperm(), "curl: {curl:?}");
    let curl = node
        .sim
        .curl(&test_egress(), "https://httpbin.org/headers")?;
    ensure!(curl.refused_eperm(), "curl: {curl:?}");
    for v6 in [false, true] {
        let dst = node.site("edition.cnn.com", v6, 443)?;
        ensure!(sleep.connect_tcp(dst)? == Outcome::Eperm, "TCP to {dst}");
    }
    for listener in [&udp4, &udp6] {
        let dst = listener.addr();
        ensure!(sleep.connect(dst, Proto::Udp, Duration::from_secs(1))? == Outcome::Eperm);
        ensure!(sleep.sendto(dst)? == Outcome::Eperm, "sendto {dst}");
        // The raw socket skips every socket hook; cgroup_skb drops it.
        ensure!(sleep.raw_udp(dst)? == Outcome::Eperm, "raw to {dst}");
        ensure!(
            listener.next_event(ARRIVAL).is_none(),
            "nothing reached {dst}"
        );
    }
    let pod = node.sim.pod_of(&test_egress()).context("pod")?;
    ensure!(
        node.sim
            .web()
            .requests()
            .iter()
            .skip(baseline_requests)
            .all(|r| !pod.addresses.contains(&r.client)),
        "the sites never saw test-egress/sleep after the baseline"
    );

    // Outside every cgroup of the pod: the node's nftables backstop.
    let escaped = Client::outside(&pod.netns);
    let before = node.sim.backstop_counters()?;
    let outcome = escaped.connect(
        node.site("edition.cnn.com", false, 443)?,
        Proto::Tcp,
        Duration::from_millis(700),
    )?;
    ensure!(
        outcome == Outcome::Timeout,
        "dropped at the node: {outcome:?}"
    );
    let after = node.sim.backstop_counters()?;
    let drops = |c: &egress_agent::dataplane::nft::BackstopCounts| -> u64 {
        c.iter().map(|(_, v)| v.packets).sum()
    };
    ensure!(
        drops(&after) > drops(&before),
        "the backstop counted the drop"
    );
    Ok(())
}

/// 3. The gateway reaches its allowed host over HTTP and TLS, and the site
///    sees the gateway; no other host, port or address.
#[test]
fn the_gateway_reaches_its_allowed_host_over_http_and_tls_and_nothing_else() -> anyhow::Result<()> {
    require_root();
    let node = Running::seed(&[])?;
    let uplink = node.sim.pod_of(&gateway()).context("pod")?.uplink.clone();
    for url in [
        "http://edition.cnn.com/politics",
        "https://edition.cnn.com/politics",
    ] {
        let curl = node.sim.curl(&gateway(), url)?;
        ensure!(curl.ok(), "{url}: {curl:?}");
        let served = node.sim.web().requests();
        let last = served.last().context("the site logged the request")?;
        ensure!(
            uplink.contains(&last.client),
            "the site saw {}",
            last.client
        );
        ensure!(last.host == "edition.cnn.com" && last.uri == "/politics");
        if url.starts_with("https") {
            ensure!(last.sni.as_deref() == Some("edition.cnn.com"));
        }
    }
    let served = node.sim.web().requests().len();
    for url in ["https://httpbin.org/headers", "http://httpbin.org/get"] {
        let curl = node.sim.curl(&gateway(), url)?;
        ensure!(curl.refused_eperm(), "{url}: {curl:?}");
    }
    ensure!(
        node.sim.web().requests().len() == served,
        "httpbin.org saw nothing"
    );
    let gw = node.client(&gateway())?;
    let ssh = node.site("edition.cnn.com", false, 22)?;
    ensure!(gw.connect_tcp(ssh)? == Outcome::Eperm, "an unlisted port");
    let unnamed = SocketAddr::new(IpAddr::from([203, 0, 113, 200]), 443);
    ensure!(
        gw.connect_tcp(unnamed)? == Outcome::Eperm,
        "an unnamed address"
    );
    Ok(())
}

/// 4. A workload that no NetworkPolicy selects keeps its cluster egress,
///    until a policy selects it; its neighbours are not affected either way.
#[test]
fn a_pod_that_no_policy_selects_is_unaffected_until_one_does() -> anyhow::Result<()> {
    require_root();
    let scratch = tempdir()?;
    let extra = scratch.join("staging.yaml");
    fs::write(
        &extra,
        "\
apiVersion: v1
kind: Namespace
metadata:
  name: staging
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata:
  name: web
  namespace: staging
  labels:
    app: web
spec:
  cgroup: egress-demo/staging/web
  addresses: [\"10.244.3.10\"]
",
    )?;
    let sim = SimNode::new(&[seed_policies(), extra.clone()])?;
    fs::remove_dir_all(&scratch)?;
    let mut node = Running::start(sim, &[])?;
    let web = id("staging/web");
    let target = node.listen_in(&test_egress(), 8080, Proto::Tcp)?;
    let neighbour = node.listen_in(&id("default/sleep"), 9090, Proto::Tcp)?;
    let client = node.client(&web)?;
    ensure!(
        client.connect_tcp(target.addr())? == Outcome::Ok,
        "unselected: any pod"
    );
    ensure!(client.connect_tcp(neighbour.addr())? == Outcome::Ok);
    ensure!(!node.lookup(&web, "httpbin.org")?.is_empty(), "and DNS");

    fs::write(
        node.sim.policies_dir().join("zz-staging-dns-only.yaml"),
        DNS_ONLY.replace("test-egress", "staging"),
    )?;
    node.wait_applied(2)?;
    let client = node.client(&web)?;
    ensure!(
        client.connect_tcp(target.addr())? == Outcome::Eperm,
        "selected now"
    );
    ensure!(client.connect_tcp(neighbour.addr())? == Outcome::Eperm);
    ensure!(
        !node.lookup(&web, "httpbin.org")?.is_empty(),
        "DNS stays allowed"
    );
    let sleep = node.client(&test_egress())?;
    let gw = node.listen_in(&gateway(), 443, Proto::Tcp)?;
    ensure!(
        sleep.connect_tcp(gw.addr())? == Outcome::Ok,
        "others unaffected"
    );
    Ok(())
}

/// 5. Narrowing a policy on reload cuts new connections and an
///    established one (its next segment never arrives).
#[test]
fn a_reload_that_narrows_a_policy_cuts_the_newly_denied_flows() -> anyhow::Result<()> {
    require_root();
    let mut node = Running::seed(&[])?;
    let listener = node.listen_in(&gateway(), 443, Proto::Tcp)?;
    let mut held = node
        .client(&test_egress())?
        .hold(listener.addr(), Proto::Tcp)?;
    ensure!(held.send()? == Outcome::Ok);
    let events = listener.expect(2, ARRIVAL * 4);
    ensure!(
        events.iter().any(|e| matches!(e, Event::Data(_))),
        "before: data arrives ({events:?})"
    );

    node.replace_policy_file(SEED_NETWORK_POLICY, DNS_ONLY)?;
    node.wait_applied(2)?;
    let sleep = node.client(&test_egress())?;
    ensure!(
        sleep.connect_tcp(listener.addr())? == Outcome::Eperm,
        "new connections"
    );
    let _ = held.send()?;
    let late: Vec<Event> = listener
        .events(ARRIVAL)
        .into_iter()
        .filter(|e| matches!(e, Event::Data(_)))
        .collect();
    ensure!(
        late.is_empty(),
        "the held connection delivers nothing: {late:?}"
    );
    ensure!(
        !node.lookup(&test_egress(), "edition.cnn.com")?.is_empty(),
        "DNS kept"
    );
    Ok(())
}

/// 6. SIGKILL leaves enforcement pinned; a restart adopts the same links
///    and changes nothing.
#[test]
fn a_killed_agent_keeps_denying_and_a_restart_changes_nothing() -> anyhow::Result<()> {
    require_root();
    let mut node = Running::seed(&[])?;
    let links = pinned_links(node.sim.pin_dir())?;
    ensure!(!links.is_empty(), "links are pinned");
    let gw = node.listen_in(&gateway(), 443, Proto::Tcp)?;
    let check = |node: &Running| -> anyhow::Result<()> {
        let curl = node.sim.curl(&test_egress(), "https://edition.cnn.com/")?;
        ensure!(curl.refused_eperm(), "denied: {curl:?}");
        ensure!(
            node.sim.curl(&gateway(), "https://edition.cnn.com/")?.ok(),
            "gateway"
        );
        let sleep = node.client(&test_egress())?;
        ensure!(sleep.connect_tcp(gw.addr())? == Outcome::Ok, "allowed");
        Ok(())
    };
    check(&node)?;
    node.agent.kill()?;
    check(&node).context("with no agent running")?;
    node.agent.restart()?;
    ensure!(
        pinned_links(node.sim.pin_dir())? == links,
        "the same links, adopted"
    );
    check(&node).context("after the restart")?;
    Ok(())
}

/// 7. Uninstall leaves no program, map, pin or table of the agent's, by
///    the kernel's own account (bpftool).
#[test]
fn uninstall_leaves_no_program_map_pin_or_table() -> anyhow::Result<()> {
    require_root();
    let mut node = Running::seed(&[])?;
    let programs = attached_ids(node.sim.cgroup_root());
    ensure!(!programs.is_empty(), "programs are attached at the root");
    let maps: Vec<u32> = programs.iter().flat_map(|p| program_map_ids(*p)).collect();
    ensure!(!maps.is_empty());
    ensure!(node.sim.has_backstop_table());
    node.agent.terminate()?;
    let out = node.agent.uninstall()?;

    ensure!(attached_ids(node.sim.cgroup_root()).is_empty(), "{out}");
    let left: Vec<u32> = programs
        .iter()
        .copied()
        .filter(|p| program_exists(*p))
        .collect();
    ensure!(left.is_empty(), "programs still loaded: {left:?}");
    let left: Vec<u32> = maps.iter().copied().filter(|m| map_exists(*m)).collect();
    ensure!(left.is_empty(), "maps still there: {left:?}");
    ensure!(!node.sim.pin_dir().exists(), "pin dir removed");
    ensure!(!node.sim.has_backstop_table(), "nft table removed");
    let tables = integration_tests::nftns::nft(node.sim.node(), &["list", "tables"])?;
    ensure!(
        !tables.contains(egress_agent::dataplane::nft::TABLE),
        "neither the inet nor the bridge table is left: {tables}"
    );
    ensure!(node
        .sim
        .curl(&test_egress(), "https://edition.cnn.com/")?
        .ok());
    Ok(())
}

/// 8. An invalid policy on reload is rejected by file and field, and the
///    policy in force stays in force.
#[test]
fn an_invalid_policy_on_reload_is_rejected_and_the_old_one_kept() -> anyhow::Result<()> {
    require_root();
    let mut node = Running::seed(&[])?;
    let broken = DNS_ONLY.replace(
        "  - to:\n",
        "  - to:\n    - ipBlock:\n        cidr: 10.244.0.0/33\n",
    );
    let file = node.replace_policy_file(SEED_NETWORK_POLICY, &broken)?;
    node.agent
        .wait_for_log("the previous generation stays in force", RELOAD)?;
    let log = node.agent.log();
    let name = file
        .file_name()
        .context("name")?
        .to_string_lossy()
        .into_owned();
    ensure!(log.contains(&name), "names the file: {log}");
    ensure!(log.contains("cidr"), "names the field: {log}");

    let gw = node.listen_in(&gateway(), 443, Proto::Tcp)?;
    let sleep = node.client(&test_egress())?;
    ensure!(
        sleep.connect_tcp(gw.addr())? == Outcome::Ok,
        "the old allow stays"
    );
    ensure!(node
        .sim
        .curl(&test_egress(), "https://edition.cnn.com/")?
        .refused_eperm());
    Ok(())
}

/// 9. Audit mode blocks nothing and counts and logs what it would deny.
#[test]
fn audit_mode_blocks_nothing_and_reports_would_be_denies() -> anyhow::Result<()> {
    require_root();
    let mut node = Running::seed(&["--audit"])?;
    let curl = node
        .sim
        .curl(&test_egress(), "https://edition.cnn.com/politics")?;
    ensure!(curl.ok(), "audit passes it: {curl:?}");
    let gateway_only = node.sim.curl(&gateway(), "https://httpbin.org/headers")?;
    ensure!(gateway_only.ok(), "{gateway_only:?}");
    node.agent
        .wait_for_log("audit: would have denied", Duration::from_secs(10))?;
    let log = node.agent.log();
    ensure!(
        log.lines()
            .any(|l| l.contains("audit: would have denied") && l.contains("test-egress/sleep")),
        "names the workload: {log}"
    );
    Ok(())
}

fn pinned_links(pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(pin_dir.join("links"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(integration_tests::names::unique("egress-policy"));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}
