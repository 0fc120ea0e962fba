//! The egress enforcer's eBPF programs.
//!
//! Attached once, at the agent's cgroup root, they find the socket's
//! workload by walking its ancestor cgroups ([`workload`]), decide with the
//! workload's policy of the active generation ([`decide`]), and
//! [`verdict::conclude`] is the single place that counts the outcome and
//! turns it into the kernel's return code. Each entry point is a thin
//! wrapper around a `try_*` function of [`skb`] or [`sock_addr`].
//!
//! Two more programs decide nothing and never refuse: they record the flows
//! a workload did not initiate, whose replies the deciding programs allow
//! ([`reply`]): `sock_ops` marks accepted TCP sockets ([`sock_ops`]), and
//! `cgroup_skb/ingress` records the remotes that send to managed UDP
//! sockets ([`ingress`]). What they record or fail to record, and every
//! packet `cgroup_skb/ingress` sees, is counted in `FLOW_EVENTS`.
//!
//! On the host this crate is only a stub with an empty `main`, so that
//! `cargo clippy --workspace` can lint it; the real object is built for
//! `bpfel-unknown-none` by `egress-agent/build.rs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod decide;
mod events;
mod ingress;
mod maps;
mod packet;
mod redirect;
mod reply;
mod skb;
mod sock_addr;
mod sock_ops;
mod socket;
mod sockopt;
mod source;
mod verdict;
mod workload;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock_addr, cgroup_sockopt, lsm_cgroup, sock_ops},
    programs::{LsmContext, SkBuffContext, SockAddrContext, SockOpsContext, SockoptContext},
};
use egress_common::Hook;
use verdict::{conclude, count};

/// Drops packets that the sending socket's workload may not send. This is
/// the guarantee: it sees every packet, whatever syscall produced it.
#[cgroup_skb(egress)]
pub fn egress_skb(ctx: SkBuffContext) -> i32 {
    let outcome = skb::try_egress_skb(&ctx);
    events::after_skb(&ctx, Hook::Skb, &outcome);
    if outcome.reason.denies() {
        // Debug logging through aya-log: off unless the agent runs with
        // `--ebpf-log debug` (a load-time global; nothing is formatted
        // when off).
        aya_log_ebpf::debug!(
            &ctx,
            "cgroup_skb: cgroup {} reason {} rule {} audit {}",
            outcome.cgroup_id,
            outcome.reason as u8,
            outcome.rule,
            outcome.audit_mode as u8
        );
    }
    conclude(Hook::Skb, outcome)
}

/// Refuses `connect()` on IPv4 sockets (TCP and UDP) with EPERM, or
/// rewrites a captured TCP connect to the Redirect's proxy.
#[cgroup_sock_addr(connect4)]
pub fn egress_connect4(ctx: SockAddrContext) -> i32 {
    let outcome = sock_addr::try_sock_addr4(&ctx, true);
    events::after_sock_addr4(&ctx, Hook::Connect4, &outcome);
    conclude(Hook::Connect4, outcome)
}

/// Refuses `connect()` on IPv6 sockets, including to IPv4-mapped addresses,
/// which never reach `connect4`.
#[cgroup_sock_addr(connect6)]
pub fn egress_connect6(ctx: SockAddrContext) -> i32 {
    let outcome = sock_addr::try_sock_addr6(&ctx, true);
    events::after_sock_addr6(&ctx, Hook::Connect6, &outcome);
    conclude(Hook::Connect6, outcome)
}

/// Refuses unconnected UDP `sendto()`/`sendmsg()` on IPv4 sockets.
#[cgroup_sock_addr(sendmsg4)]
pub fn egress_sendmsg4(ctx: SockAddrContext) -> i32 {
    let outcome = sock_addr::try_sock_addr4(&ctx, false);
    events::after_sock_addr4(&ctx, Hook::Sendmsg4, &outcome);
    conclude(Hook::Sendmsg4, outcome)
}

/// Refuses unconnected UDP `sendto()`/`sendmsg()` on IPv6 sockets.
#[cgroup_sock_addr(sendmsg6)]
pub fn egress_sendmsg6(ctx: SockAddrContext) -> i32 {
    let outcome = sock_addr::try_sock_addr6(&ctx, false);
    events::after_sock_addr6(&ctx, Hook::Sendmsg6, &outcome);
    conclude(Hook::Sendmsg6, outcome)
}

/// Refuses packet sockets (`AF_PACKET`) with EPERM for managed workloads
/// that may not have them; every other socket is left alone. Same return
/// convention as the cgroup hooks: 1 allows, 0 fails the call with EPERM.
#[lsm_cgroup(hook = "socket_create")]
pub fn egress_socket_create(ctx: LsmContext) -> i32 {
    let outcome = socket::try_socket_create(&ctx);
    events::after_socket(Hook::SockCreate, &outcome);
    conclude(Hook::SockCreate, outcome)
}

/// Refuses `IP_TRANSPARENT`/`IPV6_TRANSPARENT` with EPERM for managed
/// workloads that are neither gateways nor proxies; every other option
/// goes to the kernel untouched (1) and is not counted.
#[cgroup_sockopt(setsockopt)]
pub fn egress_setsockopt(ctx: SockoptContext) -> i32 {
    if !sockopt::is_transparent(&ctx) {
        return 1;
    }
    let outcome = sockopt::try_transparent();
    events::after_socket(Hook::SetSockopt, &outcome);
    conclude(Hook::SetSockopt, outcome)
}

/// Marks accepted TCP sockets inbound, and unmarks them when they close.
/// The return value of these callbacks is ignored by the kernel.
#[sock_ops]
pub fn egress_sock_ops(ctx: SockOpsContext) -> u32 {
    if let Some(event) = sock_ops::on_sock_ops(&ctx) {
        count(event);
    }
    1
}

/// Records the UDP flows that reach managed sockets. Always lets the packet
/// in (1): this enforcer restricts egress only.
#[cgroup_skb(ingress)]
pub fn egress_skb_ingress(ctx: SkBuffContext) -> i32 {
    count(ingress::record(&ctx));
    1
}

/// Gives DNS replies from the proxy the source of the server the query
/// was meant for (1: a receive is never refused).
#[cgroup_sock_addr(recvmsg4)]
pub fn egress_recvmsg4(ctx: SockAddrContext) -> i32 {
    redirect::restore4(&ctx);
    1
}

/// As `egress_recvmsg4`, for IPv6 sockets.
#[cgroup_sock_addr(recvmsg6)]
pub fn egress_recvmsg6(ctx: SockAddrContext) -> i32 {
    redirect::restore6(&ctx);
    1
}

/// Answers `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` on the proxy's
/// accepted sockets of redirected connections; leaves every other
/// `getsockopt()` as the kernel answered it (1: never refused).
#[cgroup_sockopt(getsockopt)]
pub fn egress_getsockopt(ctx: SockoptContext) -> i32 {
    if let Some(event) = sockopt::original_dst(&ctx) {
        count(event);
    }
    1
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic, so this is never
    // executed; it only satisfies `no_std`.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
