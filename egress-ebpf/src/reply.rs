//! Replies: whether a packet, `connect()` or `sendto()` that the egress
//! policy denies belongs to a flow the workload did not initiate.
//!
//! Kubernetes egress rules restrict the connections a pod initiates;
//! replies to connections it accepted are always allowed (CNIs use
//! conntrack). Here the kernel tells which flows came in:
//!
//! - TCP: `sock_ops` marks a socket in `INBOUND_TCP` when a listener's
//!   child completes its handshake ([`crate::sock_ops`]). Every packet of
//!   such a socket is a reply. A socket the workload connected itself is
//!   never marked, whatever it sends.
//! - TCP SYN-ACKs go out before there is a child socket: the kernel sends
//!   them on behalf of the listener (the program sees the listener as the
//!   packet's socket), or from a Fast Open child still in `SYN_RECV`. A
//!   SYN-ACK from a TCP socket in `LISTEN` or `SYN_RECV` only ever answers
//!   a SYN that arrived.
//! - UDP: `cgroup_skb/ingress` records `(socket, remote address, remote
//!   port)` for each datagram a managed socket receives
//!   ([`crate::ingress`]). A datagram from that socket to that remote
//!   within [`UDP_IDLE_NS`] of the last one is a reply. Only received
//!   datagrams create records, so sending first to a destination proves
//!   nothing.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_TCP_LISTEN, BPF_TCP_SYN_RECV},
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_fullsock},
    programs::{SkBuffContext, SockAddrContext},
};
use egress_common::{inbound, FlowEvent, UdpFlowKey, UDP_IDLE_NS};

use crate::{
    decide::{Dst, IPPROTO_TCP, IPPROTO_UDP},
    maps::{INBOUND_TCP, INBOUND_UDP},
    packet::{Packet, TCP_ACK, TCP_RST, TCP_SYN},
    verdict::count,
};

/// Whether an outgoing packet that the policy denies is a reply.
#[inline(always)]
pub fn skb_is_reply(ctx: &SkBuffContext, packet: &Packet) -> bool {
    // SAFETY: the helper accepts this program's context; it returns the
    // cookie of the packet's socket (0 if it has none, never a key).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) };
    match packet.proto {
        IPPROTO_TCP => tcp_is_reply(ctx, packet, cookie),
        IPPROTO_UDP => udp_is_reply(
            UdpFlowKey::new(cookie, packet.dst.mapped(), packet.dst_port),
            true,
        ),
        _ => false,
    }
}

/// Whether a `connect()` or `sendmsg()` that the policy denies goes back to
/// a UDP remote that sent to this socket. A UDP `connect()` is included so
/// that the early check agrees with the packet-level one (a server may
/// connect its socket to the client it answers); TCP `connect()` is never
/// a reply.
#[inline(always)]
pub fn sock_addr_is_reply(ctx: &SockAddrContext, dst: &Dst) -> bool {
    if dst.proto != IPPROTO_UDP {
        return false;
    }
    // SAFETY: as above, for a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // Not refreshed here: the datagram's packet does it a moment later.
    udp_is_reply(UdpFlowKey::new(cookie, dst.addr.mapped(), dst.port), false)
}

#[inline(always)]
fn tcp_is_reply(ctx: &SkBuffContext, packet: &Packet, cookie: u64) -> bool {
    // SAFETY: INBOUND_TCP values are one byte, copied at once.
    let state = unsafe { INBOUND_TCP.get(cookie) }.copied();
    if state == Some(inbound::ESTABLISHED) {
        return true;
    }
    // A non-first fragment has no flags to read: not a reply (TCP does not
    // fragment its own segments anyway).
    let Ok(flags) = packet.tcp_flags(ctx) else {
        return false;
    };
    if state == Some(inbound::ABORTED) && flags & TCP_RST != 0 {
        // The socket's last packet; nothing follows a RST.
        let _ = INBOUND_TCP.remove(cookie);
        return true;
    }
    flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK) && handshake_socket(ctx)
}

/// Whether the packet's socket is a TCP socket in `LISTEN` (the kernel
/// sends a request's SYN-ACK with the listener as the packet's socket) or
/// `SYN_RECV` (a Fast Open child, or a simultaneous open of a socket whose
/// `connect()` was allowed). A raw or UDP socket is neither.
#[inline(always)]
fn handshake_socket(ctx: &SkBuffContext) -> bool {
    // SAFETY: reading the `sk` field of the kernel's context; the verifier
    // types it as a socket pointer that may be null, which is checked.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` came from the context and is not null.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return false;
    }
    // SAFETY: a full socket from `bpf_sk_fullsock`; 4-byte fields.
    let (protocol, state) = unsafe {
        (
            core::ptr::read_volatile(&(*full).protocol),
            core::ptr::read_volatile(&(*full).state),
        )
    };
    protocol == u32::from(IPPROTO_TCP) && (state == BPF_TCP_LISTEN || state == BPF_TCP_SYN_RECV)
}

/// Whether `key` is a recorded UDP flow that has not been idle for longer
/// than [`UDP_IDLE_NS`]; an expired one is deleted. `refresh`: a datagram
/// goes out on the flow now (as conntrack, traffic either way keeps it).
#[inline(always)]
fn udp_is_reply(key: UdpFlowKey, refresh: bool) -> bool {
    let Some(seen) = INBOUND_UDP.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: an LRU map is preallocated, so the element stays mapped
    // memory even if it is evicted meanwhile; it may then be reused for a
    // flow recorded that same instant, whose time is as recent as ours
    // would be. One aligned u64.
    let last = unsafe { core::ptr::read_volatile(seen) };
    // Another CPU may have stored a slightly later time: not idle then.
    if now > last && now - last > UDP_IDLE_NS {
        let _ = INBOUND_UDP.remove(key);
        count(FlowEvent::UdpExpired);
        return false;
    }
    if refresh && now > last {
        // SAFETY: as above; a racing store of another CPU's `now` is as
        // good as this one.
        unsafe { core::ptr::write_volatile(seen, now) };
    }
    true
}
