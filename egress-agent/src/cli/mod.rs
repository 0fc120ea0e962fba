//! The `egress-agent` command line: one module per verb.

mod all_nodes;
pub mod args;
mod boot_guard;
mod check;
mod client;
mod completions;
mod crds;
mod events;
mod explain;
mod plan;
mod proxy;
mod run;
mod status;
mod uninstall;

use std::{path::PathBuf, process::ExitCode};

use egress_policy::{Diagnostic, Loaded};

pub use args::Cli;
use args::Command;

/// Runs one verb and maps its outcome to the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => Ok(check::run(&args)),
        Command::Plan(args) => plan::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Uninstall(args) => uninstall::run(&args),
        Command::BootGuard(args) => boot_guard::run(&args),
        Command::Proxy(args) => proxy::run(&args),
        Command::Events(args) => events::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Crds => {
            crds::run();
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions(args) => {
            completions::run(&args);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads a policy set for the verbs that need a valid one: warnings go to
/// stderr, and a rejected set prints every error and exits 1.
fn load_or_report(paths: &[PathBuf]) -> Result<Loaded, ExitCode> {
    match egress_policy::load(paths) {
        Ok(loaded) => {
            print_diagnostics(&loaded.warnings);
            Ok(loaded)
        }
        Err(rejected) => {
            print_diagnostics(&rejected.diagnostics);
            eprintln!("{} error(s); policy rejected", rejected.error_count());
            Err(ExitCode::FAILURE)
        }
    }
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        eprintln!("{d}");
    }
}

/// `value` as pretty JSON or as YAML (`-o json`, `-o yaml`), on stdout.
fn print_structured<T: serde::Serialize>(value: &T, output: args::Output) -> anyhow::Result<()> {
    match output {
        args::Output::Yaml => print!("{}", serde_yaml::to_string(value)?),
        _ => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}
