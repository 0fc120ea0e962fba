//! Plan → map contents for one generation: a pure function, unit-tested
//! without root.
//!
//! The image uses its own numbering: port set `n` is `port_sets()[n - 1]`
//! (0 is the empty set, a hole), and a rule id is an index into
//! [`MapImage::rules`]. [`Dataplane::apply`](super::Dataplane::apply) maps
//! port sets and workloads to fresh kernel ids for each generation; rule
//! ids go to the kernel unchanged, so counters read back with the image's
//! [`MapImage::rules`].

mod capture;
mod host_tables;
mod hosts;
mod limits;
mod ports;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use egress_common::{host_ports, PolicyInfo, PortEntry};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::ImageError;
use crate::compile::{prefix::PrefixTable, Egress, Guard, Plan, RuleRef, WorkloadPlan};
pub use capture::ImageCapture;
use egress_policy::model::ObjectId;
pub use host_tables::HostTable;
use host_tables::HostTables;
pub use hosts::GatewayHost;
pub use limits::{port_overflows, PortOverflow, MAX_PORTS_PER_PREFIX};
use ports::PortSets;

/// One workload's share of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageWorkload {
    pub id: ObjectId,
    /// The cgroup as the workload names it: relative to the cgroup2 mount,
    /// absolute in the hierarchy (`/a/b`), or a full path under the mount.
    pub cgroup: String,
    /// The cgroup's id (the inode number of its directory).
    pub cgroup_id: u64,
    /// `PolicyInfo` flags.
    pub flags: u32,
    /// Flattened NetworkPolicy prefix table: prefix → image port set; or,
    /// with `host_ports::ALLOW_FLAG`, host → image host table (a node
    /// address with NodePorts, see [`HostTable`]). A workload that is not
    /// isolated has host entries only, read for gateway exclusivity alone.
    pub allow_v4: Vec<(Ipv4Net, u32)>,
    pub allow_v6: Vec<(Ipv6Net, u32)>,
    /// REGISTRY_ONLY gateways: allowed host prefix → image port set.
    pub gateway_v4: Vec<(Ipv4Net, u32)>,
    pub gateway_v6: Vec<(Ipv6Net, u32)>,
    /// The workload's Redirect, when it is captured.
    pub capture: Option<ImageCapture>,
    /// An exempt guard ([`crate::compile::Guard::Exempt`]): written as
    /// `egress_common::EXEMPT_POLICY` in both slots, with no policy.
    pub exempt: bool,
    /// Its own addresses, canonical (IPv4-mapped as IPv4), when the kernel
    /// checks its sources (`PolicyInfo::SOURCE_CHECK`); empty otherwise.
    pub sources: Vec<IpAddr>,
}

impl ImageWorkload {
    /// What the kernel holds under this workload's policy id, apart from
    /// the id itself. Workloads with equal tables share one policy (the pods
    /// of one Deployment are selected by the same NetworkPolicies), so a
    /// large table is in the maps once, not once per pod; counters and
    /// events are keyed by cgroup, so they stay per workload.
    pub fn tables(&self) -> Tables<'_> {
        Tables {
            flags: self.flags,
            allow_v4: &self.allow_v4,
            allow_v6: &self.allow_v6,
            gateway_v4: &self.gateway_v4,
            gateway_v6: &self.gateway_v6,
            capture: self.capture.as_ref(),
        }
    }
}

/// See [`ImageWorkload::tables`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tables<'a> {
    flags: u32,
    allow_v4: &'a [(Ipv4Net, u32)],
    allow_v6: &'a [(Ipv6Net, u32)],
    gateway_v4: &'a [(Ipv4Net, u32)],
    gateway_v6: &'a [(Ipv6Net, u32)],
    capture: Option<&'a ImageCapture>,
}

/// What one generation of the maps holds, before kernel ids are assigned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapImage {
    rules: Vec<RuleRef>,
    hosts: Vec<GatewayHost>,
    port_sets: Vec<Vec<PortEntry>>,
    workloads: Vec<ImageWorkload>,
    cluster_v4: Vec<Ipv4Net>,
    cluster_v6: Vec<Ipv6Net>,
    host_tables: Vec<HostTable>,
    cluster_port_hosts: BTreeMap<IpAddr, u8>,
    has_cluster: bool,
    audit: bool,
    unplaced: Vec<ObjectId>,
    unresolved: Vec<String>,
}

impl MapImage {
    /// Builds the image of `plan`.
    ///
    /// `cgroup_ids` gives each workload's cgroup id (see
    /// [`super::cgroup_ids`]); a workload without one has no cgroup yet and
    /// is left out (listed by [`MapImage::unplaced`]). `resolved` gives the
    /// addresses of REGISTRY_ONLY gateways' DNS hosts; a name without
    /// addresses allows nothing (listed by [`MapImage::unresolved`]).
    /// `audit`: would-deny verdicts are counted and allowed.
    ///
    /// Fails when a port set has more than
    /// [`MAX_PORT_ENTRIES`](egress_common::MAX_PORT_ENTRIES) entries after
    /// redundant entries are dropped, or when two workloads share a cgroup
    /// id. Cgroup levels depend on the mount and are checked by
    /// [`Dataplane::apply`](super::Dataplane::apply).
    pub fn build(
        plan: &Plan,
        cgroup_ids: &BTreeMap<ObjectId, u64>,
        resolved: &BTreeMap<String, Vec<IpAddr>>,
        audit: bool,
    ) -> Result<Self, ImageError> {
        let mut image = Self {
            audit,
            has_cluster: plan.cluster.is_some(),
            ..Self::default()
        };
        let edge = host_tables::Edge::of(plan);
        if let Some(cluster) = &plan.cluster {
            for net in &cluster.cidrs {
                // A flagged host's own entry is written with its flag.
                if net.prefix_len() == net.max_prefix_len() && edge.hosts.contains_key(&net.addr())
                {
                    continue;
                }
                match net.trunc() {
                    IpNet::V4(n) => image.cluster_v4.push(n),
                    IpNet::V6(n) => image.cluster_v6.push(n),
                }
            }
        }
        let mut rule_ids: HashMap<RuleRef, u32> = HashMap::new();
        let mut sets = PortSets::default();
        let mut by_cgroup: HashMap<u64, ObjectId> = HashMap::new();
        image.cluster_port_hosts = edge.hosts.clone();
        let mut host_tables = HostTables::default();
        let mut unresolved = BTreeSet::new();
        for w in &plan.workloads {
            let Some(&cgroup_id) = cgroup_ids.get(&w.id) else {
                image.unplaced.push(w.id.clone());
                continue;
            };
            if let Some(first) = by_cgroup.insert(cgroup_id, w.id.clone()) {
                return Err(ImageError::SharedCgroup {
                    first,
                    second: w.id.clone(),
                    cgroup_id,
                });
            }
            let mut iw = ImageWorkload {
                id: w.id.clone(),
                cgroup: w.cgroup.trim().to_owned(),
                cgroup_id,
                flags: flags(plan, w),
                allow_v4: Vec::new(),
                allow_v6: Vec::new(),
                gateway_v4: Vec::new(),
                gateway_v6: Vec::new(),
                capture: None,
                exempt: w.guard == Some(Guard::Exempt),
                sources: Vec::new(),
            };
            if source_checked(w) {
                iw.sources = w.addresses.iter().map(|a| a.to_canonical()).collect();
                iw.sources.sort();
                iw.sources.dedup();
            }
            if iw.exempt {
                image.workloads.push(iw);
                continue;
            }
            if let Some(c) = &w.capture {
                let built = capture::build(c).map_err(|e| ImageError::TooManyCapturePorts {
                    workload: w.id.clone(),
                    field: e.field,
                    len: e.len,
                })?;
                iw.capture = Some(built);
            }
            let empty = PrefixTable::default();
            let (isolated, table) = match &w.egress {
                Egress::Isolated { table, .. } => (true, table),
                Egress::Unrestricted => (false, &empty),
            };
            // Each of the table's sets, once, as an image port set.
            let mut local: HashMap<u32, u32> = HashMap::new();
            let mut image_set = |set: u32, prefix: IpNet| -> Result<u32, ImageError> {
                if let Some(id) = local.get(&set) {
                    return Ok(*id);
                }
                let allows = table.sets.get(set as usize).map_or(&[][..], Vec::as_slice);
                let entries = allows
                    .iter()
                    .map(|a| {
                        PortEntry::new(
                            rule_id(&mut image.rules, &mut rule_ids, &a.rule),
                            a.protocol.map_or(0, |p| p.number()),
                            a.ports.start(),
                            a.ports.end(),
                        )
                    })
                    .collect();
                let id = sets
                    .intern(entries)
                    .map_err(|entries| ImageError::PortSetTooLarge {
                        workload: w.id.clone(),
                        table: "NetworkPolicy egress",
                        prefix,
                        entries,
                    })?;
                local.insert(set, id);
                Ok(id)
            };
            // Addresses with ports of their own: NodePorts judged for this
            // workload, and ports on the other side of the cluster's edge.
            let hosts: BTreeSet<IpAddr> = table
                .host_ports
                .keys()
                .chain(edge.ports.keys())
                .copied()
                .collect();
            for (prefix, set) in &table.entries {
                let host = prefix.prefix_len() == prefix.max_prefix_len()
                    && hosts.contains(&prefix.addr());
                if !host {
                    let id = image_set(*set, *prefix)?;
                    push(&mut iw.allow_v4, &mut iw.allow_v6, *prefix, id);
                }
            }
            // A host gets an entry of its own, naming its host table: its
            // longest prefix's set (so every other port keeps that answer)
            // and its ports.
            let bases = hosts
                .iter()
                .map(|addr| {
                    let host = IpNet::from(*addr);
                    let set = table.lookup_set(*addr).unwrap_or(0);
                    let base = if isolated { image_set(set, host)? } else { 0 };
                    Ok((*addr, base))
                })
                .collect::<Result<Vec<_>, ImageError>>()?;
            for (addr, base) in bases {
                let mut entries = edge.ports.get(&addr).cloned().unwrap_or_default();
                for p in table.host_ports.get(&addr).into_iter().flatten() {
                    let value = match &p.rule {
                        Some(r) => rule_id(&mut image.rules, &mut rule_ids, r),
                        None => host_ports::DENY,
                    };
                    entries.push((host_ports::VERDICT, p.protocol.number(), p.port, value));
                }
                let id = host_tables.intern(HostTable { base, entries });
                push(
                    &mut iw.allow_v4,
                    &mut iw.allow_v6,
                    IpNet::from(addr),
                    id | host_ports::ALLOW_FLAG,
                );
            }
            if let Some(hosts) = w
                .gateway
                .as_ref()
                .and_then(|g| g.allowed_hosts.as_ref().map(|h| (g, h)))
            {
                let (role, allowed) = hosts;
                let first = image.hosts.len();
                let flat = hosts::flatten(role, allowed, resolved, first, &mut unresolved);
                image.hosts.extend(flat.hosts);
                for (prefix, entries) in flat.prefixes {
                    let id =
                        sets.intern(entries)
                            .map_err(|entries| ImageError::PortSetTooLarge {
                                workload: w.id.clone(),
                                table: "EgressGateway allowedHosts",
                                prefix,
                                entries,
                            })?;
                    push(&mut iw.gateway_v4, &mut iw.gateway_v6, prefix, id);
                }
            }
            image.workloads.push(iw);
        }
        image.port_sets = sets.into_sets();
        image.host_tables = host_tables.into_tables();
        image.unresolved = unresolved.into_iter().collect();
        Ok(image)
    }

    /// Rule id (index) → the NetworkPolicy rule, for counters and logs.
    pub fn rules(&self) -> &[RuleRef] {
        &self.rules
    }

    /// The id of `rule` in this image, if some workload uses it.
    pub fn rule_id(&self, rule: &RuleRef) -> Option<u32> {
        self.rules
            .iter()
            .position(|r| r == rule)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// Gateway host index (the rule id of `GatewayHost` verdicts) → host.
    pub fn gateway_hosts(&self) -> &[GatewayHost] {
        &self.hosts
    }

    /// Image port set `n` is `port_sets()[n - 1]`; set 0 is empty.
    pub fn port_sets(&self) -> &[Vec<PortEntry>] {
        &self.port_sets
    }

    pub fn workloads(&self) -> &[ImageWorkload] {
        &self.workloads
    }

    pub fn workload(&self, id: &ObjectId) -> Option<&ImageWorkload> {
        self.workloads.iter().find(|w| &w.id == id)
    }

    /// Whether an EgressGateway exists (gateway exclusivity applies).
    pub fn has_cluster(&self) -> bool {
        self.has_cluster
    }

    pub fn cluster_v4(&self) -> &[Ipv4Net] {
        &self.cluster_v4
    }

    pub fn cluster_v6(&self) -> &[Ipv6Net] {
        &self.cluster_v6
    }

    /// Addresses with ports on the other side of the cluster's edge, with
    /// their `CLUSTER_V4/V6` host entry: `host_ports::CLUSTER_PORTS` (a
    /// node address with NodePorts that lead outside) or
    /// `host_ports::CLUSTER_ONLY_PORTS` (an external IP whose Service ports
    /// stay inside).
    pub fn cluster_port_hosts(&self) -> &BTreeMap<IpAddr, u8> {
        &self.cluster_port_hosts
    }

    /// Image host table `n` is `host_tables()[n - 1]`.
    pub fn host_tables(&self) -> &[HostTable] {
        &self.host_tables
    }

    pub fn audit(&self) -> bool {
        self.audit
    }

    /// Workloads left out because they have no cgroup id.
    pub fn unplaced(&self) -> &[ObjectId] {
        &self.unplaced
    }

    /// Gateway DNS hosts with no resolved address: they allow nothing.
    pub fn unresolved(&self) -> &[String] {
        &self.unresolved
    }

    /// Entries this image writes, per kind.
    pub fn size(&self) -> ImageSize {
        // Equal tables are written once (see `ImageWorkload::tables`).
        let mut seen = std::collections::HashSet::new();
        let policies: Vec<&ImageWorkload> = self
            .workloads
            .iter()
            .filter(|w| !w.exempt && seen.insert(w.tables()))
            .collect();
        let sum = |f: fn(&ImageWorkload) -> usize| policies.iter().map(|w| f(w)).sum();
        ImageSize {
            workloads: self.workloads.len(),
            policies: policies.len(),
            allow: sum(|w| w.allow_v4.len() + w.allow_v6.len()),
            gateway: sum(|w| w.gateway_v4.len() + w.gateway_v6.len()),
            cluster: if self.has_cluster {
                self.cluster_v4.len() + self.cluster_v6.len() + self.cluster_port_hosts().len()
            } else {
                0
            },
            host_ports: self.host_tables.iter().map(|t| t.entries.len() + 1).sum(),
            port_sets: self.port_sets.len(),
        }
    }
}

/// Entry counts of an image (or of one generation in the kernel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageSize {
    /// `WORKLOADS` entries.
    pub workloads: usize,
    /// `POLICIES` entries: one per distinct set of tables.
    pub policies: usize,
    /// `ALLOW_V4` + `ALLOW_V6` entries.
    pub allow: usize,
    /// `GATEWAY_V4` + `GATEWAY_V6` entries.
    pub gateway: usize,
    /// `CLUSTER_V4` + `CLUSTER_V6` entries.
    pub cluster: usize,
    /// `PORT_SETS` entries.
    pub port_sets: usize,
    /// `HOST_PORTS` entries.
    pub host_ports: usize,
}

/// The image id of `rule`, numbered in order of first use.
fn rule_id(rules: &mut Vec<RuleRef>, ids: &mut HashMap<RuleRef, u32>, rule: &RuleRef) -> u32 {
    let next = u32::try_from(rules.len()).unwrap_or(u32::MAX);
    *ids.entry(rule.clone()).or_insert_with(|| {
        rules.push(rule.clone());
        next
    })
}

/// `PolicyInfo` flags for `w`, as `compile::decide::filter` reads the plan.
fn flags(plan: &Plan, w: &WorkloadPlan) -> u32 {
    let mut flags = 0;
    if matches!(w.egress, Egress::Isolated { .. }) {
        flags |= PolicyInfo::ISOLATED;
    }
    if plan.cluster.is_some() {
        flags |= PolicyInfo::HAS_CLUSTER;
    }
    if w.guard == Some(Guard::Pending) {
        flags |= PolicyInfo::PENDING;
    }
    if let Some(role) = &w.gateway {
        flags |= PolicyInfo::GATEWAY;
        if role.allowed_hosts.is_some() {
            flags |= PolicyInfo::REGISTRY_ONLY;
        }
    }
    if source_checked(w) {
        flags |= PolicyInfo::SOURCE_CHECK;
    }
    if w.gateway.is_some() || w.packet_sockets {
        flags |= PolicyInfo::PACKET_SOCKETS;
    }
    if w.gateway.is_some() || !w.proxy_for.is_empty() {
        flags |= PolicyInfo::TRANSPARENT;
    }
    flags
}

/// Whether the kernel checks the sources of `w`'s packets against its
/// addresses. Not for workloads that list none (nothing to check against),
/// gateways (they send from uplink addresses no Workload lists, and may
/// leave the cluster anyway) or proxies (a transparent proxy answers from
/// the addresses it intercepted).
fn source_checked(w: &WorkloadPlan) -> bool {
    !w.addresses.is_empty() && w.gateway.is_none() && w.proxy_for.is_empty()
}

/// Stores `prefix` (host bits cleared) in the list of its family. IPv6
/// prefixes stay IPv6 even inside `::ffff:0:0/96`: the programs decide an
/// IPv4-mapped destination as IPv4, like `compile::decide`, so such a
/// prefix never matches there either.
fn push(v4: &mut Vec<(Ipv4Net, u32)>, v6: &mut Vec<(Ipv6Net, u32)>, prefix: IpNet, set: u32) {
    match prefix.trunc() {
        IpNet::V4(n) => v4.push((n, set)),
        IpNet::V6(n) => v6.push((n, set)),
    }
}

#[cfg(test)]
mod tests;
