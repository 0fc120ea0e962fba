//! An enforced scenario: policy YAML compiled and applied by a real
//! [`Dataplane`] attached at a cgroup root of the test's own.
//!
//! Workload cgroups in the YAML are written as `$ROOT/...`; `$ROOT` is
//! replaced by the test's root cgroup (relative to the cgroup2 mount), and
//! every workload's cgroup is created below it. Traffic goes between the two
//! namespaces of a [`TestNet`].

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};
use egress_agent::{
    compile::{self, Plan},
    dataplane::{cgroup_ids, ApplyStats, Capacities, Dataplane, EbpfLogLevel, MapImage},
};
use egress_policy::{model::ObjectId, Source};

use crate::{
    pins::PinDir,
    probe::{EchoServer, Proto},
    Client, TestCgroup, TestNet,
};

/// DNS names → addresses, as the resolver would give them.
pub type Resolved = BTreeMap<String, Vec<IpAddr>>;

/// Fields drop in order: the data plane's maps, then the pins (uninstall),
/// then the cgroups (killing leftover probes), then the namespaces.
pub struct Enforced {
    dataplane: Option<Dataplane>,
    pub pins: PinDir,
    pub root: TestCgroup,
    pub net: TestNet,
    mount: PathBuf,
    /// The plan and image last applied.
    pub plan: Plan,
    pub image: MapImage,
    /// What [`Enforced::open`] sizes the maps with (`run --max-cidrs`).
    pub capacities: Capacities,
}

impl Enforced {
    /// Opens a data plane at a fresh root cgroup and applies `yaml`.
    pub fn new(yaml: &str) -> anyhow::Result<Self> {
        Self::with(yaml, &Resolved::new(), false)
    }

    /// [`Enforced::new`] with resolved gateway hosts and audit mode.
    pub fn with(yaml: &str, resolved: &Resolved, audit: bool) -> anyhow::Result<Self> {
        Self::sized(yaml, resolved, audit, Capacities::default())
    }

    /// [`Enforced::with`], the maps created with `capacities`.
    pub fn sized(
        yaml: &str,
        resolved: &Resolved,
        audit: bool,
        capacities: Capacities,
    ) -> anyhow::Result<Self> {
        crate::require_root();
        let net = TestNet::new().context("test namespaces")?;
        let root = TestCgroup::new().context("root cgroup")?;
        let pins = PinDir::new()?;
        let mount = egress_agent::sys::cgroup2_mount()?;
        let mut this = Self {
            dataplane: None,
            pins,
            root,
            net,
            mount,
            plan: Plan::default(),
            image: MapImage::default(),
            capacities,
        };
        this.open()?;
        this.apply(yaml, resolved, audit)?;
        Ok(this)
    }

    /// Opens (or adopts) the data plane at the root cgroup.
    pub fn open(&mut self) -> anyhow::Result<&mut Dataplane> {
        self.dataplane = None;
        let dataplane = Dataplane::open_with(
            self.pins.path(),
            self.root.path(),
            EbpfLogLevel::Off,
            self.capacities,
        )
        .context("the data plane opens at the test's root cgroup")?;
        Ok(self.dataplane.insert(dataplane))
    }

    /// Drops the data plane without uninstalling: what a crashed agent
    /// leaves.
    pub fn close(&mut self) {
        self.dataplane = None;
    }

    pub fn dataplane(&mut self) -> &mut Dataplane {
        self.dataplane.as_mut().expect("the data plane is open")
    }

    pub fn dataplane_ref(&self) -> &Dataplane {
        self.dataplane.as_ref().expect("the data plane is open")
    }

    /// `yaml` with `$ROOT` replaced.
    pub fn yaml(&self, yaml: &str) -> String {
        yaml.replace("$ROOT", &self.root.relative())
    }

    /// Compiles `yaml` and creates its workloads' cgroups.
    pub fn plan(&self, yaml: &str) -> anyhow::Result<Plan> {
        let loaded = egress_policy::load_sources(&[Source::new("scenario.yaml", self.yaml(yaml))])
            .map_err(|e| anyhow!("scenario policy invalid: {:#?}", e.diagnostics))?;
        let plan = compile::compile(&loaded.model);
        for w in &plan.workloads {
            let dir = self.mount.join(w.cgroup.trim_matches('/'));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(plan)
    }

    /// The image of `yaml`.
    pub fn image(
        &self,
        yaml: &str,
        resolved: &Resolved,
        audit: bool,
    ) -> anyhow::Result<(Plan, MapImage)> {
        let plan = self.plan(yaml)?;
        let image = MapImage::build(&plan, &cgroup_ids(&plan, &self.mount), resolved, audit)?;
        Ok((plan, image))
    }

    /// Compiles and applies `yaml`.
    pub fn apply(
        &mut self,
        yaml: &str,
        resolved: &Resolved,
        audit: bool,
    ) -> anyhow::Result<ApplyStats> {
        let (plan, image) = self.image(yaml, resolved, audit)?;
        let stats = self.dataplane().apply(&image)?;
        self.plan = plan;
        self.image = image;
        Ok(stats)
    }

    /// The cgroup directory of workload `ns/name` of the last plan.
    pub fn cgroup(&self, workload: &str) -> PathBuf {
        let id: ObjectId = workload.parse().expect("NS/NAME");
        let w = self
            .plan
            .workload(&id)
            .unwrap_or_else(|| panic!("no workload {workload} in the plan"));
        self.mount.join(w.cgroup.trim_matches('/'))
    }

    /// The cgroup id of workload `ns/name`.
    pub fn cgroup_id(&self, workload: &str) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(self.cgroup(workload))
            .expect("the workload's cgroup exists")
            .ino()
    }

    /// A client in the client namespace, in workload `ns/name`'s cgroup.
    pub fn client(&self, workload: &str) -> Client<'_> {
        Client::in_cgroup(&self.net.client, &self.cgroup(workload))
    }

    /// An echo server in the server namespace, in workload `ns/name`'s
    /// cgroup: its answers are the workload's egress.
    pub fn serve(
        &self,
        workload: &str,
        addr: SocketAddr,
        proto: Proto,
    ) -> anyhow::Result<EchoServer> {
        EchoServer::start(&self.net.server, Some(&self.cgroup(workload)), addr, proto)
    }

    /// [`Enforced::serve`], reporting nothing (for floods).
    pub fn serve_quietly(
        &self,
        workload: &str,
        addr: SocketAddr,
        proto: Proto,
    ) -> anyhow::Result<EchoServer> {
        EchoServer::start_quiet(&self.net.server, Some(&self.cgroup(workload)), addr, proto)
    }

    /// [`Enforced::serve`] over TCP, accepting TCP Fast Open.
    pub fn serve_fast_open(&self, workload: &str, addr: SocketAddr) -> anyhow::Result<EchoServer> {
        EchoServer::start_fast_open(&self.net.server, Some(&self.cgroup(workload)), addr)
    }

    /// A client in the server namespace, in workload `ns/name`'s cgroup:
    /// the workload of a [`Enforced::serve`] server initiating something.
    pub fn server_side_client(&self, workload: &str) -> Client<'_> {
        Client::in_cgroup(&self.net.server, &self.cgroup(workload))
    }

    /// A client in the client namespace, in cgroup `relative` below the
    /// root (created if needed): managed by no workload.
    pub fn unmanaged_client(&self, relative: &str) -> anyhow::Result<Client<'_>> {
        let path = self.root.child(relative)?;
        Ok(Client::in_cgroup(&self.net.client, &path))
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }
}
