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
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use egress_common::{
    capacity, CaptureInfo, Config, DnsOrig, EventConfig, EventStat, FlowEvent, HitKey, LimitKey,
    OrigDst, PolicyAddrV4, PolicyAddrV6, PolicyInfo, PortSet, SockKey, SourceKey, UdpFlowKey,
    WorkloadSlot, VERDICT_SLOTS,
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

/// (cluster tag, prefix) → `host_ports::CLUSTER_INSIDE`, or
/// `CLUSTER_PORTS` on a node address with NodePorts that lead outside: the
/// cluster CIDRs of a generation.
#[map(name = "CLUSTER_V4")]
pub static CLUSTER_V4: LpmTrie<PolicyAddrV4, u8> = LpmTrie::with_max_entries(capacity::CLUSTER, 0);

#[map(name = "CLUSTER_V6")]
pub static CLUSTER_V6: LpmTrie<PolicyAddrV6, u8> = LpmTrie::with_max_entries(capacity::CLUSTER, 0);

/// `host_ports::key(host table, kind, protocol, port)` → rule id,
/// `host_ports::DENY` or a port set id: the ports a flagged `ALLOW_*`
/// entry defers to (`egress_common::host_ports`).
#[map(name = "HOST_PORTS")]
pub static HOST_PORTS: HashMap<u64, u32> =
    HashMap::with_max_entries(capacity::HOST_PORTS, NO_PREALLOC);

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

/// Socket cookie → `egress_common::inbound` state, for accepted TCP
/// sockets. Written by `sock_ops` only. LRU maps are always preallocated
/// (`BPF_F_NO_PREALLOC` is refused for them).
#[map(name = "INBOUND_TCP")]
pub static INBOUND_TCP: LruHashMap<u64, u8> =
    LruHashMap::with_max_entries(capacity::INBOUND_TCP, 0);

/// (socket, remote) → when a datagram last went either way, ns since boot
/// (`bpf_ktime_get_ns`). Created by `cgroup_skb/ingress` only.
#[map(name = "INBOUND_UDP")]
pub static INBOUND_UDP: LruHashMap<UdpFlowKey, u64> =
    LruHashMap::with_max_entries(capacity::INBOUND_UDP, 0);

/// One counter per `FlowEvent`, per CPU.
#[map(name = "FLOW_EVENTS")]
pub static FLOW_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FlowEvent::SLOTS, 0);

/// Policy id → its Redirect's proxy and port rules; absent = not captured.
#[map(name = "CAPTURES")]
pub static CAPTURES: HashMap<u32, CaptureInfo> =
    HashMap::with_max_entries(capacity::POLICIES, NO_PREALLOC);

/// (policy, prefix) → `egress_common::capture` include/exclude.
#[map(name = "CAPTURE_V4")]
pub static CAPTURE_V4: LpmTrie<PolicyAddrV4, u8> = LpmTrie::with_max_entries(capacity::CAPTURE, 0);

#[map(name = "CAPTURE_V6")]
pub static CAPTURE_V6: LpmTrie<PolicyAddrV6, u8> = LpmTrie::with_max_entries(capacity::CAPTURE, 0);

/// Socket cookie → original destination, from the rewritten `connect()`
/// until the handshake completes (or fails).
#[map(name = "REDIRECTED")]
pub static REDIRECTED: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(capacity::REDIRECTED, 0);

/// The app's local address → original destination, while the connection
/// is open: what `SO_ORIGINAL_DST` on the proxy's accepted socket answers.
#[map(name = "ORIG_DST")]
pub static ORIG_DST: LruHashMap<SockKey, OrigDst> =
    LruHashMap::with_max_entries(capacity::ORIG_DST, 0);

/// UDP socket cookie → the DNS server its last redirected query was for.
#[map(name = "DNS_ORIG")]
pub static DNS_ORIG: LruHashMap<u64, DnsOrig> = LruHashMap::with_max_entries(capacity::DNS_ORIG, 0);

/// Verdict events for the agent (`egress_common::Event`).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

#[map(name = "EVENT_CONFIG")]
pub static EVENT_CONFIG: Array<EventConfig> = Array::with_max_entries(1, 0);

/// Rate-limit key -> when it last emitted (ns since boot).
#[map(name = "EVENT_LIMIT")]
pub static EVENT_LIMIT: LruHashMap<LimitKey, u64> =
    LruHashMap::with_max_entries(capacity::EVENT_LIMIT, 0);

/// One counter per `EventStat`, per CPU.
#[map(name = "EVENT_STATS")]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EventStat::SLOTS, 0);

/// (workload cgroup, own address) → 1: the sources a workload with
/// `PolicyInfo::SOURCE_CHECK` may send from.
#[map(name = "SOURCES")]
pub static SOURCES: HashMap<SourceKey, u8> =
    HashMap::with_max_entries(capacity::SOURCES, NO_PREALLOC);
