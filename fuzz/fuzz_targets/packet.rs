//! The eBPF packet parser (`egress-ebpf/src/packet.rs`), differentially:
//! each input becomes an Ethernet frame that the real `cgroup_skb/egress`
//! program, loaded into the running kernel, decides once with
//! `BPF_PROG_TEST_RUN`, and that a model written here decides too. Any
//! disagreement is a panic that prints the frame in hex and both answers.
//!
//! Why through the kernel rather than a host build of packet.rs: the
//! parser reads every byte with `bpf_skb_load_bytes` in a `no_std` crate
//! built for `bpfel-unknown-none`. A host build would need it generic over
//! the byte source, which changes the code the verifier sees, and would
//! test neither the object that ships (what the compiler and the verifier
//! made of it) nor the helper's bounds, nor what the program does with
//! the headers afterwards (the source check, the map lookups, the order of
//! the checks). The test run exercises all of it on the kernel's own skb.
//! The price is that libFuzzer sees no coverage inside the kernel: it is
//! guided by the model's branches, which follow the parser's header by
//! header, so covering the model's paths drives the parser's.
//!
//! Setup, once per process (libFuzzer's init): [`POLICY`] is applied by
//! the integration tests' `Enforced` harness (a data plane of its own at
//! a fresh root cgroup), and the process moves itself into the workload's
//! cgroup. The kernel allocates a test run's dummy socket in the caller's
//! cgroup, and the program finds the workload from that socket, so every
//! run is decided as that workload's packet (tests/tests/packet_parsing.rs
//! proves the method). Without root or a cgroup2 mount the target says so
//! and exits with status 1 before the first input.
//!
//! Cleanup: libFuzzer ends a run with `exit`, which drops nothing, and a
//! crash, a timeout or Ctrl-C with `_exit`. Everything the harness creates
//! is named `egress-test-<pid>-<n>` (root cgroup, pin directory,
//! namespaces), like every integration test fixture. An `atexit` handler
//! moves the process back to its own cgroup and removes them after a
//! normal end; whatever a killed run leaves is swept by the next run (or
//! the next integration test) once its pid is gone.
//!
//! The input: 7 bytes of header, then the packet (at most
//! [`MAX_PACKET`] bytes; the rest is ignored).
//!
//! | byte | meaning |
//! |---|---|
//! | 0 | sent as (mod 3): 0 IPv4, 1 IPv6, 2 the ethertype in bytes 1-2 |
//! | 1-2 | that ethertype (big-endian) |
//! | 3 | fixups, bits: [`FIX_VERSION`], [`FIX_DST`], [`FIX_SRC`], [`FIX_PORT`], [`FIX_AS_V6`], [`FIX_PAD`] |
//! | 4, 5, 6 | which destination, source and port the fixups write |
//!
//! The fixups write addresses and ports where the policy draws lines
//! (blocks, holes, their edges, loopback), which random bytes would
//! almost never hit; everything else about the headers is the fuzzer's.
//!
//! Checks, for every frame the kernel runs:
//! 1. If the kernel lets it out, the fixed header's destination is
//!    loopback or inside an allowed block ([`ALLOWED`], written out by hand
//!    from the policy), and its source is the workload's own (or loopback
//!    or link-local); or the frame is not IP at all. This holds whatever
//!    the model says.
//! 2. The kernel's verdict (1 or 0) is the model's.
//! 3. The `VERDICTS` counter of the model's reason moved by one: denied
//!    as malformed, spoofed or by default, allowed by a rule, as loopback
//!    or as not IP.
//!
//! The model parses the headers as packet.rs documents them, reading only
//! what that parser reads (so "too short" means the same), and decides
//! with the agent's own prefix table (what `explain` reads), as the
//! kernel does: by the family the packet has, an IPv4-mapped IPv6
//! destination being IPv6. For TCP, UDP and SCTP to other destinations it
//! also asks `compile::decide` (`explain`) and must agree with it.
//! Seeds: fuzz/seeds/packet/ (frames of packet_parsing.rs's kinds).

#![no_main]

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, OnceLock,
    },
};

use egress_agent::{
    compile::{self, prefix::PrefixTable, Destination, Egress, Plan, Verdict},
    dataplane::{self, Hook, Reason, VerdictKind},
};
use egress_policy::{model::ObjectId, ports::Protocol};
use integration_tests::Enforced;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

/// `prod/client` may reach, with TCP, UDP and SCTP port 7000 and TCP
/// 8000-8100, 10.200.0.0/24 and fd00:200::/64 but for a host and a
/// quarter of each; with everything, 10.201.0.0/24 and fd00:201::/64; with
/// every UDP port (a protocol with no port: later UDP fragments match it
/// too), 10.202.0.0/16 and fd00:202::/48 but for a /24 and a /64, half of
/// which TCP 443 may reach again (a longer prefix inside a hole).
const POLICY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {cgroup: $ROOT/prod/client, addresses: [10.200.0.1, "fd00:200::1"]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.200.0.0/24, except: [10.200.0.3/32, 10.200.0.128/26]}
    - ipBlock: {cidr: "fd00:200::/64", except: ["fd00:200::3/128", "fd00:200::8000/113"]}
    ports:
    - {port: 7000, protocol: TCP}
    - {port: 7000, protocol: UDP}
    - {port: 7000, protocol: SCTP}
    - {port: 8000, endPort: 8100, protocol: TCP}
  - to: [{ipBlock: {cidr: 10.201.0.0/24}}, {ipBlock: {cidr: "fd00:201::/64"}}]
  - to:
    - ipBlock: {cidr: 10.202.0.0/16, except: [10.202.1.0/24]}
    - ipBlock: {cidr: "fd00:202::/48", except: ["fd00:202:0:1::/64"]}
    ports: [{protocol: UDP}]
  - to: [{ipBlock: {cidr: 10.202.1.128/25}}, {ipBlock: {cidr: "fd00:202:0:1:8000::/65"}}]
    ports: [{port: 443, protocol: TCP}]
"#;

const WORKLOAD: &str = "prod/client";
/// Its addresses, as [`POLICY`] lists them.
const OWN_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const OWN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);

/// Every address [`POLICY`] allows anything to, as (block, holes): the
/// union of its `ipBlock`s, for check 1. Written out again rather than
/// read from the plan, so that the check does not depend on the compiler.
const ALLOWED: &[(&str, &[&str])] = &[
    ("10.200.0.0/24", &["10.200.0.3/32", "10.200.0.128/26"]),
    ("fd00:200::/64", &["fd00:200::3/128", "fd00:200::8000/113"]),
    ("10.201.0.0/24", &[]),
    ("fd00:201::/64", &[]),
    ("10.202.0.0/16", &["10.202.1.0/24"]),
    ("fd00:202::/48", &["fd00:202:0:1::/64"]),
    ("10.202.1.128/25", &[]),
    ("fd00:202:0:1:8000::/65", &[]),
];

/// Destinations the fixups write: in each kind of block, in its holes, at
/// their edges, unlisted, loopback (and IPv4-mapped, which IPv6 packets
/// do not decide as IPv4), the workload itself.
const DESTINATIONS_V4: [Ipv4Addr; 18] = [
    Ipv4Addr::new(10, 200, 0, 2),
    Ipv4Addr::new(10, 200, 0, 3),
    Ipv4Addr::new(10, 200, 0, 130),
    Ipv4Addr::new(10, 200, 0, 192),
    Ipv4Addr::new(10, 200, 0, 255),
    Ipv4Addr::new(10, 201, 0, 2),
    Ipv4Addr::new(10, 201, 0, 255),
    Ipv4Addr::new(10, 202, 0, 7),
    Ipv4Addr::new(10, 202, 1, 5),
    Ipv4Addr::new(10, 202, 1, 200),
    Ipv4Addr::new(10, 202, 255, 255),
    Ipv4Addr::new(10, 203, 0, 2),
    Ipv4Addr::new(10, 199, 255, 255),
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 255, 255, 254),
    Ipv4Addr::new(0, 0, 0, 0),
    Ipv4Addr::new(255, 255, 255, 255),
    OWN_V4,
];
const DESTINATIONS_V6: [Ipv6Addr; 17] = [
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 3),
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0x8001),
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 1, 0),
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0xffff, 0xffff, 0xffff, 0xffff),
    Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, 7),
    Ipv6Addr::new(0xfd00, 0x202, 0, 1, 0, 0, 0, 5),
    Ipv6Addr::new(0xfd00, 0x202, 0, 1, 0x8000, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
    Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0ac9, 0x0002),
    Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 0x0001),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
    OWN_V6,
];
/// Sources the fixups write: the workload's own, loopback, link-local
/// (both ends of fe80::/10 and just past it), another host, unspecified,
/// the own IPv4 address mapped.
const SOURCES_V4: [Ipv4Addr; 4] = [
    OWN_V4,
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(10, 200, 0, 2),
    Ipv4Addr::new(0, 0, 0, 0),
];
const SOURCES_V6: [Ipv6Addr; 8] = [
    OWN_V6,
    Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfebf, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
    Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0ac8, 0x0001),
];
/// Destination ports the fixups write: the rules' ports and one past.
const PORTS: [u16; 10] = [7000, 6999, 7001, 8000, 8100, 8101, 443, 0, 65535, 53];

/// Sets the version nibble to the fixups' family.
const FIX_VERSION: u8 = 0x01;
/// Writes a destination of [`DESTINATIONS_V4`] or [`DESTINATIONS_V6`]
/// (byte 4 picks).
const FIX_DST: u8 = 0x02;
/// Writes a source of [`SOURCES_V4`] or [`SOURCES_V6`] (byte 5 picks).
const FIX_SRC: u8 = 0x04;
/// Writes a destination port of [`PORTS`] (byte 6 picks) where the model
/// finds the transport header.
const FIX_PORT: u8 = 0x08;
/// For another ethertype: the fixups' family is IPv6 (else IPv4).
const FIX_AS_V6: u8 = 0x10;
/// Pads the packet with zeros to its family's fixed header and 8 bytes.
const FIX_PAD: u8 = 0x20;

const HEADER: usize = 7;
/// Well below what a test run takes (a page less head- and tailroom).
const MAX_PACKET: usize = 3000;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// What libFuzzer's init set up; read by every input.
struct Harness {
    /// The loaded `cgroup_skb/egress` program.
    program: u32,
    plan: Plan,
    workload: ObjectId,
}

/// The scenario, kept for the `atexit` cleanup, and the counters of the
/// skb program's reasons as last read.
struct Held {
    scenario: Enforced,
    /// The cgroup the process came from.
    home: PathBuf,
    counts: [u64; Reason::SLOTS as usize],
}

static HARNESS: OnceLock<Harness> = OnceLock::new();
static HELD: Mutex<Option<Held>> = Mutex::new(None);
/// Frames the kernel refused to run (see [`refused`]).
static REFUSED: AtomicU64 = AtomicU64::new(0);

fuzz_target!(
    init: {
        if let Err(err) = set_up() {
            eprintln!("packet fuzz target: cannot set up: {err:#}");
            std::process::exit(1);
        }
    },
    |data: &[u8]| {
        let harness = HARNESS.get().expect("set up in init");
        one(harness, data);
    }
);

fn set_up() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "needs root: it loads the eBPF programs, creates cgroups and moves itself into one \
             (run it as the fuzz smoke stage does, as root)"
        );
    }
    let mount = egress_agent::sys::cgroup2_mount()
        .map_err(|e| anyhow::anyhow!("needs a cgroup2 mount: {e}"))?;
    let own = egress_agent::kubernetes::cgroups::own_cgroup()
        .map_err(|e| anyhow::anyhow!("reading this process's cgroup: {e}"))?;
    let home = mount.join(own);
    let scenario = Enforced::new(POLICY)?;
    let workload: ObjectId = WORKLOAD.parse().expect("NS/NAME");
    if scenario.plan.workload(&workload).is_none() {
        anyhow::bail!("{WORKLOAD} is not in the plan");
    }
    let program = scenario
        .dataplane_ref()
        .links()
        .iter()
        .find(|l| l.hook == Hook::Skb)
        .ok_or_else(|| anyhow::anyhow!("cgroup_skb/egress is not attached"))?
        .program_id;
    let cgroup = scenario.cgroup(WORKLOAD);
    let mut counts = [0; Reason::SLOTS as usize];
    for reason in Reason::ALL {
        counts[reason as usize] = scenario
            .dataplane_ref()
            .verdict_count(VerdictKind::new(Hook::Skb, reason))?;
    }
    let plan = scenario.plan.clone();
    // Held before the move, so that the cleanup finds it whatever fails.
    *HELD.lock().expect("not poisoned") = Some(Held {
        scenario,
        home,
        counts,
    });
    // SAFETY: `clean_up` is an `extern "C" fn()`: a panic in it aborts
    // rather than unwinding into libc.
    if unsafe { libc::atexit(clean_up) } != 0 {
        anyhow::bail!("atexit refused the cleanup");
    }
    fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| anyhow::anyhow!("moving into {}: {e}", cgroup.display()))?;
    eprintln!(
        "packet fuzz target: program {program}, deciding as {WORKLOAD} from {}",
        cgroup.display()
    );
    let _ = HARNESS.set(Harness {
        program,
        plan,
        workload,
    });
    Ok(())
}

/// Back to the cgroup the process came from, then the scenario's `Drop`s:
/// the pins (detaching the programs), the cgroups (their removal kills
/// what is left in them, which must not be this process), the namespaces.
extern "C" fn clean_up() {
    let Ok(mut held) = HELD.try_lock() else {
        return;
    };
    let Some(held) = held.take() else {
        return;
    };
    // The data plane is this process's alone: its counters are the runs'.
    let decided: Vec<String> = Reason::ALL
        .into_iter()
        .filter(|r| held.counts[*r as usize] != 0)
        .map(|r| format!("{r:?} {}", held.counts[r as usize]))
        .collect();
    eprintln!(
        "packet fuzz target: the kernel decided {}; refused {} frames",
        decided.join(", "),
        REFUSED.load(Ordering::Relaxed)
    );
    let procs = held.home.join("cgroup.procs");
    match fs::write(&procs, std::process::id().to_string()) {
        Ok(()) => drop(held.scenario),
        Err(err) => {
            eprintln!(
                "packet fuzz target: cannot move back ({}: {err}); its cgroups and pins stay \
                 until the next run sweeps them",
                procs.display()
            );
            std::mem::forget(held.scenario);
        }
    }
}

/// One input: build the frame, run it, check it.
fn one(harness: &Harness, data: &[u8]) {
    let (sent_as, packet) = build(data);
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&sent_as.to_be_bytes());
    frame.extend_from_slice(&packet);
    let expected = expect(harness, sent_as, &packet);
    let returned = match dataplane::test_run(harness.program, &frame) {
        Ok(r) => r,
        Err(err) if refused(sent_as, &packet) => {
            // The kernel reads an IP frame's addresses for the dummy
            // socket before running anything, and refuses one too short.
            assert_eq!(
                err.raw_os_error(),
                Some(libc::EINVAL),
                "test run refused with {err}\n{}",
                describe(&frame, &expected)
            );
            REFUSED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(err) => panic!("test run failed: {err}\n{}", describe(&frame, &expected)),
    };
    let allowed = match returned {
        1 => true,
        0 => false,
        other => panic!("returned {other}\n{}", describe(&frame, &expected)),
    };
    if allowed {
        if let Err(why) = fixed_header_allowed(sent_as, &packet) {
            panic!(
                "the kernel let out a packet it must not: {why}\n{}",
                describe(&frame, &expected)
            );
        }
    }
    assert_eq!(
        allowed,
        !expected.reason.denies(),
        "the kernel returned {returned}, the model says {:?}\n{}",
        expected.reason,
        describe(&frame, &expected)
    );
    check_counter(expected.reason, &frame, &expected);
}

/// The packet the input describes, and the ethertype it is sent as.
fn build(data: &[u8]) -> (u16, Vec<u8>) {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let fix = byte(3);
    let (sent_as, v6) = match byte(0) % 3 {
        0 => (ETH_P_IP, false),
        1 => (ETH_P_IPV6, true),
        _ => (u16::from_be_bytes([byte(1), byte(2)]), fix & FIX_AS_V6 != 0),
    };
    let mut packet = data.get(HEADER..).unwrap_or_default().to_vec();
    packet.truncate(MAX_PACKET);
    let fixed = if v6 { 40 } else { 20 };
    if fix & FIX_PAD != 0 && packet.len() < fixed + 8 {
        packet.resize(fixed + 8, 0);
    }
    if fix & FIX_VERSION != 0 {
        if let Some(first) = packet.first_mut() {
            *first = (*first & 0x0f) | if v6 { 0x60 } else { 0x40 };
        }
    }
    if fix & FIX_DST != 0 {
        let pick = usize::from(byte(4));
        if v6 {
            let dst = DESTINATIONS_V6[pick % DESTINATIONS_V6.len()];
            put(&mut packet, 24, &dst.octets());
        } else {
            let dst = DESTINATIONS_V4[pick % DESTINATIONS_V4.len()];
            put(&mut packet, 16, &dst.octets());
        }
    }
    if fix & FIX_SRC != 0 {
        let pick = usize::from(byte(5));
        if v6 {
            let src = SOURCES_V6[pick % SOURCES_V6.len()];
            put(&mut packet, 8, &src.octets());
        } else {
            let src = SOURCES_V4[pick % SOURCES_V4.len()];
            put(&mut packet, 12, &src.octets());
        }
    }
    if fix & FIX_PORT != 0 {
        if let Parsed::Ip(headers) = parse(sent_as, &packet) {
            if let Some(at) = headers.ports_at {
                let port = PORTS[usize::from(byte(6)) % PORTS.len()];
                put(&mut packet, at + 2, &port.to_be_bytes());
            }
        }
    }
    (sent_as, packet)
}

/// Writes `bytes` at `at` if the packet is long enough.
fn put(packet: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(slot) = packet.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

/// Whether the kernel may refuse to run the frame: sent as IPv4 or IPv6
/// but shorter than that family's fixed header.
fn refused(sent_as: u16, packet: &[u8]) -> bool {
    match sent_as {
        ETH_P_IP => packet.len() < 20,
        ETH_P_IPV6 => packet.len() < 40,
        _ => false,
    }
}

// ---- The model -------------------------------------------------------

/// The headers of one packet as the parser reads them.
#[derive(Clone, Copy, Debug)]
struct Headers {
    src: IpAddr,
    dst: IpAddr,
    /// The protocol: IPv4's field, or the IPv6 next header where the walk
    /// stopped.
    proto: u8,
    /// The destination port; 0 when the packet has none to read.
    port: u16,
    /// Where the ports are, when they were read.
    ports_at: Option<usize>,
}

#[derive(Clone, Copy)]
enum Parsed {
    /// Not sent as IP, and the version nibble is neither 4 nor 6.
    NotIp,
    /// A header the parser needs is not there, or contradicts itself.
    Malformed(&'static str),
    Ip(Headers),
}

/// Extension headers the parser follows (packet.rs's
/// `MAX_EXTENSION_HEADERS`); past them, the next header number is the
/// protocol.
const MAX_EXTENSION_HEADERS: usize = 4;

/// Reads the packet as packet.rs documents it.
///
/// - The version nibble must be the family the packet is sent as (an IPv4
///   or IPv6 ethertype); sent as anything else, the nibble alone says.
/// - IPv4: an IHL below 5 is malformed; the header's first 20 bytes must
///   be there (options need not be); the ports follow the IHL.
/// - IPv6: the fixed 40 bytes must be there; up to four extension headers
///   are followed (hop-by-hop, routing and destination options in 8-byte
///   units after the first 8, AH in 4-byte units after the first 8,
///   fragment 8 bytes), reading two bytes of each (four of a fragment
///   header); a fragment header with a non-zero offset ends the walk.
/// - TCP, UDP and SCTP have ports, read from the first 4 bytes of their
///   header, in first fragments only; every other protocol and every
///   later fragment has port 0.
fn parse(sent_as: u16, packet: &[u8]) -> Parsed {
    let Some(&first) = packet.first() else {
        return Parsed::Malformed("no first byte");
    };
    let version = first >> 4;
    match (sent_as, version) {
        (ETH_P_IP, 4) | (ETH_P_IPV6, 6) => {}
        (ETH_P_IP | ETH_P_IPV6, _) => {
            return Parsed::Malformed("the version nibble is not the family sent")
        }
        _ => {}
    }
    match version {
        4 => parse_v4(packet),
        6 => parse_v6(packet),
        _ => Parsed::NotIp,
    }
}

fn parse_v4(packet: &[u8]) -> Parsed {
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    if header_len < 20 {
        return Parsed::Malformed("IPv4 IHL below 5");
    }
    let Some(fixed) = packet.get(..20) else {
        return Parsed::Malformed("IPv4 header shorter than 20 bytes");
    };
    let proto = fixed[9];
    let first_fragment = u16::from_be_bytes([fixed[6], fixed[7]]) & 0x1fff == 0;
    let src = IpAddr::from(<[u8; 4]>::try_from(&fixed[12..16]).expect("4 bytes"));
    let dst = IpAddr::from(<[u8; 4]>::try_from(&fixed[16..20]).expect("4 bytes"));
    transport(packet, src, dst, proto, header_len, first_fragment)
}

fn parse_v6(packet: &[u8]) -> Parsed {
    let Some(fixed) = packet.get(..40) else {
        return Parsed::Malformed("IPv6 header shorter than 40 bytes");
    };
    let src = IpAddr::from(<[u8; 16]>::try_from(&fixed[8..24]).expect("16 bytes"));
    let dst = IpAddr::from(<[u8; 16]>::try_from(&fixed[24..40]).expect("16 bytes"));
    let mut next = fixed[6];
    let mut at = 40;
    let mut first_fragment = true;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => {
                let Some(&[nh, len]) = packet.get(at..at + 2) else {
                    return Parsed::Malformed("extension header cut short");
                };
                next = nh;
                at += (usize::from(len) + 1) * 8;
            }
            // AH.
            51 => {
                let Some(&[nh, len]) = packet.get(at..at + 2) else {
                    return Parsed::Malformed("AH cut short");
                };
                next = nh;
                at += (usize::from(len) + 2) * 4;
            }
            // Fragment.
            44 => {
                let Some(&[nh, _, hi, lo]) = packet.get(at..at + 4) else {
                    return Parsed::Malformed("fragment header cut short");
                };
                next = nh;
                at += 8;
                if u16::from_be_bytes([hi, lo]) >> 3 != 0 {
                    first_fragment = false;
                    break;
                }
            }
            _ => break,
        }
    }
    transport(packet, src, dst, next, at, first_fragment)
}

fn transport(
    packet: &[u8],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    at: usize,
    first_fragment: bool,
) -> Parsed {
    let (port, ports_at) = if first_fragment && protocol(proto).is_some() {
        let Some(&[_, _, hi, lo]) = packet.get(at..at + 4) else {
            return Parsed::Malformed("transport header without its ports");
        };
        (u16::from_be_bytes([hi, lo]), Some(at))
    } else {
        (0, None)
    };
    Parsed::Ip(Headers {
        src,
        dst,
        proto,
        port,
        ports_at,
    })
}

/// The protocols with ports, as a policy names them.
fn protocol(proto: u8) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| p.number() == proto)
}

/// What the model expects of one packet.
struct Expected {
    parsed: Parsed,
    reason: Reason,
}

fn expect(harness: &Harness, sent_as: u16, packet: &[u8]) -> Expected {
    let parsed = parse(sent_as, packet);
    let reason = match parsed {
        Parsed::NotIp => Reason::NotIp,
        Parsed::Malformed(_) => Reason::Malformed,
        Parsed::Ip(headers) => decide(harness, &headers),
    };
    Expected { parsed, reason }
}

/// The program's order after parsing: the source, then loopback, then the
/// rules (no gateway, no cluster, and replies need sockets a test run's
/// dummy is not).
fn decide(harness: &Harness, h: &Headers) -> Reason {
    let workload = harness
        .plan
        .workload(&harness.workload)
        .expect("the workload is planned");
    if !own_source(&workload.addresses, h.src) {
        return Reason::Spoofed;
    }
    // As sent: `::ffff:127.0.0.1` in an IPv6 header is not loopback.
    if h.dst.is_loopback() {
        return Reason::Loopback;
    }
    let Egress::Isolated { table, .. } = &workload.egress else {
        panic!("{WORKLOAD} is isolated by the policy");
    };
    let allowed = allows(table, h);
    if let Some(protocol) = protocol(h.proto) {
        if !is_mapped(h.dst) {
            let explained = compile::decide(
                &harness.plan,
                workload,
                Destination {
                    ip: h.dst,
                    port: h.port,
                    protocol,
                },
            );
            assert_eq!(
                explained.verdict == Verdict::Allow,
                allowed,
                "the model's table and explain disagree on {h:?}: explain says {} ({})",
                explained.verdict,
                explained.reason
            );
        }
    }
    if allowed {
        Reason::Rule
    } else {
        Reason::DefaultDeny
    }
}

/// Whether the longest prefix of `h.dst` (in its own family) allows the
/// protocol and port: entries of any protocol, or of this one, whose
/// range holds the port (0 for a packet without one, which only the
/// entries without ports hold).
fn allows(table: &PrefixTable, h: &Headers) -> bool {
    match protocol(h.proto) {
        Some(protocol) => table.allowing(h.dst, protocol, h.port).is_some(),
        None => table
            .lookup(h.dst)
            .unwrap_or_default()
            .iter()
            .any(|a| a.protocol.is_none() && a.ports.contains(h.port)),
    }
}

/// The workload's own address (the kernel keys both families by the
/// IPv4-mapped spelling, so `::ffff:10.200.0.1` in an IPv6 header is the
/// IPv4 address), loopback, or IPv6 link-local.
fn own_source(addresses: &[IpAddr], src: IpAddr) -> bool {
    let link_local = matches!(src, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
    src.is_loopback()
        || link_local
        || addresses
            .iter()
            .any(|a| a.to_canonical() == src.to_canonical())
}

fn is_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_some())
}

// ---- Check 1: whatever the model says ---------------------------------

/// For a frame the kernel let out: `Err` if its fixed header names a
/// destination outside every allowed block (and not loopback) or a source
/// that is not the workload's. The header is that of the family the frame
/// is sent as, which must be the one its version nibble claims; sent as
/// anything else, the nibble says, and a nibble other than 4 or 6 is no
/// IP packet, which passes.
fn fixed_header_allowed(sent_as: u16, packet: &[u8]) -> Result<(), String> {
    let version = packet.first().map(|b| b >> 4);
    let family = match sent_as {
        ETH_P_IP => Some(4),
        ETH_P_IPV6 => Some(6),
        _ => version,
    };
    if family != version {
        return Err(format!(
            "sent as IPv{} with version {version:?}",
            family.unwrap_or_default()
        ));
    }
    let (src, dst) = match family {
        Some(4) => match packet.get(12..20) {
            Some(h) => (
                IpAddr::from(<[u8; 4]>::try_from(&h[..4]).expect("4 bytes")),
                IpAddr::from(<[u8; 4]>::try_from(&h[4..]).expect("4 bytes")),
            ),
            None => return Err("an IPv4 header without its addresses".to_owned()),
        },
        Some(6) => match packet.get(8..40) {
            Some(h) => (
                IpAddr::from(<[u8; 16]>::try_from(&h[..16]).expect("16 bytes")),
                IpAddr::from(<[u8; 16]>::try_from(&h[16..]).expect("16 bytes")),
            ),
            None => return Err("an IPv6 header without its addresses".to_owned()),
        },
        _ => return Ok(()),
    };
    let blocks_ok = ALLOWED.iter().any(|(block, holes)| {
        net(block).contains(&dst) && !holes.iter().any(|hole| net(hole).contains(&dst))
    });
    if !(dst.is_loopback() || blocks_ok) {
        return Err(format!("destination {dst} is in no allowed block"));
    }
    if !own_source(&[IpAddr::V4(OWN_V4), IpAddr::V6(OWN_V6)], src) {
        return Err(format!("source {src} is not the workload's"));
    }
    Ok(())
}

fn net(text: &str) -> IpNet {
    text.parse().expect("a CIDR")
}

// ---- Check 3: the reason ----------------------------------------------

/// Reads the counter of `reason` and compares it with the last reading;
/// on a mismatch, finds the counter that moved instead.
fn check_counter(reason: Reason, frame: &[u8], expected: &Expected) {
    let mut held = HELD.lock().expect("not poisoned");
    let held = held.as_mut().expect("the scenario is held");
    let dataplane = held.scenario.dataplane_ref();
    let read = |r: Reason| {
        dataplane
            .verdict_count(VerdictKind::new(Hook::Skb, r))
            .expect("VERDICTS reads")
    };
    let now = read(reason);
    if now == held.counts[reason as usize] + 1 {
        held.counts[reason as usize] = now;
        return;
    }
    let mut moved = Vec::new();
    for r in Reason::ALL {
        let n = read(r);
        if n != held.counts[r as usize] {
            moved.push(format!("{r:?} +{}", n - held.counts[r as usize]));
        }
    }
    panic!(
        "the kernel decided for another reason than {reason:?}: counters moved {}\n{}",
        moved.join(", "),
        describe(frame, expected)
    );
}

/// The frame in hex, 16 bytes a line, and what the model read.
fn describe(frame: &[u8], expected: &Expected) -> String {
    let read = match expected.parsed {
        Parsed::NotIp => "not IP".to_owned(),
        Parsed::Malformed(why) => format!("malformed: {why}"),
        Parsed::Ip(headers) => format!("{headers:?}"),
    };
    let mut out = format!(
        "model: {:?} ({read})\nframe ({} bytes, Ethernet header included):\n",
        expected.reason,
        frame.len()
    );
    for (i, line) in frame.chunks(16).enumerate() {
        let _ = write!(out, "{:04x}:", i * 16);
        for b in line {
            let _ = write!(out, " {b:02x}");
        }
        out.push('\n');
    }
    out
}
