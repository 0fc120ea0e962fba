//! `cgroup_skb/ingress`: records the UDP flows that reach managed
//! workloads' sockets, so that `cgroup_skb/egress` and `sendmsg4/6` can
//! tell a reply from a datagram the workload initiates
//! ([`crate::reply`]). It never drops anything: this is an egress enforcer.
//!
//! The kernel runs it when a datagram is delivered to a socket (after the
//! socket lookup, before the receive queue), with that socket as the
//! packet's socket: its cookie and cgroup are the receiver's. UDP
//! datagrams are reassembled before delivery, so the header is always
//! there.
//!
//! TCP is left to `sock_ops`: a TCP segment that arrives proves nothing
//! until the handshake completes.

use aya_ebpf::{
    helpers::{
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_fullsock, bpf_skb_ancestor_cgroup_id,
    },
    programs::SkBuffContext,
};
use egress_common::{FlowEvent, UdpFlowKey};

use crate::{
    decide::{is_loopback, IPPROTO_UDP},
    maps::INBOUND_UDP,
    packet::{self, Packet},
    workload,
};

/// The loopback device's ifindex, the same in every network namespace
/// (`LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// Records what one incoming packet says about inbound flows.
#[inline(always)]
pub fn record(ctx: &SkBuffContext) -> FlowEvent {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context the kernel passed to this program; its
    // socket is the receiving one.
    let found = workload::lookup(|level| unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) });
    if found.workload.is_none() {
        // Unmanaged: no egress decision will ever need the record.
        return FlowEvent::IngressUnmanaged;
    }
    let packet = match packet::parse(ctx) {
        Ok(Some(packet)) if packet.proto == IPPROTO_UDP && packet.src_port != 0 => packet,
        Ok(_) => return FlowEvent::IngressIgnored,
        Err(_) => return FlowEvent::IngressMalformed,
    };
    if !udp_socket(ctx) {
        // A raw socket also receives UDP packets; only UDP sockets' flows
        // are replies to anything.
        return FlowEvent::IngressIgnored;
    }
    if foreign_on_loopback(ctx, &packet) {
        return FlowEvent::UdpForeignLoopback;
    }
    // SAFETY: helper call on this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(skb as *mut core::ffi::c_void) };
    let key = UdpFlowKey::new(cookie, packet.src.mapped(), packet.src_port);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // An existing flow is refreshed in place: an update would allocate a
    // new LRU element for every datagram.
    if let Some(seen) = INBOUND_UDP.get_ptr_mut(key) {
        // SAFETY: a preallocated LRU element, one aligned u64 (see
        // `reply::udp_is_reply`).
        unsafe { core::ptr::write_volatile(seen, now) };
        return FlowEvent::UdpRefreshed;
    }
    // `BPF_ANY`: a concurrent insert of the same flow is as good.
    match INBOUND_UDP.insert(key, now, 0) {
        Ok(()) => FlowEvent::UdpRecorded,
        Err(_) => FlowEvent::UdpRecordFailed,
    }
}

/// Whether the packet's socket is a UDP socket.
#[inline(always)]
fn udp_socket(ctx: &SkBuffContext) -> bool {
    // SAFETY: the context's socket field, null-checked; then a full socket
    // from the helper, null-checked, read with 4-byte loads.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return false;
        }
        let full = bpf_sk_fullsock(sk);
        !full.is_null() && core::ptr::read_volatile(&(*full).protocol) == u32::from(IPPROTO_UDP)
    }
}

/// A datagram that came over the loopback device from an address that is
/// neither loopback nor its own destination. Only this host's sockets send
/// on loopback, and some can choose a source they do not own (an IPv6
/// socket with `IP_FREEBIND` and `IPV6_PKTINFO`, raw sockets): a workload
/// allowed to reach its own address could otherwise record any remote it
/// likes and then "reply" to it. A workload talking to itself on its own
/// address uses that address on both ends, and loopback addresses are
/// allowed anyway; a pod with several addresses talking between them over
/// loopback is not recorded (its replies are decided by its policy).
#[inline(always)]
fn foreign_on_loopback(ctx: &SkBuffContext, packet: &Packet) -> bool {
    // SAFETY: a 4-byte field of the kernel's context.
    let ifindex = unsafe { core::ptr::read_volatile(&(*ctx.skb.skb).ingress_ifindex) };
    ifindex == LOOPBACK_IFINDEX && !is_loopback(&packet.src) && !packet.src.same(&packet.dst)
}
