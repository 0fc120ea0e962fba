//! Driving the `egress-probe` binary: clients that connect from a namespace
//! (inside or outside the enforced cgroup), listeners that report what
//! reaches them, and echo servers (inside a workload's cgroup) that answer.

use std::{
    fmt,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};

use crate::{packet::Tunnel, Netns, TestCgroup};

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

/// Where cargo put the probe (`EGRESS_PROBE` overrides it).
pub fn probe_exe() -> PathBuf {
    crate::target_bin(
        "egress-probe",
        "EGRESS_PROBE",
        "run the tests with `cargo test -p integration-tests`",
    )
}

/// A process that will connect from `netns`, inside a cgroup if one is
/// given. Each call runs a fresh probe process.
#[derive(Clone)]
pub struct Client<'a> {
    netns: &'a Netns,
    cgroup: Option<PathBuf>,
    escape_into: Option<String>,
    uid: Option<u32>,
}

impl<'a> Client<'a> {
    /// A client outside any test cgroup: the programs do not apply to it.
    pub fn outside(netns: &'a Netns) -> Self {
        Self {
            netns,
            cgroup: None,
            escape_into: None,
            uid: None,
        }
    }

    /// A client inside `cgroup`, where the programs are attached.
    pub fn inside(netns: &'a Netns, cgroup: &TestCgroup) -> Self {
        Self::in_cgroup(netns, cgroup.path())
    }

    /// A client in the cgroup v2 directory `cgroup`.
    pub fn in_cgroup(netns: &'a Netns, cgroup: &Path) -> Self {
        Self {
            netns,
            cgroup: Some(cgroup.to_owned()),
            escape_into: None,
            uid: None,
        }
    }

    /// The same client, but it creates a child cgroup `child` of its cgroup
    /// and moves there first, as a process escaping its workload would.
    pub fn escaping_into(mut self, child: &str) -> Self {
        self.escape_into = Some(child.to_owned());
        self
    }

    /// The same client, running as user and group `uid` (after entering
    /// its cgroup and namespace).
    pub fn as_uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// One TCP request; what came back (`Ok(text)`), or the outcome when
    /// no answer came.
    pub fn ask(&self, addr: SocketAddr) -> anyhow::Result<Result<String, Outcome>> {
        self.ask_over(addr, Proto::Tcp)
    }

    /// [`Client::ask`] over `proto`; for UDP the text is the address the
    /// answer came from.
    pub fn ask_over(
        &self,
        addr: SocketAddr,
        proto: Proto,
    ) -> anyhow::Result<Result<String, Outcome>> {
        let target = format!("{addr}/{}", proto.suffix());
        let timeout_ms = CONNECT_TIMEOUT.as_millis().to_string();
        let args = [
            "request",
            &target,
            "--timeout-ms",
            &timeout_ms,
            "--print-answer",
        ];
        let output = self
            .command(&args)
            .output()
            .context("running egress-probe")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if let Some(answer) = stdout.lines().find_map(|l| l.strip_prefix("ANSWER ")) {
            return Ok(Ok(answer.trim().to_owned()));
        }
        match stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) {
            Some(result) => Ok(Err(Outcome::parse(result.trim()))),
            None => bail!(
                "egress-probe {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
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

    /// An unconnected UDP `sendto`, which no `connect` hook sees (the
    /// `sendmsg` hooks do).
    pub fn sendto(&self, addr: SocketAddr) -> anyhow::Result<Outcome> {
        self.run(&["sendto", &addr.to_string()])
    }

    /// One UDP datagram to `addr` from a raw IP socket (`SOCK_RAW`): no
    /// `connect` or `sendmsg` hook sees it; only `cgroup_skb/egress` can
    /// stop it.
    pub fn raw_udp(&self, addr: SocketAddr) -> anyhow::Result<Outcome> {
        self.run(&["raw", &addr.to_string()])
    }

    /// An unconnected UDP `sendto` from a socket bound to `bind` first.
    pub fn sendto_from(&self, bind: SocketAddr, addr: SocketAddr) -> anyhow::Result<Outcome> {
        self.run(&["sendto", &addr.to_string(), "--bind", &bind.to_string()])
    }

    /// One request to an echo server and its answer: `Ok` if the answer
    /// came, `Timeout` if it did not (TCP: connect, write, read; UDP:
    /// `sendto`, `recvfrom`).
    pub fn request(&self, addr: SocketAddr, proto: Proto) -> anyhow::Result<Outcome> {
        let target = format!("{addr}/{}", proto.suffix());
        let timeout_ms = CONNECT_TIMEOUT.as_millis().to_string();
        self.run(&["request", &target, "--timeout-ms", &timeout_ms])
    }

    /// [`Client::request`] over TCP with the request in the SYN (TCP Fast
    /// Open), waiting up to `timeout` for the answer.
    pub fn request_fast_open(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<Outcome> {
        let target = format!("{addr}/tcp");
        let timeout_ms = timeout.as_millis().to_string();
        self.run(&[
            "request",
            &target,
            "--timeout-ms",
            &timeout_ms,
            "--fast-open",
        ])
    }

    /// [`Client::request`] over UDP from a socket bound to `bind`.
    pub fn request_udp_from(&self, bind: SocketAddr, addr: SocketAddr) -> anyhow::Result<Outcome> {
        let target = format!("{addr}/udp");
        let timeout_ms = CONNECT_TIMEOUT.as_millis().to_string();
        let bind = bind.to_string();
        self.run(&[
            "request",
            &target,
            "--timeout-ms",
            &timeout_ms,
            "--bind",
            &bind,
        ])
    }

    /// `count` TCP request/answer connections in a row, each closed by the
    /// client once answered.
    pub fn flood_tcp(&self, addr: SocketAddr, count: u64) -> anyhow::Result<Flood> {
        let count = count.to_string();
        let timeout_ms = CONNECT_TIMEOUT.as_millis().to_string();
        self.done(&[
            "flood",
            &addr.to_string(),
            "--count",
            &count,
            "--timeout-ms",
            &timeout_ms,
        ])
    }

    /// Many operations in one probe process (`egress-probe batch`), in
    /// order: each is `connect FROM ADDR/PROTO`, `sendto FROM ADDR` or
    /// `raw FROM ADDR`, from a socket bound to FROM. Connects wait up to
    /// `timeout`.
    pub fn batch(&self, ops: &[String], timeout: Duration) -> anyhow::Result<Vec<Outcome>> {
        let timeout_ms = timeout.as_millis().to_string();
        let lines = self.feed(&["batch", "--timeout-ms", &timeout_ms], ops)?;
        Ok(lines
            .iter()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .map(|r| Outcome::parse(r.trim()))
            .collect())
    }

    /// Runs each frame once through the loaded program `program_id`
    /// (`BPF_PROG_TEST_RUN`) from this client's cgroup: the program's
    /// return value, or the call's outcome if it failed.
    pub fn test_run(
        &self,
        program_id: u32,
        frames: &[Vec<u8>],
    ) -> anyhow::Result<Vec<Result<u32, Outcome>>> {
        let hex: Vec<String> = frames
            .iter()
            .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let lines = self.feed(&["test-run", &program_id.to_string()], &hex)?;
        lines
            .iter()
            .map(
                |l| match (l.strip_prefix("RETVAL "), l.strip_prefix("RESULT ")) {
                    (Some(n), _) => Ok(Ok(n.trim().parse()?)),
                    (_, Some(r)) => Ok(Err(Outcome::parse(r.trim()))),
                    _ => bail!("egress-probe test-run said {l:?}"),
                },
            )
            .collect()
    }

    /// Runs a probe command with `input` on its stdin, one line each, and
    /// returns its stdout's lines; it must answer each input line.
    fn feed(&self, args: &[&str], input: &[String]) -> anyhow::Result<Vec<String>> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting egress-probe")?;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let text: String = input.iter().map(|l| format!("{l}\n")).collect();
        // Written from another thread: the probe answers as it reads, and
        // a full stdout pipe would otherwise block both sides.
        let writer = thread::spawn(move || stdin.write_all(text.as_bytes()));
        let output = child.wait_with_output().context("running egress-probe")?;
        let written = writer
            .join()
            .map_err(|_| anyhow!("stdin writer panicked"))?;
        let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        if written.is_err() || !output.status.success() || lines.len() != input.len() {
            bail!(
                "egress-probe {args:?} ({}) answered {} of {} lines: {}",
                output.status,
                lines.len(),
                input.len(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(lines)
    }

    /// Runs a probe command that ends with a `DONE` line.
    fn done(&self, args: &[&str]) -> anyhow::Result<Flood> {
        let output = self
            .command(args)
            .output()
            .context("running egress-probe")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("DONE ").and_then(Flood::parse))
            .ok_or_else(|| {
                anyhow!(
                    "egress-probe {args:?} failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            })
    }

    /// One UDP datagram to `addr` from each local port in `ports` (a new
    /// socket each).
    pub fn spray_udp(
        &self,
        addr: SocketAddr,
        ports: std::ops::RangeInclusive<u16>,
    ) -> anyhow::Result<Flood> {
        let range = format!("{}-{}", ports.start(), ports.end());
        self.done(&["spray", &addr.to_string(), "--ports", &range])
    }

    /// `count` answered TCP connections, open until the result is dropped.
    pub fn hold_many(&self, addr: SocketAddr, count: u64) -> anyhow::Result<Held> {
        let count_arg = count.to_string();
        let mut child = self
            .command(&["hold-many", &addr.to_string(), "--count", &count_arg])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting egress-probe hold-many")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let lines = line_channel(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        let held = Held {
            child,
            stdin: Some(stdin),
            lines,
        };
        match held.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line == format!("OPEN {count}") => Ok(held),
            Ok(line) => bail!("hold-many {addr}: {line}"),
            Err(_) => bail!("hold-many {addr}: no answer"),
        }
    }

    /// One UDP datagram to `addr` from `from`, an address this host does
    /// not have (`IP_FREEBIND`).
    pub fn spoof_udp(&self, from: SocketAddr, addr: SocketAddr) -> anyhow::Result<Outcome> {
        self.run(&["spoof", &addr.to_string(), "--from", &from.to_string()])
    }

    /// One UDP datagram from `from` on a socket bound there with
    /// IP_TRANSPARENT / IPV6_TRANSPARENT (a TPROXY proxy's way).
    pub fn spoof_udp_transparent(
        &self,
        from: SocketAddr,
        addr: SocketAddr,
    ) -> anyhow::Result<Outcome> {
        let (addr, from) = (addr.to_string(), from.to_string());
        self.run(&["spoof", &addr, "--from", &from, "--transparent"])
    }

    /// One UDP datagram from `from`, IP header written by the probe on an
    /// `IPPROTO_RAW` socket.
    pub fn raw_udp_from(&self, from: SocketAddr, addr: SocketAddr) -> anyhow::Result<Outcome> {
        self.run(&["raw-from", &addr.to_string(), "--from", &from.to_string()])
    }

    /// One tunnelled packet ([`Tunnelled`]), written whole on an
    /// `IPPROTO_RAW` socket.
    pub fn tunnel(&self, packet: &Tunnelled) -> anyhow::Result<Outcome> {
        let (addr, from) = (packet.outer_to.to_string(), packet.outer_from.to_string());
        let (inner_from, inner_to) = (packet.inner_from.to_string(), packet.inner_to.to_string());
        self.run(&[
            "tunnel",
            packet.tunnel.name(),
            &addr,
            "--from",
            &from,
            "--inner-from",
            &inner_from,
            "--inner-to",
            &inner_to,
        ])
    }

    /// One UDP datagram from `from`, as a whole frame on an AF_PACKET
    /// socket: EPERM when the socket is refused.
    pub fn packet_udp(&self, from: SocketAddr, addr: SocketAddr) -> anyhow::Result<Outcome> {
        self.run(&["packet", &addr.to_string(), "--from", &from.to_string()])
    }

    /// [`Self::packet_udp`] in a frame to the MAC address `mac` (a router's,
    /// `aa:bb:…`) rather than to broadcast.
    pub fn packet_udp_to_mac(
        &self,
        from: SocketAddr,
        addr: SocketAddr,
        mac: &str,
    ) -> anyhow::Result<Outcome> {
        let (addr, from) = (addr.to_string(), from.to_string());
        self.run(&["packet", &addr, "--from", &from, "--to-mac", mac])
    }

    /// One ICMP echo on a raw socket, as `ping` sends it: `Ok` once the
    /// reply is back.
    pub fn ping(&self, addr: IpAddr) -> anyhow::Result<Outcome> {
        self.run(&["ping", &addr.to_string()])
    }

    /// Connects and keeps the socket, to send on it later.
    pub fn hold(&self, addr: SocketAddr, proto: Proto) -> anyhow::Result<Held> {
        let target = format!("{addr}/{}", proto.suffix());
        let timeout_ms = CONNECT_TIMEOUT.as_millis().to_string();
        let mut child = self
            .command(&["hold", &target, "--timeout-ms", &timeout_ms])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting egress-probe hold")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let lines = line_channel(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        let held = Held {
            child,
            stdin: Some(stdin),
            lines,
        };
        match held.lines.recv_timeout(Duration::from_secs(5)) {
            Ok(line) if line == "CONNECTED" => Ok(held),
            Ok(line) => bail!("hold {target}: {line}"),
            Err(_) => bail!("hold {target}: no answer"),
        }
    }

    /// Connects (or sends) again and again, in the background, until
    /// [`Repeater::stop`].
    pub fn repeat(&self, op: RepeatOp, addr: SocketAddr, proto: Proto) -> anyhow::Result<Repeater> {
        let target = format!("{addr}/{}", proto.suffix());
        let op = match op {
            RepeatOp::Connect => "connect",
            RepeatOp::Sendto => "sendto",
        };
        let mut child = self
            .command(&["repeat", op, &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting egress-probe repeat")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let counting = tally.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(result) = line.strip_prefix("RESULT ") {
                    let outcome = Outcome::parse(result.trim());
                    if let Ok(mut tally) = counting.lock() {
                        tally.add(outcome);
                    }
                }
            }
        });
        Ok(Repeater {
            child,
            stdin: Some(stdin),
            reader: Some(reader),
            tally,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(probe_exe());
        if let Some(cgroup) = &self.cgroup {
            cmd.arg("--cgroup").arg(cgroup);
        }
        if let Some(child) = &self.escape_into {
            cmd.arg("--escape-into").arg(child);
        }
        if let Some(uid) = self.uid {
            cmd.arg("--uid").arg(uid.to_string());
        }
        cmd.args(["--netns", self.netns.name()]).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<Outcome> {
        let output = self
            .command(args)
            .output()
            .context("running egress-probe")?;
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

/// One UDP datagram from `inner_from` to `inner_to`, encapsulated by
/// `tunnel` in an outer packet from `outer_from` to `outer_to`
/// ([`Client::tunnel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnelled {
    pub tunnel: Tunnel,
    pub outer_from: IpAddr,
    pub outer_to: IpAddr,
    pub inner_from: SocketAddr,
    pub inner_to: SocketAddr,
}

impl Tunnelled {
    /// The outer packet's IP protocol.
    pub fn protocol(&self) -> u8 {
        self.tunnel.outer_protocol(self.inner_to.is_ipv6())
    }
}

impl fmt::Display for Tunnelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} → {} around {} → {}",
            self.tunnel
                .device(self.outer_to.is_ipv6(), self.inner_to.is_ipv6()),
            self.outer_from,
            self.outer_to,
            self.inner_from,
            self.inner_to
        )
    }
}

/// What [`Client::flood_tcp`] or [`Client::spray_udp`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flood {
    pub ok: u64,
    pub failed: u64,
    /// The first failure, `none` if there was none.
    pub first: String,
}

impl Flood {
    fn parse(line: &str) -> Option<Self> {
        let mut ok = None;
        let mut failed = None;
        let mut first = None;
        for field in line.split(' ') {
            if let Some(v) = field.strip_prefix("ok=") {
                ok = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("failed=") {
                failed = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("first=") {
                first = Some(v.to_owned());
            } else if let Some(first) = first.as_mut() {
                first.push(' ');
                first.push_str(field);
            }
        }
        Some(Self {
            ok: ok?,
            failed: failed?,
            first: first?,
        })
    }
}

/// A connected socket in a probe process; closed on drop.
pub struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Held {
    /// Sends one segment (TCP) or datagram (UDP) on the held socket.
    pub fn send(&mut self) -> anyhow::Result<Outcome> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("closed"))?;
        writeln!(stdin, "send").context("asking the probe to send")?;
        stdin.flush()?;
        loop {
            match self.lines.recv_timeout(Duration::from_secs(5)) {
                Ok(line) => {
                    if let Some(result) = line.strip_prefix("RESULT ") {
                        return Ok(Outcome::parse(result.trim()));
                    }
                }
                Err(_) => bail!("the held socket's probe did not answer"),
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a [`Repeater`] does each time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepeatOp {
    /// `connect()` (TCP) or `connect()` + `send()` (UDP).
    Connect,
    /// Unconnected UDP `sendto()`.
    Sendto,
}

/// Outcomes counted by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: u64,
    pub eperm: u64,
    /// Anything else, as printed.
    pub other: Vec<String>,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Eperm => self.eperm += 1,
            other => self.other.push(other.to_string()),
        }
    }

    pub fn total(&self) -> u64 {
        self.ok + self.eperm + self.other.len() as u64
    }
}

/// A probe repeating an operation in the background.
pub struct Repeater {
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Option<thread::JoinHandle<()>>,
    tally: Arc<Mutex<Tally>>,
}

impl Repeater {
    /// The outcomes so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` attempts were made (or `within` passed).
    pub fn wait_for(&self, n: u64, within: Duration) -> Tally {
        let deadline = Instant::now() + within;
        loop {
            let tally = self.tally();
            if tally.total() >= n || Instant::now() >= deadline {
                return tally;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `n` more attempts than so far were made: the operation
    /// ran at least `n` times in the state the test is in now. Fails if
    /// they were not made within `within`, which only bounds a hang.
    pub fn wait_for_more(&self, n: u64, within: Duration) -> anyhow::Result<Tally> {
        let want = self.tally().total() + n;
        let tally = self.wait_for(want, within);
        if tally.total() < want {
            bail!(
                "{} of {want} attempts within {within:?}: {tally:?}",
                tally.total()
            );
        }
        Ok(tally)
    }

    /// Stops the probe and returns every outcome.
    pub fn stop(mut self) -> Tally {
        self.finish();
        self.tally()
    }

    fn finish(&mut self) {
        // Closing stdin ends the loop after the current attempt.
        drop(self.stdin.take());
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Repeater {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            self.finish();
        }
    }
}

fn line_channel(stdout: ChildStdout) -> Receiver<String> {
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// What reached a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A TCP connection was accepted.
    Accepted(SocketAddr),
    /// A UDP datagram arrived.
    Received(SocketAddr),
    /// Data arrived on an accepted TCP connection.
    Data(SocketAddr),
    /// An IP packet arrived, seen by a sniffer ([`Listener::sniff`]).
    Packet { source: IpAddr, protocol: u8 },
}

impl Event {
    /// The peer; for a [`Event::Packet`], its source with port 0.
    pub fn peer(&self) -> SocketAddr {
        match self {
            Event::Accepted(peer) | Event::Received(peer) | Event::Data(peer) => *peer,
            Event::Packet { source, .. } => SocketAddr::new(*source, 0),
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let kind = words.next()?;
        if kind == "PACKET" {
            let source = words.next()?.parse().ok()?;
            let protocol = words.next()?.parse().ok()?;
            return Some(Event::Packet { source, protocol });
        }
        let peer = words.next()?.parse().ok()?;
        match kind {
            "ACCEPTED" => Some(Event::Accepted(peer)),
            "RECEIVED" => Some(Event::Received(peer)),
            "DATA" => Some(Event::Data(peer)),
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
        let target = format!("{addr}/{}", proto.suffix());
        Self::spawn(netns, &["listen", &target], addr)
    }

    /// Starts a sniffer in `netns` that reports every IP packet to `addr`
    /// arriving on any of its interfaces, whatever its protocol
    /// ([`Event::Packet`]: source and protocol), and waits until it is
    /// ready. Sees what a socket would not: an outer tunnel packet, a
    /// protocol nothing in the namespace handles.
    pub fn sniff(netns: &Netns, addr: IpAddr) -> anyhow::Result<Self> {
        Self::spawn(
            netns,
            &["sniff", &addr.to_string()],
            SocketAddr::new(addr, 0),
        )
    }

    fn spawn(netns: &Netns, args: &[&str], addr: SocketAddr) -> anyhow::Result<Self> {
        let mut child = Command::new(probe_exe())
            .args(["--netns", netns.name()])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the egress-probe listener")?;
        let lines = line_channel(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
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

    /// Every event that arrives within `within`.
    pub fn events(&self, within: Duration) -> Vec<Event> {
        let deadline = Instant::now() + within;
        let mut events = Vec::new();
        while let Some(event) = self.next_event(deadline.saturating_duration_since(Instant::now()))
        {
            events.push(event);
        }
        events
    }

    /// Waits for `n` events, each within `within` of the previous one;
    /// returns those that came.
    pub fn expect(&self, n: usize, within: Duration) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            match self.next_event(within) {
                Some(event) => events.push(event),
                None => break,
            }
        }
        events
    }

    /// Discards what arrived so far.
    pub fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
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

/// What an [`EchoServer`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// A TCP connection was accepted.
    Accepted(SocketAddr),
    /// A UDP datagram arrived.
    Received(SocketAddr),
    /// The server wrote (TCP) or sent (UDP) the echo back to the peer: the
    /// outcome of that `write()`/`sendto()`. For TCP `Ok` only means the
    /// data was queued; the client tells whether it arrived.
    Echoed(SocketAddr, Outcome),
}

impl Served {
    fn parse(line: &str) -> Option<Self> {
        let mut words = line.splitn(3, ' ');
        let (kind, peer) = (words.next()?, words.next()?);
        let peer = peer.parse().ok()?;
        match kind {
            "ACCEPTED" => Some(Served::Accepted(peer)),
            "RECEIVED" => Some(Served::Received(peer)),
            "ECHOED" => Some(Served::Echoed(peer, Outcome::parse(words.next()?.trim()))),
            _ => None,
        }
    }
}

/// An echo server (`egress-probe serve`) in a namespace and, usually, in a
/// workload's cgroup, so that its answers go through the enforcement;
/// killed on drop.
pub struct EchoServer {
    child: Child,
    lines: Receiver<String>,
    addr: SocketAddr,
}

impl EchoServer {
    /// Starts serving on `addr` in `netns`, inside `cgroup` if given, and
    /// waits until it is bound.
    pub fn start(
        netns: &Netns,
        cgroup: Option<&Path>,
        addr: SocketAddr,
        proto: Proto,
    ) -> anyhow::Result<Self> {
        Self::spawn(netns, cgroup, addr, proto, &[])
    }

    /// A TCP echo server that accepts TCP Fast Open (and turns the Fast Open
    /// server on in `netns`).
    pub fn start_fast_open(
        netns: &Netns,
        cgroup: Option<&Path>,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::spawn(netns, cgroup, addr, Proto::Tcp, &["--fast-open"])
    }

    /// A stand-in for Envoy: a TCP echo server that first answers each
    /// connection with its `SO_ORIGINAL_DST` (see [`Client::ask`]).
    pub fn start_proxy(
        netns: &Netns,
        cgroup: Option<&Path>,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::spawn(netns, cgroup, addr, Proto::Tcp, &["--original-dst"])
    }

    /// [`EchoServer::start`], reporting nothing (for floods).
    pub fn start_quiet(
        netns: &Netns,
        cgroup: Option<&Path>,
        addr: SocketAddr,
        proto: Proto,
    ) -> anyhow::Result<Self> {
        Self::spawn(netns, cgroup, addr, proto, &["--quiet"])
    }

    fn spawn(
        netns: &Netns,
        cgroup: Option<&Path>,
        addr: SocketAddr,
        proto: Proto,
        options: &[&str],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(probe_exe());
        if let Some(cgroup) = cgroup {
            cmd.arg("--cgroup").arg(cgroup);
        }
        cmd.args(["--netns", netns.name(), "serve"])
            .arg(format!("{addr}/{}", proto.suffix()))
            .args(options);
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the egress-probe echo server")?;
        let lines = line_channel(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        let server = Self { child, lines, addr };
        match server.lines.recv_timeout(Duration::from_secs(5)) {
            Ok(line) if line.starts_with("LISTENING") => Ok(server),
            Ok(line) => bail!("echo server on {addr} said {line:?} instead of LISTENING"),
            Err(_) => bail!("echo server on {addr} did not start (see its stderr above)"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next event, if one comes within `within`.
    pub fn next_event(&self, within: Duration) -> Option<Served> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(event) = Served::parse(&line) {
                        return Some(event);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The outcome of the next echo (skipping the accept or receive before
    /// it), if one comes within `within`.
    pub fn next_echo(&self, within: Duration) -> Option<(SocketAddr, Outcome)> {
        let deadline = Instant::now() + within;
        loop {
            match self.next_event(deadline.saturating_duration_since(Instant::now()))? {
                Served::Echoed(peer, outcome) => return Some((peer, outcome)),
                _ => continue,
            }
        }
    }

    /// Discards what happened so far.
    pub fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
