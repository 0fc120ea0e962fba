//! `egress-agent completions SHELL` (hidden): shell completion scripts.

use clap::CommandFactory;

use super::args::{Cli, CompletionsArgs};

pub fn run(args: &CompletionsArgs) {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "egress-agent", &mut std::io::stdout());
}
