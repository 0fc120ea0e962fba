//! `egress-agent plan`: what would be programmed, per workload.

use std::{fmt::Write as _, process::ExitCode};

use egress_agent::compile::{self, Egress, Plan, WorkloadPlan};
use egress_policy::model::IpRanges;

use super::args::{Output, PlanArgs};

pub fn run(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let loaded = match super::load_or_report(&args.paths) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let plan = compile::compile(&loaded.model);
    match args.output {
        Output::Json | Output::Yaml => super::print_structured(&plan, args.output)?,
        Output::Text | Output::Wide => print!("{}", render(&plan)),
    }
    Ok(ExitCode::SUCCESS)
}

fn render(plan: &Plan) -> String {
    let mut out = String::new();
    match &plan.cluster {
        Some(c) => {
            let cidrs: Vec<String> = c.cidrs.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "cluster: {} (everything else is the internet; only gateways reach it)",
                cidrs.join(", ")
            );
            let at = |p: &compile::ScopePort| {
                let proto = p.protocol.to_string().to_ascii_lowercase();
                format!("{}/{proto}", std::net::SocketAddr::new(p.addr, p.port))
            };
            for p in &c.outside_ports {
                let _ = writeln!(out, "  except {}: a NodePort that leads outside", at(p));
            }
            for p in &c.inside_ports {
                let _ = writeln!(
                    out,
                    "  and {}: a Service port whose backends are all inside",
                    at(p)
                );
            }
        }
        None => {
            let _ = writeln!(out, "cluster: no EgressGateway, so no gateway exclusivity");
        }
    }
    for w in &plan.workloads {
        workload(&mut out, w);
    }
    out
}

fn workload(out: &mut String, w: &WorkloadPlan) {
    let addrs: Vec<String> = w.addresses.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "\nworkload {}  cgroup {}  addresses [{}]",
        w.id,
        w.cgroup,
        addrs.join(", ")
    );
    if let Some(g) = &w.gateway {
        let mode = match &g.allowed_hosts {
            None => "ALLOW_ANY".to_owned(),
            Some(hosts) => {
                let hosts: Vec<String> = hosts
                    .iter()
                    .map(|h| {
                        let ports: Vec<String> =
                            h.ports.iter().map(|(p, n)| format!("{n}/{p}")).collect();
                        if ports.is_empty() {
                            h.host.to_string()
                        } else {
                            format!("{}:{}", h.host, ports.join("|"))
                        }
                    })
                    .collect();
                format!("REGISTRY_ONLY [{}]", hosts.join(", "))
            }
        };
        let _ = writeln!(out, "  gateway: EgressGateway {} ({mode})", g.gateway);
    }
    for r in &w.proxy_for {
        let _ = writeln!(out, "  proxy for Redirect {r}: never captured");
    }
    if let Some(c) = &w.capture {
        let include = match &c.rules.include_ip_ranges {
            IpRanges::All => "*".to_owned(),
            IpRanges::Only(nets) => list(nets),
        };
        let _ = writeln!(
            out,
            "  capture: Redirect {} → {} (includeIPRanges {include}; excludeIPRanges {}; includePorts {}; excludePorts {})",
            c.redirect,
            c.proxy,
            list(&c.rules.exclude_ip_ranges),
            list(&c.rules.include_ports),
            list(&c.rules.exclude_ports),
        );
        if let Some(port) = c.dns_port {
            let _ = writeln!(out, "  dns capture: UDP 53 → {}:{port}", c.proxy.ip());
        }
    }
    if let Some(passed) = &w.passed_over {
        let _ = writeln!(
            out,
            "  capture: none; Redirect {} selects it ({})",
            passed.redirect, passed.why
        );
    }
    match &w.egress {
        Egress::Unrestricted => {
            let _ = writeln!(
                out,
                "  egress: unrestricted (no NetworkPolicy selects it for Egress)"
            );
        }
        Egress::Isolated { policies, table } => {
            let names: Vec<String> = policies.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "  egress: isolated by NetworkPolicy {}",
                names.join(", ")
            );
            if table.is_empty() {
                let _ = writeln!(out, "    (no rule allows anything: deny all)");
            }
            for (prefix, set) in &table.entries {
                let allows = table
                    .sets
                    .get(*set as usize)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if allows.is_empty() {
                    let _ = writeln!(out, "    {prefix:<22} deny (except)");
                    continue;
                }
                let parts: Vec<String> = allows
                    .iter()
                    .map(|a| {
                        let proto = a.protocol.map_or("any".to_owned(), |p| p.to_string());
                        format!("{proto}/{} by {}[{}]", a.ports, a.rule.policy, a.rule.index)
                    })
                    .collect();
                let _ = writeln!(out, "    {prefix:<22} allow {}", parts.join("; "));
            }
            for (addr, ports) in &table.host_ports {
                for p in ports {
                    let at = format!(
                        "{}/{}",
                        std::net::SocketAddr::new(*addr, p.port),
                        p.protocol.to_string().to_ascii_lowercase()
                    );
                    match &p.rule {
                        Some(r) => {
                            let _ = writeln!(
                                out,
                                "    {at:<22} allow by {}[{}] (NodePort)",
                                r.policy, r.index
                            );
                        }
                        None => {
                            let _ = writeln!(out, "    {at:<22} deny (NodePort)");
                        }
                    }
                }
            }
        }
    }
}

fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}
