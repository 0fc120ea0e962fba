//! REGISTRY_ONLY gateways' allowed hosts, flattened for one longest-prefix
//! lookup.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use egress_common::PortEntry;
use ipnet::IpNet;

use crate::compile::GatewayRole;
use egress_policy::model::{AllowedHost, HostName, ObjectId};

/// One allowed host of one gateway; its index in
/// [`MapImage::gateway_hosts`](super::MapImage::gateway_hosts) is the rule
/// id of the port entries it contributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayHost {
    pub gateway: ObjectId,
    /// As written: a DNS name, an address or a CIDR.
    pub host: String,
}

impl fmt::Display for GatewayHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EgressGateway {} host {}", self.gateway, self.host)
    }
}

/// One gateway's hosts and its trie entries.
pub(super) struct Flat {
    pub(super) hosts: Vec<GatewayHost>,
    /// Prefix → port entries, in host order.
    pub(super) prefixes: BTreeMap<IpNet, Vec<PortEntry>>,
}

/// Flattens `allowed`, whose first host gets index `first`.
///
/// `compile::decide` allows a destination when *any* host contains it with
/// a matching port, trying hosts in order. Hosts may overlap (two names
/// resolving to one address, a CIDR around a host), and the trie returns
/// only the longest matching prefix, so every prefix P stores the entries of
/// every host whose prefix contains P: for an address whose longest match
/// is P, those are exactly the hosts that contain the address (all of them
/// lie on its path, and none is longer than P).
///
/// A host without ports allows every port of every protocol, as in
/// `compile::decide`.
pub(super) fn flatten(
    role: &GatewayRole,
    allowed: &[AllowedHost],
    resolved: &BTreeMap<String, Vec<IpAddr>>,
    first: usize,
    unresolved: &mut BTreeSet<String>,
) -> Flat {
    let mut hosts = Vec::with_capacity(allowed.len());
    let mut entries_of: Vec<Vec<PortEntry>> = Vec::with_capacity(allowed.len());
    let mut hosts_at: BTreeMap<IpNet, BTreeSet<usize>> = BTreeMap::new();
    for (i, host) in allowed.iter().enumerate() {
        let index = u32::try_from(first + i).unwrap_or(u32::MAX);
        hosts.push(GatewayHost {
            gateway: role.gateway.clone(),
            host: host.host.to_string(),
        });
        entries_of.push(if host.ports.is_empty() {
            vec![PortEntry::new(index, 0, 0, u16::MAX)]
        } else {
            host.ports
                .iter()
                .map(|(proto, port)| PortEntry::new(index, proto.number(), *port, *port))
                .collect()
        });
        let nets: Vec<IpNet> = match &host.host {
            HostName::Net(net) => vec![net.trunc()],
            HostName::Dns(name) => match resolved.get(name).filter(|a| !a.is_empty()) {
                Some(addrs) => addrs
                    .iter()
                    .map(|a| IpNet::from(a.to_canonical()))
                    .collect(),
                None => {
                    unresolved.insert(name.clone());
                    Vec::new()
                }
            },
        };
        for net in nets {
            hosts_at.entry(net).or_default().insert(i);
        }
    }
    let prefixes = hosts_at
        .keys()
        .map(|prefix| {
            let containing: BTreeSet<usize> = ancestors(*prefix)
                .filter_map(|a| hosts_at.get(&a))
                .flatten()
                .copied()
                .collect();
            let entries = containing
                .iter()
                .flat_map(|&h| entries_of[h].iter().copied())
                .collect();
            (*prefix, entries)
        })
        .collect();
    Flat { hosts, prefixes }
}

/// `net` truncated to every prefix length from 0 up to its own.
fn ancestors(net: IpNet) -> impl Iterator<Item = IpNet> {
    (0..=net.prefix_len())
        .filter_map(move |len| IpNet::new(net.addr(), len).ok().map(|n| n.trunc()))
}
