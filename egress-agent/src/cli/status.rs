//! `egress-agent status`: the running agent's state.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use egress_agent::observe::{protocol::Request, Status};

use super::{
    args::{Output, StatusArgs},
    client,
};

pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    if args.all_nodes {
        return super::all_nodes::run(args);
    }
    let line = client::ask(&args.socket, &Request::Status)?
        .next()
        .context("the agent closed the socket without answering")?
        .context("reading from the agent")?;
    if let Some(error) = client::error_of(&line) {
        bail!("the agent refused: {error}");
    }
    match args.output {
        Output::Json => println!("{line}"),
        Output::Yaml => {
            let status: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("unexpected reply from the agent: {line}"))?;
            super::print_structured(&status, args.output)?;
        }
        Output::Text | Output::Wide => {
            let status: Status = serde_json::from_str(&line)
                .with_context(|| format!("unexpected reply from the agent: {line}"))?;
            println!("{status}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
