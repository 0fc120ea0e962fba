//! What `status` and `/metrics` show of the kernel side, read beside the
//! applies.

use std::sync::{atomic::Ordering, Arc, PoisonError, RwLock};

use tracing::warn;

use super::super::reload::Observer;
use crate::{
    dataplane::{self, nft::Backstop, DataplaneReader},
    observe::{self, status::GatewayDnsStatus, KernelView},
    resolve::relay::RelayStats,
};
use egress_common::{capacity, EventConfig, EventStat};

/// The [`Observer`] of a [`KernelEnforcer`](super::KernelEnforcer): it
/// reads the pinned maps through handles of its own and runs nft for the
/// backstop's counters, so a `status` query is answered while the
/// enforcer writes a new generation on the apply worker.
pub(super) struct KernelObserver {
    pub(super) dataplane: DataplaneReader,
    pub(super) backstop: Option<Backstop>,
    pub(super) events: EventConfig,
    /// The names of the image in force, which each apply replaces.
    pub(super) names: Arc<RwLock<observe::Names>>,
    pub(super) relays: Arc<RelayStats>,
}

impl KernelObserver {
    fn gateway_dns(&self) -> Option<GatewayDnsStatus> {
        let s = &self.relays;
        let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        s.enabled.load(Ordering::Relaxed).then(|| GatewayDnsStatus {
            relays: read(&s.relays),
            queries: read(&s.queries),
            programmed: read(&s.programmed),
            late: read(&s.late),
            upstream_failures: read(&s.upstream_failures),
        })
    }
}

impl Observer for KernelObserver {
    fn view(&self) -> KernelView {
        let dp = &self.dataplane;
        let programs = dp
            .links()
            .iter()
            .map(|l| observe::status::ProgramStatus {
                program: dataplane::program_name(l.hook).to_owned(),
                link_id: l.link_id,
                program_id: l.program_id,
                adopted: l.adopted,
            })
            .collect();
        let mut maps = Vec::new();
        let fill = |name: &str, entries: usize, capacity: u32| observe::status::MapFill {
            name: name.to_owned(),
            entries: entries as u64,
            capacity: u64::from(capacity),
        };
        match dp.entry_counts() {
            Ok(c) => maps.extend([
                fill("workloads", c.workloads, capacity::WORKLOADS),
                fill("policies", c.policies, capacity::POLICIES),
                fill("allow", c.allow, 2 * dp.capacities().allow),
                fill("port_sets", c.port_sets, capacity::PORT_SETS),
                fill("cluster", c.cluster, 2 * capacity::CLUSTER),
                fill("gateway", c.gateway, 2 * capacity::GATEWAY),
                fill("host_ports", c.host_ports, capacity::HOST_PORTS),
                fill("captures", c.captures, capacity::POLICIES),
                fill("capture", c.capture, 2 * capacity::CAPTURE),
            ]),
            Err(e) => warn!(error = %e, "cannot count map entries"),
        }
        let flows = dp.flow_entries();
        maps.push(fill(
            "inbound_tcp",
            flows.inbound_tcp,
            capacity::INBOUND_TCP,
        ));
        maps.push(fill(
            "inbound_udp",
            flows.inbound_udp,
            capacity::INBOUND_UDP,
        ));
        maps.extend([
            fill("redirected", flows.redirected, capacity::REDIRECTED),
            fill("orig_dst", flows.orig_dst, capacity::ORIG_DST),
            fill("dns_orig", flows.dns_orig, capacity::DNS_ORIG),
        ]);
        let counters = dp
            .counters()
            .inspect_err(|e| warn!(error = %e, "cannot read the verdict counters"))
            .ok();
        if let Some(c) = &counters {
            maps.push(fill("rule_hits", c.hits().len(), capacity::RULE_HITS));
        }
        let mut events = observe::status::KernelEvents {
            sample_allow: self.events.sample_allow,
            interval_ms: self.events.interval_ms,
            ..Default::default()
        };
        match dp.event_stats() {
            Ok(stats) => {
                for (stat, n) in stats {
                    match stat {
                        EventStat::Emitted => events.emitted = n,
                        EventStat::Suppressed => events.suppressed = n,
                        EventStat::RingFull => events.ring_full = n,
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read the event counters"),
        }
        let nft = match &self.backstop {
            None => observe::status::NftStatus {
                installed: false,
                table: dataplane::nft::TABLE.to_owned(),
                ..Default::default()
            },
            Some(backstop) => match backstop.counters() {
                Ok(counts) => observe::status::NftStatus {
                    installed: true,
                    table: dataplane::nft::TABLE.to_owned(),
                    dropped_packets: counts
                        .iter()
                        .map(|(c, v)| (c.name().to_owned(), v.packets))
                        .collect(),
                    error: None,
                },
                Err(e) => observe::status::NftStatus {
                    installed: false,
                    table: dataplane::nft::TABLE.to_owned(),
                    dropped_packets: vec![],
                    error: Some(crate::errors::format_chain(&e)),
                },
            },
        };
        KernelView {
            pin_dir: dp.pin_dir().display().to_string(),
            cgroup_root: dp.cgroup_root().display().to_string(),
            programs,
            maps,
            nft,
            events,
            counters,
            names: self
                .names
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            gateway_dns: self.gateway_dns(),
        }
    }
}
