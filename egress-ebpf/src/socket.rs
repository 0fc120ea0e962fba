//! `lsm_cgroup/socket_create`: what cannot be judged per packet is refused
//! when the socket is created.
//!
//! A packet socket (`AF_PACKET`, raw or datagram) hands whole frames to the
//! device: they never pass `cgroup_skb/egress`, so neither the policy nor
//! the anti-spoofing check could see them. Any container with the default
//! CAP_NET_RAW can open one. A managed workload gets EPERM unless its
//! policy has `PolicyInfo::PACKET_SOCKETS` (gateways, and Workloads that
//! opt in). Raw IP sockets stay allowed: their packets pass
//! `cgroup_skb/egress` like any other (and `ping` needs them).
//!
//! Why not `cgroup/sock_create`: the kernel runs it from `inet_create` and
//! `inet6_create` only, so it never sees a packet socket. The BPF LSM's
//! per-cgroup attach type runs for the current task's cgroup, which is the
//! same attach point, at the agent's cgroup root, as every other program.

use aya_ebpf::{helpers::bpf_get_current_ancestor_cgroup_id, programs::LsmContext};
use egress_common::{PolicyInfo, Reason, NO_RULE};

use crate::{maps::POLICIES, verdict::Outcome, workload};

/// `AF_PACKET` (`PF_PACKET`).
const AF_PACKET: i32 = 17;

/// Decides `socket(family, type, protocol)`; the hook's arguments are
/// `(int family, int type, int protocol, int kern)`.
#[inline(always)]
pub fn try_socket_create(ctx: &LsmContext) -> Outcome {
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    // Sockets the kernel creates for itself (kern != 0) are not the
    // workload's, whatever task triggered them.
    if family != AF_PACKET || kern != 0 {
        return Outcome::unmanaged(false);
    }
    // SAFETY: plain helper call on the current task.
    let found =
        workload::lookup(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) });
    let Some(w) = found.workload else {
        return Outcome::unmanaged(found.audit);
    };
    // SAFETY: POLICIES is not preallocated; the flags are copied at once.
    let reason = match unsafe { POLICIES.get(w.policy) } {
        None => Reason::NoPolicy,
        Some(info) if info.flags & PolicyInfo::PACKET_SOCKETS != 0 => Reason::Rule,
        Some(_) => Reason::PacketSocket,
    };
    Outcome {
        reason,
        rule: NO_RULE,
        cgroup_id: w.cgroup_id,
        audit_mode: found.audit,
    }
}
