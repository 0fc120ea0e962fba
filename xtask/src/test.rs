//! `cargo xtask test`: every check CI runs, in order, with a summary.
//!
//! 1. `cargo fmt --all -- --check`
//! 2. `cargo clippy --workspace --all-targets -- -D warnings`
//! 3. unit tests: `cargo test --workspace --exclude integration-tests`
//! 4. fuzz smoke: one `cargo fuzz build` of every target in fuzz/, then each
//!    for a short while (cargo fuzz, libFuzzer); any crash fails the stage
//!    (the packet target needs root, and is skipped without it)
//! 5. privileged integration tests: `cargo test -p integration-tests`
//!
//! Stage 5 needs root. Without root it is skipped, loudly. With root, a
//! missing precondition fails it: on a machine that could run the tests,
//! nothing is skipped silently. Stage 4 needs cargo-fuzz (installed by
//! `cargo xtask setup`); without it the stage fails and says so.

use std::{
    path::Path,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use crate::{host, run};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the privileged integration tests (stages 1-3 only).
    #[arg(long)]
    unit_only: bool,
    /// Stop at the first stage that fails.
    #[arg(long)]
    fail_fast: bool,
    /// Skip `cargo fmt --check` and clippy (stages 3-5 only).
    #[arg(long)]
    no_lint: bool,
    /// Skip the fuzz smoke stage.
    #[arg(long)]
    no_fuzz: bool,
    /// Run only the fuzz smoke stage.
    #[arg(long, conflicts_with_all = ["no_fuzz", "unit_only", "no_lint"])]
    fuzz_only: bool,
    /// How long the loader fuzz target runs in the smoke stage; the other
    /// targets run a third of it.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    fuzz_seconds: u32,
}

/// Where the smoke stage builds the fuzz targets (see [`fuzz_smoke`]).
const FUZZ_TARGET_DIR: &str = "fuzz/target-nosan";

/// A target of fuzz/Cargo.toml as the smoke stage runs it.
struct FuzzTarget {
    name: &'static str,
    /// Its line in the summary.
    stage: &'static str,
    /// Seed directories (relative to the workspace root) besides the
    /// target's own corpus.
    seeds: &'static [&'static str],
    /// Its run, in percent of `--fuzz-seconds`: the loader, which covers
    /// the most code, gets the whole; the others a third each (19 s
    /// by default), which keeps the stage about a minute longer.
    share: u32,
    /// Needs root: it loads the data plane and test-runs its program from
    /// a workload's cgroup. Without root it is skipped, loudly, as the
    /// privileged tests are.
    privileged: bool,
}

const FUZZ_TARGETS: &[FuzzTarget] = &[
    FuzzTarget {
        name: "loader",
        stage: "fuzz loader",
        seeds: &["fuzz/seeds/loader", "policies"],
        share: 100,
        privileged: false,
    },
    FuzzTarget {
        name: "k8s_objects",
        stage: "fuzz k8s_objects",
        seeds: &["fuzz/seeds/k8s_objects"],
        share: 33,
        privileged: false,
    },
    FuzzTarget {
        name: "sniff",
        stage: "fuzz sniff",
        seeds: &["fuzz/seeds/sniff"],
        share: 33,
        privileged: false,
    },
    FuzzTarget {
        name: "proxy_protocol",
        stage: "fuzz proxy_protocol",
        seeds: &["fuzz/seeds/proxy_protocol", "fuzz/seeds/sniff"],
        share: 33,
        privileged: false,
    },
    FuzzTarget {
        name: "packet",
        stage: "fuzz packet",
        seeds: &["fuzz/seeds/packet"],
        share: 33,
        privileged: true,
    },
];

enum Verdict {
    Passed,
    Failed(String),
    Skipped(String),
}

struct Stage {
    name: &'static str,
    verdict: Verdict,
    took: Duration,
}

/// Test counts summed from cargo's `test result:` lines.
#[derive(Default)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Counts {
    /// Adds `test result: ok. 12 passed; 0 failed; 1 ignored; ...`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// The stages run so far, and the test counts they reported.
struct Report {
    stages: Vec<Stage>,
    counts: Counts,
    fail_fast: bool,
}

impl Report {
    /// Whether the next stage should run.
    fn go_on(&self) -> bool {
        !(self.fail_fast && self.any_failed())
    }

    fn any_failed(&self) -> bool {
        self.stages
            .iter()
            .any(|s| matches!(s.verdict, Verdict::Failed(_)))
    }

    /// Runs a command as a stage that passes when the command succeeds.
    fn command(&mut self, name: &'static str, cmd: &mut Command) -> anyhow::Result<()> {
        let stage = timed(name, || {
            Ok(passed_if(run::status(cmd)?, "see the output above"))
        })?;
        self.stages.push(stage);
        Ok(())
    }

    /// Runs `cargo test ...` as a stage, counting the tests it reports.
    fn cargo_test(&mut self, name: &'static str, args: &[&str]) -> anyhow::Result<()> {
        let counts = &mut self.counts;
        let stage = timed(name, || {
            let ok = run::tee(run::cargo().arg("test").args(args), |line| {
                counts.add_line(line)
            })?;
            Ok(passed_if(ok, "see the failures above"))
        })?;
        self.stages.push(stage);
        Ok(())
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        self.stages.push(Stage {
            name,
            verdict: Verdict::Skipped(why.to_owned()),
            took: Duration::ZERO,
        });
    }

    fn fail(&mut self, name: &'static str, why: String) {
        self.stages.push(Stage {
            name,
            verdict: Verdict::Failed(why),
            took: Duration::ZERO,
        });
    }

    fn print(&self) {
        println!();
        println!("xtask test summary:");
        for stage in &self.stages {
            let took = stage.took.as_secs_f32();
            match &stage.verdict {
                Verdict::Passed => println!("  {:<17} passed ({took:.1}s)", stage.name),
                Verdict::Failed(why) => {
                    println!("  {:<17} FAILED ({took:.1}s): {why}", stage.name)
                }
                Verdict::Skipped(why) => println!("  {:<17} skipped: {why}", stage.name),
            }
        }
        if !self.go_on() {
            println!("  (stopped at the first failure: --fail-fast)");
        }
        let c = &self.counts;
        println!(
            "tests: {} passed, {} failed, {} skipped",
            c.passed, c.failed, c.ignored
        );
    }
}

pub fn run(args: &TestArgs) -> anyhow::Result<ExitCode> {
    print_free_disk("at the start");
    let mut report = Report {
        stages: Vec::new(),
        counts: Counts::default(),
        fail_fast: args.fail_fast,
    };

    if args.fuzz_only {
        for name in ["fmt", "clippy", "unit tests"] {
            report.skip(name, "--fuzz-only");
        }
    } else if args.no_lint {
        report.skip("fmt", "--no-lint");
        report.skip("clippy", "--no-lint");
    } else {
        report.command("fmt", run::cargo().args(["fmt", "--all", "--", "--check"]))?;
        if report.go_on() {
            report.command(
                "clippy",
                run::cargo().args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]),
            )?;
        }
    }
    if report.go_on() && !args.fuzz_only {
        report.cargo_test(
            "unit tests",
            &["--workspace", "--exclude", "integration-tests"],
        )?;
    }
    if report.go_on() {
        const NAME: &str = "fuzz smoke";
        if args.no_fuzz {
            report.skip(NAME, "--no-fuzz");
        } else {
            match host::cargo_fuzz_version() {
                Some(v) if v == host::CARGO_FUZZ_VERSION => {
                    // All targets in one build; each run then finds its
                    // binary up to date.
                    report.command("fuzz build", &mut fuzz_cargo("build"))?;
                    for target in FUZZ_TARGETS {
                        if !report.go_on() {
                            break;
                        }
                        if target.privileged && !host::is_root() {
                            let why = format!(
                                "not root (euid {}); it loads eBPF programs and moves itself into a cgroup",
                                host::euid()
                            );
                            println!("SKIPPED {}: {why}", target.stage);
                            report.skip(target.stage, &why);
                            continue;
                        }
                        let seconds = (args.fuzz_seconds.saturating_mul(target.share) / 100).max(1);
                        report.command(target.stage, &mut fuzz_smoke(target, seconds)?)?;
                    }
                }
                found => {
                    let why = format!(
                        "cargo-fuzz {} is not installed (found: {}); run `cargo xtask setup`",
                        host::CARGO_FUZZ_VERSION,
                        found.as_deref().unwrap_or("none")
                    );
                    eprintln!("xtask: fuzz smoke cannot run: {why}");
                    report.fail(NAME, why);
                }
            }
        }
    }
    if report.go_on() {
        const NAME: &str = "privileged tests";
        if args.unit_only {
            report.skip(NAME, "--unit-only");
        } else if args.fuzz_only {
            report.skip(NAME, "--fuzz-only");
        } else if !host::is_root() {
            let why = format!(
                "not root (euid {}); they need root for network namespaces, cgroups and eBPF",
                host::euid()
            );
            println!("SKIPPED privileged tests: {why}");
            report.skip(NAME, &why);
        } else if let Err(missing) = preconditions() {
            let why = format!(
                "running as root but {}; run `cargo xtask setup`",
                missing.join("; ")
            );
            eprintln!("xtask: privileged tests cannot run: {why}");
            report.fail(NAME, why);
        } else {
            // The scenarios run the real `egress-agent` binary; build it
            // explicitly rather than rely on an earlier stage having done so.
            report.command(
                "build egress-agent",
                run::cargo().args(["build", "-p", "egress-agent", "--bins"]),
            )?;
            if report.go_on() {
                report.cargo_test(NAME, &["-p", "integration-tests", "--no-fail-fast"])?;
            }
        }
    }

    report.print();
    Ok(if report.any_failed() {
        // A full disk shows up as odd failures (the linker killed by
        // SIGBUS, "No space left" deep in a build script): name it.
        print_free_disk("after the failure");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `cargo fuzz run TARGET` for `seconds` on one core, from its corpus
/// (fuzz/corpus/TARGET, kept between runs) and its seeds. libFuzzer exits
/// non-zero on a crash and leaves the input in fuzz/artifacts/TARGET/.
///
/// Without a sanitizer: the targets are safe Rust, and what they hunt is
/// panics (debug assertions and overflow checks stay on). With
/// AddressSanitizer the loader target ran at 124 executions/s against
/// about 3,900 without, on the same (busy) 2-core machine.
fn fuzz_smoke(target: &FuzzTarget, seconds: u32) -> anyhow::Result<Command> {
    let root = host::workspace_root();
    let corpus = root.join("fuzz/corpus").join(target.name);
    std::fs::create_dir_all(&corpus)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", corpus.display()))?;
    let mut cmd = fuzz_cargo("run");
    cmd.arg(target.name)
        .arg(&corpus)
        .args(target.seeds.iter().map(|s| root.join(s)))
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-workers=1",
            "-print_final_stats=1",
        ]);
    Ok(cmd)
}

/// `cargo fuzz VERB` with the smoke stage's flags (all targets for
/// `build`; the run's target and arguments are left to add).
fn fuzz_cargo(verb: &str) -> Command {
    let root = host::workspace_root();
    let mut cmd = run::cargo();
    cmd.current_dir(&root)
        // cargo fuzz passes nightly-only flags (sanitizer coverage); the
        // stable compiler accepts them with RUSTC_BOOTSTRAP.
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", verb, "--fuzz-dir", "fuzz", "--sanitizer", "none"])
        // A target directory for unsanitized builds only, so that a
        // developer's AddressSanitizer builds in fuzz/target stay usable.
        .arg("--target-dir")
        .arg(root.join(FUZZ_TARGET_DIR));
    cmd
}

/// Prints the space free for the build (debug test binaries need a few GiB).
fn print_free_disk(when: &str) {
    if let Some(bytes) = host::free_bytes(Path::new(".")) {
        let gib = bytes as f64 / f64::from(1u32 << 30);
        println!("xtask test: {gib:.1} GiB free for the build {when}");
    }
}

/// What the privileged tests need besides root, each checked directly.
fn preconditions() -> Result<(), Vec<String>> {
    let mut missing = Vec::new();
    host::missing_kernel_prerequisites(&mut missing);
    if !host::on_path("ip") {
        missing.push("`ip` (iproute2) is not on PATH".to_owned());
    }
    if !host::on_path("setpriv") {
        missing.push(
            "`setpriv` (util-linux) is not on PATH: the proxy tests run the proxy as UID 1337"
                .to_owned(),
        );
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

fn timed(name: &'static str, f: impl FnOnce() -> anyhow::Result<Verdict>) -> anyhow::Result<Stage> {
    let start = Instant::now();
    let verdict = f()?;
    Ok(Stage {
        name,
        verdict,
        took: start.elapsed(),
    })
}

fn passed_if(ok: bool, otherwise: &str) -> Verdict {
    if ok {
        Verdict::Passed
    } else {
        Verdict::Failed(otherwise.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_summed_from_cargo_test_result_lines() {
        let mut counts = Counts::default();
        counts.add_line(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        counts.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        counts.add_line("running 5 tests");
        assert_eq!((counts.passed, counts.failed, counts.ignored), (15, 2, 1));
    }
}
