//! `cargo xtask k8s-test`: the agent as a DaemonSet on a real, local,
//! two-node Kubernetes 1.20 with kube-proxy, offline, and the seed
//! scenario proven with real pods.
//!
//! 1. installs the packages it needs (idempotent);
//! 2. builds kube-apiserver, kubelet, kube-controller-manager,
//!    kube-scheduler and kube-proxy from Debian's source package, once
//!    (cached under /var/cache/egress-enforcer/k8s/<version>);
//! 3. builds `egress-agent`, and packs the pause, toolbox and agent images
//!    with umoci;
//! 4. brings up two nodes, each a network namespace with its own pod
//!    subnet, containerd (cgroupfs), kubelet and kube-proxy (iptables),
//!    routed to each other over a LAN; node A also runs etcd and the
//!    control plane. An "internet" namespace routes the LAN and serves
//!    the seed's hosts ([`network`]);
//! 5. applies the seed's Namespaces, kube-dns (dnsmasq in a pod behind
//!    the kube-dns Service, [`dns`]), the agent from `deploy/` (with an
//!    overlay: the local image, each node's cgroup root and pin dir), then
//!    runs [`scenario`] (gateway and DNS on node A, applications on node
//!    B) and [`two_nodes`];
//! 6. tears everything down, whatever happened (`--keep` leaves it up;
//!    `--teardown` only tears down).

pub(crate) mod control_plane;
mod crds;
mod dns;
mod gateway_dns;
mod hardening;
mod images;
pub mod kind;
pub(crate) mod kube_build;
pub(crate) mod kubectl;
pub(crate) mod layout;
mod netpol_e2e;
mod network;
mod node;
pub(crate) mod packages;
pub(crate) mod pki;
pub mod pod_memory;
pub(crate) mod procs;
mod reboot;
mod rollout;
mod scenario;
mod service_entries;
mod teardown;
mod two_nodes;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

pub use self::netpol_e2e::{run as netpol_e2e, NetpolE2eArgs};
use self::{
    kubectl::Kubectl,
    layout::{
        NodeSpec, BPFFS_DIR, CGROUP_ROOT, INTERNET_HOSTS, INTERNET_NETNS, LOG_DIR, METRICS_PORT,
        NODES, NODE_A, NODE_B, RUN_DIR, STATE_DIR,
    },
    scenario::{Checks, Cluster},
};
use crate::{host, run};

#[derive(clap::Args)]
pub struct K8sTestArgs {
    /// Leave the cluster running afterwards (kubectl: `nsenter
    /// --net=/run/netns/egk8s-a kubectl --kubeconfig
    /// /var/lib/egress-k8s-test/admin.kubeconfig ...`); remove it later
    /// with `--teardown`.
    #[arg(long)]
    keep: bool,
    /// Only tear down what an earlier run left.
    #[arg(long, conflicts_with = "keep")]
    teardown: bool,
    /// Build and run the agent's release profile.
    #[arg(long)]
    release: bool,
    /// Only install the packages and build (or find cached) the
    /// Kubernetes binaries.
    #[arg(long, conflicts_with_all = ["keep", "teardown"])]
    build_only: bool,
    /// Bring up the cluster and a busybox pod only, without the agent
    /// (the unenforced baseline: the pod reaches the internet).
    #[arg(long)]
    no_agent: bool,
}

/// What the run measured, for the summary.
#[derive(Default)]
struct Times {
    kube_build: Option<(Duration, String)>,
    agent_build: Option<Duration>,
    images: Option<Duration>,
    network: Option<Duration>,
    api_ready: Option<Duration>,
    containerd: Option<Duration>,
    nodes_ready: Vec<(&'static str, Duration)>,
    kube_proxy: Option<Duration>,
    bring_up: Option<Duration>,
    dns: Option<Duration>,
    agent_ready: Option<Duration>,
    scenario: Option<scenario::Timings>,
    two_nodes: Option<two_nodes::Timings>,
    run: Option<Duration>,
}

pub fn run(args: &K8sTestArgs) -> anyhow::Result<ExitCode> {
    run_with(args, None)
}

/// What runs on the cluster once the agent is Ready: the project's own
/// scenario, or the upstream NetworkPolicy e2e suite.
pub(crate) fn run_with(
    args: &K8sTestArgs,
    e2e: Option<&netpol_e2e::Suite>,
) -> anyhow::Result<ExitCode> {
    if !host::is_root() {
        bail!(
            "k8s-test needs root (euid {}): it creates network namespaces, cgroups, mounts \
             and runs a kubelet",
            host::euid()
        );
    }
    if args.teardown {
        print_teardown(teardown::run());
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let mut times = Times::default();
    step("packages", packages::ensure)?;
    let began = Instant::now();
    let built = step("kubernetes binaries", kube_build::ensure)?;
    times.kube_build = Some((began.elapsed(), built));
    if args.build_only {
        return Ok(ExitCode::SUCCESS);
    }
    let agent = if args.no_agent {
        None
    } else {
        let began = Instant::now();
        let binary = build_agent(args.release)?;
        times.agent_build = Some(began.elapsed());
        Some(binary)
    };

    println!("k8s-test: sweeping what an earlier run may have left");
    print_teardown(teardown::run());
    for dir in [STATE_DIR, RUN_DIR] {
        fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    if Path::new(LOG_DIR).exists() {
        fs::remove_dir_all(LOG_DIR).with_context(|| format!("clearing {LOG_DIR}"))?;
    }
    fs::create_dir_all(LOG_DIR).with_context(|| format!("creating {LOG_DIR}"))?;
    teardown::save_sysctls().context("saving the sysctls the kubelet changes")?;

    let mut checks = Checks::new();
    let mut children = Vec::new();
    let result = bring_up_and_test(
        agent.as_deref(),
        e2e,
        &mut times,
        &mut checks,
        &mut children,
    );
    if let Err(err) = &result {
        println!("\nk8s-test: FAILED: {err:#}");
        println!("k8s-test: logs of every process are in {LOG_DIR}");
    }
    print_where_everything_ran();
    if args.keep {
        println!(
            "\nk8s-test: --keep: the cluster is still up. kubectl: nsenter --net=/run/netns/{} \
             kubectl --kubeconfig {}; remove it with `cargo xtask k8s-test --teardown`",
            NODE_A.name,
            layout::kubeconfig().display()
        );
    } else {
        let began = Instant::now();
        println!("\nk8s-test: teardown");
        print_teardown(teardown::run());
        // The teardown killed them; reap them rather than leave zombies.
        for (_, mut child) in children {
            let _ = child.wait();
        }
        println!(
            "k8s-test: teardown took {:.1}s",
            began.elapsed().as_secs_f32()
        );
    }
    print_summary(&times, &checks, started.elapsed());
    let failed = result.is_err() || !checks.failed().is_empty();
    println!(
        "k8s-test: {} passed, {} failed",
        checks.passed(),
        checks.failed().len() + usize::from(result.is_err())
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn step<T: std::fmt::Display>(
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let began = Instant::now();
    let what = f().with_context(|| format!("k8s-test step `{name}`"))?;
    println!(
        "k8s-test: {name}: {what} ({:.1}s)",
        began.elapsed().as_secs_f32()
    );
    Ok(what)
}

fn build_agent(release: bool) -> anyhow::Result<PathBuf> {
    let root = host::workspace_root();
    let mut build = run::cargo();
    build
        .args(["build", "-p", "egress-agent", "--bins"])
        .current_dir(&root);
    if release {
        build.arg("--release");
    }
    run::check(&mut build)?;
    let profile = if release { "release" } else { "debug" };
    Ok(host::target_dir(&root).join(profile).join("egress-agent"))
}

/// Everything between the sweep and the teardown.
fn bring_up_and_test(
    agent: Option<&Path>,
    e2e: Option<&netpol_e2e::Suite>,
    times: &mut Times,
    checks: &mut Checks,
    children: &mut Vec<(&'static str, Child)>,
) -> anyhow::Result<()> {
    let began = Instant::now();
    let result = (|| {
        println!("k8s-test: bringing up two nodes");
        let step_began = Instant::now();
        network::create()?;
        times.network = Some(step_began.elapsed());
        for (addr, root) in network::web_roots()? {
            for port in ["80", "443"] {
                let child = procs::spawn(
                    INTERNET_NETNS,
                    &format!("httpd-{addr}-{port}"),
                    Path::new("/bin/busybox"),
                    &control_plane::strings(&[
                        "httpd",
                        "-f",
                        "-v",
                        "-p",
                        &format!("{addr}:{port}"),
                        "-h",
                        &root.display().to_string(),
                    ]),
                )?;
                children.push(("httpd", child));
            }
        }
        let pki = pki::create()?;
        let plane = control_plane::start(&pki)?;
        times.api_ready = Some(plane.api_ready_after);
        children.extend(plane.children);
        println!(
            "k8s-test: API server ready after {:.1}s",
            plane.api_ready_after.as_secs_f32()
        );
        let step_began = Instant::now();
        for node in NODES {
            children.push(node::start_containerd(node)?);
        }
        times.containerd = Some(step_began.elapsed());

        let began_images = Instant::now();
        let stripped = match agent {
            Some(binary) => Some(stripped_copy(binary)?),
            None => None,
        };
        for (name, tarball) in images::build_all(stripped.as_deref())? {
            for node in NODES {
                images::import(node, &name, &tarball)?;
            }
        }
        if e2e.is_some() {
            let tarball = images::agnhost()?;
            for node in NODES {
                images::import_as(node, "agnhost", &tarball, netpol_e2e::AGNHOST_IMAGE)?;
            }
        }
        times.images = Some(began_images.elapsed());

        let kubectl = Kubectl::local();
        let step_began = Instant::now();
        let mut kubelets = Vec::new();
        for node in NODES {
            kubelets.push((node, node::start_kubelet(node)?));
            children.push(node::start_kube_proxy(node)?);
        }
        for (node, (_, kubelet)) in &mut kubelets {
            node::wait_ready(&kubectl, node, kubelet)?;
            let after = step_began.elapsed();
            times.nodes_ready.push((node.name, after));
            println!(
                "k8s-test: node {} Ready after {:.1}s",
                node.name,
                after.as_secs_f32()
            );
            node::set_pod_cidr(&kubectl, node)?;
        }
        children.extend(kubelets.into_iter().map(|(_, kubelet)| kubelet));
        let after = wait_kube_proxy()?;
        times.kube_proxy = Some(after);
        println!(
            "k8s-test: kube-proxy's rules for the kubernetes Service in every node after {:.1}s",
            after.as_secs_f32()
        );
        // kube-proxy and the kubelets program iptables in the nodes'
        // namespaces only: the host's own must have none of it.
        let host_rules = run::output("iptables-save", ["-t", "nat"]).unwrap_or_default();
        let leaked = host_rules.lines().filter(|l| l.contains("KUBE-")).count();
        checks.check(
            leaked == 0,
            "kube-proxy's and the kubelets' iptables rules stay in the nodes' namespaces",
            &format!("{leaked} KUBE- line(s) in the host's nat table"),
        );
        times.bring_up = Some(began.elapsed());
        println!(
            "k8s-test: cluster up in {:.1}s",
            began.elapsed().as_secs_f32()
        );
        let policies = host::workspace_root().join("policies");
        let uptime = || node_uptime();
        // A rebooted node's new processes, handed to the teardown after.
        let reborn = std::cell::RefCell::new(Vec::new());
        let reboot_node = |node: &NodeSpec| -> anyhow::Result<()> {
            let binary = agent.context("no agent binary to run the boot guard with")?;
            let children = reboot::reboot(&kubectl, node, binary)?;
            reborn.borrow_mut().extend(children);
            Ok(())
        };
        let mut cluster = Cluster {
            kubectl: &kubectl,
            toolbox_image: images::TOOLBOX,
            image_pull_policy: "Never",
            allowed_host: INTERNET_HOSTS[0],
            other_host: INTERNET_HOSTS[1],
            dns_pod_ip: String::new(),
            policies: &policies,
            node_uptime: &uptime,
            kill_agent: Some(&kill_agent),
            reboot: Some(&reboot_node),
            gateway_node: Some(NODE_A.name),
            app_node: Some(NODE_B.name),
            by_name: true,
        };
        scenario::prepare(&cluster)?;
        // Before kube-dns, which forwards the rotating name's zone to it.
        if agent.is_some() {
            children.extend(gateway_dns::start()?);
        }
        let (sync, dns_after) = dns::start(&cluster)?;
        children.push(("dns-sync", sync));
        times.dns = Some(dns_after);
        cluster.dns_pod_ip = scenario::pod_ip(&kubectl, "kube-system", "kube-dns")?;
        println!(
            "k8s-test: kube-dns ({} on {}) answers through its Service from {} after {:.1}s",
            cluster.dns_pod_ip,
            NODE_A.name,
            NODE_B.name,
            dns_after.as_secs_f32()
        );
        let outcome = match agent {
            None => baseline(&cluster, checks),
            Some(_) => {
                crds::prepare(&kubectl)?;
                service_entries::install_crd(&kubectl)?;
                apply_agent(&kubectl)?;
                let ready = scenario::wait_agent(&kubectl, Duration::from_secs(180))?;
                times.agent_ready = Some(ready);
                println!(
                    "k8s-test: the agent's DaemonSet pods are Ready after {:.1}s",
                    ready.as_secs_f32()
                );
                let run_began = Instant::now();
                if let Some(suite) = e2e {
                    let result = netpol_e2e::run_suite(suite, checks);
                    times.run = Some(run_began.elapsed());
                    return result;
                }
                let result = (|| {
                    crds::check(&kubectl, checks);
                    times.scenario = Some(scenario::run(&cluster, checks)?);
                    times.two_nodes = Some(two_nodes::run(&cluster, checks)?);
                    println!("\nk8s-test: Istio ServiceEntries as a gateway's allow-list");
                    service_entries::run(&cluster, checks)?;
                    println!("\nk8s-test: a gateway's allow-list follows its own DNS answers");
                    gateway_dns::run(&cluster, checks)?;
                    check_metrics(checks);
                    hardening::check(&kubectl, checks);
                    check_status_all_nodes(&kubectl, checks);
                    uninstall_job(&cluster, checks)
                })();
                times.run = Some(run_began.elapsed());
                result
            }
        };
        children.extend(std::mem::take(&mut *reborn.borrow_mut()));
        outcome
    })();
    if result.is_err() || !checks.failed().is_empty() {
        dump_diagnostics();
    }
    result
}

/// Waits until kube-proxy has programmed the `kubernetes` Service in
/// every node's nat table (its first sync).
fn wait_kube_proxy() -> anyhow::Result<Duration> {
    procs::wait_until(
        "kube-proxy's first sync",
        Duration::from_secs(60),
        None,
        || {
            NODES.iter().all(|node| {
                Command::new("nsenter")
                    .arg(format!("--net={}", layout::netns_path(node.name).display()))
                    .args(["iptables-save", "-t", "nat"])
                    .output()
                    .is_ok_and(|o| {
                        String::from_utf8_lossy(&o.stdout).contains("default/kubernetes:https")
                    })
            })
        },
    )
}

/// Where every node and pod ran, for the reader of the log; printed at
/// the end of every run, passed or failed.
fn print_where_everything_ran() {
    let kubectl = Kubectl::local();
    println!();
    for args in [
        &["get", "nodes", "-o", "wide"][..],
        &["get", "pods", "-A", "-o", "wide"][..],
    ] {
        match kubectl.output(args) {
            Ok(out) => println!("$ kubectl {}\n{}", args.join(" "), out.trim_end()),
            Err(err) => println!("$ kubectl {}: {err:#}", args.join(" ")),
        }
    }
}

/// A copy of the agent without debug info (the debug build's is ~10×
/// larger), for the image.
fn stripped_copy(binary: &Path) -> anyhow::Result<PathBuf> {
    let out = layout::state("egress-agent.stripped");
    run::check(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&out),
    )
    .with_context(|| format!("stripping {}", binary.display()))?;
    Ok(out)
}

/// SIGKILLs node B's agent process: the one named egress-agent with
/// `--kubernetes` in that node's network namespace (the pod uses the host
/// network). Returns its pid.
fn kill_agent() -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let node = fs::metadata(layout::netns_path(NODE_B.name)).context("node B's netns")?;
    for entry in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let in_node =
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == node.ino());
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_agent = args.first().is_some_and(|a| a.ends_with(b"egress-agent"))
            && args.iter().any(|a| *a == b"--kubernetes");
        if in_node && is_agent {
            // SAFETY: kill(2) has no memory-safety preconditions.
            if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
            }
            return Ok(pid.unsigned_abs());
        }
    }
    bail!("no egress-agent process in {}'s namespace", NODE_B.name)
}

/// The node's uptime, the clock the pods' logs use.
fn node_uptime() -> anyhow::Result<f64> {
    let text = fs::read_to_string("/proc/uptime").context("reading /proc/uptime")?;
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .context("parsing /proc/uptime")
}

/// The DaemonSet from deploy/, through an overlay: the locally imported
/// image (never pulled), the host's cgroup2 mount (a hybrid host's is
/// /sys/fs/cgroup/unified), and per node (both nodes share this host's
/// cgroup and bpf filesystems and /run): its kubelet's cgroup root, a pin
/// dir and a lock/socket dir, all named after `$(NODE_NAME)` (the
/// downward API's spec.nodeName, expanded by the kubelet).
fn apply_agent(kubectl: &Kubectl) -> anyhow::Result<()> {
    let (_, v2) = node::cgroup_mounts();
    let v2 = v2.context("no cgroup2 mount: the agent needs cgroup v2")?;
    let deploy = host::workspace_root().join("deploy");
    let overlay = layout::state("overlay");
    fs::create_dir_all(&overlay).context("creating the overlay dir")?;
    for node in NODES {
        let dir = reboot::boot_state_dir(node);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- {deploy}
images:
- name: egress-agent
  newName: docker.io/local/egress-agent
  newTag: latest
patches:
- patch: |-
    apiVersion: apps/v1
    kind: DaemonSet
    metadata:
      name: egress-agent
      namespace: egress-enforcer
    spec:
      template:
        spec:
          containers:
          - name: agent
            imagePullPolicy: Never
            args:
            - run
            - --kubernetes
            - --policies=/etc/egress-enforcer/policies
            - --cgroup-root=/sys/fs/cgroup/{CGROUP_ROOT}/$(NODE_NAME)
            - --bpffs={BPFFS_DIR}/$(NODE_NAME)
            - --metrics-addr=$(POD_IPS)
            - --boot-state=/var/lib/egress-agent/boot.json
            - --follow-gateway-dns
            volumeMounts:
            - name: run
              mountPath: /run/egress-agent
              subPathExpr: $(NODE_NAME)
            - name: state
              mountPath: /var/lib/egress-agent
              subPathExpr: $(NODE_NAME)
          volumes:
          - name: cgroup
            hostPath:
              path: {v2}
          - name: run
            hostPath:
              path: {agent_run}
          - name: state
            hostPath:
              path: {agent_state}
",
        deploy = relative_to(&overlay, &deploy).display(),
        agent_run = layout::run("agent").display(),
        agent_state = layout::state("agent-state").display(),
        v2 = v2.display(),
    );
    let kustomization = kustomization + crds::OVERLAY;
    fs::write(overlay.join("kustomization.yaml"), kustomization).context("writing the overlay")?;
    kubectl.run(&["apply", "-k", &overlay.display().to_string()])
}

/// `target` as a path relative to `from` (kustomize refuses absolute
/// paths to bases); both are absolute.
pub fn relative_to(from: &Path, target: &Path) -> PathBuf {
    let mut rel = PathBuf::new();
    for _ in from.components().skip(1) {
        rel.push("..");
    }
    rel.join(target.strip_prefix("/").unwrap_or(target))
}

/// Without the agent: a busybox pod runs, `kubectl exec` works, and it
/// reaches the internet (nothing enforces anything yet).
fn baseline(cluster: &Cluster<'_>, checks: &mut Checks) -> anyhow::Result<()> {
    let k = cluster.kubectl;
    k.apply(&scenario::pod_yaml_on(
        cluster,
        "test-egress",
        "sleep",
        &[("app", "sleep")],
        "exec sleep 3600",
        cluster.app_node,
    ))?;
    let began = Instant::now();
    scenario::wait_ready(k, "test-egress", "pod/sleep", Duration::from_secs(120))?;
    let (host_name, host_ip) = cluster.allowed_host;
    let (outcome, text) = scenario::fetch(k, "test-egress", "sleep", None, host_name)?;
    checks.check(
        outcome == scenario::Outcome::Ok,
        &format!(
            "no agent: test-egress/sleep (Ready in {:.1}s) → http://{host_name}/ reached",
            began.elapsed().as_secs_f32()
        ),
        &text,
    );
    let out = k.exec("test-egress", "sleep", &format!("nslookup {host_name}"))?;
    checks.check(
        out.stdout.contains(host_ip),
        &format!("no agent: test-egress/sleep resolves {host_name} through the kube-dns Service"),
        &out.stdout
            .lines()
            .filter(|l| l.contains("Address"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    Ok(())
}

/// Removing enforcement on purpose, as docs/kubernetes.md says: delete the
/// DaemonSet (enforcement stays pinned), then run deploy/cleanup's Job on
/// each node. Afterwards nothing is pinned and test-egress reaches the
/// internet: the denials were the agent's.
fn uninstall_job(cluster: &Cluster<'_>, checks: &mut Checks) -> anyhow::Result<()> {
    println!(
        "\nk8s-test: 16. explicit removal: delete the DaemonSet, then the uninstall Job on each node"
    );
    let k = cluster.kubectl;
    let ns = "egress-enforcer";
    k.run(&[
        "delete",
        "daemonset",
        "-n",
        ns,
        "egress-agent",
        "--wait=true",
    ])?;
    // No agent pod may be left to re-attach (an error here means none was).
    let _ = k.output(&[
        "wait",
        "-n",
        ns,
        "--for=delete",
        "pod",
        "-l",
        "app.kubernetes.io/name=egress-agent",
        "--timeout=60s",
    ]);
    let (allowed_name, allowed_ip) = cluster.allowed_host;
    let (outcome, text) = scenario::probe(k, "test-egress", "sleep", allowed_ip, 80)?;
    checks.check(
        outcome == scenario::Outcome::Eperm,
        &format!("DaemonSet deleted: test-egress/sleep → {allowed_name} still denied (pinned)"),
        &text,
    );
    for node in NODES {
        uninstall_on(k, node, checks)?;
    }
    // Polled: the last Job's table removal and the probe may cross.
    let (outcome, took) = scenario::poll_outcome(
        k,
        "test-egress",
        "sleep",
        allowed_ip,
        80,
        scenario::Outcome::Ok,
    )?;
    checks.check(
        outcome == scenario::Outcome::Ok,
        &format!("uninstalled: test-egress/sleep → {allowed_name} reached (the denials were the agent's)"),
        &format!("{outcome:?} after {took:.0} ms"),
    );
    two_nodes::after_uninstall(cluster, checks)
}

/// deploy/cleanup's Job on `node`, with its pin dir.
fn uninstall_on(k: &Kubectl, node: &NodeSpec, checks: &mut Checks) -> anyhow::Result<()> {
    let ns = "egress-enforcer";
    let pins = Path::new(BPFFS_DIR).join(node.name);
    let file = host::workspace_root().join("deploy/cleanup/uninstall-job.yaml");
    let mut job =
        fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    for (from, to) in [
        ("NODE_NAME_HERE", node.name.to_owned()),
        (
            "image: egress-agent\n",
            "image: docker.io/local/egress-agent:latest\n".to_owned(),
        ),
        (
            "imagePullPolicy: IfNotPresent",
            "imagePullPolicy: Never".to_owned(),
        ),
        (
            "--bpffs=/sys/fs/bpf/egress-enforcer",
            format!("--bpffs={}", pins.display()),
        ),
    ] {
        if !job.contains(from) {
            bail!(
                "{} no longer contains `{from}`: update k8s-test",
                file.display()
            );
        }
        job = job.replace(from, &to);
    }
    k.apply(&job)?;
    let name = format!("job/egress-agent-uninstall-{}", node.name);
    k.output(&[
        "wait",
        "-n",
        ns,
        "--for=condition=complete",
        &name,
        "--timeout=120s",
    ])?;
    let logs = k.output(&["logs", "-n", ns, &name])?;
    let links = fs::read_dir(pins.join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    checks.check(
        links == 0,
        &format!(
            "the uninstall Job completed on {} and no link is pinned there any more",
            node.name
        ),
        &logs.lines().map(str::trim).collect::<Vec<_>>().join(" / "),
    );
    Ok(())
}

/// Each agent's Prometheus endpoint on its node's address (hostNetwork).
fn check_metrics(checks: &mut Checks) {
    for node in NODES {
        check_metrics_on(node, checks);
    }
}

fn check_metrics_on(node: &NodeSpec, checks: &mut Checks) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", layout::netns_path(node.name).display()))
        .args(["curl", "-sS", "--max-time", "5"])
        .arg(format!("http://{}:{METRICS_PORT}/metrics", node.ip))
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    checks.check(
        samples > 0,
        &format!(
            "the agent on {} serves Prometheus metrics at http://{}:{METRICS_PORT}/metrics",
            node.name, node.ip
        ),
        &format!("{samples} samples"),
    );
}

/// `egress-agent status --all-nodes`, as an operator runs it: `kubectl
/// exec` into one agent, which finds every agent through the metrics
/// Service's endpoints and asks each for `/readyz` and `/metrics`.
fn check_status_all_nodes(kubectl: &Kubectl, checks: &mut Checks) {
    let pod = match scenario::agent_pod(kubectl, None) {
        Ok(pod) => pod,
        Err(e) => {
            checks.check(false, "egress-agent status --all-nodes", &format!("{e:#}"));
            return;
        }
    };
    let status = |output: &str| {
        scenario::agent_cli(kubectl, &pod, &["status", "--all-nodes", "-o", output])
            .unwrap_or_else(|e| format!("{e:#}"))
    };
    let table = status("wide");
    println!("k8s-test: kubectl exec {pod} -- egress-agent status --all-nodes -o wide\n{table}");
    let ready_rows = NODES
        .iter()
        .filter(|node| {
            table.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.first() == Some(&node.name) && cells.get(2) == Some(&"True")
            })
        })
        .count();
    checks.check(
        ready_rows == NODES.len(),
        &format!("egress-agent status --all-nodes (from {pod}) lists both nodes' agents, Ready"),
        &table.lines().collect::<Vec<_>>().join(" / "),
    );
    let json = status("json");
    let nodes = serde_json::from_str::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.get("nodes")?.as_array().map(Vec::len))
        .unwrap_or(0);
    let yaml = status("yaml");
    let in_yaml = NODES
        .iter()
        .filter(|n| {
            yaml.lines()
                .any(|l| l.trim_start_matches("- ").trim() == format!("node: {}", n.name))
        })
        .count();
    checks.check(
        nodes == NODES.len() && in_yaml == NODES.len(),
        "egress-agent status --all-nodes -o json / -o yaml: one entry per node",
        &format!("json: {nodes} entries, yaml: {in_yaml} nodes"),
    );
}

/// Pods, events and the agent's log, when something failed.
fn dump_diagnostics() {
    let kubectl = Kubectl::local();
    println!("\nk8s-test: diagnostics");
    for args in [
        &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
        &[
            "logs",
            "-n",
            "egress-enforcer",
            "-l",
            "app.kubernetes.io/name=egress-agent",
            "--tail=60",
        ][..],
    ] {
        match kubectl.output(args) {
            Ok(out) => println!("$ kubectl {}\n{}", args.join(" "), out.trim_end()),
            Err(err) => println!("$ kubectl {}: {err:#}", args.join(" ")),
        }
    }
    for node in NODES {
        for process in ["kubelet", "containerd", "kube-proxy"] {
            let name = format!("{process}-{}", node.name);
            println!(
                "--- {name} log (last 15 lines) ---\n{}",
                procs::log_tail(&name, 15)
            );
        }
    }
}

fn print_teardown(report: Vec<String>) {
    if report.is_empty() {
        println!("k8s-test:   nothing to remove");
    }
    for line in report {
        println!("k8s-test:   {line}");
    }
}

fn print_summary(times: &Times, checks: &Checks, total: Duration) {
    let secs =
        |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1}s", d.as_secs_f32()));
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} ms"));
    println!("\nk8s-test summary:");
    if let Some((took, what)) = &times.kube_build {
        println!(
            "  kubernetes binaries        {what} ({:.1}s)",
            took.as_secs_f32()
        );
    }
    println!("  agent build                {}", secs(times.agent_build));
    println!("  namespaces, LAN, routes    {}", secs(times.network));
    println!("  API server ready           {}", secs(times.api_ready));
    println!("  containerd ×2              {}", secs(times.containerd));
    println!("  images (umoci + import ×2) {}", secs(times.images));
    for (node, after) in &times.nodes_ready {
        println!(
            "  {:<27}{}",
            format!("node {node} Ready"),
            secs(Some(*after))
        );
    }
    println!("  kube-proxy rules (both)    {}", secs(times.kube_proxy));
    println!("  cluster bring-up (total)   {}", secs(times.bring_up));
    println!("  kube-dns via its Service   {}", secs(times.dns));
    println!("  agent pods Ready (both)    {}", secs(times.agent_ready));
    println!("  checks (scenario → uninstall) {}", secs(times.run));
    if let Some(t) = &times.scenario {
        println!(
            "  pod creation → first packet (denied)          {}",
            ms(t.first_packet_ms)
        );
        println!(
            "  pod creation → its policy enforced (allowed)  {}",
            ms(t.policy_applied_ms)
        );
        println!(
            "  NetworkPolicy deleted → verdict changed       {}",
            ms(t.np_delete_effect_ms)
        );
        println!(
            "  NetworkPolicy created → verdict changed       {}",
            ms(t.np_create_effect_ms)
        );
        println!(
            "  no agent, enforcement checked during          {}",
            ms(t.agent_gap_ms)
        );
        println!(
            "  replacement agent Ready                       {}",
            ms(t.agent_replaced_ms)
        );
    }
    if let Some(t) = &times.two_nodes {
        println!(
            "  peer moved to the other node → reachable     {}",
            ms(t.peer_move_ms)
        );
        println!(
            "  rollout restart of the agent (rollout status) {}",
            ms(t.rollout_ms)
        );
        println!(
            "  reboot: node Ready → its agent Ready          {}",
            ms(t.reboot_agent_ms)
        );
        println!(
            "  tenancy: policy change in force (bad NP elsewhere) {}",
            ms(t.tenancy_change_ms)
        );
        println!(
            "  tenancy: new pod's first attempt → policy     {}",
            ms(t.tenancy_new_pod_ms)
        );
    }
    println!("  total                      {:.1}s", total.as_secs_f32());
    if !checks.failed().is_empty() {
        println!("  FAILED checks:");
        for f in checks.failed() {
            println!("    - {f}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kustomize_bases_are_given_relative_to_the_overlay() {
        assert_eq!(
            relative_to(
                Path::new("/var/lib/x/overlay"),
                Path::new("/work/repo/deploy")
            ),
            PathBuf::from("../../../../work/repo/deploy")
        );
    }

    /// deploy/base/policies-configmap.yaml carries policies/ files verbatim:
    /// each file's lines, indented under its key, in order.
    #[test]
    fn the_deployed_configmap_matches_the_seed_policies() {
        let root = host::workspace_root();
        let configmap = fs::read_to_string(root.join("deploy/base/policies-configmap.yaml"))
            .expect("deploy/base/policies-configmap.yaml");
        for file in ["egress-gateway.yaml", "sidecar-redirect.yaml"] {
            let policy = fs::read_to_string(root.join("policies").join(file)).expect("policy");
            let mut block: String = policy
                .lines()
                .map(|l| {
                    if l.is_empty() {
                        "\n".to_owned()
                    } else {
                        format!("    {l}\n")
                    }
                })
                .collect();
            block.insert_str(0, &format!("  {file}: |\n"));
            assert!(
                configmap.contains(&block),
                "deploy/base/policies-configmap.yaml is out of date with policies/{file}"
            );
        }
    }
}
