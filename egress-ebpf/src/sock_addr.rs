//! `cgroup/connect4`, `connect6`, `sendmsg4` and `sendmsg6`: the early,
//! explicit refusal. `connect()` (TCP and UDP) and unconnected UDP
//! `sendto()` fail with EPERM at once, instead of a dropped SYN that TCP
//! retries until it times out. The same decision as `cgroup_skb`, from the
//! address the application named, replies included: a UDP server's
//! `sendto()` back to a remote that sent to the same socket is allowed
//! ([`reply::sock_addr_is_reply`]), or a DNS-server-like workload would get
//! EPERM for every answer.
//!
//! `connect4/6` also carry out a Redirect: a captured TCP connect is
//! rewritten to the proxy ([`redirect`]), and the policy is checked on that
//! hop instead of the original destination, as `compile::decide` does.

use aya_ebpf::{helpers::bpf_get_current_ancestor_cgroup_id, programs::SockAddrContext};
use egress_common::{FlowEvent, Reason, NO_RULE};

use crate::{
    decide::{decide, has_ports, words_to_bytes, Addr, Dst, IPPROTO_TCP},
    redirect, reply,
    verdict::{count, Outcome},
    workload::{self, Workload},
};

/// Decides on a `connect()` (`connect` true: TCP and DNS redirects apply)
/// or `sendmsg()` (DNS redirects apply) from an IPv4 socket.
#[inline(always)]
pub fn try_sock_addr4(ctx: &SockAddrContext, connect: bool) -> Outcome {
    let rewrite = |proxy: &Dst| {
        if let Addr::V4(a) = proxy.addr {
            redirect::rewrite4(ctx, a, proxy.port);
        }
    };
    with_workload(ctx, connect, rewrite, || {
        let (ip, port, proto) = named4(ctx);
        dst(Addr::V4(ip), proto, port)
    })
}

/// Decides on a `connect()`/`sendmsg()` from an IPv6 socket.
///
/// A dual-stack socket connecting to `::ffff:a.b.c.d` sends IPv4 packets
/// and the kernel never runs `connect4` for it, so such an address is
/// decided as the IPv4 address it embeds.
///
/// A captured IPv4-mapped destination goes to the IPv4 proxy address,
/// mapped; an IPv6 one to the proxy's IPv6 address.
#[inline(always)]
pub fn try_sock_addr6(ctx: &SockAddrContext, connect: bool) -> Outcome {
    let rewrite = |proxy: &Dst| redirect::rewrite6(ctx, proxy.addr.mapped(), proxy.port);
    with_workload(ctx, connect, rewrite, || {
        let (words, port, proto) = named6(ctx);
        let addr = match ipv4_mapped(words) {
            Some(v4) => Addr::V4(v4),
            None => Addr::V6(words_to_bytes(words)),
        };
        dst(addr, proto, port)
    })
}

/// The destination an IPv4 `connect()`/`sendmsg()` names: the address's
/// bytes, the port word (network order in its first two bytes) and the
/// protocol.
#[inline(always)]
pub fn named4(ctx: &SockAddrContext) -> ([u8; 4], u32, u32) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel guarantees `sock_addr` points to a valid context;
    // each field is read with a 4-byte load, which the verifier allows.
    let (ip, port, proto) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).user_ip4),
            core::ptr::read_volatile(&(*sa).user_port),
            core::ptr::read_volatile(&(*sa).protocol),
        )
    };
    // `user_ip4` holds the address in network byte order, so its in-memory
    // bytes are the address's bytes in order.
    (ip.to_ne_bytes(), port, proto)
}

/// The destination an IPv6 `connect()`/`sendmsg()` names: the address as
/// four network-order words, the port word and the protocol.
#[inline(always)]
pub fn named6(ctx: &SockAddrContext) -> ([u32; 4], u32, u32) {
    let sa = ctx.sock_addr;
    // SAFETY: as in `named4`.
    unsafe {
        (
            [
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
                core::ptr::read_volatile(&(*sa).user_ip6[3]),
            ],
            core::ptr::read_volatile(&(*sa).user_port),
            core::ptr::read_volatile(&(*sa).protocol),
        )
    }
}

/// Runs the ancestor walk on the current task's cgroup, then `dst` and the
/// decision for a managed one; a denied UDP destination may be a reply, as
/// in `cgroup_skb` (and only then, `NoPolicy` excepted). A destination the
/// workload's Redirect captures (a TCP connect, or with `captureDNS` a UDP
/// query to port 53) is decided as the hop to the proxy and, if that is
/// allowed, rewritten to it with `rewrite`.
#[inline(always)]
fn with_workload(
    ctx: &SockAddrContext,
    connect: bool,
    rewrite: impl FnOnce(&Dst),
    dst: impl FnOnce() -> Dst,
) -> Outcome {
    // SAFETY: plain helper call; returns 0 for levels deeper than the
    // current cgroup.
    let found =
        workload::lookup(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) });
    let Some(Workload { cgroup_id, policy }) = found.workload else {
        return Outcome::unmanaged(found.audit);
    };
    let dst = dst();
    // A UDP `connect()` to port 53 is captured too: glibc's resolver
    // connects its socket, then reads with `recvfrom()`.
    let proxy = if connect {
        redirect::proxy_for(policy, &dst).or_else(|| redirect::dns_proxy_for(policy, &dst))
    } else {
        redirect::dns_proxy_for(policy, &dst)
    };
    if let Some(proxy) = proxy {
        let hop = decide(policy, &proxy);
        let reason = if hop.reason.denies() {
            // Denied hop: no rewrite; in audit mode the connect or query
            // goes where the application asked.
            hop.reason
        } else {
            rewrite(&proxy);
            if proxy.proto == IPPROTO_TCP {
                redirect::remember(ctx, &dst);
            } else {
                redirect::remember_dns(ctx, &dst, &proxy);
            }
            Reason::Redirect
        };
        return Outcome {
            reason,
            rule: hop.rule,
            cgroup_id,
            audit_mode: found.audit,
        };
    }
    let mut decision = decide(policy, &dst);
    // As in `cgroup_skb`: a UDP flow that came in from outside the cluster
    // is no way out for a workload that may not leave it.
    if decision.reason == Reason::GatewayExclusivity {
        if reply::sock_addr_is_reply(ctx, &dst) {
            count(FlowEvent::UdpReplyOutsideCluster);
        }
    } else if decision.reason.denies()
        && decision.reason != Reason::NoPolicy
        && reply::sock_addr_is_reply(ctx, &dst)
    {
        decision.reason = Reason::Reply;
        decision.rule = NO_RULE;
    }
    Outcome {
        reason: decision.reason,
        rule: decision.rule,
        cgroup_id,
        audit_mode: found.audit,
    }
}

/// `user_port` holds the port in network byte order in its first two bytes.
#[inline(always)]
fn dst(addr: Addr, proto: u32, user_port: u32) -> Dst {
    let proto = proto as u8;
    let port = if has_ports(proto) {
        u16::from_be(user_port as u16)
    } else {
        0
    };
    Dst { addr, proto, port }
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
