//! Deleting generations: the one this process wrote, by its keys, or
//! whatever an earlier process left, by enumerating the maps.

use std::collections::HashSet;

use aya::maps::{lpm_trie::Key, MapError};
use egress_common::{host_ports, map, SourceKey, WorkloadSlot, EMPTY_SET};

use super::{
    super::{
        keys,
        maps::{read, Maps},
        DataplaneError,
    },
    Keys,
};

/// Deletes every `SOURCES` pair that is not in `wanted` (whoever wrote
/// it: an earlier process's pairs are found by enumerating the map).
pub(super) fn prune_sources(
    maps: &mut Maps,
    wanted: &HashSet<SourceKey>,
) -> Result<usize, DataplaneError> {
    delete_where(
        &mut maps.sources,
        map::SOURCES,
        |key| !wanted.contains(key),
        |key| format!("{key:?}"),
    )
}

/// Every id and set id present anywhere in the maps, for a state this
/// process did not write (a previous agent, or a failed apply): fresh ids
/// must avoid them all, even those of a half-written generation.
pub(super) fn scan_ids(
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
pub(super) fn delete_keys(maps: &mut Maps, keys: &Keys) -> usize {
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
pub(super) fn delete_foreign(
    maps: &mut Maps,
    ids: &HashSet<u32>,
    sets: &HashSet<u32>,
) -> Result<usize, DataplaneError> {
    let mut removed = delete_where(
        &mut maps.policies,
        map::POLICIES,
        |id| !ids.contains(id),
        |id| format!("policy {id}"),
    )?;
    removed += delete_where(
        &mut maps.port_sets,
        map::PORT_SETS,
        |id| !sets.contains(id),
        |id| format!("port set {id}"),
    )?;
    removed += delete_where(
        &mut maps.captures,
        map::CAPTURES,
        |id| !ids.contains(id),
        |id| format!("capture of policy {id}"),
    )?;
    removed += delete_where(
        &mut maps.host_ports,
        map::HOST_PORTS,
        |key| !sets.contains(&host_table_of(*key)),
        |key| format!("host table entry {key:#x}"),
    )?;
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

/// Deletes every entry of `hash` whose key `stale` picks (the keys are
/// read first: deleting while iterating would skip some); how many.
fn delete_where<K: aya::Pod, V: aya::Pod>(
    hash: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    name: &'static str,
    stale: impl Fn(&K) -> bool,
    what: impl Fn(&K) -> String,
) -> Result<usize, DataplaneError> {
    let keys: Vec<K> = hash
        .keys()
        .collect::<Result<_, _>>()
        .map_err(|source| read(name, source))?;
    let mut removed = 0;
    for key in keys.iter().filter(|k| stale(k)) {
        delete(hash, key, name, || what(key))?;
        removed += 1;
    }
    Ok(removed)
}

pub(super) fn delete<K: aya::Pod, V: aya::Pod>(
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

pub(super) fn delete_trie<K: aya::Pod, V: aya::Pod>(
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
