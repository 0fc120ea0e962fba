//! `cgroup_skb/egress`: the packet-level check, and the guarantee. It sees
//! every packet a managed socket sends, whatever syscall produced it
//! (already-connected flows, raw sockets, UDP `send` on a connected socket).
//!
//! For locally generated traffic the hook runs before IP fragmentation, so
//! it sees whole datagrams with their transport header. Non-first fragments
//! only reach it when a raw socket builds them itself: they carry no ports,
//! so they are looked up with port 0 and only match "any protocol" entries.
//! The same goes for every protocol other than TCP, UDP and SCTP (ICMP,
//! ESP, ...), and for IPv6 packets with more than
//! [`MAX_EXTENSION_HEADERS`] extension headers.

use aya_ebpf::{helpers::bpf_skb_ancestor_cgroup_id, programs::SkBuffContext};
use egress_common::{Reason, NO_RULE};

use crate::{
    decide::{decide, has_ports, Addr, Dst},
    verdict::Outcome,
    workload::{self, Workload},
};

/// Offsets in the IPv4 header.
const IPV4_FRAG: usize = 6;
const IPV4_PROTO: usize = 9;
const IPV4_DST: usize = 16;
/// "More fragments" is not about being first: only the offset is.
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// Offsets in the IPv6 fixed header.
const IPV6_NEXT: usize = 6;
const IPV6_DST: usize = 24;
const IPV6_FIXED_LEN: usize = 40;

/// Extension headers followed to find the transport header.
pub const MAX_EXTENSION_HEADERS: usize = 4;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// Offset of the destination port in TCP, UDP and SCTP headers.
const L4_DST_PORT: usize = 2;

/// A header the program needed could not be read.
struct Malformed;

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
    match destination(ctx) {
        Ok(Some(dst)) => {
            let decision = decide(policy, &dst);
            outcome(decision.reason, decision.rule)
        }
        // The hook is only reached from the IPv4 and IPv6 output paths, so
        // this is not expected; let it through, but count it.
        Ok(None) => outcome(Reason::NotIp, NO_RULE),
        // Fail closed: an unreadable destination cannot be proven allowed.
        Err(Malformed) => outcome(Reason::Malformed, NO_RULE),
    }
}

/// The packet's destination; `None` if it is not IP. In `cgroup_skb`
/// programs the packet starts at the network header.
#[inline(always)]
fn destination(ctx: &SkBuffContext) -> Result<Option<Dst>, Malformed> {
    let first: u8 = load(ctx, 0)?;
    match first >> 4 {
        4 => {
            let header_len = usize::from(first & 0x0f) * 4;
            if header_len < 20 {
                return Err(Malformed);
            }
            let proto: u8 = load(ctx, IPV4_PROTO)?;
            let frag = u16::from_be_bytes(load(ctx, IPV4_FRAG)?);
            let addr: [u8; 4] = load(ctx, IPV4_DST)?;
            let port = if frag & IPV4_OFFSET_MASK != 0 {
                0
            } else {
                port(ctx, proto, header_len)?
            };
            Ok(Some(Dst {
                addr: Addr::V4(addr),
                proto,
                port,
            }))
        }
        6 => {
            let addr: [u8; 16] = load(ctx, IPV6_DST)?;
            let mut next: u8 = load(ctx, IPV6_NEXT)?;
            let mut offset = IPV6_FIXED_LEN;
            let mut first_fragment = true;
            let mut i = 0;
            while i < MAX_EXTENSION_HEADERS {
                i += 1;
                match next {
                    NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                        let [nh, len]: [u8; 2] = load(ctx, offset)?;
                        next = nh;
                        offset += (usize::from(len) + 1) * 8;
                    }
                    NEXTHDR_AUTH => {
                        let [nh, len]: [u8; 2] = load(ctx, offset)?;
                        next = nh;
                        offset += (usize::from(len) + 2) * 4;
                    }
                    NEXTHDR_FRAGMENT => {
                        let [nh, _, off_hi, off_lo]: [u8; 4] = load(ctx, offset)?;
                        next = nh;
                        offset += 8;
                        if u16::from_be_bytes([off_hi, off_lo]) & 0xfff8 != 0 {
                            first_fragment = false;
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let port = if first_fragment {
                port(ctx, next, offset)?
            } else {
                0
            };
            Ok(Some(Dst {
                addr: Addr::V6(addr),
                proto: next,
                port,
            }))
        }
        _ => Ok(None),
    }
}

/// The destination port of a transport header at `offset`, 0 for protocols
/// without ports.
#[inline(always)]
fn port(ctx: &SkBuffContext, proto: u8, offset: usize) -> Result<u16, Malformed> {
    if has_ports(proto) {
        Ok(u16::from_be_bytes(load(ctx, offset + L4_DST_PORT)?))
    } else {
        Ok(0)
    }
}

#[inline(always)]
fn load<T>(ctx: &SkBuffContext, offset: usize) -> Result<T, Malformed> {
    ctx.load(offset).map_err(|_| Malformed)
}
