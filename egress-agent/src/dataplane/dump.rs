//! The maps' contents with ids replaced by what they name, so that two
//! data planes can be compared whatever ids each handed out: a policy id
//! becomes its entries, a port set id its entries, a host table id its
//! entries, the cluster tag its CIDRs, and a workload's slots the
//! policies they name. Runtime state (counters, flows, events) is left
//! out. For tests and debugging; it reads every entry of every map.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use aya::maps::{lpm_trie::Key, LpmTrie, MapData};
use egress_common::{host_ports, map, PolicyAddrV4, PolicyAddrV6, EMPTY_SET, EXEMPT_POLICY};

use super::{
    keys,
    maps::{read, Maps},
    DataplaneError,
};

/// Entries of one trie, by id: prefix → value.
type ById = BTreeMap<u32, BTreeSet<(String, u32)>>;

fn by_id_v4<V: aya::Pod + Into<u32>>(
    trie: &LpmTrie<MapData, PolicyAddrV4, V>,
    name: &'static str,
) -> Result<ById, DataplaneError> {
    let mut out = ById::new();
    for entry in trie.iter() {
        let (key, value): (Key<PolicyAddrV4>, V) = entry.map_err(|source| read(name, source))?;
        let net = keys::v4_net(&key).map_or_else(|| "?".to_owned(), |n| n.to_string());
        out.entry(keys::v4_id(&key))
            .or_default()
            .insert((net, value.into()));
    }
    Ok(out)
}

fn by_id_v6<V: aya::Pod + Into<u32>>(
    trie: &LpmTrie<MapData, PolicyAddrV6, V>,
    name: &'static str,
) -> Result<ById, DataplaneError> {
    let mut out = ById::new();
    for entry in trie.iter() {
        let (key, value): (Key<PolicyAddrV6>, V) = entry.map_err(|source| read(name, source))?;
        let net = keys::v6_net(&key).map_or_else(|| "?".to_owned(), |n| n.to_string());
        out.entry(keys::v6_id(&key))
            .or_default()
            .insert((net, value.into()));
    }
    Ok(out)
}

/// See the module doc.
pub(super) fn canonical(maps: &Maps) -> Result<String, DataplaneError> {
    let mut out = String::new();
    let config = maps.config()?;
    let _ = writeln!(out, "CONFIG {config:?}");
    let counts = maps.entry_counts()?;
    let _ = writeln!(out, "COUNTS {counts:?}");

    let allow_v4 = by_id_v4(&maps.allow_v4, map::ALLOW_V4)?;
    let allow_v6 = by_id_v6(&maps.allow_v6, map::ALLOW_V6)?;
    let gateway_v4 = by_id_v4(&maps.gateway_v4, map::GATEWAY_V4)?;
    let gateway_v6 = by_id_v6(&maps.gateway_v6, map::GATEWAY_V6)?;
    let cluster_v4 = by_id_v4(&maps.cluster_v4, map::CLUSTER_V4)?;
    let cluster_v6 = by_id_v6(&maps.cluster_v6, map::CLUSTER_V6)?;
    let capture_v4 = by_id_v4(&maps.capture_v4, map::CAPTURE_V4)?;
    let capture_v6 = by_id_v6(&maps.capture_v6, map::CAPTURE_V6)?;
    let mut host_tables: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    for entry in maps.host_ports.iter() {
        let (key, value) = entry.map_err(|source| read(map::HOST_PORTS, source))?;
        host_tables
            .entry((key >> 32) as u32)
            .or_default()
            .push((key & 0xffff_ffff, value));
    }

    let port_set = |mut id: u32| -> Result<String, DataplaneError> {
        let mut entries = Vec::new();
        // A chain is at most a few sets long; the bound guards a loop.
        for _ in 0..64 {
            if id == EMPTY_SET {
                break;
            }
            match maps.port_sets.get(&id, 0) {
                Ok(set) => {
                    entries.extend_from_slice(&set.entries[..set.len as usize]);
                    id = set.next;
                }
                Err(_) => return Ok(format!("missing-set({id})")),
            }
        }
        Ok(format!("{entries:?}"))
    };
    let set = |value: u32| -> Result<String, DataplaneError> {
        if value & host_ports::ALLOW_FLAG == 0 {
            return port_set(value);
        }
        let host = value & !host_ports::ALLOW_FLAG;
        let Some(entries) = host_tables.get(&host) else {
            return Ok(format!("missing-host({host})"));
        };
        let mut rendered = BTreeSet::new();
        for &(key, value) in entries {
            let kind = (key >> 24) as u8;
            let value = if kind == host_ports::BASE {
                port_set(value)?
            } else {
                value.to_string()
            };
            rendered.insert(format!("{key:#x}={value}"));
        }
        Ok(format!("host{rendered:?}"))
    };
    let trie = |t: &ById, id: u32| -> Result<String, DataplaneError> {
        let mut s = String::new();
        for (net, value) in t.get(&id).into_iter().flatten() {
            let _ = write!(s, " {net}→{}", set(*value)?);
        }
        Ok(s)
    };
    let plain = |t: &ById, id: u32| -> String {
        t.get(&id)
            .into_iter()
            .flatten()
            .map(|(net, value)| format!(" {net}→{value}"))
            .collect()
    };
    let policy = |id: u32| -> Result<String, DataplaneError> {
        if id == 0 || id == EXEMPT_POLICY {
            return Ok(format!("{id:#x}"));
        }
        let Ok(info) = maps.policies.get(&id, 0) else {
            return Ok(format!("missing-policy({id})"));
        };
        let mut s = format!("flags {:#x}", info.flags);
        if info.cluster != 0 {
            let _ = write!(
                s,
                "\n    cluster v4{}\n    cluster v6{}",
                plain(&cluster_v4, info.cluster),
                plain(&cluster_v6, info.cluster)
            );
        }
        let _ = write!(s, "\n    allow v4{}", trie(&allow_v4, id)?);
        let _ = write!(s, "\n    allow v6{}", trie(&allow_v6, id)?);
        let _ = write!(s, "\n    gateway v4{}", trie(&gateway_v4, id)?);
        let _ = write!(s, "\n    gateway v6{}", trie(&gateway_v6, id)?);
        if let Ok(capture) = maps.captures.get(&id, 0) {
            let _ = write!(
                s,
                "\n    capture {capture:?} v4{} v6{}",
                plain(&capture_v4, id),
                plain(&capture_v6, id)
            );
        }
        Ok(s)
    };
    let mut slots = maps.workload_slots()?;
    slots.sort_by_key(|(cgroup, _)| *cgroup);
    let active = maps.active_slot()? as usize;
    for (cgroup, slot) in slots {
        let (live, other) = (slot.policy[active], slot.policy[1 - active]);
        let _ = writeln!(out, "WORKLOAD {cgroup}: {}", policy(live)?);
        let _ = writeln!(
            out,
            "  inactive slot {}",
            if other == live { "same" } else { "differs" }
        );
    }
    let mut sources: Vec<String> = maps
        .sources
        .keys()
        .map(|k| k.map(|k| format!("{k:?}")))
        .collect::<Result<_, _>>()
        .map_err(|source| read(map::SOURCES, source))?;
    sources.sort();
    let _ = writeln!(out, "SOURCES {sources:?}");
    Ok(out)
}
