//! Verdict events for the agent: deny, audit and redirect decisions (and
//! allowed ones, when sampling is on) go to the `EVENTS` ring buffer.
//!
//! A flood must not starve the agent or the ring, so each (workload,
//! destination, verdict) key emits at most once per `interval_ms`
//! (`EVENT_LIMIT`, an LRU of last-emit times); what is suppressed, and what
//! a full ring refuses, is counted in `EVENT_STATS`. Events are a view:
//! nothing here changes a verdict, and the counters in `VERDICTS` stay the
//! exact record.
//!
//! The entry points call [`after_skb`] or [`after_sock_addr4`]/`6` with the
//! outcome before concluding. A redirect is reported with the destination
//! the workload named, not the proxy's ([`redirected`]).

use aya_ebpf::{
    bindings::BPF_ANY,
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::{SkBuffContext, SockAddrContext},
};
use egress_common::{Event, EventConfig, EventStat, EventVerdict, Hook, LimitKey, Reason};

use crate::{
    decide::{has_ports, words_to_bytes, Addr, IPPROTO_TCP, IPPROTO_UDP},
    maps::{DNS_ORIG, EVENTS, EVENT_CONFIG, EVENT_LIMIT, EVENT_STATS, REDIRECTED},
    packet, sock_addr,
    verdict::Outcome,
};

/// The endpoints of a connection or packet, as the event reports them.
#[derive(Clone, Copy)]
pub struct Flow {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

/// Reports `outcome` of `cgroup_skb/egress`, if it is reportable; the
/// packet is parsed again only then (deny and audit are rare, sampled
/// allows are opt-in).
#[inline(always)]
pub fn after_skb(ctx: &SkBuffContext, hook: Hook, outcome: &Outcome) {
    let Some((verdict, config)) = reportable(outcome) else {
        return;
    };
    if let Ok(Some(p)) = packet::parse(ctx) {
        let flow = Flow {
            src: p.src,
            dst: p.dst,
            src_port: p.src_port,
            dst_port: p.dst_port,
            proto: p.proto,
        };
        send(hook, verdict, outcome, &flow, &config);
    }
}

/// Reports `outcome` of `lsm_cgroup/socket_create`: no addresses yet, so
/// the event carries only the workload, hook and reason.
#[inline(always)]
pub fn after_socket(hook: Hook, outcome: &Outcome) {
    if let Some((verdict, config)) = reportable(outcome) {
        let flow = Flow {
            src: Addr::V4([0; 4]),
            dst: Addr::V4([0; 4]),
            src_port: 0,
            dst_port: 0,
            proto: 0,
        };
        send(hook, verdict, outcome, &flow, &config);
    }
}

/// Reports `outcome` of `connect4`/`sendmsg4`.
#[inline(always)]
pub fn after_sock_addr4(ctx: &SockAddrContext, hook: Hook, outcome: &Outcome) {
    if outcome.reason == Reason::Redirect {
        redirected(ctx, hook, outcome);
    } else if let Some((verdict, config)) = reportable(outcome) {
        send(hook, verdict, outcome, &flow4(ctx), &config);
    }
}

/// Reports `outcome` of `connect6`/`sendmsg6`.
#[inline(always)]
pub fn after_sock_addr6(ctx: &SockAddrContext, hook: Hook, outcome: &Outcome) {
    if outcome.reason == Reason::Redirect {
        redirected(ctx, hook, outcome);
    } else if let Some((verdict, config)) = reportable(outcome) {
        send(hook, verdict, outcome, &flow6(ctx), &config);
    }
}

/// Reports a redirect with the destination the workload named. By now the
/// address is the proxy's, so the original is read back from where the
/// redirect filed it for `SO_ORIGINAL_DST` (TCP) or the DNS answer (UDP),
/// by socket cookie: nothing has to stay live on the stack across the
/// decision, which keeps the socket hooks under the 512-byte limit.
#[inline(always)]
fn redirected(ctx: &SockAddrContext, hook: Hook, outcome: &Outcome) {
    if outcome.cgroup_id == 0 {
        return;
    }
    // SAFETY: the helper accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // SAFETY: values of successful lookups, copied at once.
    let (addr, port, proto) = if let Some(orig) = unsafe { REDIRECTED.get(cookie) } {
        (orig.addr, orig.port, IPPROTO_TCP)
    } else if let Some(dns) = unsafe { DNS_ORIG.get(cookie) } {
        (dns.server, dns.server_port, IPPROTO_UDP)
    } else {
        return;
    };
    let dst = Addr::from_mapped(addr);
    let flow = Flow {
        src: match dst {
            Addr::V4(_) => Addr::V4([0; 4]),
            Addr::V6(_) => Addr::V6([0; 16]),
        },
        dst,
        src_port: 0,
        dst_port: port,
        proto,
    };
    send(
        hook,
        EventVerdict::Redirect,
        outcome,
        &flow,
        &event_config(),
    );
}

/// The destination an IPv4 `connect()`/`sendmsg()` names. The kernel picks
/// the source after these hooks run (and `msg_src_ip4` is readable in
/// `sendmsg4` only): unknown here.
#[inline(always)]
pub fn flow4(ctx: &SockAddrContext) -> Flow {
    let (ip, port, proto) = sock_addr::named4(ctx);
    let proto = proto as u8;
    Flow {
        src: Addr::V4([0; 4]),
        dst: Addr::V4(ip),
        src_port: 0,
        dst_port: port_of(proto, port),
        proto,
    }
}

/// The destination an IPv6 `connect()`/`sendmsg()` names; see [`flow4`].
#[inline(always)]
pub fn flow6(ctx: &SockAddrContext) -> Flow {
    let (words, port, proto) = sock_addr::named6(ctx);
    let proto = proto as u8;
    Flow {
        src: Addr::V6([0; 16]),
        dst: Addr::V6(words_to_bytes(words)),
        src_port: 0,
        dst_port: port_of(proto, port),
        proto,
    }
}

/// The verdict to report for `outcome`, or `None`: unmanaged sockets are
/// never reported, allowed decisions only one in `sample_allow`.
#[inline(always)]
fn reportable(outcome: &Outcome) -> Option<(EventVerdict, EventConfig)> {
    if outcome.cgroup_id == 0 {
        return None;
    }
    let config = event_config();
    let verdict = if outcome.reason.denies() {
        if outcome.audit_mode {
            EventVerdict::Audit
        } else {
            EventVerdict::Deny
        }
    } else {
        let n = config.sample_allow;
        // SAFETY: plain helper call.
        if n == 0 || unsafe { bpf_get_prandom_u32() } % n != 0 {
            return None;
        }
        EventVerdict::Allow
    };
    Some((verdict, config))
}

#[inline(always)]
fn event_config() -> EventConfig {
    EVENT_CONFIG.get(0).copied().unwrap_or(EventConfig {
        sample_allow: 0,
        interval_ms: EventConfig::DEFAULT_INTERVAL_MS,
    })
}

/// Rate-limits, then writes the event; every outcome is counted.
#[inline(always)]
fn send(hook: Hook, verdict: EventVerdict, outcome: &Outcome, flow: &Flow, config: &EventConfig) {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let dst = flow.dst.mapped();
    if config.interval_ms != 0 {
        let key = LimitKey {
            cgroup_id: outcome.cgroup_id,
            addr: dst,
            port: flow.dst_port,
            proto: flow.proto,
            verdict: verdict as u8,
            _pad: [0; 4],
        };
        let interval = u64::from(config.interval_ms) * 1_000_000;
        match EVENT_LIMIT.get_ptr_mut(key) {
            Some(last) => {
                // SAFETY: a value of a successful lookup; a racing CPU can
                // at worst let one extra event through.
                let since = now.wrapping_sub(unsafe { *last });
                if since < interval {
                    stat(EventStat::Suppressed);
                    return;
                }
                unsafe { *last = now };
            }
            None => {
                let _ = EVENT_LIMIT.insert(key, now, u64::from(BPF_ANY));
            }
        }
    }
    // Written in place in the ring, not built on the stack first: the
    // socket hooks are close to the 512-byte stack limit.
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        stat(EventStat::RingFull);
        return;
    };
    entry.write(Event {
        ts_ns: now,
        cgroup_id: outcome.cgroup_id,
        src: flow.src.mapped(),
        dst,
        rule: outcome.rule,
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        proto: flow.proto,
        verdict: verdict as u8,
        reason: outcome.reason as u8,
        hook: hook as u8,
        family: match flow.dst {
            Addr::V4(_) => 4,
            Addr::V6(_) => 6,
        },
        _pad: [0; 3],
    });
    entry.submit(0);
    stat(EventStat::Emitted);
}

#[inline(always)]
fn stat(which: EventStat) {
    if let Some(slot) = EVENT_STATS.get_ptr_mut(which as u32) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *slot += 1 };
    }
}

/// `user_port` holds the port in network byte order in its first two bytes.
#[inline(always)]
fn port_of(proto: u8, user_port: u32) -> u16 {
    if has_ports(proto) {
        u16::from_be(user_port as u16)
    } else {
        0
    }
}
