//! The real [`Enforcer`]: the eBPF data plane plus the nftables backstop.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::reload::Enforcer;
use crate::{
    compile::Plan,
    dataplane::{
        self, nft::Backstop, Dataplane, DataplaneError, ImageError, MapImage, VerdictKind,
    },
    policy::model::ObjectId,
    resolve::ResolvedHosts,
    sys,
};

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
    #[error("cannot write the eBPF maps")]
    Apply(#[source] Box<DataplaneError>),
    #[error("cannot program the nftables backstop")]
    Nft(#[source] dataplane::nft::NftError),
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
}

/// The workloads of the image in force, by cgroup id.
#[derive(Default)]
struct Names {
    workloads: BTreeMap<u64, ObjectId>,
}

/// How often audit mode reports new would-deny verdicts.
const AUDIT_REPORT_EVERY: Duration = Duration::from_secs(1);

impl KernelEnforcer {
    /// Loads or adopts the pinned data plane under `pin_dir`, attached at
    /// `cgroup_root` (default: the cgroup2 mount's root). In audit mode the
    /// backstop is not installed: it can only drop, never count-and-pass.
    pub fn open(
        pin_dir: &Path,
        cgroup_root: Option<&Path>,
        audit: bool,
        nft: bool,
    ) -> Result<Self, KernelError> {
        super::preflight::check(nft && !audit)?;
        super::preflight::ensure_bpffs(pin_dir)?;
        let lock = super::lock::PinDirLock::acquire(pin_dir)?;
        let cgroup_mount = sys::cgroup2_mount().map_err(KernelError::Cgroup2)?;
        let root = cgroup_root.map_or_else(|| cgroup_mount.clone(), Path::to_path_buf);
        let dataplane = Dataplane::open(pin_dir, &root).map_err(|source| KernelError::Open {
            pin_dir: pin_dir.to_owned(),
            source: Box::new(source),
        })?;
        info!(pin_dir = %pin_dir.display(), cgroup_root = %root.display(), links = dataplane.links().len(), "data plane attached");
        if audit && nft {
            warn!(
                "audit mode: the nftables backstop is not installed (it cannot audit, only drop)"
            );
        }
        Ok(Self {
            _lock: lock,
            dataplane,
            backstop: (nft && !audit).then(Backstop::new),
            cgroup_mount,
            audit,
            capture_dns: false,
            waiting: BTreeMap::new(),
            names: Names::default(),
            audited: BTreeMap::new(),
            last_audit: None,
        })
    }

    /// Carries out the Redirects' `captureDNS` (`run --capture-dns`).
    pub fn with_dns_capture(mut self, on: bool) -> Self {
        self.capture_dns = on;
        self
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
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
        let stripped;
        let plan = if self.capture_dns {
            plan
        } else {
            stripped = plan.clone().without_dns_capture();
            &stripped
        };
        let image =
            MapImage::build(plan, &ids, &resolved, self.audit).map_err(KernelError::Image)?;
        let stats = self
            .dataplane
            .apply(&image)
            .map_err(|e| KernelError::Apply(Box::new(e)))?;
        if let Some(backstop) = &self.backstop {
            backstop.apply(&plan.node).map_err(KernelError::Nft)?;
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
        info!(?stats, "data plane programmed");
        Ok(())
    }

    fn needs_reconcile(&self, plan: &Plan) -> bool {
        // One stat per workload, and only while some still wait.
        !self.waiting.is_empty()
            && dataplane::cgroup_ids(plan, &self.cgroup_mount)
                .keys()
                .any(|id| self.waiting.contains_key(id))
    }

    /// In audit mode, logs each would-deny verdict that the kernel counted
    /// since the last report, by workload and reason.
    fn poll(&mut self) {
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
