//! The object's maps, pinned under `<pin_dir>/maps/`, as typed handles.

use std::{
    mem::size_of,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, MapInfo, MapType, PerCpuArray, PerCpuHashMap, RingBuf,
    },
    Ebpf, EbpfLoader,
};
use egress_common::{
    capacity, map, CaptureInfo, Config, DnsOrig, EventConfig, EventStat, FlowEvent, HitKey,
    LimitKey, OrigDst, PolicyAddrV4, PolicyAddrV6, PolicyInfo, PortSet, SockKey, SourceKey,
    UdpFlowKey, WorkloadSlot, VERDICT_SLOTS,
};

use super::{capacities::Capacities, links::OwnMaps, object, syscalls, DataplaneError};
use crate::sys;

/// `BPF_F_NO_PREALLOC`.
const NO_PREALLOC: u32 = 1;

/// What a map must look like: the object's definition (see
/// `egress-ebpf/src/maps.rs`), checked against maps pinned by an earlier
/// agent before they are reused.
struct Layout {
    name: &'static str,
    kind: MapType,
    key: usize,
    value: usize,
    max_entries: u32,
    flags: u32,
}

const LAYOUTS: [Layout; 28] = [
    Layout {
        name: map::ACTIVE,
        kind: MapType::Array,
        key: 4,
        value: size_of::<u32>(),
        max_entries: 1,
        flags: 0,
    },
    Layout {
        name: map::CONFIG,
        kind: MapType::Array,
        key: 4,
        value: size_of::<Config>(),
        max_entries: 1,
        flags: 0,
    },
    Layout {
        name: map::WORKLOADS,
        kind: MapType::Hash,
        key: size_of::<u64>(),
        value: size_of::<WorkloadSlot>(),
        max_entries: capacity::WORKLOADS,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::POLICIES,
        kind: MapType::Hash,
        key: size_of::<u32>(),
        value: size_of::<PolicyInfo>(),
        max_entries: capacity::POLICIES,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::ALLOW_V4,
        kind: MapType::LpmTrie,
        key: 4 + size_of::<PolicyAddrV4>(),
        value: size_of::<u32>(),
        max_entries: capacity::ALLOW,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::ALLOW_V6,
        kind: MapType::LpmTrie,
        key: 4 + size_of::<PolicyAddrV6>(),
        value: size_of::<u32>(),
        max_entries: capacity::ALLOW,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::PORT_SETS,
        kind: MapType::Hash,
        key: size_of::<u32>(),
        value: size_of::<PortSet>(),
        max_entries: capacity::PORT_SETS,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::CLUSTER_V4,
        kind: MapType::LpmTrie,
        key: 4 + size_of::<PolicyAddrV4>(),
        value: 1,
        max_entries: capacity::CLUSTER,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::CLUSTER_V6,
        kind: MapType::LpmTrie,
        key: 4 + size_of::<PolicyAddrV6>(),
        value: 1,
        max_entries: capacity::CLUSTER,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::HOST_PORTS,
        kind: MapType::Hash,
        key: size_of::<u64>(),
        value: size_of::<u32>(),
        max_entries: capacity::HOST_PORTS,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::GATEWAY_V4,
        kind: MapType::LpmTrie,
        key: 4 + size_of::<PolicyAddrV4>(),
        value: size_of::<u32>(),
        max_entries: capacity::GATEWAY,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::GATEWAY_V6,
        kind: MapType::LpmTrie,
        key: 4 + size_of::<PolicyAddrV6>(),
        value: size_of::<u32>(),
        max_entries: capacity::GATEWAY,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::VERDICTS,
        kind: MapType::PerCpuArray,
        key: 4,
        value: size_of::<u64>(),
        max_entries: VERDICT_SLOTS,
        flags: 0,
    },
    Layout {
        name: map::RULE_HITS,
        kind: MapType::LruPerCpuHash,
        key: size_of::<HitKey>(),
        value: size_of::<u64>(),
        max_entries: capacity::RULE_HITS,
        flags: 0,
    },
    Layout {
        name: map::INBOUND_TCP,
        kind: MapType::LruHash,
        key: size_of::<u64>(),
        value: 1,
        max_entries: capacity::INBOUND_TCP,
        flags: 0,
    },
    Layout {
        name: map::INBOUND_UDP,
        kind: MapType::LruHash,
        key: size_of::<UdpFlowKey>(),
        value: size_of::<u64>(),
        max_entries: capacity::INBOUND_UDP,
        flags: 0,
    },
    Layout {
        name: map::FLOW_EVENTS,
        kind: MapType::PerCpuArray,
        key: 4,
        value: size_of::<u64>(),
        max_entries: FlowEvent::SLOTS,
        flags: 0,
    },
    Layout {
        name: map::CAPTURES,
        kind: MapType::Hash,
        key: size_of::<u32>(),
        value: size_of::<CaptureInfo>(),
        max_entries: capacity::POLICIES,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::CAPTURE_V4,
        kind: MapType::LpmTrie,
        key: 4 + size_of::<PolicyAddrV4>(),
        value: 1,
        max_entries: capacity::CAPTURE,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::CAPTURE_V6,
        kind: MapType::LpmTrie,
        key: 4 + size_of::<PolicyAddrV6>(),
        value: 1,
        max_entries: capacity::CAPTURE,
        flags: NO_PREALLOC,
    },
    Layout {
        name: map::REDIRECTED,
        kind: MapType::LruHash,
        key: size_of::<u64>(),
        value: size_of::<OrigDst>(),
        max_entries: capacity::REDIRECTED,
        flags: 0,
    },
    Layout {
        name: map::ORIG_DST,
        kind: MapType::LruHash,
        key: size_of::<SockKey>(),
        value: size_of::<OrigDst>(),
        max_entries: capacity::ORIG_DST,
        flags: 0,
    },
    Layout {
        name: map::DNS_ORIG,
        kind: MapType::LruHash,
        key: size_of::<u64>(),
        value: size_of::<DnsOrig>(),
        max_entries: capacity::DNS_ORIG,
        flags: 0,
    },
    Layout {
        name: map::EVENTS,
        kind: MapType::RingBuf,
        key: 0,
        value: 0,
        max_entries: capacity::EVENTS_BYTES,
        flags: 0,
    },
    Layout {
        name: map::EVENT_CONFIG,
        kind: MapType::Array,
        key: 4,
        value: size_of::<EventConfig>(),
        max_entries: 1,
        flags: 0,
    },
    Layout {
        name: map::EVENT_LIMIT,
        kind: MapType::LruHash,
        key: size_of::<LimitKey>(),
        value: size_of::<u64>(),
        max_entries: capacity::EVENT_LIMIT,
        flags: 0,
    },
    Layout {
        name: map::EVENT_STATS,
        kind: MapType::PerCpuArray,
        key: 4,
        value: size_of::<u64>(),
        max_entries: EventStat::SLOTS,
        flags: 0,
    },
    Layout {
        name: map::SOURCES,
        kind: MapType::Hash,
        key: size_of::<SourceKey>(),
        value: 1,
        max_entries: capacity::SOURCES,
        flags: NO_PREALLOC,
    },
];

/// Typed handles on every map.
pub(super) struct Maps {
    pub(super) active: Array<MapData, u32>,
    pub(super) config: Array<MapData, Config>,
    pub(super) workloads: HashMap<MapData, u64, WorkloadSlot>,
    pub(super) policies: HashMap<MapData, u32, PolicyInfo>,
    pub(super) allow_v4: LpmTrie<MapData, PolicyAddrV4, u32>,
    pub(super) allow_v6: LpmTrie<MapData, PolicyAddrV6, u32>,
    pub(super) port_sets: HashMap<MapData, u32, PortSet>,
    pub(super) cluster_v4: LpmTrie<MapData, PolicyAddrV4, u8>,
    pub(super) cluster_v6: LpmTrie<MapData, PolicyAddrV6, u8>,
    pub(super) host_ports: HashMap<MapData, u64, u32>,
    pub(super) gateway_v4: LpmTrie<MapData, PolicyAddrV4, u32>,
    pub(super) gateway_v6: LpmTrie<MapData, PolicyAddrV6, u32>,
    pub(super) verdicts: PerCpuArray<MapData, u64>,
    pub(super) rule_hits: PerCpuHashMap<MapData, HitKey, u64>,
    pub(super) inbound_tcp: HashMap<MapData, u64, u8>,
    pub(super) inbound_udp: HashMap<MapData, UdpFlowKey, u64>,
    pub(super) flow_events: PerCpuArray<MapData, u64>,
    pub(super) captures: HashMap<MapData, u32, CaptureInfo>,
    pub(super) capture_v4: LpmTrie<MapData, PolicyAddrV4, u8>,
    pub(super) capture_v6: LpmTrie<MapData, PolicyAddrV6, u8>,
    pub(super) redirected: HashMap<MapData, u64, OrigDst>,
    pub(super) orig_dst: HashMap<MapData, SockKey, OrigDst>,
    pub(super) dns_orig: HashMap<MapData, u64, DnsOrig>,
    /// Taken once by the event reader ([`Maps::take_events`]).
    pub(super) events: Option<RingBuf<MapData>>,
    pub(super) event_config: Array<MapData, EventConfig>,
    pub(super) event_stats: PerCpuArray<MapData, u64>,
    pub(super) sources: HashMap<MapData, SourceKey, u8>,
    /// Ids of maps that tell our programs, on these maps, from others'.
    pub(super) own: OwnMaps,
}

/// Loads the embedded object with every map pinned at
/// `<maps_dir>/<NAME>`: a map already pinned there is reused (after its
/// layout is checked), any other is created and pinned. Programs are not
/// loaded into the kernel yet.
pub(super) fn load_object(
    maps_dir: &Path,
    log_level: EbpfLogLevel,
    capacities: &Capacities,
) -> Result<Ebpf, DataplaneError> {
    capacities.check()?;
    check_pinned(maps_dir, capacities)?;
    let paths: Vec<(&'static str, PathBuf)> = map::ALL
        .iter()
        .map(|name| (*name, maps_dir.join(name)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
        if let Some((max, _)) = capacities.of(name) {
            loader.map_max_entries(name, max);
        }
    }
    // aya-log's level is a load-time global that defaults to "everything";
    // ours defaults to off.
    let level = log_level as u8;
    loader.override_global("AYA_LOG_LEVEL", &level, false);
    // Non-fatal by design; see `sys::raise_memlock_limit`.
    let memlock = sys::raise_memlock_limit().err();
    loader
        .load(object::bytes())
        .map_err(|source| DataplaneError::LoadObject { source, memlock })
}

/// How much the programs log through aya-log (`run --ebpf-log`); the
/// values are aya-log's levels, `Off` below them all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum EbpfLogLevel {
    #[default]
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// Refuses pinned maps whose layout differs from this build's, or whose
/// size differs from the one `capacities` asks for.
fn check_pinned(maps_dir: &Path, capacities: &Capacities) -> Result<(), DataplaneError> {
    for layout in &LAYOUTS {
        let path = maps_dir.join(layout.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| DataplaneError::PinnedMap {
            path: path.clone(),
            source,
        })?;
        let found = describe(
            info.map_type().ok(),
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
            info.map_flags(),
        );
        let asked = capacities.of(layout.name);
        let max_entries = asked.map_or(layout.max_entries, |(max, _)| max);
        let expected = describe(
            Some(layout.kind),
            layout.key,
            layout.value,
            max_entries,
            layout.flags,
        );
        // Only the size differs: name the flag, not a version mismatch.
        if let Some((_, flag)) = asked.filter(|_| info.max_entries() != max_entries) {
            let same_otherwise = describe(
                info.map_type().ok(),
                info.key_size() as usize,
                info.value_size() as usize,
                max_entries,
                info.map_flags(),
            ) == expected;
            if same_otherwise {
                return Err(DataplaneError::CapacityMismatch {
                    path,
                    flag,
                    pinned: info.max_entries(),
                    asked: max_entries,
                });
            }
        }
        if found != expected {
            return Err(DataplaneError::IncompatibleMap {
                path,
                found,
                expected,
            });
        }
    }
    Ok(())
}

fn describe(kind: Option<MapType>, key: usize, value: usize, max: u32, flags: u32) -> String {
    format!("type {kind:?}, key {key} B, value {value} B, max_entries {max}, flags {flags:#x}")
}

impl Maps {
    /// Takes every map out of `ebpf`.
    pub(super) fn take(ebpf: &mut Ebpf, maps_dir: &Path) -> Result<Self, DataplaneError> {
        let mut take = |name| ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name));
        let mut maps = Self::assemble(maps_dir, &mut take)?;
        maps.events = Some(typed(take(map::EVENTS)?, map::EVENTS)?);
        Ok(maps)
    }

    /// Opens every map again from its pin under `maps_dir`: a second set
    /// of handles on the same kernel maps, so that a reader (`status`,
    /// `/metrics`) needs no access to the handles an apply writes with.
    /// The event ring is left out: one reader streams it.
    pub(super) fn open_pinned(maps_dir: &Path) -> Result<Self, DataplaneError> {
        Self::assemble(maps_dir, &mut |name| {
            let path = maps_dir.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| DataplaneError::PinnedMap { path, source })
        })
    }

    /// Every map but the event ring, each from `open`.
    fn assemble(
        maps_dir: &Path,
        open: &mut dyn FnMut(&'static str) -> Result<Map, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        macro_rules! handle {
            ($name:expr) => {
                typed(open($name)?, $name)?
            };
        }
        let pinned_id = |name: &'static str| {
            let pin = maps_dir.join(name);
            MapInfo::from_pin(&pin)
                .map(|info| info.id())
                .map_err(|source| DataplaneError::PinnedMap { path: pin, source })
        };
        let own = OwnMaps {
            workloads: pinned_id(map::WORKLOADS)?,
            inbound_tcp: pinned_id(map::INBOUND_TCP)?,
            orig_dst: pinned_id(map::ORIG_DST)?,
            dns_orig: pinned_id(map::DNS_ORIG)?,
        };
        Ok(Self {
            active: handle!(map::ACTIVE),
            config: handle!(map::CONFIG),
            workloads: handle!(map::WORKLOADS),
            policies: handle!(map::POLICIES),
            allow_v4: handle!(map::ALLOW_V4),
            allow_v6: handle!(map::ALLOW_V6),
            port_sets: handle!(map::PORT_SETS),
            cluster_v4: handle!(map::CLUSTER_V4),
            cluster_v6: handle!(map::CLUSTER_V6),
            host_ports: handle!(map::HOST_PORTS),
            gateway_v4: handle!(map::GATEWAY_V4),
            gateway_v6: handle!(map::GATEWAY_V6),
            verdicts: handle!(map::VERDICTS),
            rule_hits: handle!(map::RULE_HITS),
            inbound_tcp: handle!(map::INBOUND_TCP),
            inbound_udp: handle!(map::INBOUND_UDP),
            flow_events: handle!(map::FLOW_EVENTS),
            captures: handle!(map::CAPTURES),
            capture_v4: handle!(map::CAPTURE_V4),
            capture_v6: handle!(map::CAPTURE_V6),
            redirected: handle!(map::REDIRECTED),
            orig_dst: handle!(map::ORIG_DST),
            dns_orig: handle!(map::DNS_ORIG),
            events: None,
            event_config: handle!(map::EVENT_CONFIG),
            event_stats: handle!(map::EVENT_STATS),
            sources: handle!(map::SOURCES),
            own,
        })
    }

    pub(super) fn active_slot(&self) -> Result<u32, DataplaneError> {
        self.active
            .get(&0, 0)
            .map(|slot| slot & 1)
            .map_err(|source| read(map::ACTIVE, source))
    }

    pub(super) fn config(&self) -> Result<Config, DataplaneError> {
        self.config
            .get(&0, 0)
            .map_err(|source| read(map::CONFIG, source))
    }

    pub(super) fn set_config(&mut self, config: Config) -> Result<(), DataplaneError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| DataplaneError::Write {
                map: map::CONFIG,
                what: format!("{config:?}"),
                source,
            })
    }

    pub(super) fn set_active(&mut self, slot: u32) -> Result<(), DataplaneError> {
        self.active
            .set(0, slot, 0)
            .map_err(|source| DataplaneError::Write {
                map: map::ACTIVE,
                what: format!("slot {slot}"),
                source,
            })
    }

    pub(super) fn set_event_config(&mut self, config: EventConfig) -> Result<(), DataplaneError> {
        self.event_config
            .set(0, config, 0)
            .map_err(|source| DataplaneError::Write {
                map: map::EVENT_CONFIG,
                what: format!("{config:?}"),
                source,
            })
    }

    /// `EVENT_STATS`, summed over CPUs, by stat.
    pub(super) fn event_stats(&self) -> Result<Vec<(EventStat, u64)>, DataplaneError> {
        EventStat::ALL
            .iter()
            .map(|stat| {
                let total = per_cpu_total(&self.event_stats, map::EVENT_STATS, *stat as u32)?;
                Ok((*stat, total))
            })
            .collect()
    }

    /// Every `WORKLOADS` entry.
    pub(super) fn workload_slots(&self) -> Result<Vec<(u64, WorkloadSlot)>, DataplaneError> {
        self.workloads
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| read(map::WORKLOADS, source))
    }

    /// The number of entries of every map, by name (not `VERDICTS`, an
    /// array).
    pub(super) fn entry_counts(&self) -> Result<EntryCounts, DataplaneError> {
        fn count<K>(
            keys: impl Iterator<Item = Result<K, aya::maps::MapError>>,
            name: &'static str,
        ) -> Result<usize, DataplaneError> {
            let mut n = 0;
            for key in keys {
                key.map_err(|source| read(name, source))?;
                n += 1;
            }
            Ok(n)
        }
        Ok(EntryCounts {
            workloads: count(self.workloads.keys(), map::WORKLOADS)?,
            policies: count(self.policies.keys(), map::POLICIES)?,
            allow: count(self.allow_v4.keys(), map::ALLOW_V4)?
                + count(self.allow_v6.keys(), map::ALLOW_V6)?,
            port_sets: count(self.port_sets.keys(), map::PORT_SETS)?,
            cluster: count(self.cluster_v4.keys(), map::CLUSTER_V4)?
                + count(self.cluster_v6.keys(), map::CLUSTER_V6)?,
            gateway: count(self.gateway_v4.keys(), map::GATEWAY_V4)?
                + count(self.gateway_v6.keys(), map::GATEWAY_V6)?,
            host_ports: count(self.host_ports.keys(), map::HOST_PORTS)?,
            captures: count(self.captures.keys(), map::CAPTURES)?,
            capture: count(self.capture_v4.keys(), map::CAPTURE_V4)?
                + count(self.capture_v6.keys(), map::CAPTURE_V6)?,
        })
    }

    /// The entries of the inbound-flow maps. Walking an LRU map of live
    /// traffic while the programs evict and delete may skip or repeat a
    /// key (the walk restarts when the current key disappears): the counts
    /// are a snapshot, good for sizes, not for exact bookkeeping.
    pub(super) fn flow_entries(&self) -> FlowEntries {
        let now = syscalls::monotonic_ns();
        let (mut inbound_udp, mut idle) = (0, 0);
        // An error is a key that vanished under the walk: it no longer
        // counts.
        for (_, seen) in self.inbound_udp.iter().filter_map(Result::ok) {
            inbound_udp += 1;
            if now.is_some_and(|now| now.saturating_sub(seen) > egress_common::UDP_IDLE_NS) {
                idle += 1;
            }
        }
        FlowEntries {
            inbound_tcp: self.inbound_tcp.keys().filter(Result::is_ok).count(),
            inbound_udp,
            inbound_udp_idle: idle,
            redirected: self.redirected.keys().filter(Result::is_ok).count(),
            orig_dst: self.orig_dst.keys().filter(Result::is_ok).count(),
            dns_orig: self.dns_orig.keys().filter(Result::is_ok).count(),
        }
    }

    /// Every key of an IPv4 trie (collected first: deleting while
    /// iterating would restart the walk).
    pub(super) fn keys_v4<V: aya::Pod>(
        trie: &LpmTrie<MapData, PolicyAddrV4, V>,
        name: &'static str,
    ) -> Result<Vec<Key<PolicyAddrV4>>, DataplaneError> {
        trie.keys()
            .collect::<Result<_, _>>()
            .map_err(|source| read(name, source))
    }

    pub(super) fn keys_v6<V: aya::Pod>(
        trie: &LpmTrie<MapData, PolicyAddrV6, V>,
        name: &'static str,
    ) -> Result<Vec<Key<PolicyAddrV6>>, DataplaneError> {
        trie.keys()
            .collect::<Result<_, _>>()
            .map_err(|source| read(name, source))
    }
}

/// Entries per map (the IPv4 and IPv6 tries of a kind summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryCounts {
    pub workloads: usize,
    pub policies: usize,
    pub allow: usize,
    pub port_sets: usize,
    pub cluster: usize,
    pub gateway: usize,
    /// `HOST_PORTS` entries.
    pub host_ports: usize,
    /// `CAPTURES` entries: one per captured workload and generation.
    pub captures: usize,
    /// `CAPTURE_V4` + `CAPTURE_V6` entries.
    pub capture: usize,
}

/// Entries of the maps of inbound flows (see [`Dataplane::flow_entries`](super::Dataplane::flow_entries)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntries {
    /// Accepted TCP sockets marked in `INBOUND_TCP` (open ones, and
    /// aborted ones whose RST never came).
    pub inbound_tcp: usize,
    /// Recorded UDP flows in `INBOUND_UDP`, idle ones included.
    pub inbound_udp: usize,
    /// Of those, flows idle for longer than `UDP_IDLE_NS`: no longer
    /// replies, left until a lookup deletes them or LRU evicts them.
    pub inbound_udp_idle: usize,
    /// Redirected connects whose handshake has not completed (`REDIRECTED`).
    pub redirected: usize,
    /// Open redirected connections with their original destination
    /// (`ORIG_DST`).
    pub orig_dst: usize,
    /// UDP sockets whose DNS queries were redirected (`DNS_ORIG`).
    pub dns_orig: usize,
}

/// `map` as the typed handle `T`, checked against its key and value sizes.
fn typed<T>(map: Map, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|source| DataplaneError::MapLayout { map: name, source })
}

pub(super) fn read(map: &'static str, source: aya::maps::MapError) -> DataplaneError {
    DataplaneError::Read { map, source }
}

/// Slot `index` of the per-CPU counter array `map`, summed over CPUs.
pub(super) fn per_cpu_total(
    array: &PerCpuArray<MapData, u64>,
    map: &'static str,
    index: u32,
) -> Result<u64, DataplaneError> {
    let per_cpu = array.get(&index, 0).map_err(|source| read(map, source))?;
    Ok(per_cpu.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_a_layout() {
        let names: Vec<&str> = LAYOUTS.iter().map(|l| l.name).collect();
        assert_eq!(names, map::ALL);
    }
}
