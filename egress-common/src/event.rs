//! Verdict events: what the programs report in the `EVENTS` ring, how it
//! is sampled and rate limited (`EVENT_CONFIG`, `EVENT_LIMIT`), and what
//! became of them (`EVENT_STATS`).

#[cfg(doc)]
use crate::{HitKey, Hook, Reason, NO_RULE};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_have_no_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<EventConfig>(), 8);
        assert_eq!(size_of::<Event>(), 8 + 8 + 16 + 16 + 4 + 2 + 2 + 5 + 3);
        assert_eq!(size_of::<Event>(), 64);
        assert_eq!(size_of::<LimitKey>(), 8 + 16 + 2 + 1 + 1 + 4);
    }
}
