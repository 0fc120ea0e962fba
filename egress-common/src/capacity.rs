//! Capacities. Maps other than `RULE_HITS` and the arrays are created with
//! `BPF_F_NO_PREALLOC`, so unused capacity costs no kernel memory; each must
//! hold two generations at once while a new one is written.
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
