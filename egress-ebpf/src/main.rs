//! The egress enforcer's eBPF programs.
//!
//! Each entry point is a thin wrapper: it asks a function in [`egress`] or
//! [`connect`] for a [`Verdict`](verdict::Verdict), and [`verdict::apply`]
//! is the single place that counts it and turns it into the kernel's return
//! code.
//!
//! On the host this crate is only a stub with an empty `main`, so that
//! `cargo clippy --workspace` can lint it; the real object is built for
//! `bpfel-unknown-none` by `egress-agent/build.rs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod connect;
mod egress;
mod maps;
mod verdict;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext},
};
use egress_common::Counter;
use verdict::{apply, Verdict};

/// Drops packets, sent by sockets in the cgroup, whose destination is
/// denied. This is the guarantee: it sees every packet, whatever syscall
/// produced it (UDP `sendto`, raw sockets, already-connected flows).
#[cgroup_skb(egress)]
pub fn egress_skb(ctx: SkBuffContext) -> i32 {
    apply(egress::try_egress_skb(&ctx).unwrap_or(Verdict::Deny(Counter::EgressMalformed)))
}

/// Refuses `connect()` on IPv4 sockets to denied destinations, so that the
/// application gets EPERM at once instead of a SYN that times out.
#[cgroup_sock_addr(connect4)]
pub fn egress_connect4(ctx: SockAddrContext) -> i32 {
    apply(connect::connect4_verdict(&ctx))
}

/// Refuses `connect()` on IPv6 sockets to denied destinations, including
/// IPv4-mapped ones, which never reach `connect4`.
#[cgroup_sock_addr(connect6)]
pub fn egress_connect6(ctx: SockAddrContext) -> i32 {
    apply(connect::connect6_verdict(&ctx))
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
