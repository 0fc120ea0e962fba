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
