//! A simulated Kubernetes node, built from policy files: one network
//! namespace per pod on the node's bridge, a forwarding node namespace, a
//! gateway pod with its own uplink, an "internet" serving the seed hosts
//! over HTTP and TLS, the workloads' cgroups, and a real DNS server for
//! kube-dns.
//!
//! ```text
//!  pod netns (one per Workload with addresses)
//!    eth0 10.244.2.10/32, default via 169.254.1.1 / fe80::1
//!     │ veth
//!  node netns (forwards)
//!    cni0: bridge of the pods' veths; 169.254.1.1/32, fe80::1/64
//!          route 10.244.2.10/32 dev cni0 (one per pod address)
//!    lo: 10.244.0.1/32, the node's own address inside the cluster
//!    eth0 198.51.100.1/25, default via 198.51.100.2
//!     │
//!  internet netns                       gateway pod (an EgressGateway's)
//!    eth0 198.51.100.2/25                 eth0 on cni0 (cluster CIDRs)
//!    gwuN 198.51.100.129 ───────────────  uplink 198.51.100.130+N/32, default
//!    local 203.0.113.0/24: nginx on 80 and 443 (every seed host), probes
//! ```
//!
//! Pods have host addresses and reach everything through the bridge's
//! address, which the node owns: like kubenet's `cbr0`, but routed per
//! address, so pods may have any addresses a policy gives them. The node
//! routes each pod address onto the bridge. The egress gateway's pod also
//! has an uplink of its own straight into the internet, as egress gateways
//! on dedicated nodes do; cluster CIDRs still go through the node. The
//! internet answers every address of 203.0.113.0/24 (and
//! 2001:db8:113::/64): each seed host ([`SimNode::SEED_HOSTS`]) and each
//! DNS name of an EgressGateway's `allowedHosts` gets one of them, starting
//! at [`SimNode::INTERNET_V4`], and nginx serves them all ([`crate::internet`]).
//!
//! Rules the fixture applies to the policy's Workloads:
//! - A Workload with `addresses` is a pod: it gets a network namespace of
//!   its own, with those addresses, and a process that holds it in the
//!   Workload's cgroup for the node's life (`sleep infinity`, as the
//!   kubelet's pause container does), by which the agent finds the pod's
//!   port on the bridge.
//! - A Workload without addresses (a sidecar such as
//!   `default/sleep-istio-proxy`) joins the pod of the Workload in the same
//!   namespace that has addresses and the same `app` label (the first one,
//!   in file order). When there is none, it gets a namespace of its own
//!   with only loopback.
//! - Every Workload's cgroup is created below the node's own cgroup root:
//!   `spec.cgroup` (relative to the cgroup2 mount, or absolute) becomes
//!   `<root>/pods/<spec.cgroup>`. The fixture writes a copy of the policy
//!   files that says so ([`SimNode::policies_dir`]); that copy is what an
//!   agent must read, with `--cgroup-root` [`SimNode::cgroup_root`], so that
//!   its programs attach to this node alone and two nodes can coexist.
//! - The DNS server is `dnsmasq`, run in the pod of the first Workload that
//!   declares port 53/UDP (else one labelled `k8s-app: kube-dns`), inside
//!   that Workload's cgroup and bound to its first address. Without such a
//!   Workload it runs on the node, on 127.0.0.1:53.
//! - The node has an address of its own inside the first IPv4 cluster CIDR
//!   (the lowest that no Workload uses, like Calico's tunnel address), and
//!   uses it as the source towards pods. Replies that pods send to the node
//!   then stay inside the cluster.
//!
//! Everything is removed on drop, in order: processes in the node's cgroups
//! are killed, the bpffs pin directory reserved for an agent is
//! uninstalled, the cgroups removed, then the namespaces (which takes their
//! veths, routes and nft tables with them), then the scratch directory.
//! Names are unique per process ([`names`]), and what a killed run left
//! behind is swept by the next fixture.

use std::{
    collections::BTreeMap,
    ffi::{CString, OsStr},
    fmt::Write as _,
    fs,
    io::{self, BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use egress_agent::dataplane::cgroup_relative;
use egress_agent::{
    compile::{self, Plan, WorkloadPlan},
    dataplane::{nft::Backstop, nft::BackstopCounts, Dataplane},
    resolve::dns_names,
};
use egress_policy::{
    model::{Model, ObjectId},
    ports::Protocol,
};
use ipnet::IpNet;

use crate::{
    internet::WebServer,
    names,
    nftns::{in_netns, sysctl},
    probe::{probe_exe, Client, Proto},
    Netns,
};

/// A simulated node built from policy files; see the module doc. Needs
/// root, cgroup v2, `ip`, `nsenter` and `dnsmasq`.
///
/// ```no_run
/// use integration_tests::{node::SimNode, Outcome};
///
/// let sim = SimNode::new(&["policies".into()])?;
/// let sleep = sim.client(&"test-egress/sleep".parse().map_err(anyhow::Error::msg)?);
/// // No agent runs on it yet: the internet is reachable.
/// let edition = sim.host_address("edition.cnn.com").unwrap();
/// assert_eq!(sleep.unwrap().connect_tcp((edition, 443).into())?, Outcome::Ok);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub struct SimNode {
    model: Model,
    plan: Plan,
    scratch: PathBuf,
    cgroup_root: PathBuf,
    node_cgroup: PathBuf,
    fixture_cgroup: PathBuf,
    pin_dir: PathBuf,
    node_cluster_v4: Option<Ipv4Addr>,
    node_cluster_v6: Option<Ipv6Addr>,
    // Created one by one; whatever exists is removed by `Drop`.
    node: Option<Netns>,
    internet: Option<Netns>,
    pods: Vec<Pod>,
    workloads: Vec<SimWorkload>,
    dns: Option<DnsServer>,
    dnsmasq: Option<Child>,
    /// One per pod with addresses: its "pause" process.
    pauses: Vec<Child>,
    web: Option<WebServer>,
    torn_down: bool,
}

/// One pod: a network namespace and the Workloads that live in it.
#[derive(Debug)]
pub struct Pod {
    pub netns: Netns,
    /// The pod's addresses (those of its Workload that has some).
    pub addresses: Vec<IpAddr>,
    /// The node's end of the pod's veth; `None` for a loopback-only pod.
    pub node_if: Option<String>,
    /// A gateway pod's addresses on its own uplink into the internet (what
    /// the internet sees as its client address); empty for other pods.
    pub uplink: Vec<IpAddr>,
    /// Its Workloads, the one with the addresses first.
    pub workloads: Vec<ObjectId>,
}

/// Where a Workload of the policy lives on the node.
#[derive(Clone, Debug)]
pub struct SimWorkload {
    pub id: ObjectId,
    /// Its cgroup v2 directory (created by the fixture).
    pub cgroup: PathBuf,
    /// Index into [`SimNode::pods`].
    pub pod: usize,
}

/// The node's DNS server and the records it serves.
#[derive(Clone, Debug)]
pub struct DnsServer {
    pub address: SocketAddr,
    /// The Workload it runs as, if any (else it runs on the node).
    pub workload: Option<ObjectId>,
    /// Every `allowedHosts` DNS name, with the internet addresses it
    /// resolves to.
    pub records: BTreeMap<String, Vec<IpAddr>>,
}

/// What [`SimNode::teardown`] removed, and anything it could not.
#[derive(Debug, Default)]
pub struct Teardown {
    pub removed: Vec<String>,
    pub left_behind: Vec<String>,
}

/// What a [`SimNode::curl`] got.
#[derive(Clone, Debug)]
pub struct Curl {
    /// curl's exit code (7: could not connect; 28: timed out).
    pub exit: Option<i32>,
    /// The HTTP status, when a response came.
    pub status: Option<u16>,
    pub body: String,
    /// curl's error lines, e.g. "Immediate connect fail for 203.0.113.10:
    /// Operation not permitted; curl: (7) Failed to connect …".
    pub error: String,
}

impl Curl {
    /// Whether the site answered 200.
    pub fn ok(&self) -> bool {
        self.exit == Some(0) && self.status == Some(200)
    }

    /// Whether the connection was refused with EPERM by the kernel.
    pub fn refused_eperm(&self) -> bool {
        self.exit == Some(7) && self.error.contains("Operation not permitted")
    }
}

/// A listener started by [`SimNode::listen`]; killed on drop.
pub struct Served {
    child: Child,
    lines: Receiver<String>,
    addr: SocketAddr,
}

impl Served {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer of the next connection or datagram, if one arrives within
    /// `within`.
    pub fn next_peer(&self, within: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            let mut words = line.split_whitespace();
            if let (Some("ACCEPTED" | "RECEIVED"), Some(peer)) = (words.next(), words.next()) {
                if let Ok(peer) = peer.parse() {
                    return Some(peer);
                }
            }
        }
    }

    /// Forgets what arrived so far.
    pub fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SimNode {
    /// The first internet address; the first `allowedHosts` name gets it.
    pub const INTERNET_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    pub const INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x10);
    /// Every address of these answers in the internet namespace.
    pub const INTERNET_NET_V4: &str = "203.0.113.0/24";
    pub const INTERNET_NET_V6: &str = "2001:db8:113::/64";
    /// The sites the internet always serves (the seed docs' hosts), besides
    /// every `allowedHosts` name.
    pub const SEED_HOSTS: [&str; 2] = ["edition.cnn.com", "httpbin.org"];
    /// The node's uplink and the internet's end of it.
    pub const UPLINK_NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    pub const UPLINK_INTERNET_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    pub const UPLINK_NODE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    pub const UPLINK_INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    /// The internet's end of every gateway pod's own uplink, and the first
    /// gateway pod's address on it (the next ones count up).
    pub const GATEWAY_UPLINK_PEER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 129);
    pub const GATEWAY_UPLINK_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 130);
    pub const GATEWAY_UPLINK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
    /// The bridge's name in the node namespace.
    pub const BRIDGE: &str = "cni0";
    /// The bridge's MAC address: where pods send what the node routes.
    pub const BRIDGE_MAC: &str = "02:00:a9:fe:01:01";
    /// The pods' next hop: the bridge's addresses, owned by the node.
    pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
    pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    /// TTL of the DNS answers, short so that resolvers re-ask often.
    pub const DNS_TTL: u32 = 5;

    /// Builds the node for the policy files or directories `policies`.
    pub fn new(policies: &[PathBuf]) -> anyhow::Result<Self> {
        let mount = egress_agent::sys::cgroup2_mount().context("finding the cgroup2 mount")?;
        let bpffs = egress_agent::sys::bpffs_mount().context("finding the bpffs mount")?;
        let original = load(policies)?;
        let base = names::unique(names::NETNS_PREFIX);
        let root_name = names::unique(names::CGROUP_PREFIX);
        sweep_stale_scratch();
        let scratch = std::env::temp_dir().join(&root_name);
        let cgroup_root = mount.join(&root_name);
        let mut node = Self {
            model: original.clone(),
            plan: compile::compile(&original),
            scratch,
            node_cgroup: cgroup_root.join("node"),
            fixture_cgroup: cgroup_root.join("fixture"),
            cgroup_root,
            pin_dir: bpffs.join(names::unique(names::PIN_PREFIX)),
            node_cluster_v4: None,
            node_cluster_v6: None,
            node: None,
            internet: None,
            pods: Vec::new(),
            workloads: Vec::new(),
            dns: None,
            dnsmasq: None,
            pauses: Vec::new(),
            web: None,
            torn_down: false,
        };
        node.build(policies, &mount, &root_name, &base)?;
        Ok(node)
    }

    fn build(
        &mut self,
        policies: &[PathBuf],
        mount: &Path,
        root_name: &str,
        base: &str,
    ) -> anyhow::Result<()> {
        // The copy of the policies that the node's agent reads.
        let copy = self.scratch.join("policies");
        fs::create_dir_all(&copy).with_context(|| format!("creating {}", copy.display()))?;
        rebase_policies(policies, &copy, mount, &format!("{root_name}/pods"))?;
        self.model = load(&[copy])?;
        self.plan = compile::compile(&self.model);

        fs::create_dir(&self.cgroup_root)
            .with_context(|| format!("creating {}", self.cgroup_root.display()))?;
        for dir in [&self.node_cgroup, &self.fixture_cgroup] {
            fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        }

        self.choose_node_addresses();
        let node = Netns::new(format!("{base}-node"))?;
        self.node = Some(node);
        let internet = Netns::new(format!("{base}-internet"))?;
        self.internet = Some(internet);
        self.wire_node_and_internet()
            .context("wiring the node and the internet")?;
        self.place_workloads(mount, base)?;
        self.start_dns()?;
        self.start_web()?;
        Ok(())
    }

    fn start_web(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.dns().records.keys().cloned().collect();
        let fixture = self.fixture_cgroup.clone();
        let web = WebServer::start(
            &self.scratch.join("internet"),
            &names,
            self.internet(),
            IpAddr::V4(Self::INTERNET_V4),
            |ns| {
                let mut cmd = nsenter(ns, "nginx");
                enter_cgroup_on_spawn(&mut cmd, &fixture)?;
                Ok(cmd)
            },
        )
        .context("starting the internet's web sites")?;
        self.web = Some(web);
        Ok(())
    }

    /// The validated model of the rebased policies.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The compiled plan of the rebased policies: what an agent that reads
    /// [`Self::policies_dir`] programs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The copy of the policy files with the cgroups rebased.
    pub fn policies_dir(&self) -> PathBuf {
        self.scratch.join("policies")
    }

    /// A directory for logs, removed with the node.
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch
    }

    /// The node's cgroup root: attach the agent's programs here.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// The cgroup of the node's own processes (the agent): below the root,
    /// in no Workload.
    pub fn node_cgroup(&self) -> &Path {
        &self.node_cgroup
    }

    /// A bpffs directory reserved for this node's agent (not created);
    /// whatever is pinned there is uninstalled on drop.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn node(&self) -> &Netns {
        self.node.as_ref().expect("built")
    }

    pub fn internet(&self) -> &Netns {
        self.internet.as_ref().expect("built")
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn workloads(&self) -> &[SimWorkload] {
        &self.workloads
    }

    pub fn workload(&self, id: &ObjectId) -> Option<&SimWorkload> {
        self.workloads.iter().find(|w| &w.id == id)
    }

    /// The plan of one Workload.
    pub fn workload_plan(&self, id: &ObjectId) -> Option<&WorkloadPlan> {
        self.plan.workload(id)
    }

    /// The pod a Workload lives in.
    pub fn pod_of(&self, id: &ObjectId) -> Option<&Pod> {
        self.workload(id).map(|w| &self.pods[w.pod])
    }

    /// A probe client in the Workload's cgroup and pod.
    pub fn client(&self, id: &ObjectId) -> Option<Client<'_>> {
        let w = self.workload(id)?;
        Some(Client::in_cgroup(&self.pods[w.pod].netns, &w.cgroup))
    }

    /// Adds a Workload to the pod of `beside` after the node was built, as
    /// injecting a container would, and creates its cgroup. `cgroup` is its
    /// `spec.cgroup` as a user writes it; the returned spelling is the
    /// rebased one, for a policy written into [`Self::policies_dir`].
    pub fn add_workload(
        &mut self,
        id: ObjectId,
        cgroup: &str,
        beside: &ObjectId,
    ) -> anyhow::Result<String> {
        let pod = self
            .workload(beside)
            .map(|w| w.pod)
            .ok_or_else(|| anyhow!("no Workload {beside} on this node"))?;
        let mount = egress_agent::sys::cgroup2_mount().context("finding the cgroup2 mount")?;
        let root = cgroup_relative(&mount, &self.cgroup_root.display().to_string());
        let rebased = format!("{root}/pods/{}", cgroup_relative(&mount, cgroup));
        let dir = mount.join(&rebased);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        self.pods[pod].workloads.push(id.clone());
        self.workloads.push(SimWorkload {
            id,
            cgroup: dir,
            pod,
        });
        Ok(rebased)
    }

    /// The node's DNS server.
    pub fn dns(&self) -> &DnsServer {
        self.dns.as_ref().expect("built")
    }

    /// The internet's web sites (nginx on ports 80 and 443 of every
    /// internet address).
    pub fn web(&self) -> &WebServer {
        self.web.as_ref().expect("built")
    }

    /// The internet address a DNS name resolves to here (its first).
    pub fn host_address(&self, name: &str) -> Option<IpAddr> {
        self.dns().records.get(name)?.first().copied()
    }

    /// The node's own address inside the cluster, if it has one.
    pub fn node_cluster_address(&self) -> Option<Ipv4Addr> {
        self.node_cluster_v4
    }

    /// `nsenter --net=<node> <program>`, started in the node's cgroup: how
    /// a hostNetwork DaemonSet such as the agent runs.
    pub fn node_command(&self, program: impl AsRef<OsStr>) -> anyhow::Result<Command> {
        let mut cmd = nsenter(self.node(), program);
        enter_cgroup_on_spawn(&mut cmd, &self.node_cgroup)?;
        Ok(cmd)
    }

    /// `nsenter --net=<pod> <program>`, started in the Workload's cgroup.
    pub fn workload_command(
        &self,
        id: &ObjectId,
        program: impl AsRef<OsStr>,
    ) -> anyhow::Result<Command> {
        let w = self
            .workload(id)
            .ok_or_else(|| anyhow!("no Workload {id} on this node"))?;
        let mut cmd = nsenter(&self.pods[w.pod].netns, program);
        enter_cgroup_on_spawn(&mut cmd, &w.cgroup)?;
        Ok(cmd)
    }

    /// `program` run in the Workload's cgroup and pod as a container would
    /// run it: with a `/etc/resolv.conf` that names the node's DNS server
    /// (bind-mounted in a mount namespace of its own), so that names such
    /// as `edition.cnn.com` resolve through kube-dns.
    pub fn pod_command(&self, id: &ObjectId, program: &str) -> anyhow::Result<Command> {
        self.pod_command_resolving_with(id, program, self.dns().address.ip())
    }

    /// [`Self::pod_command`] with `nameserver` in its resolv.conf: a
    /// kube-dns Service address, as the kubelet's `--cluster-dns` sets it.
    pub fn pod_command_resolving_with(
        &self,
        id: &ObjectId,
        program: &str,
        dns: IpAddr,
    ) -> anyhow::Result<Command> {
        let resolv = self.scratch.join(format!("resolv-{dns}.conf"));
        if !resolv.exists() {
            fs::write(
                &resolv,
                format!("nameserver {dns}\noptions timeout:2 attempts:2\n"),
            )
            .with_context(|| format!("writing {}", resolv.display()))?;
        }
        let mut cmd = self.workload_command(id, "unshare")?;
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
            .arg(&resolv)
            .arg(program);
        Ok(cmd)
    }

    /// `curl` from the Workload's pod (see [`Self::pod_command`]), trusting
    /// the internet's certificate; never waits more than a few seconds.
    /// Names resolve through the node's DNS server when it runs in a pod.
    pub fn curl(&self, id: &ObjectId, url: &str) -> anyhow::Result<Curl> {
        let output = self
            .pod_command(id, "curl")?
            // --verbose: curl's own error line hides errno; its trace says
            // "Immediate connect fail for …: Operation not permitted".
            .args(["--silent", "--show-error", "--verbose"])
            .args(["--connect-timeout", "3", "--max-time", "5"])
            .arg("--cacert")
            .arg(self.web().ca_certificate())
            .args(["--write-out", "\n%{http_code}"])
            .args(self.pinned_names())
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .context("running curl")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let trace = String::from_utf8_lossy(&output.stderr);
        let error = trace
            .lines()
            .filter(|l| l.starts_with("curl: ") || l.contains("connect fail"))
            .map(|l| l.trim_start_matches("* ").trim())
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Curl {
            exit: output.status.code(),
            status: code.trim().parse().ok().filter(|c| *c != 0),
            body: body.to_owned(),
            error,
        })
    }

    /// `--resolve` arguments for every record, when pods have no DNS server
    /// they can reach (it runs on the node's loopback): curl then skips the
    /// lookup and still sends the right Host and SNI.
    fn pinned_names(&self) -> Vec<String> {
        let dns = self.dns();
        if dns.workload.is_some() {
            return Vec::new();
        }
        let mut args = Vec::new();
        for (name, addrs) in &dns.records {
            let addrs: Vec<String> = addrs
                .iter()
                .map(|a| match a {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                })
                .collect();
            for port in [crate::internet::HTTP_PORT, crate::internet::HTTPS_PORT] {
                args.push("--resolve".to_owned());
                args.push(format!("{name}:{port}:{}", addrs.join(",")));
            }
        }
        args
    }

    /// Starts an `egress-probe` listener on `addr` in `netns` (one of this
    /// node's), in the node's cgroup for fixture processes, and waits until
    /// it is bound. Being in the node's cgroups, it dies with the node even
    /// when this process is killed outright.
    pub fn listen(&self, netns: &Netns, addr: SocketAddr, proto: Proto) -> anyhow::Result<Served> {
        let suffix = match proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        let mut child = Command::new(probe_exe())
            .arg("--cgroup")
            .arg(&self.fixture_cgroup)
            .args(["--netns", netns.name(), "listen"])
            .arg(format!("{addr}/{suffix}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting an egress-probe listener")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let served = Served { child, lines, addr };
        match served.lines.recv_timeout(Duration::from_secs(5)) {
            Ok(line) if line.starts_with("LISTENING") => Ok(served),
            Ok(line) => bail!("listener on {addr} said {line:?} instead of LISTENING"),
            Err(_) => bail!("listener on {addr} in {} did not start", netns.name()),
        }
    }

    /// The nftables backstop's counters in the node namespace (fails when
    /// no agent installed the table).
    pub fn backstop_counters(&self) -> anyhow::Result<BackstopCounts> {
        Ok(in_netns(self.node(), || Backstop::new().counters())??)
    }

    /// Whether the node namespace has the backstop's table.
    pub fn has_backstop_table(&self) -> bool {
        self.backstop_counters().is_ok()
    }

    fn choose_node_addresses(&mut self) {
        let used: Vec<IpAddr> = self
            .plan
            .workloads
            .iter()
            .flat_map(|w| w.addresses.iter().copied())
            .collect();
        // Prefer the CIDRs that hold pods (the pod CIDR, not the services').
        let mut cidrs = self.plan.node.cluster_cidrs.clone();
        cidrs.sort_by_key(|c| !used.iter().any(|a| c.contains(a)));
        self.node_cluster_v4 = cidrs.iter().find_map(|c| match c {
            IpNet::V4(net) => net
                .hosts()
                .take(1024)
                .find(|a| !used.contains(&IpAddr::V4(*a))),
            IpNet::V6(_) => None,
        });
        self.node_cluster_v6 = cidrs.iter().find_map(|c| match c {
            IpNet::V6(net) => net
                .hosts()
                .skip(1)
                .take(1024)
                .find(|a| !used.contains(&IpAddr::V6(*a))),
            IpNet::V4(_) => None,
        });
    }

    fn wire_node_and_internet(&self) -> anyhow::Result<()> {
        let (node, internet) = (self.node(), self.internet());
        for ns in [node, internet] {
            no_dad(ns)?;
            ns.ip(&["link", "set", "lo", "up"])?;
        }
        sysctl(node, "net.ipv4.ip_forward", "1")?;
        sysctl(node, "net.ipv6.conf.all.forwarding", "1")?;
        if let Some(a) = self.node_cluster_v4 {
            node.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
        }
        if let Some(a) = self.node_cluster_v6 {
            node.ip(&["-6", "addr", "add", &format!("{a}/128"), "dev", "lo"])?;
        }
        // The uplink: created in the node with its peer placed directly in
        // the internet, so neither end ever exists in the root namespace.
        node.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            internet.name(),
        ])?;
        for (ns, v4, v6) in [
            (node, Self::UPLINK_NODE_V4, Self::UPLINK_NODE_V6),
            (internet, Self::UPLINK_INTERNET_V4, Self::UPLINK_INTERNET_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/25"), "dev", "eth0"])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
        }
        // The node's default route is its uplink.
        let up4 = Self::UPLINK_INTERNET_V4.to_string();
        let up6 = Self::UPLINK_INTERNET_V6.to_string();
        node.ip(&["route", "add", "default", "via", &up4])?;
        node.ip(&["-6", "route", "add", "default", "via", &up6])?;
        // The internet answers every address of its ranges (AnyIP), and
        // its servers may bind any one of them (IPv6 wants leave for that).
        sysctl(internet, "net.ipv6.ip_nonlocal_bind", "1")?;
        internet.ip(&["route", "add", "local", Self::INTERNET_NET_V4, "dev", "lo"])?;
        internet.ip(&[
            "-6",
            "route",
            "add",
            "local",
            Self::INTERNET_NET_V6,
            "dev",
            "lo",
        ])?;
        // Its way back to the cluster.
        let node4 = Self::UPLINK_NODE_V4.to_string();
        let node6 = Self::UPLINK_NODE_V6.to_string();
        for net in self.return_routes() {
            let (family, via) = match net {
                IpNet::V4(_) => ("-4", &node4),
                IpNet::V6(_) => ("-6", &node6),
            };
            internet.ip(&[family, "route", "replace", &net.to_string(), "via", via])?;
        }
        // The pods' bridge. Without STP its ports forward as soon as they
        // are up; a fixed MAC keeps the pods' neighbour entries valid as
        // ports join.
        node.ip(&[
            "link",
            "add",
            Self::BRIDGE,
            "address",
            Self::BRIDGE_MAC,
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        node.ip(&[
            "addr",
            "add",
            &format!("{}/32", Self::POD_GATEWAY_V4),
            "dev",
            Self::BRIDGE,
        ])?;
        node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", Self::POD_GATEWAY_V6),
            "dev",
            Self::BRIDGE,
            "nodad",
        ])?;
        node.ip(&["link", "set", Self::BRIDGE, "up"])?;
        Ok(())
    }

    /// The cluster CIDRs, plus every pod address they do not cover.
    fn return_routes(&self) -> Vec<IpNet> {
        let cidrs = &self.plan.node.cluster_cidrs;
        let mut routes = cidrs.clone();
        for w in &self.plan.workloads {
            for a in &w.addresses {
                if !cidrs.iter().any(|c| c.contains(a)) {
                    routes.push(IpNet::from(*a));
                }
            }
        }
        routes
    }

    fn place_workloads(&mut self, mount: &Path, base: &str) -> anyhow::Result<()> {
        let workloads = self.plan.workloads.clone();
        // Pods first: every Workload with addresses.
        for w in workloads.iter().filter(|w| !w.addresses.is_empty()) {
            let index = self.pods.len();
            let netns = Netns::new(format!("{base}-{}", netns_suffix(&w.id)))?;
            let node_if = format!("veth{index}");
            self.pods.push(Pod {
                netns,
                addresses: w.addresses.clone(),
                node_if: Some(node_if),
                uplink: Vec::new(),
                workloads: vec![w.id.clone()],
            });
            self.wire_pod(index)
                .with_context(|| format!("wiring the pod of {}", w.id))?;
            if w.gateway.is_some() {
                self.wire_uplink(index)
                    .with_context(|| format!("wiring the uplink of {}", w.id))?;
            }
        }
        // Then the rest, in the pod of their app (see the module doc).
        for w in workloads.iter().filter(|w| w.addresses.is_empty()) {
            let host = self.model.workload(&w.id).and_then(|m| {
                let app = m.labels.get("app")?;
                self.pods.iter().position(|pod| {
                    let owner = &pod.workloads[0];
                    owner.namespace == w.id.namespace
                        && self
                            .model
                            .workload(owner)
                            .is_some_and(|o| o.labels.get("app") == Some(app))
                })
            });
            match host {
                Some(index) => self.pods[index].workloads.push(w.id.clone()),
                None => {
                    let netns = Netns::new(format!("{base}-{}", netns_suffix(&w.id)))?;
                    netns.ip(&["link", "set", "lo", "up"])?;
                    self.pods.push(Pod {
                        netns,
                        addresses: Vec::new(),
                        node_if: None,
                        uplink: Vec::new(),
                        workloads: vec![w.id.clone()],
                    });
                }
            }
        }
        for w in &workloads {
            let cgroup = mount.join(cgroup_relative(mount, &w.cgroup));
            fs::create_dir_all(&cgroup)
                .with_context(|| format!("creating {}", cgroup.display()))?;
            let pod = self
                .pods
                .iter()
                .position(|p| p.workloads.contains(&w.id))
                .expect("every workload was placed");
            self.workloads.push(SimWorkload {
                id: w.id.clone(),
                cgroup,
                pod,
            });
        }
        for owner in self
            .pods
            .iter()
            .filter(|p| !p.addresses.is_empty())
            .map(|p| p.workloads[0].clone())
            .collect::<Vec<_>>()
        {
            let pause = self
                .workload_command(&owner, "sleep")?
                .arg("infinity")
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting the pause process of {owner}"))?;
            self.pauses.push(pause);
        }
        Ok(())
    }

    fn wire_pod(&self, index: usize) -> anyhow::Result<()> {
        let node = self.node();
        let pod = &self.pods[index];
        let node_if = pod.node_if.as_deref().expect("a pod with addresses");
        no_dad(&pod.netns)?;
        pod.netns.ip(&["link", "set", "lo", "up"])?;
        node.ip(&[
            "link",
            "add",
            node_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.netns.name(),
        ])?;
        node.ip(&["link", "set", node_if, "master", Self::BRIDGE, "up"])?;
        pod.netns.ip(&["link", "set", "eth0", "up"])?;
        let gw4 = Self::POD_GATEWAY_V4.to_string();
        let gw6 = Self::POD_GATEWAY_V6.to_string();
        pod.netns
            .ip(&["route", "add", &gw4, "dev", "eth0", "scope", "link"])?;
        pod.netns
            .ip(&["route", "add", "default", "via", &gw4, "dev", "eth0"])?;
        pod.netns
            .ip(&["-6", "route", "add", "default", "via", &gw6, "dev", "eth0"])?;
        for addr in &pod.addresses {
            let host = IpNet::from(*addr).to_string();
            let (family, extra, src) = match addr {
                IpAddr::V4(_) => ("-4", None, self.node_cluster_v4.map(IpAddr::V4)),
                IpAddr::V6(_) => ("-6", Some("nodad"), self.node_cluster_v6.map(IpAddr::V6)),
            };
            let mut add = vec![family, "addr", "add", &host, "dev", "eth0"];
            add.extend(extra);
            pod.netns.ip(&add)?;
            let src = src.map(|s| s.to_string());
            let mut route = vec![family, "route", "add", &host, "dev", Self::BRIDGE];
            if let Some(src) = &src {
                route.extend(["src", src.as_str()]);
            }
            node.ip(&route)?;
        }
        Ok(())
    }

    /// Gives the gateway pod `index` a veth straight into the internet and
    /// makes it its default route; cluster CIDRs stay on the bridge.
    fn wire_uplink(&mut self, index: usize) -> anyhow::Result<()> {
        let nth = self.pods.iter().filter(|p| !p.uplink.is_empty()).count();
        let n8 = u8::try_from(nth).context("too many gateway pods")?;
        let [a, b, c, d] = Self::GATEWAY_UPLINK_V4.octets();
        let v4 = Ipv4Addr::new(a, b, c, d.saturating_add(n8));
        let v6 = Ipv6Addr::from(u128::from(Self::GATEWAY_UPLINK_V6) + u128::from(n8));
        let peer_if = format!("gwu{nth}");
        let (internet, pod) = (self.internet(), &self.pods[index].netns);
        pod.ip(&[
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
            "netns",
            internet.name(),
        ])?;
        let peer4 = Self::GATEWAY_UPLINK_PEER_V4.to_string();
        let peer6 = Self::POD_GATEWAY_V6.to_string();
        internet.ip(&["addr", "add", &format!("{peer4}/32"), "dev", &peer_if])?;
        internet.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{peer6}/64"),
            "dev",
            &peer_if,
            "nodad",
        ])?;
        internet.ip(&["link", "set", &peer_if, "up"])?;
        internet.ip(&["route", "add", &format!("{v4}/32"), "dev", &peer_if])?;
        internet.ip(&["-6", "route", "add", &format!("{v6}/128"), "dev", &peer_if])?;
        pod.ip(&["addr", "add", &format!("{v4}/32"), "dev", "uplink"])?;
        pod.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            "uplink",
            "nodad",
        ])?;
        pod.ip(&["link", "set", "uplink", "up"])?;
        pod.ip(&["route", "add", &peer4, "dev", "uplink", "scope", "link"])?;
        let gw4 = Self::POD_GATEWAY_V4.to_string();
        let gw6 = Self::POD_GATEWAY_V6.to_string();
        for net in self.return_routes() {
            let (family, via) = match net {
                IpNet::V4(_) => ("-4", &gw4),
                IpNet::V6(_) => ("-6", &gw6),
            };
            let net = net.to_string();
            pod.ip(&[family, "route", "add", &net, "via", via, "dev", "eth0"])?;
        }
        pod.ip(&[
            "route", "replace", "default", "via", &peer4, "dev", "uplink",
        ])?;
        pod.ip(&[
            "-6", "route", "replace", "default", "via", &peer6, "dev", "uplink",
        ])?;
        self.pods[index].uplink = vec![IpAddr::V4(v4), IpAddr::V6(v6)];
        Ok(())
    }

    fn start_dns(&mut self) -> anyhow::Result<()> {
        let mut names = dns_names(&self.plan);
        names.extend(Self::SEED_HOSTS.map(str::to_owned));
        let records: BTreeMap<String, Vec<IpAddr>> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let i = u8::try_from(i).unwrap_or(u8::MAX);
                let [a, b, c, d] = Self::INTERNET_V4.octets();
                let v4 = Ipv4Addr::new(a, b, c, d.saturating_add(i));
                let v6 = Ipv6Addr::from(u128::from(Self::INTERNET_V6) + u128::from(i));
                (name, vec![IpAddr::V4(v4), IpAddr::V6(v6)])
            })
            .collect();
        let server = self
            .plan
            .workloads
            .iter()
            .find(|w| is_dns_server(&self.model, w));
        let (address, workload) = match server {
            Some(w) => (SocketAddr::new(w.addresses[0], 53), Some(w.id.clone())),
            None => (SocketAddr::from((Ipv4Addr::LOCALHOST, 53)), None),
        };
        let mut cmd = match &workload {
            Some(id) => self.workload_command(id, "dnsmasq")?,
            None => self.node_command("dnsmasq")?,
        };
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--user=root",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--log-facility=-",
            "--log-queries",
        ])
        .arg(format!("--listen-address={}", address.ip()))
        .arg(format!("--port={}", address.port()))
        .arg(format!("--local-ttl={}", Self::DNS_TTL));
        for (name, addrs) in &records {
            for a in addrs {
                cmd.arg(format!("--address=/{name}/{a}"));
            }
        }
        let log = self.scratch.join("dnsmasq.log");
        let log = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .context("starting dnsmasq (apt package dnsmasq-base; run `cargo xtask setup`)")?;
        self.dnsmasq = Some(child);
        self.dns = Some(DnsServer {
            address,
            workload,
            records,
        });
        self.wait_for_dns()
    }

    /// Asks the DNS server from the node until it answers.
    fn wait_for_dns(&mut self) -> anyhow::Result<()> {
        let dns = self.dns().clone();
        let name = dns
            .records
            .keys()
            .next()
            .cloned()
            .unwrap_or_else(|| "ready.invalid".to_owned());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = in_netns(self.node(), || {
                dns::query(
                    dns.address,
                    &name,
                    dns::RecordType::A,
                    Duration::from_millis(200),
                )
            })?;
            // NXDOMAIN is an answer too: the server is up.
            if answer.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.dnsmasq.as_mut() {
                if let Some(status) = child.try_wait()? {
                    let log =
                        fs::read_to_string(self.scratch.join("dnsmasq.log")).unwrap_or_default();
                    bail!("dnsmasq exited ({status}):\n{log}");
                }
            }
            if Instant::now() > deadline {
                bail!("dnsmasq on {} does not answer", dns.address);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes everything, in order, and reports what was removed and what
    /// (if anything) is still there. Drop does the same, silently.
    pub fn teardown(mut self) -> Teardown {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Teardown {
        let mut report = Teardown::default();
        if self.torn_down {
            return report;
        }
        self.torn_down = true;
        // 1. Processes: dnsmasq, then everything else in the node's
        //    cgroups (the agent, probes), at once.
        self.web.take();
        for mut child in self.dnsmasq.take().into_iter().chain(self.pauses.drain(..)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.cgroup_root.exists() {
            let _ = fs::write(self.cgroup_root.join("cgroup.kill"), "1");
            wait_unpopulated(&self.cgroup_root, Duration::from_secs(5));
        }
        // 2. What an agent pinned: links (detaching its programs) and maps.
        if self.pin_dir.exists() {
            match Dataplane::uninstall(&self.pin_dir) {
                Ok(_) => report
                    .removed
                    .push(format!("bpffs pins under {}", self.pin_dir.display())),
                Err(err) => report.left_behind.push(format!(
                    "bpffs pins under {}: {err}",
                    self.pin_dir.display()
                )),
            }
        }
        // 3. Cgroups.
        if self.cgroup_root.exists() {
            let count = count_dirs(&self.cgroup_root);
            crate::cgroup::remove(&self.cgroup_root);
            report.removed.push(format!(
                "{count} cgroups under {}",
                self.cgroup_root.display()
            ));
        }
        // 4. Namespaces, with their veths, routes and nft tables.
        let mut netns: Vec<Netns> = self.pods.drain(..).map(|p| p.netns).collect();
        netns.extend(self.internet.take());
        netns.extend(self.node.take());
        let names: Vec<String> = netns.iter().map(|n| n.name().to_owned()).collect();
        drop(netns);
        if !names.is_empty() {
            report.removed.push(format!(
                "{} network namespaces ({}-*)",
                names.len(),
                common_prefix(&names)
            ));
        }
        // 5. Scratch files.
        let _ = fs::remove_dir_all(&self.scratch);

        for name in &names {
            if Path::new("/run/netns").join(name).exists() {
                report.left_behind.push(format!("netns {name}"));
            }
        }
        for path in [&self.cgroup_root, &self.pin_dir, &self.scratch] {
            if path.exists() {
                report.left_behind.push(path.display().to_string());
            }
        }
        report
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        let report = self.teardown_inner();
        for what in report.left_behind {
            eprintln!("warning: SimNode left behind {what}");
        }
    }
}

/// Loads policies, turning a rejection into one error listing every
/// finding.
fn load(paths: &[PathBuf]) -> anyhow::Result<Model> {
    match egress_policy::load(paths) {
        Ok(loaded) => Ok(loaded.model),
        Err(rejected) => {
            let mut text = String::new();
            for d in &rejected.diagnostics {
                let _ = writeln!(text, "{d}");
            }
            bail!("the policies are invalid:\n{text}")
        }
    }
}

/// Removes the scratch directories of nodes whose process was killed
/// before its `Drop` ran ([`names::unique`] sweeps their namespaces,
/// cgroups and pins).
fn sweep_stale_scratch() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix(names::CGROUP_PREFIX)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let is_scratch = entry.path().join("policies").is_dir();
        if let Some(pid) = owner {
            if is_scratch && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Whether the Workload is the DNS server (module doc).
fn is_dns_server(model: &Model, w: &WorkloadPlan) -> bool {
    if w.addresses.is_empty() {
        return false;
    }
    let Some(m) = model.workload(&w.id) else {
        return false;
    };
    m.ports
        .iter()
        .any(|p| p.port == 53 && p.protocol == Protocol::Udp)
        || m.labels.get("k8s-app").map(String::as_str) == Some("kube-dns")
}

/// Writes a copy of every policy file under `out`, with each Workload's
/// `spec.cgroup` moved under `prefix` (relative to the cgroup2 mount).
fn rebase_policies(
    sources: &[PathBuf],
    out: &Path,
    mount: &Path,
    prefix: &str,
) -> anyhow::Result<()> {
    use serde::Deserialize as _;

    let files = egress_policy::source::discover(sources).map_err(|d| anyhow!("{d}"))?;
    for (i, file) in files.iter().enumerate() {
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut value = serde_yaml::Value::deserialize(doc)
                .with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue;
            }
            if value.get("kind").and_then(|k| k.as_str()) == Some("Workload") {
                if let Some(cgroup) = value.get_mut("spec").and_then(|s| s.get_mut("cgroup")) {
                    let relative = cgroup_relative(mount, cgroup.as_str().unwrap_or_default());
                    *cgroup = serde_yaml::Value::String(format!("{prefix}/{relative}"));
                }
            }
            docs.push(serde_yaml::to_string(&value)?);
        }
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = out.join(format!("{i:03}-{name}"));
        fs::write(&target, docs.join("---\n"))
            .with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(())
}

/// `test-egress/sleep` → `test-egress-sleep`, safe in a netns name.
fn netns_suffix(id: &ObjectId) -> String {
    format!("{}-{}", id.namespace, id.name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn no_dad(ns: &Netns) -> anyhow::Result<()> {
    // Before any interface exists, so that every link-local address is
    // usable at once: NDP through a router stalls while its link-local
    // address is still tentative.
    sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")?;
    sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
}

fn nsenter(netns: &Netns, program: impl AsRef<OsStr>) -> Command {
    // Not `ip netns exec`: it remounts /sys, which hides the cgroup2 mount.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", netns.name()))
        .arg("--")
        .arg(program);
    cmd
}

/// Makes `cmd`'s process join `cgroup` between fork and exec, so that it
/// and everything it starts are charged there from the first instruction.
pub fn enter_cgroup_on_spawn(cmd: &mut Command, cgroup: &Path) -> anyhow::Result<()> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
        .context("cgroup path with a NUL byte")?;
    // SAFETY: between fork and exec the closure only calls open, write and
    // close (async-signal-safe) on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" means the writing process.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    Ok(())
}

/// Moves the calling process into `cgroup` (all its threads).
pub fn enter_cgroup(cgroup: &Path) -> anyhow::Result<()> {
    let procs = cgroup.join("cgroup.procs");
    fs::write(&procs, "0").with_context(|| format!("moving into {}", cgroup.display()))
}

/// Moves the calling thread into the network namespace `/run/netns/<name>`
/// (for a single-threaded process: the whole process).
pub fn enter_netns(name: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/run/netns/{name}");
    let ns = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}

/// Waits until no process is left in the cgroup's subtree.
fn wait_unpopulated(cgroup: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let events = fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
        if !events.lines().any(|l| l.trim() == "populated 1") {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn count_dirs(path: &Path) -> usize {
    1 + fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| count_dirs(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

fn common_prefix(names: &[String]) -> String {
    let first = names.first().map(String::as_str).unwrap_or_default();
    let mut len = first.len();
    for n in names {
        len = len.min(
            first
                .bytes()
                .zip(n.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    first[..len].trim_end_matches('-').to_owned()
}

/// A minimal DNS client: one question over UDP, A or AAAA answers.
pub mod dns {
    use std::{
        io,
        net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
        time::Duration,
    };

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RecordType {
        A,
        Aaaa,
    }

    impl RecordType {
        fn code(self) -> u16 {
            match self {
                RecordType::A => 1,
                RecordType::Aaaa => 28,
            }
        }
    }

    /// A parsed answer.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Answer {
        /// The response code (0 = NOERROR, 3 = NXDOMAIN).
        pub rcode: u8,
        pub addresses: Vec<IpAddr>,
        /// The smallest TTL among the address records.
        pub ttl: Option<u32>,
    }

    /// Asks `server` for `name`, from the calling thread's namespace, with
    /// a connected UDP socket (so `connect()` runs the `connect4/6` hooks:
    /// a denied server gives EPERM).
    pub fn query(
        server: SocketAddr,
        name: &str,
        record: RecordType,
        timeout: Duration,
    ) -> io::Result<Answer> {
        let bind: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(timeout))?;
        let id = (std::process::id() as u16) ^ 0x5a5a;
        socket.send(&encode(id, name, record))?;
        let mut buf = [0u8; 1500];
        loop {
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no DNS answer"))
                }
                Err(e) => return Err(e),
            };
            if let Some(answer) = decode(id, &buf[..n]) {
                return Ok(answer);
            }
        }
    }

    /// A query for `name` with recursion desired.
    pub fn encode(id: u16, name: &str, record: RecordType) -> Vec<u8> {
        let mut packet = Vec::with_capacity(32 + name.len());
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.trim_end_matches('.').split('.') {
            let label = &label.as_bytes()[..label.len().min(63)];
            packet.push(label.len() as u8);
            packet.extend_from_slice(label);
        }
        packet.push(0);
        packet.extend_from_slice(&record.code().to_be_bytes());
        packet.extend_from_slice(&1u16.to_be_bytes());
        packet
    }

    /// The addresses of a response to query `id`; `None` if it is not one.
    pub fn decode(id: u16, packet: &[u8]) -> Option<Answer> {
        let u16_at = |at: usize| Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
        if u16_at(0)? != id || packet.get(2)? & 0x80 == 0 {
            return None;
        }
        let rcode = packet.get(3)? & 0x0f;
        let questions = u16_at(4)?;
        let answers = u16_at(6)?;
        let mut at = 12;
        for _ in 0..questions {
            at = skip_name(packet, at)? + 4;
        }
        let mut addresses = Vec::new();
        let mut ttl: Option<u32> = None;
        for _ in 0..answers {
            at = skip_name(packet, at)?;
            let kind = u16_at(at)?;
            let record_ttl = (u32::from(u16_at(at + 4)?) << 16) | u32::from(u16_at(at + 6)?);
            let len = usize::from(u16_at(at + 8)?);
            let data = packet.get(at + 10..at + 10 + len)?;
            let addr = match (kind, len) {
                (1, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
                (28, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
                _ => None,
            };
            if let Some(addr) = addr {
                addresses.push(addr);
                ttl = Some(ttl.map_or(record_ttl, |t| t.min(record_ttl)));
            }
            at += 10 + len;
        }
        Some(Answer {
            rcode,
            addresses,
            ttl,
        })
    }

    /// The offset after the (possibly compressed) name at `at`.
    fn skip_name(packet: &[u8], mut at: usize) -> Option<usize> {
        loop {
            let len = *packet.get(at)?;
            match len {
                0 => return Some(at + 1),
                l if l & 0xc0 == 0xc0 => return Some(at + 2),
                l => at += 1 + usize::from(l),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_response_with_a_compressed_name_is_decoded() {
            let mut response = encode(7, "edition.cnn.com", RecordType::A);
            response[2] = 0x81;
            response[3] = 0x80;
            response[7] = 1;
            response.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 203, 0, 113, 10]);
            let answer = decode(7, &response).unwrap();
            assert_eq!(answer.rcode, 0);
            assert_eq!(answer.addresses, vec![IpAddr::from([203, 0, 113, 10])]);
            assert_eq!(answer.ttl, Some(5));
            assert_eq!(decode(8, &response), None, "another query's answer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_spellings_are_relative_to_the_mount() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        for spelling in ["a/b", "/a/b/", "/sys/fs/cgroup/unified/a/b", "../a/b"] {
            assert_eq!(cgroup_relative(mount, spelling), "a/b", "{spelling}");
        }
    }

    #[test]
    fn netns_names_keep_namespace_and_name() {
        assert_eq!(
            netns_suffix(&ObjectId::new("test-egress", "sleep")),
            "test-egress-sleep"
        );
        assert_eq!(netns_suffix(&ObjectId::new("a", "b/c d")), "a-b-c-d");
    }

    #[test]
    fn the_common_prefix_of_netns_names() {
        let names = ["egt-1-0-node", "egt-1-0-internet"].map(String::from);
        assert_eq!(common_prefix(&names), "egt-1-0");
    }
}
