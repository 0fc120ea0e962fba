//! `cgroup/getsockopt`: `SO_ORIGINAL_DST` for the proxy, as iptables'
//! conntrack answers it after a REDIRECT, so that an unmodified Envoy works.
//!
//! The kernel has already run its own `getsockopt()` (without conntrack it
//! fails); this program then sees the call. For a connection that
//! [`crate::sock_ops`] filed in `ORIG_DST` under the peer's address (and,
//! for loopback, this socket's network namespace: the app's and its
//! sidecar's), it
//! writes a `sockaddr_in` (`SOL_IP`) or `sockaddr_in6` (`SOL_IPV6`, IPv4
//! as `::ffff:a.b.c.d`) and clears the error.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_TCP_CLOSE,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie},
    programs::SockoptContext,
};
use egress_common::{FlowEvent, PolicyInfo, Reason, SockKey, UdpFlowKey, NO_RULE};

use crate::{
    decide::words_to_bytes,
    maps::{ORIG_DST, POLICIES},
    redirect::{AF_INET, AF_INET6},
    verdict::Outcome,
    workload,
};

const IP_TRANSPARENT: i32 = 19;
const IPV6_TRANSPARENT: i32 = 75;

/// Whether a `setsockopt()` sets `IP_TRANSPARENT` or `IPV6_TRANSPARENT`
/// (to anything: clearing it needs no refusal, but costs nothing either).
#[inline(always)]
pub fn is_transparent(ctx: &SockoptContext) -> bool {
    let so = ctx.sockopt;
    // SAFETY: the kernel's context; 4-byte fields readable in setsockopt.
    let (level, optname) = unsafe {
        (
            core::ptr::read_volatile(&(*so).level),
            core::ptr::read_volatile(&(*so).optname),
        )
    };
    (level == SOL_IP && optname == IP_TRANSPARENT)
        || (level == SOL_IPV6 && optname == IPV6_TRANSPARENT)
}

/// Decides a `setsockopt(IP_TRANSPARENT)` of the current task: a
/// transparent socket can bind to and send from any address, and receive
/// TPROXY'd traffic; only gateways and proxies need that.
#[inline(always)]
pub fn try_transparent() -> Outcome {
    // SAFETY: plain helper call on the current task.
    let found =
        workload::lookup(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) });
    let Some(w) = found.workload else {
        return Outcome::unmanaged(found.audit);
    };
    // SAFETY: POLICIES is not preallocated; the flags are copied at once.
    let reason = match unsafe { POLICIES.get(w.policy) } {
        None => Reason::NoPolicy,
        Some(info) if info.flags & PolicyInfo::TRANSPARENT != 0 => Reason::Rule,
        Some(_) => Reason::Transparent,
    };
    Outcome {
        reason,
        rule: NO_RULE,
        cgroup_id: w.cgroup_id,
        audit_mode: found.audit,
    }
}

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` are both 80.
const SO_ORIGINAL_DST: i32 = 80;
const SOCKADDR_IN: usize = 16;
const SOCKADDR_IN6: usize = 28;

/// `None` for every other option (nothing to count).
#[inline(always)]
pub fn original_dst(ctx: &SockoptContext) -> Option<FlowEvent> {
    let so = ctx.sockopt;
    // SAFETY: the kernel's context; 4-byte fields readable in getsockopt.
    let (level, optname) = unsafe {
        (
            core::ptr::read_volatile(&(*so).level),
            core::ptr::read_volatile(&(*so).optname),
        )
    };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return None;
    }
    // SAFETY: `sk` is always set (a full socket) for sockopt programs.
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    if sk.is_null() {
        return Some(FlowEvent::OriginalDstUnknown);
    }
    // SAFETY: fields of `struct bpf_sock`, readable with these sizes.
    let (family, dst_port, dst4, src_port, src4) = unsafe {
        (
            core::ptr::read_volatile(&(*sk).family),
            core::ptr::read_volatile(&(*sk).dst_port),
            core::ptr::read_volatile(&(*sk).dst_ip4),
            core::ptr::read_volatile(&(*sk).src_port),
            core::ptr::read_volatile(&(*sk).src_ip4),
        )
    };
    // SAFETY: as above.
    let (dst6, src6) = unsafe {
        (
            [
                core::ptr::read_volatile(&(*sk).dst_ip6[0]),
                core::ptr::read_volatile(&(*sk).dst_ip6[1]),
                core::ptr::read_volatile(&(*sk).dst_ip6[2]),
                core::ptr::read_volatile(&(*sk).dst_ip6[3]),
            ],
            [
                core::ptr::read_volatile(&(*sk).src_ip6[0]),
                core::ptr::read_volatile(&(*sk).src_ip6[1]),
                core::ptr::read_volatile(&(*sk).src_ip6[2]),
                core::ptr::read_volatile(&(*sk).src_ip6[3]),
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
    // The peer is the app, this socket's end the proxy.
    let app = addr(dst4, dst6);
    let netns = if SockKey::is_loopback(&app) {
        // SAFETY: the helper accepts a sockopt context.
        unsafe { bpf_get_netns_cookie(so as *mut c_void) }
    } else {
        0
    };
    let key = SockKey {
        netns,
        addr: app,
        proxy: addr(src4, src6),
        // `dst_port` is in network byte order, `src_port` in host order.
        port: u16::from_be(dst_port),
        proxy_port: src_port as u16,
        _pad: [0; 4],
    };
    let Some(entry) = ORIG_DST.get_ptr_mut(key) else {
        return Some(FlowEvent::OriginalDstUnknown);
    };
    // SAFETY: a preallocated LRU element: copied at once, then only its
    // one-byte `answered` flag is written.
    let orig = unsafe { *entry };
    unsafe { core::ptr::write_volatile(&mut (*entry).answered, 1) };
    // A connection reset before the proxy's accept() kept its entry for
    // this answer (see `sock_ops`); nothing will close it again.
    // SAFETY: a 4-byte field of `struct bpf_sock`.
    if unsafe { core::ptr::read_volatile(&(*sk).state) } == BPF_TCP_CLOSE {
        let _ = ORIG_DST.remove(key);
    }
    // SAFETY: the buffer pointers of the context.
    let (start, end) = unsafe {
        (
            (*so).__bindgen_anon_2.optval as *mut u8,
            (*so).__bindgen_anon_3.optval_end as *mut u8,
        )
    };
    let written = if level == SOL_IP {
        if orig.family != AF_INET {
            return Some(FlowEvent::OriginalDstUnknown);
        }
        // struct sockaddr_in: family (host order), port, address, zero.
        let mut out = [0u8; SOCKADDR_IN];
        out[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
        out[2..4].copy_from_slice(&orig.port.to_be_bytes());
        out[4..8].copy_from_slice(&orig.addr[12..16]);
        write(start, end, &out)
    } else {
        // struct sockaddr_in6: family, port, flowinfo, address, scope id.
        let mut out = [0u8; SOCKADDR_IN6];
        out[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        out[2..4].copy_from_slice(&orig.port.to_be_bytes());
        out[8..24].copy_from_slice(&orig.addr);
        write(start, end, &out)
    };
    let Some(len) = written else {
        return Some(FlowEvent::OriginalDstUnknown);
    };
    // SAFETY: `optlen` and `retval` are writable in getsockopt programs.
    unsafe {
        core::ptr::write_volatile(&mut (*so).optlen, len as i32);
        core::ptr::write_volatile(&mut (*so).retval, 0);
    }
    Some(FlowEvent::OriginalDstAnswered)
}

/// Copies `out` to the option buffer if it fits; its length then. The
/// verifier needs the bound checked against `optval_end` with a constant
/// length, hence one instance per size.
#[inline(always)]
fn write<const N: usize>(start: *mut u8, end: *mut u8, out: &[u8; N]) -> Option<usize> {
    // SAFETY: pointer arithmetic only; checked before any access.
    if start.is_null() || unsafe { start.add(N) } > end {
        return None;
    }
    let mut i = 0;
    while i < N {
        // SAFETY: `start + i < start + N <= end`, checked above.
        unsafe { core::ptr::write_volatile(start.add(i), out[i]) };
        i += 1;
    }
    Some(N)
}
