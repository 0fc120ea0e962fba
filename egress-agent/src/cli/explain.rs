//! `egress-agent explain`: the verdict for one connection, and why.

use std::{net::SocketAddr, process::ExitCode};

use anyhow::{anyhow, Context as _};
use egress_agent::compile::{self, Destination};
use egress_policy::{model::ObjectId, ports::Protocol};
use serde::Serialize;

use super::args::{ExplainArgs, Output};

#[derive(Serialize)]
struct Report<'a> {
    from: &'a ObjectId,
    to: String,
    #[serde(flatten)]
    decision: &'a compile::Decision,
}

pub fn run(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let from: ObjectId = args.from.parse().map_err(|e| anyhow!("--from: {e}"))?;
    let to = parse_destination(&args.to).with_context(|| format!("--to {:?}", args.to))?;
    let loaded = match super::load_or_report(&args.paths) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let mut plan = compile::compile(&loaded.model);
    if !args.capture_dns {
        plan = plan.without_dns_capture();
    }
    let Some(workload) = plan.workload(&from) else {
        let known: Vec<String> = plan.workloads.iter().map(|w| w.id.to_string()).collect();
        return Err(anyhow!(
            "--from: no Workload {from}; known: {}",
            known.join(", ")
        ));
    };
    let decision = compile::decide(&plan, workload, to);
    match args.output {
        Output::Json | Output::Yaml => {
            let report = Report {
                from: &from,
                to: to.to_string(),
                decision: &decision,
            };
            super::print_structured(&report, args.output)?;
        }
        Output::Text | Output::Wide => {
            println!("{from} → {to}: {}", decision.verdict);
            println!("  decided by: {}", decision.reason);
            for step in &decision.trace {
                println!("  - {step}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `IP:PORT[/tcp|/udp|/sctp]`; IPv6 as `[ADDR]:PORT`.
fn parse_destination(s: &str) -> anyhow::Result<Destination> {
    let (addr, protocol) = match s.rsplit_once('/') {
        Some((addr, proto)) => (addr, proto.parse::<Protocol>().map_err(|e| anyhow!(e))?),
        None => (s, Protocol::Tcp),
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| anyhow!("expected IP:PORT (IPv6 as [ADDR]:PORT), got {addr:?}"))?;
    Ok(Destination {
        ip: addr.ip(),
        port: addr.port(),
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_with_and_without_protocol() {
        let d = parse_destination("10.96.0.10:53/udp").expect("valid");
        assert_eq!((d.port, d.protocol), (53, Protocol::Udp));
        let d = parse_destination("[2001:db8::1]:443").expect("valid");
        assert_eq!(
            (d.ip.to_string().as_str(), d.protocol),
            ("2001:db8::1", Protocol::Tcp)
        );
        assert!(parse_destination("10.0.0.1").is_err());
        assert!(parse_destination("10.0.0.1:80/icmp").is_err());
    }
}
