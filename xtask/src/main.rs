//! Developer tasks, run as `cargo xtask <task>`.
//!
//! `main` only parses and dispatches; each task lives in its own module.

mod apiserver_crds;
mod apiserver_diff;
mod bench;
mod demo;
mod host;
mod k8s;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks for the egress enforcer"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (as root; idempotent).
    Setup(setup::SetupArgs),
    /// Run fmt, clippy, unit tests and the privileged integration tests.
    Test(test::TestArgs),
    /// Run the live demo: a simulated node built from policies/, the real
    /// agent, real connections (as root; removes everything it creates).
    Demo(demo::DemoArgs),
    /// Measure the agent against its baselines (iptables, nftables, no
    /// filter) on a simulated node, and write docs/benchmarks.md with plots
    /// (as root; `--quick` for a smoke run into target/bench/).
    Bench(bench::BenchArgs),
    /// Run the agent as a DaemonSet on a real local Kubernetes 1.20 (built
    /// offline, cached) and prove the seed scenario with real pods (as
    /// root; removes everything it creates).
    K8sTest(k8s::K8sTestArgs),
    /// The same scenario on a kind cluster (needs Docker and kind).
    KindTest(k8s::kind::KindTestArgs),
    /// Send every object of tests/apiserver-corpus through a real
    /// kube-apiserver 1.20 (`kubectl apply --dry-run=server`) and through
    /// `egress-agent check`; fail on any disagreement. Then install the
    /// CRDs there and check them the same way (tests/apiserver-corpus-crds),
    /// with two nodes' status written by server-side apply.
    ApiserverDiff(apiserver_diff::ApiserverDiffArgs),
    /// Memory of the agent's slim Pod cache at 10k pods, against a real
    /// kube-apiserver 1.20.2 (as root; removes everything it creates).
    K8sPodMemory(k8s::pod_memory::PodMemoryArgs),
    /// Run the upstream NetworkPolicy e2e suite (built from the same
    /// Kubernetes source) against the local cluster with the agent.
    NetpolE2e(k8s::NetpolE2eArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(args) => setup::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::K8sTest(args) => k8s::run(&args),
        Task::KindTest(args) => k8s::kind::run(&args),
        Task::ApiserverDiff(args) => apiserver_diff::run(&args),
        Task::K8sPodMemory(args) => k8s::pod_memory::run(&args),
        Task::NetpolE2e(args) => k8s::netpol_e2e(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
