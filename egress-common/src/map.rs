//! Map names, as the object defines them and as they are pinned under
//! `<pin_dir>/maps/`.
/// `Array<u32>` of length 1: the active generation slot, 0 or 1.
pub const ACTIVE: &str = "ACTIVE";
/// `Array<Config>` of length 1.
pub const CONFIG: &str = "CONFIG";
/// `HashMap<u64 cgroup id, WorkloadSlot>`.
pub const WORKLOADS: &str = "WORKLOADS";
/// `HashMap<u32 policy id, PolicyInfo>`.
pub const POLICIES: &str = "POLICIES";
/// `LpmTrie<PolicyAddrV4, u32 port set id>`, or a host table id with
/// [`crate::host_ports::ALLOW_FLAG`].
pub const ALLOW_V4: &str = "ALLOW_V4";
/// `LpmTrie<PolicyAddrV6, u32 port set id>`, as `ALLOW_V4`.
pub const ALLOW_V6: &str = "ALLOW_V6";
/// `HashMap<u32 port set id, PortSet>`.
pub const PORT_SETS: &str = "PORT_SETS";
/// `LpmTrie<PolicyAddrV4, u8>` keyed by cluster tag: the cluster CIDRs
/// ([`crate::host_ports::CLUSTER_INSIDE`]), and hosts with ports on the
/// other side ([`crate::host_ports::CLUSTER_PORTS`],
/// [`crate::host_ports::CLUSTER_ONLY_PORTS`]).
pub const CLUSTER_V4: &str = "CLUSTER_V4";
/// `LpmTrie<PolicyAddrV6, u8>` keyed by cluster tag.
pub const CLUSTER_V6: &str = "CLUSTER_V6";
/// `HashMap<u64, u32>`: host tables, the ports of single addresses
/// that a flagged `ALLOW_*` entry defers to, see [`crate::host_ports`].
pub const HOST_PORTS: &str = "HOST_PORTS";
/// `LpmTrie<PolicyAddrV4, u32 port set id>`: REGISTRY_ONLY hosts.
pub const GATEWAY_V4: &str = "GATEWAY_V4";
/// `LpmTrie<PolicyAddrV6, u32 port set id>`.
pub const GATEWAY_V6: &str = "GATEWAY_V6";
/// `PerCpuArray<u64>`, indexed by [`crate::verdict_index`].
pub const VERDICTS: &str = "VERDICTS";
/// `LruPerCpuHashMap<HitKey, u64>`.
pub const RULE_HITS: &str = "RULE_HITS";
/// `LruHashMap<u64 socket cookie, u8 state>`: accepted TCP sockets, see
/// [`crate::inbound`].
pub const INBOUND_TCP: &str = "INBOUND_TCP";
/// `LruHashMap<UdpFlowKey, u64 last seen, ns since boot>`: remotes that
/// sent a datagram to a managed UDP socket.
pub const INBOUND_UDP: &str = "INBOUND_UDP";
/// `PerCpuArray<u64>`, indexed by [`crate::FlowEvent`].
pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
/// `HashMap<u32 policy id, CaptureInfo>`: the policy's Redirect, if any.
pub const CAPTURES: &str = "CAPTURES";
/// `LpmTrie<PolicyAddrV4, u8>`: capture include/exclude ranges, see
/// [`crate::capture`].
pub const CAPTURE_V4: &str = "CAPTURE_V4";
/// `LpmTrie<PolicyAddrV6, u8>`.
pub const CAPTURE_V6: &str = "CAPTURE_V6";
/// `LruHashMap<u64 socket cookie, OrigDst>`: redirected connects whose
/// handshake has not completed yet.
pub const REDIRECTED: &str = "REDIRECTED";
/// `LruHashMap<SockKey, OrigDst>`: established redirected connections
/// by the app's local address, which is the proxy's peer address.
pub const ORIG_DST: &str = "ORIG_DST";
/// `LruHashMap<u64 socket cookie, DnsOrig>`: the DNS server a UDP
/// socket's query was redirected away from, for `recvmsg4/6`.
pub const DNS_ORIG: &str = "DNS_ORIG";

/// `RingBuf` of [`crate::Event`]s: deny, audit, redirect and sampled
/// allow verdicts, for the agent's `events` stream.
pub const EVENTS: &str = "EVENTS";
/// `Array<EventConfig>` of length 1: allow sampling and the rate limit.
pub const EVENT_CONFIG: &str = "EVENT_CONFIG";
/// `LruHashMap<LimitKey, u64 last emit, ns since boot>`: the per
/// (workload, destination, verdict) rate limit.
pub const EVENT_LIMIT: &str = "EVENT_LIMIT";
/// `PerCpuArray<u64>`, indexed by [`crate::EventStat`].
pub const EVENT_STATS: &str = "EVENT_STATS";
/// `HashMap<SourceKey, u8>`: each address-listing workload's own
/// addresses, the only sources its packets may carry (anti-spoofing).
pub const SOURCES: &str = "SOURCES";

/// Every map of the object, in the order the agent opens them.
pub const ALL: [&str; 28] = [
    ACTIVE,
    CONFIG,
    WORKLOADS,
    POLICIES,
    ALLOW_V4,
    ALLOW_V6,
    PORT_SETS,
    CLUSTER_V4,
    CLUSTER_V6,
    HOST_PORTS,
    GATEWAY_V4,
    GATEWAY_V6,
    VERDICTS,
    RULE_HITS,
    INBOUND_TCP,
    INBOUND_UDP,
    FLOW_EVENTS,
    CAPTURES,
    CAPTURE_V4,
    CAPTURE_V6,
    REDIRECTED,
    ORIG_DST,
    DNS_ORIG,
    EVENTS,
    EVENT_CONFIG,
    EVENT_LIMIT,
    EVENT_STATS,
    SOURCES,
];
