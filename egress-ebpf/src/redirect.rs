//! Transparent redirect: which TCP connects a workload's Redirect
//! captures, in istio-iptables' order (as the agent's
//! `compile::capture::captures`), and where they go instead.
//!
//! The original destination is filed by socket cookie at `connect()`
//! (`REDIRECTED`); `sock_ops` moves it under the app's local address once
//! the handshake completes ([`crate::sock_ops`]), where the proxy's
//! `getsockopt(SO_ORIGINAL_DST)` finds it ([`crate::sockopt`]).

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use egress_common::{capture, CaptureInfo, OrigDst, MAX_CAPTURE_PORTS};

use crate::{
    decide::{is_loopback, key_v4, key_v6, Addr, Dst, IPPROTO_TCP},
    maps::{CAPTURES, CAPTURE_V4, CAPTURE_V6, REDIRECTED},
};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Where a captured `dst` goes: the proxy, in the family of `dst` (an
/// IPv4-mapped destination keeps the mapped spelling on its IPv6 socket,
/// which the caller handles). `None`: not captured.
#[inline(always)]
pub fn proxy_for(policy: u32, dst: &Dst) -> Option<Dst> {
    if dst.proto != IPPROTO_TCP {
        return None;
    }
    // SAFETY: CAPTURES is not preallocated; the value is copied at once.
    let info = (unsafe { CAPTURES.get(policy) }).copied()?;
    if !captures(policy, &info, dst) {
        return None;
    }
    let addr = match dst.addr {
        Addr::V4(_) if info.flags & CaptureInfo::PROXY_V4 != 0 => Addr::V4(info.proxy_v4),
        Addr::V6(_) if info.flags & CaptureInfo::PROXY_V6 != 0 => Addr::V6(info.proxy_v6),
        // No proxy address of that family: the connect is not captured
        // (the README's limits).
        _ => return None,
    };
    Some(Dst {
        addr,
        proto: IPPROTO_TCP,
        port: info.proxy_port,
    })
}

/// istio-iptables' `ISTIO_OUTPUT` order; the first match wins.
#[inline(always)]
fn captures(policy: u32, info: &CaptureInfo, dst: &Dst) -> bool {
    if in_ports(&info.exclude_ports, info.exclude_len, dst.port) || is_loopback(&dst.addr) {
        return false;
    }
    // A plain u8 (0: in no range) rather than an `Option`, whose undefined
    // payload in the `None` case the verifier refuses to read.
    let range = match dst.addr {
        Addr::V4(a) => CAPTURE_V4.get(key_v4(policy, a)).copied(),
        Addr::V6(a) => CAPTURE_V6.get(key_v6(policy, a)).copied(),
    }
    .unwrap_or(0);
    if range == capture::EXCLUDE {
        return false;
    }
    in_ports(&info.include_ports, info.include_len, dst.port) || range == capture::INCLUDE
}

#[inline(always)]
fn in_ports(ports: &[u16; MAX_CAPTURE_PORTS], len: u16, port: u16) -> bool {
    let mut i = 0;
    while i < MAX_CAPTURE_PORTS {
        if i >= len as usize {
            break;
        }
        if ports[i] == port {
            return true;
        }
        i += 1;
    }
    false
}

/// Files the original destination under the socket's cookie. A failed
/// insert only costs the proxy its `SO_ORIGINAL_DST` answer.
#[inline(always)]
pub fn remember(ctx: &SockAddrContext, dst: &Dst) {
    // SAFETY: the helper accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    let family = match dst.addr {
        Addr::V4(_) => AF_INET,
        Addr::V6(_) => AF_INET6,
    };
    let orig = OrigDst {
        cookie,
        addr: dst.addr.mapped(),
        port: dst.port,
        family,
        _pad: [0; 4],
    };
    let _ = REDIRECTED.insert(cookie, orig, 0);
}

/// Rewrites an IPv4 socket's `connect()` destination.
#[inline(always)]
pub fn rewrite4(ctx: &SockAddrContext, addr: [u8; 4], port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: `user_ip4` and `user_port` are writable in connect4 with
    // 4-byte stores; both hold network byte order.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes(addr));
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(port.to_be()));
    }
}

/// Rewrites an IPv6 socket's `connect()` destination (`addr` may be
/// IPv4-mapped).
#[inline(always)]
pub fn rewrite6(ctx: &SockAddrContext, addr: [u8; 16], port: u16) {
    let sa = ctx.sock_addr;
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    // SAFETY: `user_ip6[i]` and `user_port` are writable in connect6 with
    // 4-byte stores.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], word(0));
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], word(4));
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], word(8));
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], word(12));
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(port.to_be()));
    }
}
