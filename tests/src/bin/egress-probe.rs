//! A tiny network client/server that the privileged tests run as a child.
//!
//! It first moves itself into a cgroup (so that its sockets are charged to
//! it: a socket belongs to the cgroup its creator was in at `socket()`), then
//! enters a network namespace with `setns`, then does one thing and prints
//! machine-readable lines:
//!
//! - `listen ADDR/PROTO`: `LISTENING <addr>`, then `ACCEPTED <peer>` (TCP) or
//!   `RECEIVED <peer> <bytes>` (UDP) for each event, until killed.
//! - `connect ADDR/PROTO`: one `RESULT <outcome>` line. For UDP this is
//!   `connect()` then `send()`.
//! - `sendto ADDR`: one `RESULT <outcome>` line for an unconnected UDP
//!   `sendto()`, which never runs the `connect4/6` hooks (it runs
//!   `sendmsg4/6`).
//! - `hold ADDR/PROTO`: connects, prints `CONNECTED` (or `RESULT <outcome>`
//!   if that fails and exits), then sends one datagram or segment per line
//!   read on stdin, printing `RESULT <outcome>` for each, until stdin closes.
//!   A socket connected before a policy exists is how a test bypasses the
//!   `connect` hooks.
//! - `repeat connect|sendto ADDR/PROTO`: one `RESULT <outcome>` line per
//!   attempt, every `--interval-ms`, until stdin closes.
//!
//! TCP listeners also print `DATA <peer> <bytes>` for data they read.
//!
//! Servers that answer, for the tests of replies:
//!
//! - `serve ADDR/PROTO`: an echo server. `LISTENING <addr>`, then for TCP
//!   `ACCEPTED <peer>` per connection and `ECHOED <peer> <outcome>` per
//!   write back (each connection in its own thread, closed when the client
//!   closes); for UDP `RECEIVED <peer> <bytes>` then `ECHOED <peer>
//!   <outcome>` for the `sendto()` back to the sender. `--quiet` prints
//!   nothing after `LISTENING`. `--fast-open` (TCP) turns on the TCP Fast
//!   Open server in the namespace (`net.ipv4.tcp_fastopen = 3`) and on the
//!   listener.
//! - `request ADDR/PROTO [--bind LOCAL]`: sends one request (TCP: connect,
//!   write; UDP: `sendto`) and waits for the answer: `RESULT ok` if one
//!   came, `RESULT timeout` if not, or the error of the send. With
//!   `--fast-open` (TCP), the request goes in the SYN (`MSG_FASTOPEN`) once
//!   the client has a cookie for the server.
//! - `flood ADDR --count N`: N TCP connections one after the other, each
//!   one request and its echo, then closed (the client closes first).
//!   `DONE ok=<n> failed=<n> first=<outcome>`.
//! - `hold-many ADDR --count N`: N TCP connections kept open (each with
//!   one answered request) until stdin closes: `OPEN <n>`, `RESULT
//!   <outcome>` if one fails.
//! - `spray ADDR --ports FIRST-LAST`: one UDP datagram from each local port
//!   of the range (a new socket each), to fill the flow records.
//!   `DONE ok=<n> failed=<n> first=<outcome>`.
//! - `spoof ADDR --from SRC`: one UDP datagram to ADDR from SRC, an address
//!   this host does not have (`IP_FREEBIND`; IPv6 lets such a socket send
//!   from it): what a workload could do to forge an inbound flow.
//!
//! - `raw ADDR`: one UDP datagram to ADDR written by hand on a raw IP
//!   socket (`SOCK_RAW`, `IPPROTO_UDP`): no `connect` or `sendmsg` hook
//!   sees it, only `cgroup_skb/egress` does. `RESULT <outcome>` of the
//!   `sendto()`. Listeners report it as an ordinary datagram.
//! - `tunnel KIND ADDR --from SRC --inner-from A --inner-to B`: one UDP
//!   datagram from A to B, encapsulated as a KIND tunnel device would
//!   (`gre`, `ip`, `geneve`, `geneve-ethernet`, `vxlan`; see
//!   `integration_tests::packet::Tunnel`) in an outer packet from SRC to
//!   ADDR, written whole on an `IPPROTO_RAW` socket: what a tunnel device
//!   puts on the wire, without one. `RESULT <outcome>`.
//! - `sniff ADDR`: every IP packet to the address ADDR that arrives on any
//!   interface of the namespace, seen on an `AF_PACKET` socket before
//!   anything in the namespace acts on it: `LISTENING <ADDR>:0`, then
//!   `PACKET <source> <protocol>` for each, until killed. How a test sees
//!   an outer packet of any protocol arrive.
//!
//! For the transparent redirect:
//!
//! - `serve ADDR --original-dst`: a stand-in for Envoy. Per accepted
//!   connection it asks `getsockopt(SO_ORIGINAL_DST)` (`SOL_IP`, or
//!   `SOL_IPV6` / `IP6T_SO_ORIGINAL_DST` on an IPv6 socket), prints
//!   `ORIGINAL <peer> <addr|outcome>`, writes `<addr|outcome>\n` to the
//!   client first, then echoes.
//! - `request ADDR --print-answer`: also prints `ANSWER <text>`: for TCP
//!   the first line that came back, for UDP the address the answer came
//!   from (what a resolver checks).
//!
//! With `--uid N`, the probe switches to that user (and group) after
//! entering its cgroup and namespace: a process running as Istio's proxy
//! UID 1337 in an app's cgroup.
//!
//! With `--escape-into NAME`, the probe creates a child cgroup `NAME` of
//! `--cgroup` and moves into it, as a process escaping its workload's
//! cgroup would.
//!
//! For the benchmarks (`egress-bench`; see `integration_tests::loadgen`):
//!
//! - `connect-rate ADDR --seconds T`: TCP connects one after another for T
//!   seconds, each closed with a reset: `RATE ok=… rate=… p50_us=… p99_us=…`.
//! - `accept-close ADDR`: accepts and closes at once (the stand-in proxy):
//!   `LISTENING <addr>`, then nothing until killed.
//! - `until ADDR --want ok|eperm`: connects every `--interval-ms` until the
//!   outcome is the wanted one: `READY <first>`, then `REACHED mono_ns=…`
//!   (`CLOCK_MONOTONIC`, comparable with the caller's clock).
//!
//! For the differential and program-level tests, many operations in one
//! process (one line of stdin each, one line of stdout each, in order):
//!
//! - `batch`: each line is `connect FROM ADDR/PROTO`, `sendto FROM ADDR`
//!   or `raw FROM ADDR` (the operations above, from a socket bound to the
//!   address FROM, port 0; `raw` is `raw-from` with FROM port 40000):
//!   `RESULT <outcome>`.
//! - `test-run PROGRAM_ID`: each line is a frame in hex, run once through
//!   the loaded program PROGRAM_ID with `BPF_PROG_TEST_RUN` from this
//!   process (so from its cgroup): `RETVAL <n>`, or `RESULT <outcome>` if
//!   the call failed.
//!
//! `<outcome>` is `ok`, `eperm`, `refused`, `timeout` or `errno=N <text>`.
//!
//! `ip netns exec` is not used because it remounts `/sys` in a new mount
//! namespace, which hides the cgroup2 mount on hybrid hosts.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::ExitCode,
    str::FromStr,
    time::Duration,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use integration_tests::{
    loadgen,
    packet::{self, Tunnel},
};

#[derive(Parser)]
#[command(about = "Network probe for the privileged tests")]
struct Args {
    /// cgroup v2 directory to move into first.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Then create this child cgroup of `--cgroup` and move into it.
    #[arg(long, requires = "cgroup")]
    escape_into: Option<String>,
    /// Network namespace (a name under /run/netns) to enter next.
    #[arg(long)]
    netns: Option<String>,
    /// Then run as this user and group id.
    #[arg(long)]
    uid: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept connections (TCP) or datagrams (UDP) and report each.
    Listen { target: Target },
    /// Connect (and for UDP, send one datagram) and report the outcome.
    Connect {
        target: Target,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Send one UDP datagram without connecting, and report the outcome.
    Sendto {
        addr: SocketAddr,
        /// Bind to this local address first (default: any, port 0).
        #[arg(long)]
        bind: Option<SocketAddr>,
    },
    /// Echo what arrives (TCP per connection, UDP per datagram).
    Serve {
        target: Target,
        #[arg(long)]
        quiet: bool,
        #[arg(long)]
        fast_open: bool,
        /// Answer each connection with its `SO_ORIGINAL_DST` first.
        #[arg(long)]
        original_dst: bool,
    },
    /// One UDP datagram from each local port of a range.
    Spray {
        addr: SocketAddr,
        /// `FIRST-LAST`, inclusive.
        #[arg(long)]
        ports: String,
    },
    /// One request; report whether the answer came.
    Request {
        target: Target,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[arg(long)]
        bind: Option<SocketAddr>,
        #[arg(long)]
        fast_open: bool,
        /// Print the answer (`ANSWER <text>`).
        #[arg(long)]
        print_answer: bool,
    },
    /// Many TCP request/answer connections in a row.
    Flood {
        addr: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Many answered TCP connections kept open until stdin closes.
    HoldMany {
        addr: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// One UDP datagram from an address this host does not have.
    Spoof {
        addr: SocketAddr,
        #[arg(long)]
        from: SocketAddr,
        /// Use IP_TRANSPARENT / IPV6_TRANSPARENT (what a TPROXY proxy
        /// uses) instead of IP_FREEBIND to bind to the foreign address.
        #[arg(long)]
        transparent: bool,
    },
    /// One UDP datagram from `from`, written whole (IP and UDP headers) on
    /// an AF_PACKET socket to the first non-loopback interface, with the
    /// broadcast MAC (no ARP needed): no IP-level hook ever sees it.
    Packet {
        addr: SocketAddr,
        #[arg(long)]
        from: SocketAddr,
        /// The frame's destination MAC instead of broadcast (`aa:bb:…`):
        /// a router's, so that it forwards the frame (routers forward
        /// frames addressed to them only).
        #[arg(long, value_parser = parse_mac)]
        to_mac: Option<[u8; 6]>,
    },
    /// One UDP datagram from `from`, IP header included, on an
    /// `IPPROTO_RAW` socket (header included: any source).
    RawFrom {
        addr: SocketAddr,
        #[arg(long)]
        from: SocketAddr,
    },
    /// One tunnelled UDP datagram, header included, on an `IPPROTO_RAW`
    /// socket.
    Tunnel {
        tunnel: Tunnel,
        /// The outer destination.
        addr: IpAddr,
        /// The outer source.
        #[arg(long)]
        from: IpAddr,
        #[arg(long)]
        inner_from: SocketAddr,
        #[arg(long)]
        inner_to: SocketAddr,
    },
    /// Report every IP packet to an address that arrives.
    Sniff { addr: IpAddr },
    /// One ICMP echo request on a raw IP socket, as `ping` sends it;
    /// "ok" once the echo reply arrives (or "timeout").
    Ping {
        addr: IpAddr,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// One UDP datagram built by hand on a raw IP socket.
    Raw { addr: SocketAddr },
    /// Connect, then send once per stdin line until stdin closes.
    Hold {
        target: Target,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// TCP connects one after another for a while: rate and latency.
    ConnectRate {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Accept TCP connections and close them at once.
    AcceptClose { addr: SocketAddr },
    /// Connect until the outcome is the wanted one.
    Until {
        addr: SocketAddr,
        #[arg(long)]
        want: WantArg,
        #[arg(long, default_value_t = 1)]
        interval_ms: u64,
        #[arg(long, default_value_t = 200)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 60_000)]
        give_up_ms: u64,
    },
    /// One connect, sendto or raw datagram per stdin line.
    Batch {
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// One `BPF_PROG_TEST_RUN` of a loaded program per stdin line (a
    /// frame in hex).
    TestRun { program_id: u32 },
    /// Connect (or sendto) again and again until stdin closes.
    Repeat {
        op: RepeatOp,
        target: Target,
        #[arg(long, default_value_t = 2)]
        interval_ms: u64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WantArg {
    Ok,
    Eperm,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RepeatOp {
    Connect,
    Sendto,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// `IP:PORT`, `IP:PORT/tcp` or `IP:PORT/udp` (`[v6]:PORT` for IPv6).
#[derive(Clone, Copy)]
struct Target {
    addr: SocketAddr,
    proto: Proto,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, proto) = match s.rsplit_once('/') {
            Some((addr, "tcp")) => (addr, Proto::Tcp),
            Some((addr, "udp")) => (addr, Proto::Udp),
            Some((_, other)) => return Err(format!("unknown protocol {other:?}")),
            None => (s, Proto::Tcp),
        };
        let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
        Ok(Self { addr, proto })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("egress-probe: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // Order matters: the cgroup first, while this process still sees the
    // host's mounts; then the namespace.
    if let Some(cgroup) = &args.cgroup {
        enter_cgroup(cgroup)?;
        if let Some(child) = &args.escape_into {
            let child = cgroup.join(child);
            std::fs::create_dir_all(&child)
                .with_context(|| format!("creating {}", child.display()))?;
            enter_cgroup(&child)?;
        }
    }
    if let Some(netns) = &args.netns {
        enter_netns(netns)?;
    }
    if let Some(uid) = args.uid {
        // SAFETY: plain syscalls; the group first, while still root.
        if unsafe { libc::setgid(uid) } != 0 || unsafe { libc::setuid(uid) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("becoming uid {uid}"));
        }
    }
    match args.command {
        Command::Listen { target } => listen(target),
        Command::Connect { target, timeout_ms } => {
            let outcome = connect(target, Duration::from_millis(timeout_ms));
            report(outcome)
        }
        Command::Sendto { addr, bind } => report(sendto_from(bind, addr)),
        Command::Serve {
            target,
            quiet,
            fast_open,
            original_dst,
        } => serve(target, quiet, fast_open, original_dst),
        Command::Spray { addr, ports } => spray(addr, &ports),
        Command::Request {
            target,
            timeout_ms,
            bind,
            fast_open,
            print_answer,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            if fast_open {
                report(request_fast_open(target.addr, timeout))
            } else {
                report(request(target, bind, timeout, print_answer))
            }
        }
        Command::Flood {
            addr,
            count,
            timeout_ms,
        } => flood(addr, count, Duration::from_millis(timeout_ms)),
        Command::HoldMany {
            addr,
            count,
            timeout_ms,
        } => hold_many(addr, count, Duration::from_millis(timeout_ms)),
        Command::Spoof {
            addr,
            from,
            transparent,
        } => report(spoof(from, addr, transparent)),
        Command::Packet { addr, from, to_mac } => {
            report(packet_frame(from, addr, to_mac.unwrap_or([0xff; 6])))
        }
        Command::RawFrom { addr, from } => report(raw_from(from, addr)),
        Command::Tunnel {
            tunnel: kind,
            addr,
            from,
            inner_from,
            inner_to,
        } => report(tunnel(kind, (from, addr), (inner_from, inner_to))),
        Command::Sniff { addr } => sniff(addr),
        Command::Ping { addr, timeout_ms } => report(ping(addr, Duration::from_millis(timeout_ms))),
        Command::Raw { addr } => report(raw_udp(addr)),
        Command::Hold { target, timeout_ms } => hold(target, Duration::from_millis(timeout_ms)),
        Command::ConnectRate {
            addr,
            seconds,
            timeout_ms,
        } => {
            let seconds = Duration::try_from_secs_f64(seconds).context("--seconds")?;
            let rate = loadgen::connect_rate(addr, seconds, Duration::from_millis(timeout_ms));
            println!("{}", rate.line());
            Ok(())
        }
        Command::AcceptClose { addr } => loadgen::accept_close(addr),
        Command::Until {
            addr,
            want,
            interval_ms,
            timeout_ms,
            give_up_ms,
        } => {
            let want = match want {
                WantArg::Ok => loadgen::Want::Ok,
                WantArg::Eperm => loadgen::Want::Eperm,
            };
            loadgen::until(
                addr,
                want,
                Duration::from_millis(interval_ms),
                Duration::from_millis(timeout_ms),
                Duration::from_millis(give_up_ms),
            )
            .context("until")
        }
        Command::Batch { timeout_ms } => batch(Duration::from_millis(timeout_ms)),
        Command::TestRun { program_id } => test_run(program_id),
        Command::Repeat {
            op,
            target,
            interval_ms,
            timeout_ms,
        } => repeat(
            op,
            target,
            Duration::from_millis(interval_ms),
            Duration::from_millis(timeout_ms),
        ),
    }
}

fn enter_cgroup(cgroup: &std::path::Path) -> anyhow::Result<()> {
    let procs = cgroup.join("cgroup.procs");
    let mut file = OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {}", procs.display()))?;
    // "0" means "the writing process".
    file.write_all(b"0")
        .with_context(|| format!("moving into {}", cgroup.display()))
}

fn enter_netns(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: plain syscall on a descriptor we own. The probe is single
    // threaded, so the whole process ends up in the namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}

fn listen(target: Target) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match target.proto {
        Proto::Tcp => {
            let listener = TcpListener::bind(target.addr)
                .with_context(|| format!("binding {}", target.addr))?;
            writeln!(out, "LISTENING {}", listener.local_addr()?)?;
            drop(out);
            for stream in listener.incoming() {
                let mut stream = stream.context("accept")?;
                let peer = stream.peer_addr()?;
                println!("ACCEPTED {peer}");
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        println!("DATA {peer} {n}");
                    }
                });
            }
        }
        Proto::Udp => {
            let socket =
                UdpSocket::bind(target.addr).with_context(|| format!("binding {}", target.addr))?;
            writeln!(out, "LISTENING {}", socket.local_addr()?)?;
            let mut buf = [0u8; 2048];
            loop {
                let (n, peer) = socket.recv_from(&mut buf).context("recv_from")?;
                writeln!(out, "RECEIVED {peer} {n}")?;
            }
        }
    }
    bail!("listener stopped")
}

/// `sniff`: an `AF_PACKET` socket for every protocol on every interface.
/// `SOCK_DGRAM` strips the link-layer header, so each read starts with the
/// IP header whatever the interface.
fn sniff(addr: IpAddr) -> anyhow::Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(all),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    println!("LISTENING {}", SocketAddr::new(addr, 0));
    let mut buf = vec![0u8; 65_536];
    loop {
        // SAFETY: an all-zero sockaddr_ll is valid; the kernel fills it.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the buffers and their lengths outlive the call.
        let n = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("recvfrom");
        }
        // What this namespace sends shows up too.
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        if let Some((source, destination, protocol)) = packet::addresses(&buf[..n as usize]) {
            if destination == addr {
                println!("PACKET {source} {protocol}");
            }
        }
    }
}

fn connect(target: Target, timeout: Duration) -> io::Result<()> {
    connect_from(None, target, timeout)
}

/// [`connect`] from a socket bound to `bind` (port 0) first.
fn connect_from(bind: Option<IpAddr>, target: Target, timeout: Duration) -> io::Result<()> {
    let local = bind.map_or(unspecified(target.addr), |ip| SocketAddr::new(ip, 0));
    match target.proto {
        Proto::Tcp => {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(target.addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.bind(&local.into())?;
            socket.connect_timeout(&target.addr.into(), timeout)
        }
        Proto::Udp => {
            let socket = UdpSocket::bind(local)?;
            socket.connect(target.addr)?;
            socket.send(PAYLOAD).map(drop)
        }
    }
}

/// `batch`: one operation per stdin line, one `RESULT` line each.
fn batch(timeout: Duration) -> anyhow::Result<()> {
    for line in io::stdin().lines() {
        let line = line.context("reading stdin")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let [op, from, to] = words[..] else {
            bail!("batch line {line:?}: want OP FROM TO");
        };
        let from: IpAddr = from.parse().with_context(|| format!("FROM in {line:?}"))?;
        let to: Target = to
            .parse()
            .map_err(|e| anyhow::anyhow!("TO in {line:?}: {e}"))?;
        let outcome = match op {
            "connect" => connect_from(Some(from), to, timeout),
            "sendto" => sendto_from(Some(SocketAddr::new(from, 0)), to.addr),
            "raw" => raw_from(SocketAddr::new(from, 40_000), to.addr),
            other => bail!("batch line {line:?}: unknown operation {other:?}"),
        };
        report(outcome)?;
    }
    Ok(())
}

/// `test-run`: each stdin line a hex frame for the program `program_id`.
fn test_run(program_id: u32) -> anyhow::Result<()> {
    for line in io::stdin().lines() {
        let line = line.context("reading stdin")?;
        let frame = hex(line.trim()).with_context(|| format!("frame {line:?}"))?;
        match egress_agent::dataplane::test_run(program_id, &frame) {
            Ok(retval) => println!("RETVAL {retval}"),
            Err(err) => report(Err(err))?,
        }
    }
    Ok(())
}

fn hex(text: &str) -> anyhow::Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("not hex"))
        .collect()
}

fn hold(target: Target, timeout: Duration) -> anyhow::Result<()> {
    enum Held {
        Tcp(TcpStream),
        Udp(UdpSocket),
    }
    let connected = match target.proto {
        Proto::Tcp => TcpStream::connect_timeout(&target.addr, timeout).map(Held::Tcp),
        Proto::Udp => UdpSocket::bind(unspecified(target.addr)).and_then(|s| {
            s.connect(target.addr)?;
            Ok(Held::Udp(s))
        }),
    };
    let mut held = match connected {
        Ok(held) => held,
        Err(err) => return report(Err(err)),
    };
    println!("CONNECTED");
    for line in io::stdin().lines() {
        line?;
        let sent = match &mut held {
            Held::Tcp(s) => s.write_all(PAYLOAD),
            Held::Udp(s) => s.send(PAYLOAD).map(drop),
        };
        report(sent)?;
    }
    Ok(())
}

fn repeat(
    op: RepeatOp,
    target: Target,
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<()> {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    std::thread::spawn(move || {
        for line in io::stdin().lines() {
            if line.is_err() {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let outcome = match op {
            RepeatOp::Connect => connect(target, timeout),
            RepeatOp::Sendto => sendto(target.addr),
        };
        report(outcome)?;
        std::thread::sleep(interval);
    }
    Ok(())
}

/// What clients send.
const PAYLOAD: &[u8] = b"egress-probe";

fn sendto(addr: SocketAddr) -> io::Result<()> {
    sendto_from(None, addr)
}

fn sendto_from(bind: Option<SocketAddr>, addr: SocketAddr) -> io::Result<()> {
    let socket = UdpSocket::bind(bind.unwrap_or(unspecified(addr)))?;
    socket.send_to(PAYLOAD, addr).map(drop)
}

/// What a TCP connection of `serve` does: echo until the client closes.
fn echo_stream(mut stream: TcpStream, peer: SocketAddr, quiet: bool) {
    let mut buf = [0u8; 2048];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        let written = stream.write_all(&buf[..n]);
        if !quiet {
            println!("ECHOED {peer} {}", outcome_text(&written));
        }
    }
}

/// `getsockopt(SO_ORIGINAL_DST)` on an accepted socket, as Envoy asks it:
/// `SOL_IP` on IPv4 sockets, `SOL_IPV6` (`IP6T_SO_ORIGINAL_DST`, also 80)
/// on IPv6 ones.
fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let v6 = stream.local_addr()?.is_ipv6();
    let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    // SAFETY: a zeroed sockaddr_storage is a valid buffer of its size.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the buffer and its length outlive the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            level,
            SO_ORIGINAL_DST,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        family => Err(io::Error::other(format!("family {family}, length {len}"))),
    }
}

fn serve(target: Target, quiet: bool, fast_open: bool, original: bool) -> anyhow::Result<()> {
    match target.proto {
        Proto::Tcp => {
            if fast_open {
                // Per network namespace: this one only (the test's own).
                std::fs::write("/proc/sys/net/ipv4/tcp_fastopen", "3")
                    .context("enabling the TCP Fast Open server")?;
            }
            let listener = TcpListener::bind(target.addr)
                .with_context(|| format!("binding {}", target.addr))?;
            if fast_open {
                set_int_option(&listener, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, 16)
                    .context("TCP_FASTOPEN on the listener")?;
            }
            println!("LISTENING {}", listener.local_addr()?);
            for stream in listener.incoming() {
                let mut stream = stream.context("accept")?;
                let peer = stream.peer_addr()?;
                if !quiet {
                    println!("ACCEPTED {peer}");
                }
                if original {
                    let text = match original_dst(&stream) {
                        Ok(addr) => addr.to_string(),
                        Err(err) => outcome_text(&Err(err)),
                    };
                    println!("ORIGINAL {peer} {text}");
                    let _ = stream.write_all(format!("{text}\n").as_bytes());
                }
                std::thread::spawn(move || echo_stream(stream, peer, quiet));
            }
        }
        Proto::Udp => {
            let socket =
                UdpSocket::bind(target.addr).with_context(|| format!("binding {}", target.addr))?;
            println!("LISTENING {}", socket.local_addr()?);
            let mut buf = [0u8; 2048];
            loop {
                let (n, peer) = socket.recv_from(&mut buf).context("recv_from")?;
                if !quiet {
                    println!("RECEIVED {peer} {n}");
                }
                let sent = socket.send_to(&buf[..n], peer).map(drop);
                if !quiet {
                    println!("ECHOED {peer} {}", outcome_text(&sent));
                }
            }
        }
    }
    bail!("server stopped")
}

/// One request and its answer. A missing answer is a timeout (WouldBlock
/// or TimedOut from the read timeout).
fn request(
    target: Target,
    bind: Option<SocketAddr>,
    timeout: Duration,
    print_answer: bool,
) -> io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut from = None;
    let n = match target.proto {
        Proto::Tcp => {
            let mut stream = TcpStream::connect_timeout(&target.addr, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.write_all(PAYLOAD)?;
            stream.read(&mut buf)
        }
        Proto::Udp => {
            let socket = UdpSocket::bind(bind.unwrap_or(unspecified(target.addr)))?;
            socket.set_read_timeout(Some(timeout))?;
            socket.send_to(PAYLOAD, target.addr)?;
            socket.recv_from(&mut buf).map(|(n, peer)| {
                from = Some(peer);
                n
            })
        }
    }
    .map_err(read_timeout)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    if print_answer {
        match from {
            Some(peer) => println!("ANSWER {peer}"),
            None => {
                let text = String::from_utf8_lossy(&buf[..n]);
                println!("ANSWER {}", text.lines().next().unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// One request sent in the SYN (`MSG_FASTOPEN`; without a cookie yet, the
/// kernel asks for one and sends the data after the handshake).
fn request_fast_open(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let mut stream = TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let (raw, len) = raw_sockaddr(addr);
    // SAFETY: the payload and the sockaddr outlive the call.
    let sent = unsafe {
        libc::sendto(
            stream.as_raw_fd(),
            PAYLOAD.as_ptr().cast(),
            PAYLOAD.len(),
            libc::MSG_FASTOPEN,
            raw.as_ptr().cast(),
            len,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).map_err(read_timeout)? {
        0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        )),
        _ => Ok(()),
    }
}

fn set_int_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A read timeout is reported as EAGAIN; the tests want "timeout".
fn read_timeout(err: io::Error) -> io::Error {
    if matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        io::Error::from_raw_os_error(libc::ETIMEDOUT)
    } else {
        err
    }
}

/// One TCP connection with one answered request.
fn exchange(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(PAYLOAD)?;
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).map_err(read_timeout)? {
        0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        )),
        _ => Ok(stream),
    }
}

fn flood(addr: SocketAddr, count: u64, timeout: Duration) -> anyhow::Result<()> {
    let (mut ok, mut failed, mut first) = (0u64, 0u64, None);
    for _ in 0..count {
        // Dropped at once: the client closes first, the server sees EOF
        // and closes its end.
        match exchange(addr, timeout) {
            Ok(_) => ok += 1,
            Err(err) => {
                failed += 1;
                first.get_or_insert_with(|| outcome_text(&Err(err)));
            }
        }
    }
    println!(
        "DONE ok={ok} failed={failed} first={}",
        first.unwrap_or_else(|| "none".to_owned())
    );
    Ok(())
}

fn spray(addr: SocketAddr, ports: &str) -> anyhow::Result<()> {
    let (first, last) = ports
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .with_context(|| format!("--ports {ports:?}: expected FIRST-LAST"))?;
    let (mut ok, mut failed, mut first_err) = (0u64, 0u64, None);
    for port in first..=last {
        let mut local = unspecified(addr);
        local.set_port(port);
        match UdpSocket::bind(local).and_then(|s| s.send_to(PAYLOAD, addr)) {
            Ok(_) => ok += 1,
            Err(err) => {
                failed += 1;
                first_err.get_or_insert_with(|| outcome_text(&Err(err)));
            }
        }
    }
    println!(
        "DONE ok={ok} failed={failed} first={}",
        first_err.unwrap_or_else(|| "none".to_owned())
    );
    Ok(())
}

fn hold_many(addr: SocketAddr, count: u64, timeout: Duration) -> anyhow::Result<()> {
    let mut streams = Vec::new();
    for _ in 0..count {
        match exchange(addr, timeout) {
            Ok(stream) => streams.push(stream),
            Err(err) => return report(Err(err)),
        }
    }
    println!("OPEN {}", streams.len());
    for line in io::stdin().lines() {
        line?;
    }
    drop(streams);
    Ok(())
}

/// A UDP datagram from `from`, which this host does not own: the socket is
/// bound there with `IP_FREEBIND`.
fn spoof(from: SocketAddr, to: SocketAddr, transparent: bool) -> io::Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let domain = if from.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if !transparent {
        set_int_option(&socket, libc::SOL_IP, libc::IP_FREEBIND, 1)?;
    } else if from.is_ipv4() {
        set_int_option(&socket, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
    } else {
        set_int_option(&socket, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?;
    }
    let bind = raw_sockaddr(from);
    // SAFETY: `bind` is a sockaddr of the length given.
    if unsafe { libc::bind(socket.as_raw_fd(), bind.0.as_ptr().cast(), bind.1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.send_to(PAYLOAD, to).map(drop)
}

/// Sends [`PAYLOAD`] to `to` as a UDP datagram whose header this process
/// writes itself, on a raw socket: the way around every socket-level hook.
fn raw_udp(to: SocketAddr) -> io::Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    const UDP_HEADER: usize = 8;
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if to.is_ipv6() {
        // IPv6 requires the UDP checksum; let the kernel fill it in at
        // offset 6 of what we write.
        set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 6)?;
    }
    let len = u16::try_from(UDP_HEADER + PAYLOAD.len()).unwrap_or(u16::MAX);
    let mut datagram = Vec::with_capacity(UDP_HEADER + PAYLOAD.len());
    datagram.extend_from_slice(&40_000u16.to_be_bytes());
    datagram.extend_from_slice(&to.port().to_be_bytes());
    datagram.extend_from_slice(&len.to_be_bytes());
    datagram.extend_from_slice(&0u16.to_be_bytes());
    datagram.extend_from_slice(PAYLOAD);
    // A raw socket's address carries no port (IPv6 insists on 0).
    let (addr, addr_len) = raw_sockaddr(SocketAddr::new(to.ip(), 0));
    // SAFETY: the buffers outlive the call; `addr` is a sockaddr of the
    // length given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            datagram.as_ptr().cast(),
            datagram.len(),
            0,
            addr.as_ptr().cast(),
            addr_len,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends the datagram of [`packet::ip_udp`] whole on an `IPPROTO_RAW`
/// socket: the source is ours to pick.
fn raw_from(from: SocketAddr, to: SocketAddr) -> io::Result<()> {
    header_included(&packet::ip_udp(from, to, PAYLOAD)?, to.ip())
}

/// Sends one tunnelled packet: [`packet::ip_udp`] from `inner_from` to
/// `inner_to`, encapsulated by `tunnel` in an outer packet from `from` to
/// `to`, whole on an `IPPROTO_RAW` socket.
fn tunnel(
    tunnel: Tunnel,
    (from, to): (IpAddr, IpAddr),
    (inner_from, inner_to): (SocketAddr, SocketAddr),
) -> io::Result<()> {
    let inner = packet::ip_udp(inner_from, inner_to, PAYLOAD)?;
    header_included(&tunnel.encapsulate(from, to, &inner)?, to)
}

/// Sends `packet`, an IP packet to `to`, on an `IPPROTO_RAW` socket, which
/// implies `IP_HDRINCL` (`IPV6_HDRINCL`): the kernel takes the header as
/// written, whatever the source and protocol.
fn header_included(packet: &[u8], to: IpAddr) -> io::Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // A raw socket's address carries no port (IPv6 insists on 0).
    socket.send_to(packet, SocketAddr::new(to, 0)).map(drop)
}

/// An ICMP(v6) echo request on a raw socket, and its reply.
fn ping(addr: IpAddr, timeout: Duration) -> io::Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let (domain, proto, request, reply) = match addr {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns; a UdpSocket is only
    // a convenient owner with timeouts and send_to/recv_from.
    let socket = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let id = (std::process::id() & 0xffff) as u16;
    let mut echo = vec![request, 0, 0, 0];
    echo.extend_from_slice(&id.to_be_bytes());
    echo.extend_from_slice(&1u16.to_be_bytes());
    echo.extend_from_slice(PAYLOAD);
    if addr.is_ipv4() {
        // The kernel fills in ICMPv6 checksums itself, not ICMP ones.
        let sum = packet::checksum(&[&echo]);
        echo[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    socket.send_to(&echo, SocketAddr::new(addr, 0))?;
    socket.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = socket.recv_from(&mut buf).map_err(read_timeout)?;
        // IPv4 raw sockets receive the IP header too.
        let icmp = if addr.is_ipv4() {
            &buf[usize::from(buf[0] & 0x0f) * 4..n]
        } else {
            &buf[..n]
        };
        if from.ip() == addr
            && icmp.len() >= 8
            && icmp[0] == reply
            && icmp[4..6] == id.to_be_bytes()
        {
            return Ok(());
        }
    }
}

/// The first interface of this network namespace that is not loopback.
fn first_link() -> io::Result<u32> {
    // SAFETY: the list is freed below and only read in between.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut i = 0;
        let mut found = None;
        while (*list.add(i)).if_index != 0 {
            let entry = *list.add(i);
            if entry.if_index != 1 {
                found = Some(entry.if_index);
                break;
            }
            i += 1;
        }
        libc::if_freenameindex(list);
        found.ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))
    }
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{s}: {e}"))?;
    bytes.try_into().map_err(|_| format!("{s}: not six bytes"))
}

/// Sends the datagram of [`packet::ip_udp`] as a frame on an AF_PACKET
/// socket.
/// The socket is created first: EPERM there is the refusal under test.
fn packet_frame(from: SocketAddr, to: SocketAddr, mac: [u8; 6]) -> io::Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let ethertype: u16 = if to.is_ipv4() { 0x0800 } else { 0x86dd };
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ethertype.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let frame = packet::ip_udp(from, to, PAYLOAD)?;
    // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = first_link()? as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&mac);
    // SAFETY: the buffers outlive the call; `sll` is a sockaddr_ll.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `addr` as raw sockaddr bytes and their length.
fn raw_sockaddr(addr: SocketAddr) -> ([u8; 28], libc::socklen_t) {
    let mut raw = [0u8; 28];
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>();
            // SAFETY: copying the bytes of a plain C struct into a larger
            // buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&sin as *const libc::sockaddr_in).cast::<u8>(),
                    raw.as_mut_ptr(),
                    len,
                )
            };
            (raw, len as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            let len = std::mem::size_of::<libc::sockaddr_in6>();
            // SAFETY: as above.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&sin6 as *const libc::sockaddr_in6).cast::<u8>(),
                    raw.as_mut_ptr(),
                    len,
                )
            };
            (raw, len as libc::socklen_t)
        }
    }
}

/// The wildcard address of `addr`'s family, port 0.
fn unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

fn report(outcome: io::Result<()>) -> anyhow::Result<()> {
    println!("RESULT {}", outcome_text(&outcome));
    Ok(())
}

fn outcome_text(outcome: &io::Result<()>) -> String {
    match outcome {
        Ok(()) => "ok".to_owned(),
        Err(err) => match err.raw_os_error() {
            Some(libc::EPERM) => "eperm".to_owned(),
            Some(libc::ECONNREFUSED) => "refused".to_owned(),
            Some(libc::ETIMEDOUT) => "timeout".to_owned(),
            Some(errno) => format!("errno={errno} {err}"),
            // std reports its own connect_timeout expiry without an errno.
            None if err.kind() == io::ErrorKind::TimedOut => "timeout".to_owned(),
            None => format!("errno=0 {err}"),
        },
    }
}
