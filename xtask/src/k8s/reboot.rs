//! A node's reboot, with a pod on it that tries the internet from its first
//! instant: enforcement must be in force before any pod can send.
//!
//! What a reboot does to the enforcer, and so what [`reboot`] does to a
//! node: every process of the node dies (the kubelet, containerd,
//! kube-proxy, every container); bpffs and /run are emptied, so every pin
//! goes and every program is detached; the node's nftables table goes; the
//! pods' cgroups go. Disk survives: the kubelet's and containerd's roots,
//! and the agent's boot state. Then the node boots as deploy/boot/ says:
//! the boot guard first, then containerd, the kubelet and kube-proxy. The
//! kubelet starts the node's pods again, the agent's among them, in
//! whatever order it likes.

use std::{
    fs,
    path::Path,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    kubectl::Kubectl,
    layout::{self, NodeSpec, BPFFS_DIR},
    node, rollout,
    scenario::{self, pod_yaml_on, wait_ready, Checks, Cluster, Outcome, RebootNode},
    teardown,
};

/// Where node `node`'s agent saves its boot state on the host (the
/// DaemonSet's /var/lib/egress-agent, per node).
pub fn boot_state_dir(node: &NodeSpec) -> std::path::PathBuf {
    layout::state("agent-state").join(node.name)
}

/// Reboots `node`: kills and wipes what a reboot kills and wipes, runs the
/// boot guard with `agent_binary`, then starts the node's services again.
/// Returns the new processes (the caller owns them, for the teardown).
pub fn reboot(
    kubectl: &Kubectl,
    node: &NodeSpec,
    agent_binary: &Path,
) -> anyhow::Result<Vec<(&'static str, Child)>> {
    // Everything in the node's namespace (its daemons, shims and
    // hostNetwork containers), then every container in its cgroups.
    let daemons = teardown::kill_in_netns(node.name, None);
    let containers = teardown::kill_cgroups_under(&layout::node_cgroup(node));
    // tmpfs: containerd's state (the pods' netns mounts among it), the
    // kubelet's tmpfs volumes (service account tokens), bpffs, /run.
    let containerd_run = layout::node_run(node, "containerd");
    let pods_dir = layout::node_state(node, "kubelet/pods");
    let unmounted = teardown::unmount_under(&[
        &containerd_run.display().to_string(),
        &pods_dir.display().to_string(),
    ]);
    remove_if_present(&containerd_run)?;
    remove_if_present(&Path::new(BPFFS_DIR).join(node.name))?;
    remove_if_present(&layout::run("agent").join(node.name))?;
    let cgroups =
        teardown::remove_cgroups_under(&format!("{}/kubepods", layout::node_cgroup(node)));
    let _ = Command::new("nsenter")
        .arg(format!("--net={}", layout::netns_path(node.name).display()))
        .args(["--", "nft", "delete", "table", "inet", "egress_enforcer"])
        .output();
    println!(
        "k8s-test:   {} down: {daemons} node process(es) and {containers} container process(es) killed, {unmounted} tmpfs mount(s) and {cgroups} cgroup(s) gone, pins and nftables table removed",
        node.name
    );

    // Boot: the guard before anything that can start a pod.
    let (_, v2) = node::cgroup_mounts();
    let v2 = v2.context("no cgroup2 mount")?;
    let guard = Command::new("nsenter")
        .arg(format!("--net={}", layout::netns_path(node.name).display()))
        .arg("--")
        .arg(agent_binary)
        .arg("boot-guard")
        .arg(format!(
            "--boot-state={}",
            boot_state_dir(node).join("boot.json").display()
        ))
        .arg(format!("--bpffs={BPFFS_DIR}/{}", node.name))
        .arg(format!(
            "--cgroup-root={}",
            v2.join(layout::node_cgroup(node)).display()
        ))
        .output()
        .context("running egress-agent boot-guard")?;
    let said = String::from_utf8_lossy(&guard.stdout);
    println!("k8s-test:   {}", said.trim());
    if !guard.status.success() {
        bail!(
            "egress-agent boot-guard failed: {}",
            String::from_utf8_lossy(&guard.stderr)
        );
    }
    let mut children = vec![node::start_containerd(node)?];
    let (name, mut kubelet) = node::start_kubelet(node)?;
    children.push(node::start_kube_proxy(node)?);
    node::wait_ready(kubectl, node, &mut kubelet)?;
    children.push((name, kubelet));
    Ok(children)
}

fn remove_if_present(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Reboots the applications' node with a pod on it that hammers the
/// internet, and checks: nothing got out, before or after the agent came
/// back; the pod's attempts began before the agent was Ready (or the
/// check proves nothing); and the node's pods have their policy again.
/// Returns the agent's Ready time after the node was Ready, in ms.
pub fn run(
    cluster: &Cluster<'_>,
    checks: &mut Checks,
    reboot: &RebootNode<'_>,
    node: &NodeSpec,
) -> anyhow::Result<Option<f64>> {
    let k = cluster.kubectl;
    let (_, internet_ip) = cluster.allowed_host;
    let state = boot_state_dir(node).join("boot.json");
    let saved = fs::read_to_string(&state).unwrap_or_default();
    checks.check(
        saved.contains("kubepods"),
        &format!("the agent on {} saved its boot state", node.name),
        &format!(
            "{}: {}",
            state.display(),
            saved.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    );
    k.apply(&pod_yaml_on(
        cluster,
        "test-egress",
        "boot-hammer",
        &[("app", "boot-hammer")],
        &scenario::recorded(&rollout::hammer_script(internet_ip)),
        Some(node.name),
    ))?;
    wait_ready(
        k,
        "test-egress",
        "pod/boot-hammer",
        Duration::from_secs(120),
    )?;

    let agent = scenario::agent_pods(k, Some(node.name))?
        .into_iter()
        .next()
        .with_context(|| format!("no agent pod on {}", node.name))?;
    let restarts = restart_count(k, &agent);
    // The agent's image is held back over the reboot, as a slow pull on a
    // real node would: the kubelet then starts the hammer while the boot
    // guard is all there is, for as long as this test chooses, rather
    // than for however long the race between the two pods happens to
    // leave it (5 to 34 attempts across runs here, never none, but not
    // by construction).
    image(node, "tag", AGENT_IMAGE, HELD_IMAGE)?;
    image(node, "rm", AGENT_IMAGE, "")?;
    let began = Instant::now();
    reboot(node)?;
    let node_ready = began.elapsed();
    let guarded_only = wait_attempts(k, "boot-hammer", GUARDED_ATTEMPTS);
    image(node, "tag", HELD_IMAGE, AGENT_IMAGE)?;
    image(node, "rm", HELD_IMAGE, "")?;
    println!(
        "k8s-test:   the agent's image is back after {:.1}s; the hammer made {guarded_only} attempt(s) with the boot guard alone",
        began.elapsed().as_secs_f32()
    );
    // The agent's pod is Ready once the node's policy is in force.
    // Ready again only counts once the kubelet has restarted the agent's
    // container: until it has seen the node's reboot, the old status says
    // Ready.
    let agent_ready = loop {
        let ready = restart_count(k, &agent) > restarts
            && k.output(&[
                "get",
                "pod",
                "-n",
                scenario::AGENT_NS,
                &agent,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .is_ok_and(|s| s.trim() == "True");
        if ready {
            break Some((cluster.node_uptime)()?);
        }
        if began.elapsed() > Duration::from_secs(240) {
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let agent_after = began.elapsed();
    wait_ready(
        k,
        "test-egress",
        "pod/boot-hammer",
        Duration::from_secs(120),
    )?;
    // A few more attempts under the agent's own policy.
    thread::sleep(Duration::from_secs(3));
    let attempts = rollout::stop_hammer(k, "boot-hammer")?;
    let reached = attempts.iter().filter(|a| a.0 == "ok").count();
    let refused = attempts.iter().filter(|a| a.0 == "EPERM").count();
    let before_agent = agent_ready.map_or(attempts.len(), |at| {
        attempts.iter().filter(|a| a.1 < at).count()
    });
    checks.check(
        agent_ready.is_some(),
        &format!("after {}'s reboot its agent is Ready again", node.name),
        &format!(
            "node Ready {:.1}s after the reboot began, agent Ready {:.1}s after",
            node_ready.as_secs_f32(),
            agent_after.as_secs_f32()
        ),
    );
    checks.check(
        before_agent >= GUARDED_ATTEMPTS && reached == 0,
        &format!(
            "test-egress/boot-hammer, restarted by {}'s kubelet, tried the internet before the agent was Ready and after: never got out",
            node.name
        ),
        &format!(
            "{} attempts ({before_agent} before the agent was Ready): {refused} refused (EPERM), {reached} reached it, {} other",
            attempts.len(),
            attempts.len() - refused - reached
        ),
    );
    // The node's pods have their own policy again: the allowed flow works.
    let gateway = scenario::pod_ip(k, "istio-system", "istio-egressgateway")?;
    let (outcome, text) = scenario::probe_until_ok(
        k,
        "test-egress",
        "boot-hammer",
        &gateway,
        80,
        Instant::now(),
    )?;
    checks.check(
        outcome == Outcome::Ok,
        "after the reboot, test-egress/boot-hammer's allowed flow (to the gateway) works",
        &text,
    );
    k.output(&[
        "delete",
        "pod",
        "-n",
        "test-egress",
        "boot-hammer",
        "--wait=false",
    ])?;
    Ok(Some(
        agent_after.saturating_sub(node_ready).as_secs_f64() * 1000.0,
    ))
}

/// The agent's image as the local cluster imports it, and where it is
/// held while a reboot must start without it.
const AGENT_IMAGE: &str = "docker.io/local/egress-agent:latest";
const HELD_IMAGE: &str = "docker.io/local/egress-agent:held-over-reboot";
/// Attempts the hammer must have made, with the boot guard alone in
/// force, before the agent may start.
const GUARDED_ATTEMPTS: usize = 20;

/// `ctr images tag FROM TO` or `ctr images rm FROM` in `node`'s containerd.
fn image(node: &NodeSpec, verb: &str, from: &str, to: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(layout::containerd_socket(node))
        .args(["-n", "k8s.io", "images", verb]);
    if verb == "tag" {
        cmd.arg("--force");
    }
    cmd.arg(from);
    if !to.is_empty() {
        cmd.arg(to);
    }
    let out = cmd.output().context("running ctr")?;
    if !out.status.success() {
        bail!(
            "ctr images {verb} {from} {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Waits until test-egress/`pod`'s [`rollout::hammer_script`] has logged
/// `n` attempts (at most two minutes); returns how many it had.
fn wait_attempts(k: &Kubectl, pod: &str, n: usize) -> usize {
    let since = Instant::now();
    loop {
        let seen = scenario::output_of(k, "test-egress", pod)
            .lines()
            .filter(|l| l.split_whitespace().count() == 2)
            .count();
        if seen >= n || since.elapsed() > Duration::from_secs(120) {
            return seen;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// How often the kubelet has restarted the agent pod's container.
fn restart_count(k: &Kubectl, pod: &str) -> u32 {
    k.output(&[
        "get",
        "pod",
        "-n",
        scenario::AGENT_NS,
        pod,
        "-o",
        "jsonpath={.status.containerStatuses[0].restartCount}",
    ])
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}
