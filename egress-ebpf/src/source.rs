//! Anti-spoofing: whether a packet's source is the workload's own.
//!
//! Only the workload can tell the kernel nothing about this, so the agent
//! does: each workload that lists its addresses (and is neither a gateway
//! nor a proxy) has `PolicyInfo::SOURCE_CHECK` and one `SOURCES` entry per
//! address under its cgroup id. Sockets pick their source freely with raw
//! sockets (`IP_HDRINCL`), `IP_TRANSPARENT`/`IP_FREEBIND` + `IP_PKTINFO`,
//! or an address a pod with NET_ADMIN adds to its own interface; none of
//! those sources is in `SOURCES`.
//!
//! Always accepted: loopback sources (they never leave the host) and IPv6
//! link-local ones (routers never forward them off the link). Workloads
//! without listed addresses are not checked: the kernel has no other
//! record of what they own (see docs/security.md).

use egress_common::{PolicyInfo, SourceKey};

use crate::{
    decide::{is_loopback, Addr},
    maps::{POLICIES, SOURCES},
};

/// Whether `src` may be the source of a packet of the workload `cgroup_id`
/// under `policy`.
#[inline(always)]
pub fn is_own(policy: u32, cgroup_id: u64, src: &Addr) -> bool {
    // SAFETY: POLICIES is not preallocated; the flags are copied at once.
    // A missing policy is `NoPolicy`, denied by the decision right after.
    let flags = unsafe { POLICIES.get(policy) }.map_or(0, |i| i.flags);
    if flags & PolicyInfo::SOURCE_CHECK == 0 || is_loopback(src) || is_link_local(src) {
        return true;
    }
    let key = SourceKey {
        cgroup_id,
        addr: src.mapped(),
    };
    SOURCES.get_ptr(key).is_some()
}

/// fe80::/10.
#[inline(always)]
fn is_link_local(addr: &Addr) -> bool {
    match addr {
        Addr::V6(a) => a[0] == 0xfe && a[1] & 0xc0 == 0x80,
        Addr::V4(_) => false,
    }
}
