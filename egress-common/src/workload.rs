//! Which policy governs a socket: `CONFIG`, the `WORKLOADS` slots of each
//! generation, the `POLICIES` flags, and the `SOURCES` key of the
//! anti-spoofing check.

#[cfg(doc)]
use crate::Reason;

/// The deepest cgroup level the programs can look at: `level_mask` is a
/// `u32`, one bit per level.
pub const MAX_LEVEL: u32 = 31;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_have_no_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<Config>(), 8);
        assert_eq!(size_of::<WorkloadSlot>(), 8);
        assert_eq!(size_of::<PolicyInfo>(), 8);
        assert_eq!(size_of::<SourceKey>(), 8 + 16);
    }
}
