//! The decision for one destination, given the workload's policy. It must
//! equal the agent's `compile::decide::filter` (redirects aside), which
//! `explain` and the unit tests use; the order of the checks is that
//! function's order.

use aya_ebpf::maps::lpm_trie::Key;
use egress_common::{
    host_ports, PolicyAddrV4, PolicyAddrV6, PolicyInfo, Reason, UdpFlowKey, EMPTY_SET,
    MAX_PORT_CHAIN, MAX_PORT_ENTRIES, NO_RULE, POLICY_BITS,
};

use crate::maps::{
    ALLOW_V4, ALLOW_V6, CLUSTER_V4, CLUSTER_V6, GATEWAY_V4, GATEWAY_V6, HOST_PORTS, POLICIES,
    PORT_SETS,
};

/// A destination address; IPv4-mapped IPv6 addresses are already IPv4.
#[derive(Clone, Copy)]
pub enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Addr {
    /// The address as 16 bytes, IPv4 as `::ffff:a.b.c.d`: one spelling for
    /// flow keys, whichever family the socket has.
    #[inline(always)]
    pub fn mapped(&self) -> [u8; 16] {
        match *self {
            Addr::V4(a) => UdpFlowKey::v4_mapped(a),
            Addr::V6(a) => a,
        }
    }

    /// The inverse of [`Addr::mapped`]: `::ffff:a.b.c.d` is IPv4.
    #[inline(always)]
    pub fn from_mapped(a: [u8; 16]) -> Self {
        let mut i = 0;
        while i < 10 {
            if a[i] != 0 {
                return Addr::V6(a);
            }
            i += 1;
        }
        if a[10] == 0xff && a[11] == 0xff {
            Addr::V4([a[12], a[13], a[14], a[15]])
        } else {
            Addr::V6(a)
        }
    }

    /// Whether both are the same address (in their mapped spelling).
    /// Compared byte by byte: an array `==` may become a `bcmp` call, which
    /// has no eBPF implementation.
    #[inline(always)]
    pub fn same(&self, other: &Addr) -> bool {
        let (a, b) = (self.mapped(), other.mapped());
        let mut i = 0;
        while i < 16 {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// Where a packet or a connect goes.
#[derive(Clone, Copy)]
pub struct Dst {
    pub addr: Addr,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port for TCP, UDP and SCTP; 0 for every other protocol
    /// and for non-first fragments, so that only entries without ports
    /// match those (port ranges from a policy start at 1).
    pub port: u16,
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// Whether `proto` has 16-bit ports where TCP has them.
#[inline(always)]
pub fn has_ports(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP
}

/// A reason and the rule (or gateway host) behind it.
#[derive(Clone, Copy)]
pub struct Decision {
    pub reason: Reason,
    pub rule: u32,
}

impl Decision {
    const fn because(reason: Reason) -> Self {
        Self {
            reason,
            rule: NO_RULE,
        }
    }
}

/// Decides `dst` for the workload whose active policy is `policy`.
///
/// A guarded root's pending policy ([`PolicyInfo::PENDING`]) is decided as
/// any isolated policy; only the reason of a denial changes, to
/// [`Reason::Pending`]. Done here, on the copied flags, so that no extra
/// state lives on the socket hooks' stack.
#[inline(always)]
pub fn decide(policy: u32, dst: &Dst) -> Decision {
    // SAFETY: POLICIES is not preallocated; the value is copied at once.
    let Some(info) = (unsafe { POLICIES.get(policy) }).copied() else {
        return Decision::because(Reason::NoPolicy);
    };
    let decision = decide_with(policy, info, dst);
    if info.flags & PolicyInfo::PENDING != 0 && decision.reason.denies() {
        return Decision::because(Reason::Pending);
    }
    decision
}

#[inline(always)]
fn decide_with(policy: u32, info: PolicyInfo, dst: &Dst) -> Decision {
    if is_loopback(&dst.addr) {
        return Decision::because(Reason::Loopback);
    }
    let mut host = NO_RULE;
    if info.flags & PolicyInfo::HAS_CLUSTER != 0 && !in_cluster(policy, info.cluster, dst) {
        if info.flags & PolicyInfo::GATEWAY == 0 {
            return Decision::because(Reason::GatewayExclusivity);
        }
        if info.flags & PolicyInfo::REGISTRY_ONLY != 0 {
            match port_match(gateway_set(policy, &dst.addr), dst) {
                Some(index) => host = index,
                None => return Decision::because(Reason::GatewayAllowList),
            }
        }
    }
    if info.flags & PolicyInfo::ISOLATED != 0 {
        return match allowed(policy, dst) {
            Some(rule) => Decision {
                reason: Reason::Rule,
                rule,
            },
            None => Decision::because(Reason::DefaultDeny),
        };
    }
    if host != NO_RULE {
        Decision {
            reason: Reason::GatewayHost,
            rule: host,
        }
    } else {
        Decision::because(Reason::NotIsolated)
    }
}

/// 127.0.0.0/8 and ::1, as `IpAddr::is_loopback`.
#[inline(always)]
pub fn is_loopback(addr: &Addr) -> bool {
    match addr {
        Addr::V4(a) => a[0] == 127,
        Addr::V6(a) => {
            let mut i = 0;
            while i < 15 {
                if a[i] != 0 {
                    return false;
                }
                i += 1;
            }
            a[15] == 1
        }
    }
}

/// Full-length keys: the trie answers with the longest stored prefix of
/// this policy that contains the address (stored prefixes are at least
/// `POLICY_BITS` long, so a match never belongs to another policy).
#[inline(always)]
pub fn key_v4(id: u32, addr: [u8; 4]) -> Key<PolicyAddrV4> {
    Key::new(POLICY_BITS + 32, PolicyAddrV4::new(id, addr))
}

#[inline(always)]
pub fn key_v6(id: u32, addr: [u8; 16]) -> Key<PolicyAddrV6> {
    Key::new(POLICY_BITS + 128, PolicyAddrV6::new(id, addr))
}

/// Whether `dst` is inside the cluster: its address's longest cluster
/// prefix says so, but for a host whose ports are on both sides, the
/// policy's host table decides this port (a NodePort with backends
/// outside; an external IP's Service port with backends inside).
#[inline(always)]
fn in_cluster(policy: u32, tag: u32, dst: &Dst) -> bool {
    let value = match dst.addr {
        Addr::V4(a) => CLUSTER_V4.get(key_v4(tag, a)),
        Addr::V6(a) => CLUSTER_V6.get(key_v6(tag, a)),
    };
    match value.copied() {
        None => false,
        Some(host_ports::CLUSTER_PORTS) => {
            let host = host_table(allow_value(policy, &dst.addr));
            host == 0 || host_port(host, host_ports::OUTSIDE, dst).is_none()
        }
        Some(host_ports::CLUSTER_ONLY_PORTS) => {
            let host = host_table(allow_value(policy, &dst.addr));
            host != 0 && host_port(host, host_ports::INSIDE, dst).is_some()
        }
        Some(_) => true,
    }
}

/// The rule that allows `dst` for `policy`. A flagged entry's host table
/// decides a port it lists (a NodePort, judged by the Service's
/// backends) and gives the port set for the others; any other entry is
/// the port set of the longest allowed prefix.
#[inline(always)]
fn allowed(policy: u32, dst: &Dst) -> Option<u32> {
    let value = allow_value(policy, &dst.addr);
    let host = host_table(value);
    let set = if host == 0 {
        value
    } else {
        if let Some(rule) = host_port(host, host_ports::VERDICT, dst) {
            return if rule == host_ports::DENY {
                None
            } else {
                Some(rule)
            };
        }
        let base = host_ports::key(host, host_ports::BASE, 0, 0);
        // SAFETY: HOST_PORTS is not preallocated; the value is copied.
        unsafe { HOST_PORTS.get(base) }
            .copied()
            .unwrap_or(EMPTY_SET)
    };
    port_match(set, dst)
}

/// The `ALLOW_*` value of the longest allowed prefix, [`EMPTY_SET`] if
/// none.
#[inline(always)]
fn allow_value(policy: u32, addr: &Addr) -> u32 {
    let value = match *addr {
        Addr::V4(a) => ALLOW_V4.get(key_v4(policy, a)),
        Addr::V6(a) => ALLOW_V6.get(key_v6(policy, a)),
    };
    value.copied().unwrap_or(EMPTY_SET)
}

/// The host table an `ALLOW_*` value names, 0 if it is a port set.
#[inline(always)]
fn host_table(value: u32) -> u32 {
    if value & host_ports::ALLOW_FLAG != 0 {
        value & !host_ports::ALLOW_FLAG
    } else {
        0
    }
}

/// `HOST_PORTS` of `host` for `dst`'s protocol and port.
#[inline(always)]
fn host_port(host: u32, kind: u8, dst: &Dst) -> Option<u32> {
    let key = host_ports::key(host, kind, dst.proto, dst.port);
    // SAFETY: HOST_PORTS is not preallocated; the value is copied at once.
    unsafe { HOST_PORTS.get(key) }.copied()
}

#[inline(always)]
fn gateway_set(policy: u32, addr: &Addr) -> u32 {
    let set = match *addr {
        Addr::V4(a) => GATEWAY_V4.get(key_v4(policy, a)),
        Addr::V6(a) => GATEWAY_V6.get(key_v6(policy, a)),
    };
    set.copied().unwrap_or(EMPTY_SET)
}

/// The rule of the first entry of port set `set` (and the sets it
/// continues in) that matches `dst`.
#[inline(always)]
fn port_match(set: u32, dst: &Dst) -> Option<u32> {
    let mut id = set;
    let mut hop = 0;
    while hop < MAX_PORT_CHAIN {
        if id == EMPTY_SET {
            return None;
        }
        // SAFETY: PORT_SETS is not preallocated, and a set id is never
        // rewritten while a generation that uses it is live.
        let set = unsafe { PORT_SETS.get(id) }?;
        let len = set.len as usize;
        let mut i = 0;
        while i < MAX_PORT_ENTRIES {
            if i >= len {
                break;
            }
            let entry = &set.entries[i];
            if entry.matches(dst.proto, dst.port) {
                return Some(entry.rule);
            }
            i += 1;
        }
        id = set.next;
        hop += 1;
    }
    None
}

/// Four network-order words, as their bytes in order.
#[inline(always)]
pub fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        bytes[i * 4] = b[0];
        bytes[i * 4 + 1] = b[1];
        bytes[i * 4 + 2] = b[2];
        bytes[i * 4 + 3] = b[3];
        i += 1;
    }
    bytes
}
