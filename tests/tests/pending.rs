//! Scenario: a new pod is enforced from its first packet. The agent runs
//! with a guarded root (`--guard-cgroup`, what `--kubernetes` sets to the
//! kubelet's `kubepods` cgroup): a cgroup created below it that the agent
//! does not know yet gets the pending policy at once, in the kernel, with
//! no agent round trip (the programs' ancestor walk falls through to the
//! root's entry); once the workload is known it gets its real policy, and
//! when it goes its map entries go too.
//!
//! Here "the internet" is the server's IPv4 address and "the cluster" its
//! IPv6 address (the EgressGateway's only clusterCIDR).

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use egress_agent::dataplane::Dataplane;
use integration_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    names,
    netns::TestNet,
    pins::PinDir,
    probe::{Client, Listener, Outcome, Proto},
};

const PORT: u16 = 8080;

/// A gateway (so that gateway exclusivity applies) and one known pod.
fn policy(root: &str) -> String {
    format!(
        r#"apiVersion: egress.enforcer.dev/v1alpha1
kind: EgressGateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{podSelector: {{matchLabels: {{istio: egressgateway}}}}}}
  clusterCIDRs: ["{cluster}/128"]
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: known, namespace: shop, labels: {{app: known}}}}
spec: {{cgroup: {root}/kubepods/pod-known}}
"#,
        cluster = TestNet::SERVER_V6
    )
}

fn workload(root: &str, name: &str) -> String {
    format!(
        "apiVersion: egress.enforcer.dev/v1alpha1\nkind: Workload\n\
         metadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}\n\
         spec: {{cgroup: {root}/kubepods/burstable/{name}}}\n"
    )
}

fn internet() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), PORT)
}

fn cluster(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(TestNet::SERVER_V6), port)
}

/// Writes through a temporary file and a rename.
fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

struct PolicyDir(PathBuf);

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `WORKLOADS` entries, read through the pins (adopting, changing nothing).
fn workload_entries(pins: &Path, root: &Path) -> anyhow::Result<usize> {
    Ok(Dataplane::open(pins, root)?.entry_counts()?.workloads)
}

#[test]
fn an_unknown_cgroup_below_a_guarded_root_is_pending_from_its_first_connect() -> anyhow::Result<()>
{
    let net = TestNet::new()?;
    let root = TestCgroup::new()?;
    root.child("kubepods/pod-known")?;
    root.child("kubepods/burstable")?;
    let dir = PolicyDir(std::env::temp_dir().join(names::unique("egress-policies")));
    fs::create_dir_all(&dir.0)?;
    let rel = root.relative();
    write(&dir.0, "policy.yaml", &policy(&rel))?;
    let _v4 = Listener::start(&net.server, internet(), Proto::Tcp)?;
    let _v6 = Listener::start(&net.server, cluster(PORT), Proto::Tcp)?;
    let pins = PinDir::new()?;
    let (policies, cgroup_root) = (
        dir.0.to_string_lossy().into_owned(),
        root.path().to_string_lossy().into_owned(),
    );
    let guard = format!("{rel}/kubepods");
    let mut agent = Agent::start(
        &net.client,
        pins.path(),
        &[
            "--policies",
            &policies,
            "--cgroup-root",
            &cgroup_root,
            "--guard-cgroup",
            &guard,
            "--no-nft",
        ],
    )?;
    assert!(agent.log().contains("guarded root"), "{}", agent.log());

    // A known pod has its own policy: the cluster, not the internet.
    let known = Client::in_cgroup(&net.client, &root.path().join("kubepods/pod-known"));
    assert_eq!(known.connect_tcp(cluster(PORT))?, Outcome::Ok);
    assert_eq!(known.connect_tcp(internet())?, Outcome::Eperm);
    let before = workload_entries(pins.path(), root.path())?;
    assert_eq!(before, 2, "the known pod and the guarded root");

    // A new pod: the cgroup appears and its first connect is refused.
    let created = Instant::now();
    let pod = root.child("kubepods/burstable/pod-new")?;
    let new = Client::in_cgroup(&net.client, &pod);
    let first = new.connect_tcp(internet())?;
    let first_after = created.elapsed();
    assert_eq!(
        first,
        Outcome::Eperm,
        "the internet, from the first connect"
    );
    assert_eq!(
        new.connect_tcp(cluster(PORT))?,
        Outcome::Eperm,
        "inside the cluster too: its NetworkPolicies are not known yet"
    );
    assert_eq!(
        new.sendto(cluster(53))?,
        Outcome::Ok,
        "DNS to the cluster CIDRs is the pending policy's one allowance"
    );
    assert_eq!(
        new.sendto(SocketAddr::new(IpAddr::V4(TestNet::SERVER_V4), 53))?,
        Outcome::Eperm
    );
    // A process nested deeper in the unknown pod is pending as well.
    let nested = Client::in_cgroup(&net.client, &pod).escaping_into("ctr/deeper");
    assert_eq!(nested.connect_tcp(internet())?, Outcome::Eperm);
    println!("pending: first connect {first_after:?} after mkdir was refused (EPERM)");

    // It becomes known: its real policy (not isolated: the cluster yes,
    // the internet still no, by gateway exclusivity).
    let written = Instant::now();
    write(&dir.0, "pod-new.yaml", &workload(&rel, "pod-new"))?;
    agent.wait_for_count("policy applied", 2, Duration::from_secs(10))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while new.connect_tcp(cluster(PORT))? != Outcome::Ok {
        assert!(Instant::now() < deadline, "never got its own policy");
        thread::sleep(Duration::from_millis(5));
    }
    println!(
        "pending → known: its own policy in force {:?} after the Workload was written",
        written.elapsed()
    );
    assert_eq!(new.connect_tcp(internet())?, Outcome::Eperm);
    assert_eq!(
        workload_entries(pins.path(), root.path())?,
        before + 1,
        "one entry more"
    );

    // The pod goes (object and cgroup): its entry is released.
    fs::remove_file(dir.0.join("pod-new.yaml"))?;
    agent.wait_for_count("policy applied", 3, Duration::from_secs(10))?;
    for gone in ["ctr/deeper", "ctr", ""] {
        let _ = fs::remove_dir(pod.join(gone));
    }
    assert_eq!(
        workload_entries(pins.path(), root.path())?,
        before,
        "a deleted pod leaves no entry behind"
    );
    let log = agent.log();
    assert!(!log.contains("ERROR"), "{log}");
    Ok(())
}

/// The `default/kubernetes` Service, its endpoint at the cluster address.
fn api_server() -> String {
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: kubernetes, namespace: default}}
spec: {{clusterIP: "fd00:96::1", ipFamilies: [IPv6], ports: [{{name: https, protocol: TCP, port: 443, targetPort: 6443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: kubernetes, namespace: default, labels: {{kubernetes.io/service-name: kubernetes}}}}
addressType: IPv6
endpoints: [{{addresses: ["{api}"]}}]
ports: [{{name: https, protocol: TCP, port: 6443}}]
"#,
        api = TestNet::SERVER_V6
    )
}

/// A reboot, as the enforcer sees one: the agent dies, bpffs is emptied
/// (every program detached) and the pods' cgroups go. Then, before any
/// pod starts, `egress-agent boot-guard` restores the pending policy from
/// the state the agent saved, and a pod that starts before the agent is
/// pending from its first connect; the agent then adopts the pins.
#[test]
fn after_a_reboot_the_boot_guard_holds_until_the_agent_is_back() -> anyhow::Result<()> {
    let net = TestNet::new()?;
    let root = TestCgroup::new()?;
    root.child("kubepods/pod-known")?;
    let dir = PolicyDir(std::env::temp_dir().join(names::unique("egress-policies")));
    fs::create_dir_all(&dir.0)?;
    let state_dir = PolicyDir(std::env::temp_dir().join(names::unique("egress-boot-state")));
    fs::create_dir_all(&state_dir.0)?;
    let state = state_dir.0.join("boot.json");
    let rel = root.relative();
    write(
        &dir.0,
        "policy.yaml",
        &format!("{}{}", policy(&rel), api_server()),
    )?;
    let internet_side = Listener::start(&net.server, internet(), Proto::Tcp)?;
    let _v6 = Listener::start(&net.server, cluster(PORT), Proto::Tcp)?;
    let _api = Listener::start(&net.server, cluster(6443), Proto::Tcp)?;
    let pins = PinDir::new()?;
    let (policies, cgroup_root, state_arg) = (
        dir.0.to_string_lossy().into_owned(),
        root.path().to_string_lossy().into_owned(),
        state.to_string_lossy().into_owned(),
    );
    let guard = format!("{rel}/kubepods");
    let mut agent = Agent::start(
        &net.client,
        pins.path(),
        &[
            "--policies",
            &policies,
            "--cgroup-root",
            &cgroup_root,
            "--guard-cgroup",
            &guard,
            "--boot-state",
            &state_arg,
            "--no-nft",
        ],
    )?;
    agent.wait_for_log("boot state saved", Duration::from_secs(10))?;
    let saved = fs::read_to_string(&state)?;
    assert!(saved.contains(&guard), "{saved}");
    assert!(saved.contains("6443"), "the API server's endpoint: {saved}");

    // The reboot.
    agent.kill()?;
    agent.uninstall()?;
    for dir in ["kubepods/pod-known", "kubepods"] {
        fs::remove_dir(root.path().join(dir))?;
    }
    let after_reboot = Client::in_cgroup(&net.client, root.path()).escaping_into("kubepods/pod-x");
    assert_eq!(
        after_reboot.connect_tcp(internet())?,
        Outcome::Ok,
        "with nothing pinned, nothing is enforced: the control"
    );
    // The control's own arrival, waited for (not drained): one that came
    // late would otherwise be counted against the guarded pod below.
    let arrived = internet_side.expect(1, Duration::from_secs(5));
    assert_eq!(arrived.len(), 1, "the control's connection at the far side");
    for dir in ["kubepods/pod-x", "kubepods"] {
        fs::remove_dir(root.path().join(dir))?;
    }

    // The boot: the guard, then pods, then the agent.
    let boot = boot_guard(&net, &state_arg, pins.path(), &cgroup_root)?;
    assert!(boot.contains("pending policy in force"), "{boot}");
    assert!(
        root.path().join("kubepods").is_dir(),
        "the guarded root is created for the kubelet"
    );
    let pod = root.child("kubepods/pod-known")?;
    let early = Client::in_cgroup(&net.client, &pod);
    assert_eq!(early.connect_tcp(internet())?, Outcome::Eperm);
    assert_eq!(
        early.connect_tcp(cluster(PORT))?,
        Outcome::Eperm,
        "its NetworkPolicies are not known yet"
    );
    assert_eq!(early.sendto(cluster(53))?, Outcome::Ok, "cluster DNS");
    assert_eq!(
        early.connect_tcp(cluster(6443))?,
        Outcome::Ok,
        "the API server, which a hostNetwork kube-proxy needs before the agent"
    );
    let leaked = internet_side.events(SILENCE);
    assert!(
        leaked.is_empty(),
        "the internet side received something from a guarded pod: {leaked:?}"
    );
    // Run again (a second start of the unit): the pins are left alone.
    let again = boot_guard(&net, &state_arg, pins.path(), &cgroup_root)?;
    assert!(again.contains("left in force"), "{again}");

    agent.restart()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while early.connect_tcp(cluster(PORT))? != Outcome::Ok {
        assert!(Instant::now() < deadline, "never got its own policy");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(early.connect_tcp(internet())?, Outcome::Eperm);
    agent.uninstall()?;
    Ok(())
}

/// How long the far side must stay silent to count as "received nothing".
const SILENCE: Duration = Duration::from_millis(700);

fn boot_guard(
    net: &TestNet,
    state: &str,
    pins: &Path,
    cgroup_root: &str,
) -> anyhow::Result<String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.client.name()))
        .arg(integration_tests::agent::agent_exe())
        .args([
            "boot-guard",
            "--boot-state",
            state,
            "--cgroup-root",
            cgroup_root,
        ])
        .arg("--bpffs")
        .arg(pins)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "boot-guard failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
