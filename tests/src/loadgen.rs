//! Load loops for the benchmarks, run by `egress-probe` inside a workload's
//! cgroup and pod: a connect-rate client, an accept-and-close server (the
//! stand-in proxy), and a loop that waits for a verdict to change.
//!
//! They print one machine-readable line each (`RATE …`, `LISTENING …`,
//! `REACHED …`), which `egress-bench` parses. Times that another process
//! compares with its own are `CLOCK_MONOTONIC` nanoseconds, the same clock
//! in every process.

use std::{
    io::{self, Write as _},
    net::SocketAddr,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// `CLOCK_MONOTONIC` in nanoseconds: comparable across processes, unlike
/// [`Instant`], whose epoch is private.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The result of [`connect_rate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub first_error: Option<String>,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// `RATE ok=… failed=… seconds=… rate=… p50_us=… p99_us=… [error=…]`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "RATE ok={} failed={} seconds={:.3} rate={:.1} p50_us={:.1} p99_us={:.1}",
            self.ok,
            self.failed,
            self.seconds,
            self.per_second(),
            self.p50_us,
            self.p99_us
        );
        if let Some(e) = &self.first_error {
            line.push_str(&format!(" error={}", e.replace(' ', "_")));
        }
        line
    }

    /// Parses [`Self::line`].
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("RATE ")?;
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        Some(Self {
            ok: field("ok")?.parse().ok()?,
            failed: field("failed")?.parse().ok()?,
            seconds: field("seconds")?.parse().ok()?,
            p50_us: field("p50_us")?.parse().ok()?,
            p99_us: field("p99_us")?.parse().ok()?,
            first_error: field("error").map(str::to_owned),
        })
    }
}

/// The `q`-quantile (0..=1) of sorted values, by nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// One TCP connection to `addr`, closed with a reset (`SO_LINGER` 0) so
/// that a long run leaves no `TIME_WAIT` sockets to exhaust the ports.
fn connect_once(addr: &SockAddr, domain: Domain, timeout: Duration) -> io::Result<()> {
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_linger(Some(Duration::ZERO))?;
    // A blocking connect bounded by SO_SNDTIMEO: no poll(2) per attempt.
    socket.set_write_timeout(Some(timeout))?;
    socket.connect(addr)
}

/// Connects to `addr` one connection after another for `duration` and
/// measures each connect's latency.
pub fn connect_rate(addr: SocketAddr, duration: Duration, timeout: Duration) -> Rate {
    let target = SockAddr::from(addr);
    let domain = Domain::for_address(addr);
    let mut latencies: Vec<u64> = Vec::with_capacity(1 << 16);
    let mut failed = 0;
    let mut first_error = None;
    let start = Instant::now();
    while start.elapsed() < duration {
        let began = Instant::now();
        match connect_once(&target, domain, timeout) {
            Ok(()) => latencies.push(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX)),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
                // A refused destination fails fast; do not spin on it.
                if failed > 1000 && latencies.is_empty() {
                    break;
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let us = |q| quantile(&latencies, q).map_or(0.0, |ns| ns as f64 / 1000.0);
    Rate {
        ok: latencies.len() as u64,
        failed,
        seconds,
        p50_us: us(0.50),
        p99_us: us(0.99),
        first_error,
    }
}

/// Accepts connections on `addr` and closes each at once, as fast as it
/// can: the proxy of the redirect benchmark, which measures the redirect
/// and not a proxy. Prints `LISTENING <addr>`, then runs until killed.
pub fn accept_close(addr: SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    // A long backlog: a full one drops SYNs, and a dropped SYN costs a
    // one-second retransmit that would dominate the p99.
    socket.listen(4096)?;
    let local = socket
        .local_addr()?
        .as_socket()
        .map_or_else(|| addr.to_string(), |a| a.to_string());
    println!("LISTENING {local}");
    io::stdout().flush()?;
    loop {
        match socket.accept() {
            // A plain close (FIN): a reset could reach the client before
            // its connect() returned and fail it. The client's reset then
            // ends the connection without TIME_WAIT on either side.
            Ok((conn, _)) => drop(conn),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("accept"),
        }
    }
}

/// What [`until`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// The connect succeeds.
    Ok,
    /// The connect fails with EPERM (denied by the agent).
    Eperm,
}

/// Connects to `addr` (TCP) every `interval` until the outcome is `want`.
/// Prints `READY <first outcome>` after the first attempt, then `REACHED
/// mono_ns=<when> attempts=<n>` (the `CLOCK_MONOTONIC` time the wanted
/// outcome was seen), or `GAVE_UP attempts=<n>` after `give_up`.
pub fn until(
    addr: SocketAddr,
    want: Want,
    interval: Duration,
    timeout: Duration,
    give_up: Duration,
) -> io::Result<()> {
    let target = SockAddr::from(addr);
    let domain = Domain::for_address(addr);
    let matches = |r: &io::Result<()>| match (want, r) {
        (Want::Ok, Ok(())) => true,
        (Want::Eperm, Err(e)) => e.raw_os_error() == Some(libc::EPERM),
        _ => false,
    };
    let describe = |r: &io::Result<()>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => "eperm".to_owned(),
        Err(e) => format!("error:{}", e.kind()),
    };
    let start = Instant::now();
    let mut out = io::stdout();
    let first = connect_once(&target, domain, timeout);
    writeln!(out, "READY {}", describe(&first))?;
    out.flush()?;
    let mut attempts = 1u64;
    let mut result = first;
    loop {
        if matches(&result) {
            let now = monotonic_ns();
            writeln!(out, "REACHED mono_ns={now} attempts={attempts}")?;
            return out.flush();
        }
        if start.elapsed() > give_up {
            writeln!(out, "GAVE_UP attempts={attempts}")?;
            return out.flush();
        }
        std::thread::sleep(interval);
        result = connect_once(&target, domain, timeout);
        attempts += 1;
    }
}

/// The first line a child prints (within 10 s): a server's `LISTENING`.
pub fn first_line(stdout: std::process::ChildStdout) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = io::BufRead::read_line(&mut io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map(|l| l.trim().to_owned())
        .map_err(|_| anyhow::anyhow!("no output within 10 s"))
}

/// The parent's side of [`until`]: a running `egress-probe until`, read
/// line by line. `probe` is an `egress-probe` command that already names
/// its cgroup and pod.
pub struct Until {
    child: std::process::Child,
    lines: std::io::Lines<io::BufReader<std::process::ChildStdout>>,
}

impl Until {
    /// Spawns `probe until TARGET --want WANT` (`ok` or `eperm`), trying
    /// every `interval_ms` for at most `give_up_ms`, and returns it with
    /// its first attempt's line (`READY ok` or `READY eperm`).
    pub fn spawn(
        mut probe: std::process::Command,
        target: &str,
        want: &str,
        interval_ms: u64,
        give_up_ms: u64,
    ) -> anyhow::Result<(Self, String)> {
        use anyhow::Context as _;
        let mut child = probe
            .args(["until", target, "--want", want])
            .args(["--interval-ms", &interval_ms.to_string()])
            .args(["--give-up-ms", &give_up_ms.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting egress-probe until")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut until = Self {
            child,
            lines: io::BufRead::lines(io::BufReader::new(stdout)),
        };
        let first = until.next_line()?;
        Ok((until, first))
    }

    /// [`Until::spawn`] with a try every millisecond (for 120 s), whose
    /// first attempt must not have the wanted outcome yet: what a change
    /// is timed with.
    pub fn before_change(
        probe: std::process::Command,
        target: &str,
        want: &str,
    ) -> anyhow::Result<Self> {
        let not_yet = if want == "ok" {
            "READY eperm"
        } else {
            "READY ok"
        };
        let (until, first) = Self::spawn(probe, target, want, 1, 120_000)?;
        if first != not_yet {
            anyhow::bail!("the probe's first attempt said {first:?}, expected {not_yet:?}");
        }
        Ok(until)
    }

    fn next_line(&mut self) -> anyhow::Result<String> {
        use anyhow::Context as _;
        match self.lines.next() {
            Some(line) => Ok(line.context("reading the probe")?.trim().to_owned()),
            None => anyhow::bail!("the probe exited"),
        }
    }

    /// The `CLOCK_MONOTONIC` time the wanted outcome was first seen.
    pub fn wait(mut self) -> anyhow::Result<u64> {
        let line = self.next_line()?;
        line.strip_prefix("REACHED mono_ns=")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("the probe said {line:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Until {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&v, 0.0), Some(1));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn a_rate_line_round_trips() {
        let rate = Rate {
            ok: 1500,
            failed: 2,
            seconds: 0.1,
            p50_us: 40.5,
            p99_us: 120.0,
            first_error: Some("Connection refused".into()),
        };
        let parsed = Rate::parse(&rate.line()).unwrap();
        assert_eq!(parsed.ok, 1500);
        assert_eq!(parsed.failed, 2);
        assert_eq!(parsed.first_error.as_deref(), Some("Connection_refused"));
        assert!((parsed.per_second() - 15000.0).abs() < 1.0);
    }
}
