//! Transparent redirect: which TCP connects a workload's Redirect
//! captures, in istio-iptables' order (as the agent's
//! `compile::capture::captures`), and where they go instead.
//!
//! The original destination is filed by socket cookie at `connect()`
//! (`REDIRECTED`); `sock_ops` moves it under the app's local address (and,
//! for loopback, its network namespace) once the handshake completes
//! ([`crate::sock_ops`]), where the proxy's `getsockopt(SO_ORIGINAL_DST)`
//! finds it ([`crate::sockopt`]). It goes when the proxy's side of the
//! connection closes.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use egress_common::{capture, CaptureInfo, DnsOrig, FlowEvent, OrigDst, MAX_CAPTURE_PORTS};

use crate::{
    decide::{is_loopback, key_v4, key_v6, words_to_bytes, Addr, Dst, IPPROTO_TCP, IPPROTO_UDP},
    maps::{CAPTURES, CAPTURE_V4, CAPTURE_V6, DNS_ORIG, REDIRECTED},
    verdict::count,
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
        // (docs/redirect.md, "Address families").
        _ => return None,
    };
    Some(Dst {
        addr,
        proto: IPPROTO_TCP,
        port: info.proxy_port,
    })
}

/// Where a captured DNS query goes: UDP to port 53, not to loopback, from
/// a workload whose Redirect captures DNS (`dns_port` set), to the proxy
/// address of its family at the DNS port, as Istio's DNS proxying does.
#[inline(always)]
pub fn dns_proxy_for(policy: u32, dst: &Dst) -> Option<Dst> {
    if dst.proto != IPPROTO_UDP || dst.port != 53 || is_loopback(&dst.addr) {
        return None;
    }
    // SAFETY: as in `proxy_for`.
    let info = (unsafe { CAPTURES.get(policy) }).copied()?;
    if info.dns_port == 0 {
        return None;
    }
    let addr = match dst.addr {
        Addr::V4(_) if info.flags & CaptureInfo::PROXY_V4 != 0 => Addr::V4(info.proxy_v4),
        Addr::V6(_) if info.flags & CaptureInfo::PROXY_V6 != 0 => Addr::V6(info.proxy_v6),
        _ => return None,
    };
    Some(Dst {
        addr,
        proto: IPPROTO_UDP,
        port: info.dns_port,
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
        answered: 0,
        state_cb: 0,
        _pad: [0; 2],
    };
    let _ = REDIRECTED.insert(cookie, orig, 0);
}

/// Files the DNS server a UDP socket's query was redirected away from,
/// for [`restore4`]/[`restore6`]. One entry per socket: a socket that asks
/// two servers at once gets the later one's address on both answers.
#[inline(always)]
pub fn remember_dns(ctx: &SockAddrContext, dst: &Dst, proxy: &Dst) {
    // SAFETY: the helper accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    let orig = DnsOrig {
        server: dst.addr.mapped(),
        proxy: proxy.addr.mapped(),
        server_port: dst.port,
        proxy_port: proxy.port,
        _pad: [0; 4],
    };
    if DNS_ORIG.insert(cookie, orig, 0).is_ok() {
        count(FlowEvent::DnsRedirected);
    }
}

/// `recvmsg4`: a datagram from the DNS proxy that answers a redirected
/// query is shown as coming from the server the query was sent to, so
/// that a resolver that checks the source accepts it.
#[inline(always)]
pub fn restore4(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte fields readable in recvmsg4.
    let (ip, port) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).user_ip4),
            core::ptr::read_volatile(&(*sa).user_port),
        )
    };
    let from = Addr::V4(ip.to_ne_bytes());
    if let Some(orig) = dns_reply(ctx, &from, u16::from_be(port as u16)) {
        let a = orig.server;
        rewrite4(ctx, [a[12], a[13], a[14], a[15]], orig.server_port);
        count(FlowEvent::DnsReplyRestored);
    }
}

/// `recvmsg6`: as [`restore4`] for IPv6 sockets (IPv4-mapped included).
#[inline(always)]
pub fn restore6(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte fields readable in recvmsg6, each its own load.
    let (words, port) = unsafe {
        (
            [
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
                core::ptr::read_volatile(&(*sa).user_ip6[3]),
            ],
            core::ptr::read_volatile(&(*sa).user_port),
        )
    };
    let from = Addr::V6(words_to_bytes(words));
    if let Some(orig) = dns_reply(ctx, &from, u16::from_be(port as u16)) {
        rewrite6(ctx, orig.server, orig.server_port);
        count(FlowEvent::DnsReplyRestored);
    }
}

/// The socket's `DNS_ORIG` entry, if the datagram comes from its proxy.
#[inline(always)]
fn dns_reply(ctx: &SockAddrContext, from: &Addr, port: u16) -> Option<DnsOrig> {
    // SAFETY: the helper accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // SAFETY: an LRU element, copied at once.
    let orig = (unsafe { DNS_ORIG.get(cookie) }).copied()?;
    (orig.proxy_port == port && from.same(&Addr::V6(orig.proxy))).then_some(orig)
}

/// Rewrites an IPv4 socket's address: the destination of a `connect()` or
/// `sendmsg()`, the source of a `recvmsg()`.
#[inline(always)]
pub fn rewrite4(ctx: &SockAddrContext, addr: [u8; 4], port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: `user_ip4` and `user_port` are writable in connect4,
    // sendmsg4 and recvmsg4 with 4-byte stores; network byte order.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes(addr));
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(port.to_be()));
    }
}

/// As [`rewrite4`] for an IPv6 socket (`addr` may be IPv4-mapped).
#[inline(always)]
pub fn rewrite6(ctx: &SockAddrContext, addr: [u8; 16], port: u16) {
    let sa = ctx.sock_addr;
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    // SAFETY: `user_ip6[i]` and `user_port` are writable in connect6,
    // sendmsg6 and recvmsg6 with 4-byte stores.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], word(0));
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], word(4));
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], word(8));
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], word(12));
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(port.to_be()));
    }
}
