//! The seed story as users tell it: `curl` from inside the pods, names
//! resolved by kube-dns, HTTP and TLS to the simulated internet's sites.
//! Each request's expectation comes from the plan (as the flow table's
//! do), and a success is confirmed from the site's own access log: the
//! client address it saw must be the requesting pod's.

use std::net::{IpAddr, SocketAddr};

use egress_agent::{
    compile::{decide, Destination, Plan, Verdict, WorkloadPlan},
    policy::{model::ObjectId, ports::Protocol},
    resolve::dns_names,
};
use integration_tests::{
    internet::{HTTPS_PORT, HTTP_PORT},
    node::{Curl, SimNode},
};

use crate::{resolved_plan, Report};

/// One `curl` the demo runs.
struct Request {
    from: ObjectId,
    url: String,
    host: String,
    tls: bool,
    /// Whether the plan lets it through (always, in the baseline).
    allowed: bool,
    /// Why not, when it is refused.
    why: Option<String>,
}

/// Which requests tell the story on this node's plan: every isolated
/// workload asks the first site; every gateway asks each site it may reach
/// and one it may not.
fn requests(sim: &SimNode, baseline: bool) -> Vec<Request> {
    let plan = sim.plan();
    let records = &sim.dns().records;
    let resolved = resolved_plan(plan, records);
    let allowed_names = dns_names(plan);
    // curl needs its name lookups: a workload the plan keeps from kube-dns
    // would only show that (the flow table does).
    let dns = sim.dns();
    let resolves = |w: &WorkloadPlan| {
        dns.workload.is_none() || baseline || allows(&resolved, w, dns.address, Protocol::Udp)
    };
    let placed = |w: &&WorkloadPlan| {
        sim.pod_of(&w.id).is_some_and(|p| !p.addresses.is_empty()) && resolves(w)
    };
    let request = |w: &WorkloadPlan, host: &str, tls: bool| {
        let ip = records
            .get(host)
            .and_then(|a| a.iter().find(|a| a.is_ipv4()).copied())?;
        let port = if tls { HTTPS_PORT } else { HTTP_PORT };
        let allowed = baseline || allows(&resolved, w, SocketAddr::new(ip, port), Protocol::Tcp);
        let why = (!allowed).then(|| {
            if w.gateway.is_some() && !allowed_names.contains(host) {
                format!("{host} is not in the gateway's allowedHosts")
            } else if w.gateway.is_some() {
                format!("{host}:{port} is not in the gateway's allowedHosts")
            } else {
                "only the egress gateway may reach the internet".to_owned()
            }
        });
        let scheme = if tls { "https" } else { "http" };
        let path = if host == "httpbin.org" {
            "/headers"
        } else {
            "/politics"
        };
        Some(Request {
            from: w.id.clone(),
            url: format!("{scheme}://{host}{path}"),
            host: host.to_owned(),
            tls,
            allowed,
            why,
        })
    };
    let first_site = records.keys().next();
    let mut out = Vec::new();
    for w in plan.workloads.iter().filter(placed) {
        let is_plain = w.gateway.is_none() && w.capture.is_none() && w.proxy_for.is_empty();
        if is_plain && !is_dns(sim, w) {
            if let Some(host) = first_site {
                out.extend(
                    [false, true]
                        .map(|tls| request(w, host, tls))
                        .into_iter()
                        .flatten(),
                );
            }
        }
    }
    for w in plan
        .workloads
        .iter()
        .filter(placed)
        .filter(|w| w.gateway.is_some())
    {
        for host in records.keys().filter(|h| allowed_names.contains(*h)) {
            out.extend(
                [false, true]
                    .map(|tls| request(w, host, tls))
                    .into_iter()
                    .flatten(),
            );
        }
        if let Some(other) = records.keys().find(|h| !allowed_names.contains(*h)) {
            out.extend(request(w, other, true));
        }
    }
    out
}

fn allows(plan: &Plan, w: &WorkloadPlan, dst: SocketAddr, protocol: Protocol) -> bool {
    let wp = plan.workload(&w.id).unwrap_or(w);
    let destination = Destination {
        ip: dst.ip(),
        port: dst.port(),
        protocol,
    };
    matches!(decide(plan, wp, destination).verdict, Verdict::Allow)
}

/// kube-dns is left out: asking the internet is not its story.
fn is_dns(sim: &SimNode, w: &WorkloadPlan) -> bool {
    sim.dns().workload.as_ref() == Some(&w.id)
}

/// Runs the requests and prints one line each.
pub fn show(sim: &SimNode, baseline: bool, report: &mut Report) -> anyhow::Result<()> {
    let requests = requests(sim, baseline);
    if requests.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "Requests (curl inside the pods; names resolved by kube-dns; HTTP and TLS to the \
         simulated internet's nginx):"
    );
    println!();
    for r in &requests {
        crate::signals::check()?;
        let seen_before = sim.web().requests().len();
        let curl = sim.curl(&r.from, &r.url)?;
        let served = sim
            .web()
            .requests()
            .into_iter()
            .skip(seen_before)
            .find(|s| s.host == r.host && (!r.tls || s.sni.as_deref() == Some(r.host.as_str())));
        let pod = sim.pod_of(&r.from);
        let from_pod = served.as_ref().is_some_and(|s| {
            pod.is_some_and(|p| p.addresses.contains(&s.client) || p.uplink.contains(&s.client))
        });
        let ok = if r.allowed {
            curl.ok() && from_pod
        } else {
            curl.refused_eperm() && served.is_none()
        };
        let sign = report.check(ok);
        println!("{sign}  {} $ curl {}", r.from, r.url);
        println!(
            "     {}",
            describe(&curl, served.map(|s| (s.client, s.sni)))
        );
        if let Some(why) = &r.why {
            println!("     expected: refused ({why})");
        }
    }
    Ok(())
}

fn describe(curl: &Curl, served: Option<(IpAddr, Option<String>)>) -> String {
    let site = match served {
        Some((client, Some(sni))) => format!("; the site saw client {client}, SNI {sni}"),
        Some((client, None)) => format!("; the site saw client {client}"),
        None => String::new(),
    };
    match curl.status {
        Some(status) => format!("HTTP {status}: {}{site}", curl.body.trim()),
        None if curl.error.is_empty() => format!("curl exited {:?}{site}", curl.exit),
        None if curl.refused_eperm() => {
            let addrs: Vec<&str> = curl
                .error
                .split("; ")
                .filter_map(|l| l.strip_prefix("Immediate connect fail for "))
                .filter_map(|l| l.strip_suffix(": Operation not permitted"))
                .collect();
            format!(
                "refused at once: connect() → EPERM for {}{site}",
                addrs.join(" and ")
            )
        }
        None => format!("failed: {}{site}", curl.error),
    }
}
