//! The maps shared with the agent. Every one is pinned by the agent under
//! `<pin_dir>/maps/<NAME>` and reused when it restarts.
//!
//! Hash maps and tries are `BPF_F_NO_PREALLOC`: the agent replaces
//! `WORKLOADS` values while the programs read them, and only non-preallocated
//! hash maps free a replaced element after an RCU grace period (a
//! preallocated map recycles it at once, so a reader could see it rewritten
//! under its feet).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruPerCpuHashMap, PerCpuArray},
};
use egress_common::{
    capacity, Config, HitKey, PolicyAddrV4, PolicyAddrV6, PolicyInfo, PortSet, WorkloadSlot,
    VERDICT_SLOTS,
};

const NO_PREALLOC: u32 = BPF_F_NO_PREALLOC;

/// The active generation slot (0 or 1).
#[map(name = "ACTIVE")]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Workload cgroup id → policy id per generation slot.
#[map(name = "WORKLOADS")]
pub static WORKLOADS: HashMap<u64, WorkloadSlot> =
    HashMap::with_max_entries(capacity::WORKLOADS, NO_PREALLOC);

#[map(name = "POLICIES")]
pub static POLICIES: HashMap<u32, PolicyInfo> =
    HashMap::with_max_entries(capacity::POLICIES, NO_PREALLOC);

/// (policy, destination prefix) → port set id.
#[map(name = "ALLOW_V4")]
pub static ALLOW_V4: LpmTrie<PolicyAddrV4, u32> = LpmTrie::with_max_entries(capacity::ALLOW, 0);

#[map(name = "ALLOW_V6")]
pub static ALLOW_V6: LpmTrie<PolicyAddrV6, u32> = LpmTrie::with_max_entries(capacity::ALLOW, 0);

#[map(name = "PORT_SETS")]
pub static PORT_SETS: HashMap<u32, PortSet> =
    HashMap::with_max_entries(capacity::PORT_SETS, NO_PREALLOC);

/// (cluster tag, prefix) → 1: the cluster CIDRs of a generation.
#[map(name = "CLUSTER_V4")]
pub static CLUSTER_V4: LpmTrie<PolicyAddrV4, u8> = LpmTrie::with_max_entries(capacity::CLUSTER, 0);

#[map(name = "CLUSTER_V6")]
pub static CLUSTER_V6: LpmTrie<PolicyAddrV6, u8> = LpmTrie::with_max_entries(capacity::CLUSTER, 0);

/// (gateway policy, allowed host prefix) → port set id.
#[map(name = "GATEWAY_V4")]
pub static GATEWAY_V4: LpmTrie<PolicyAddrV4, u32> = LpmTrie::with_max_entries(capacity::GATEWAY, 0);

#[map(name = "GATEWAY_V6")]
pub static GATEWAY_V6: LpmTrie<PolicyAddrV6, u32> = LpmTrie::with_max_entries(capacity::GATEWAY, 0);

/// One counter per `verdict_index`. Per-CPU, so incrementing needs no
/// atomics; the agent sums the CPUs.
#[map(name = "VERDICTS")]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VERDICT_SLOTS, 0);

/// Per workload, rule and verdict. LRU: bounded whatever the traffic.
#[map(name = "RULE_HITS")]
pub static RULE_HITS: LruPerCpuHashMap<HitKey, u64> =
    LruPerCpuHashMap::with_max_entries(capacity::RULE_HITS, 0);
