//! `sockops`: which TCP sockets were accepted, for [`crate::reply`].
//!
//! The kernel runs `BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB` only for sockets a
//! listener creates, never for one the workload `connect()`s. The program
//! marks them in `INBOUND_TCP` (see [`egress_common::inbound`] for the
//! states) and asks for `BPF_SOCK_OPS_STATE_CB` on them, so that the entry
//! goes when the socket closes: the map holds the open accepted sockets,
//! with LRU eviction only as a bound.
//!
//! It runs for every TCP socket below the cgroup root, managed or not
//! (sock_ops has no helper to find a socket's cgroup): a workload that
//! becomes managed keeps answering the connections it had accepted.
//!
//! It also carries redirected connections' original destinations from the
//! app socket's cookie (`REDIRECTED`, written by `connect4/6`) to its local
//! address (`ORIG_DST`) when its handshake completes, because the proxy's
//! accepted socket can only name its peer's address, not the peer's
//! cookie. The entry goes when the app socket reaches `TCP_CLOSE`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, BPF_TCP_CLOSE_WAIT, BPF_TCP_ESTABLISHED, BPF_TCP_SYN_RECV,
    },
    helpers::bpf_get_socket_cookie,
    programs::SockOpsContext,
};
use egress_common::{inbound, FlowEvent, SockKey, UdpFlowKey};

use crate::{
    decide::words_to_bytes,
    maps::{INBOUND_TCP, ORIG_DST, REDIRECTED},
    packet::TCP_SYN,
    redirect::AF_INET,
};

/// What one callback did; `None` for callbacks that concern no entry.
#[inline(always)]
pub fn on_sock_ops(ctx: &SockOpsContext) -> Option<FlowEvent> {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => Some(accepted(ctx)),
        BPF_SOCK_OPS_STATE_CB => state_changed(ctx),
        BPF_SOCK_OPS_TCP_CONNECT_CB => redirect_connecting(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => redirect_established(ctx),
        _ => None,
    }
}

/// A redirected connect sends its SYN: ask for state callbacks, so that a
/// connect that fails (`SYN_SENT -> CLOSE`) removes its `REDIRECTED`
/// entry and an established one its `ORIG_DST` entry.
#[inline(always)]
fn redirect_connecting(ctx: &SockOpsContext) -> Option<FlowEvent> {
    // SAFETY: an LRU element; only its presence matters.
    unsafe { REDIRECTED.get(cookie(ctx)) }?;
    let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
    // A failure leaves the entry to LRU eviction: bounded either way.
    let _ = ctx.set_cb_flags(flags as i32);
    None
}

/// The app's local address, IPv4 as `::ffff:a.b.c.d`.
#[inline(always)]
fn local_key(ctx: &SockOpsContext) -> SockKey {
    let ops = ctx.ops;
    // SAFETY: 4-byte fields of the kernel's context. All are read, whatever
    // the family, each with its own load at a constant offset: loads in
    // two branches would be merged into one through a moved context
    // pointer, which the verifier refuses.
    let (family, port, v4, words) = unsafe {
        (
            core::ptr::read_volatile(&(*ops).family),
            core::ptr::read_volatile(&(*ops).local_port),
            core::ptr::read_volatile(&(*ops).local_ip4),
            [
                core::ptr::read_volatile(&(*ops).local_ip6[0]),
                core::ptr::read_volatile(&(*ops).local_ip6[1]),
                core::ptr::read_volatile(&(*ops).local_ip6[2]),
                core::ptr::read_volatile(&(*ops).local_ip6[3]),
            ],
        )
    };
    let addr = if family == u32::from(AF_INET) {
        UdpFlowKey::v4_mapped(v4.to_ne_bytes())
    } else {
        words_to_bytes(words)
    };
    SockKey {
        addr,
        port: port as u16,
        _pad: [0; 2],
    }
}

/// A redirected connect completed its handshake: its local address is
/// now what the proxy sees as the peer, so the entry moves there.
#[inline(always)]
fn redirect_established(ctx: &SockOpsContext) -> Option<FlowEvent> {
    let cookie = cookie(ctx);
    // SAFETY: an LRU element, copied at once.
    let orig = (unsafe { REDIRECTED.get(cookie) }).copied()?;
    let _ = REDIRECTED.remove(cookie);
    let event = match ORIG_DST.insert(local_key(ctx), orig, 0) {
        Ok(()) => FlowEvent::RedirectEstablished,
        Err(_) => FlowEvent::RedirectRecordFailed,
    };
    Some(event)
}

/// Removes what a closing redirected socket left: its `ORIG_DST` entry
/// (only if it is this socket's: another socket may have the address
/// since) or its `REDIRECTED` entry if it never connected.
#[inline(always)]
fn redirect_closed(ctx: &SockOpsContext, cookie: u64) -> Option<FlowEvent> {
    if REDIRECTED.remove(cookie).is_ok() {
        return Some(FlowEvent::RedirectClosed);
    }
    let key = local_key(ctx);
    // SAFETY: an LRU element, copied at once.
    let orig = (unsafe { ORIG_DST.get(key) }).copied()?;
    if orig.cookie != cookie {
        return None;
    }
    let _ = ORIG_DST.remove(key);
    Some(FlowEvent::RedirectClosed)
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the helper accepts this program's context.
    unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) }
}

/// A listener's child: regular ones when the client's ACK completed the
/// handshake, Fast Open ones on the SYN. The packet that triggered the
/// callback tells them apart.
#[inline(always)]
fn accepted(ctx: &SockOpsContext) -> FlowEvent {
    // Without the state callback the entry could not be removed, and a
    // stale "ESTABLISHED" would outlive an `AF_UNSPEC` disconnect: do not
    // mark (fail closed). Other programs' flags are kept.
    let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
    if ctx.set_cb_flags(flags as i32).is_err() {
        return FlowEvent::TcpRecordFailed;
    }
    // SAFETY: a 4-byte field of the kernel's context, valid in this
    // callback (the triggering packet's flags).
    let tcp_flags = unsafe { core::ptr::read_volatile(&(*ctx.ops).skb_tcp_flags) };
    let (state, event) = if tcp_flags & u32::from(TCP_SYN) != 0 {
        (inbound::HANDSHAKE, FlowEvent::TcpFastOpen)
    } else {
        (inbound::ESTABLISHED, FlowEvent::TcpInbound)
    };
    match INBOUND_TCP.insert(cookie(ctx), state, 0) {
        Ok(()) => event,
        Err(_) => FlowEvent::TcpRecordFailed,
    }
}

/// `args[0]` is the old state, `args[1]` the new one; the socket still has
/// the old one.
#[inline(always)]
fn state_changed(ctx: &SockOpsContext) -> Option<FlowEvent> {
    let (old, new) = (ctx.arg(0), ctx.arg(1));
    if new != BPF_TCP_ESTABLISHED && new != BPF_TCP_CLOSE {
        return None;
    }
    let cookie = cookie(ctx);
    // A socket this program asked state callbacks for as a redirected
    // connect is never an accepted one.
    if new == BPF_TCP_CLOSE {
        if let Some(event) = redirect_closed(ctx, cookie) {
            return Some(event);
        }
    }
    // Another program may have asked for state callbacks on sockets that
    // are not ours: only entries this program made are touched.
    let entry = INBOUND_TCP.get_ptr_mut(cookie)?;
    // SAFETY: a one-byte value of a preallocated LRU element.
    let state = unsafe { core::ptr::read_volatile(entry) };
    if new == BPF_TCP_ESTABLISHED {
        if old == BPF_TCP_SYN_RECV && state == inbound::HANDSHAKE {
            // The Fast Open client acknowledged our SYN-ACK.
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(entry, inbound::ESTABLISHED) };
            return Some(FlowEvent::TcpInbound);
        }
        return None;
    }
    // The kernel sends an abort's RST after this state change (close with
    // unread data, zero linger, `connect(AF_UNSPEC)`): keep the entry for
    // it. An orderly close (from LAST_ACK, FIN_WAIT*, CLOSING) sends none.
    if state == inbound::ESTABLISHED && (old == BPF_TCP_ESTABLISHED || old == BPF_TCP_CLOSE_WAIT) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(entry, inbound::ABORTED) };
        return Some(FlowEvent::TcpAborted);
    }
    let _ = INBOUND_TCP.remove(cookie);
    Some(FlowEvent::TcpClosed)
}
