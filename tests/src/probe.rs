//! Driving the `egress-probe` binary: clients that connect from a namespace
//! (inside or outside the enforced cgroup), and listeners that report what
//! reaches them.

use std::{
    fmt,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};

use crate::{Netns, TestCgroup};

/// How long a client waits for `connect()` by default. Long enough for a
/// veth round trip under load, short enough that a dropped SYN (which makes
/// TCP retry until this expires) keeps the tests quick.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn suffix(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// What a client's syscall returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused by an eBPF program (`connect4/6` returning 0, or a packet
    /// dropped by `cgroup_skb` on a path that reports it, like `sendto`).
    Eperm,
    /// ECONNREFUSED: reached the server, nothing listening.
    Refused,
    /// No answer before the timeout, e.g. because every SYN was dropped.
    Timeout,
    /// Anything else, as the probe printed it.
    Other(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Eperm => f.write_str("eperm"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Other(s) => f.write_str(s),
        }
    }
}

impl Outcome {
    fn parse(s: &str) -> Self {
        match s {
            "ok" => Outcome::Ok,
            "eperm" => Outcome::Eperm,
            "refused" => Outcome::Refused,
            "timeout" => Outcome::Timeout,
            other => Outcome::Other(other.to_owned()),
        }
    }
}

/// Where cargo put the probe: integration-test executables live in
/// `target/<profile>/deps/`, binaries one level up. `EGRESS_PROBE`
/// overrides it.
pub fn probe_exe() -> PathBuf {
    if let Some(path) = std::env::var_os("EGRESS_PROBE") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let probe = dir.join("egress-probe");
    assert!(
        probe.exists(),
        "{} not found: run the tests with `cargo test -p integration-tests`",
        probe.display()
    );
    probe
}

/// A process that will connect from `netns`, inside `cgroup` if one is
/// given. Each call runs a fresh probe process.
pub struct Client<'a> {
    netns: &'a Netns,
    cgroup: Option<&'a TestCgroup>,
}

impl<'a> Client<'a> {
    /// A client outside any test cgroup: the programs do not apply to it.
    pub fn outside(netns: &'a Netns) -> Self {
        Self {
            netns,
            cgroup: None,
        }
    }

    /// A client inside `cgroup`, where the programs are attached.
    pub fn inside(netns: &'a Netns, cgroup: &'a TestCgroup) -> Self {
        Self {
            netns,
            cgroup: Some(cgroup),
        }
    }

    pub fn connect_tcp(&self, addr: SocketAddr) -> anyhow::Result<Outcome> {
        self.connect(addr, Proto::Tcp, CONNECT_TIMEOUT)
    }

    pub fn connect(
        &self,
        addr: SocketAddr,
        proto: Proto,
        timeout: Duration,
    ) -> anyhow::Result<Outcome> {
        let target = format!("{addr}/{}", proto.suffix());
        let timeout_ms = timeout.as_millis().to_string();
        self.run(&["connect", &target, "--timeout-ms", &timeout_ms])
    }

    /// An unconnected UDP `sendto`, which no `connect` hook sees.
    pub fn sendto(&self, addr: SocketAddr) -> anyhow::Result<Outcome> {
        self.run(&["sendto", &addr.to_string()])
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<Outcome> {
        let mut cmd = Command::new(probe_exe());
        if let Some(cgroup) = self.cgroup {
            cmd.arg("--cgroup").arg(cgroup.path());
        }
        cmd.args(["--netns", self.netns.name()]).args(args);
        let output = cmd.output().context("running egress-probe")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let result = stdout.lines().find_map(|l| l.strip_prefix("RESULT "));
        match (output.status.success(), result) {
            (true, Some(result)) => Ok(Outcome::parse(result.trim())),
            _ => bail!(
                "egress-probe {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }
    }
}

/// What reached a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Accepted(SocketAddr),
    Received(SocketAddr),
}

impl Event {
    pub fn peer(&self) -> SocketAddr {
        match self {
            Event::Accepted(peer) | Event::Received(peer) => *peer,
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let (kind, peer) = (words.next()?, words.next()?.parse().ok()?);
        match kind {
            "ACCEPTED" => Some(Event::Accepted(peer)),
            "RECEIVED" => Some(Event::Received(peer)),
            _ => None,
        }
    }
}

/// A probe listening in a namespace (outside any test cgroup), killed on
/// drop.
pub struct Listener {
    child: Child,
    lines: Receiver<String>,
    addr: SocketAddr,
}

impl Listener {
    /// Starts listening on `addr` in `netns` and waits until it is bound.
    pub fn start(netns: &Netns, addr: SocketAddr, proto: Proto) -> anyhow::Result<Self> {
        let mut child = Command::new(probe_exe())
            .args(["--netns", netns.name(), "listen"])
            .arg(format!("{addr}/{}", proto.suffix()))
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the egress-probe listener")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let listener = Self { child, lines, addr };
        match listener.lines.recv_timeout(Duration::from_secs(5)) {
            Ok(line) if line.starts_with("LISTENING") => Ok(listener),
            Ok(line) => bail!("listener on {addr} said {line:?} instead of LISTENING"),
            Err(_) => bail!("listener on {addr} did not start (see its stderr above)"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next connection or datagram, if one arrives within `within`.
    pub fn next_event(&self, within: Duration) -> Option<Event> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(event) = Event::parse(&line) {
                        return Some(event);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
