//! Types shared by the eBPF programs and the agent: map names, keys, values
//! and verdict codes.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every
//! type is `#[repr(C)]`, has no implicit padding, and is `Copy`. The `user`
//! feature implements `aya::Pod` for them; the eBPF side never enables it.
//!
//! # The enforcement model in one paragraph
//!
//! The programs are attached once, at a cgroup root. A socket's workload is
//! the deepest ancestor cgroup of the socket (levels listed in
//! [`Config::level_mask`]) that has an entry in `WORKLOADS` whose slot for
//! the active generation ([`map::ACTIVE`]) names a policy. The policy's
//! [`PolicyInfo`] says which checks apply; its allowed destinations live in
//! the `ALLOW_*` tries under keys that start with the policy id, and map to
//! [`PortSet`]s. Every decision increments one [`verdict_index`] counter.
//!
//! Egress rules restrict what a workload *initiates*, as in Kubernetes:
//! replies on flows that came in are allowed ([`Reason::Reply`]). The
//! programs learn those flows from the kernel, never from what the workload
//! sends: `sock_ops` marks accepted TCP sockets in `INBOUND_TCP` once their
//! handshake completes ([`inbound`]), and `cgroup_skb/ingress` records the
//! remote of each UDP datagram a managed socket receives in `INBOUND_UDP`
//! ([`UdpFlowKey`]).
//!
//! The items live in one module per concern (workloads and policies, allow
//! tries and port sets, verdicts, inbound flows, redirects, events) and are
//! all re-exported here: the programs and the agent name them
//! `egress_common::X`, whichever module holds them.
#![cfg_attr(not(test), no_std)]

pub mod capacity;
pub mod host_ports;
pub mod map;
pub mod program;

mod allow;
mod event;
mod flow;
#[cfg(feature = "user")]
mod pod;
mod redirect;
mod verdict;
mod workload;

pub use allow::{
    PolicyAddrV4, PolicyAddrV6, PortEntry, PortSet, EMPTY_SET, MAX_PORT_CHAIN, MAX_PORT_ENTRIES,
    NO_RULE, POLICY_BITS,
};
pub use event::{Event, EventConfig, EventStat, EventVerdict, LimitKey};
pub use flow::{inbound, FlowEvent, UdpFlowKey, UDP_IDLE_NS};
pub use redirect::{capture, CaptureInfo, DnsOrig, OrigDst, SockKey, MAX_CAPTURE_PORTS};
pub use verdict::{verdict_from_index, verdict_index, HitKey, Hook, Reason, VERDICT_SLOTS};
pub use workload::{Config, PolicyInfo, SourceKey, WorkloadSlot, EXEMPT_POLICY, MAX_LEVEL};
