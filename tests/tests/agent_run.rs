//! `egress-agent run` as an operator uses it: the real binary, a policy
//! directory, real connections from a workload cgroup in a test namespace.
//! Hot reload (file change and SIGHUP), an invalid reload that changes
//! nothing, SIGKILL with enforcement left in force, adoption by a restarted
//! agent, audit mode, a workload whose cgroup appears late, and uninstall.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use integration_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    names,
    netns::TestNet,
    pins::PinDir,
    probe::{Client, Listener, Outcome, Proto, RepeatOp, Repeater},
    SILENCE,
};

/// One workload in namespace `shop`, allowed to reach the server on one
/// TCP port only.
fn policy(root: &str, port: u16) -> String {
    format!(
        r#"apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: app, namespace: shop, labels: {{app: web}}}}
spec: {{cgroup: {root}/app}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: one-port, namespace: shop}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: {server}/32}}}}]
    ports: [{{port: {port}}}]
"#,
        server = TestNet::SERVER_V4
    )
}

const OPEN: u16 = 8080;
const CLOSED: u16 = 9090;

/// Attempts a background connector makes in a state before the test moves
/// on (one every 2 ms or so), and the bound on making them.
const ATTEMPTS: u64 = 50;
const WAIT: Duration = Duration::from_secs(10);

/// Fields drop in order: the agent first, then its pins (detaching the
/// programs), listeners, cgroups and namespaces.
struct Scene {
    agent: Option<Agent>,
    pins: PinDir,
    _listeners: Vec<Listener>,
    root: TestCgroup,
    net: TestNet,
    dir: PolicyDir,
}

impl Scene {
    fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let net = TestNet::new()?;
        let root = TestCgroup::new()?;
        root.child("app")?;
        let dir = PolicyDir::new()?;
        dir.write("policy.yaml", &policy(&root.relative(), OPEN))?;
        let listeners = [OPEN, CLOSED]
            .into_iter()
            .map(|port| Listener::start(&net.server, server(port), Proto::Tcp))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pins = PinDir::new()?;
        let policies = dir.path.to_string_lossy().into_owned();
        let cgroup_root = root.path().to_string_lossy().into_owned();
        let mut args = vec![
            "--policies",
            &policies,
            "--cgroup-root",
            &cgroup_root,
            "--no-nft",
        ];
        args.extend_from_slice(extra);
        let agent = Agent::start(&net.client, pins.path(), &args)?;
        Ok(Self {
            agent: Some(agent),
            pins,
            _listeners: listeners,
            root,
            net,
            dir,
        })
    }

    fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent started")
    }

    /// A probe client in the workload's cgroup.
    fn client(&self) -> Client<'_> {
        Client::in_cgroup(&self.net.client, &self.root.path().join("app"))
    }

    fn connect(&self, port: u16) -> Outcome {
        self.client().connect_tcp(server(port)).expect("probe runs")
    }

    /// Connects to `port` again and again in the background.
    fn keep_connecting(&self, port: u16) -> anyhow::Result<Repeater> {
        self.client()
            .repeat(RepeatOp::Connect, server(port), Proto::Tcp)
    }
}

fn server(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), port)
}

/// A policy directory of the test's own.
struct PolicyDir {
    path: PathBuf,
}

impl PolicyDir {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(names::unique("egress-policies"));
        fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// Writes through a temporary file and a rename, as config management
    /// tools do, so the agent never reads half a file.
    fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.path.join(format!(".{name}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.path.join(name))?;
        Ok(())
    }
}

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[test]
fn the_agent_enforces_its_policy_directory_and_reloads_when_a_file_changes() -> anyhow::Result<()> {
    let mut scene = Scene::start(&[])?;
    assert_eq!(scene.connect(OPEN), Outcome::Ok);
    assert_eq!(
        scene.connect(CLOSED),
        Outcome::Eperm,
        "refused at connect(), not timed out"
    );

    let root = scene.root.relative();
    scene.dir.write("policy.yaml", &policy(&root, CLOSED))?;
    scene
        .agent()
        .wait_for_count("policy applied", 2, Duration::from_secs(10))?;
    assert_eq!(scene.connect(CLOSED), Outcome::Ok);
    assert_eq!(scene.connect(OPEN), Outcome::Eperm);
    Ok(())
}

#[test]
fn sighup_reloads() -> anyhow::Result<()> {
    let mut scene = Scene::start(&[])?;
    scene.agent().sighup()?;
    scene
        .agent()
        .wait_for_log("SIGHUP: reloading", Duration::from_secs(10))?;
    scene
        .agent()
        .wait_for_count("policy applied", 2, Duration::from_secs(10))?;
    assert_eq!(scene.connect(CLOSED), Outcome::Eperm);
    Ok(())
}

#[test]
fn an_invalid_policy_is_logged_with_file_and_field_and_the_old_policy_stays() -> anyhow::Result<()>
{
    let mut scene = Scene::start(&[])?;
    let (denied, allowed) = (scene.keep_connecting(CLOSED)?, scene.keep_connecting(OPEN)?);

    // A bad CIDR that would, if half-applied, open everything.
    let root = scene.root.relative();
    let bad = policy(&root, CLOSED).replace(&format!("{}/32", TestNet::SERVER_V4), "0.0.0.0/33");
    scene.dir.write("policy.yaml", &bad)?;
    scene
        .agent()
        .wait_for_log("policy rejected", Duration::from_secs(10))?;
    let log = scene.agent().log();
    assert!(
        log.contains("policy.yaml:")
            && log.contains("spec.egress[0].to[0].ipBlock.cidr")
            && log.contains("invalid CIDR"),
        "the log names the file and the field:\n{log}"
    );
    assert!(log.contains("previous generation stays in force"), "{log}");

    // The old policy is still the one in force, with no gap: both kept
    // connecting after the rejection (a half-applied policy would show as a
    // denied connection that got through).
    denied.wait_for_more(ATTEMPTS, WAIT)?;
    allowed.wait_for_more(ATTEMPTS, WAIT)?;
    let (denied, allowed) = (denied.stop(), allowed.stop());
    assert!(denied.total() > 0 && allowed.total() > 0);
    assert_eq!(denied.ok, 0, "a denied connection got through: {denied:?}");
    assert_eq!(
        allowed.eperm, 0,
        "an allowed connection failed: {allowed:?}"
    );
    assert!(
        allowed.other.is_empty() && denied.other.is_empty(),
        "{allowed:?} {denied:?}"
    );
    assert_eq!(scene.connect(CLOSED), Outcome::Eperm);
    assert_eq!(scene.connect(OPEN), Outcome::Ok);

    // Fixing the file applies it.
    scene.dir.write("policy.yaml", &policy(&root, CLOSED))?;
    scene
        .agent()
        .wait_for_count("policy applied", 2, Duration::from_secs(10))?;
    assert_eq!(scene.connect(CLOSED), Outcome::Ok);
    Ok(())
}

#[test]
fn a_killed_agent_leaves_enforcement_in_force_and_a_restarted_one_adopts_it() -> anyhow::Result<()>
{
    let mut scene = Scene::start(&[])?;
    let (denied, allowed) = (scene.keep_connecting(CLOSED)?, scene.keep_connecting(OPEN)?);
    denied.wait_for(5, Duration::from_secs(5));

    scene.agent().kill()?;
    // Connections with no agent at all (`kill` waits for its exit):
    // enforcement that went with the agent would let one through.
    denied.wait_for_more(ATTEMPTS, WAIT)?;
    assert_eq!(
        scene.connect(CLOSED),
        Outcome::Eperm,
        "no agent, still enforced"
    );
    scene.agent().restart()?;
    // And connections once the restarted agent has adopted the pins.
    denied.wait_for_more(ATTEMPTS, WAIT)?;
    allowed.wait_for_more(ATTEMPTS, WAIT)?;

    let (denied, allowed) = (denied.stop(), allowed.stop());
    assert!(denied.total() >= 5, "{denied:?}");
    assert_eq!(
        denied.ok, 0,
        "a denied connection got through while the agent was dead or restarting: {denied:?}"
    );
    assert_eq!(
        allowed.eperm, 0,
        "an allowed connection failed: {allowed:?}"
    );
    Ok(())
}

#[test]
fn sigterm_keeps_enforcement_and_uninstall_removes_everything() -> anyhow::Result<()> {
    let mut scene = Scene::start(&[])?;
    let status = scene.agent().terminate()?;
    assert!(status.success(), "{status}");
    assert!(scene.agent().log().contains("enforcement stays in force"));
    assert_eq!(
        scene.connect(CLOSED),
        Outcome::Eperm,
        "SIGTERM does not open anything"
    );

    let report = scene.agent().uninstall()?;
    let links = format!(
        "removed {} link(s)",
        egress_agent::dataplane::supported_hooks().len()
    );
    assert!(report.contains(&links), "{report}");
    assert!(!scene.pins.path().exists(), "the pin directory is gone");
    assert_eq!(
        scene.connect(CLOSED),
        Outcome::Ok,
        "nothing enforces any more"
    );
    let again = scene.agent().uninstall()?;
    assert!(again.contains("nothing pinned"), "{again}");
    Ok(())
}

#[test]
fn audit_mode_enforces_nothing_and_logs_what_it_would_have_denied() -> anyhow::Result<()> {
    let mut scene = Scene::start(&["--audit"])?;
    assert_eq!(
        scene.connect(CLOSED),
        Outcome::Ok,
        "would be denied, but audit passes it"
    );
    assert_eq!(scene.connect(OPEN), Outcome::Ok);
    scene
        .agent()
        .wait_for_log("audit: would have denied", Duration::from_secs(5))?;
    let log = scene.agent().log();
    let finding = log
        .lines()
        .find(|l| l.contains("audit: would have denied"))
        .unwrap_or_default();
    assert!(
        finding.contains("shop/app") && finding.contains("DefaultDeny"),
        "names the workload and the reason: {finding}"
    );
    Ok(())
}

#[test]
fn a_workload_is_enforced_as_soon_as_its_cgroup_appears() -> anyhow::Result<()> {
    let mut scene = Scene::start(&[])?;
    let root = scene.root.relative();
    let late = policy(&root, OPEN).replace(&format!("{root}/app"), &format!("{root}/late"));
    scene.dir.write("policy.yaml", &late)?;
    scene
        .agent()
        .wait_for_log("cgroup does not exist yet", Duration::from_secs(10))?;

    let created = Instant::now();
    let cgroup = scene.root.child("late")?;
    let client = Client::in_cgroup(&scene.net.client, &cgroup);
    let enforced = loop {
        if client.connect_tcp(server(CLOSED))? == Outcome::Eperm {
            break created.elapsed();
        }
        assert!(
            created.elapsed() < Duration::from_secs(10),
            "never enforced"
        );
    };
    eprintln!("time from cgroup creation to the first denied connect: {enforced:?}");
    Ok(())
}

#[test]
fn a_second_agent_on_the_same_pin_dir_is_refused() -> anyhow::Result<()> {
    let scene = Scene::start(&[])?;
    let policies = scene.dir.path.to_string_lossy().into_owned();
    let cgroup_root = scene.root.path().to_string_lossy().into_owned();
    let second = Agent::start(
        &scene.net.client,
        scene.pins.path(),
        &[
            "--policies",
            &policies,
            "--cgroup-root",
            &cgroup_root,
            "--no-nft",
        ],
    );
    let err = match second {
        Ok(_) => anyhow::bail!("a second agent started on the same pin dir"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("another egress-agent already manages"),
        "{err}"
    );
    assert_eq!(
        scene.connect(CLOSED),
        Outcome::Eperm,
        "the first agent's policy is untouched"
    );
    Ok(())
}

/// Runs `egress-agent run` on a fresh policy through `wrapper` (a command
/// that executes the rest of its arguments), checks that it refused to
/// start and pinned nothing, and returns what it said.
fn refused_start(mut wrapper: std::process::Command, extra: &[&str]) -> anyhow::Result<String> {
    let root = TestCgroup::new()?;
    let dir = PolicyDir::new()?;
    dir.write("policy.yaml", &policy(&root.relative(), OPEN))?;
    let pins = PinDir::new()?;
    let out = wrapper
        .arg(integration_tests::agent::agent_exe())
        .arg("run")
        .arg("--policies")
        .arg(&dir.path)
        .arg("--bpffs")
        .arg(pins.path())
        .arg("--cgroup-root")
        .arg(root.path())
        .args(extra)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the agent must not start: {stderr}");
    assert!(!pins.path().exists(), "nothing was loaded or pinned");
    Ok(stderr)
}

#[test]
fn startup_refuses_clearly_when_nft_is_missing() -> anyhow::Result<()> {
    let net = TestNet::new()?;
    // No PATH: `nft` cannot be found, and the backstop was not disabled.
    let mut wrapper = std::process::Command::new("/usr/bin/nsenter");
    wrapper
        .arg(format!("--net=/run/netns/{}", net.client.name()))
        .env_clear()
        .env("PATH", "/nonexistent");
    let stderr = refused_start(wrapper, &[])?;
    assert!(
        stderr.contains("the nft binary was not found") && stderr.contains("--no-nft"),
        "says what is wrong and how to fix it: {stderr}"
    );
    Ok(())
}

#[test]
fn startup_refuses_clearly_without_the_capabilities() -> anyhow::Result<()> {
    // Root, but with an empty bounding set: exec leaves no capability.
    let mut wrapper = std::process::Command::new("setpriv");
    wrapper.args(["--bounding-set", "-all", "--inh-caps", "-all", "--"]);
    let stderr = refused_start(wrapper, &[])?;
    assert!(
        stderr.contains("needs root, or the capabilities") && stderr.contains("CAP_BPF"),
        "says which capabilities: {stderr}"
    );
    Ok(())
}

#[test]
fn startup_refuses_clearly_without_cgroup2() -> anyhow::Result<()> {
    // A private mount namespace in which every cgroup2 mount is gone; the
    // host's mounts are untouched.
    let script = r#"findmnt -rn -t cgroup2 -o TARGET | xargs -r -n1 umount -l && exec "$@""#;
    let mut wrapper = std::process::Command::new("unshare");
    wrapper.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
    ]);
    let stderr = refused_start(wrapper, &["--no-nft"])?;
    assert!(
        stderr.contains("no cgroup2 filesystem is mounted"),
        "says what is missing: {stderr}"
    );
    Ok(())
}

/// A Redirect of `shop/app` with `captureDNS`; its proxy workload does not
/// run here: only where the query goes matters. `capture: All`, as
/// `shop/app` is written without a sidecar.
const DNS_REDIRECT: &str = r#"apiVersion: egress.enforcer.dev/v1alpha1
kind: Redirect
metadata: {name: sidecar, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  capture: All
  proxy: {selector: {podSelector: {matchLabels: {role: proxy}}}}
  captureDNS: {enabled: true, port: 15053}
"#;

#[test]
fn dns_is_captured_only_when_the_agent_runs_with_capture_dns() -> anyhow::Result<()> {
    let dns = SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), 53);
    for (extra, expected) in [
        // The NetworkPolicy allows only TCP 8080: the query is denied.
        (&[][..], Outcome::Eperm),
        // Sent to the DNS proxy on loopback instead, which is allowed.
        (&["--capture-dns"][..], Outcome::Ok),
    ] {
        let mut scene = Scene::start(extra)?;
        scene.dir.write("redirect.yaml", DNS_REDIRECT)?;
        scene
            .agent()
            .wait_for_count("policy applied", 2, Duration::from_secs(10))?;
        let outcome = scene.client().sendto(dns)?;
        assert_eq!(outcome, expected, "run {extra:?}");
    }
    Ok(())
}

#[test]
fn ebpf_log_is_off_by_default_and_forwarded_at_debug() -> anyhow::Result<()> {
    // A raw datagram skips every socket hook: only cgroup_skb decides it,
    // and that is where the programs log a drop.
    let raw = |scene: &Scene| scene.client().raw_udp(server(CLOSED));
    let mut quiet = Scene::start(&[])?;
    assert_eq!(raw(&quiet)?, Outcome::Eperm);
    quiet
        .agent()
        .wait_for_log("policy applied", Duration::from_secs(5))?;
    // Off by default: a forwarded eBPF log line would arrive here.
    quiet.agent().expect_no_log("cgroup_skb: cgroup", SILENCE)?;
    drop(quiet);

    let mut scene = Scene::start(&["--ebpf-log", "debug"])?;
    assert_eq!(raw(&scene)?, Outcome::Eperm);
    scene
        .agent()
        .wait_for_log("cgroup_skb: cgroup", Duration::from_secs(5))?;
    let log = scene.agent().log();
    let line = log
        .lines()
        .find(|l| l.contains("cgroup_skb: cgroup"))
        .unwrap_or_default();
    assert!(line.contains("ebpf"), "target ebpf: {line}");
    Ok(())
}
