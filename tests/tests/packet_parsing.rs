//! Program-level tests of `cgroup_skb/egress`'s packet parsing: crafted
//! packets (IPv6 extension header chains, IPv4 options and fragments,
//! truncated headers) run once each through the loaded program with
//! `BPF_PROG_TEST_RUN`, to allowed and denied destinations. Each case
//! checks the program's return value (1 lets the packet out, 0 drops it),
//! and each batch the `VERDICTS` counters of the reasons it expects.
//!
//! The method. For `cgroup_skb` programs the kernel wraps the test data in
//! an skb whose socket is a dummy it allocates for the run
//! (`bpf_prog_test_run_skb` → `sk_alloc`), and a new socket belongs to the
//! cgroup of the task that creates it (`cgroup_sk_alloc` takes `current`'s).
//! The program finds the workload from that socket
//! (`bpf_skb_ancestor_cgroup_id`), so the run is made by an `egress-probe
//! test-run` process placed in the workload's cgroup. The first test
//! proves that on the running kernel: the same denied packet is dropped
//! from the workload's cgroup and from a cgroup nested below it, and
//! passes from an unmanaged cgroup, from another (unrestricted) workload,
//! and from the test process itself.

use std::net::{Ipv4Addr, Ipv6Addr};

use egress_agent::dataplane::{self, Hook, Reason, VerdictKind};
use integration_tests::{Client, Enforced};

/// `prod/client` may reach 10.200.0.0/24 (except .3) and fd00:200::/64
/// (except ::3) on TCP and UDP port 7000, and 10.201.0.0/24 and
/// fd00:201::/64 with every protocol and port. `prod/other` is selected by
/// no policy.
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
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {name: other, namespace: prod, labels: {app: other}}
spec: {cgroup: $ROOT/prod/other}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.200.0.0/24, except: [10.200.0.3/32]}
    - ipBlock: {cidr: "fd00:200::/64", except: ["fd00:200::3/128"]}
    ports: [{port: 7000, protocol: TCP}, {port: 7000, protocol: UDP}]
  - to: [{ipBlock: {cidr: 10.201.0.0/24}}, {ipBlock: {cidr: "fd00:201::/64"}}]
"#;

const SRC4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
/// Allowed on port 7000 only.
const PORTED4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const PORTED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);
/// The `except` holes.
const HOLE4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 3);
const HOLE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 3);
/// Allowed with any protocol and port.
const ANY4: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const ANY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 2);
/// Allowed nothing.
const NONE4: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 2);
const NONE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, 2);

const ALLOWED_PORT: u16 = 7000;
const OTHER_PORT: u16 = 7001;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// IEEE's local experimental ethertype; see [`short`].
const ETH_P_LOCAL_EXPERIMENTAL: u16 = 0x88b5;

/// A transport header: TCP (20 bytes, SYN), UDP (8) or ICMP echo (8).
fn transport(proto: u8, dport: u16) -> Vec<u8> {
    let sport = 40_000u16.to_be_bytes();
    let dport = dport.to_be_bytes();
    match proto {
        TCP => {
            let mut h = vec![sport[0], sport[1], dport[0], dport[1]];
            h.extend_from_slice(&[0; 8]); // sequence and acknowledgment
            h.extend_from_slice(&[5 << 4, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
            h
        }
        UDP => vec![sport[0], sport[1], dport[0], dport[1], 0, 8, 0, 0],
        _ => vec![8, 0, 0, 0, 0, 1, 0, 1],
    }
}

/// An IPv4 packet; `options` (a multiple of 4 bytes) sets the IHL, `frag`
/// is the flags-and-offset field.
fn ipv4(dst: Ipv4Addr, proto: u8, frag: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 5 + options.len() / 4;
    let total = u16::try_from(ihl * 4 + payload.len()).expect("small packet");
    let mut p = vec![0x40 | ihl as u8, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&SRC4.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    p
}

/// IPv4 "more fragments" flag.
const MF: u16 = 0x2000;

/// An IPv6 extension header of `kind` followed by `next`: 8 bytes of
/// padding options (or routing type 0 with no segments left) for
/// hop-by-hop, routing and destination options; a fragment header at
/// `frag_offset` (in 8-byte units, with M set); or a 24-byte AH.
fn extension(kind: u8, next: u8, frag_offset: u16) -> Vec<u8> {
    match kind {
        FRAGMENT => {
            let field = (frag_offset << 3) | 1;
            let mut h = vec![next, 0];
            h.extend_from_slice(&field.to_be_bytes());
            h.extend_from_slice(&[0xab, 0xcd, 0xef, 0x01]);
            h
        }
        // Payload length in 4-byte units, minus 2: 24 bytes.
        AUTH => {
            let mut h = vec![next, 4];
            h.extend_from_slice(&[0; 22]);
            h
        }
        // Length in 8-byte units, not counting the first 8: 16 bytes, so
        // that a parser that ignored the length would land on padding.
        _ => {
            let mut h = vec![next, 1];
            h.extend_from_slice(&[0; 14]);
            h
        }
    }
}

/// An IPv6 packet with the extension headers `chain` (in order) before the
/// transport header; `frag_offset` is that of any fragment header.
fn ipv6(dst: Ipv6Addr, chain: &[u8], proto: u8, frag_offset: u16, payload: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    for (i, kind) in chain.iter().enumerate() {
        let next = chain.get(i + 1).copied().unwrap_or(proto);
        headers.extend(extension(*kind, next, frag_offset));
    }
    let first = chain.first().copied().unwrap_or(proto);
    let len = u16::try_from(headers.len() + payload.len()).expect("small packet");
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[first, 64]);
    p.extend_from_slice(&SRC6.octets());
    p.extend_from_slice(&dst.octets());
    p.extend(headers);
    p.extend_from_slice(payload);
    p
}

/// `packet` behind an Ethernet header: the test run takes the protocol from
/// it and hands the program what follows.
fn frame(ethertype: u16, packet: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

fn v4(packet: Vec<u8>) -> Vec<u8> {
    frame(ETH_P_IP, &packet)
}

fn v6(packet: Vec<u8>) -> Vec<u8> {
    frame(ETH_P_IPV6, &packet)
}

/// A packet shorter than its fixed IP header. This kernel refuses to test
/// run such a frame with the IPv4 or IPv6 ethertype (EINVAL: it reads the
/// addresses for the dummy socket first), so it goes behind another
/// ethertype: the program reads the version nibble, not the protocol.
fn short(packet: Vec<u8>) -> Vec<u8> {
    frame(ETH_P_LOCAL_EXPERIMENTAL, &packet)
}

fn cut(mut packet: Vec<u8>, len: usize) -> Vec<u8> {
    packet.truncate(len);
    packet
}

/// What the program must do with a case, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expect {
    allow: bool,
    reason: Reason,
}

const RULE: Expect = Expect {
    allow: true,
    reason: Reason::Rule,
};
const DEFAULT_DENY: Expect = Expect {
    allow: false,
    reason: Reason::DefaultDeny,
};
const MALFORMED: Expect = Expect {
    allow: false,
    reason: Reason::Malformed,
};

struct Case {
    name: String,
    frame: Vec<u8>,
    expect: Expect,
}

fn case(name: impl Into<String>, frame: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        frame,
        expect,
    }
}

/// Ordinary TCP and UDP to both kinds of allowed destination and to the
/// denied ones, so that every shape below is compared with the plain case.
fn plain_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (proto, name) in [(TCP, "tcp"), (UDP, "udp")] {
        let l4 = |port| transport(proto, port);
        cases.extend([
            case(
                format!("ipv4 {name} to an allowed port"),
                v4(ipv4(PORTED4, proto, 0, &[], &l4(ALLOWED_PORT))),
                RULE,
            ),
            case(
                format!("ipv4 {name} to another port"),
                v4(ipv4(PORTED4, proto, 0, &[], &l4(OTHER_PORT))),
                DEFAULT_DENY,
            ),
            case(
                format!("ipv4 {name} to the except hole"),
                v4(ipv4(HOLE4, proto, 0, &[], &l4(ALLOWED_PORT))),
                DEFAULT_DENY,
            ),
            case(
                format!("ipv4 {name} to an any-port block"),
                v4(ipv4(ANY4, proto, 0, &[], &l4(OTHER_PORT))),
                RULE,
            ),
            case(
                format!("ipv4 {name} to an unlisted block"),
                v4(ipv4(NONE4, proto, 0, &[], &l4(ALLOWED_PORT))),
                DEFAULT_DENY,
            ),
            case(
                format!("ipv6 {name} to an allowed port"),
                v6(ipv6(PORTED6, &[], proto, 0, &l4(ALLOWED_PORT))),
                RULE,
            ),
            case(
                format!("ipv6 {name} to another port"),
                v6(ipv6(PORTED6, &[], proto, 0, &l4(OTHER_PORT))),
                DEFAULT_DENY,
            ),
            case(
                format!("ipv6 {name} to the except hole"),
                v6(ipv6(HOLE6, &[], proto, 0, &l4(ALLOWED_PORT))),
                DEFAULT_DENY,
            ),
            case(
                format!("ipv6 {name} to an any-port block"),
                v6(ipv6(ANY6, &[], proto, 0, &l4(OTHER_PORT))),
                RULE,
            ),
            case(
                format!("ipv6 {name} to an unlisted block"),
                v6(ipv6(NONE6, &[], proto, 0, &l4(ALLOWED_PORT))),
                DEFAULT_DENY,
            ),
        ]);
    }
    cases.extend([
        // The port rules are TCP and UDP only; ICMP has no ports.
        case(
            "ipv4 icmp to a port-only block",
            v4(ipv4(PORTED4, ICMP, 0, &[], &transport(ICMP, 0))),
            DEFAULT_DENY,
        ),
        case(
            "ipv4 icmp to an any-protocol block",
            v4(ipv4(ANY4, ICMP, 0, &[], &transport(ICMP, 0))),
            RULE,
        ),
        case(
            "ipv6 icmpv6 to a port-only block",
            v6(ipv6(PORTED6, &[], ICMPV6, 0, &transport(ICMP, 0))),
            DEFAULT_DENY,
        ),
        case(
            "ipv6 icmpv6 to an any-protocol block",
            v6(ipv6(ANY6, &[], ICMPV6, 0, &transport(ICMP, 0))),
            RULE,
        ),
    ]);
    cases
}

/// IPv4 options move the transport header: the ports are read after them.
/// The option bytes spell port 7000 where a parser that assumed 20 bytes
/// of header would look.
fn ipv4_option_cases() -> Vec<Case> {
    let decoy = [0x9c, 0x40, 0x1b, 0x58]; // "40000 → 7000"
    let options = |words: usize| decoy.repeat(words);
    let mut cases = Vec::new();
    for words in [1, 3, 10] {
        let ihl = 5 + words;
        cases.extend([
            case(
                format!("ipv4 ihl {ihl} tcp to an allowed port"),
                v4(ipv4(
                    PORTED4,
                    TCP,
                    0,
                    &options(words),
                    &transport(TCP, ALLOWED_PORT),
                )),
                RULE,
            ),
            case(
                format!("ipv4 ihl {ihl} tcp to another port behind decoy options"),
                v4(ipv4(
                    PORTED4,
                    TCP,
                    0,
                    &options(words),
                    &transport(TCP, OTHER_PORT),
                )),
                DEFAULT_DENY,
            ),
            case(
                format!("ipv4 ihl {ihl} udp to another port behind decoy options"),
                v4(ipv4(
                    PORTED4,
                    UDP,
                    0,
                    &options(words),
                    &transport(UDP, OTHER_PORT),
                )),
                DEFAULT_DENY,
            ),
            case(
                format!("ipv4 ihl {ihl} udp to an unlisted block"),
                v4(ipv4(
                    NONE4,
                    UDP,
                    0,
                    &options(words),
                    &transport(UDP, ALLOWED_PORT),
                )),
                DEFAULT_DENY,
            ),
        ]);
    }
    // An IHL below 5 is no IPv4 header; the program must not guess.
    let mut short_ihl = ipv4(ANY4, UDP, 0, &[], &transport(UDP, ALLOWED_PORT));
    short_ihl[0] = 0x44;
    cases.push(case(
        "ipv4 ihl 4 to an any-port block",
        v4(short_ihl),
        MALFORMED,
    ));
    cases
}

/// IPv4 fragments: the first carries the ports and is decided on them; the
/// others carry none, so only an any-protocol, any-port rule can allow
/// them (their bytes here spell an allowed port, which must not count).
fn ipv4_fragment_cases() -> Vec<Case> {
    let first = |dst, port, frag| v4(ipv4(dst, TCP, frag, &[], &transport(TCP, port)));
    let later = |dst, frag| v4(ipv4(dst, TCP, frag, &[], &transport(TCP, ALLOWED_PORT)));
    vec![
        case(
            "ipv4 first fragment to an allowed port",
            first(PORTED4, ALLOWED_PORT, MF),
            RULE,
        ),
        case(
            "ipv4 first fragment to another port",
            first(PORTED4, OTHER_PORT, MF),
            DEFAULT_DENY,
        ),
        case(
            "ipv4 first fragment (DF set) to an allowed port",
            first(PORTED4, ALLOWED_PORT, 0x4000),
            RULE,
        ),
        case(
            "ipv4 later fragment to a port-only block",
            later(PORTED4, MF | 185),
            DEFAULT_DENY,
        ),
        case(
            "ipv4 last fragment to a port-only block",
            later(PORTED4, 1),
            DEFAULT_DENY,
        ),
        case(
            "ipv4 later fragment to an any-port block",
            later(ANY4, MF | 185),
            RULE,
        ),
        case(
            "ipv4 last fragment to an any-port block",
            later(ANY4, 0x1fff),
            RULE,
        ),
        case(
            "ipv4 later fragment to the except hole",
            later(HOLE4, MF | 185),
            DEFAULT_DENY,
        ),
        case(
            "ipv4 later fragment to an unlisted block",
            later(NONE4, MF | 185),
            DEFAULT_DENY,
        ),
    ]
}

/// IPv6 extension header chains, up to the four the program follows.
fn ipv6_extension_cases() -> Vec<Case> {
    let chains: [&[u8]; 8] = [
        &[HOP_BY_HOP],
        &[ROUTING],
        &[DEST_OPTS],
        &[FRAGMENT],
        &[AUTH],
        &[HOP_BY_HOP, DEST_OPTS],
        &[HOP_BY_HOP, ROUTING, FRAGMENT],
        &[HOP_BY_HOP, DEST_OPTS, ROUTING, DEST_OPTS],
    ];
    let mut cases = Vec::new();
    for chain in chains {
        let names: Vec<&str> = chain.iter().map(|k| extension_name(*k)).collect();
        let names = names.join("+");
        for (proto, pname) in [(TCP, "tcp"), (UDP, "udp")] {
            let packet = |dst, port| v6(ipv6(dst, chain, proto, 0, &transport(proto, port)));
            cases.extend([
                case(
                    format!("ipv6 {names} {pname} to an allowed port"),
                    packet(PORTED6, ALLOWED_PORT),
                    RULE,
                ),
                case(
                    format!("ipv6 {names} {pname} to another port"),
                    packet(PORTED6, OTHER_PORT),
                    DEFAULT_DENY,
                ),
                case(
                    format!("ipv6 {names} {pname} to the except hole"),
                    packet(HOLE6, ALLOWED_PORT),
                    DEFAULT_DENY,
                ),
                case(
                    format!("ipv6 {names} {pname} to an unlisted block"),
                    packet(NONE6, ALLOWED_PORT),
                    DEFAULT_DENY,
                ),
            ]);
        }
    }
    // A later fragment carries no ports, wherever its fragment header is.
    for chain in [&[FRAGMENT][..], &[HOP_BY_HOP, DEST_OPTS, FRAGMENT]] {
        let later = |dst| v6(ipv6(dst, chain, TCP, 185, &transport(TCP, ALLOWED_PORT)));
        let names = chain.len();
        cases.extend([
            case(
                format!("ipv6 later fragment after {names} headers to a port-only block"),
                later(PORTED6),
                DEFAULT_DENY,
            ),
            case(
                format!("ipv6 later fragment after {names} headers to an any-port block"),
                later(ANY6),
                RULE,
            ),
            case(
                format!("ipv6 later fragment after {names} headers to an unlisted block"),
                later(NONE6),
                DEFAULT_DENY,
            ),
        ]);
    }
    // Past the four headers the program follows, the fifth's number is the
    // protocol: no ports, so only an any-protocol rule allows it.
    let five = [HOP_BY_HOP, DEST_OPTS, ROUTING, ROUTING, DEST_OPTS];
    let long = |dst| v6(ipv6(dst, &five, TCP, 0, &transport(TCP, ALLOWED_PORT)));
    cases.extend([
        case(
            "ipv6 five headers to a port-only block",
            long(PORTED6),
            DEFAULT_DENY,
        ),
        case(
            "ipv6 five headers to an any-protocol block",
            long(ANY6),
            RULE,
        ),
        case(
            "ipv6 five headers to an unlisted block",
            long(NONE6),
            DEFAULT_DENY,
        ),
    ]);
    cases
}

fn extension_name(kind: u8) -> &'static str {
    match kind {
        HOP_BY_HOP => "hop-by-hop",
        ROUTING => "routing",
        FRAGMENT => "fragment",
        AUTH => "ah",
        DEST_OPTS => "dest-opts",
        _ => "?",
    }
}

/// Headers cut short. What the program needs and cannot read fails
/// closed, even to a destination that allows everything; it reads the
/// ports and nothing more of the transport header, so a header cut after
/// them is decided on them.
fn truncated_cases() -> Vec<Case> {
    let tcp4 = |dst| ipv4(dst, TCP, 0, &[], &transport(TCP, ALLOWED_PORT));
    let udp4 = |dst| ipv4(dst, UDP, 0, &[], &transport(UDP, ALLOWED_PORT));
    let tcp6 = |dst| ipv6(dst, &[], TCP, 0, &transport(TCP, ALLOWED_PORT));
    let udp6 = |dst| ipv6(dst, &[], UDP, 0, &transport(UDP, ALLOWED_PORT));
    let chained6 = |dst| {
        ipv6(
            dst,
            &[HOP_BY_HOP, FRAGMENT],
            TCP,
            0,
            &transport(TCP, ALLOWED_PORT),
        )
    };
    let options4 = ipv4(
        ANY4,
        TCP,
        0,
        &[1, 1, 1, 1, 1, 1, 1, 1],
        &transport(TCP, ALLOWED_PORT),
    );
    let mut not_ip = udp4(ANY4);
    not_ip[0] = 0x55;
    vec![
        // Sent as IPv4 with version 5 (a raw socket with IP_HDRINCL can):
        // not the family it is sent as, so it fails closed.
        case("version 5, sent as IPv4", v4(not_ip.clone()), MALFORMED),
        // Neither IPv4 nor IPv6, and not sent as IP either (the output
        // paths that run the program never carry one): it passes, counted.
        case(
            "version 5, sent as another ethertype",
            short(not_ip),
            Expect {
                allow: true,
                reason: Reason::NotIp,
            },
        ),
        case(
            "ipv4 header of 1 byte",
            short(cut(tcp4(ANY4), 1)),
            MALFORMED,
        ),
        case(
            "ipv4 header without its destination",
            short(cut(tcp4(ANY4), 12)),
            MALFORMED,
        ),
        case(
            "ipv4 header of 19 bytes",
            short(cut(tcp4(ANY4), 19)),
            MALFORMED,
        ),
        case(
            "ipv4 options cut short (ihl 7, 24 bytes)",
            v4(cut(options4, 24)),
            MALFORMED,
        ),
        case(
            "ipv4 tcp without a transport header",
            v4(cut(tcp4(ANY4), 20)),
            MALFORMED,
        ),
        case(
            "ipv4 tcp with 3 bytes of header",
            v4(cut(tcp4(ANY4), 23)),
            MALFORMED,
        ),
        case(
            "ipv4 tcp cut after the ports, allowed port",
            v4(cut(tcp4(PORTED4), 24)),
            RULE,
        ),
        case(
            "ipv4 tcp cut after the ports, unlisted block",
            v4(cut(tcp4(NONE4), 24)),
            DEFAULT_DENY,
        ),
        case(
            "ipv4 udp with 3 bytes of header",
            v4(cut(udp4(ANY4), 23)),
            MALFORMED,
        ),
        case(
            "ipv4 udp cut after the ports, allowed port",
            v4(cut(udp4(PORTED4), 24)),
            RULE,
        ),
        case(
            "ipv4 icmp without its header, any-protocol block",
            v4(cut(ipv4(ANY4, ICMP, 0, &[], &transport(ICMP, 0)), 20)),
            RULE,
        ),
        case(
            "ipv6 header of 8 bytes",
            short(cut(tcp6(ANY6), 8)),
            MALFORMED,
        ),
        case(
            "ipv6 header without its destination",
            short(cut(tcp6(ANY6), 30)),
            MALFORMED,
        ),
        case(
            "ipv6 header of 39 bytes",
            short(cut(tcp6(ANY6), 39)),
            MALFORMED,
        ),
        case(
            "ipv6 tcp without a transport header",
            v6(cut(tcp6(ANY6), 40)),
            MALFORMED,
        ),
        case(
            "ipv6 tcp with 3 bytes of header",
            v6(cut(tcp6(ANY6), 43)),
            MALFORMED,
        ),
        case(
            "ipv6 tcp cut after the ports, allowed port",
            v6(cut(tcp6(PORTED6), 44)),
            RULE,
        ),
        case(
            "ipv6 udp with 2 bytes of header",
            v6(cut(udp6(ANY6), 42)),
            MALFORMED,
        ),
        case(
            "ipv6 udp cut after the ports, allowed port",
            v6(cut(udp6(PORTED6), 44)),
            RULE,
        ),
        case(
            "ipv6 hop-by-hop header cut short",
            v6(cut(chained6(ANY6), 41)),
            MALFORMED,
        ),
        case(
            "ipv6 fragment header cut short",
            v6(cut(chained6(ANY6), 40 + 16 + 3)),
            MALFORMED,
        ),
        case(
            "ipv6 tcp after two headers without its ports",
            v6(cut(chained6(ANY6), 40 + 16 + 8 + 2)),
            MALFORMED,
        ),
        case(
            "ipv6 tcp after two headers cut after the ports",
            v6(cut(chained6(PORTED6), 40 + 16 + 8 + 4)),
            RULE,
        ),
    ]
}

/// The skb program's id.
fn skb_program(s: &Enforced) -> u32 {
    s.dataplane_ref()
        .links()
        .iter()
        .find(|l| l.hook == Hook::Skb)
        .expect("cgroup_skb/egress is attached")
        .program_id
}

/// Runs `cases` from `client` and checks every return value, then the
/// `VERDICTS` counters of `cgroup_skb` against the expected reasons.
fn check(s: &Enforced, client: &Client<'_>, cases: &[Case]) {
    let before = s.dataplane_ref().counters().expect("counters");
    let frames: Vec<Vec<u8>> = cases.iter().map(|c| c.frame.clone()).collect();
    let results = client
        .test_run(skb_program(s), &frames)
        .expect("the test runs");
    let mut wrong = Vec::new();
    for (case, result) in cases.iter().zip(&results) {
        let want = u32::from(case.expect.allow);
        if *result != Ok(want) {
            wrong.push(format!(
                "{}: returned {result:?}, want {want} ({:?})",
                case.name, case.expect.reason
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    let after = s.dataplane_ref().counters().expect("counters");
    for reason in Reason::ALL {
        let want = cases.iter().filter(|c| c.expect.reason == reason).count() as u64;
        let got = after.enforced(Hook::Skb, reason) - before.enforced(Hook::Skb, reason);
        assert_eq!(got, want, "cgroup_skb counter of {reason:?}");
        // The single-counter read the packet fuzz target relies on.
        let one = s
            .dataplane_ref()
            .verdict_count(VerdictKind::new(Hook::Skb, reason))
            .expect("one counter");
        assert_eq!(
            one,
            after.enforced(Hook::Skb, reason),
            "{reason:?} read alone"
        );
    }
    println!("{} cases as expected", cases.len());
}

#[test]
fn a_test_run_is_decided_for_the_cgroup_of_the_process_that_makes_it() {
    let s = Enforced::new(POLICY).unwrap();
    let program = skb_program(&s);
    let denied = v4(ipv4(NONE4, UDP, 0, &[], &transport(UDP, ALLOWED_PORT)));
    let allowed = v4(ipv4(PORTED4, UDP, 0, &[], &transport(UDP, ALLOWED_PORT)));
    let frames = [denied.clone(), allowed];
    let run = |client: Client<'_>| client.test_run(program, &frames).unwrap();

    let before = s.dataplane_ref().counters().unwrap();
    assert_eq!(run(s.client("prod/client")), [Ok(0), Ok(1)], "the workload");
    assert_eq!(
        run(s.client("prod/client").escaping_into("nested")),
        [Ok(0), Ok(1)],
        "a cgroup nested in the workload's: the ancestor walk finds it"
    );
    assert_eq!(
        run(s.client("prod/other")),
        [Ok(1), Ok(1)],
        "another workload, which no policy selects"
    );
    assert_eq!(
        run(s.unmanaged_client("elsewhere").unwrap()),
        [Ok(1), Ok(1)],
        "a cgroup below the root that is no workload's"
    );
    // This process is outside the data plane's root: unmanaged too.
    assert_eq!(dataplane::test_run(program, &denied).unwrap(), 1);

    let after = s.dataplane_ref().counters().unwrap();
    let delta = |reason| after.enforced(Hook::Skb, reason) - before.enforced(Hook::Skb, reason);
    assert_eq!(delta(Reason::DefaultDeny), 2);
    assert_eq!(delta(Reason::Rule), 2);
    assert_eq!(delta(Reason::NotIsolated), 2);
    assert_eq!(delta(Reason::Unmanaged), 3);
}

#[test]
fn plain_tcp_udp_and_icmp_are_decided_by_address_protocol_and_port() {
    let s = Enforced::new(POLICY).unwrap();
    check(&s, &s.client("prod/client"), &plain_cases());
}

#[test]
fn ipv4_options_move_the_ports_and_a_short_ihl_fails_closed() {
    let s = Enforced::new(POLICY).unwrap();
    check(&s, &s.client("prod/client"), &ipv4_option_cases());
}

#[test]
fn ipv4_later_fragments_carry_no_ports_and_match_only_any_port_rules() {
    let s = Enforced::new(POLICY).unwrap();
    check(&s, &s.client("prod/client"), &ipv4_fragment_cases());
}

#[test]
fn ipv6_extension_header_chains_are_followed_to_the_ports() {
    let s = Enforced::new(POLICY).unwrap();
    check(&s, &s.client("prod/client"), &ipv6_extension_cases());
}

/// A packet sent as one family whose first byte claims the other: read as
/// the claimed family, its bytes would name an allowed destination (the
/// IPv6 header's destination lies in what IPv4 routes as payload). The
/// program must not judge it by the claim.
fn family_mismatch_cases() -> Vec<Case> {
    let l4 = transport(TCP, ALLOWED_PORT);
    let mut as_v6_in_v4 = ipv6(PORTED6, &[], TCP, 0, &l4);
    let mut as_v4_in_v6 = ipv4(PORTED4, TCP, 0, &[], &l4);
    // Pad so that both are long enough for either header.
    as_v6_in_v4.resize(as_v6_in_v4.len().max(64), 0);
    as_v4_in_v6.resize(as_v4_in_v6.len().max(64), 0);
    vec![
        case(
            "an IPv6 header sent as IPv4 (IP_HDRINCL with version 6)",
            v4(as_v6_in_v4),
            MALFORMED,
        ),
        case("an IPv4 header sent as IPv6", v6(as_v4_in_v6), MALFORMED),
    ]
}

#[test]
fn a_packet_is_judged_as_the_family_it_is_sent_as_not_the_one_it_claims() {
    let s = Enforced::new(POLICY).unwrap();
    check(&s, &s.client("prod/client"), &family_mismatch_cases());
}

#[test]
fn truncated_headers_fail_closed_unless_the_ports_were_read() {
    let s = Enforced::new(POLICY).unwrap();
    check(&s, &s.client("prod/client"), &truncated_cases());
}
