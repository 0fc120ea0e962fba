//! The seed story as users tell it: `curl` from inside the pods, names
//! resolved by kube-dns, HTTP and TLS to the simulated internet's sites,
//! with the real mesh running (`egress-agent proxy` as each captured
//! workload's sidecar and as the egress gateway). Each request's
//! expectation comes from the plan, as the flow table's do, and each
//! outcome is confirmed where it can be seen: the site's access log (which
//! client it saw) and the proxies' access logs (which hops carried it).

use std::net::{IpAddr, SocketAddr};

use egress_agent::{
    compile::{decide, Destination, Plan, Verdict, WorkloadPlan},
    resolve::dns_names,
};
use egress_policy::{model::ObjectId, ports::Protocol};
use integration_tests::{
    internet::{HTTPS_PORT, HTTP_PORT},
    mesh::Mesh,
    node::{Curl, SimNode},
};

use crate::{resolved_plan, Report};

/// What should become of a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The site answers; it sees the pod itself.
    Served,
    /// Redirected to the sidecar, carried by the gateway; the site sees the
    /// gateway.
    ServedViaGateway,
    /// connect() fails with EPERM: the kernel refuses it.
    RefusedByKernel,
    /// The gateway refuses the host (REGISTRY_ONLY): 403 over HTTP, a
    /// closed connection over TLS.
    RefusedByGateway,
}

/// One `curl` the demo runs.
struct Request {
    from: ObjectId,
    url: String,
    host: String,
    tls: bool,
    expect: Expect,
    why: String,
}

/// Which requests tell the story on this node's plan: every plain
/// workload asks the first site; every captured workload asks each site
/// its gateway allows and one it does not; every gateway does the same
/// directly.
fn requests(sim: &SimNode, mesh: Option<&Mesh>) -> Vec<Request> {
    let baseline = mesh.is_none();
    let plan = sim.plan();
    let records = &sim.dns().records;
    let resolved = resolved_plan(plan, records);
    let allowed_names = dns_names(plan);
    let dns = sim.dns();
    // curl needs its name lookups: a workload the plan keeps from kube-dns
    // would only show that (the flow table does).
    let resolves = |w: &WorkloadPlan| {
        dns.workload.is_none() || baseline || allows(&resolved, w, dns.address, Protocol::Udp)
    };
    let placed = |w: &&WorkloadPlan| {
        sim.pod_of(&w.id).is_some_and(|p| !p.addresses.is_empty()) && resolves(w)
    };
    let gateway = mesh
        .and_then(Mesh::gateway)
        .and_then(|g| plan.workload(&g.workload));
    let request = |w: &WorkloadPlan, host: &str, tls: bool| {
        let ip = records
            .get(host)
            .and_then(|a| a.iter().find(|a| a.is_ipv4()).copied())?;
        let port = if tls { HTTPS_PORT } else { HTTP_PORT };
        let dst = SocketAddr::new(ip, port);
        let (expect, why) = if baseline {
            (Expect::Served, "no agent: nothing is enforced".to_owned())
        } else if w.capture.is_some() {
            let gw = gateway?;
            if allows(&resolved, gw, dst, Protocol::Tcp) {
                let why = format!("redirected to the sidecar; {} allows {host}:{port}", gw.id);
                (Expect::ServedViaGateway, why)
            } else {
                let why = format!(
                    "redirected; {host}:{port} is not in {}'s allowedHosts",
                    gw.id
                );
                (Expect::RefusedByGateway, why)
            }
        } else if allows(&resolved, w, dst, Protocol::Tcp) {
            (Expect::Served, "allowed by the plan".to_owned())
        } else if w.gateway.is_some() {
            let why = format!("{host}:{port} is not in the gateway's allowedHosts");
            (Expect::RefusedByKernel, why)
        } else {
            let why = "only the egress gateway may reach the internet".to_owned();
            (Expect::RefusedByKernel, why)
        };
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
            expect,
            why,
        })
    };
    let both = |w: &WorkloadPlan, host: &str| [false, true].map(|tls| request(w, host, tls));
    let allowed_site = records.keys().find(|h| allowed_names.contains(*h));
    let other_site = records.keys().find(|h| !allowed_names.contains(*h));
    let mut out = Vec::new();
    let workloads = || plan.workloads.iter().filter(placed);
    for w in workloads().filter(|w| w.capture.is_some()) {
        if let Some(host) = allowed_site {
            out.extend(both(w, host).into_iter().flatten());
        }
        if let Some(host) = other_site {
            out.extend(request(w, host, true));
        }
    }
    for w in workloads().filter(|w| {
        w.gateway.is_none() && w.capture.is_none() && w.proxy_for.is_empty() && !is_dns(sim, w)
    }) {
        if let Some(host) = allowed_site.or(other_site) {
            out.extend(both(w, host).into_iter().flatten());
        }
    }
    for w in workloads().filter(|w| w.gateway.is_some()) {
        for host in records.keys().filter(|h| allowed_names.contains(*h)) {
            out.extend(both(w, host).into_iter().flatten());
        }
        if let Some(host) = other_site {
            out.extend(request(w, host, true));
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

/// What the receiving side saw of one request.
struct Seen {
    curl: Curl,
    /// The client address the site saw, and the SNI.
    site: Option<(IpAddr, Option<String>)>,
    /// The gateway's access-log verdict for it.
    gateway: Option<String>,
    /// Whether a sidecar logged it.
    sidecar: bool,
}

/// Runs the requests and prints two lines each.
pub fn show(sim: &SimNode, mesh: Option<&Mesh>, report: &mut Report) -> anyhow::Result<()> {
    let requests = requests(sim, mesh);
    if requests.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "Requests (curl inside the pods; names resolved by kube-dns; HTTP and TLS to the \
         simulated internet's nginx):"
    );
    if let Some(mesh) = mesh {
        for p in mesh.sidecars.iter().chain(&mesh.gateways) {
            let listen: Vec<String> = p.listen.iter().map(ToString::to_string).collect();
            println!(
                "  mesh: egress-agent proxy --mode {} as {} on {}",
                p.mode,
                p.workload,
                listen.join(", ")
            );
        }
    }
    println!();
    for r in &requests {
        crate::signals::check()?;
        let seen = run(sim, mesh, r)?;
        let pod = sim.pod_of(&r.from);
        let gw_pod = mesh
            .and_then(Mesh::gateway)
            .and_then(|g| sim.pod_of(&g.workload));
        let saw = |p: Option<&integration_tests::node::Pod>| {
            let client = seen.site.as_ref().map(|(c, _)| *c);
            p.zip(client)
                .is_some_and(|(p, c)| p.addresses.contains(&c) || p.uplink.contains(&c))
        };
        let ok = match r.expect {
            Expect::Served => seen.curl.ok() && saw(pod),
            Expect::ServedViaGateway => {
                seen.curl.ok()
                    && saw(gw_pod)
                    && seen.sidecar
                    && seen.gateway.as_deref() == Some("allowed")
            }
            Expect::RefusedByKernel => seen.curl.refused_eperm() && seen.site.is_none(),
            Expect::RefusedByGateway => {
                !seen.curl.ok() && seen.site.is_none() && seen.gateway.as_deref() == Some("denied")
            }
        };
        let sign = report.check(ok);
        println!("{sign}  {} $ curl {}", r.from, r.url);
        println!("     {}", describe(&seen));
        println!("     expected: {} ({})", expected_word(r.expect), r.why);
    }
    if let Some(mesh) = mesh {
        upstream_counters(sim, mesh, &requests, report)?;
    }
    Ok(())
}

/// The seed's last check: the gateway's Envoy counter per destination
/// (`upstream_cx_total`) equals the requests it carried there.
fn upstream_counters(
    sim: &SimNode,
    mesh: &Mesh,
    requests: &[Request],
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(gateway) = mesh.gateway() else {
        return Ok(());
    };
    let stats = mesh.stats(sim, gateway)?;
    let mut carried: std::collections::BTreeMap<(u16, &str), u64> = Default::default();
    for r in requests
        .iter()
        .filter(|r| r.expect == Expect::ServedViaGateway)
    {
        let port = if r.tls { HTTPS_PORT } else { HTTP_PORT };
        *carried.entry((port, r.host.as_str())).or_default() += 1;
    }
    for ((port, host), sent) in carried {
        let name = format!("cluster.outbound|{port}||{host}.upstream_cx_total");
        let value = integration_tests::mesh::counter(&stats, &name);
        let sign = report.check(value == Some(sent));
        let shown = value.map_or("missing".to_owned(), |v| v.to_string());
        println!("{sign}  gateway /stats: {name}: {shown} (requests sent through it: {sent})");
    }
    Ok(())
}

fn run(sim: &SimNode, mesh: Option<&Mesh>, r: &Request) -> anyhow::Result<Seen> {
    let site_before = sim.web().requests().len();
    let gateway_before = mesh
        .and_then(Mesh::gateway)
        .map_or(0, |g| g.access_log().len());
    let sidecar = mesh.and_then(|m| {
        let plan = sim.plan();
        let redirect = &plan.workload(&r.from)?.capture.as_ref()?.redirect;
        m.sidecars.iter().find(|s| {
            plan.workload(&s.workload)
                .is_some_and(|p| p.proxy_for.contains(redirect))
        })
    });
    let sidecar_before = sidecar.map_or(0, |s| s.access_log().len());
    let curl = sim.curl(&r.from, &r.url)?;
    let site = sim
        .web()
        .requests()
        .into_iter()
        .skip(site_before)
        .find(|s| s.host == r.host && (!r.tls || s.sni.as_deref() == Some(r.host.as_str())))
        .map(|s| (s.client, s.sni));
    // A proxy logs a connection when it ends, just after curl returns.
    let wait = std::time::Duration::from_secs(2);
    // Only a redirected request reaches the gateway's log.
    let gateway = mesh
        .and_then(Mesh::gateway)
        .filter(|_| sidecar.is_some())
        .and_then(|g| {
            g.wait_for_lines(gateway_before + 1, wait)
                .into_iter()
                .skip(gateway_before)
                .find(|l| l.authority.as_deref() == Some(r.host.as_str()))
                .map(|l| l.verdict)
        });
    let sidecar =
        sidecar.is_some_and(|s| s.wait_for_lines(sidecar_before + 1, wait).len() > sidecar_before);
    Ok(Seen {
        curl,
        site,
        gateway,
        sidecar,
    })
}

fn expected_word(expect: Expect) -> &'static str {
    match expect {
        Expect::Served => "served",
        Expect::ServedViaGateway => "served through the sidecar and the gateway",
        Expect::RefusedByKernel => "refused by the kernel",
        Expect::RefusedByGateway => "refused by the gateway",
    }
}

fn describe(seen: &Seen) -> String {
    let curl = &seen.curl;
    let mut hops = Vec::new();
    if seen.sidecar {
        hops.push("sidecar".to_owned());
    }
    if let Some(verdict) = &seen.gateway {
        hops.push(format!("gateway: {verdict}"));
    }
    let hops = match hops.is_empty() {
        true => String::new(),
        false => format!(" [{}]", hops.join(", ")),
    };
    let site = match &seen.site {
        Some((client, Some(sni))) => format!("; the site saw client {client}, SNI {sni}"),
        Some((client, None)) => format!("; the site saw client {client}"),
        None => String::new(),
    };
    match curl.status {
        Some(status) => format!("HTTP {status}: {}{hops}{site}", curl.body.trim()),
        None if curl.refused_eperm() => {
            let addrs: Vec<&str> = curl
                .error
                .split("; ")
                .filter_map(|l| l.strip_prefix("Immediate connect fail for "))
                .filter_map(|l| l.strip_suffix(": Operation not permitted"))
                .collect();
            format!(
                "refused at once: connect() → EPERM for {}{hops}{site}",
                addrs.join(" and ")
            )
        }
        None => format!("failed: {}{hops}{site}", curl.error),
    }
}
