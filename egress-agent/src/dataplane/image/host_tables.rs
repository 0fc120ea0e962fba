//! Host tables: the ports of single addresses that a flagged `ALLOW_*`
//! entry defers to (`egress_common::host_ports`), as the image holds them.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use egress_common::host_ports;

use crate::compile::Plan;

/// One address's ports as one policy sees them: entries `(kind, protocol,
/// port, value)`, a rule id or `host_ports::DENY` for `VERDICT`, anything
/// for `OUTSIDE` and `INSIDE`; and the image port set of every other port
/// (`BASE`). Image host table `n` is `MapImage::host_tables()[n - 1]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostTable {
    pub base: u32,
    pub entries: Vec<(u8, u8, u16, u32)>,
}

/// Interns host tables: equal ones (the pods of one Deployment) share an
/// id.
#[derive(Debug, Default)]
pub(super) struct HostTables {
    ids: HashMap<HostTable, u32>,
    tables: Vec<HostTable>,
}

impl HostTables {
    /// The image id of `table` (1-based).
    pub(super) fn intern(&mut self, mut table: HostTable) -> u32 {
        table.entries.sort_unstable();
        table.entries.dedup();
        let next = u32::try_from(self.tables.len() + 1).unwrap_or(u32::MAX);
        *self.ids.entry(table).or_insert_with_key(|table| {
            self.tables.push(table.clone());
            next
        })
    }

    pub(super) fn into_tables(self) -> Vec<HostTable> {
        self.tables
    }
}

/// Ports on the other side of the cluster's edge from their address, which
/// every policy's host tables list: gateway exclusivity applies to every
/// workload, isolated or not.
#[derive(Debug, Default)]
pub(super) struct Edge {
    /// Address → its `OUTSIDE` and `INSIDE` entries.
    pub(super) ports: BTreeMap<IpAddr, Vec<(u8, u8, u16, u32)>>,
    /// Address → its `CLUSTER_V4/V6` host entry (`CLUSTER_PORTS` or
    /// `CLUSTER_ONLY_PORTS`).
    pub(super) hosts: BTreeMap<IpAddr, u8>,
}

impl Edge {
    pub(super) fn of(plan: &Plan) -> Self {
        let mut edge = Self::default();
        let Some(cluster) = &plan.cluster else {
            return edge;
        };
        let sides = [
            (
                &cluster.outside_ports,
                host_ports::OUTSIDE,
                host_ports::CLUSTER_PORTS,
            ),
            (
                &cluster.inside_ports,
                host_ports::INSIDE,
                host_ports::CLUSTER_ONLY_PORTS,
            ),
        ];
        for (ports, kind, value) in sides {
            for p in ports {
                let addr = p.addr.to_canonical();
                let entry = (kind, p.protocol.number(), p.port, 1);
                edge.ports.entry(addr).or_default().push(entry);
                edge.hosts.insert(addr, value);
            }
        }
        edge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_tables_share_an_id_whatever_their_order() {
        let mut tables = HostTables::default();
        let a = HostTable {
            base: 1,
            entries: vec![(0, 6, 30080, 2), (1, 6, 30099, 1)],
        };
        let mut b = a.clone();
        b.entries.reverse();
        assert_eq!(tables.intern(a), 1);
        assert_eq!(tables.intern(b), 1);
        assert_eq!(tables.intern(HostTable::default()), 2);
        assert_eq!(tables.into_tables().len(), 2);
    }
}
