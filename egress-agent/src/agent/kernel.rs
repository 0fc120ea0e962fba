//! The real [`Enforcer`]: the eBPF data plane plus the nftables backstop.

mod view;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::reload::{Enforcer, Observer};
use crate::{
    compile::{guard::BootState, NodeRules, Plan, WorkloadPort},
    dataplane::{
        self,
        nft::{Backstop, NftError},
        Capacities, Dataplane, DataplaneError, EbpfLogLevel, ImageError, MapImage, VerdictKind,
    },
    observe,
    resolve::{
        relay::{GatewayDns, RelayedGateway},
        HostResolver, ResolvedHosts,
    },
    sys,
};
use egress_common::EventConfig;
use egress_policy::model::{HostName, ObjectId};

/// Why the kernel could not be programmed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Lock(#[from] super::lock::LockError),
    #[error(transparent)]
    Preflight(#[from] super::preflight::PreflightError),
    #[error("cannot find the cgroup2 mount")]
    Cgroup2(#[source] sys::SysError),
    #[error("cannot open the eBPF data plane under {pin_dir}")]
    Open {
        pin_dir: PathBuf,
        #[source]
        source: Box<DataplaneError>,
    },
    #[error("cannot build the map image")]
    Image(#[source] ImageError),
    /// Writing the new generation failed; it was taken back, and neither
    /// the eBPF maps in force nor the backstop changed.
    #[error("cannot write the eBPF maps; nothing in force was changed")]
    Apply(#[source] Box<DataplaneError>),
    /// The backstop's transaction failed (so its table did not change);
    /// the new eBPF generation, written but not flipped to, was taken back.
    #[error(
        "cannot program the nftables backstop; the new eBPF generation was discarded before it \
         took effect"
    )]
    Nft(#[source] dataplane::nft::NftError),
    /// The flip to the new eBPF generation failed after the backstop took
    /// the new rules; `backstop` says what became of them.
    #[error("cannot switch the eBPF maps to the new generation; {backstop}")]
    Flip {
        #[source]
        source: Box<DataplaneError>,
        backstop: BackstopRollback,
    },
    #[error("cannot configure verdict events")]
    Events(#[source] Box<DataplaneError>),
}

/// What became of the backstop's table when the eBPF flip failed after it
/// was rewritten.
#[derive(Debug)]
pub enum BackstopRollback {
    /// The node rules were unchanged: the table was not rewritten.
    Untouched,
    /// The previous rules were written back.
    Restored,
    /// Writing the previous rules back failed too: the table holds the new
    /// node rules until the next apply rewrites it.
    Failed(String),
    /// This process had not written the table before (its first apply):
    /// whatever it held, an earlier agent's rules or nothing, cannot be
    /// written back. The table holds the new node rules until the next
    /// apply rewrites it.
    Unknown,
}

impl std::fmt::Display for BackstopRollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Untouched => f.write_str("the nftables backstop was not changed"),
            Self::Restored => f.write_str("the nftables backstop's previous rules were restored"),
            Self::Failed(e) => write!(
                f,
                "restoring the nftables backstop's previous rules failed too ({e}): it holds the \
                 new node rules until the next apply"
            ),
            Self::Unknown => f.write_str(
                "the nftables backstop holds the new node rules until the next apply (this \
                 agent had not written it before, so its previous rules are unknown)",
            ),
        }
    }
}

/// eBPF data plane + nftables backstop, applied together.
pub struct KernelEnforcer {
    /// Held first and for the agent's life: one agent per pin directory.
    _lock: super::lock::PinDirLock,
    dataplane: Dataplane,
    backstop: Option<Backstop>,
    cgroup_mount: PathBuf,
    audit: bool,
    /// `run --capture-dns`: otherwise `captureDNS` is left out of images.
    capture_dns: bool,
    /// Workloads whose cgroup did not exist at the last apply, with the
    /// cgroup they wait for.
    waiting: BTreeMap<ObjectId, String>,
    /// Names for the last image's cgroup ids, for audit findings.
    names: Names,
    /// Audit counts already reported, and when they were last read.
    audited: BTreeMap<(u64, Option<u32>, VerdictKind), u64>,
    last_audit: Option<Instant>,
    /// Names of the image in force, shared with the event reader and the
    /// observer.
    shared_names: Arc<RwLock<observe::Names>>,
    /// What `status` and `/metrics` read, beside the applies.
    observer: Arc<view::KernelObserver>,
    /// Where backstop drops are reported as events, and the counts last
    /// reported.
    hub: Option<observe::EventHub>,
    nft_seen: BTreeMap<&'static str, u64>,
    last_nft_poll: Option<Instant>,
    /// The node rules the backstop table holds.
    nft_applied: Option<NodeRules>,
    /// `run --boot-state`: where the guards are saved for the next boot,
    /// and what was saved last.
    boot_state: Option<(PathBuf, Option<BootState>)>,
    /// The cgroup directory and addresses of each workload of the plan in
    /// force, to look for their ports again between applies.
    port_owners: Vec<PortOwner>,
    /// Set when a look found other ports than the table holds.
    ports_moved: bool,
    last_port_look: Option<Instant>,
    /// Workloads whose ports could not be looked for, already warned of.
    ports_unseen: BTreeSet<ObjectId>,
    /// `run --follow-gateway-dns`: the relay's port, and the relays once
    /// the resolver runs ([`Enforcer::use_resolver`]).
    gateway_dns_port: Option<u16>,
    gateway_dns: Option<GatewayDns>,
    /// Set when a gateway's relay started or went since the last apply.
    relays_moved: bool,
}

/// A workload as the port finder needs it.
#[derive(Clone, Debug)]
struct PortOwner {
    id: ObjectId,
    cgroup: PathBuf,
    addresses: Vec<IpAddr>,
}

/// The workloads of the image in force, by cgroup id.
#[derive(Default)]
struct Names {
    workloads: BTreeMap<u64, ObjectId>,
}

/// How often the backstop's drop counters are read for events.
const NFT_POLL_EVERY: Duration = Duration::from_secs(1);

/// How often the workloads' ports are looked for between applies. A pod's
/// port exists before the apply its address triggers, so this only
/// catches ports that change while the plan does not (a recreated pod
/// sandbox, a file-mode Workload started after the apply); meanwhile the
/// address check of the backstop and the cgroup programs still hold.
const PORT_LOOK_EVERY: Duration = Duration::from_secs(5);

/// How often audit mode reports new would-deny verdicts.
const AUDIT_REPORT_EVERY: Duration = Duration::from_secs(1);

impl KernelEnforcer {
    /// Loads or adopts the pinned data plane under `pin_dir`, attached at
    /// `cgroup_root` (default: the cgroup2 mount's root), with `backstop`
    /// as the nftables backstop (`None`: `--no-nft`). In audit mode the
    /// backstop is not installed: it can only drop, never count-and-pass.
    pub fn open(
        pin_dir: &Path,
        cgroup_root: Option<&Path>,
        audit: bool,
        backstop: Option<Backstop>,
        events: EventConfig,
        ebpf_log: EbpfLogLevel,
        capacities: Capacities,
    ) -> Result<Self, KernelError> {
        let nft = backstop.is_some();
        let backstop = backstop.filter(|_| !audit);
        super::preflight::check(backstop.as_ref())?;
        super::preflight::ensure_bpffs(pin_dir)?;
        let lock = super::lock::PinDirLock::acquire(pin_dir)?;
        let cgroup_mount = sys::cgroup2_mount().map_err(KernelError::Cgroup2)?;
        let root = cgroup_root.map_or_else(|| cgroup_mount.clone(), Path::to_path_buf);
        let mut dataplane =
            Dataplane::open_with(pin_dir, &root, ebpf_log, capacities).map_err(|source| {
                KernelError::Open {
                    pin_dir: pin_dir.to_owned(),
                    source: Box::new(source),
                }
            })?;
        dataplane
            .set_event_config(events)
            .map_err(|e| KernelError::Events(Box::new(e)))?;
        let reader = dataplane.reader().map_err(|source| KernelError::Open {
            pin_dir: pin_dir.to_owned(),
            source: Box::new(source),
        })?;
        let shared_names = Arc::default();
        let observer = Arc::new(view::KernelObserver {
            dataplane: reader,
            backstop: backstop.clone(),
            events,
            names: Arc::clone(&shared_names),
            relays: Arc::default(),
        });
        info!(pin_dir = %pin_dir.display(), cgroup_root = %root.display(), links = dataplane.links().len(), "data plane attached");
        if audit && nft {
            warn!(
                "audit mode: the nftables backstop is not installed (it cannot audit, only drop)"
            );
        }
        Ok(Self {
            _lock: lock,
            dataplane,
            backstop,
            cgroup_mount,
            audit,
            capture_dns: false,
            waiting: BTreeMap::new(),
            names: Names::default(),
            audited: BTreeMap::new(),
            last_audit: None,
            shared_names,
            observer,
            hub: None,
            nft_seen: BTreeMap::new(),
            last_nft_poll: None,
            nft_applied: None,
            boot_state: None,
            port_owners: Vec::new(),
            ports_moved: false,
            last_port_look: None,
            ports_unseen: BTreeSet::new(),
            gateway_dns_port: None,
            gateway_dns: None,
            relays_moved: false,
        })
    }

    /// Saves the guards of every generation put in force to `path`, for
    /// `egress-agent boot-guard` (`run --boot-state`).
    pub fn with_boot_state(mut self, path: Option<PathBuf>) -> Self {
        self.boot_state = path.map(|p| (p, None));
        self
    }

    /// Saves what the next boot needs, when it changed. A failure is
    /// logged, not returned: the generation is in force either way, and
    /// the next apply tries again.
    fn save_boot_state(&mut self, plan: &Plan) {
        let Some((path, saved)) = &mut self.boot_state else {
            return;
        };
        let state = BootState::of(plan);
        if saved.as_ref() == Some(&state) {
            return;
        }
        match state.write(path) {
            Ok(()) => {
                info!(path = %path.display(), guarded = ?state.pending, "boot state saved");
                *saved = Some(state);
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot save the boot state: a reboot now starts pods unguarded until the agent is ready")
            }
        }
    }

    /// Carries out the Redirects' `captureDNS` (`run --capture-dns`).
    pub fn with_dns_capture(mut self, on: bool) -> Self {
        self.capture_dns = on;
        self
    }

    /// Relays the gateways' DNS at `port` on their loopback, and programs
    /// the answers they get for their `allowedHosts` names before passing
    /// them on (`run --follow-gateway-dns`, see `resolve::relay`).
    pub fn with_gateway_dns(mut self, port: Option<u16>) -> Self {
        self.gateway_dns_port = port;
        self
    }

    /// The directory of a workload's cgroup as the plan names it.
    fn cgroup_dir(&self, cgroup: &str) -> PathBuf {
        self.cgroup_mount
            .join(dataplane::cgroup_relative(&self.cgroup_mount, cgroup))
    }

    /// The plan's gateways with DNS names, for the relays.
    fn relayed_gateways(&self, plan: &Plan) -> Vec<RelayedGateway> {
        plan.workloads
            .iter()
            .filter_map(|w| {
                let hosts = w.gateway.as_ref()?.allowed_hosts.as_ref()?;
                let names: BTreeSet<String> = hosts
                    .iter()
                    .filter_map(|h| match &h.host {
                        HostName::Dns(name) => Some(name.clone()),
                        HostName::Net(_) => None,
                    })
                    .collect();
                (!names.is_empty()).then(|| RelayedGateway {
                    id: w.id.clone(),
                    cgroup: self.cgroup_dir(&w.cgroup),
                    names,
                })
            })
            .collect()
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dataplane
    }

    /// The names of the image in force, kept current by every apply.
    pub fn shared_names(&self) -> Arc<RwLock<observe::Names>> {
        Arc::clone(&self.shared_names)
    }

    /// Reports the backstop's drops to `hub` as events from now on.
    pub fn report_to(&mut self, hub: observe::EventHub) {
        self.hub = Some(hub);
    }

    /// Publishes an event for backstop drops counted since the last poll
    /// (at most once per [`NFT_POLL_EVERY`] unless `now`). Every apply
    /// rewrites the table, which restarts its counters, so `enforce` reads
    /// them just before (`now`) and starts again from zero after; a count
    /// below the last one is a restart too.
    fn poll_backstop(&mut self, now: bool) {
        let (Some(backstop), Some(hub)) = (&self.backstop, &self.hub) else {
            return;
        };
        if !now
            && self
                .last_nft_poll
                .is_some_and(|t| t.elapsed() < NFT_POLL_EVERY)
        {
            return;
        }
        self.last_nft_poll = Some(Instant::now());
        let Ok(counts) = backstop.counters() else {
            return; // not installed yet, or nft failed: status shows it
        };
        for (counter, value) in counts.iter() {
            let before = self
                .nft_seen
                .insert(counter.name(), value.packets)
                .unwrap_or(0);
            let new = if value.packets >= before {
                value.packets - before
            } else {
                value.packets
            };
            if new > 0 {
                hub.publish(observe::VerdictEvent {
                    time: observe::wallclock::rfc3339(std::time::SystemTime::now()),
                    workload: None,
                    cgroup_id: 0,
                    protocol: "-".into(),
                    source: "-".into(),
                    destination: "outside clusterCIDRs".into(),
                    verdict: observe::Verdict::Deny,
                    reason: "nft-backstop".into(),
                    rule: format!("nftables backstop ({counter}: {})", counter.describe()),
                    policy: "nft-backstop".into(),
                    hook: "nftables".into(),
                    count: new,
                });
            }
        }
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The plan's node rules with the workloads' ports on this node, which
    /// only the host can tell (`sys::ports`). Without a backstop nothing
    /// is looked for.
    fn node_rules(&mut self, plan: &Plan) -> NodeRules {
        let mut node = plan.node.clone();
        if self.backstop.is_none() {
            return node;
        }
        self.port_owners = plan
            .workloads
            .iter()
            .map(|w| PortOwner {
                id: w.id.clone(),
                cgroup: self.cgroup_dir(&w.cgroup),
                addresses: w.addresses.clone(),
            })
            .collect();
        node.ports = self.look_for_ports();
        self.ports_moved = false;
        self.last_port_look = Some(Instant::now());
        node
    }

    /// The ports of [`Self::port_owners`], sorted. A failure to read the
    /// node's links leaves them all unknown: the backstop then keys on
    /// addresses alone, as it would for a pod it has no port for.
    fn look_for_ports(&mut self) -> Vec<WorkloadPort> {
        let mut finder = match sys::ports::PortFinder::new() {
            Ok(finder) => finder,
            Err(e) => {
                warn!(error = %e, "cannot read the node's interfaces: the nftables backstop keys on addresses alone until the next apply");
                return Vec::new();
            }
        };
        let mut ports = Vec::new();
        for owner in &self.port_owners {
            let found = finder.ports_of(&owner.cgroup);
            if found.names.is_empty() && found.unseen > 0 && !owner.addresses.is_empty() {
                if self.ports_unseen.insert(owner.id.clone()) {
                    warn!(workload = %owner.id, processes = found.unseen, "cannot see the workload's processes (another PID namespace, or no CAP_SYS_PTRACE): its port on the node is unknown, and the nftables backstop judges it by address alone");
                }
            } else {
                self.ports_unseen.remove(&owner.id);
            }
            ports.extend(found.names.into_iter().map(|interface| WorkloadPort {
                interface,
                addresses: owner.addresses.clone(),
            }));
        }
        ports.sort();
        ports
    }

    /// Writes the backstop's previous node rules back, after the eBPF flip
    /// failed behind a table already rewritten. Forgets the table's
    /// contents when that is not possible, so that the next apply rewrites
    /// it whatever its rules.
    fn restore_backstop(&mut self) -> BackstopRollback {
        let (Some(backstop), Some(previous)) = (&self.backstop, &self.nft_applied) else {
            return BackstopRollback::Unknown;
        };
        match backstop.apply(previous) {
            Ok(()) => {
                self.nft_seen.clear();
                BackstopRollback::Restored
            }
            Err(e) => {
                self.nft_applied = None;
                BackstopRollback::Failed(super::reload::format_chain(&e))
            }
        }
    }
}

impl KernelEnforcer {
    /// Looks for the workloads' ports again (at most once per
    /// [`PORT_LOOK_EVERY`]), and marks a reconcile due when the table
    /// holds others.
    fn poll_ports(&mut self) {
        let Some(applied) = &self.nft_applied else {
            return;
        };
        if self
            .last_port_look
            .is_some_and(|t| t.elapsed() < PORT_LOOK_EVERY)
        {
            return;
        }
        let applied = applied.ports.clone();
        self.last_port_look = Some(Instant::now());
        if self.look_for_ports() != applied {
            info!("workload ports on the node changed: re-applying the nftables backstop");
            self.ports_moved = true;
        }
    }
}

impl Enforcer for KernelEnforcer {
    type Error = KernelError;

    fn enforce(&mut self, plan: &Plan, hosts: &ResolvedHosts) -> Result<(), KernelError> {
        let ids = dataplane::cgroup_ids(plan, &self.cgroup_mount);
        let resolved: BTreeMap<String, Vec<IpAddr>> = hosts
            .iter()
            .map(|(name, addrs)| (name.to_owned(), addrs.to_vec()))
            .collect();
        // The plan as the kernel gets it: without `captureDNS` unless asked
        // for, and with the gateways' DNS sent to their relays, but only
        // once a relay listens (a query sent to a port nobody holds would
        // fail). One copy at most, and none when neither applies.
        let mut adapted = (!self.capture_dns).then(|| plan.clone().without_dns_capture());
        if self.gateway_dns.is_some() {
            let gateways = self.relayed_gateways(adapted.as_ref().unwrap_or(plan));
            if let Some(relays) = self.gateway_dns.as_mut() {
                let ready = relays.sync(gateways);
                if !ready.is_empty() {
                    let base = adapted.take().unwrap_or_else(|| plan.clone());
                    adapted = Some(base.with_gateway_dns(&ready, relays.port()));
                }
            }
        }
        let plan = adapted.as_ref().unwrap_or(plan);
        let image =
            MapImage::build(plan, &ids, &resolved, self.audit).map_err(KernelError::Image)?;
        // The tables depend on the node rules only; rewriting them also
        // restarts their drop counters, so they are rewritten only when
        // those change (not for every allowedHosts refresh).
        let node = self.node_rules(plan);
        let rewrite = self.backstop.is_some() && self.nft_applied.as_ref() != Some(&node);
        if rewrite {
            self.poll_backstop(true);
        }
        // One apply, one outcome: the new eBPF generation is written beside
        // the live one, the backstop's transaction runs, and only then does
        // the generation flip. A failed transaction leaves the table as it
        // was, and the unflipped generation is taken back, so neither layer
        // changes. The flip (one array write) is the only step after the
        // transaction that can fail, and then the table is written back.
        let prepared = self
            .dataplane
            .prepare(&image)
            .map_err(|e| KernelError::Apply(Box::new(e)))?;
        if let (true, Some(backstop)) = (rewrite, &self.backstop) {
            if let Err(e) = backstop.apply(&node) {
                let removed = prepared.abort();
                warn!(
                    removed,
                    "the nftables transaction failed: the new eBPF generation was taken back \
                     before the flip"
                );
                if matches!(e, NftError::TimedOut { .. }) {
                    // nft was killed at its timeout, normally before it
                    // sent its transaction; but the kernel may have taken
                    // it first. The table's rules are then unknown, and
                    // the next apply rewrites it whatever they are.
                    warn!("the nftables backstop's table may hold the new node rules until the next apply");
                    self.nft_applied = None;
                }
                return Err(KernelError::Nft(e));
            }
        }
        let stats = match prepared.commit() {
            Ok(stats) => stats,
            Err(e) => {
                let backstop = if rewrite {
                    self.restore_backstop()
                } else {
                    BackstopRollback::Untouched
                };
                return Err(KernelError::Flip {
                    source: Box::new(e),
                    backstop,
                });
            }
        };
        if rewrite {
            self.nft_seen.clear();
            self.nft_applied = Some(node);
        }
        if let Some(relays) = &self.gateway_dns {
            relays.programmed(hosts);
            self.relays_moved = false;
        }
        if let Some(e) = &stats.cleanup_error {
            warn!(error = %e, "the new generation is in force, but deleting the previous one stopped short; the next apply removes what is left");
        }
        let waiting: BTreeMap<ObjectId, String> = plan
            .workloads
            .iter()
            .filter(|w| image.unplaced().contains(&w.id))
            .map(|w| (w.id.clone(), w.cgroup.clone()))
            .collect();
        for (id, cgroup) in &waiting {
            if !self.waiting.contains_key(id) {
                warn!(workload = %id, cgroup, "cgroup does not exist yet; the workload is enforced as soon as it appears");
            }
        }
        for name in image.unresolved() {
            warn!(
                host = name,
                "allowedHosts name has no addresses yet: the gateway cannot reach it"
            );
        }
        self.waiting = waiting;
        self.names = Names {
            workloads: ids.iter().map(|(id, cg)| (*cg, id.clone())).collect(),
        };
        *self
            .shared_names
            .write()
            .unwrap_or_else(PoisonError::into_inner) = observe::Names::from_image(&image);
        info!(?stats, "data plane programmed");
        self.save_boot_state(plan);
        Ok(())
    }

    fn use_resolver(&mut self, resolver: &HostResolver) {
        let Some(port) = self.gateway_dns_port else {
            return;
        };
        let stats = Arc::clone(&self.observer.relays);
        match GatewayDns::new(port, resolver.learner(), stats) {
            Ok(relays) => self.gateway_dns = Some(relays),
            Err(e) => warn!(error = %e, "cannot relay the gateways' DNS"),
        }
    }

    fn stop_relaying(&mut self) -> bool {
        self.gateway_dns
            .take()
            .is_some_and(|relays| !relays.ready().is_empty())
    }

    fn observer(&self) -> Arc<dyn Observer> {
        Arc::clone(&self.observer) as Arc<dyn Observer>
    }

    fn needs_reconcile(&self, plan: &Plan) -> bool {
        if self.ports_moved || self.relays_moved {
            return true;
        }
        // One stat per workload, and only while some still wait.
        !self.waiting.is_empty()
            && dataplane::cgroup_ids(plan, &self.cgroup_mount)
                .keys()
                .any(|id| self.waiting.contains_key(id))
    }

    /// In audit mode, logs each would-deny verdict that the kernel counted
    /// since the last report, by workload and reason.
    fn poll(&mut self) {
        self.poll_backstop(false);
        self.poll_ports();
        if let Some(relays) = &mut self.gateway_dns {
            if relays.poll() {
                info!("a gateway's DNS relay started or stopped: applying again");
                self.relays_moved = true;
            }
        }
        if !self.audit
            || self
                .last_audit
                .is_some_and(|t| t.elapsed() < AUDIT_REPORT_EVERY)
        {
            return;
        }
        self.last_audit = Some(Instant::now());
        let counters = match self.dataplane.counters() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the audit counters");
                return;
            }
        };
        for hit in counters.hits().iter().filter(|h| h.verdict.audit) {
            let key = (hit.cgroup_id, hit.rule, hit.verdict);
            let before = self.audited.insert(key, hit.count).unwrap_or(0);
            if hit.count > before {
                let workload = self
                    .names
                    .workloads
                    .get(&hit.cgroup_id)
                    .map_or_else(|| format!("cgroup {}", hit.cgroup_id), ToString::to_string);
                warn!(
                    workload,
                    hook = ?hit.verdict.hook,
                    reason = ?hit.verdict.reason,
                    count = hit.count - before,
                    "audit: would have denied"
                );
            }
        }
    }
}
