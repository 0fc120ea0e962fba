//! `cgroup_skb/egress`: the packet-level check, and the guarantee. It sees
//! every packet a managed socket sends, whatever syscall produced it
//! (already-connected flows, raw sockets, UDP `send` on a connected socket).
//!
//! For locally generated traffic the hook runs before IP fragmentation, so
//! it sees whole datagrams with their transport header; see [`packet`] for
//! what is read and what is looked up without ports.
//!
//! A packet the egress policy denies may still be a reply on a flow the
//! workload did not initiate ([`reply::skb_is_reply`]): it is then allowed
//! as [`Reason::Reply`].
//!
//! Before any of that, the packet's source must be the workload's own
//! ([`source`]): replies are no exception, so a recorded flow cannot be
//! used to send from a forged address.

use aya_ebpf::{helpers::bpf_skb_ancestor_cgroup_id, programs::SkBuffContext};
use egress_common::{FlowEvent, Reason, NO_RULE};

use crate::{
    decide::{decide, IPPROTO_UDP},
    packet::{self, Malformed},
    reply, source,
    verdict::{count, Outcome},
    workload::{self, Workload},
};

/// Decides on one outgoing packet.
#[inline(always)]
pub fn try_egress_skb(ctx: &SkBuffContext) -> Outcome {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context the kernel passed to this program.
    let found = workload::lookup(|level| unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) });
    let Some(Workload { cgroup_id, policy }) = found.workload else {
        // Unmanaged sockets' packets are not even parsed.
        return Outcome::unmanaged(found.audit);
    };
    let outcome = |reason, rule| Outcome {
        reason,
        rule,
        cgroup_id,
        audit_mode: found.audit,
    };
    match packet::parse(ctx) {
        Ok(Some(packet)) => {
            if !source::is_own(policy, cgroup_id, &packet.src) {
                return outcome(Reason::Spoofed, NO_RULE);
            }
            let decision = decide(policy, &packet.destination());
            // A non-gateway never leaves the cluster, and a UDP "flow" that
            // came in proves nothing about its remote (one forged datagram
            // records it): it must not open the way out. Counted when such
            // a record exists.
            if decision.reason == Reason::GatewayExclusivity && packet.proto == IPPROTO_UDP {
                if reply::skb_is_reply(ctx, &packet) {
                    count(FlowEvent::UdpReplyOutsideCluster);
                }
                return outcome(decision.reason, decision.rule);
            }
            // Replies are looked for only where the policy denies: an
            // allowed packet keeps its policy reason (and rule counter), and
            // allowed traffic pays no extra lookup. `NoPolicy` is a broken
            // generation, not a policy: it stays closed.
            if decision.reason.denies()
                && decision.reason != Reason::NoPolicy
                && reply::skb_is_reply(ctx, &packet)
            {
                return outcome(Reason::Reply, NO_RULE);
            }
            outcome(decision.reason, decision.rule)
        }
        // The hook is only reached from the IPv4 and IPv6 output paths, so
        // this is not expected; let it through, but count it.
        Ok(None) => outcome(Reason::NotIp, NO_RULE),
        // Fail closed: an unreadable destination cannot be proven allowed.
        Err(Malformed) => outcome(Reason::Malformed, NO_RULE),
    }
}
