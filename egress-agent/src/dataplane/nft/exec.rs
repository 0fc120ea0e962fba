//! Running `nft`: a JSON batch on stdin, or a JSON listing on stdout.
//!
//! `nftables::helper` is not used to run nft because its apply functions
//! leave nft's stderr uncaptured, so a failure would carry no reason.

use std::{
    ffi::{OsStr, OsString},
    io::Write as _,
    process::{Command, Output, Stdio},
    thread,
};

use nftables::schema::Nftables;

use super::{NftError, Operation};

/// Sends `batch` to `nft -j -f -`; nft turns one input into one netlink
/// transaction.
pub(super) fn apply(
    program: &OsStr,
    batch: &Nftables,
    operation: Operation,
) -> Result<(), NftError> {
    let payload =
        serde_json::to_vec(batch).map_err(|source| NftError::Serialize { operation, source })?;
    let run = |source| NftError::Run {
        operation,
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(run)?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| run(std::io::Error::other("the child's stdin was not piped")))?;
    // Written from another thread: a large batch does not fit in the pipe,
    // and nft may write to stdout or stderr before it has read it all.
    let writer = thread::spawn(move || stdin.write_all(&payload));
    let output = child.wait_with_output().map_err(run)?;
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the stdin writer panicked")));
    // A failed exit explains a broken pipe better than the pipe error does.
    check(program, output, operation)?;
    written.map_err(run)
}

/// Runs `nft -j <args>` and returns its stdout.
pub(super) fn list(
    program: &OsStr,
    args: &[&str],
    operation: Operation,
) -> Result<String, NftError> {
    let output = Command::new(program)
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NftError::Run {
            operation,
            program: program.to_owned(),
            source,
        })?;
    check(program, output, operation)
}

fn check(program: &OsStr, output: Output, operation: Operation) -> Result<String, NftError> {
    if !output.status.success() {
        return Err(NftError::Failed {
            operation,
            program: OsString::from(program),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
