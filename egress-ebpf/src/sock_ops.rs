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
//! cookie. The entry lives as long as the proxy's accepted socket, as a
//! conntrack entry outlives the client's half of the connection: an app
//! that connects and closes before the proxy's `accept()` must still leave
//! the proxy its answer (Squid stops serving its intercept port after one
//! `ENOENT`). It goes when that socket reaches `TCP_CLOSE` in an orderly
//! way, or abortively once the proxy has read it; a connection reset
//! before the proxy asked keeps it for a later `accept()`, bounded by the
//! map's LRU eviction.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, BPF_TCP_CLOSE_WAIT, BPF_TCP_ESTABLISHED, BPF_TCP_SYN_RECV,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockOpsContext,
};
use egress_common::{inbound, FlowEvent, SockKey, UdpFlowKey};

use crate::{
    decide::words_to_bytes,
    maps::{INBOUND_TCP, ORIG_DST, REDIRECTED},
    packet::TCP_SYN,
    redirect::AF_INET,
    verdict::count,
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
/// entry. They are needed only until the handshake completes
/// ([`redirect_established`] turns them off again if they were turned on
/// here), so an established redirected connection runs no callback per
/// state change.
#[inline(always)]
fn redirect_connecting(ctx: &SockOpsContext) -> Option<FlowEvent> {
    let entry = REDIRECTED.get_ptr_mut(cookie(ctx))?;
    let flags = ctx.cb_flags();
    // Already on: another program asked for them, and keeps them.
    // A failure leaves the entry to LRU eviction: bounded either way.
    if flags & BPF_SOCK_OPS_STATE_CB_FLAG == 0
        && ctx
            .set_cb_flags((flags | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
            .is_ok()
    {
        // SAFETY: a one-byte field of a preallocated LRU element.
        unsafe { core::ptr::write_volatile(&mut (*entry).state_cb, 1) };
    }
    None
}

/// One end of a connection: address (IPv4 as `::ffff:a.b.c.d`) and port.
type End = ([u8; 16], u16);

/// The socket's local and remote ends.
#[inline(always)]
fn ends(ctx: &SockOpsContext) -> (End, End) {
    let ops = ctx.ops;
    // SAFETY: 4-byte fields of the kernel's context. All are read, whatever
    // the family, each with its own load at a constant offset: loads in
    // two branches would be merged into one through a moved context
    // pointer, which the verifier refuses.
    let (family, local_port, local4, remote_port, remote4) = unsafe {
        (
            core::ptr::read_volatile(&(*ops).family),
            core::ptr::read_volatile(&(*ops).local_port),
            core::ptr::read_volatile(&(*ops).local_ip4),
            core::ptr::read_volatile(&(*ops).remote_port),
            core::ptr::read_volatile(&(*ops).remote_ip4),
        )
    };
    // SAFETY: as above.
    let (local6, remote6) = unsafe {
        (
            [
                core::ptr::read_volatile(&(*ops).local_ip6[0]),
                core::ptr::read_volatile(&(*ops).local_ip6[1]),
                core::ptr::read_volatile(&(*ops).local_ip6[2]),
                core::ptr::read_volatile(&(*ops).local_ip6[3]),
            ],
            [
                core::ptr::read_volatile(&(*ops).remote_ip6[0]),
                core::ptr::read_volatile(&(*ops).remote_ip6[1]),
                core::ptr::read_volatile(&(*ops).remote_ip6[2]),
                core::ptr::read_volatile(&(*ops).remote_ip6[3]),
            ],
        )
    };
    let v4 = family == u32::from(AF_INET);
    let addr = |a4: u32, a6: [u32; 4]| {
        if v4 {
            UdpFlowKey::v4_mapped(a4.to_ne_bytes())
        } else {
            words_to_bytes(a6)
        }
    };
    // `local_port` is in host byte order; `remote_port` holds the
    // network-order port in its upper half.
    (
        (addr(local4, local6), local_port as u16),
        (addr(remote4, remote6), u32::from_be(remote_port) as u16),
    )
}

/// The entry's key for a connection from `app` to `proxy`.
#[inline(always)]
fn key(ctx: &SockOpsContext, app: End, proxy: End) -> SockKey {
    let netns = if SockKey::is_loopback(&app.0) {
        // SAFETY: the helper accepts a sock_ops context.
        unsafe { bpf_get_netns_cookie(ctx.ops as *mut c_void) }
    } else {
        0
    };
    SockKey {
        netns,
        addr: app.0,
        proxy: proxy.0,
        port: app.1,
        proxy_port: proxy.1,
        _pad: [0; 4],
    }
}

/// A redirected connect completed its handshake: its local address is
/// now what the proxy sees as the peer, so the entry moves there.
#[inline(always)]
fn redirect_established(ctx: &SockOpsContext) -> Option<FlowEvent> {
    let cookie = cookie(ctx);
    // SAFETY: an LRU element, copied at once.
    let mut orig = (unsafe { REDIRECTED.get(cookie) }).copied()?;
    let _ = REDIRECTED.remove(cookie);
    // The entry is gone from `REDIRECTED`, and the app's socket is never
    // an accepted one nor a key of `ORIG_DST` (those name the proxy's
    // socket): its state callbacks would find nothing to do.
    if orig.state_cb != 0 {
        let _ = ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        orig.state_cb = 0;
    }
    // On the app's socket: local is the app, remote the proxy.
    let (local, remote) = ends(ctx);
    let event = match ORIG_DST.insert(key(ctx, local, remote), orig, 0) {
        Ok(()) => FlowEvent::RedirectEstablished,
        Err(_) => FlowEvent::RedirectRecordFailed,
    };
    Some(event)
}

/// A redirected connect that closes before its handshake completed
/// leaves its `REDIRECTED` entry, removed here. An established one's
/// `ORIG_DST` entry belongs to the proxy's side ([`release_original`]).
#[inline(always)]
fn redirect_closed(cookie: u64) -> Option<FlowEvent> {
    REDIRECTED
        .remove(cookie)
        .is_ok()
        .then_some(FlowEvent::RedirectClosed)
}

/// The proxy's accepted socket of a redirected connection closes: its
/// `ORIG_DST` entry goes, unless the connection was reset before the
/// proxy read it (the proxy may still `accept()` it and ask; see the
/// module doc).
#[inline(always)]
fn release_original(ctx: &SockOpsContext, old: u32) {
    // On the proxy's socket: remote is the app, local the proxy.
    let (local, remote) = ends(ctx);
    let key = key(ctx, remote, local);
    let Some(entry) = ORIG_DST.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a one-byte field of a preallocated LRU element.
    let answered = unsafe { core::ptr::read_volatile(&(*entry).answered) };
    let abortive = old == BPF_TCP_ESTABLISHED || old == BPF_TCP_CLOSE_WAIT;
    if answered != 0 || !abortive {
        let _ = ORIG_DST.remove(key);
        count(FlowEvent::RedirectClosed);
    }
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
    // Only a Fast Open child's handshake (`SYN_RECV -> ESTABLISHED`) has
    // anything to do on `ESTABLISHED`; a redirected connect's
    // `SYN_SENT -> ESTABLISHED` is answered here without a lookup.
    if new == BPF_TCP_ESTABLISHED && old != BPF_TCP_SYN_RECV {
        return None;
    }
    let cookie = cookie(ctx);
    // A socket this program asked state callbacks for as a redirected
    // connect is never an accepted one.
    if new == BPF_TCP_CLOSE {
        if let Some(event) = redirect_closed(cookie) {
            return Some(event);
        }
        release_original(ctx, old);
    }
    // Another program may have asked for state callbacks on sockets that
    // are not ours: only entries this program made are touched.
    let entry = INBOUND_TCP.get_ptr_mut(cookie)?;
    // SAFETY: a one-byte value of a preallocated LRU element.
    let state = unsafe { core::ptr::read_volatile(entry) };
    if new == BPF_TCP_ESTABLISHED {
        if state == inbound::HANDSHAKE {
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
