//! Types shared by the eBPF programs and the agent: map names, keys, values
//! and verdict codes.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every
//! type is `#[repr(C)]`, has no implicit padding, and is `Copy`. The `user`
//! feature implements `aya::Pod` for them; the eBPF side never enables it.
//!
//! # The enforcement model in one paragraph
//!
//! The programs are attached once, at a cgroup root. A socket's workload is
//! the deepest ancestor cgroup of the socket (levels listed in
//! [`Config::level_mask`]) that has an entry in `WORKLOADS` whose slot for
//! the active generation ([`map::ACTIVE`]) names a policy. The policy's
//! [`PolicyInfo`] says which checks apply; its allowed destinations live in
//! the `ALLOW_*` tries under keys that start with the policy id, and map to
//! [`PortSet`]s. Every decision increments one [`verdict_index`] counter.
//!
//! Egress rules restrict what a workload *initiates*, as in Kubernetes:
//! replies on flows that came in are allowed ([`Reason::Reply`]). The
//! programs learn those flows from the kernel, never from what the workload
//! sends: `sock_ops` marks accepted TCP sockets in `INBOUND_TCP` once their
//! handshake completes ([`inbound`]), and `cgroup_skb/ingress` records the
//! remote of each UDP datagram a managed socket receives in `INBOUND_UDP`
//! ([`UdpFlowKey`]).
#![cfg_attr(not(test), no_std)]

/// Map names, as the object defines them and as they are pinned under
/// `<pin_dir>/maps/`.
pub mod map {
    /// `Array<u32>` of length 1: the active generation slot, 0 or 1.
    pub const ACTIVE: &str = "ACTIVE";
    /// `Array<Config>` of length 1.
    pub const CONFIG: &str = "CONFIG";
    /// `HashMap<u64 cgroup id, WorkloadSlot>`.
    pub const WORKLOADS: &str = "WORKLOADS";
    /// `HashMap<u32 policy id, PolicyInfo>`.
    pub const POLICIES: &str = "POLICIES";
    /// `LpmTrie<PolicyAddrV4, u32 port set id>`, or a host table id with
    /// [`super::host_ports::ALLOW_FLAG`].
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// `LpmTrie<PolicyAddrV6, u32 port set id>`, as `ALLOW_V4`.
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// `HashMap<u32 port set id, PortSet>`.
    pub const PORT_SETS: &str = "PORT_SETS";
    /// `LpmTrie<PolicyAddrV4, u8>` keyed by cluster tag: the cluster CIDRs
    /// ([`super::host_ports::CLUSTER_INSIDE`]), and hosts with ports on the
    /// other side ([`super::host_ports::CLUSTER_PORTS`],
    /// [`super::host_ports::CLUSTER_ONLY_PORTS`]).
    pub const CLUSTER_V4: &str = "CLUSTER_V4";
    /// `LpmTrie<PolicyAddrV6, u8>` keyed by cluster tag.
    pub const CLUSTER_V6: &str = "CLUSTER_V6";
    /// `HashMap<u64, u32>`: host tables, the ports of single addresses
    /// that a flagged `ALLOW_*` entry defers to, see [`super::host_ports`].
    pub const HOST_PORTS: &str = "HOST_PORTS";
    /// `LpmTrie<PolicyAddrV4, u32 port set id>`: REGISTRY_ONLY hosts.
    pub const GATEWAY_V4: &str = "GATEWAY_V4";
    /// `LpmTrie<PolicyAddrV6, u32 port set id>`.
    pub const GATEWAY_V6: &str = "GATEWAY_V6";
    /// `PerCpuArray<u64>`, indexed by [`super::verdict_index`].
    pub const VERDICTS: &str = "VERDICTS";
    /// `LruPerCpuHashMap<HitKey, u64>`.
    pub const RULE_HITS: &str = "RULE_HITS";
    /// `LruHashMap<u64 socket cookie, u8 state>`: accepted TCP sockets, see
    /// [`super::inbound`].
    pub const INBOUND_TCP: &str = "INBOUND_TCP";
    /// `LruHashMap<UdpFlowKey, u64 last seen, ns since boot>`: remotes that
    /// sent a datagram to a managed UDP socket.
    pub const INBOUND_UDP: &str = "INBOUND_UDP";
    /// `PerCpuArray<u64>`, indexed by [`super::FlowEvent`].
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    /// `HashMap<u32 policy id, CaptureInfo>`: the policy's Redirect, if any.
    pub const CAPTURES: &str = "CAPTURES";
    /// `LpmTrie<PolicyAddrV4, u8>`: capture include/exclude ranges, see
    /// [`super::capture`].
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

    /// `RingBuf` of [`super::Event`]s: deny, audit, redirect and sampled
    /// allow verdicts, for the agent's `events` stream.
    pub const EVENTS: &str = "EVENTS";
    /// `Array<EventConfig>` of length 1: allow sampling and the rate limit.
    pub const EVENT_CONFIG: &str = "EVENT_CONFIG";
    /// `LruHashMap<LimitKey, u64 last emit, ns since boot>`: the per
    /// (workload, destination, verdict) rate limit.
    pub const EVENT_LIMIT: &str = "EVENT_LIMIT";
    /// `PerCpuArray<u64>`, indexed by [`super::EventStat`].
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
}

/// Capacities. Maps other than `RULE_HITS` and the arrays are created with
/// `BPF_F_NO_PREALLOC`, so unused capacity costs no kernel memory; each must
/// hold two generations at once while a new one is written.
pub mod capacity {
    /// Workload cgroups (entries of `WORKLOADS`).
    pub const WORKLOADS: u32 = 65_536;
    /// Policies: two per workload (one per generation), plus cluster tags.
    pub const POLICIES: u32 = 2 * WORKLOADS;
    /// Prefixes per address family, summed over policies (workloads with
    /// equal tables share one) and generations.
    pub const ALLOW: u32 = 1 << 21;
    /// Port sets, summed over generations.
    pub const PORT_SETS: u32 = 1 << 18;
    /// Cluster CIDRs per family, summed over generations.
    pub const CLUSTER: u32 = 8_192;
    /// Host table entries (`HOST_PORTS`): a NodePort on a node address,
    /// per distinct host table (equal ones are shared), summed over
    /// generations.
    pub const HOST_PORTS: u32 = 1 << 19;
    /// Gateway host prefixes per family, summed over gateways and generations.
    pub const GATEWAY: u32 = 65_536;
    /// `(cgroup, rule, verdict)` hit counters; least recently used ones are
    /// evicted beyond this.
    pub const RULE_HITS: u32 = 16_384;
    /// Open accepted TCP sockets below the cgroup root, as many as
    /// conntrack's default table on a large host (`nf_conntrack_max`).
    /// Entries go when their socket closes; LRU is only the bound. An LRU
    /// map is preallocated: about 64 B an entry, 16 MiB in all. An evicted
    /// live socket's replies are decided by the egress policy again (fail
    /// closed); stale entries are never looked up again, so they are the
    /// first evicted.
    pub const INBOUND_TCP: u32 = 1 << 18;
    /// UDP (socket, remote) flows of managed workloads, about 90 B each
    /// (5.6 MiB). Every datagram from a new remote port takes one (a DNS
    /// server sees one per query), so under load eviction, not the idle
    /// timeout, ends the oldest flows; replies follow requests within
    /// milliseconds, far inside that window.
    pub const INBOUND_UDP: u32 = 1 << 16;
    /// Capture include/exclude prefixes per family, summed over workloads
    /// and generations.
    pub const CAPTURE: u32 = 65_536;
    /// Redirected connects between `connect()` and the end of the
    /// handshake (a failed one goes with its `TCP_CLOSE`; LRU is the bound).
    pub const REDIRECTED: u32 = 1 << 16;
    /// Open redirected connections (about 100 B each, 6.5 MiB).
    pub const ORIG_DST: u32 = 1 << 16;
    /// UDP sockets whose DNS queries were redirected. UDP sockets have no
    /// close callback, so LRU eviction is what bounds it (about 100 B an
    /// entry, 6.5 MiB); an evicted socket's next query records it again.
    pub const DNS_ORIG: u32 = 1 << 16;
    /// Bytes of the `EVENTS` ring: 4096 events of 64 B plus their 8 B
    /// headers fit in 512 KiB with room; a full ring drops (and counts)
    /// new events instead of blocking anything.
    pub const EVENTS_BYTES: u32 = 1 << 19;
    /// Rate-limit keys: (workload, destination, verdict) seen recently.
    /// LRU, so a scan of many destinations evicts the oldest keys rather
    /// than failing; an evicted key can emit again, bounded by the ring.
    pub const EVENT_LIMIT: u32 = 16_384;
    /// `(workload cgroup, own address)` pairs. Not preallocated; not part
    /// of a generation (an apply adds new pairs before its flip and removes
    /// stale ones after it, so for a moment both are accepted).
    pub const SOURCES: u32 = 1 << 18;
}

/// Names of the programs in the eBPF object, as `aya::Ebpf::program_mut`
/// expects them. They differ from their ELF section names on purpose:
/// bpf-linker rejects a symbol that is named like its own section.
pub mod program {
    /// `cgroup_skb/egress`: every packet; the guarantee.
    pub const EGRESS_SKB: &str = "egress_skb";
    /// `cgroup/connect4`: `connect()` on IPv4 sockets, refused with EPERM.
    pub const CONNECT4: &str = "egress_connect4";
    /// `cgroup/connect6`: `connect()` on IPv6 sockets, IPv4-mapped included.
    pub const CONNECT6: &str = "egress_connect6";
    /// `cgroup/sendmsg4`: unconnected UDP `sendto()` on IPv4 sockets.
    pub const SENDMSG4: &str = "egress_sendmsg4";
    /// `cgroup/sendmsg6`: unconnected UDP `sendto()` on IPv6 sockets.
    pub const SENDMSG6: &str = "egress_sendmsg6";
    /// `sockops`: marks accepted TCP sockets inbound, unmarks them on close.
    pub const SOCK_OPS: &str = "egress_sock_ops";
    /// `cgroup_skb/ingress`: records the UDP flows that reach managed
    /// sockets. It never drops anything.
    pub const SKB_INGRESS: &str = "egress_skb_ingress";
    /// `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` for the proxy.
    pub const GETSOCKOPT: &str = "egress_getsockopt";
    /// `cgroup/recvmsg4`: restores the source of redirected DNS replies.
    pub const RECVMSG4: &str = "egress_recvmsg4";
    /// `cgroup/recvmsg6`.
    pub const RECVMSG6: &str = "egress_recvmsg6";
    /// `lsm_cgroup/socket_create`: refuses packet sockets (`AF_PACKET`),
    /// whose frames no cgroup hook ever sees. `cgroup/sock_create` is not
    /// enough: the kernel runs it for `AF_INET`/`AF_INET6` sockets only.
    pub const SOCK_CREATE: &str = "egress_socket_create";
    /// `cgroup/setsockopt`: refuses `IP_TRANSPARENT`/`IPV6_TRANSPARENT`
    /// except for gateways and proxies.
    pub const SETSOCKOPT: &str = "egress_setsockopt";
}

/// The deepest cgroup level the programs can look at: `level_mask` is a
/// `u32`, one bit per level.
pub const MAX_LEVEL: u32 = 31;

/// Entries per port set. A bounded loop over them runs for every decision,
/// so the bound is small; a longer list continues in another set
/// ([`PortSet::next`]).
pub const MAX_PORT_ENTRIES: usize = 16;

/// Port sets one prefix's list may span ([`PortSet::next`]): up to
/// `MAX_PORT_ENTRIES * MAX_PORT_CHAIN` (128) entries, which ordinary
/// policies do not reach (a NetworkPolicy with many single ports on one
/// CIDR used to stop the whole node's policy at 17).
pub const MAX_PORT_CHAIN: usize = 8;

/// The port set id that stands for "no port allowed" (an `except` hole).
/// It never has a `PORT_SETS` entry.
pub const EMPTY_SET: u32 = 0;

/// [`PortEntry::rule`] / [`HitKey::rule`] when no rule is involved.
pub const NO_RULE: u32 = u32::MAX;

/// A `WorkloadSlot` policy id that means "exempt": the cgroup is treated as
/// unmanaged ([`Reason::Unmanaged`]), and the walk stops there, so a guarded
/// root's pending policy above it does not apply. It has no `POLICIES`
/// entry and belongs to no generation, so the agent can write it into both
/// slots at once, before its first apply: that is how an agent running in a
/// pod below the guarded root (a hostNetwork DaemonSet) exempts itself
/// before it needs the network to learn anything from the API server. The
/// agent never hands it out as a generation's policy id.
pub const EXEMPT_POLICY: u32 = u32::MAX;

/// `CONFIG[0]`: settings that are not part of a generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// [`Config::AUDIT`].
    pub flags: u32,
    /// Bit `n` set: some workload's cgroup is at level `n` of the cgroup v2
    /// hierarchy (the root is level 0). The programs only look up ancestors
    /// at these levels.
    pub level_mask: u32,
}

impl Config {
    /// Audit mode: every would-deny is counted as an audit verdict and
    /// allowed.
    pub const AUDIT: u32 = 1;
}

/// `WORKLOADS` value: the workload's policy in each generation slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkloadSlot {
    /// Policy id per slot; 0 = not managed in that generation.
    pub policy: [u32; 2],
}

/// `POLICIES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyInfo {
    /// [`PolicyInfo::ISOLATED`] and friends.
    pub flags: u32,
    /// The tag under which this generation's cluster CIDRs are stored in
    /// `CLUSTER_V4/V6`; meaningful with [`PolicyInfo::HAS_CLUSTER`].
    pub cluster: u32,
}

impl PolicyInfo {
    /// A NetworkPolicy selects the workload for Egress: default deny.
    pub const ISOLATED: u32 = 1 << 0;
    /// An EgressGateway exists: only gateways may leave the cluster CIDRs.
    pub const HAS_CLUSTER: u32 = 1 << 1;
    /// The workload is an egress gateway.
    pub const GATEWAY: u32 = 1 << 2;
    /// The gateway may only reach its allowed hosts (`GATEWAY_V4/V6`).
    pub const REGISTRY_ONLY: u32 = 1 << 3;
    /// A guarded cgroup root's "pending" policy: it governs every cgroup
    /// below the root that is not (yet) a known workload (the walk finds
    /// the deepest workload first, so a known pod below it decides for
    /// itself). It is an ordinary isolated policy whose allow entries the
    /// agent writes (DNS to the cluster CIDRs); what it denies is reported
    /// as [`Reason::Pending`] instead of `DefaultDeny` or
    /// `GatewayExclusivity`, so that a denial caused by "not known yet" is
    /// never mistaken for one decided by a NetworkPolicy.
    pub const PENDING: u32 = 1 << 4;
    /// The workload lists its addresses and is neither a gateway nor a
    /// proxy: its packets must carry one of them (or a loopback or IPv6
    /// link-local address) as their source, looked up in `SOURCES` under
    /// the workload's cgroup ([`Reason::Spoofed`]).
    pub const SOURCE_CHECK: u32 = 1 << 5;
    /// The workload may create packet sockets (`AF_PACKET`): a gateway, or
    /// a Workload annotated `egress.enforcer.dev/packet-sockets: "allow"`.
    /// Everyone else gets EPERM ([`Reason::PacketSocket`]).
    pub const PACKET_SOCKETS: u32 = 1 << 6;
    /// The workload may set `IP_TRANSPARENT`/`IPV6_TRANSPARENT`: a gateway
    /// or a Redirect's proxy (a TPROXY-mode sidecar needs it). Everyone
    /// else gets EPERM ([`Reason::Transparent`]).
    pub const TRANSPARENT: u32 = 1 << 7;
}

/// `SOURCES` key: a workload (its cgroup, the ancestor the walk matched)
/// and one of its own addresses, IPv4 as `::ffff:a.b.c.d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub cgroup_id: u64,
    pub addr: [u8; 16],
}

/// Key data of the IPv4 tries: 32 bits of policy id (or cluster tag), then
/// the address, both in network byte order, so that the trie's prefix
/// length is `32 + prefix` and a match never crosses into another policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyAddrV4 {
    /// The id, big-endian: use [`PolicyAddrV4::new`] / [`PolicyAddrV4::id`].
    pub policy: u32,
    pub addr: [u8; 4],
}

impl PolicyAddrV4 {
    pub const fn new(id: u32, addr: [u8; 4]) -> Self {
        Self {
            policy: id.to_be(),
            addr,
        }
    }

    pub const fn id(&self) -> u32 {
        u32::from_be(self.policy)
    }
}

/// Key data of the IPv6 tries; see [`PolicyAddrV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyAddrV6 {
    pub policy: u32,
    pub addr: [u8; 16],
}

impl PolicyAddrV6 {
    pub const fn new(id: u32, addr: [u8; 16]) -> Self {
        Self {
            policy: id.to_be(),
            addr,
        }
    }

    pub const fn id(&self) -> u32 {
        u32::from_be(self.policy)
    }
}

/// Bits of a trie key taken by the policy id.
pub const POLICY_BITS: u32 = 32;

/// Per-port exceptions to a policy's answer for one address.
///
/// A trie entry answers for every port of its prefix, but a node address
/// serves NodePorts, each of which kube-proxy sends to a Service's
/// backends, beside its own ports. So a policy's `ALLOW_*` host entry for
/// such an address carries [`ALLOW_FLAG`] and, instead of a port set, the
/// id of a *host table* in `HOST_PORTS`, a hash map keyed by [`key`]:
///
/// - `(host, VERDICT, protocol, port)`: the rule that allows that port,
///   or [`DENY`] (a NodePort judged by its Service's backends);
/// - `(host, OUTSIDE, protocol, port)`: the port leads outside the
///   cluster (a NodePort whose backends are outside), read only when the
///   address's `CLUSTER_*` entry is [`CLUSTER_PORTS`];
/// - `(host, INSIDE, protocol, port)`: the port stays inside (a Service
///   port of an external or load balancer IP whose backends are all
///   inside), read only when the address's `CLUSTER_*` entry is
///   [`CLUSTER_ONLY_PORTS`];
/// - `(host, BASE, 0, 0)`: the port set for every other port.
///
/// The programs look there only for flagged entries, so the cost per
/// packet stays flat: a trie lookup, plus two hash lookups for node
/// addresses alone, however many NodePorts there are. The key is a `u64`
/// because the socket hooks sit close to the 512-byte stack limit. Host
/// table ids come from the port set ids' space, below [`ALLOW_FLAG`].
pub mod host_ports {
    /// `ALLOW_V4/V6` value bit: the rest of the value is a host table id,
    /// not a port set id.
    pub const ALLOW_FLAG: u32 = 1 << 31;
    /// `CLUSTER_V4/V6` value: inside the cluster.
    pub const CLUSTER_INSIDE: u8 = 1;
    /// `CLUSTER_V4/V6` value: inside the cluster, but for the ports that
    /// the policy's host table lists as [`OUTSIDE`].
    pub const CLUSTER_PORTS: u8 = 2;
    /// `CLUSTER_V4/V6` value: outside the cluster, but for the ports that
    /// the policy's host table lists as [`INSIDE`].
    pub const CLUSTER_ONLY_PORTS: u8 = 3;
    /// Key kind: the verdict of one port.
    pub const VERDICT: u8 = 0;
    /// Key kind: one port that leads outside the cluster.
    pub const OUTSIDE: u8 = 1;
    /// Key kind: the port set of the other ports (protocol and port 0).
    pub const BASE: u8 = 2;
    /// Key kind: one port that stays inside the cluster.
    pub const INSIDE: u8 = 3;
    /// `VERDICT` value: denied, whatever the address's port set says.
    pub const DENY: u32 = u32::MAX - 1;

    /// The `HOST_PORTS` key.
    #[inline(always)]
    pub const fn key(host: u32, kind: u8, proto: u8, port: u16) -> u64 {
        ((host as u64) << 32) | ((kind as u64) << 24) | ((proto as u64) << 16) | port as u64
    }
}

/// One allowed (protocol, port range) and the rule that allows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortEntry {
    /// Rule id (an index the agent maps back to a NetworkPolicy rule, or a
    /// gateway host index), or [`NO_RULE`].
    pub rule: u32,
    /// First port, host byte order.
    pub start: u16,
    /// Last port, inclusive, host byte order.
    pub end: u16,
    /// IP protocol number; 0 = any protocol (and then any port).
    pub proto: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
}

impl PortEntry {
    pub const fn new(rule: u32, proto: u8, start: u16, end: u16) -> Self {
        Self {
            rule,
            start,
            end,
            proto,
            _pad: [0; 3],
        }
    }

    /// Whether a packet of `proto` to `port` matches. Protocols without
    /// ports are looked up with port 0.
    #[inline(always)]
    pub const fn matches(&self, proto: u8, port: u16) -> bool {
        (self.proto == 0 || self.proto == proto) && self.start <= port && port <= self.end
    }
}

/// `PORT_SETS` value: up to [`MAX_PORT_ENTRIES`] entries, the first `len`
/// used; the list goes on in set `next` ([`EMPTY_SET`]: it ends here).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    pub len: u32,
    pub next: u32,
    pub entries: [PortEntry; MAX_PORT_ENTRIES],
}

/// `RULE_HITS` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HitKey {
    /// The workload's cgroup (the ancestor that matched, not necessarily
    /// the socket's own cgroup).
    pub cgroup_id: u64,
    /// [`PortEntry::rule`] of the deciding entry, or [`NO_RULE`].
    pub rule: u32,
    /// [`verdict_index`] of the decision.
    pub verdict: u32,
}

/// Where a program runs. The first [`Hook::DECIDING`] hooks make
/// decisions and count them in `VERDICTS`; the others only record inbound
/// flows for them (counted in `FLOW_EVENTS`) and never refuse anything.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `cgroup_skb/egress`.
    Skb = 0,
    /// `cgroup/connect4`.
    Connect4 = 1,
    /// `cgroup/connect6`.
    Connect6 = 2,
    /// `cgroup/sendmsg4`.
    Sendmsg4 = 3,
    /// `cgroup/sendmsg6`.
    Sendmsg6 = 4,
    /// `lsm_cgroup/socket_create`: packet sockets refused at creation.
    SockCreate = 5,
    /// `cgroup/setsockopt`: `IP_TRANSPARENT` refused.
    SetSockopt = 6,
    /// `sockops`: accepted TCP sockets (records only).
    SockOps = 7,
    /// `cgroup_skb/ingress`: UDP flows that came in (records only).
    SkbIngress = 8,
    /// `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` (decides nothing).
    GetSockopt = 9,
    /// `cgroup/recvmsg4`: DNS replies from the proxy (decides nothing).
    Recvmsg4 = 10,
    /// `cgroup/recvmsg6`.
    Recvmsg6 = 11,
}

impl Hook {
    /// Hooks that decide: `Hook::ALL[..DECIDING]`. `VERDICTS` is sized for
    /// them only, so that its layout (and the maps an earlier agent
    /// pinned) did not change when the recording hooks came.
    pub const DECIDING: u32 = 7;
    pub const COUNT: u32 = 12;
    pub const ALL: [Hook; Self::COUNT as usize] = [
        Hook::Skb,
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
        Hook::SockCreate,
        Hook::SetSockopt,
        Hook::SockOps,
        Hook::SkbIngress,
        Hook::GetSockopt,
        Hook::Recvmsg4,
        Hook::Recvmsg6,
    ];

    /// Whether this hook decides (and has `VERDICTS` slots).
    pub const fn decides(self) -> bool {
        (self as u32) < Self::DECIDING
    }
}

/// Why a decision went the way it did. Mirrors the agent's
/// `compile::Reason`, plus what only the kernel sees.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Allowed: no ancestor cgroup is a workload of the active generation.
    Unmanaged = 0,
    /// Allowed: loopback never leaves the workload.
    Loopback = 1,
    /// Allowed: no NetworkPolicy selects the workload for Egress.
    NotIsolated = 2,
    /// Allowed by a NetworkPolicy egress rule ([`HitKey::rule`]).
    Rule = 3,
    /// Allowed: a REGISTRY_ONLY gateway reaching one of its hosts
    /// ([`HitKey::rule`] = host index), not isolated.
    GatewayHost = 4,
    /// Allowed: `cgroup_skb` saw a packet that is neither IPv4 nor IPv6.
    NotIp = 5,
    /// Allowed although the egress policy denies it: a reply on a flow the
    /// workload did not initiate. A packet of a TCP socket marked inbound
    /// in `INBOUND_TCP`, a SYN-ACK from a listener (or a Fast Open child),
    /// or a UDP datagram (or `sendto`, `connect`) to a remote that sent to
    /// this socket less than [`UDP_IDLE_NS`] ago. Consulted only when the
    /// policy denies (not for [`Reason::NoPolicy`]), so an allowed packet
    /// keeps its policy reason.
    Reply = 6,
    /// Allowed: a TCP `connect()` captured by a Redirect, rewritten to the
    /// proxy; the hop to the proxy passed the policy.
    Redirect = 7,
    /// Denied: outside the cluster CIDRs and not a gateway.
    GatewayExclusivity = 8,
    /// Denied: a REGISTRY_ONLY gateway, and no allowed host matches.
    GatewayAllowList = 9,
    /// Denied: isolated and no rule allows it.
    DefaultDeny = 10,
    /// Denied: a managed socket's packet whose headers could not be read
    /// (fail closed).
    Malformed = 11,
    /// Denied: the workload names a policy that has no `POLICIES` entry
    /// (fail closed; the agent's write order makes this unreachable).
    NoPolicy = 12,
    /// Denied: the socket's cgroup is below a guarded root (the kubelet's
    /// pods cgroup, in Kubernetes mode) and is not a known workload yet, so
    /// the root's pending policy ([`PolicyInfo::PENDING`]) decided.
    Pending = 13,
    /// Denied: a packet whose source is not one of the workload's own
    /// addresses ([`PolicyInfo::SOURCE_CHECK`]): forged with a raw socket,
    /// `IP_TRANSPARENT`/`IP_FREEBIND` or an address the pod added itself.
    /// Checked before anything else, replies included.
    Spoofed = 14,
    /// Denied: `socket(AF_PACKET, ...)` by a workload without
    /// [`PolicyInfo::PACKET_SOCKETS`] (EPERM at creation): its frames
    /// would pass no cgroup hook.
    PacketSocket = 15,
    /// Denied: setting `IP_TRANSPARENT`/`IPV6_TRANSPARENT` (EPERM) by a
    /// workload without [`PolicyInfo::TRANSPARENT`]: it lets a socket send
    /// from, and bind to, addresses that are not its own.
    Transparent = 16,
}

impl Reason {
    /// Slots per (hook, disposition) in `VERDICTS`.
    pub const SLOTS: u32 = 32;
    pub const ALL: [Reason; 17] = [
        Reason::Unmanaged,
        Reason::Loopback,
        Reason::NotIsolated,
        Reason::Rule,
        Reason::GatewayHost,
        Reason::NotIp,
        Reason::Reply,
        Reason::Redirect,
        Reason::GatewayExclusivity,
        Reason::GatewayAllowList,
        Reason::DefaultDeny,
        Reason::Malformed,
        Reason::NoPolicy,
        Reason::Pending,
        Reason::Spoofed,
        Reason::PacketSocket,
        Reason::Transparent,
    ];

    /// Whether this reason denies (when not in audit mode).
    pub const fn denies(self) -> bool {
        self as u32 >= 8
    }
}

/// Size of `VERDICTS`: deciding hook × {enforced, audit} × reason.
pub const VERDICT_SLOTS: u32 = Hook::DECIDING * 2 * Reason::SLOTS;

/// Index of a decision in `VERDICTS` (and [`HitKey::verdict`]). `audit`:
/// a would-deny that audit mode let through. Only for deciding hooks
/// ([`Hook::decides`]); others are out of range.
#[inline(always)]
pub const fn verdict_index(hook: Hook, reason: Reason, audit: bool) -> u32 {
    (hook as u32) * 2 * Reason::SLOTS + (audit as u32) * Reason::SLOTS + reason as u32
}

/// The inverse of [`verdict_index`], for the agent.
pub fn verdict_from_index(index: u32) -> Option<(Hook, Reason, bool)> {
    let hook = *Hook::ALL[..Hook::DECIDING as usize].get((index / (2 * Reason::SLOTS)) as usize)?;
    let audit = (index / Reason::SLOTS) % 2 == 1;
    let code = index % Reason::SLOTS;
    let reason = *Reason::ALL.iter().find(|r| **r as u32 == code)?;
    Some((hook, reason, audit))
}

/// `INBOUND_TCP` values: what is known of an accepted TCP socket.
///
/// `sock_ops` writes them; `cgroup_skb/egress` reads them. A socket that
/// the workload opened with `connect()` never has an entry: only
/// `BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB`, which the kernel runs for
/// sockets created by a listener, creates one. Keys are socket cookies,
/// which the kernel never reuses (a 64-bit counter), so a stale entry can
/// never stand for another socket.
pub mod inbound {
    /// The three-way handshake completed: every packet of the socket is a
    /// reply. Completing it proves the client received our SYN-ACK at the
    /// address it claims, so a forged source address cannot get here.
    pub const ESTABLISHED: u8 = 1;
    /// A TCP Fast Open child: the kernel creates it (and runs
    /// `PASSIVE_ESTABLISHED_CB`) on the SYN, before the client has shown it
    /// can receive at its source address. Its packets are not replies
    /// until `SYN_RECV -> ESTABLISHED` upgrades it (its SYN-ACK is allowed
    /// by the SYN-ACK rule).
    pub const HANDSHAKE: u8 = 2;
    /// Went to `TCP_CLOSE` from `ESTABLISHED` or `CLOSE_WAIT`: the kernel
    /// may still send one RST (close with unread data, `SO_LINGER` 0,
    /// `connect(AF_UNSPEC)`), which it does after the state change. That
    /// RST is allowed and the entry deleted; if none comes (the peer reset
    /// the connection), the entry stays until LRU eviction.
    pub const ABORTED: u8 = 3;
}

/// How long a UDP flow stays recorded without traffic: 60 s, between
/// conntrack's UDP timeouts for unreplied (30 s) and replied (120 s)
/// flows. Datagrams in either direction refresh it, as with conntrack.
pub const UDP_IDLE_NS: u64 = 60_000_000_000;

/// `INBOUND_UDP` key: a managed UDP socket and a remote that sent to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpFlowKey {
    /// The socket's cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// The remote address; an IPv4 address as `::ffff:a.b.c.d`, so that a
    /// dual-stack socket's IPv4 flows have one spelling.
    pub addr: [u8; 16],
    /// The remote port, host byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 6],
}

impl UdpFlowKey {
    pub const fn new(cookie: u64, addr: [u8; 16], port: u16) -> Self {
        Self {
            cookie,
            addr,
            port,
            _pad: [0; 6],
        }
    }

    /// `::ffff:a.b.c.d`.
    pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    }
}

/// What the recording programs did, and how replies were found; one
/// `FLOW_EVENTS` slot each. The recording hooks never refuse anything, so
/// these are not verdicts, but every path through them is counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowEvent {
    /// `sock_ops`: an accepted socket completed its handshake and was
    /// marked [`inbound::ESTABLISHED`].
    TcpInbound = 0,
    /// `sock_ops`: a Fast Open child was marked [`inbound::HANDSHAKE`].
    TcpFastOpen = 1,
    /// `sock_ops`: an accepted socket could not be marked (map update or
    /// `bpf_sock_ops_cb_flags_set` failed): its replies are decided by the
    /// egress policy (fail closed).
    TcpRecordFailed = 2,
    /// `sock_ops`: an inbound socket closed; its entry was deleted.
    TcpClosed = 3,
    /// `sock_ops`: an inbound socket was aborted; marked
    /// [`inbound::ABORTED`] for its last RST.
    TcpAborted = 4,
    /// `cgroup_skb/ingress`: a new UDP flow was recorded.
    UdpRecorded = 5,
    /// `cgroup_skb/ingress`: a recorded UDP flow was refreshed.
    UdpRefreshed = 6,
    /// `cgroup_skb/ingress`: a UDP flow could not be recorded (map update
    /// failed): replies to it are decided by the egress policy.
    UdpRecordFailed = 7,
    /// `cgroup_skb/ingress`: not recorded: the datagram came over the
    /// loopback device from a source that is neither a loopback address nor
    /// its own destination. Only this host can send on loopback, and a
    /// socket may pick a foreign source (IPv6 `IP_FREEBIND`, raw sockets):
    /// recording it would let a workload allow itself any destination.
    UdpForeignLoopback = 8,
    /// A reply was looked for and the UDP flow had been idle longer than
    /// [`UDP_IDLE_NS`]: the entry was deleted and the policy's verdict kept.
    UdpExpired = 9,
    /// `cgroup_skb/ingress`: a packet of a managed socket that is not UDP
    /// to a UDP socket (TCP has `sock_ops`), or not IP: nothing to record.
    IngressIgnored = 10,
    /// `cgroup_skb/ingress`: a packet of an unmanaged socket.
    IngressUnmanaged = 11,
    /// `cgroup_skb/ingress`: headers unreadable; nothing recorded (the
    /// packet is still delivered: this program never drops).
    IngressMalformed = 12,
    /// `sock_ops`: a redirected connect completed its handshake; its
    /// original destination was filed under its local address.
    RedirectEstablished = 13,
    /// `sock_ops`: a redirected connection closed; its entry was deleted.
    RedirectClosed = 14,
    /// `sock_ops`: a redirected connection could not be filed (map full):
    /// the proxy will not find its original destination.
    RedirectRecordFailed = 15,
    /// `cgroup/getsockopt`: `SO_ORIGINAL_DST` answered from `ORIG_DST`.
    OriginalDstAnswered = 16,
    /// `cgroup/getsockopt`: `SO_ORIGINAL_DST` asked for a connection with no
    /// entry (not redirected, or the client already closed): the kernel's
    /// own answer stands.
    OriginalDstUnknown = 17,
    /// `sendmsg4/6`: a DNS query was sent to the DNS proxy instead; its
    /// server was recorded in `DNS_ORIG`.
    DnsRedirected = 18,
    /// `recvmsg4/6`: a reply from the DNS proxy was given the source of
    /// the server the query was meant for.
    DnsReplyRestored = 19,
    /// A UDP packet or `sendto()` of a non-gateway workload to a
    /// destination outside the cluster matched a recorded inbound flow and
    /// was NOT allowed as a reply: an inbound UDP datagram proves nothing
    /// about its source (it is trivially forged), and such a workload could
    /// never send there anyway. TCP replies (handshake completed) still are.
    UdpReplyOutsideCluster = 20,
}

impl FlowEvent {
    /// Slots in `FLOW_EVENTS` (room to grow without a layout change).
    pub const SLOTS: u32 = 32;
    pub const ALL: [FlowEvent; 21] = [
        FlowEvent::TcpInbound,
        FlowEvent::TcpFastOpen,
        FlowEvent::TcpRecordFailed,
        FlowEvent::TcpClosed,
        FlowEvent::TcpAborted,
        FlowEvent::UdpRecorded,
        FlowEvent::UdpRefreshed,
        FlowEvent::UdpRecordFailed,
        FlowEvent::UdpForeignLoopback,
        FlowEvent::UdpExpired,
        FlowEvent::IngressIgnored,
        FlowEvent::IngressUnmanaged,
        FlowEvent::IngressMalformed,
        FlowEvent::RedirectEstablished,
        FlowEvent::RedirectClosed,
        FlowEvent::RedirectRecordFailed,
        FlowEvent::OriginalDstAnswered,
        FlowEvent::OriginalDstUnknown,
        FlowEvent::DnsRedirected,
        FlowEvent::DnsReplyRestored,
        FlowEvent::UdpReplyOutsideCluster,
    ];

    pub fn from_index(index: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| *e as u32 == index)
    }
}

/// Values of the `CAPTURE_V4/V6` tries, keyed by policy id and prefix.
///
/// istio-iptables lets `excludeIPRanges` beat `includeIPRanges` whatever
/// the prefix lengths, and a longest-prefix match alone cannot say that:
/// the agent drops every include prefix that lies inside an exclude prefix,
/// so that the longest match is the right answer. `"*"` is stored as `/0`.
pub mod capture {
    /// The address is in `includeIPRanges`.
    pub const INCLUDE: u8 = 1;
    /// The address is in `excludeIPRanges`: never captured.
    pub const EXCLUDE: u8 = 2;
}

/// Ports per `includePorts` / `excludePorts` list; the agent refuses more.
pub const MAX_CAPTURE_PORTS: usize = 16;

/// `CAPTURES` value: where a captured workload's connects go, and the
/// port half of its capture rules (the address half is in `CAPTURE_V4/V6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CaptureInfo {
    /// [`CaptureInfo::PROXY_V4`] and friends.
    pub flags: u32,
    /// The proxy's port, host byte order.
    pub proxy_port: u16,
    /// The DNS proxy port (host byte order); 0 when DNS is not captured.
    pub dns_port: u16,
    /// The proxy address for IPv4 sockets (and IPv4-mapped destinations).
    pub proxy_v4: [u8; 4],
    /// The proxy address for IPv6 destinations.
    pub proxy_v6: [u8; 16],
    pub include_len: u16,
    pub exclude_len: u16,
    /// `includePorts`, the first `include_len` used, host byte order.
    pub include_ports: [u16; MAX_CAPTURE_PORTS],
    /// `excludePorts`, the first `exclude_len` used.
    pub exclude_ports: [u16; MAX_CAPTURE_PORTS],
}

impl CaptureInfo {
    /// `proxy_v4` is set: IPv4 destinations can be redirected.
    pub const PROXY_V4: u32 = 1 << 0;
    /// `proxy_v6` is set: IPv6 destinations can be redirected.
    pub const PROXY_V6: u32 = 1 << 1;
}

/// The original destination of a redirected connection. It lives as long
/// as the proxy's side of the connection, not the app's: an app that
/// connects and closes before the proxy calls `accept()` still leaves the
/// proxy an answer, as conntrack does after an iptables REDIRECT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDst {
    /// The app socket's cookie: only that socket's close removes the entry.
    pub cookie: u64,
    /// The address, IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    /// `AF_INET` (2) or `AF_INET6` (10): the family the app asked for.
    pub family: u16,
    /// Set once the proxy has read it with `getsockopt(SO_ORIGINAL_DST)`.
    pub answered: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
}

/// `EVENT_CONFIG[0]`: what the programs report to the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventConfig {
    /// Report one allowed decision in this many (chosen at random); 0 =
    /// allowed decisions are never reported.
    pub sample_allow: u32,
    /// At most one event per [`LimitKey`] per this many milliseconds; 0 =
    /// no rate limit.
    pub interval_ms: u32,
}

impl EventConfig {
    /// The default rate limit: one event per (workload, destination,
    /// verdict) per second.
    pub const DEFAULT_INTERVAL_MS: u32 = 1_000;
}

/// What an [`Event`] reports. Unlike [`Reason`], this is what happened to
/// the traffic.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventVerdict {
    /// Allowed (reported only when sampling is on).
    Allow = 0,
    /// Denied: EPERM, or the packet dropped.
    Deny = 1,
    /// A would-deny that audit mode let through.
    Audit = 2,
    /// Redirected to the proxy; the event holds the original destination.
    Redirect = 3,
}

impl EventVerdict {
    pub const ALL: [EventVerdict; 4] = [
        EventVerdict::Allow,
        EventVerdict::Deny,
        EventVerdict::Audit,
        EventVerdict::Redirect,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| *e as u8 == v)
    }
}

/// One decision, as the programs report it in `EVENTS` (64 bytes).
/// Addresses are 16 bytes, IPv4 as `::ffff:a.b.c.d` ([`Event::family`]
/// says which the socket used); ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Event {
    /// `bpf_ktime_get_ns`: monotonic, since boot.
    pub ts_ns: u64,
    /// The workload's cgroup (the ancestor that matched).
    pub cgroup_id: u64,
    /// The source; all zero when the socket is not bound yet (a
    /// `connect()` before the kernel picks the source).
    pub src: [u8; 16],
    /// The destination the workload named (before any redirect).
    pub dst: [u8; 16],
    /// The deciding rule or gateway host ([`HitKey::rule`]), or
    /// [`NO_RULE`].
    pub rule: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`EventVerdict`].
    pub verdict: u8,
    /// [`Reason`] of the decision.
    pub reason: u8,
    /// [`Hook`] that decided.
    pub hook: u8,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
}

/// `EVENT_LIMIT` key: who, to where, and how it was decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LimitKey {
    pub cgroup_id: u64,
    /// Destination, mapped as in [`Event::dst`].
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    /// [`EventVerdict`].
    pub verdict: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
}

/// `DNS_ORIG` value: where a UDP socket's last redirected DNS query was
/// meant to go, and the proxy it went to instead, so that only replies from
/// that proxy are given the server's address back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsOrig {
    /// The server, IPv4 as `::ffff:a.b.c.d`.
    pub server: [u8; 16],
    /// The DNS proxy, IPv4 as `::ffff:a.b.c.d`.
    pub proxy: [u8; 16],
    /// Host byte order.
    pub server_port: u16,
    /// Host byte order.
    pub proxy_port: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
}

/// `ORIG_DST` key: the redirected connection as the proxy's accepted socket
/// sees it, peer (the app's local address and port) and local (the proxy's
/// listening address and port). IPv4 as `::ffff:a.b.c.d`, so that both
/// ends spell it alike whatever their socket families.
///
/// The app's address and port alone are not unique: the same local port
/// may be used at once towards other destinations (the proxy's own
/// upstream connections from the same loopback address, say), and closing
/// one of those must not touch this entry.
///
/// A loopback address means nothing outside its network namespace: every
/// pod has its own 127.0.0.1, and two pods' apps can hold the same
/// ephemeral port at once. So loopback keys carry the namespace's cookie
/// (`bpf_get_netns_cookie`), which the app and its sidecar share; other
/// keys carry 0, since a routed address is unique on the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub netns: u64,
    /// The app's local address.
    pub addr: [u8; 16],
    /// The proxy's address, where the app's connect was sent.
    pub proxy: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// Host byte order.
    pub proxy_port: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
}

impl SockKey {
    /// Whether `addr` (mapped spelling) is a loopback address, whose key
    /// needs its namespace.
    #[inline(always)]
    pub const fn is_loopback(addr: &[u8; 16]) -> bool {
        let mut i = 0;
        let mut zeros = true;
        while i < 10 {
            if addr[i] != 0 {
                zeros = false;
            }
            i += 1;
        }
        if zeros && addr[10] == 0xff && addr[11] == 0xff {
            return addr[12] == 127;
        }
        let mut i = 0;
        while i < 15 {
            if addr[i] != 0 {
                return false;
            }
            i += 1;
        }
        addr[15] == 1
    }
}

/// What happened to events before they reached the ring; one
/// `EVENT_STATS` slot each, so nothing is lost silently.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventStat {
    /// Written to the ring.
    Emitted = 0,
    /// Not written: the same key emitted less than `interval_ms` ago.
    Suppressed = 1,
    /// Not written: the ring was full (the agent is behind).
    RingFull = 2,
}

impl EventStat {
    /// Slots in `EVENT_STATS` (room to grow without a layout change).
    pub const SLOTS: u32 = 8;
    pub const ALL: [EventStat; 3] = [
        EventStat::Emitted,
        EventStat::Suppressed,
        EventStat::RingFull,
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, made only of integers and byte
    // arrays with explicit padding fields and no implicit padding (checked
    // by `map_types_have_no_padding`), so every bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::WorkloadSlot {}
    unsafe impl aya::Pod for super::PolicyInfo {}
    unsafe impl aya::Pod for super::PolicyAddrV4 {}
    unsafe impl aya::Pod for super::PolicyAddrV6 {}
    unsafe impl aya::Pod for super::PortEntry {}
    unsafe impl aya::Pod for super::PortSet {}
    unsafe impl aya::Pod for super::HitKey {}
    unsafe impl aya::Pod for super::UdpFlowKey {}
    unsafe impl aya::Pod for super::CaptureInfo {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::DnsOrig {}
    unsafe impl aya::Pod for super::EventConfig {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::LimitKey {}
    unsafe impl aya::Pod for super::SourceKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_indices_are_unique_round_trip_and_fit() {
        let mut seen = std::collections::HashSet::new();
        for hook in Hook::ALL.into_iter().filter(|h| h.decides()) {
            for reason in Reason::ALL {
                for audit in [false, true] {
                    let i = verdict_index(hook, reason, audit);
                    assert!(i < VERDICT_SLOTS);
                    assert!(seen.insert(i));
                    assert_eq!(verdict_from_index(i), Some((hook, reason, audit)));
                }
            }
        }
        assert!(Reason::ALL.iter().all(|r| (*r as u32) < Reason::SLOTS));
        assert_eq!(seen.len(), 7 * 2 * Reason::ALL.len());
        // 160 before `SockCreate` and `SetSockopt` decided and reasons
        // outgrew 16 slots: maps pinned by an older agent are refused
        // (IncompatibleMap), never misread.
        assert_eq!(VERDICT_SLOTS, 448);
        assert!(!Reason::Reply.denies());
        assert!(!Hook::SockOps.decides() && !Hook::SkbIngress.decides());
        assert!(!Hook::GetSockopt.decides());
        assert!(!Hook::Recvmsg4.decides() && !Hook::Recvmsg6.decides());
    }

    #[test]
    fn flow_events_fit_and_round_trip() {
        for (i, event) in FlowEvent::ALL.into_iter().enumerate() {
            assert_eq!(event as usize, i);
            assert!((event as u32) < FlowEvent::SLOTS);
            assert_eq!(FlowEvent::from_index(i as u32), Some(event));
        }
        assert_eq!(FlowEvent::from_index(FlowEvent::SLOTS - 1), None);
    }

    #[test]
    fn map_types_have_no_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<Config>(), 8);
        assert_eq!(size_of::<WorkloadSlot>(), 8);
        assert_eq!(size_of::<PolicyInfo>(), 8);
        assert_eq!(size_of::<PolicyAddrV4>(), 8);
        assert_eq!(size_of::<PolicyAddrV6>(), 20);
        assert_eq!(size_of::<PortEntry>(), 4 + 2 + 2 + 1 + 3);
        assert_eq!(size_of::<PortSet>(), 4 + 4 + MAX_PORT_ENTRIES * 12);
        assert_eq!(size_of::<HitKey>(), 16);
        assert_eq!(size_of::<UdpFlowKey>(), 8 + 16 + 2 + 6);
        assert_eq!(
            size_of::<CaptureInfo>(),
            4 + 2 + 2 + 4 + 16 + 2 + 2 + 4 * MAX_CAPTURE_PORTS
        );
        assert_eq!(size_of::<OrigDst>(), 8 + 16 + 2 + 2 + 1 + 3);
        assert_eq!(size_of::<SockKey>(), 8 + 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<DnsOrig>(), 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<EventConfig>(), 8);
        assert_eq!(size_of::<Event>(), 8 + 8 + 16 + 16 + 4 + 2 + 2 + 5 + 3);
        assert_eq!(size_of::<Event>(), 64);
        assert_eq!(size_of::<LimitKey>(), 8 + 16 + 2 + 1 + 1 + 4);
        assert_eq!(size_of::<SourceKey>(), 8 + 16);
    }

    #[test]
    fn policy_ids_are_stored_big_endian() {
        let key = PolicyAddrV4::new(0x0102_0304, [10, 0, 0, 1]);
        // SAFETY: reading the bytes of a padding-free repr(C) struct.
        let bytes: [u8; 8] = unsafe { core::mem::transmute(key) };
        assert_eq!(bytes, [1, 2, 3, 4, 10, 0, 0, 1]);
        assert_eq!(key.id(), 0x0102_0304);
    }

    #[test]
    fn host_port_keys_keep_their_fields_apart() {
        use host_ports::{key, BASE, OUTSIDE, VERDICT};
        assert_eq!(key(1, VERDICT, 6, 30080), 0x0000_0001_0006_7580);
        assert_ne!(key(1, OUTSIDE, 6, 30080), key(1, VERDICT, 6, 30080));
        assert_ne!(key(1, BASE, 0, 0), key(1, VERDICT, 0, 0));
        assert_eq!(
            key(u32::MAX >> 1, BASE, 255, u16::MAX) >> 32,
            u64::from(u32::MAX >> 1)
        );
    }

    #[test]
    fn port_entries_match_protocol_and_range() {
        let tcp = PortEntry::new(1, 6, 80, 90);
        assert!(tcp.matches(6, 80) && tcp.matches(6, 90));
        assert!(!tcp.matches(6, 91) && !tcp.matches(17, 80));
        let any = PortEntry::new(2, 0, 0, u16::MAX);
        assert!(any.matches(1, 0), "ICMP (no ports) matches any-protocol");
        assert!(!tcp.matches(1, 0));
    }
}
