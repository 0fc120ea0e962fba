//! Writing a generation's entries, and what it needs: the cgroup levels
//! it lives at and its workloads' own addresses.

use std::collections::HashSet;

use ipnet::IpNet;

use aya::maps::{lpm_trie::Key, MapError};
use egress_common::{
    host_ports, map, PolicyInfo, PortEntry, PortSet, SourceKey, UdpFlowKey, WorkloadSlot,
    EMPTY_SET, MAX_LEVEL, MAX_PORT_ENTRIES,
};

use super::{
    super::{cgroups::CgroupRoot, keys, maps::Maps, DataplaneError, HostTable, MapImage},
    ApplyStats, Keys, PolicyContent,
};
use egress_policy::model::ObjectId;

/// `SOURCES` as `image` wants it: each source-checked workload's cgroup
/// with each of its addresses.
pub(super) fn wanted_sources(image: &MapImage) -> HashSet<SourceKey> {
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

/// Adds the pairs of `wanted` that `SOURCES` lacks, noting each in
/// `added`. Not part of a generation: during an apply the union of old and
/// new pairs is accepted, and each of them was the workload's own in one of
/// the two.
pub(super) fn add_sources(
    maps: &mut Maps,
    wanted: &HashSet<SourceKey>,
    added: &mut Vec<SourceKey>,
) -> Result<(), DataplaneError> {
    for key in wanted {
        if maps.sources.get(key, 0).is_ok() {
            continue;
        }
        maps.sources
            .insert(key, 1, 0)
            .map_err(|source| write_err(map::SOURCES, format!("{key:?}"), source))?;
        added.push(*key);
    }
    Ok(())
}

/// The `level_mask` of `image`'s workloads, checking that each is enforced
/// at all: below the root the programs are attached to, at a level they
/// look at.
pub(super) fn level_mask(root: &CgroupRoot, image: &MapImage) -> Result<u32, DataplaneError> {
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

/// Writes one port set under `ids` (one kernel set per
/// `MAX_PORT_ENTRIES` entries; the first is the one the tries name, the
/// others continue it).
pub(super) fn write_port_set(
    maps: &mut Maps,
    entries: &[PortEntry],
    ids: &[u32],
    keys: &mut Keys,
    stats: &mut ApplyStats,
) -> Result<(), DataplaneError> {
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
        stats.written += 1;
    }
    stats.port_sets += 1;
    Ok(())
}

/// Writes one host table under `host`, its `BASE` entry naming the kernel
/// set `base`.
pub(super) fn write_host_table(
    maps: &mut Maps,
    table: &HostTable,
    host: u32,
    base: u32,
    keys: &mut Keys,
    stats: &mut ApplyStats,
) -> Result<(), DataplaneError> {
    let base = (host_ports::BASE, 0, 0, base);
    for &(kind, proto, port, value) in table.entries.iter().chain([&base]) {
        let key = host_ports::key(host, kind, proto, port);
        maps.host_ports.insert(key, value, 0).map_err(|source| {
            let what = format!("host table {host}: kind {kind} proto {proto} port {port}");
            write_err(map::HOST_PORTS, what, source)
        })?;
        keys.host_ports.push(key);
        stats.host_port_entries += 1;
        stats.written += 1;
    }
    Ok(())
}

/// Writes the cluster's CIDRs (and its flagged hosts) under `tag`.
pub(super) fn write_cluster(
    maps: &mut Maps,
    image: &MapImage,
    tag: u32,
    keys: &mut Keys,
    stats: &mut ApplyStats,
) -> Result<(), DataplaneError> {
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
        stats.written += 1;
    }
    Ok(())
}

/// Writes one policy under `policy`: its tries, its capture, and last its
/// `POLICIES` entry (a workload slot pointing at it is written after).
/// `content` has the kernel's set ids and cluster tag already.
pub(super) fn write_policy(
    maps: &mut Maps,
    content: &PolicyContent,
    policy: u32,
    workload: &ObjectId,
    keys: &mut Keys,
    stats: &mut ApplyStats,
) -> Result<(), DataplaneError> {
    let what = |net: &dyn std::fmt::Display| format!("prefix {net} of workload {workload}");
    write_prefixes(
        &mut maps.allow_v4,
        map::ALLOW_V4,
        &content.allow_v4,
        |n| keys::v4(policy, n),
        &what,
        &mut keys.allow_v4,
    )?;
    write_prefixes(
        &mut maps.allow_v6,
        map::ALLOW_V6,
        &content.allow_v6,
        |n| keys::v6(policy, n),
        &what,
        &mut keys.allow_v6,
    )?;
    write_prefixes(
        &mut maps.gateway_v4,
        map::GATEWAY_V4,
        &content.gateway_v4,
        |n| keys::v4(policy, n),
        &what,
        &mut keys.gateway_v4,
    )?;
    write_prefixes(
        &mut maps.gateway_v6,
        map::GATEWAY_V6,
        &content.gateway_v6,
        |n| keys::v6(policy, n),
        &what,
        &mut keys.gateway_v6,
    )?;
    let allow = content.allow_v4.len() + content.allow_v6.len();
    let gateway = content.gateway_v4.len() + content.gateway_v6.len();
    stats.allow_entries += allow;
    stats.gateway_entries += gateway;
    stats.written += allow + gateway;
    if let Some(capture) = &content.capture {
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
                    format!("capture of workload {workload}"),
                    source,
                )
            })?;
        keys.captures.push(policy);
        let n = 1 + capture.v4.len() + capture.v6.len();
        stats.capture_entries += n;
        stats.written += n;
    }
    let info = PolicyInfo {
        flags: content.flags,
        cluster: content.cluster,
    };
    maps.policies.insert(policy, info, 0).map_err(|source| {
        write_err(
            map::POLICIES,
            format!("policy {policy} of workload {workload}"),
            source,
        )
    })?;
    keys.policies.push(policy);
    stats.policies += 1;
    stats.written += 1;
    Ok(())
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

pub(super) fn write_workload(
    maps: &mut Maps,
    cgroup: u64,
    slot: WorkloadSlot,
) -> Result<(), DataplaneError> {
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
    what: &dyn Fn(&dyn std::fmt::Display) -> String,
    written: &mut Vec<Key<K>>,
) -> Result<(), DataplaneError> {
    for (net, set) in entries {
        let k = key(*net);
        trie.insert(&k, *set, 0)
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

pub(super) fn write_err(map: &'static str, what: String, source: MapError) -> DataplaneError {
    DataplaneError::Write { map, what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_sets_are_padded_with_their_length() {
        let set = port_set(&[PortEntry::new(1, 6, 80, 80)], EMPTY_SET);
        assert_eq!((set.len, set.next), (1, EMPTY_SET));
        assert_eq!(set.entries[0], PortEntry::new(1, 6, 80, 80));
        assert_eq!(set.entries[1], PortEntry::default());
    }
}
