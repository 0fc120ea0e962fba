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
//! With `--escape-into NAME`, the probe creates a child cgroup `NAME` of
//! `--cgroup` and moves into it, as a process escaping its workload's
//! cgroup would.
//!
//! `<outcome>` is `ok`, `eperm`, `refused`, `timeout` or `errno=N <text>`.
//!
//! `ip netns exec` is not used because it remounts `/sys` in a new mount
//! namespace, which hides the cgroup2 mount on hybrid hosts.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::ExitCode,
    str::FromStr,
    time::Duration,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

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
    Sendto { addr: SocketAddr },
    /// Connect, then send once per stdin line until stdin closes.
    Hold {
        target: Target,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
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
    match args.command {
        Command::Listen { target } => listen(target),
        Command::Connect { target, timeout_ms } => {
            let outcome = connect(target, Duration::from_millis(timeout_ms));
            report(outcome)
        }
        Command::Sendto { addr } => report(sendto(addr)),
        Command::Hold { target, timeout_ms } => hold(target, Duration::from_millis(timeout_ms)),
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

fn connect(target: Target, timeout: Duration) -> io::Result<()> {
    match target.proto {
        Proto::Tcp => TcpStream::connect_timeout(&target.addr, timeout).map(drop),
        Proto::Udp => {
            let socket = UdpSocket::bind(unspecified(target.addr))?;
            socket.connect(target.addr)?;
            socket.send(PAYLOAD).map(drop)
        }
    }
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
    let socket = UdpSocket::bind(unspecified(addr))?;
    socket.send_to(PAYLOAD, addr).map(drop)
}

/// The wildcard address of `addr`'s family, port 0.
fn unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

fn report(outcome: io::Result<()>) -> anyhow::Result<()> {
    let line = match outcome {
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
    };
    println!("RESULT {line}");
    Ok(())
}
