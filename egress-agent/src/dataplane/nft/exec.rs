//! Running `nft`: a JSON batch on stdin, or a JSON listing on stdout,
//! each within a timeout.
//!
//! `nftables::helper` is not used to run nft because its apply functions
//! leave nft's stderr uncaptured, so a failure would carry no reason.
//!
//! nft can hang: in the kernel, on the nfnetlink mutex behind another
//! tool's long transaction, or as a wrapper that blocks. A run without a
//! timeout would hold the agent's apply worker, and every apply after it,
//! for as long. So at the timeout the child's whole process group is
//! killed (with whatever a wrapper started), and the caller gets
//! [`NftError::TimedOut`].

use std::{
    ffi::{OsStr, OsString},
    io::{self, Read, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nftables::schema::Nftables;

use super::{NftError, Operation};

/// How long a killed child may take to be reaped, and an exited one's
/// pipes to be read to the end, past the timeout.
const GRACE: Duration = Duration::from_secs(1);

/// How often a child is checked for when no pidfd can be had.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Sends `batch` to `nft -j -f -`; nft turns one input into one netlink
/// transaction.
pub(super) fn apply(
    program: &OsStr,
    timeout: Duration,
    batch: &Nftables,
    operation: Operation,
) -> Result<(), NftError> {
    let payload =
        serde_json::to_vec(batch).map_err(|source| NftError::Serialize { operation, source })?;
    let output = run(
        program,
        &["-j", "-f", "-"],
        Some(payload),
        timeout,
        operation,
    )?;
    check(program, output, operation).map(drop)
}

/// Runs `nft -j <args>` and returns its stdout.
pub(super) fn list(
    program: &OsStr,
    timeout: Duration,
    args: &[&str],
    operation: Operation,
) -> Result<String, NftError> {
    let args: Vec<&str> = ["-j"].into_iter().chain(args.iter().copied()).collect();
    let output = run(program, &args, None, timeout, operation)?;
    check(program, output, operation)
}

/// Runs `nft --version` and returns what it says.
pub(super) fn version(program: &OsStr, timeout: Duration) -> Result<String, NftError> {
    let operation = Operation::Version;
    let output = run(program, &["--version"], None, timeout, operation)?;
    check(program, output, operation).map(|out| out.trim().to_owned())
}

/// What a helper thread of [`run`] finished with.
enum Pipe {
    Stdin(io::Result<()>),
    Stdout(io::Result<Vec<u8>>),
    Stderr(io::Result<Vec<u8>>),
}

/// Runs `program args`, with `input` on its stdin, and returns its exit
/// status, stdout and stderr, or [`NftError::TimedOut`] when it has not
/// exited and closed its pipes within `timeout`.
fn run(
    program: &OsStr,
    args: &[&str],
    input: Option<Vec<u8>>,
    timeout: Duration,
    operation: Operation,
) -> Result<Output, NftError> {
    let deadline = Instant::now() + timeout;
    let failed = |source| NftError::Run {
        operation,
        program: program.to_owned(),
        source,
    };
    let timed_out = || NftError::TimedOut {
        operation,
        command: command_line(program, args),
        timeout,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so that a kill at the timeout reaches what
        // it started too (a wrapper's nft, its `sleep`).
        .process_group(0)
        .spawn()
        .map_err(failed)?;
    // Each pipe on its own thread: a large batch does not fit in the pipe,
    // and nft may write to stdout or stderr before it has read it all. They
    // report on one channel, so that none is waited for past the deadline.
    let (done, finished) = mpsc::channel();
    let mut pipes = 0;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let done = done.clone();
        thread::spawn(move || done.send(Pipe::Stdin(stdin.write_all(&input))));
        pipes += 1;
    }
    if let Some(stdout) = child.stdout.take() {
        read_to_end(stdout, done.clone(), Pipe::Stdout);
        pipes += 1;
    }
    if let Some(stderr) = child.stderr.take() {
        read_to_end(stderr, done, Pipe::Stderr);
        pipes += 1;
    }
    let status = match wait_until(&mut child, deadline) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill(child);
            return Err(timed_out());
        }
        Err(e) => {
            kill(child);
            return Err(failed(e));
        }
    };
    // A child that exits just at the deadline still has its output read.
    let drain_until = deadline.max(Instant::now() + GRACE);
    let (mut written, mut stdout, mut stderr) = (Ok(()), Vec::new(), Vec::new());
    for _ in 0..pipes {
        match finished.recv_timeout(drain_until.saturating_duration_since(Instant::now())) {
            Ok(Pipe::Stdin(result)) => written = result,
            Ok(Pipe::Stdout(result)) => stdout = result.map_err(failed)?,
            Ok(Pipe::Stderr(result)) => stderr = result.map_err(failed)?,
            // nft exited, but something it started holds a pipe open. The
            // group is not killed: its leader is reaped, so its id may
            // already name another group.
            Err(_) => return Err(timed_out()),
        }
    }
    // A failed exit explains a broken pipe better than the pipe error
    // does: it is left to `check`.
    if status.success() {
        written.map_err(failed)?;
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn read_to_end<R: Read + Send + 'static>(
    mut pipe: R,
    done: mpsc::Sender<Pipe>,
    finished: fn(io::Result<Vec<u8>>) -> Pipe,
) {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let result = pipe.read_to_end(&mut buf).map(|_| buf);
        done.send(finished(result))
    });
}

/// Waits until `child` exits or `deadline` passes (`None`).
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    // A pidfd turns readable when the process exits (Linux 5.3; the agent
    // needs 5.10). A seccomp filter may still refuse it: then poll.
    let pidfd = pidfd_open(child.id()).ok();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match &pidfd {
            Some(fd) => {
                let mut poll = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
                // SAFETY: one valid pollfd, on a descriptor we own.
                if unsafe { libc::poll(&mut poll, 1, ms) } < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
            None => thread::sleep(left.min(POLL_EVERY)),
        }
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new
    // descriptor, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: a descriptor just created, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Kills `child`'s process group, then reaps the child.
fn kill(mut child: Child) {
    if let Ok(group) = libc::pid_t::try_from(child.id()) {
        // SAFETY: killpg(2). The child, which leads the group, is not
        // reaped yet, so its id cannot name another process or group.
        unsafe { libc::killpg(group, libc::SIGKILL) };
    }
    if !matches!(wait_until(&mut child, Instant::now() + GRACE), Ok(Some(_))) {
        // Dying in the kernel (an uninterruptible sleep ends first): a
        // thread of its own reaps it whenever it is done, so that no
        // zombie is left and nothing here waits for it.
        thread::spawn(move || child.wait());
    }
}

/// `program args...`, for messages.
fn command_line(program: &OsStr, args: &[&str]) -> String {
    std::iter::once(program.to_string_lossy())
        .chain(args.iter().map(|a| (*a).into()))
        .collect::<Vec<_>>()
        .join(" ")
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

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(300);

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("egress-nft-exec-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    fn sh(script: &str, input: Option<Vec<u8>>, timeout: Duration) -> Result<Output, NftError> {
        run(
            OsStr::new("sh"),
            &["-c", script],
            input,
            timeout,
            Operation::Apply,
        )
    }

    /// `R` (or any other live state) from `/proc/PID/stat`, `None` once
    /// the process is gone or a zombie.
    fn alive(pid: &str) -> bool {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state != 'Z' && state != 'X')
            })
            .unwrap_or(false)
    }

    #[test]
    fn a_large_input_and_both_outputs_are_passed_whole() {
        // More than a pipe holds, echoed back while stderr is written: the
        // child blocks unless every pipe is served at once.
        let input: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let output = sh(
            "cat; echo 'refused: bad batch' >&2; exit 3",
            Some(input.clone()),
            TIMEOUT,
        )
        .expect("ran");
        assert_eq!(output.status.code(), Some(3));
        assert!(output.stdout == input, "stdout is the input");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            "refused: bad batch\n"
        );
        let err = check(OsStr::new("sh"), output, Operation::Apply).expect_err("exit 3");
        assert!(
            err.to_string()
                .ends_with("exit status: 3: refused: bad batch"),
            "{err}"
        );
    }

    #[test]
    fn a_hung_command_is_killed_at_its_timeout_with_what_it_started() {
        let dir = scratch("hung");
        let pids = dir.join("pids");
        // The shell and its `sleep`, as a wrapper around nft would be.
        let script = format!("sleep 600 & echo $$ $! > '{}'; wait", pids.display());
        // Long enough for the shell to start on a loaded machine.
        let timeout = Duration::from_secs(2);
        let err = sh(&script, Some(b"{}".to_vec()), timeout).expect_err("it hangs");
        assert!(matches!(err, NftError::TimedOut { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "applying the nftables backstop: `sh -c {script}` did not finish within 2s; it \
                 was killed"
            )
        );
        let pids = fs::read_to_string(&pids).expect("the shell started and wrote its pids");
        let (shell, sleep) = pids.trim().split_once(' ').expect("two pids");
        assert!(!alive(shell), "the shell was killed and reaped");
        // Killed with the shell's group; an orphan's reaping is init's.
        let gone = Instant::now() + Duration::from_secs(30);
        while alive(sleep) {
            assert!(
                Instant::now() < gone,
                "the shell's sleep {sleep} still runs"
            );
            thread::sleep(Duration::from_millis(20));
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_command_that_exits_leaving_a_pipe_held_times_out() {
        let dir = scratch("held");
        let pid = dir.join("pid");
        // The shell exits at once; its background `sleep` keeps stdout.
        let script = format!("sleep 600 & echo $! > '{}'", pid.display());
        let err = sh(&script, None, Duration::from_millis(500)).expect_err("held");
        assert!(matches!(err, NftError::TimedOut { .. }), "{err:?}");
        let pid: libc::pid_t = fs::read_to_string(&pid)
            .expect("the shell wrote its pid")
            .trim()
            .parse()
            .expect("a pid");
        // SAFETY: kill(2) on the test's own `sleep`, left running by design.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_missing_program_is_an_error_to_run_it() {
        let err = version(OsStr::new("/nonexistent/nft"), TIMEOUT).expect_err("missing");
        assert!(matches!(err, NftError::Run { .. }), "{err:?}");
    }
}
