//! Verdicts: which hook decided, why ([`Reason`]), and where each decision
//! is counted (`VERDICTS` by [`verdict_index`], `RULE_HITS` by [`HitKey`]).

#[cfg(doc)]
use crate::{PolicyInfo, PortEntry, NO_RULE, UDP_IDLE_NS};

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
    fn types_have_no_padding() {
        assert_eq!(core::mem::size_of::<HitKey>(), 16);
    }
}
