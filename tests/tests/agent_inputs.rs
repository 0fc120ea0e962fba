//! What `egress-agent run` accepts from its arguments and its policy files:
//! every argument is checked before anything touches the kernel (a refused
//! start leaves no pin and no attached program behind), a first start with
//! an invalid policy never runs silently open, and a policy file rewritten
//! in place is applied only once it is complete.

use std::{
    fs,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{agent_exe, status_json, Agent},
    bpftool::attached_ids,
    cgroup::TestCgroup,
    names,
    netns::TestNet,
    pins::PinDir,
    probe::{Client, Listener, Outcome, Proto, RepeatOp, Tally},
    SILENCE,
};
use serde_json::Value;

const OPEN: u16 = 8080;
const CLOSED: u16 = 9090;
/// Opened only by the final state of the slow rewrite.
const LATER: u16 = 8081;

/// One workload in namespace `shop`, allowed to reach the server on
/// `ports` (TCP) only.
fn policy(root: &str, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("{{port: {p}}}")).collect();
    format!(
        r#"apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: app, namespace: shop, labels: {{app: web}}}}
spec: {{cgroup: {root}/app}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: some-ports, namespace: shop}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: {server}/32}}}}]
    ports: [{ports}]
"#,
        server = TestNet::SERVER_V4,
        ports = ports.join(", ")
    )
}

/// A policy rejected by validation (a prefix length past /32).
fn invalid_policy(root: &str) -> String {
    policy(root, &[OPEN]).replace(&format!("{}/32", TestNet::SERVER_V4), "0.0.0.0/33")
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

    /// Writes through a temporary file and a rename (the way writers
    /// should: docs/operations.md).
    fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.path.join(format!(".{name}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.path.join(name))?;
        Ok(())
    }

    fn arg(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Nothing of a refused start is left in the kernel: no pin directory and
/// no program attached at the cgroup root (bpftool's account, not the
/// agent's).
fn assert_untouched(pins: &PinDir, root: &TestCgroup, case: &str) {
    assert!(
        !pins.path().exists(),
        "{case}: the refused start pinned something under {}",
        pins.path().display()
    );
    assert!(
        attached_ids(root.path()).is_empty(),
        "{case}: the refused start left programs attached at {}",
        root.path().display()
    );
}

/// `egress-agent run` with `args` (after `--bpffs` and `--cgroup-root`),
/// expected to refuse: returns its stderr.
fn refused(pins: &PinDir, root: &TestCgroup, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(agent_exe())
        .arg("run")
        .arg("--bpffs")
        .arg(pins.path())
        .arg("--cgroup-root")
        .arg(root.path())
        .args(args)
        .env("EGRESS_LOG", "info")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "egress-agent run {args:?} must refuse to start:\n{stderr}"
    );
    Ok(stderr)
}

#[test]
fn every_bad_argument_is_refused_before_anything_is_attached() -> anyhow::Result<()> {
    let root = TestCgroup::new()?;
    root.child("app")?;
    let dir = PolicyDir::new()?;
    dir.write("policy.yaml", &policy(&root.relative(), &[OPEN]))?;
    let good = dir.arg();
    let missing = std::env::temp_dir().join(names::unique("no-such-policies"));
    let missing = missing.to_string_lossy().into_owned();
    let not_a_socket = dir.path.join("regular-file");
    fs::write(&not_a_socket, "not a socket")?;
    let not_a_socket = not_a_socket.to_string_lossy().into_owned();
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken = taken.local_addr()?.to_string();
    let plain_dir = std::env::temp_dir();
    let plain_dir = plain_dir.to_string_lossy().into_owned();
    let missing_root = root.path().join("no-such-cgroup");
    let missing_root = missing_root.to_string_lossy().into_owned();

    // (case, arguments, what the message must name)
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "missing --policies",
            vec!["--policies", &missing, "--no-nft"],
            vec!["--policies", &missing, "No such file"],
        ),
        (
            "a DNS server that is not an address",
            vec![
                "--policies",
                &good,
                "--no-nft",
                "--dns-server",
                "dns.example",
            ],
            vec!["--dns-server", "dns.example"],
        ),
        (
            "a DNS server on port 0",
            vec![
                "--policies",
                &good,
                "--no-nft",
                "--dns-server",
                "10.0.0.1:0",
            ],
            vec!["--dns-server", "port 0"],
        ),
        (
            "a DNS server at the unspecified address",
            vec!["--policies", &good, "--no-nft", "--dns-server", "0.0.0.0"],
            vec!["--dns-server", "0.0.0.0"],
        ),
        (
            "a socket path that is a regular file",
            vec!["--policies", &good, "--no-nft", "--socket", &not_a_socket],
            vec!["--socket", "not a socket"],
        ),
        (
            "a metrics address in use",
            vec!["--policies", &good, "--no-nft", "--metrics-addr", &taken],
            vec!["--metrics-addr", &taken],
        ),
    ];
    for (case, args, named) in &cases {
        let pins = PinDir::new()?;
        let stderr = refused(&pins, &root, args)?;
        for needle in named {
            assert!(
                stderr.contains(needle),
                "{case}: the message must name {needle:?}:\n{stderr}"
            );
        }
        assert_untouched(&pins, &root, case);
    }

    // --cgroup-root is part of `refused`'s own arguments; these replace it.
    for (case, cgroup_root, named) in [
        (
            "a missing --cgroup-root",
            missing_root.as_str(),
            "No such file",
        ),
        (
            "a --cgroup-root off cgroup2",
            plain_dir.as_str(),
            "not a cgroup v2",
        ),
    ] {
        let pins = PinDir::new()?;
        let out = Command::new(agent_exe())
            .args(["run", "--no-nft", "--policies", &good, "--bpffs"])
            .arg(pins.path())
            .args(["--cgroup-root", cgroup_root])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: must refuse:\n{stderr}");
        assert!(
            stderr.contains("--cgroup-root") && stderr.contains(named),
            "{case}: the message must name the argument and the reason:\n{stderr}"
        );
        assert!(!pins.path().exists(), "{case}: pinned something");
        assert!(attached_ids(root.path()).is_empty(), "{case}: attached");
    }
    Ok(())
}

#[test]
fn a_first_start_with_an_invalid_policy_and_nothing_pinned_refuses() -> anyhow::Result<()> {
    let root = TestCgroup::new()?;
    root.child("app")?;
    let dir = PolicyDir::new()?;
    dir.write("policy.yaml", &invalid_policy(&root.relative()))?;
    let pins = PinDir::new()?;
    let stderr = refused(&pins, &root, &["--policies", &dir.arg(), "--no-nft"])?;
    assert!(
        stderr.contains("policy.yaml")
            && stderr.contains("spec.egress[0].to[0].ipBlock.cidr")
            && stderr.contains("no earlier generation is pinned"),
        "names the finding and why it refuses:\n{stderr}"
    );
    assert_untouched(&pins, &root, "invalid policy, nothing pinned");
    Ok(())
}

/// Waits until `status` answers and `check` holds for it.
fn wait_for_status(socket: &Path, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = status_json(socket);
        if let Ok(s) = &last {
            if check(s) {
                return s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}; last: {last:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The HTTP status of `/readyz`, asked from inside the agent's namespace.
fn readyz(netns: &str, port: u16) -> anyhow::Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/readyz"))
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A free TCP port on loopback (the agent's namespace has its own
/// loopback, so only a clash with itself matters).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[test]
fn a_first_start_with_an_invalid_policy_keeps_the_pinned_generation_and_is_not_ready(
) -> anyhow::Result<()> {
    let net = TestNet::new()?;
    let root = TestCgroup::new()?;
    root.child("app")?;
    let dir = PolicyDir::new()?;
    dir.write("policy.yaml", &policy(&root.relative(), &[OPEN]))?;
    let _listeners = [OPEN, CLOSED]
        .into_iter()
        .map(|port| Listener::start(&net.server, server(port), Proto::Tcp))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pins = PinDir::new()?;
    let socket = std::env::temp_dir().join(format!("{}.sock", names::unique("egress-agent")));
    let port = free_port()?;
    let (policies, cgroup_root) = (dir.arg(), root.path().to_string_lossy().into_owned());
    let (sock, metrics) = (
        socket.to_string_lossy().into_owned(),
        format!("127.0.0.1:{port}"),
    );
    let args = [
        "--policies",
        &policies,
        "--cgroup-root",
        &cgroup_root,
        "--no-nft",
        "--socket",
        &sock,
        "--metrics-addr",
        &metrics,
    ];
    let mut agent = Agent::start(&net.client, pins.path(), &args)?;
    let client = Client::in_cgroup(&net.client, &root.path().join("app"));
    assert_eq!(client.connect_tcp(server(CLOSED))?, Outcome::Eperm);
    assert_eq!(readyz(net.client.name(), port)?, "200");

    // The agent dies; the policy in its directory turns invalid; it starts
    // again.
    agent.kill()?;
    dir.write("policy.yaml", &invalid_policy(&root.relative()))?;
    agent.restart_until("serving /metrics")?;
    let s = wait_for_status(&socket, "the rejected first reload", |s| {
        s["lastReload"]["result"] == "rejected"
    });
    assert_eq!(s["ready"], false, "not ready: {s:#}");
    assert!(s["generation"].is_null(), "{s:#}");
    let programs = s["programs"].as_array().cloned().unwrap_or_default();
    assert!(
        !programs.is_empty() && programs.iter().all(|p| p["adopted"] == true),
        "the earlier run's programs are adopted: {s:#}"
    );
    assert_eq!(readyz(net.client.name(), port)?, "503");
    let text = Command::new(agent_exe())
        .args(["status", "--socket", &sock])
        .output()?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("NOT READY") && text.contains("pinned by an earlier run"),
        "{text}"
    );
    // The earlier generation is what the kernel enforces.
    assert_eq!(client.connect_tcp(server(CLOSED))?, Outcome::Eperm);
    assert_eq!(client.connect_tcp(server(OPEN))?, Outcome::Ok);
    assert!(
        agent.log().contains("spec.egress[0].to[0].ipBlock.cidr"),
        "the log names the field:\n{}",
        agent.log()
    );

    // A valid policy makes it ready.
    dir.write("policy.yaml", &policy(&root.relative(), &[OPEN, CLOSED]))?;
    wait_for_status(&socket, "ready", |s| s["ready"] == true);
    assert_eq!(readyz(net.client.name(), port)?, "200");
    assert_eq!(client.connect_tcp(server(CLOSED))?, Outcome::Ok);
    drop(agent);
    let _ = fs::remove_file(&socket);
    Ok(())
}

/// The numbers of `policy applied` lines, in order.
fn applied_generations(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("policy applied"))
        .filter_map(|l| {
            let at = l.find("generation=")? + "generation=".len();
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn a_file_rewritten_in_place_in_slow_steps_is_applied_once_complete() -> anyhow::Result<()> {
    let net = TestNet::new()?;
    let root = TestCgroup::new()?;
    root.child("app")?;
    let dir = PolicyDir::new()?;
    let relative = root.relative();
    dir.write("policy.yaml", &policy(&relative, &[OPEN]))?;
    let _listeners = [OPEN, CLOSED, LATER]
        .into_iter()
        .map(|port| Listener::start(&net.server, server(port), Proto::Tcp))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pins = PinDir::new()?;
    let socket = std::env::temp_dir().join(format!("{}.sock", names::unique("egress-agent")));
    let (policies, cgroup_root, sock) = (
        dir.arg(),
        root.path().to_string_lossy().into_owned(),
        socket.to_string_lossy().into_owned(),
    );
    let mut agent = Agent::start(
        &net.client,
        pins.path(),
        &[
            "--policies",
            &policies,
            "--cgroup-root",
            &cgroup_root,
            "--no-nft",
            "--socket",
            &sock,
        ],
    )?;
    let client = Client::in_cgroup(&net.client, &root.path().join("app"));
    assert_eq!(client.connect_tcp(server(CLOSED))?, Outcome::Eperm);
    let first = wait_for_status(&socket, "generation 1", |s| s["generation"]["number"] == 1);
    assert_eq!(first["ready"], true);

    // Connections that every intermediate state would change: the empty
    // file has no workload (all ports open), the partial one has the
    // policy cut before its `ports:` (every port to the server allowed).
    let denied = client.repeat(RepeatOp::Connect, server(CLOSED), Proto::Tcp)?;
    let allowed = client.repeat(RepeatOp::Connect, server(OPEN), Proto::Tcp)?;
    denied.wait_for(5, Duration::from_secs(10));

    let last = policy(&relative, &[OPEN, LATER]);
    let cut = last.find("    ports:").expect("the policy has ports");
    let (partial, rest) = last.split_at(cut);
    {
        // One writer, one open file: truncate, pause, part, pause, rest,
        // pause. Each pause is a silence check, long against the agent's
        // debounce: a reload of the file as it stands (empty, cut short)
        // would arrive in the agent's log within it.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(dir.path.join("policy.yaml"))?;
        let mut pause = || agent.expect_no_log("policy files changed", SILENCE);
        pause()?;
        file.write_all(partial.as_bytes())?;
        file.flush()?;
        pause()?;
        file.write_all(rest.as_bytes())?;
        file.flush()?;
        pause()?;
    } // closed here: IN_CLOSE_WRITE

    let second = wait_for_status(&socket, "generation 2", |s| {
        s["generation"]["number"].as_u64() >= Some(2)
    });
    let (denied, allowed): (Tally, Tally) = (denied.stop(), allowed.stop());
    assert_eq!(
        second["generation"]["number"], 2,
        "exactly one apply after the rewrite: {second:#}"
    );
    assert_eq!(second["lastReload"]["result"], "applied", "{second:#}");
    assert_eq!(second["failedReloads"], 0, "no half file was even tried");
    assert_eq!(applied_generations(&agent.log()), [1, 2], "{}", agent.log());
    assert!(!agent.log().contains("policy rejected"), "{}", agent.log());
    assert!(denied.total() > 0 && allowed.total() > 0);
    assert_eq!(
        denied.ok, 0,
        "a denied connection got through during the rewrite: {denied:?}"
    );
    assert_eq!(
        allowed.eperm, 0,
        "an allowed connection failed: {allowed:?}"
    );

    // The final state is the one in force.
    assert_eq!(client.connect_tcp(server(LATER))?, Outcome::Ok);
    assert_eq!(client.connect_tcp(server(CLOSED))?, Outcome::Eperm);

    // Deleting the file is applied too (nothing left: the set is empty, so
    // it is rejected and generation 2 stays).
    fs::remove_file(dir.path.join("policy.yaml"))?;
    agent.wait_for_log("policy rejected", Duration::from_secs(10))?;
    assert_eq!(client.connect_tcp(server(CLOSED))?, Outcome::Eperm);
    drop(agent);
    let _ = fs::remove_file(&socket);
    Ok(())
}
