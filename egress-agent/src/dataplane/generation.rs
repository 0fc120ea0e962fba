//! Generations: write the new one, then flip one index.
//!
//! The maps hold up to two generations. `ACTIVE[0]` says which
//! `WorkloadSlot` slot the programs read, and every other entry is keyed by
//! ids (policy ids, the cluster tag, port set and host table ids). An id
//! names one *object* (a policy's tries, capture and `POLICIES` entry; a
//! port set chain; a host table; the cluster's CIDRs). An object is
//! written whole under a fresh id and deleted whole; the one exception is
//! a policy's tries, updated in place (below). An apply:
//!
//! 1. keeps every object of the live generation whose contents the new one
//!    wants unchanged (same id, entries untouched), takes over policies
//!    to update in place, and writes the others under fresh ids;
//! 2. writes the inactive slot of every `WORKLOADS` entry whose policy
//!    differs from what that slot holds (the new policy, or 0), creating
//!    entries for new workloads with only that slot set;
//! 3. updates the taken-over policies' tries in place, and flips `ACTIVE`;
//! 4. waits until no program that read the old slot is still running (an
//!    RCU grace period, see [`syscalls::wait_for_running_programs`]);
//! 5. deletes the objects the new generation did not keep, deletes the
//!    entries of workloads that are gone, and sets every remaining
//!    workload's old slot to its new value.
//!
//! A program run reads `ACTIVE` first and then only objects its slot's
//! policy names, directly or through the ids in their entries. Both the
//! old and the new generation are complete in the maps from step 1 until
//! step 5, and a kept object belongs to both, unchanged: so a run sees one
//! complete generation, and an allowed connection never fails and a denied
//! one never passes during a reload. Step 5 writes the old slot only after
//! the grace period, when no run reads it; the next apply's step 2 writes
//! it again (while it is inactive) if the workload's policy changes.
//!
//! Contents are compared as the kernel holds them, ids they name included
//! (see [`PolicyContent`]): objects are resolved bottom up, port sets
//! first, so a policy is kept only if every port set and host table it
//! names is kept too, and a new cluster tag makes every policy new. What
//! an unchanged apply costs is thus reads and hashing; a new pod under a
//! policy already in force costs three map writes (its `WORKLOADS` entry
//! in step 2 and again in step 5, and `ACTIVE`), plus its own `SOURCES`
//! pairs when its sources are checked; `CONFIG` is written only when it
//! changes.
//!
//! # Tries updated in place
//!
//! A policy with one CIDR changed keeps its id, and only that CIDR is
//! written ([`in_place`]). A policy of the live generation is taken over
//! by a new policy when:
//!
//! - the new generation does not want its contents unchanged (exact keeps
//!   are resolved first, for every workload, so an object some workload
//!   still wants as it is is kept, not updated);
//! - every workload on it in the live slot is on the new policy in the
//!   new generation (the old generation reads it too, see below);
//! - its `POLICIES` entry (flags, cluster tag), capture and capture tries
//!   stay the same, only `ALLOW_*` and `GATEWAY_*` entries change, not
//!   both kinds in one family, and no `ALLOW_*` value names a host table;
//! - at most half of its entries change: beyond that a fresh object costs
//!   at most twice the writes, and keeps the simpler flip.
//!
//! Otherwise the new policy is written whole under a fresh id
//! ([`ApplyStats::in_place_declined`] counts the cases where a takeover
//! was possible by workload). Both ways leave the same contents; the
//! dump test (`tests/tests/apply_diff.rs`) checks that the maps equal a
//! full apply's.
//!
//! Why a run still sees one complete generation. The updated object is
//! in both generations, so before the flip the old generation reads it
//! as it changes. The steps are ordered (upserts longest prefix first,
//! then deletes shortest first) so that for each address the trie's
//! answer goes from the old one to the new one exactly once, never a
//! third (the argument is in [`in_place`]). A run reads the changing
//! trie once for its address (that is why flagged `ALLOW_*` values,
//! read twice, and `ALLOW_*` with `GATEWAY_*`, read together, are
//! declined), and everything else it reads through the policy is
//! unchanged. The workloads of the old generation that read it all move
//! to the new contents, so what such a run sees is, per address, either
//! its old-generation answer or its new-generation one: as if the run
//! came before or after the flip. Port sets the new entries name are
//! written in staging, before any update; those the old entries named are
//! deleted after the grace period, as before.
//!
//! Abort. An in-place write cannot be taken back by not flipping, so the
//! updates run in [`commit`], right before the flip: after what the agent
//! runs between stage and commit (the nftables transaction) succeeded. An
//! abort before commit has nothing to undo. If an update or the flip
//! fails, the updates already written are undone (the steps from new to
//! old, in the same safe order) before the staged generation is taken
//! back; if undoing fails too, the next apply reconciles.
//!
//! What the live generation holds is known only to the process that wrote
//! it: after `open` adopts pins, or after an apply that failed half way,
//! the next apply writes every object fresh and sweeps the maps for
//! anything not of the new generation, as before.
//!
//! Steps 1 and 2 ([`Applier::stage`]) and steps 3 to 5 ([`commit`]) can be
//! taken apart, with something else in between: the agent programs the
//! nftables backstop there, so that both succeed or neither takes effect.
//! A staged generation that is not committed is taken back ([`abort`]):
//! until the flip nothing a program reads has changed. The flip is the
//! last step that can fail; after it the apply has happened, and a failure
//! while deleting the old generation only leaves entries for the next
//! apply to reconcile.
//!
//! `CONFIG` is not part of a generation: while both are live its level
//! mask is the union of theirs, and audit mode is on if either wants it.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use aya::maps::lpm_trie::Key;
use egress_common::{
    host_ports, map, Config, PolicyAddrV4, PolicyAddrV6, PortEntry, SourceKey, WorkloadSlot,
    EMPTY_SET, EXEMPT_POLICY, MAX_LEVEL, MAX_PORT_ENTRIES,
};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::IpAddr;

use super::{
    cgroups::CgroupRoot, image::ImageCapture, maps::Maps, syscalls, DataplaneError, HostTable,
    ImageWorkload, MapImage,
};

mod in_place;
mod sweep;
mod write;

pub use in_place::{trie_steps, Prefix, TrieStep};

use sweep::{delete, delete_foreign, delete_keys, prune_sources, scan_ids};
use write::{
    add_sources, level_mask, wanted_sources, write_cluster, write_host_table, write_policy,
    write_port_set, write_workload,
};

/// What an apply did, and how long each phase took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// The slot that is active now.
    pub slot: u32,
    /// Policies written: one per distinct set of tables (workloads with
    /// equal tables share one).
    pub policies: usize,
    /// `ALLOW_V4/V6` entries written.
    pub allow_entries: usize,
    /// `GATEWAY_V4/V6` entries written.
    pub gateway_entries: usize,
    /// `CLUSTER_V4/V6` entries written.
    pub cluster_entries: usize,
    /// `HOST_PORTS` entries written.
    pub host_port_entries: usize,
    /// `PORT_SETS` entries written.
    pub port_sets: usize,
    /// `CAPTURES` and `CAPTURE_V4/V6` entries written.
    pub capture_entries: usize,
    /// Entries of earlier generations deleted (all maps).
    pub removed: usize,
    /// Policies of the previous generation kept, id and entries, because
    /// the new one wants the same contents (the counts above are of what
    /// was written, so they leave these out).
    pub reused_policies: usize,
    /// Port sets and host tables kept likewise.
    pub reused_port_sets: usize,
    pub reused_host_tables: usize,
    /// Whether the cluster tag and its entries were kept.
    pub reused_cluster: bool,
    /// Policies of the previous generation whose tries were updated in
    /// place, under the same id, instead of written whole under a new one
    /// (at commit, just before the flip).
    pub updated_in_place: usize,
    /// Trie entries those updates upserted or deleted (also counted in
    /// `written` and `removed`).
    pub in_place_entries: usize,
    /// Changed policies that took over a previous policy's workloads but
    /// were written whole all the same: too many entries changed, or more
    /// than the tries (see `generation::in_place::plan`), or a workload
    /// still on the old policy does not move with it.
    pub in_place_declined: usize,
    /// Entries written to the generation's maps (tries, port sets, host
    /// tables, policies, captures), kept ones not counted.
    pub written: usize,
    /// `WORKLOADS` entries written (staging and cleanup; deletions are in
    /// `removed`).
    pub workload_writes: usize,
    /// Whether the previous state was unknown (first apply after `open`, or
    /// after a failed apply) and the maps were enumerated to find it.
    pub reconciled: bool,
    /// Writing the new generation, up to and including the flip (with
    /// whatever ran between `prepare` and `commit`: the nft transaction).
    pub write: Duration,
    /// Waiting for programs that might still read the old generation.
    pub grace: Duration,
    /// Deleting the old generation.
    pub cleanup: Duration,
    pub total: Duration,
    /// Why deleting the old generation stopped short, if it did. The new
    /// generation is in force all the same; the stale entries are removed
    /// by the next apply, which reconciles.
    pub cleanup_error: Option<String>,
}

/// Keys of one generation, so that it can be deleted exactly.
#[derive(Clone, Default)]
struct Keys {
    allow_v4: Vec<Key<PolicyAddrV4>>,
    allow_v6: Vec<Key<PolicyAddrV6>>,
    gateway_v4: Vec<Key<PolicyAddrV4>>,
    gateway_v6: Vec<Key<PolicyAddrV6>>,
    cluster_v4: Vec<Key<PolicyAddrV4>>,
    cluster_v6: Vec<Key<PolicyAddrV6>>,
    host_ports: Vec<u64>,
    capture_v4: Vec<Key<PolicyAddrV4>>,
    capture_v6: Vec<Key<PolicyAddrV6>>,
    captures: Vec<u32>,
    policies: Vec<u32>,
    port_sets: Vec<u32>,
}

impl Keys {
    fn extend(&mut self, other: &Keys) {
        self.allow_v4.extend(&other.allow_v4);
        self.allow_v6.extend(&other.allow_v6);
        self.gateway_v4.extend(&other.gateway_v4);
        self.gateway_v6.extend(&other.gateway_v6);
        self.cluster_v4.extend(&other.cluster_v4);
        self.cluster_v6.extend(&other.cluster_v6);
        self.host_ports.extend(&other.host_ports);
        self.capture_v4.extend(&other.capture_v4);
        self.capture_v6.extend(&other.capture_v6);
        self.captures.extend(&other.captures);
        self.policies.extend(&other.policies);
        self.port_sets.extend(&other.port_sets);
    }

    fn len(&self) -> usize {
        self.allow_v4.len()
            + self.allow_v6.len()
            + self.gateway_v4.len()
            + self.gateway_v6.len()
            + self.cluster_v4.len()
            + self.cluster_v6.len()
            + self.host_ports.len()
            + self.capture_v4.len()
            + self.capture_v6.len()
            + self.captures.len()
            + self.policies.len()
            + self.port_sets.len()
    }
}

/// The live generation, as this process wrote it.
pub(super) struct Generation {
    slot: u32,
    /// Policy ids and the cluster tag.
    ids: HashSet<u32>,
    sets: HashSet<u32>,
    /// What it holds, object by object and by content: what the next
    /// generation keeps when it wants the same, and deletes otherwise.
    objects: Objects,
}

/// One object of a generation (a policy, a port set chain, a host table,
/// the cluster) under its id, with every key written for it.
struct Object {
    id: u32,
    keys: Keys,
}

/// A generation's objects by content. Contents are what the kernel holds
/// under the id, with every id they name already a kernel id: equal
/// contents are interchangeable, whichever generation wrote them.
#[derive(Default)]
struct Objects {
    port_sets: HashMap<Vec<PortEntry>, Object>,
    host_tables: HashMap<(HostTable, u32), Object>,
    cluster: HashMap<ClusterContent, Object>,
    policies: HashMap<PolicyContent, Object>,
}

impl Objects {
    /// Moves back the objects that staging kept from the generation of
    /// `ids` and `sets` (fresh ones have ids it does not have).
    fn take_back(&mut self, new: Objects, ids: &HashSet<u32>, sets: &HashSet<u32>) {
        fn back<C: Eq + std::hash::Hash>(
            to: &mut HashMap<C, Object>,
            from: HashMap<C, Object>,
            ids: &HashSet<u32>,
        ) {
            to.extend(from.into_iter().filter(|(_, o)| ids.contains(&o.id)));
        }
        back(&mut self.port_sets, new.port_sets, sets);
        back(&mut self.host_tables, new.host_tables, sets);
        back(&mut self.cluster, new.cluster, ids);
        back(&mut self.policies, new.policies, ids);
    }

    /// Objects in the id space of policies and the cluster tag.
    fn by_id(&self) -> impl Iterator<Item = &Object> {
        self.cluster.values().chain(self.policies.values())
    }

    /// Objects in the id space of port sets and host tables.
    fn by_set(&self) -> impl Iterator<Item = &Object> {
        self.port_sets.values().chain(self.host_tables.values())
    }
}

/// What the cluster tag names: its CIDRs and its flagged hosts.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClusterContent {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
    hosts: Vec<(IpAddr, u8)>,
}

/// What the kernel holds under one policy id, with the kernel's set ids
/// and cluster tag in it (see [`ImageWorkload::tables`]).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct PolicyContent {
    pub(super) flags: u32,
    pub(super) cluster: u32,
    pub(super) allow_v4: Vec<(Ipv4Net, u32)>,
    pub(super) allow_v6: Vec<(Ipv6Net, u32)>,
    pub(super) gateway_v4: Vec<(Ipv4Net, u32)>,
    pub(super) gateway_v6: Vec<(Ipv6Net, u32)>,
    pub(super) capture: Option<ImageCapture>,
}

/// Hands out ids that are not taken, in a wrapping sequence (0 is never
/// handed out: it means "none" in `WorkloadSlot` and "empty" for sets).
#[derive(Debug)]
pub(super) struct Allocator {
    next: u32,
    /// Ids stay below this.
    end: u32,
}

impl Default for Allocator {
    fn default() -> Self {
        Self {
            next: 1,
            end: u32::MAX,
        }
    }
}

impl Allocator {
    /// For port set and host table ids, which share the `ALLOW_*` value
    /// with `host_ports::ALLOW_FLAG` and so stay below it.
    pub(super) fn port_sets() -> Self {
        Self {
            next: 1,
            end: host_ports::ALLOW_FLAG,
        }
    }

    pub(super) fn fresh(&mut self, taken: &HashSet<u32>) -> u32 {
        loop {
            let id = self.next;
            self.next = match id.checked_add(1) {
                Some(n) if n < self.end => n,
                _ => 0,
            };
            if id != 0 && id < self.end && id != EXEMPT_POLICY && !taken.contains(&id) {
                return id;
            }
        }
    }
}

/// Everything an apply needs besides the image.
pub(super) struct Applier<'a> {
    pub(super) maps: &'a mut Maps,
    pub(super) root: &'a CgroupRoot,
    pub(super) live: &'a mut Option<Generation>,
    pub(super) ids: &'a mut Allocator,
    pub(super) set_ids: &'a mut Allocator,
}

impl Applier<'_> {
    /// Steps 1 and 2: the new generation written beside the live one, which
    /// stays in force. On error, whatever was written is taken back.
    pub(super) fn stage(self, image: &MapImage) -> Result<Staged, DataplaneError> {
        let start = Instant::now();
        let new_mask = level_mask(self.root, image)?;
        let maps = self.maps;
        let live_slot = maps.active_slot()?;
        let new_slot = 1 - live_slot;
        let existing = maps.workload_slots()?;
        // Until this apply completes, the previous generation is only known
        // if it completes (or is cleanly taken back): a failure leaves a
        // state to be reconciled.
        let known = self.live.take();
        let (old, taken_ids, taken_sets, reconciled) = match known {
            Some(g) if g.slot == live_slot => {
                let (ids, sets) = (g.ids.clone(), g.sets.clone());
                (Some(g), ids, sets, false)
            }
            _ => {
                let (ids, sets) = scan_ids(maps, &existing)?;
                (None, ids, sets, true)
            }
        };
        let mut staged = Staged {
            start,
            live_slot,
            new_slot,
            old,
            new: Generation {
                slot: new_slot,
                ids: HashSet::new(),
                sets: HashSet::new(),
                objects: Objects::default(),
            },
            fresh: Keys::default(),
            before: existing.into_iter().collect(),
            slots: HashMap::new(),
            new_policy: HashMap::new(),
            updates: Vec::new(),
            sources: wanted_sources(image),
            added_sources: Vec::new(),
            config_before: None,
            new_mask,
            audit_flag: if image.audit() { Config::AUDIT } else { 0 },
            stats: ApplyStats {
                slot: new_slot,
                reconciled,
                ..ApplyStats::default()
            },
        };
        let staging = Staging {
            maps: &mut *maps,
            ids: self.ids,
            set_ids: self.set_ids,
            taken_ids,
            taken_sets,
        };
        match staging.write(image, &mut staged) {
            Ok(()) => Ok(staged),
            Err(err) => {
                abort(maps, self.live, staged);
                Err(err)
            }
        }
    }
}

/// A generation written beside the live one and not in force yet: what
/// [`commit`] flips to, or [`abort`] takes back.
pub(super) struct Staged {
    start: Instant,
    live_slot: u32,
    new_slot: u32,
    /// The live generation as this process wrote it; `None`: reconcile.
    old: Option<Generation>,
    new: Generation,
    /// The entries staging wrote: the new generation less what it kept of
    /// the old one. All that [`abort`] deletes.
    fresh: Keys,
    /// `WORKLOADS` before staging, and as staged.
    before: HashMap<u64, WorkloadSlot>,
    slots: HashMap<u64, WorkloadSlot>,
    /// Each staged workload's policy id.
    new_policy: HashMap<u64, u32>,
    /// Policies of the live generation to update in place at commit.
    updates: Vec<in_place::Update>,
    /// `SOURCES` as the new generation wants it, and the pairs staging
    /// added.
    sources: HashSet<SourceKey>,
    added_sources: Vec<SourceKey>,
    /// `CONFIG` before staging widened it for the transition.
    config_before: Option<Config>,
    new_mask: u32,
    audit_flag: u32,
    stats: ApplyStats,
}

/// A new generation written beside the live one, not in force yet (see
/// [`Dataplane::prepare`](super::Dataplane::prepare)). Dropping it without
/// [`PreparedApply::commit`] takes it back, as [`PreparedApply::abort`]
/// does.
#[must_use = "a prepared generation takes effect only when committed"]
pub struct PreparedApply<'a> {
    pub(super) maps: &'a mut Maps,
    pub(super) live: &'a mut Option<Generation>,
    pub(super) staged: Option<Staged>,
}

impl PreparedApply<'_> {
    /// Flips to the new generation and deletes the old one. An error means
    /// the flip did not happen: the new generation is taken back and the
    /// old one stays in force. See [`ApplyStats::cleanup_error`] for what
    /// can go wrong after the flip without undoing it.
    pub fn commit(mut self) -> Result<ApplyStats, DataplaneError> {
        let staged = self.staged.take().expect("staged until consumed");
        commit(self.maps, self.live, staged)
    }

    /// Takes the new generation back; the maps are as they were before
    /// [`Dataplane::prepare`](super::Dataplane::prepare). Returns the
    /// entries removed.
    pub fn abort(mut self) -> usize {
        let staged = self.staged.take().expect("staged until consumed");
        abort(self.maps, self.live, staged)
    }
}

impl Drop for PreparedApply<'_> {
    fn drop(&mut self) {
        if let Some(staged) = self.staged.take() {
            abort(self.maps, self.live, staged);
        }
    }
}

/// What staging writes with, besides the maps' live state.
struct Staging<'a> {
    maps: &'a mut Maps,
    ids: &'a mut Allocator,
    set_ids: &'a mut Allocator,
    taken_ids: HashSet<u32>,
    taken_sets: HashSet<u32>,
}

impl Staging<'_> {
    /// Writes the new generation, noting each write in `staged` as it
    /// goes, so that [`abort`] can take back a partial one.
    ///
    /// An object of the live generation with the same content is kept,
    /// id, entries and all, instead of written again: contents are
    /// resolved to kernel ids bottom up (port sets, then host tables,
    /// which name them, then the cluster, then policies, which name all
    /// three), so a kept object only names kept or fresh objects of the
    /// new generation.
    fn write(mut self, image: &MapImage, staged: &mut Staged) -> Result<(), DataplaneError> {
        // Taken out so that what is kept can be moved over; put back
        // below, whatever happens, for `abort` and `clean_up`.
        let mut old = staged.old.as_mut().map(|g| std::mem::take(&mut g.objects));
        let written = self.write_objects(image, staged, old.as_mut());
        if let (Some(g), Some(rest)) = (staged.old.as_mut(), old) {
            g.objects = rest;
        }
        let policy_ids = written?;
        let maps = &mut *self.maps;

        // CONFIG for the transition: both generations' levels; audit if
        // either generation is in audit mode.
        let before = maps.config()?;
        staged.config_before = Some(before);
        let transition = Config {
            flags: (before.flags & Config::AUDIT) | staged.audit_flag,
            level_mask: before.level_mask | staged.new_mask,
        };
        if transition != before {
            maps.set_config(transition)?;
        }

        // 2. The inactive slot of every workload entry. A workload whose
        // policy is unchanged has it already: cleanup leaves both slots
        // equal.
        staged.new_policy = image
            .workloads()
            .iter()
            .zip(&policy_ids)
            .map(|(w, id)| (w.cgroup_id, *id))
            .collect();
        staged.slots = staged.before.clone();
        for cgroup in staged.new_policy.keys() {
            staged.slots.entry(*cgroup).or_default();
        }
        let new_slot = staged.new_slot as usize;
        for (cgroup, slot) in &mut staged.slots {
            let want = staged.new_policy.get(cgroup).copied().unwrap_or(0);
            if slot.policy[new_slot] != want {
                slot.policy[new_slot] = want;
                write_workload(maps, *cgroup, *slot)?;
                staged.stats.workload_writes += 1;
            }
        }
        Ok(())
    }

    /// Step 1: every object of the new generation, kept from `old` or
    /// written under a fresh id; each workload's policy id.
    fn write_objects(
        &mut self,
        image: &MapImage,
        staged: &mut Staged,
        mut old: Option<&mut Objects>,
    ) -> Result<Vec<u32>, DataplaneError> {
        let maps = &mut *self.maps;
        let (ids, taken_ids) = (&mut *self.ids, &mut self.taken_ids);
        let (set_ids_alloc, taken_sets) = (&mut *self.set_ids, &mut self.taken_sets);
        let mut fresh_id = || take(ids, taken_ids);
        let mut fresh_set = || take(set_ids_alloc, taken_sets);
        // The new workloads' own addresses, before anything can make the
        // kernel check them; stale ones go after the grace period.
        add_sources(maps, &staged.sources, &mut staged.added_sources)?;

        let new = &mut staged.new;
        let fresh = &mut staged.fresh;
        let stats = &mut staged.stats;
        // Moves `content`'s object from the old generation to the new one
        // if the old one has it.
        fn keep<C: Eq + std::hash::Hash + Clone>(
            old: Option<&mut HashMap<C, Object>>,
            new: &mut HashMap<C, Object>,
            content: &C,
        ) -> Option<u32> {
            if let Some(id) = new.get(content).map(|o| o.id) {
                return Some(id);
            }
            let object = old?.remove(content)?;
            let id = object.id;
            new.insert(content.clone(), object);
            Some(id)
        }

        // Port sets. One kernel set per MAX_PORT_ENTRIES entries of an
        // image set; the first is the one the tries name.
        let mut set_ids = Vec::with_capacity(image.port_sets().len());
        for entries in image.port_sets() {
            let first = match keep(
                old.as_deref_mut().map(|o| &mut o.port_sets),
                &mut new.objects.port_sets,
                entries,
            ) {
                Some(id) => {
                    stats.reused_port_sets += 1;
                    id
                }
                None => {
                    let ids: Vec<u32> = (0..entries.len().div_ceil(MAX_PORT_ENTRIES).max(1))
                        .map(|_| fresh_set())
                        .collect();
                    let mut keys = Keys::default();
                    let written = write_port_set(maps, entries, &ids, &mut keys, stats);
                    fresh.port_sets.extend(&keys.port_sets);
                    written?;
                    new.objects
                        .port_sets
                        .insert(entries.clone(), Object { id: ids[0], keys });
                    ids[0]
                }
            };
            new.sets
                .extend(&new.objects.port_sets[entries].keys.port_sets);
            new.sets.insert(first);
            set_ids.push(first);
        }
        let set_of = |local: u32| match local {
            EMPTY_SET => EMPTY_SET,
            n => set_ids.get(n as usize - 1).copied().unwrap_or(EMPTY_SET),
        };

        // Host tables take ids from the same space (an `ALLOW_*` value is
        // either), so one scan and one sweep cover both.
        let mut host_ids = Vec::with_capacity(image.host_tables().len());
        for table in image.host_tables() {
            let content = (table.clone(), set_of(table.base));
            let id = match keep(
                old.as_deref_mut().map(|o| &mut o.host_tables),
                &mut new.objects.host_tables,
                &content,
            ) {
                Some(id) => {
                    stats.reused_host_tables += 1;
                    id
                }
                None => {
                    let id = fresh_set();
                    let mut keys = Keys::default();
                    let written = write_host_table(maps, table, id, content.1, &mut keys, stats);
                    fresh.host_ports.extend(&keys.host_ports);
                    written?;
                    new.objects.host_tables.insert(content, Object { id, keys });
                    id
                }
            };
            new.sets.insert(id);
            host_ids.push(id);
        }
        let kernel_set = |local: u32| -> u32 {
            if local & host_ports::ALLOW_FLAG != 0 {
                let host = (local & !host_ports::ALLOW_FLAG) as usize;
                return host
                    .checked_sub(1)
                    .and_then(|i| host_ids.get(i))
                    .map_or(EMPTY_SET, |id| id | host_ports::ALLOW_FLAG);
            }
            set_of(local)
        };

        // The cluster tag.
        let tag = if image.has_cluster() {
            let content = ClusterContent {
                v4: image.cluster_v4().to_vec(),
                v6: image.cluster_v6().to_vec(),
                hosts: image
                    .cluster_port_hosts()
                    .iter()
                    .map(|(a, v)| (*a, *v))
                    .collect(),
            };
            let tag = match keep(
                old.as_deref_mut().map(|o| &mut o.cluster),
                &mut new.objects.cluster,
                &content,
            ) {
                Some(tag) => {
                    stats.reused_cluster = true;
                    tag
                }
                None => {
                    let tag = fresh_id();
                    let mut keys = Keys::default();
                    let written = write_cluster(maps, image, tag, &mut keys, stats);
                    fresh.cluster_v4.extend(&keys.cluster_v4);
                    fresh.cluster_v6.extend(&keys.cluster_v6);
                    written?;
                    new.objects
                        .cluster
                        .insert(content, Object { id: tag, keys });
                    tag
                }
            };
            new.ids.insert(tag);
            tag
        } else {
            0
        };

        // Policies. Exempt entries carry the reserved id in every
        // generation; equal tables share one id (see
        // `ImageWorkload::tables`), and are resolved to kernel contents
        // once. Resolved in three rounds, so that an old object some
        // workload still wants as it is is kept rather than updated: exact
        // contents first, then in-place updates, then fresh objects.
        let mut groups: Vec<Group> = Vec::new();
        let mut shared = HashMap::new();
        let mut group_of = Vec::with_capacity(image.workloads().len());
        for w in image.workloads() {
            if w.exempt {
                group_of.push(None);
                continue;
            }
            let g = *shared.entry(w.tables()).or_insert_with(|| {
                groups.push(Group {
                    content: policy_content(w, tag, &kernel_set),
                    workload: &w.id,
                    cgroups: HashSet::new(),
                    id: None,
                });
                groups.len() - 1
            });
            groups[g].cgroups.insert(w.cgroup_id);
            group_of.push(Some(g));
        }
        for group in &mut groups {
            group.id = keep(
                old.as_deref_mut().map(|o| &mut o.policies),
                &mut new.objects.policies,
                &group.content,
            );
            stats.reused_policies += usize::from(group.id.is_some());
        }
        if let Some(old) = old {
            // Each cgroup's policy id in the live slot, and the reverse.
            let live_slot = staged.live_slot as usize;
            let on: HashMap<u64, u32> = staged
                .before
                .iter()
                .map(|(cgroup, slot)| (*cgroup, slot.policy[live_slot]))
                .collect();
            let mut users: HashMap<u32, HashSet<u64>> = HashMap::new();
            for (cgroup, id) in &on {
                users.entry(*id).or_default().insert(*cgroup);
            }
            let live = Live { on, users };
            for group in groups.iter_mut().filter(|g| g.id.is_none()) {
                if let Some(id) = new.objects.policies.get(&group.content).map(|o| o.id) {
                    group.id = Some(id);
                    continue;
                }
                group.id = update_in_place(old, new, &live, group, &mut staged.updates, stats);
            }
        }
        for group in &mut groups {
            let id = match group.id {
                Some(id) => id,
                None => match new.objects.policies.get(&group.content) {
                    Some(o) => o.id,
                    None => {
                        let id = fresh_id();
                        let mut keys = Keys::default();
                        let written = write_policy(
                            maps,
                            &group.content,
                            id,
                            group.workload,
                            &mut keys,
                            stats,
                        );
                        fresh.extend(&keys);
                        written?;
                        // Not read again: moved, not copied.
                        let content = std::mem::take(&mut group.content);
                        new.objects.policies.insert(content, Object { id, keys });
                        id
                    }
                },
            };
            group.id = Some(id);
            new.ids.insert(id);
        }
        let policy_ids = group_of
            .iter()
            .map(|g| g.map_or(EXEMPT_POLICY, |g| groups[g].id.unwrap_or(EXEMPT_POLICY)))
            .collect();
        Ok(policy_ids)
    }
}

/// The workloads of the new generation that share one policy.
struct Group<'a> {
    content: PolicyContent,
    /// The first of them, for error messages.
    workload: &'a egress_policy::model::ObjectId,
    cgroups: HashSet<u64>,
    /// The kernel id, once resolved.
    id: Option<u32>,
}

/// The live slot's policy ids: each cgroup's, and each id's cgroups.
struct Live {
    on: HashMap<u64, u32>,
    users: HashMap<u32, HashSet<u64>>,
}

/// Takes over, for `group`, a policy of the live generation that some of
/// its workloads are on, updating its tries in place at commit: if every
/// workload on it moves to `group` (so that, before the flip, the old
/// generation's reads of it see their own new answer, see the module
/// doc), and the change is one [`in_place::plan`] accepts. Returns the id;
/// the group's contents then move to the new generation's objects.
fn update_in_place(
    old: &mut Objects,
    new: &mut Generation,
    live: &Live,
    group: &mut Group,
    updates: &mut Vec<in_place::Update>,
    stats: &mut ApplyStats,
) -> Option<u32> {
    let mut candidates: Vec<u32> = group
        .cgroups
        .iter()
        .filter_map(|c| live.on.get(c).copied())
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    for id in candidates {
        let Some((from, _)) = old.policies.iter().find(|(_, o)| o.id == id) else {
            continue;
        };
        let moves = live
            .users
            .get(&id)
            .is_some_and(|on| on.is_subset(&group.cgroups));
        let steps = match in_place::plan(from, &group.content) {
            Ok(steps) if moves => steps,
            _ => {
                stats.in_place_declined += 1;
                continue;
            }
        };
        // Taken out without hashing or copying its contents again.
        let (from, object) = old.policies.extract_if(|_, o| o.id == id).next()?;
        let keys = in_place::keys_for(id, &group.content, &object.keys);
        let to = std::mem::take(&mut group.content);
        new.objects.policies.insert(to, Object { id, keys });
        updates.push(in_place::Update {
            id,
            from,
            from_keys: object.keys,
            steps,
        });
        return Some(id);
    }
    None
}

/// A fresh id from `alloc`, taken.
fn take(alloc: &mut Allocator, taken: &mut HashSet<u32>) -> u32 {
    let id = alloc.fresh(taken);
    taken.insert(id);
    id
}

/// `w`'s tables as the kernel holds them: image set numbers resolved to
/// kernel set ids, with the cluster tag.
fn policy_content(w: &ImageWorkload, tag: u32, kernel_set: &dyn Fn(u32) -> u32) -> PolicyContent {
    fn resolve<N: Copy>(entries: &[(N, u32)], kernel_set: &dyn Fn(u32) -> u32) -> Vec<(N, u32)> {
        entries.iter().map(|(n, s)| (*n, kernel_set(*s))).collect()
    }
    PolicyContent {
        flags: w.flags,
        cluster: tag,
        allow_v4: resolve(&w.allow_v4, kernel_set),
        allow_v6: resolve(&w.allow_v6, kernel_set),
        gateway_v4: resolve(&w.gateway_v4, kernel_set),
        gateway_v6: resolve(&w.gateway_v6, kernel_set),
        capture: w.capture.clone(),
    }
}

/// Steps 3 to 5: flips `ACTIVE` to the staged generation, waits out the
/// programs that read the old one, and deletes it.
///
/// An error means the flip did not happen: the staged generation is taken
/// back and the previous one stays in force. Once the flip is done the
/// apply has succeeded; a failure while deleting the old generation only
/// leaves stale entries, reported in [`ApplyStats::cleanup_error`] and
/// removed by the next apply's reconciliation.
pub(super) fn commit(
    maps: &mut Maps,
    live: &mut Option<Generation>,
    mut staged: Staged,
) -> Result<ApplyStats, DataplaneError> {
    // In-place updates only now, after what ran since staging (the nft
    // transaction) succeeded: once written, not flipping does not take
    // them back.
    let mut started = 0;
    let mut updated = Ok(());
    for update in &staged.updates {
        started += 1;
        match in_place::run(maps, update.id, &update.steps) {
            Ok((upserts, deletes)) => {
                let stats = &mut staged.stats;
                stats.updated_in_place += 1;
                stats.in_place_entries += upserts + deletes;
                stats.written += upserts;
                stats.removed += deletes;
            }
            Err(err) => {
                updated = Err(err);
                break;
            }
        }
    }
    // 3. Flip.
    if let Err(err) = updated.and_then(|()| maps.set_active(staged.new_slot)) {
        // Back to the old contents, in the same safe order, before the
        // objects go back to the live generation.
        let objects = &staged.new.objects.policies;
        let undone = staged.updates[..started].iter().rev().all(|u| {
            objects
                .iter()
                .find(|(_, o)| o.id == u.id)
                .is_some_and(|(to, _)| in_place::undo(maps, u, to))
        });
        abort(maps, live, staged);
        if !undone {
            *live = None;
        }
        return Err(err);
    }
    let mut stats = staged.stats.clone();
    stats.write = staged.start.elapsed();

    // 4. Grace period.
    stats.grace = syscalls::wait_for_running_programs();

    // 5. Only the new generation remains.
    let cleanup = Instant::now();
    match clean_up(maps, &staged, &mut stats) {
        Ok(()) => *live = Some(staged.new),
        Err(err) => {
            stats.cleanup_error = Some(crate::errors::format_chain(&err));
            *live = None;
        }
    }
    stats.cleanup = cleanup.elapsed();
    stats.total = staged.start.elapsed();
    Ok(stats)
}

/// Step 5: deletes what only the old generation used, and makes each
/// remaining workload's old slot equal to its new one, so that the next
/// apply writes only the workloads it changes.
fn clean_up(
    maps: &mut Maps,
    staged: &Staged,
    stats: &mut ApplyStats,
) -> Result<(), DataplaneError> {
    let config = Config {
        flags: staged.audit_flag,
        level_mask: staged.new_mask,
    };
    if maps.config()? != config {
        maps.set_config(config)?;
    }
    let (live_slot, new_slot) = (staged.live_slot as usize, staged.new_slot as usize);
    for (&cgroup, slot) in &staged.slots {
        if staged.new_policy.contains_key(&cgroup) {
            // No program reads the old slot until the next flip, which
            // writes it first if the workload's policy changes.
            if slot.policy[live_slot] != slot.policy[new_slot] {
                let mut slot = *slot;
                slot.policy[live_slot] = slot.policy[new_slot];
                write_workload(maps, cgroup, slot)?;
                stats.workload_writes += 1;
            }
        } else {
            delete(&mut maps.workloads, &cgroup, map::WORKLOADS, || {
                format!("cgroup {cgroup}")
            })?;
            stats.removed += 1;
        }
    }
    stats.removed += match &staged.old {
        // What staging did not keep is all that is left of it.
        Some(old) => old
            .objects
            .by_id()
            .chain(old.objects.by_set())
            .map(|o| delete_keys(maps, &o.keys))
            .sum(),
        None => delete_foreign(maps, &staged.new.ids, &staged.new.sets)?,
    };
    stats.removed += prune_sources(maps, &staged.sources)?;
    Ok(())
}

/// Takes back a staged generation that was never flipped to (or only
/// partly written): its entries, the inactive slots and new `WORKLOADS`
/// entries it wrote, the `CONFIG` it widened and the `SOURCES` pairs it
/// added. Nothing here is read by a program, since `ACTIVE` still names the
/// live slot. Best effort: if anything cannot be taken back, the next apply
/// reconciles by enumerating the maps. Returns the entries removed.
pub(super) fn abort(maps: &mut Maps, live: &mut Option<Generation>, staged: Staged) -> usize {
    let mut clean = true;
    let mut removed = 0;
    for (cgroup, slot) in &staged.slots {
        let restored = match staged.before.get(cgroup) {
            None => {
                removed += 1;
                delete(&mut maps.workloads, cgroup, map::WORKLOADS, String::new)
            }
            Some(before) if before != slot => write_workload(maps, *cgroup, *before),
            Some(_) => Ok(()),
        };
        clean &= restored.is_ok();
    }
    let keys = staged.fresh.len();
    let deleted = delete_keys(maps, &staged.fresh);
    clean &= deleted == keys;
    removed += deleted;
    let mut old = staged.old;
    if let Some(old) = &mut old {
        old.objects
            .take_back(staged.new.objects, &old.ids, &old.sets);
        // An object to be updated in place went back under its new
        // contents; its tries still hold the old ones.
        for u in staged.updates {
            let before = old.objects.policies.len();
            old.objects.policies.retain(|_, o| o.id != u.id);
            if old.objects.policies.len() < before {
                let object = Object {
                    id: u.id,
                    keys: u.from_keys,
                };
                old.objects.policies.insert(u.from, object);
            }
        }
    }
    if let Some(config) = staged.config_before {
        clean &= maps.set_config(config).is_ok();
    }
    for key in &staged.added_sources {
        let gone = delete(&mut maps.sources, key, map::SOURCES, String::new);
        clean &= gone.is_ok();
        removed += usize::from(gone.is_ok());
    }
    *live = if clean { old } else { None };
    removed
}

/// Marks `cgroup` exempt in both slots at once, outside any generation
/// (see `egress_common::EXEMPT_POLICY`), and adds its level to
/// `CONFIG.level_mask`. Returns the cgroup id. The next apply keeps the
/// entry if its image has the cgroup as an exempt guard, and removes it
/// otherwise.
pub(super) fn exempt_now(
    maps: &mut Maps,
    root: &CgroupRoot,
    id: &egress_policy::model::ObjectId,
    cgroup: &str,
) -> Result<u64, DataplaneError> {
    use std::os::unix::fs::MetadataExt as _;
    let (relative, level) = root.place(cgroup);
    if !root.contains(&relative) {
        return Err(DataplaneError::OutsideRoot {
            workload: id.clone(),
            cgroup: cgroup.to_owned(),
            root: root.relative.clone(),
        });
    }
    if level > MAX_LEVEL {
        return Err(DataplaneError::WorkloadTooDeep {
            workload: id.clone(),
            cgroup: cgroup.to_owned(),
            level,
        });
    }
    let path = root.mount.join(&relative);
    let cgroup_id = std::fs::metadata(&path)
        .map_err(|source| DataplaneError::Io {
            action: "inspecting cgroup",
            path,
            source,
        })?
        .ino();
    // The level first: a slot the programs cannot see is harmless, and
    // once both are written the exemption is complete.
    let config = maps.config()?;
    maps.set_config(Config {
        level_mask: config.level_mask | (1 << level),
        ..config
    })?;
    write_workload(
        maps,
        cgroup_id,
        WorkloadSlot {
            policy: [EXEMPT_POLICY; 2],
        },
    )?;
    Ok(cgroup_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_skip_zero_and_taken_ids_and_wrap() {
        let taken: HashSet<u32> = [1, 2, 4].into();
        let mut ids = Allocator::default();
        assert_eq!(ids.fresh(&taken), 3);
        assert_eq!(ids.fresh(&taken), 5);
        let mut ids = Allocator {
            next: u32::MAX - 1,
            ..Allocator::default()
        };
        assert_eq!(ids.fresh(&taken), u32::MAX - 1);
        assert_eq!(
            ids.fresh(&taken),
            3,
            "wraps past EXEMPT_POLICY, 0 and the taken ids"
        );
    }

    #[test]
    fn port_set_ids_stay_below_the_host_ports_flag() {
        let mut sets = Allocator {
            next: host_ports::ALLOW_FLAG - 1,
            ..Allocator::port_sets()
        };
        assert_eq!(sets.fresh(&HashSet::new()), host_ports::ALLOW_FLAG - 1);
        assert_eq!(sets.fresh(&HashSet::new()), 1, "wraps before the flag");
    }
}
