//! `cgroup/connect4` and `cgroup/connect6`: the early, polite refusal.
//!
//! These cannot fail: the kernel hands the destination in the context, so
//! they return a [`Verdict`] directly rather than a `Result`.

use aya_ebpf::programs::SockAddrContext;
use egress_common::Counter;

use crate::{
    maps::{v4_denied, v6_denied},
    verdict::Verdict,
};

/// Decides on a `connect()` from an IPv4 socket.
#[inline(always)]
pub fn connect4_verdict(ctx: &SockAddrContext) -> Verdict {
    // SAFETY: the kernel guarantees `sock_addr` points to a valid context.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    // `user_ip4` holds the address in network byte order; its in-memory
    // bytes are therefore the key's bytes, on either endianness.
    if v4_denied(ip.to_ne_bytes()) {
        Verdict::Deny(Counter::Connect4Denied)
    } else {
        Verdict::Allow(Counter::Connect4Allowed)
    }
}

/// Decides on a `connect()` from an IPv6 socket.
///
/// A dual-stack IPv6 socket connecting to `::ffff:a.b.c.d` sends IPv4
/// packets, and the kernel never runs `connect4` for it, so the embedded
/// IPv4 address is checked against the IPv4 trie here.
#[inline(always)]
pub fn connect6_verdict(ctx: &SockAddrContext) -> Verdict {
    // SAFETY: as above.
    let words = unsafe { (*ctx.sock_addr).user_ip6 };
    if let Some(v4) = ipv4_mapped(words) {
        return if v4_denied(v4) {
            Verdict::Deny(Counter::Connect6MappedDenied)
        } else {
            Verdict::Allow(Counter::Connect6Allowed)
        };
    }
    // SAFETY: same size, and every bit pattern is a valid `[u8; 16]`. The
    // words are in network byte order, so their bytes in memory are the
    // address's bytes in order.
    let addr: [u8; 16] = unsafe { core::mem::transmute(words) };
    if v6_denied(addr) {
        Verdict::Deny(Counter::Connect6Denied)
    } else {
        Verdict::Allow(Counter::Connect6Allowed)
    }
}

/// The IPv4 address inside `::ffff:a.b.c.d`, if `words` (network byte order)
/// is one.
#[inline(always)]
fn ipv4_mapped(words: [u32; 4]) -> Option<[u8; 4]> {
    let prefix = u32::from_be_bytes(words[2].to_ne_bytes());
    if words[0] == 0 && words[1] == 0 && prefix == 0x0000_ffff {
        Some(words[3].to_ne_bytes())
    } else {
        None
    }
}
