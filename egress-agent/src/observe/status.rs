//! `egress-agent status`: what is attached, what is in force, and how full
//! the maps are.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{hub::HubStats, Names};
use crate::dataplane::Counters;
use egress_policy::diagnostic::ObjectRef;

/// What only the kernel side knows; built by the enforcer on request.
#[derive(Clone, Debug, Default)]
pub struct KernelView {
    pub pin_dir: String,
    pub cgroup_root: String,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapFill>,
    pub nft: NftStatus,
    pub events: KernelEvents,
    /// `None` when they could not be read (the error is logged).
    pub counters: Option<Counters>,
    pub names: Names,
    /// `None` unless the agent relays the gateways' DNS.
    pub gateway_dns: Option<GatewayDnsStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgramStatus {
    pub program: String,
    pub link_id: u32,
    pub program_id: u32,
    /// Found pinned and kept (agent restart), rather than attached now.
    pub adopted: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapFill {
    /// What the entries are (a map, or an IPv4 + IPv6 pair of tries).
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NftStatus {
    pub installed: bool,
    pub table: String,
    /// Packets the backstop dropped since its table was last written, by
    /// counter name.
    pub dropped_packets: Vec<(String, u64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The gateways' DNS relay (`run --follow-gateway-dns`), since the agent
/// started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayDnsStatus {
    /// Gateway pods with a relay now.
    pub relays: u64,
    /// Queries answered (forwarded, or SERVFAIL when no server answered).
    pub queries: u64,
    /// Answers for an `allowedHosts` name whose addresses were programmed
    /// before the reply went back.
    pub programmed: u64,
    /// Such answers passed on before their addresses were programmed
    /// (after the relay's wait): a connect may have been refused.
    pub late: u64,
    /// Queries no server answered.
    pub upstream_failures: u64,
}

/// The kernel's event counters and settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelEvents {
    pub emitted: u64,
    /// Not sent: the rate limit.
    pub suppressed: u64,
    /// Not sent: the ring was full.
    pub ring_full: u64,
    /// One allowed decision in this many is reported; 0 = none.
    pub sample_allow: u32,
    pub interval_ms: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    pub workload: String,
    pub cgroup: String,
    /// `None` while its cgroup does not exist (not enforced yet).
    pub cgroup_id: Option<u64>,
    /// "gateway", "proxy" or "workload".
    pub role: String,
    /// "unrestricted" or "isolated".
    pub egress: String,
    /// NetworkPolicies selecting it for Egress.
    pub policies: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastReload {
    /// "applied", "rejected" or "failed".
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Every error, as `check` prints them (warnings are not included).
    pub errors: Vec<String>,
    pub at: String,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationStatus {
    pub number: u64,
    pub loaded_at: String,
}

/// An apply under way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyingStatus {
    /// "reload", "allowedHosts refresh" or "reconcile".
    pub trigger: String,
    pub since: String,
}

/// What stands in for a quarantined object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Held {
    LastGood,
    DenyAll,
    LeftOut,
}

/// An API object that was not used as it is, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantined {
    /// `kubernetes/<resource>/<namespace>/<name>`.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    pub held: Held,
    pub errors: Vec<String>,
    /// The same errors as the field and the reason alone: what a
    /// Kubernetes Event on the object says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
}

/// One error of a quarantined object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// `spec.egress[0].ports`, or none when the whole document is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A pod's cgroup below a guarded root with no policy of its own in force:
/// the kernel gives it the pending policy (loopback and cluster DNS only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingPod {
    /// Relative to the cgroup2 mount.
    pub cgroup: String,
    pub uid: String,
    /// `namespace/name`, when a Pod of this node has that UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Why it has no policy yet.
    pub reason: String,
    /// Since the agent first saw it pending.
    pub seconds: u64,
}

/// The whole answer to `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub audit: bool,
    pub pin_dir: String,
    pub cgroup_root: String,
    pub programs: Vec<ProgramStatus>,
    /// A generation applied by this agent is in force (as `/readyz`).
    /// Not ready with programs adopted: the generation an earlier run
    /// pinned is enforced, but the current policy set was not applied.
    #[serde(default)]
    pub ready: bool,
    pub generation: Option<GenerationStatus>,
    /// An apply under way: the generation above stays in force unless it
    /// succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying: Option<ApplyingStatus>,
    pub last_reload: Option<LastReload>,
    pub reloads: u64,
    pub failed_reloads: u64,
    pub allowed_hosts_refreshes: u64,
    pub workloads: Vec<WorkloadStatus>,
    pub maps: Vec<MapFill>,
    pub nft: NftStatus,
    pub kernel_events: KernelEvents,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_dns: Option<GatewayDnsStatus>,
    pub agent_events: HubStats,
    /// Redirect events received, by workload.
    pub redirect_events: Vec<(String, u64)>,
    /// Time spent in reloads, in all.
    pub reload_seconds_total: f64,
    /// API objects quarantined in the generation in force (see
    /// `agent::quarantine`).
    #[serde(default)]
    pub quarantined: Vec<Quarantined>,
    /// Pods below a guarded root still under the pending policy, oldest
    /// first (see `agent::pending`).
    #[serde(default)]
    pub pending_pods: Vec<PendingPod>,
    /// Applies the kernel refused (eBPF maps or nftables backstop), for a
    /// reload, an allowedHosts refresh or a reconcile. Each left the
    /// generation in force as it was, in both.
    #[serde(default)]
    pub apply_failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply_failure: Option<ApplyFailureStatus>,
}

/// The last apply the kernel refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyFailureStatus {
    /// "reload", "allowedHosts refresh" or "reconcile".
    pub trigger: String,
    pub error: String,
    pub at: String,
    /// The generation that stayed in force; absent when this agent has
    /// applied none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// The text form of `status`.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "egress-agent {} (pid {}){}",
            self.version,
            self.pid,
            if self.audit {
                ", AUDIT MODE: nothing is denied"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "pinned under {}, attached at cgroup {}",
            self.pin_dir, self.cgroup_root
        )?;
        writeln!(f, "programs:")?;
        for p in &self.programs {
            writeln!(
                f,
                "  {:<20} link {:<6} prog {}{}",
                p.program,
                p.link_id,
                p.program_id,
                if p.adopted { " (adopted)" } else { "" }
            )?;
        }
        match &self.generation {
            Some(g) => writeln!(f, "policy: generation {} loaded {}", g.number, g.loaded_at)?,
            None if self.programs.iter().any(|p| p.adopted) => writeln!(
                f,
                "policy: NOT READY: none applied by this agent; the generation pinned by an \
                 earlier run stays in force"
            )?,
            None => writeln!(f, "policy: NOT READY: none in force")?,
        }
        if let Some(a) = &self.applying {
            writeln!(
                f,
                "applying now: {} since {} (what is above stays in force unless it succeeds)",
                a.trigger, a.since
            )?;
        }
        if let Some(r) = &self.last_reload {
            writeln!(
                f,
                "last reload: {} at {} ({} ms); {} reload(s), {} failed",
                r.result, r.at, r.duration_ms, self.reloads, self.failed_reloads
            )?;
            for e in &r.errors {
                writeln!(f, "  {e}")?;
            }
        }
        if let Some(a) = &self.last_apply_failure {
            let kept = a.generation.map_or_else(
                || "no generation of this agent's".to_owned(),
                |g| format!("generation {g}"),
            );
            writeln!(
                f,
                "kernel apply failures: {}; the last at {} ({}), {kept} stayed in force",
                self.apply_failures, a.at, a.trigger
            )?;
            // A failed reload's error is listed just above.
            let listed = self
                .last_reload
                .as_ref()
                .is_some_and(|r| r.errors.contains(&a.error));
            if !listed {
                writeln!(f, "  {}", a.error)?;
            }
        }
        if !self.quarantined.is_empty() {
            writeln!(
                f,
                "quarantined: {} object(s) from the API server (the rest is in force):",
                self.quarantined.len()
            )?;
            for q in &self.quarantined {
                writeln!(f, "  {} (held: {:?})", q.source, q.held)?;
                for e in &q.errors {
                    writeln!(f, "    {e}")?;
                }
            }
        }
        if !self.pending_pods.is_empty() {
            writeln!(
                f,
                "pending pods: {} (below a guarded root with no policy of their own: loopback and cluster DNS only)",
                self.pending_pods.len()
            )?;
            for p in &self.pending_pods {
                let pod = p.pod.as_deref().unwrap_or("(no Pod of this node)");
                writeln!(
                    f,
                    "  {pod} for {}s: {}; cgroup {}",
                    p.seconds, p.reason, p.cgroup
                )?;
            }
        }
        writeln!(
            f,
            "allowedHosts refreshes: {}",
            self.allowed_hosts_refreshes
        )?;
        writeln!(f, "workloads:")?;
        for w in &self.workloads {
            let cgroup = w.cgroup_id.map_or_else(
                || "cgroup missing: not enforced yet".to_owned(),
                |id| format!("cgroup id {id}"),
            );
            write!(
                f,
                "  {:<36} {:<8} {:<12} {cgroup}",
                w.workload, w.role, w.egress
            )?;
            if !w.policies.is_empty() {
                write!(f, "; policies: {}", w.policies.join(", "))?;
            }
            if let Some(r) = &w.redirect {
                write!(f, "; redirect: {r}")?;
            }
            writeln!(f)?;
        }
        writeln!(f, "maps (entries / capacity):")?;
        for m in &self.maps {
            writeln!(f, "  {:<12} {:>8} / {}", m.name, m.entries, m.capacity)?;
        }
        if self.nft.installed {
            let drops: Vec<String> = self
                .nft
                .dropped_packets
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            writeln!(
                f,
                "nftables: tables inet and bridge {} installed; dropped packets: {}",
                self.nft.table,
                drops.join(" ")
            )?;
        } else {
            writeln!(f, "nftables: not installed")?;
        }
        if let Some(e) = &self.nft.error {
            writeln!(f, "  error: {e}")?;
        }
        if let Some(d) = &self.gateway_dns {
            writeln!(
                f,
                "gateway DNS relay: {} relays; {} queries, {} answers programmed before the reply, {} late, {} with no server answering",
                d.relays, d.queries, d.programmed, d.late, d.upstream_failures
            )?;
        }
        let k = &self.kernel_events;
        writeln!(
            f,
            "events: {} emitted, {} suppressed by the rate limit (1 per {} ms per workload+destination), {} lost to a full ring; allow sampling {}",
            k.emitted,
            k.suppressed,
            k.interval_ms,
            k.ring_full,
            if k.sample_allow == 0 { "off".to_owned() } else { format!("1 in {}", k.sample_allow) }
        )?;
        write!(
            f,
            "agent: {} event(s) received, {} buffered of {}",
            self.agent_events.received, self.agent_events.buffered, self.agent_events.capacity
        )
    }
}
