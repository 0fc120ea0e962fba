//! `egress-agent events`: the running agent's verdict events.

use std::{io::Write as _, process::ExitCode};

use anyhow::{bail, Context as _};
use egress_agent::observe::{protocol::Request, Filter, VerdictEvent};

use super::{
    args::{EventsArgs, Output},
    client,
};

pub fn run(args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let request = Request::Events {
        follow: args.follow,
        filter: Filter {
            workload: args.workload.clone(),
            verdict: args.verdict,
        },
    };
    let stdout = std::io::stdout();
    for line in client::ask(&args.socket, &request)? {
        let line = line.context("reading from the agent")?;
        if let Some(error) = client::error_of(&line) {
            bail!("the agent refused: {error}");
        }
        let mut out = stdout.lock();
        let written = match args.output {
            Output::Json => writeln!(out, "{line}"),
            // One YAML document per event, so that a stream stays a stream.
            Output::Yaml => {
                let event: serde_json::Value = serde_json::from_str(&line)
                    .with_context(|| format!("unexpected reply from the agent: {line}"))?;
                let yaml = serde_yaml::to_string(&event)?;
                write!(out, "---\n{yaml}")
            }
            Output::Text | Output::Wide => {
                let event: VerdictEvent = serde_json::from_str(&line)
                    .with_context(|| format!("unexpected reply from the agent: {line}"))?;
                writeln!(out, "{event}")
            }
        };
        // A closed pipe (`| head`) ends the stream quietly.
        if written.and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
