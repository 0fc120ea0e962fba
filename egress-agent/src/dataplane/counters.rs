//! Verdict counters: how often each program decided what, and why; and
//! per workload, per rule. Also what the recording programs (`sockops`,
//! `cgroup_skb/ingress`) did, which are not verdicts.

use std::collections::BTreeMap;

use egress_common::{
    map, verdict_from_index, verdict_index, FlowEvent, Hook, Reason, NO_RULE, VERDICT_SLOTS,
};

use super::{
    maps::{per_cpu_total, read, Maps},
    DataplaneError,
};

/// A kind of verdict: where, why, and whether audit mode let a would-deny
/// through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VerdictKind {
    pub hook: Hook,
    pub reason: Reason,
    /// A would-deny allowed by audit mode.
    pub audit: bool,
}

impl VerdictKind {
    pub const fn new(hook: Hook, reason: Reason) -> Self {
        Self {
            hook,
            reason,
            audit: false,
        }
    }

    pub const fn audited(hook: Hook, reason: Reason) -> Self {
        Self {
            hook,
            reason,
            audit: true,
        }
    }

    /// The kind that `VERDICTS` counts at `index` (and a `RULE_HITS` key
    /// names), if any.
    fn from_index(index: u32) -> Option<Self> {
        let (hook, reason, audit) = verdict_from_index(index)?;
        Some(Self {
            hook,
            reason,
            audit,
        })
    }

    /// Whether the connection or packet was let through.
    pub const fn allowed(&self) -> bool {
        self.audit || !self.reason.denies()
    }
}

/// How often one workload's traffic was decided one way by one rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleHit {
    /// The workload's cgroup id.
    pub cgroup_id: u64,
    /// For [`Reason::Rule`], an index into
    /// [`MapImage::rules`](super::MapImage::rules); for
    /// [`Reason::GatewayHost`], into
    /// [`MapImage::gateway_hosts`](super::MapImage::gateway_hosts); `None`
    /// when no rule decided (default deny, loopback, ...).
    pub rule: Option<u32>,
    pub verdict: VerdictKind,
    pub count: u64,
}

/// A snapshot of `VERDICTS` and `RULE_HITS`, summed over CPUs. Counters
/// live in pinned maps: they count since the maps were created, across
/// agent restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    verdicts: BTreeMap<VerdictKind, u64>,
    hits: Vec<RuleHit>,
    flows: BTreeMap<FlowEvent, u64>,
}

impl Counters {
    /// One `VERDICTS` counter, without reading the others (nor
    /// `RULE_HITS`, a hash map walked entry by entry).
    pub(super) fn read_one(maps: &Maps, kind: VerdictKind) -> Result<u64, DataplaneError> {
        let index = verdict_index(kind.hook, kind.reason, kind.audit);
        per_cpu_total(&maps.verdicts, map::VERDICTS, index)
    }

    pub(super) fn read(maps: &Maps) -> Result<Self, DataplaneError> {
        let mut verdicts = BTreeMap::new();
        for index in 0..VERDICT_SLOTS {
            let Some(kind) = VerdictKind::from_index(index) else {
                continue;
            };
            let total = per_cpu_total(&maps.verdicts, map::VERDICTS, index)?;
            if total != 0 {
                verdicts.insert(kind, total);
            }
        }
        let mut hits = Vec::new();
        for entry in maps.rule_hits.iter() {
            let (key, per_cpu) = entry.map_err(|source| read(map::RULE_HITS, source))?;
            let Some(verdict) = VerdictKind::from_index(key.verdict) else {
                continue;
            };
            hits.push(RuleHit {
                cgroup_id: key.cgroup_id,
                rule: (key.rule != NO_RULE).then_some(key.rule),
                verdict,
                count: per_cpu.iter().sum(),
            });
        }
        hits.sort();
        let mut flows = BTreeMap::new();
        for index in 0..FlowEvent::SLOTS {
            let Some(event) = FlowEvent::from_index(index) else {
                continue;
            };
            let total = per_cpu_total(&maps.flow_events, map::FLOW_EVENTS, index)?;
            if total != 0 {
                flows.insert(event, total);
            }
        }
        Ok(Self {
            verdicts,
            hits,
            flows,
        })
    }

    /// How often the recording programs did `event`.
    pub fn flow(&self, event: FlowEvent) -> u64 {
        self.flows.get(&event).copied().unwrap_or(0)
    }

    /// Every non-zero flow event counter.
    pub fn flows(&self) -> impl Iterator<Item = (FlowEvent, u64)> + '_ {
        self.flows.iter().map(|(e, n)| (*e, *n))
    }

    /// How many verdicts of this kind the programs returned.
    pub fn get(&self, kind: VerdictKind) -> u64 {
        self.verdicts.get(&kind).copied().unwrap_or(0)
    }

    /// Enforced verdicts for `reason` at `hook`.
    pub fn enforced(&self, hook: Hook, reason: Reason) -> u64 {
        self.get(VerdictKind::new(hook, reason))
    }

    /// Would-deny verdicts for `reason` at `hook` that audit mode allowed.
    pub fn audited(&self, hook: Hook, reason: Reason) -> u64 {
        self.get(VerdictKind::audited(hook, reason))
    }

    /// Verdicts for `reason` at every hook, enforced or audited.
    pub fn total(&self, reason: Reason) -> u64 {
        self.verdicts
            .iter()
            .filter(|(k, _)| k.reason == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// Every non-zero verdict counter.
    pub fn verdicts(&self) -> impl Iterator<Item = (VerdictKind, u64)> + '_ {
        self.verdicts.iter().map(|(k, n)| (*k, *n))
    }

    /// Every (workload, rule, verdict) counter, sorted.
    pub fn hits(&self) -> &[RuleHit] {
        &self.hits
    }

    /// Hits of one workload for one verdict kind, by rule.
    pub fn hits_of(&self, cgroup_id: u64, kind: VerdictKind) -> BTreeMap<Option<u32>, u64> {
        let mut out = BTreeMap::new();
        for hit in self
            .hits
            .iter()
            .filter(|h| h.cgroup_id == cgroup_id && h.verdict == kind)
        {
            *out.entry(hit.rule).or_default() += hit.count;
        }
        out
    }
}
