//! `cgroup_skb/egress`: the packet-level check.

use aya_ebpf::programs::SkBuffContext;
use egress_common::Counter;

use crate::{
    maps::{v4_denied, v6_denied},
    verdict::Verdict,
};

/// Offset of the destination address in an IPv4 header.
const IPV4_DST: usize = 16;
/// Offset of the destination address in an IPv6 header.
const IPV6_DST: usize = 24;

/// The IP header could not be read.
pub struct Malformed;

/// Decides on one outgoing packet.
///
/// In `cgroup_skb` programs the packet starts at the network header, so the
/// IP version is the high nibble of the first byte. Only the fixed header's
/// destination is checked: an IPv6 routing header could name later hops, but
/// the first hop is where the packet goes from this host.
#[inline(always)]
pub fn try_egress_skb(ctx: &SkBuffContext) -> Result<Verdict, Malformed> {
    let first: u8 = ctx.load(0).map_err(|_| Malformed)?;
    let denied = match first >> 4 {
        4 => v4_denied(ctx.load(IPV4_DST).map_err(|_| Malformed)?),
        6 => v6_denied(ctx.load(IPV6_DST).map_err(|_| Malformed)?),
        // The egress hook is only reached from the IPv4 and IPv6 output
        // paths, so this is not expected; let it through, but count it.
        _ => return Ok(Verdict::Allow(Counter::EgressNotIp)),
    };
    Ok(if denied {
        Verdict::Deny(Counter::EgressDenied)
    } else {
        Verdict::Allow(Counter::EgressAllowed)
    })
}
