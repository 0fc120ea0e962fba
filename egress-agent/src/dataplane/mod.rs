//! The enforcement data plane: eBPF programs attached once at a cgroup
//! root, and the maps they decide with.
//!
//! # Design
//!
//! The programs (`cgroup_skb/egress`, `cgroup/connect4`, `connect6`,
//! `sendmsg4`, `sendmsg6`, the recorders `sockops` and
//! `cgroup_skb/ingress`, `cgroup/getsockopt`, which answers
//! `SO_ORIGINAL_DST` for redirected connections, and `cgroup/recvmsg4/6`,
//! which restore the source of redirected DNS answers) are attached **once**,
//! at the agent's cgroup root, through bpf_links pinned under
//! `<pin_dir>/links`. A workload is an entry of the `WORKLOADS` map, keyed
//! by its cgroup id. So:
//! - there is one attach point, whatever the number of workloads;
//! - a new workload is enforced by one map write: no attach, no verifier
//!   run per cgroup;
//! - descendants are covered: the programs run for every cgroup below the
//!   root. A process that creates a child cgroup of its workload's and
//!   moves into it does not escape, because the programs walk the
//!   socket's ANCESTORS, deepest first, at the levels where workloads
//!   live (`CONFIG.level_mask`), and the first one that is a workload
//!   decides. Cgroups that are no workload's are allowed, and counted.
//!
//! Map contents come in generations (see `generation.rs`): an apply writes a
//! complete new generation beside the live one, then flips one index, so a
//! connection always sees one complete generation.
//!
//! Egress rules restrict what a workload initiates; replies on flows that
//! came in are allowed, as Kubernetes does (`Reason::Reply`). The recorders
//! learn those flows from the kernel (accepted TCP sockets whose handshake
//! completed; UDP datagrams received by managed sockets) into
//! `INBOUND_TCP` and `INBOUND_UDP`, which are not part of a generation:
//! they describe sockets, not policy. So are `REDIRECTED` and `ORIG_DST`,
//! the original destinations of connects that `connect4/6` rewrote to a
//! Redirect's proxy, and `DNS_ORIG`, the servers of redirected DNS queries
//! (the Redirect itself, `CAPTURES` and `CAPTURE_V4/V6`, is part of each
//! generation). Maps and links are
//! pinned: an agent that restarts (after a crash or SIGKILL) adopts them
//! without detaching anything, so enforcement never has a gap, and fails
//! closed while no agent runs.
//!
//! # Flow
//!
//! [`MapImage::build`] turns a [`Plan`](crate::compile::Plan) into map
//! contents (pure; unit-tested without root); [`Dataplane::open`] loads or
//! adopts the programs; [`Dataplane::apply`] writes an image.
//!
//! ```no_run
//! use std::{collections::BTreeMap, path::Path};
//! use egress_agent::{compile, dataplane::{self, Dataplane, MapImage}, sys};
//!
//! let plan = compile::compile(&egress_policy::load(&["policies".into()]).unwrap().model);
//! let mount = sys::cgroup2_mount()?;
//! let ids = dataplane::cgroup_ids(&plan, &mount);
//! let image = MapImage::build(&plan, &ids, &BTreeMap::new(), false)?;
//! let mut dataplane = Dataplane::open(Path::new(dataplane::DEFAULT_PIN_DIR), &mount)?;
//! dataplane.apply(&image)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Minimum kernel: 5.10 (bpf_link for cgroups and
//! `bpf_get_current_ancestor_cgroup_id` in sock_addr programs since 5.7;
//! `skb_tcp_flags` in `sock_ops`, which tells a Fast Open child from a
//! completed handshake, since 5.10), 5.11 for eBPF memory charged to the
//! memory cgroup rather than `RLIMIT_MEMLOCK`.

mod capacities;
mod cgroups;
mod counters;
mod dump;
mod error;
mod generation;
mod image;
mod keys;
mod links;
mod maps;
pub mod nft;
pub mod object;
mod syscalls;
mod test_run;
mod uninstall;

use std::path::{Path, PathBuf};

use crate::sys;
use egress_policy::model::ObjectId;

pub use capacities::{Capacities, MAX_CIDRS_FLAG};
pub use cgroups::{cgroup_ids, relative as cgroup_relative};
pub use counters::{Counters, RuleHit, VerdictKind};
pub use egress_common::{FlowEvent, Hook, Reason};
pub use error::{DataplaneError, ImageError};
pub use generation::{trie_steps, ApplyStats, Prefix, PreparedApply, TrieStep};
pub use image::{
    port_overflows, GatewayHost, HostTable, ImageSize, ImageWorkload, MapImage, PortOverflow,
    MAX_PORTS_PER_PREFIX,
};
pub use links::{program_name, AttachedLink};
pub use maps::{EbpfLogLevel, EntryCounts, FlowEntries};
pub use test_run::test_run;
pub use uninstall::UninstallReport;

use cgroups::CgroupRoot;
use generation::{Allocator, Applier, Generation};
use maps::Maps;

/// The hooks whose programs this kernel can run: every hook, less
/// `Hook::SockCreate` where BPF LSM programs cannot be loaded (see
/// `links::establish`). What `open` attaches, and `uninstall` removes.
pub fn supported_hooks() -> Vec<Hook> {
    let lsm = aya::sys::is_program_supported(aya::programs::ProgramType::Lsm(
        aya::programs::LsmAttachType::Cgroup,
    ))
    .unwrap_or(false);
    Hook::ALL
        .into_iter()
        .filter(|h| *h != Hook::SockCreate || lsm)
        .collect()
}

/// Where the agent pins its maps and links by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/egress-enforcer";

/// The loaded, attached, pinned data plane.
///
/// It holds the maps only: the programs stay attached through their pinned
/// links whether or not a `Dataplane` exists. Dropping it changes nothing
/// in the kernel; [`Dataplane::uninstall`] removes everything.
pub struct Dataplane {
    pin_dir: PathBuf,
    root: CgroupRoot,
    maps: Maps,
    links: Vec<AttachedLink>,
    replaced: Vec<PathBuf>,
    /// The live generation, when this process wrote it; `None` after
    /// `open` or a failed apply, until an apply reconciles the maps.
    live: Option<Generation>,
    ids: Allocator,
    set_ids: Allocator,
    capacities: Capacities,
}

/// What `status` and `/metrics` read of a [`Dataplane`]: its links, and its
/// counters and map fill through handles of their own on the pinned maps.
/// It shares nothing with the `Dataplane`, so it reads on one thread while
/// an apply writes on another; the kernel serializes each map operation,
/// and a count taken during an apply includes what has been written of the
/// new generation so far.
pub struct DataplaneReader {
    pin_dir: PathBuf,
    cgroup_root: PathBuf,
    links: Vec<AttachedLink>,
    maps: Maps,
    capacities: Capacities,
}

impl DataplaneReader {
    /// See [`Dataplane::counters`].
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        Counters::read(&self.maps)
    }

    /// See [`Dataplane::entry_counts`].
    pub fn entry_counts(&self) -> Result<EntryCounts, DataplaneError> {
        self.maps.entry_counts()
    }

    /// See [`Dataplane::flow_entries`].
    pub fn flow_entries(&self) -> FlowEntries {
        self.maps.flow_entries()
    }

    /// See [`Dataplane::event_stats`].
    pub fn event_stats(&self) -> Result<Vec<(egress_common::EventStat, u64)>, DataplaneError> {
        self.maps.event_stats()
    }

    /// The capacities the maps were loaded (or adopted) with.
    pub fn capacities(&self) -> Capacities {
        self.capacities
    }

    /// The programs' links, as the `Dataplane` attached or adopted them.
    pub fn links(&self) -> &[AttachedLink] {
        &self.links
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }
}

impl Dataplane {
    /// Loads the embedded object with maps pinned under `<pin_dir>/maps`
    /// (reusing pinned maps if present), attaches every program at
    /// `cgroup_root` via bpf_link and pins the links under
    /// `<pin_dir>/links` — or, if pinned links already exist (agent
    /// restart after a crash/SIGKILL), adopts them without ever detaching:
    /// enforcement never has a gap. Links of another agent build are
    /// replaced: the new link is attached first, the old one unpinned after.
    pub fn open(pin_dir: &Path, cgroup_root: &Path) -> Result<Self, DataplaneError> {
        Self::open_logging(pin_dir, cgroup_root, EbpfLogLevel::Off)
    }

    /// [`Dataplane::open`], with the programs' aya-log output at
    /// `log_level` when this call loads them (adopted programs keep the
    /// level they were loaded with); read it with [`Dataplane::ebpf_logger`].
    pub fn open_logging(
        pin_dir: &Path,
        cgroup_root: &Path,
        log_level: EbpfLogLevel,
    ) -> Result<Self, DataplaneError> {
        Self::open_with(pin_dir, cgroup_root, log_level, Capacities::default())
    }

    /// [`Dataplane::open_logging`], with the maps sized by `capacities`:
    /// maps created now get them; pinned maps of another size are refused
    /// ([`DataplaneError::CapacityMismatch`]).
    pub fn open_with(
        pin_dir: &Path,
        cgroup_root: &Path,
        log_level: EbpfLogLevel,
        capacities: Capacities,
    ) -> Result<Self, DataplaneError> {
        let root = CgroupRoot::inspect(cgroup_root)?;
        // Checked on the nearest existing ancestor, so that nothing is
        // created outside bpffs.
        let existing = pin_dir
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        let on_bpffs = sys::is_bpffs(existing).map_err(|source| DataplaneError::Io {
            action: "inspecting",
            path: existing.to_owned(),
            source,
        })?;
        if !on_bpffs {
            return Err(DataplaneError::NotBpffs {
                path: pin_dir.to_owned(),
            });
        }
        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
                action: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        let mut ebpf = maps::load_object(&maps_dir, log_level, &capacities)?;
        let maps = Maps::take(&mut ebpf, &maps_dir)?;
        let (links, replaced) = links::establish(&mut ebpf, &links_dir, &root, maps.own)?;
        // The programs stay loaded through their links; this process keeps
        // only the maps.
        drop(ebpf);
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            root,
            maps,
            links,
            replaced,
            live: None,
            ids: Allocator::default(),
            set_ids: Allocator::port_sets(),
            capacities,
        })
    }

    /// Writes the image as the inactive generation, flips `ACTIVE`, and
    /// deletes the old generation — also entries left by a previous agent
    /// process that the new image does not contain: the first apply after
    /// `open` reconciles by enumerating the maps.
    ///
    /// An error means the flip did not happen: the live generation stays in
    /// force, and what was written of the new one is taken back. `Ok` means
    /// the new generation is in force, even if deleting the old one stopped
    /// short ([`ApplyStats::cleanup_error`]; the next apply reconciles).
    pub fn apply(&mut self, image: &MapImage) -> Result<ApplyStats, DataplaneError> {
        self.prepare(image)?.commit()
    }

    /// The first half of [`Dataplane::apply`]: writes the image as the
    /// inactive generation, beside the live one, which stays in force.
    /// [`PreparedApply::commit`] then flips to it, or
    /// [`PreparedApply::abort`] (or dropping it) takes it back, leaving the
    /// maps as they were. Whatever runs in between (the agent programs the
    /// nftables backstop there) decides whether the new generation takes
    /// effect at all.
    ///
    /// Fails, with nothing in force changed, if a workload is not below the
    /// cgroup root or too deep, or a map cannot take the new entries.
    pub fn prepare(&mut self, image: &MapImage) -> Result<PreparedApply<'_>, DataplaneError> {
        let capacities = self.capacities;
        let staged = Applier {
            maps: &mut self.maps,
            root: &self.root,
            live: &mut self.live,
            ids: &mut self.ids,
            set_ids: &mut self.set_ids,
        }
        .stage(image)
        .map_err(|e| capacities.explain_full(e))?;
        Ok(PreparedApply {
            maps: &mut self.maps,
            live: &mut self.live,
            staged: Some(staged),
        })
    }

    /// Makes `cgroup` unmanaged right now, in the generation in force and
    /// the next, without an apply: for an agent that runs below a guarded
    /// root (in a pod) and must reach the API server before it can build
    /// its first plan. Include the cgroup as an exempt guard in the plans
    /// that follow, or the next apply removes the exemption.
    pub fn exempt_now(&mut self, id: &ObjectId, cgroup: &str) -> Result<u64, DataplaneError> {
        generation::exempt_now(&mut self.maps, &self.root, id, cgroup)
    }

    /// The verdict counters: per verdict kind, and per (cgroup, rule,
    /// verdict).
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        Counters::read(&self.maps)
    }

    /// How many verdicts of `kind` the programs returned: one counter of
    /// [`Dataplane::counters`], read with a single lookup, for a caller
    /// that checks the reason of every test run (fuzz/fuzz_targets/packet.rs).
    /// `kind.hook` must decide ([`Hook::decides`]); others have no counter
    /// and the lookup fails.
    pub fn verdict_count(&self, kind: VerdictKind) -> Result<u64, DataplaneError> {
        Counters::read_one(&self.maps, kind)
    }

    /// Entries currently in each map (both generations, plus anything
    /// stale), e.g. to check that a reload left nothing behind.
    pub fn entry_counts(&self) -> Result<EntryCounts, DataplaneError> {
        self.maps.entry_counts()
    }

    /// Entries of the inbound-flow maps (accepted TCP sockets, received UDP
    /// flows): a snapshot of state the programs keep, not of the policy.
    pub fn flow_entries(&self) -> FlowEntries {
        self.maps.flow_entries()
    }

    /// The verdict event ring, for the one reader that streams it; `None`
    /// once taken.
    pub fn take_event_ring(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.maps.events.take()
    }

    /// Sets allow sampling and the rate limit of verdict events.
    pub fn set_event_config(
        &mut self,
        config: egress_common::EventConfig,
    ) -> Result<(), DataplaneError> {
        self.maps.set_event_config(config)
    }

    /// What happened to verdict events in the kernel (emitted, suppressed
    /// by the rate limit, refused by a full ring), summed over CPUs.
    pub fn event_stats(&self) -> Result<Vec<(egress_common::EventStat, u64)>, DataplaneError> {
        self.maps.event_stats()
    }

    /// The active generation slot.
    pub fn active_slot(&self) -> Result<u32, DataplaneError> {
        self.maps.active_slot()
    }

    /// The policy maps' contents with every id replaced by what it names
    /// (see `dump`): equal for two data planes that enforce the same
    /// thing, whatever ids each handed out. Reads every entry; for tests.
    pub fn canonical_dump(&self) -> Result<String, DataplaneError> {
        dump::canonical(&self.maps)
    }

    /// A reader of the programs' aya-log records, forwarding them to
    /// `logger`: they share one log ring, found through `cgroup_skb`'s
    /// program (loaded now or adopted).
    pub fn ebpf_logger<T: log::Log>(
        &self,
        logger: T,
    ) -> Result<aya_log::EbpfLogger<T>, DataplaneError> {
        let skb = self
            .links
            .iter()
            .find(|l| l.hook == Hook::Skb)
            .ok_or(DataplaneError::MissingProgram(program_name(Hook::Skb)))?;
        aya_log::EbpfLogger::init_from_id_with_logger(skb.program_id, logger)
            .map_err(|source| DataplaneError::EbpfLog { source })
    }

    /// The programs' links, in attach order.
    pub fn links(&self) -> &[AttachedLink] {
        &self.links
    }

    /// Whether the program of `hook` runs. Only `Hook::SockCreate` can be
    /// missing (a kernel without the BPF LSM); `open` fails for the rest.
    pub fn enforces(&self, hook: Hook) -> bool {
        self.links.iter().any(|l| l.hook == hook)
    }

    /// Pins of links that `open` replaced (another build's, or attached
    /// elsewhere).
    pub fn replaced_links(&self) -> &[PathBuf] {
        &self.replaced
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup_root(&self) -> &Path {
        &self.root.path
    }

    /// A second, read-only handle on this data plane's pinned maps (see
    /// [`DataplaneReader`]).
    pub fn reader(&self) -> Result<DataplaneReader, DataplaneError> {
        Ok(DataplaneReader {
            pin_dir: self.pin_dir.clone(),
            cgroup_root: self.root.path.clone(),
            links: self.links.clone(),
            maps: Maps::open_pinned(&self.pin_dir.join("maps"))?,
            capacities: self.capacities,
        })
    }

    /// Detaches and removes everything under `pin_dir` that the agent
    /// created (links, so the programs detach; then maps), and nothing
    /// else. Idempotent. Works without an open `Dataplane` (e.g. from
    /// `egress-agent uninstall` after a crash); an open one in this
    /// process keeps its maps alive until it is dropped.
    pub fn uninstall(pin_dir: &Path) -> Result<UninstallReport, DataplaneError> {
        uninstall::uninstall(pin_dir)
    }

    /// Whether an earlier agent left programs attached through links
    /// pinned under `pin_dir`: an agent started there adopts them, and
    /// the generation their maps hold stays in force. Only reads the
    /// directory; an unreadable one counts as nothing pinned.
    pub fn is_pinned(pin_dir: &Path) -> bool {
        links::pinned(&pin_dir.join("links")).is_ok_and(|links| !links.is_empty())
    }
}
