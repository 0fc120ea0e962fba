//! The real agent running on a [`SimNode`], as a hostNetwork DaemonSet
//! would: the fixture of the end-to-end scenarios.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::Context as _;
use egress_policy::model::ObjectId;

use crate::{agent::Agent, node::SimNode, Client, Listener, Proto};

/// `"namespace/name"` as an [`ObjectId`]; panics on a malformed literal,
/// which only a test writes.
pub fn id(s: &str) -> ObjectId {
    s.parse().expect("namespace/name")
}

/// The repository's `policies/`: the seed scenario.
pub fn seed_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("policies")
}

/// Writes the seed's files into `dir`, each passed through `edit` (which
/// returns the text unchanged to copy it as it is).
pub fn copy_seed(dir: &Path, edit: impl Fn(&str) -> String) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    for entry in fs::read_dir(seed_policies())? {
        let path = entry?.path();
        let text = fs::read_to_string(&path)?;
        fs::write(
            dir.join(path.file_name().context("file name")?),
            edit(&text),
        )?;
    }
    Ok(())
}

/// A copy of the seed under `dir` in which test-egress/sleep is dual-stack
/// (an IPv6 address inside an IPv6 pod CIDR), so that its IPv6 traffic
/// has somewhere to come from.
pub fn dual_stack_seed(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join("policies");
    copy_seed(&out, |text| {
        text.replace(
            r#"addresses: ["10.244.2.10"]"#,
            r#"addresses: ["10.244.2.10", "fd00:10:244:2::10"]"#,
        )
        .replace("  - 10.96.0.0/12", "  - fd00:10:244::/48\n  - 10.96.0.0/12")
    })?;
    Ok(out)
}

/// The agent on a node; the agent is dropped (killed) before the node.
pub struct Running {
    pub agent: Agent,
    pub sim: SimNode,
}

impl Running {
    pub fn start(sim: SimNode, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(sim, extra, &[])
    }

    /// [`Running::start`] with `env` in the agent's environment.
    pub fn start_with_env(
        sim: SimNode,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let policies = sim.policies_dir().display().to_string();
        let root = sim.cgroup_root().display().to_string();
        let dns = sim.dns().address.to_string();
        let mut args = vec![
            "--policies",
            &policies,
            "--cgroup-root",
            &root,
            "--dns-server",
            &dns,
        ];
        args.extend_from_slice(extra);
        let agent = Agent::start_with_env(sim.node(), sim.pin_dir(), &args, env)?;
        Ok(Self { agent, sim })
    }

    pub fn seed(extra: &[&str]) -> anyhow::Result<Self> {
        Self::start(SimNode::new(&[seed_policies()])?, extra)
    }

    pub fn client(&self, who: &ObjectId) -> anyhow::Result<Client<'_>> {
        self.sim
            .client(who)
            .with_context(|| format!("{who} is not on the node"))
    }

    /// An internet address of `host` (IPv4 or IPv6).
    pub fn site(&self, host: &str, v6: bool, port: u16) -> anyhow::Result<SocketAddr> {
        let ip = self
            .sim
            .dns()
            .records
            .get(host)
            .and_then(|a| a.iter().find(|a| a.is_ipv6() == v6).copied())
            .with_context(|| format!("{host} is not served here"))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// A listener in the pod of `who`, on its first address.
    pub fn listen_in(&self, who: &ObjectId, port: u16, proto: Proto) -> anyhow::Result<Listener> {
        let pod = self.sim.pod_of(who).context("no pod")?;
        Listener::start(&pod.netns, SocketAddr::new(pod.addresses[0], port), proto)
    }

    /// The addresses `getent` finds for `name` from the pod of `who`: a
    /// real lookup through the pod's resolv.conf, i.e. through kube-dns.
    pub fn lookup(&self, who: &ObjectId, name: &str) -> anyhow::Result<Vec<IpAddr>> {
        self.lookup_through(who, name, self.sim.dns().address.ip())
    }

    /// [`Running::lookup`] through the DNS server at `dns` (a Service
    /// address, say).
    pub fn lookup_through(
        &self,
        who: &ObjectId,
        name: &str,
        dns: IpAddr,
    ) -> anyhow::Result<Vec<IpAddr>> {
        let out = self
            .sim
            .pod_command_resolving_with(who, "getent", dns)?
            .args(["ahosts", name])
            .stdin(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect())
    }

    /// Waits until the agent has applied `n` generations in all.
    pub fn wait_applied(&mut self, n: usize) -> anyhow::Result<()> {
        self.agent
            .wait_for_count("policy applied", n, crate::agent::APPLY_WAIT)
    }
}

/// The seed NetworkPolicy's file.
pub const SEED_NETWORK_POLICY: &str = "allow-egress-to-istio-system-and-kube-dns";

/// The address [`Running::apply_seed_generation_2`] adds to the node rules,
/// of a pod not on the node yet: its apply rewrites the backstop's table.
pub const NEW_POD_ADDRESS: &str = "10.244.2.99";

impl Running {
    /// Generation 2 of the seed, which changes both layers: the seed
    /// NetworkPolicy narrowed to DNS (test-egress loses istio-system), and
    /// a new pod's Workload, whose address changes the backstop's rules.
    /// Written over the NetworkPolicy's file; the agent reloads on it.
    pub fn apply_seed_generation_2(&self) -> anyhow::Result<()> {
        let extra = self
            .sim
            .cgroup_root()
            .join("pods/egress-demo/test-egress/extra");
        let yaml = format!(
            "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {SEED_NETWORK_POLICY}
  namespace: test-egress
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels:
          kube-system: \"true\"
    ports:
    - protocol: UDP
      port: 53
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata:
  name: extra
  namespace: test-egress
  labels: {{app: extra}}
spec:
  cgroup: {}
  addresses: [\"{NEW_POD_ADDRESS}\"]
",
            extra.display()
        );
        self.replace_policy_file(SEED_NETWORK_POLICY, &yaml)
            .map(drop)
    }

    /// The backstop's `workloads_v4` set, as the kernel has it.
    pub fn backstop_workloads(&self) -> anyhow::Result<String> {
        crate::nftns::nft(
            self.sim.node(),
            &["list", "set", "inet", "egress_enforcer", "workloads_v4"],
        )
    }

    /// Replaces the node's copy of the policy file whose name contains
    /// `name` with `yaml` (the agent reloads on the change).
    pub fn replace_policy_file(&self, name: &str, yaml: &str) -> anyhow::Result<PathBuf> {
        let file = fs::read_dir(self.sim.policies_dir())?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().contains(name))
            })
            .with_context(|| format!("no policy file named like {name:?}"))?;
        fs::write(&file, yaml)?;
        Ok(file)
    }
}
