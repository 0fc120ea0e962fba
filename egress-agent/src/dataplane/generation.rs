//! Generations: write the new one, then flip one index.
//!
//! The maps hold up to two generations. `ACTIVE[0]` says which
//! `WorkloadSlot` slot the programs read, and every other entry is keyed by
//! ids (policy ids, the cluster tag, port set ids) that belong to exactly
//! one generation: ids are never reused by the next generation, so the new
//! one is written completely while the old one stays live and untouched.
//! An apply:
//!
//! 1. writes the new port sets, trie entries and policies under fresh ids;
//! 2. writes the inactive slot of every `WORKLOADS` entry (the new policy,
//!    or 0), creating entries for new workloads with only that slot set;
//! 3. flips `ACTIVE`;
//! 4. waits until no program that read the old slot is still running (an
//!    RCU grace period, see [`syscalls::wait_for_running_programs`]);
//! 5. deletes the old generation's entries and clears the old slots.
//!
//! A program run reads `ACTIVE` first and then only entries of that
//! generation, so it sees one complete generation: an allowed connection
//! never fails and a denied one never passes during a reload.
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
    host_ports, map, Config, PolicyAddrV4, PolicyAddrV6, SourceKey, WorkloadSlot, EMPTY_SET,
    EXEMPT_POLICY, MAX_LEVEL, MAX_PORT_ENTRIES,
};

use super::{cgroups::CgroupRoot, maps::Maps, syscalls, DataplaneError, MapImage};

mod sweep;
mod write;

use sweep::{delete, delete_foreign, delete_keys, prune_sources, scan_ids};
use write::{add_sources, level_mask, wanted_sources, write_generation, write_workload};

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
#[derive(Default)]
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
    keys: Keys,
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
                keys: Keys::default(),
            },
            before: existing.into_iter().collect(),
            slots: HashMap::new(),
            new_policy: HashMap::new(),
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
    /// `WORKLOADS` before staging, and as staged.
    before: HashMap<u64, WorkloadSlot>,
    slots: HashMap<u64, WorkloadSlot>,
    /// Each staged workload's policy id.
    new_policy: HashMap<u64, u32>,
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
    fn write(mut self, image: &MapImage, staged: &mut Staged) -> Result<(), DataplaneError> {
        let new = &mut staged.new;
        let mut fresh_id = |ids: &mut Allocator, new: &mut Generation| {
            let id = ids.fresh(&self.taken_ids);
            self.taken_ids.insert(id);
            new.ids.insert(id);
            id
        };
        // Fresh ids for every workload, the cluster tag and every set.
        let tag = image.has_cluster().then(|| fresh_id(self.ids, new));
        // Exempt entries carry the reserved id in every generation; equal
        // tables share one id (see `ImageWorkload::tables`).
        let mut shared = HashMap::new();
        let policy_ids: Vec<u32> = image
            .workloads()
            .iter()
            .map(|w| {
                if w.exempt {
                    EXEMPT_POLICY
                } else {
                    *shared
                        .entry(w.tables())
                        .or_insert_with(|| fresh_id(self.ids, new))
                }
            })
            .collect();
        // One kernel set per MAX_PORT_ENTRIES entries of an image set; the
        // first is the one the tries name, the others continue it.
        let set_ids: Vec<Vec<u32>> = image
            .port_sets()
            .iter()
            .map(|entries| {
                (0..entries.len().div_ceil(MAX_PORT_ENTRIES).max(1))
                    .map(|_| {
                        let id = self.set_ids.fresh(&self.taken_sets);
                        self.taken_sets.insert(id);
                        new.sets.insert(id);
                        id
                    })
                    .collect()
            })
            .collect();
        // Host tables take ids from the same space (an `ALLOW_*` value is
        // either), so one scan and one sweep cover both.
        let host_ids: Vec<u32> = image
            .host_tables()
            .iter()
            .map(|_| {
                let id = self.set_ids.fresh(&self.taken_sets);
                self.taken_sets.insert(id);
                new.sets.insert(id);
                id
            })
            .collect();
        let kernel_set = |local: u32| -> u32 {
            if local & host_ports::ALLOW_FLAG != 0 {
                let host = (local & !host_ports::ALLOW_FLAG) as usize;
                return host
                    .checked_sub(1)
                    .and_then(|i| host_ids.get(i))
                    .map_or(EMPTY_SET, |id| id | host_ports::ALLOW_FLAG);
            }
            match local {
                EMPTY_SET => EMPTY_SET,
                n => set_ids
                    .get(n as usize - 1)
                    .and_then(|ids| ids.first().copied())
                    .unwrap_or(EMPTY_SET),
            }
        };
        let maps = &mut *self.maps;

        // The new workloads' own addresses, before anything can make the
        // kernel check them; stale ones go after the grace period.
        add_sources(maps, &staged.sources, &mut staged.added_sources)?;

        // 1. The new generation's entries; nothing live refers to them yet.
        write_generation(
            maps,
            image,
            tag,
            &policy_ids,
            &set_ids,
            &host_ids,
            &kernel_set,
            &mut staged.new.keys,
            &mut staged.stats,
        )?;

        // CONFIG for the transition: both generations' levels; audit if
        // either generation is in audit mode.
        let before = maps.config()?;
        staged.config_before = Some(before);
        maps.set_config(Config {
            flags: (before.flags & Config::AUDIT) | staged.audit_flag,
            level_mask: before.level_mask | staged.new_mask,
        })?;

        // 2. The inactive slot of every workload entry.
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
            }
        }
        Ok(())
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
    staged: Staged,
) -> Result<ApplyStats, DataplaneError> {
    // 3. Flip.
    if let Err(err) = maps.set_active(staged.new_slot) {
        abort(maps, live, staged);
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

/// Step 5: deletes what only the old generation used.
fn clean_up(
    maps: &mut Maps,
    staged: &Staged,
    stats: &mut ApplyStats,
) -> Result<(), DataplaneError> {
    maps.set_config(Config {
        flags: staged.audit_flag,
        level_mask: staged.new_mask,
    })?;
    let live_slot = staged.live_slot as usize;
    for (&cgroup, slot) in &staged.slots {
        if staged.new_policy.contains_key(&cgroup) {
            if slot.policy[live_slot] != 0 {
                let mut slot = *slot;
                slot.policy[live_slot] = 0;
                write_workload(maps, cgroup, slot)?;
            }
        } else {
            delete(&mut maps.workloads, &cgroup, map::WORKLOADS, || {
                format!("cgroup {cgroup}")
            })?;
            stats.removed += 1;
        }
    }
    stats.removed += match &staged.old {
        Some(old) => delete_keys(maps, &old.keys),
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
    let keys = staged.new.keys.len();
    let deleted = delete_keys(maps, &staged.new.keys);
    clean &= deleted == keys;
    removed += deleted;
    if let Some(config) = staged.config_before {
        clean &= maps.set_config(config).is_ok();
    }
    for key in &staged.added_sources {
        let gone = delete(&mut maps.sources, key, map::SOURCES, String::new);
        clean &= gone.is_ok();
        removed += usize::from(gone.is_ok());
    }
    *live = if clean { staged.old } else { None };
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
