//! One verdict event as operators see it.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use egress_common::{Event, EventVerdict, Hook};
use serde::{Deserialize, Serialize};

use super::{
    names::{reason_from_u8, slug, Names},
    wallclock::{rfc3339, WallClock},
};
use crate::dataplane::program_name;

/// What happened to the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    Audit,
    Redirect,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Audit => "audit",
            Verdict::Redirect => "redirect",
        }
    }
}

impl From<EventVerdict> for Verdict {
    fn from(v: EventVerdict) -> Self {
        match v {
            EventVerdict::Allow => Verdict::Allow,
            EventVerdict::Deny => Verdict::Deny,
            EventVerdict::Audit => Verdict::Audit,
            EventVerdict::Redirect => Verdict::Redirect,
        }
    }
}

/// A decision of the programs (or a count of nftables backstop drops),
/// with names resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictEvent {
    /// RFC 3339, UTC.
    pub time: String,
    /// "namespace/name", or `None` when the cgroup is no workload of the
    /// image in force (or for backstop drops, which have no cgroup).
    pub workload: Option<String>,
    pub cgroup_id: u64,
    /// "tcp", "udp", "sctp", "icmp", or the protocol number.
    pub protocol: String,
    /// Source as the program saw it; `0.0.0.0:0` / `[::]:0` before the
    /// kernel chose one (at `connect()`).
    pub source: String,
    /// The destination the workload named (before any redirect).
    pub destination: String,
    pub verdict: Verdict,
    /// The reason's slug ("gateway-exclusivity", "rule", ...).
    pub reason: String,
    /// What decided, in words: "NetworkPolicy ns/name egress[1]",
    /// "gateway exclusivity", "default deny", ...
    pub rule: String,
    /// The policy object behind the rule, or the reason's slug.
    pub policy: String,
    /// The program: "egress_connect4", "egress_skb", ... or "nftables".
    pub hook: String,
    /// Occurrences this event stands for: 1 for the programs' events; the
    /// packets dropped since the last poll for the nftables backstop.
    pub count: u64,
}

impl VerdictEvent {
    /// Decodes a raw event; `None` if its codes are not this build's.
    pub fn decode(raw: &Event, names: &Names, clock: &WallClock) -> Option<Self> {
        let verdict = Verdict::from(EventVerdict::from_u8(raw.verdict)?);
        let reason = reason_from_u8(raw.reason)?;
        let hook = *Hook::ALL.get(usize::from(raw.hook))?;
        let decider = names.decider(reason, raw.rule);
        let v4 = raw.family == 4;
        Some(Self {
            time: rfc3339(clock.at(raw.ts_ns)),
            workload: names.workload(raw.cgroup_id).map(ToString::to_string),
            cgroup_id: raw.cgroup_id,
            protocol: protocol_name(raw.proto),
            source: endpoint(raw.src, raw.src_port, v4),
            destination: endpoint(raw.dst, raw.dst_port, v4),
            verdict,
            reason: slug(reason).to_owned(),
            rule: decider.description,
            policy: decider.policy,
            hook: program_name(hook).to_owned(),
            count: 1,
        })
    }

    pub fn matches(&self, filter: &Filter) -> bool {
        filter.verdict.is_none_or(|v| v == self.verdict)
            && filter
                .workload
                .as_ref()
                .is_none_or(|w| self.workload.as_deref() == Some(w.as_str()))
    }
}

/// Which events a client wants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// "namespace/name".
    pub workload: Option<String>,
    pub verdict: Option<Verdict>,
}

fn protocol_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

fn endpoint(addr: [u8; 16], port: u16, v4: bool) -> String {
    let v6 = Ipv6Addr::from(addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(a) if v4 => IpAddr::V4(a),
        None if v4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        _ => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, port).to_string()
}

/// One line: time, workload, flow, verdict, and what decided.
impl fmt::Display for VerdictEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} -> {} {} {} by {} ({})",
            self.time,
            self.workload.as_deref().unwrap_or("-"),
            self.source,
            self.destination,
            self.protocol,
            self.verdict.as_str().to_uppercase(),
            self.rule,
            self.hook
        )?;
        if self.count != 1 {
            write!(f, " x{}", self.count)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_common::{Reason, NO_RULE};

    #[test]
    fn decodes_a_denied_connect() {
        let raw = Event {
            ts_ns: 5,
            cgroup_id: 42,
            src: [0; 16],
            dst: egress_common::UdpFlowKey::v4_mapped([203, 0, 113, 10]),
            rule: NO_RULE,
            src_port: 0,
            dst_port: 443,
            proto: 6,
            verdict: EventVerdict::Deny as u8,
            reason: Reason::GatewayExclusivity as u8,
            hook: Hook::Connect4 as u8,
            family: 4,
            _pad: [0; 3],
        };
        let e = VerdictEvent::decode(&raw, &Names::default(), &WallClock::now()).expect("ok");
        assert_eq!(e.destination, "203.0.113.10:443");
        assert_eq!(e.source, "0.0.0.0:0");
        assert_eq!(e.verdict, Verdict::Deny);
        assert_eq!(e.rule, "gateway exclusivity");
        assert_eq!(e.policy, "gateway-exclusivity");
        assert_eq!(e.hook, "egress_connect4");
        assert!(e.matches(&Filter {
            workload: None,
            verdict: Some(Verdict::Deny)
        }));
        assert!(!e.matches(&Filter {
            workload: Some("a/b".into()),
            verdict: None
        }));
    }
}
