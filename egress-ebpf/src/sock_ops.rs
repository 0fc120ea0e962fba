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

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, BPF_TCP_CLOSE_WAIT, BPF_TCP_ESTABLISHED, BPF_TCP_SYN_RECV,
    },
    helpers::bpf_get_socket_cookie,
    programs::SockOpsContext,
};
use egress_common::{inbound, FlowEvent};

use crate::{maps::INBOUND_TCP, packet::TCP_SYN};

/// What one callback did; `None` for callbacks that concern no entry.
#[inline(always)]
pub fn on_sock_ops(ctx: &SockOpsContext) -> Option<FlowEvent> {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => Some(accepted(ctx)),
        BPF_SOCK_OPS_STATE_CB => state_changed(ctx),
        _ => None,
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
    let cookie = cookie(ctx);
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
