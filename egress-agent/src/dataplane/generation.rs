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
//! `CONFIG` is not part of a generation: while both are live its level
//! mask is the union of theirs, and audit mode is on if either wants it.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use ipnet::IpNet;

use aya::maps::{lpm_trie::Key, MapError};
use egress_common::{
    host_ports, map, Config, PolicyAddrV4, PolicyAddrV6, PolicyInfo, PortEntry, PortSet, SourceKey,
    UdpFlowKey, WorkloadSlot, EMPTY_SET, EXEMPT_POLICY, MAX_LEVEL, MAX_PORT_ENTRIES,
};

use super::{
    cgroups::CgroupRoot,
    keys,
    maps::{read, Maps},
    syscalls, DataplaneError, MapImage,
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
    /// Whether the previous state was unknown (first apply after `open`, or
    /// after a failed apply) and the maps were enumerated to find it.
    pub reconciled: bool,
    /// Writing the new generation, up to and including the flip.
    pub write: Duration,
    /// Waiting for programs that might still read the old generation.
    pub grace: Duration,
    /// Deleting the old generation.
    pub cleanup: Duration,
    pub total: Duration,
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
    pub(super) fn apply(self, image: &MapImage) -> Result<ApplyStats, DataplaneError> {
        let start = Instant::now();
        let new_mask = level_mask(self.root, image)?;
        // Until this apply completes, the previous generation is only known
        // if it completes: a failure leaves a state to be reconciled.
        let known = self.live.take();
        let maps = self.maps;
        let live_slot = maps.active_slot()?;
        let new_slot = 1 - live_slot;
        let existing = maps.workload_slots()?;
        let mut stats = ApplyStats {
            slot: new_slot,
            ..ApplyStats::default()
        };

        let (old, mut taken_ids, taken_sets) = match known {
            Some(g) if g.slot == live_slot => {
                let (ids, sets) = (g.ids.clone(), g.sets.clone());
                (Some(g), ids, sets)
            }
            _ => {
                stats.reconciled = true;
                let (ids, sets) = scan_ids(maps, &existing)?;
                (None, ids, sets)
            }
        };

        // Fresh ids for every workload, the cluster tag and every set.
        let mut new = Generation {
            slot: new_slot,
            ids: HashSet::new(),
            sets: HashSet::new(),
            keys: Keys::default(),
        };
        let mut fresh_id = |ids: &mut Allocator, new: &mut Generation| {
            let id = ids.fresh(&taken_ids);
            taken_ids.insert(id);
            new.ids.insert(id);
            id
        };
        let tag = image.has_cluster().then(|| fresh_id(self.ids, &mut new));
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
                        .or_insert_with(|| fresh_id(self.ids, &mut new))
                }
            })
            .collect();
        let mut taken_sets = taken_sets;
        // One kernel set per MAX_PORT_ENTRIES entries of an image set; the
        // first is the one the tries name, the others continue it.
        let set_ids: Vec<Vec<u32>> = image
            .port_sets()
            .iter()
            .map(|entries| {
                (0..entries.len().div_ceil(MAX_PORT_ENTRIES).max(1))
                    .map(|_| {
                        let id = self.set_ids.fresh(&taken_sets);
                        taken_sets.insert(id);
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
                let id = self.set_ids.fresh(&taken_sets);
                taken_sets.insert(id);
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

        // The new workloads' own addresses, before anything can make the
        // kernel check them; stale ones go after the grace period.
        let sources = wanted_sources(image);
        add_sources(maps, &sources)?;

        // 1. The new generation's entries; nothing live refers to them yet.
        let written = write_generation(
            maps,
            image,
            tag,
            &policy_ids,
            &set_ids,
            &host_ids,
            &kernel_set,
            &mut new.keys,
            &mut stats,
        );
        if let Err(err) = written {
            delete_keys(maps, &new.keys);
            return Err(err);
        }

        // CONFIG for the transition: both generations' levels; audit if
        // either generation is in audit mode.
        let before = maps.config()?;
        let audit_flag = if image.audit() { Config::AUDIT } else { 0 };
        maps.set_config(Config {
            flags: (before.flags & Config::AUDIT) | audit_flag,
            level_mask: before.level_mask | new_mask,
        })?;

        // 2. The inactive slot of every workload entry.
        let new_policy: HashMap<u64, u32> = image
            .workloads()
            .iter()
            .zip(&policy_ids)
            .map(|(w, id)| (w.cgroup_id, *id))
            .collect();
        let mut slots: HashMap<u64, WorkloadSlot> = existing.into_iter().collect();
        for cgroup in new_policy.keys() {
            slots.entry(*cgroup).or_default();
        }
        for (cgroup, slot) in &mut slots {
            let want = new_policy.get(cgroup).copied().unwrap_or(0);
            if slot.policy[new_slot as usize] != want {
                slot.policy[new_slot as usize] = want;
                write_workload(maps, *cgroup, *slot)?;
            }
        }

        // 3. Flip.
        maps.set_active(new_slot)?;
        stats.write = start.elapsed();

        // 4. Grace period.
        stats.grace = syscalls::wait_for_running_programs();

        // 5. Only the new generation remains.
        let cleanup = Instant::now();
        maps.set_config(Config {
            flags: audit_flag,
            level_mask: new_mask,
        })?;
        for (cgroup, mut slot) in slots {
            if new_policy.contains_key(&cgroup) {
                if slot.policy[live_slot as usize] != 0 {
                    slot.policy[live_slot as usize] = 0;
                    write_workload(maps, cgroup, slot)?;
                }
            } else {
                delete(&mut maps.workloads, &cgroup, map::WORKLOADS, || {
                    format!("cgroup {cgroup}")
                })?;
                stats.removed += 1;
            }
        }
        stats.removed += match old {
            Some(old) => delete_keys(maps, &old.keys),
            None => delete_foreign(maps, &new.ids, &new.sets)?,
        };
        stats.removed += prune_sources(maps, &sources)?;
        stats.cleanup = cleanup.elapsed();
        stats.total = start.elapsed();
        *self.live = Some(new);
        Ok(stats)
    }
}

/// `SOURCES` as `image` wants it: each source-checked workload's cgroup
/// with each of its addresses.
fn wanted_sources(image: &MapImage) -> HashSet<SourceKey> {
    image
        .workloads()
        .iter()
        .flat_map(|w| {
            w.sources.iter().map(|a| SourceKey {
                cgroup_id: w.cgroup_id,
                addr: mapped(*a),
            })
        })
        .collect()
}

/// Adds the pairs of `wanted` that `SOURCES` lacks. Not part of a
/// generation: during an apply the union of old and new pairs is accepted,
/// and each of them was the workload's own in one of the two.
fn add_sources(maps: &mut Maps, wanted: &HashSet<SourceKey>) -> Result<(), DataplaneError> {
    for key in wanted {
        if maps.sources.get(key, 0).is_ok() {
            continue;
        }
        maps.sources
            .insert(key, 1, 0)
            .map_err(|source| write_err(map::SOURCES, format!("{key:?}"), source))?;
    }
    Ok(())
}

/// Deletes every `SOURCES` pair that is not in `wanted` (whoever wrote
/// it: an earlier process's pairs are found by enumerating the map).
fn prune_sources(maps: &mut Maps, wanted: &HashSet<SourceKey>) -> Result<usize, DataplaneError> {
    let present: Vec<SourceKey> = maps
        .sources
        .keys()
        .collect::<Result<_, _>>()
        .map_err(|source| read(map::SOURCES, source))?;
    let mut removed = 0;
    for key in present.iter().filter(|k| !wanted.contains(k)) {
        delete(&mut maps.sources, key, map::SOURCES, || format!("{key:?}"))?;
        removed += 1;
    }
    Ok(removed)
}

/// The `level_mask` of `image`'s workloads, checking that each is enforced
/// at all: below the root the programs are attached to, at a level they
/// look at.
fn level_mask(root: &CgroupRoot, image: &MapImage) -> Result<u32, DataplaneError> {
    let mut mask = 0u32;
    for w in image.workloads() {
        let (relative, level) = root.place(&w.cgroup);
        if !root.contains(&relative) {
            return Err(DataplaneError::OutsideRoot {
                workload: w.id.clone(),
                cgroup: w.cgroup.clone(),
                root: root.relative.clone(),
            });
        }
        if level > MAX_LEVEL {
            return Err(DataplaneError::WorkloadTooDeep {
                workload: w.id.clone(),
                cgroup: w.cgroup.clone(),
                level,
            });
        }
        mask |= 1 << level;
    }
    Ok(mask)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the pieces of one apply"
)]
fn write_generation(
    maps: &mut Maps,
    image: &MapImage,
    tag: Option<u32>,
    policy_ids: &[u32],
    set_ids: &[Vec<u32>],
    host_ids: &[u32],
    kernel_set: &dyn Fn(u32) -> u32,
    keys: &mut Keys,
    stats: &mut ApplyStats,
) -> Result<(), DataplaneError> {
    for (entries, ids) in image.port_sets().iter().zip(set_ids) {
        // Written last to first, so that a set is complete before any set
        // names it.
        for (i, chunk) in entries.chunks(MAX_PORT_ENTRIES).enumerate().rev() {
            let id = ids[i];
            let next = ids.get(i + 1).copied().unwrap_or(EMPTY_SET);
            maps.port_sets
                .insert(id, port_set(chunk, next), 0)
                .map_err(|source| DataplaneError::Write {
                    map: map::PORT_SETS,
                    what: format!("port set {id} ({} entries)", chunk.len()),
                    source,
                })?;
            keys.port_sets.push(id);
        }
        stats.port_sets += 1;
    }
    // Before the flagged entries that name them.
    for (table, &host) in image.host_tables().iter().zip(host_ids) {
        let base = (host_ports::BASE, 0, 0, kernel_set(table.base));
        for &(kind, proto, port, value) in table.entries.iter().chain([&base]) {
            let key = host_ports::key(host, kind, proto, port);
            maps.host_ports.insert(key, value, 0).map_err(|source| {
                let what = format!("host table {host}: kind {kind} proto {proto} port {port}");
                write_err(map::HOST_PORTS, what, source)
            })?;
            keys.host_ports.push(key);
            stats.host_port_entries += 1;
        }
    }
    if let Some(tag) = tag {
        let inside = image
            .cluster_v4()
            .iter()
            .map(|n| (IpNet::V4(*n), host_ports::CLUSTER_INSIDE));
        let inside = inside.chain(
            image
                .cluster_v6()
                .iter()
                .map(|n| (IpNet::V6(*n), host_ports::CLUSTER_INSIDE)),
        );
        let flagged = image
            .cluster_port_hosts()
            .iter()
            .map(|(a, value)| (IpNet::from(*a), *value));
        for (net, value) in inside.chain(flagged) {
            let what = || format!("cluster CIDR {net}");
            match net.trunc() {
                IpNet::V4(n) => {
                    let key = keys::v4(tag, n);
                    maps.cluster_v4
                        .insert(&key, value, 0)
                        .map_err(|source| write_err(map::CLUSTER_V4, what(), source))?;
                    keys.cluster_v4.push(key);
                }
                IpNet::V6(n) => {
                    let key = keys::v6(tag, n);
                    maps.cluster_v6
                        .insert(&key, value, 0)
                        .map_err(|source| write_err(map::CLUSTER_V6, what(), source))?;
                    keys.cluster_v6.push(key);
                }
            }
            stats.cluster_entries += 1;
        }
    }
    let mut written = HashSet::new();
    for (w, &policy) in image.workloads().iter().zip(policy_ids) {
        if w.exempt || !written.insert(policy) {
            continue;
        }
        let what = |net: &dyn std::fmt::Display| format!("prefix {net} of workload {}", w.id);
        write_prefixes(
            &mut maps.allow_v4,
            map::ALLOW_V4,
            &w.allow_v4,
            |n| keys::v4(policy, n),
            kernel_set,
            &what,
            &mut keys.allow_v4,
        )?;
        write_prefixes(
            &mut maps.allow_v6,
            map::ALLOW_V6,
            &w.allow_v6,
            |n| keys::v6(policy, n),
            kernel_set,
            &what,
            &mut keys.allow_v6,
        )?;
        write_prefixes(
            &mut maps.gateway_v4,
            map::GATEWAY_V4,
            &w.gateway_v4,
            |n| keys::v4(policy, n),
            kernel_set,
            &what,
            &mut keys.gateway_v4,
        )?;
        write_prefixes(
            &mut maps.gateway_v6,
            map::GATEWAY_V6,
            &w.gateway_v6,
            |n| keys::v6(policy, n),
            kernel_set,
            &what,
            &mut keys.gateway_v6,
        )?;
        stats.allow_entries += w.allow_v4.len() + w.allow_v6.len();
        stats.gateway_entries += w.gateway_v4.len() + w.gateway_v6.len();
        if let Some(capture) = &w.capture {
            for (net, value) in &capture.v4 {
                let key = keys::v4(policy, *net);
                maps.capture_v4
                    .insert(&key, value, 0)
                    .map_err(|source| write_err(map::CAPTURE_V4, what(net), source))?;
                keys.capture_v4.push(key);
            }
            for (net, value) in &capture.v6 {
                let key = keys::v6(policy, *net);
                maps.capture_v6
                    .insert(&key, value, 0)
                    .map_err(|source| write_err(map::CAPTURE_V6, what(net), source))?;
                keys.capture_v6.push(key);
            }
            maps.captures
                .insert(policy, capture.info, 0)
                .map_err(|source| {
                    write_err(
                        map::CAPTURES,
                        format!("capture of workload {}", w.id),
                        source,
                    )
                })?;
            keys.captures.push(policy);
            stats.capture_entries += 1 + capture.v4.len() + capture.v6.len();
        }
        // The policy last: a workload slot pointing at it is written after.
        let info = PolicyInfo {
            flags: w.flags,
            cluster: tag.unwrap_or(0),
        };
        maps.policies.insert(policy, info, 0).map_err(|source| {
            write_err(
                map::POLICIES,
                format!("policy {policy} of workload {}", w.id),
                source,
            )
        })?;
        keys.policies.push(policy);
        stats.policies += 1;
    }
    Ok(())
}

/// Marks `cgroup` exempt in both slots at once, outside any generation
/// (see `egress_common::EXEMPT_POLICY`), and adds its level to
/// `CONFIG.level_mask`. Returns the cgroup id. The next apply keeps the
/// entry if its image has the cgroup as an exempt guard, and removes it
/// otherwise.
pub(super) fn exempt_now(
    maps: &mut Maps,
    root: &CgroupRoot,
    id: &crate::policy::model::ObjectId,
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

fn port_set(entries: &[PortEntry], next: u32) -> PortSet {
    let mut set = PortSet {
        next,
        ..PortSet::default()
    };
    for (slot, entry) in set.entries.iter_mut().zip(entries) {
        *slot = *entry;
    }
    set.len = u32::try_from(entries.len().min(MAX_PORT_ENTRIES)).unwrap_or(0);
    set
}

fn write_workload(maps: &mut Maps, cgroup: u64, slot: WorkloadSlot) -> Result<(), DataplaneError> {
    maps.workloads.insert(cgroup, slot, 0).map_err(|source| {
        write_err(
            map::WORKLOADS,
            format!("cgroup {cgroup} slots {:?}", slot.policy),
            source,
        )
    })
}

/// Writes one workload's prefix → port-set entries into `trie`, keeping
/// each key so that this generation can be deleted when it is replaced.
fn write_prefixes<K: aya::Pod, N: Copy + std::fmt::Display>(
    trie: &mut aya::maps::LpmTrie<aya::maps::MapData, K, u32>,
    name: &'static str,
    entries: &[(N, u32)],
    key: impl Fn(N) -> Key<K>,
    kernel_set: &dyn Fn(u32) -> u32,
    what: &dyn Fn(&dyn std::fmt::Display) -> String,
    written: &mut Vec<Key<K>>,
) -> Result<(), DataplaneError> {
    for (net, set) in entries {
        let k = key(*net);
        trie.insert(&k, kernel_set(*set), 0)
            .map_err(|source| write_err(name, what(net), source))?;
        written.push(k);
    }
    Ok(())
}

/// The address as 16 bytes, IPv4 as `::ffff:a.b.c.d` (the programs'
/// spelling).
fn mapped(addr: std::net::IpAddr) -> [u8; 16] {
    match addr.to_canonical() {
        std::net::IpAddr::V4(v4) => UdpFlowKey::v4_mapped(v4.octets()),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

fn write_err(map: &'static str, what: String, source: MapError) -> DataplaneError {
    DataplaneError::Write { map, what, source }
}

/// Every id and set id present anywhere in the maps, for a state this
/// process did not write (a previous agent, or a failed apply): fresh ids
/// must avoid them all, even those of a half-written generation.
fn scan_ids(
    maps: &Maps,
    existing: &[(u64, WorkloadSlot)],
) -> Result<(HashSet<u32>, HashSet<u32>), DataplaneError> {
    let mut ids: HashSet<u32> = existing
        .iter()
        .flat_map(|(_, s)| s.policy)
        .filter(|id| *id != 0)
        .collect();
    let mut sets = HashSet::new();
    for key in maps.policies.keys() {
        ids.insert(key.map_err(|source| read(map::POLICIES, source))?);
    }
    for key in maps.port_sets.keys() {
        sets.insert(key.map_err(|source| read(map::PORT_SETS, source))?);
    }
    for (trie, name) in [
        (&maps.allow_v4, map::ALLOW_V4),
        (&maps.gateway_v4, map::GATEWAY_V4),
    ] {
        for entry in trie.iter() {
            let (key, set) = entry.map_err(|source| read(name, source))?;
            ids.insert(keys::v4_id(&key));
            sets.insert(set & !host_ports::ALLOW_FLAG);
        }
    }
    for (trie, name) in [
        (&maps.allow_v6, map::ALLOW_V6),
        (&maps.gateway_v6, map::GATEWAY_V6),
    ] {
        for entry in trie.iter() {
            let (key, set) = entry.map_err(|source| read(name, source))?;
            ids.insert(keys::v6_id(&key));
            sets.insert(set & !host_ports::ALLOW_FLAG);
        }
    }
    for key in Maps::keys_v4(&maps.cluster_v4, map::CLUSTER_V4)? {
        ids.insert(keys::v4_id(&key));
    }
    for key in Maps::keys_v6(&maps.cluster_v6, map::CLUSTER_V6)? {
        ids.insert(keys::v6_id(&key));
    }
    for key in Maps::keys_v4(&maps.capture_v4, map::CAPTURE_V4)? {
        ids.insert(keys::v4_id(&key));
    }
    for key in Maps::keys_v6(&maps.capture_v6, map::CAPTURE_V6)? {
        ids.insert(keys::v6_id(&key));
    }
    for key in maps.captures.keys() {
        ids.insert(key.map_err(|source| read(map::CAPTURES, source))?);
    }
    for key in maps.host_ports.keys() {
        sets.insert(host_table_of(
            key.map_err(|source| read(map::HOST_PORTS, source))?,
        ));
    }
    sets.remove(&EMPTY_SET);
    Ok((ids, sets))
}

/// Deletes a generation this process wrote. Best effort: a key that is
/// already gone is not an error, and a failure leaves a stale entry that
/// no live slot refers to (removed by the next reconciliation).
fn delete_keys(maps: &mut Maps, keys: &Keys) -> usize {
    let mut removed = 0;
    let mut count = |r: Result<(), MapError>| {
        if r.is_ok() {
            removed += 1;
        }
    };
    for key in &keys.policies {
        count(maps.policies.remove(key));
    }
    for key in &keys.allow_v4 {
        count(maps.allow_v4.remove(key));
    }
    for key in &keys.allow_v6 {
        count(maps.allow_v6.remove(key));
    }
    for key in &keys.gateway_v4 {
        count(maps.gateway_v4.remove(key));
    }
    for key in &keys.gateway_v6 {
        count(maps.gateway_v6.remove(key));
    }
    for key in &keys.cluster_v4 {
        count(maps.cluster_v4.remove(key));
    }
    for key in &keys.cluster_v6 {
        count(maps.cluster_v6.remove(key));
    }
    for key in &keys.port_sets {
        count(maps.port_sets.remove(key));
    }
    for key in &keys.host_ports {
        count(maps.host_ports.remove(key));
    }
    for key in &keys.captures {
        count(maps.captures.remove(key));
    }
    for key in &keys.capture_v4 {
        count(maps.capture_v4.remove(key));
    }
    for key in &keys.capture_v6 {
        count(maps.capture_v6.remove(key));
    }
    removed
}

/// Deletes every entry that does not belong to the generation of `ids`
/// and `sets`: after an adoption, whatever earlier processes left.
fn delete_foreign(
    maps: &mut Maps,
    ids: &HashSet<u32>,
    sets: &HashSet<u32>,
) -> Result<usize, DataplaneError> {
    let mut removed = 0;
    let stale: Vec<u32> = maps
        .policies
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| read(map::POLICIES, source))?
        .into_iter()
        .filter(|id| !ids.contains(id))
        .collect();
    for id in stale {
        delete(&mut maps.policies, &id, map::POLICIES, || {
            format!("policy {id}")
        })?;
        removed += 1;
    }
    let stale: Vec<u32> = maps
        .port_sets
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| read(map::PORT_SETS, source))?
        .into_iter()
        .filter(|id| !sets.contains(id))
        .collect();
    for id in stale {
        delete(&mut maps.port_sets, &id, map::PORT_SETS, || {
            format!("port set {id}")
        })?;
        removed += 1;
    }
    let stale: Vec<u32> = maps
        .captures
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| read(map::CAPTURES, source))?
        .into_iter()
        .filter(|id| !ids.contains(id))
        .collect();
    for id in stale {
        delete(&mut maps.captures, &id, map::CAPTURES, || {
            format!("capture of policy {id}")
        })?;
        removed += 1;
    }
    let stale: Vec<u64> = maps
        .host_ports
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| read(map::HOST_PORTS, source))?
        .into_iter()
        .filter(|key| !sets.contains(&host_table_of(*key)))
        .collect();
    for key in stale {
        delete(&mut maps.host_ports, &key, map::HOST_PORTS, || {
            format!("host table entry {key:#x}")
        })?;
        removed += 1;
    }
    macro_rules! sweep {
        ($trie:expr, $keys:path, $id:path, $net:path, $name:expr) => {
            for key in $keys(&$trie, $name)? {
                if !ids.contains(&$id(&key)) {
                    let what = || format!("{:?} of id {}", $net(&key), $id(&key));
                    delete_trie(&mut $trie, &key, $name, what)?;
                    removed += 1;
                }
            }
        };
    }
    sweep!(
        maps.allow_v4,
        Maps::keys_v4,
        keys::v4_id,
        keys::v4_net,
        map::ALLOW_V4
    );
    sweep!(
        maps.allow_v6,
        Maps::keys_v6,
        keys::v6_id,
        keys::v6_net,
        map::ALLOW_V6
    );
    sweep!(
        maps.gateway_v4,
        Maps::keys_v4,
        keys::v4_id,
        keys::v4_net,
        map::GATEWAY_V4
    );
    sweep!(
        maps.gateway_v6,
        Maps::keys_v6,
        keys::v6_id,
        keys::v6_net,
        map::GATEWAY_V6
    );
    sweep!(
        maps.cluster_v4,
        Maps::keys_v4,
        keys::v4_id,
        keys::v4_net,
        map::CLUSTER_V4
    );
    sweep!(
        maps.cluster_v6,
        Maps::keys_v6,
        keys::v6_id,
        keys::v6_net,
        map::CLUSTER_V6
    );
    sweep!(
        maps.capture_v4,
        Maps::keys_v4,
        keys::v4_id,
        keys::v4_net,
        map::CAPTURE_V4
    );
    sweep!(
        maps.capture_v6,
        Maps::keys_v6,
        keys::v6_id,
        keys::v6_net,
        map::CAPTURE_V6
    );
    Ok(removed)
}

/// The host table of a `HOST_PORTS` key (see `host_ports::key`).
fn host_table_of(key: u64) -> u32 {
    (key >> 32) as u32
}

/// Whether a delete failed only because the key was not there.
fn absent(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn delete<K: aya::Pod, V: aya::Pod>(
    hash: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    key: &K,
    name: &'static str,
    what: impl FnOnce() -> String,
) -> Result<(), DataplaneError> {
    match hash.remove(key) {
        Ok(()) => Ok(()),
        Err(err) if absent(&err) => Ok(()),
        Err(source) => Err(DataplaneError::Delete {
            map: name,
            what: what(),
            source,
        }),
    }
}

fn delete_trie<K: aya::Pod, V: aya::Pod>(
    trie: &mut aya::maps::LpmTrie<aya::maps::MapData, K, V>,
    key: &Key<K>,
    name: &'static str,
    what: impl FnOnce() -> String,
) -> Result<(), DataplaneError> {
    match trie.remove(key) {
        Ok(()) => Ok(()),
        Err(err) if absent(&err) => Ok(()),
        Err(source) => Err(DataplaneError::Delete {
            map: name,
            what: what(),
            source,
        }),
    }
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

    #[test]
    fn port_sets_are_padded_with_their_length() {
        let set = port_set(&[PortEntry::new(1, 6, 80, 80)], EMPTY_SET);
        assert_eq!((set.len, set.next), (1, EMPTY_SET));
        assert_eq!(set.entries[0], PortEntry::new(1, 6, 80, 80));
        assert_eq!(set.entries[1], PortEntry::default());
    }
}
