//! Which DNS names a plan's gateways may reach.

use std::collections::BTreeSet;

use crate::compile::plan::Plan;
use egress_policy::model::HostName;

/// Every `HostName::Dns` in the `allowedHosts` of the plan's gateways, each
/// once. Literal addresses and CIDRs need no resolving and are left out.
pub fn dns_names(plan: &Plan) -> BTreeSet<String> {
    plan.workloads
        .iter()
        .filter_map(|w| w.gateway.as_ref())
        .filter_map(|g| g.allowed_hosts.as_ref())
        .flatten()
        .filter_map(|allowed| match &allowed.host {
            HostName::Dns(name) => Some(name.clone()),
            HostName::Net(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::plan::{Egress, GatewayRole, WorkloadPlan};
    use egress_policy::model::{AllowedHost, ObjectId};

    fn gateway(name: &str, hosts: Option<Vec<HostName>>) -> WorkloadPlan {
        WorkloadPlan {
            id: ObjectId::new("egress", name),
            cgroup: format!("/pods/{name}"),
            addresses: Vec::new(),
            gateway: Some(GatewayRole {
                gateway: ObjectId::new("egress", "gw"),
                allowed_hosts: hosts.map(|hosts| {
                    hosts
                        .into_iter()
                        .map(|host| AllowedHost {
                            host,
                            ports: Vec::new(),
                        })
                        .collect()
                }),
            }),
            proxy_for: Vec::new(),
            capture: None,
            passed_over: None,
            egress: Egress::Unrestricted,
            packet_sockets: false,
            guard: None,
        }
    }

    #[test]
    fn collects_each_dns_name_once_and_skips_literals_and_allow_any() {
        let dns = |s: &str| HostName::Dns(s.to_owned());
        let net = HostName::Net("192.0.2.0/24".parse().expect("test CIDR"));
        let plan = Plan {
            workloads: vec![
                gateway("a", Some(vec![dns("api.example.com"), net])),
                gateway(
                    "b",
                    Some(vec![dns("api.example.com"), dns("b.example.org")]),
                ),
                gateway("c", None),
            ],
            ..Plan::default()
        };
        let names: Vec<_> = dns_names(&plan).into_iter().collect();
        assert_eq!(names, ["api.example.com", "b.example.org"]);
    }
}
