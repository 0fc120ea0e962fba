//! `egress-agent check`: validate policy files.

use std::{collections::HashMap, process::ExitCode};

use egress_agent::agent::quarantine;
use egress_policy::Diagnostic;
use serde::Serialize;

use super::args::{CheckArgs, Output};

#[derive(Serialize)]
struct Report<'a> {
    valid: bool,
    diagnostics: &'a [Diagnostic],
}

pub fn run(args: &CheckArgs) -> ExitCode {
    // As `run` loads files: validated, then compiled and checked against
    // the kernel's limits, so a policy over one fails here, not at apply.
    let loaded = quarantine::load(
        &args.paths,
        &[],
        &HashMap::new(),
        &mut egress_policy::ParseCache::default(),
    )
    .map(|o| o.loaded);
    let (valid, diagnostics, summary) = match loaded {
        Ok(loaded) => {
            let m = &loaded.model;
            // Cluster objects are named only when present, so that a
            // file-only set reads as before.
            let cluster: String = [
                ("Service", m.services.len()),
                ("EndpointSlice", m.endpoint_slices.len()),
                ("Node", m.nodes.len()),
            ]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!(", {n} {kind}"))
            .collect();
            let summary = format!(
                "ok: {} namespace(s), {} workload(s), {} NetworkPolicy, {} EgressGateway, {} Redirect{cluster}; {} warning(s)",
                m.namespaces.values().filter(|n| n.declared).count(),
                m.workloads.len(),
                m.network_policies.len(),
                m.gateways.len(),
                m.redirects.len(),
                loaded.warnings.len(),
            );
            (true, loaded.warnings, summary)
        }
        Err(rejected) => {
            let summary = format!("{} error(s); policy rejected", rejected.error_count());
            (false, rejected.diagnostics, summary)
        }
    };
    match args.output {
        Output::Text | Output::Wide => {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            if valid {
                println!("{summary}");
            } else {
                eprintln!("{summary}");
            }
        }
        Output::Json | Output::Yaml => {
            let report = Report {
                valid,
                diagnostics: &diagnostics,
            };
            if let Err(e) = super::print_structured(&report, args.output) {
                eprintln!("cannot encode report: {e}");
            }
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
