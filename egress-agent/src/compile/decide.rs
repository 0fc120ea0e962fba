//! The verdict for one connection, read from the compiled plan.
//!
//! This models what a workload *initiates* (`connect()`, `sendto()`), as
//! Kubernetes egress rules do. Replies on flows that came in (a TCP
//! connection the workload accepted, a UDP remote that sent to the same
//! socket within the last 60 s) are allowed by the data plane whatever
//! this verdict says, as Kubernetes CNIs allow them through conntrack; the
//! kernel counts them as `Reason::Reply`.

use std::{fmt, net::IpAddr, net::SocketAddr};

use serde::Serialize;

use super::{
    capture::captures,
    plan::{Egress, Plan, RuleRef, WorkloadPlan},
    services::Frontend,
};
use egress_policy::{
    model::{HostName, ObjectId},
    ports::Protocol,
};

/// A destination as an application names it in `connect()` / `sendto()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl Destination {
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address:
    /// a dual-stack socket reaches the same host either way.
    pub fn canonical(self) -> Self {
        Self {
            ip: self.ip.to_canonical(),
            ..self
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.protocol.to_string().to_ascii_lowercase();
        write!(f, "{}/{proto}", SocketAddr::new(self.ip, self.port))
    }
}

/// What happens to the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "verdict")]
pub enum Verdict {
    Redirect { proxy: SocketAddr },
    Allow,
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redirect { proxy } => write!(f, "redirect to {proxy}"),
            Self::Allow => f.write_str("allow"),
            Self::Deny => f.write_str("deny"),
        }
    }
}

/// Why: the one rule that decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Reason {
    /// Loopback never leaves the workload; never captured or filtered.
    Loopback,
    /// Captured by a Redirect (the proxy hop itself was allowed).
    Captured { redirect: ObjectId },
    /// Allowed by this NetworkPolicy egress rule.
    Rule { rule: RuleRef },
    /// No NetworkPolicy with Egress selects the workload.
    NotIsolated,
    /// Selected by these policies, and none of their rules allows it.
    DefaultDeny { policies: Vec<ObjectId> },
    /// Outside the cluster, and the workload is not an egress gateway.
    GatewayExclusivity,
    /// A REGISTRY_ONLY gateway, and no allowed host matches.
    GatewayAllowList {
        gateway: ObjectId,
        hosts: Vec<String>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loopback => f.write_str("loopback (never captured or filtered)"),
            Self::Captured { redirect } => write!(f, "captured by Redirect {redirect}"),
            Self::Rule { rule } => write!(f, "{rule}"),
            Self::NotIsolated => f.write_str("no NetworkPolicy selects this workload for Egress"),
            Self::DefaultDeny { policies } => {
                let names: Vec<String> = policies.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "default deny (selected by NetworkPolicy {}; no rule allows it)",
                    names.join(", ")
                )
            }
            Self::GatewayExclusivity => f.write_str(
                "gateway exclusivity (outside clusterCIDRs; only the egress gateway may go there)",
            ),
            Self::GatewayAllowList { gateway, hosts } => {
                write!(f, "gateway allow-list of EgressGateway {gateway} (REGISTRY_ONLY: {}; names are resolved at run time)", hosts.join(", "))
            }
        }
    }
}

/// A verdict and the rule behind it, plus the steps that led there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    #[serde(flatten)]
    pub verdict: Verdict,
    pub reason: Reason,
    pub trace: Vec<String>,
}

/// Decides `dst` for `workload`, exactly as the data plane will.
pub fn decide(plan: &Plan, workload: &WorkloadPlan, dst: Destination) -> Decision {
    let dst = dst.canonical();
    let mut trace = Vec::new();
    if workload.guard == Some(super::guard::Guard::Exempt) {
        trace.push("exempt cgroup (unmanaged: hostNetwork pod or the agent)".to_owned());
        return Decision {
            verdict: Verdict::Allow,
            reason: Reason::NotIsolated,
            trace,
        };
    }
    if let Some(capture) = &workload.capture {
        let proxy = capture.proxy_for(dst.ip);
        let target = match dst.protocol {
            Protocol::Tcp if captures(&capture.rules, dst.ip, dst.port) => proxy,
            // Istio's DNS proxying: every UDP query to port 53 but to
            // loopback, whatever the include/exclude rules.
            Protocol::Udp if dst.port == 53 && !dst.ip.is_loopback() => capture
                .dns_port
                .and_then(|port| proxy.map(|p| SocketAddr::new(p.ip(), port))),
            _ => None,
        };
        if let Some(proxy) = target {
            trace.push(format!(
                "captured by Redirect {} → proxy {proxy}",
                capture.redirect
            ));
            // The redirected connection's policy check applies to the proxy hop.
            let hop = Destination {
                ip: proxy.ip(),
                port: proxy.port(),
                protocol: dst.protocol,
            };
            let mut checked = filter(plan, workload, hop, trace);
            if checked.verdict == Verdict::Allow {
                checked.verdict = Verdict::Redirect { proxy };
                checked.reason = Reason::Captured {
                    redirect: capture.redirect.clone(),
                };
            }
            return checked;
        }
        let why = if proxy.is_none() {
            "no proxy address of the destination's family"
        } else {
            "include/exclude rules"
        };
        trace.push(format!(
            "not captured by Redirect {} ({why})",
            capture.redirect
        ));
    }
    if let Some(passed) = &workload.passed_over {
        trace.push(format!(
            "not captured by Redirect {} ({})",
            passed.redirect, passed.why
        ));
    }
    filter(plan, workload, dst, trace)
}

/// The enforcement layers, for a destination that is not redirected.
fn filter(
    plan: &Plan,
    workload: &WorkloadPlan,
    dst: Destination,
    mut trace: Vec<String>,
) -> Decision {
    let done = |verdict, reason, trace| Decision {
        verdict,
        reason,
        trace,
    };
    if dst.ip.is_loopback() {
        return done(Verdict::Allow, Reason::Loopback, trace);
    }
    if let Some(frontend) = plan
        .services
        .iter()
        .find(|f| f.is(dst.ip, dst.protocol, dst.port))
    {
        trace.extend(explain_backends(plan, workload, frontend));
    }
    if let Some(cluster) = &plan.cluster {
        if !cluster.contains_port(dst.ip, dst.protocol, dst.port) {
            match &workload.gateway {
                None => return done(Verdict::Deny, Reason::GatewayExclusivity, trace),
                Some(role) => match &role.allowed_hosts {
                    None => trace.push(format!("egress gateway {} (ALLOW_ANY)", role.gateway)),
                    Some(hosts) => {
                        let hit = hosts.iter().find(|h| {
                            matches!(&h.host, HostName::Net(net) if net.contains(&dst.ip))
                                && (h.ports.is_empty()
                                    || h.ports.contains(&(dst.protocol, dst.port)))
                        });
                        match hit {
                            Some(h) => trace.push(format!(
                                "egress gateway {} allows host {}",
                                role.gateway, h.host
                            )),
                            None => {
                                let hosts = hosts.iter().map(|h| h.host.to_string()).collect();
                                return done(
                                    Verdict::Deny,
                                    Reason::GatewayAllowList {
                                        gateway: role.gateway.clone(),
                                        hosts,
                                    },
                                    trace,
                                );
                            }
                        }
                    }
                },
            }
        } else if cluster.contains(dst.ip) {
            trace.push("inside clusterCIDRs".to_owned());
        } else {
            trace.push(
                "inside the cluster: a Service port whose backends are all inside".to_owned(),
            );
        }
    }
    match &workload.egress {
        Egress::Unrestricted => done(Verdict::Allow, Reason::NotIsolated, trace),
        Egress::Isolated { policies, table } => {
            match table.allowing(dst.ip, dst.protocol, dst.port) {
                Some(rule) => done(Verdict::Allow, Reason::Rule { rule: rule.clone() }, trace),
                None => done(
                    Verdict::Deny,
                    Reason::DefaultDeny {
                        policies: policies.clone(),
                    },
                    trace,
                ),
            }
        }
    }
}

/// The rule that allows every ready backend of `frontend` for `workload`
/// (the first backend's), or `None` when there is no ready backend or one
/// is denied: the Service port's verdict, as the tables hold it.
pub fn backends_allowed(
    plan: &Plan,
    workload: &WorkloadPlan,
    frontend: &Frontend,
) -> Option<RuleRef> {
    let mut rule = None;
    for backend in &frontend.backends {
        let decision = decide_backend(plan, workload, frontend, *backend);
        match (decision.verdict, decision.reason) {
            (Verdict::Allow, Reason::Rule { rule: r }) => {
                rule.get_or_insert(r);
            }
            _ => return None,
        }
    }
    rule
}

/// The enforcement layers' decision for one backend of `frontend`, at its
/// target port, as after kube-proxy's DNAT.
fn decide_backend(
    plan: &Plan,
    workload: &WorkloadPlan,
    frontend: &Frontend,
    backend: SocketAddr,
) -> Decision {
    let dst = Destination {
        ip: backend.ip(),
        port: backend.port(),
        protocol: frontend.protocol,
    };
    filter(plan, workload, dst, Vec::new())
}

/// Trace lines naming the Service behind a destination and the verdict of
/// each backend it was judged by.
fn explain_backends(plan: &Plan, workload: &WorkloadPlan, frontend: &Frontend) -> Vec<String> {
    if frontend.backends.is_empty() {
        return vec![format!(
            "{frontend}: no ready backend (the connection is judged as one that nothing serves)"
        )];
    }
    let mut lines = vec![format!(
        "{frontend}: judged by its {} ready backend(s), as after kube-proxy's DNAT; all must be allowed",
        frontend.backends.len()
    )];
    for backend in &frontend.backends {
        let d = decide_backend(plan, workload, frontend, *backend);
        lines.push(format!("backend {backend}: {} ({})", d.verdict, d.reason));
    }
    lines
}
