//! Running commands, with the command line echoed first.

use std::{
    env,
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// The cargo that runs xtask, so nested builds use the same toolchain.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited output; `Ok(false)` if it exited non-zero.
pub fn status(cmd: &mut Command) -> anyhow::Result<bool> {
    eprintln!("+ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting `{}`", describe(cmd)))?;
    Ok(status.success())
}

/// Runs `cmd` and fails unless it succeeds.
pub fn check(cmd: &mut Command) -> anyhow::Result<()> {
    if !status(cmd)? {
        bail!("`{}` failed", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd`, copying its stdout through line by line and handing each
/// line to `on_line` as well. Returns whether it succeeded.
pub fn tee(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> anyhow::Result<bool> {
    eprintln!("+ {}", describe(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", describe(cmd)))?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading output")?;
            println!("{line}");
            on_line(&line);
        }
    }
    Ok(child.wait().context("waiting")?.success())
}

/// The trimmed stdout of `program args`, or `None` if it cannot run or
/// fails.
pub fn output<I, S>(program: &str, args: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
