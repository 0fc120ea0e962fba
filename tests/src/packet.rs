//! Packets built by hand: IP and UDP headers, and the encapsulations that
//! tunnel devices put on the wire, for probes that write them whole on raw
//! sockets (`IPPROTO_RAW`, `AF_PACKET`).
//!
//! A pod needs no tunnel device to send what one would: the kernel here has
//! no `gre`, `ipip`, `sit`, `ip6_tunnel` or `geneve` module, and a tunnel's
//! outer packet is only bytes in front of the inner one. Building them by
//! hand covers every kernel, and lets a test pick each address, the outer
//! source included.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

/// IP protocol numbers (IPv6 next-header values) used here.
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_GRE: u8 = 47;

/// EtherTypes, which GRE and Geneve also use to name their payload.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// "Transparent Ethernet bridging": the payload is a whole Ethernet frame.
pub const ETHERTYPE_ETHERNET: u16 = 0x6558;

pub const GENEVE_PORT: u16 = 6081;
pub const VXLAN_PORT: u16 = 4789;
/// The outer UDP source port of Geneve and VXLAN (a device hashes the
/// inner flow into it; any port does).
pub const TUNNEL_SOURCE_PORT: u16 = 40_000;
/// The VNI of Geneve and VXLAN packets.
pub const VNI: u32 = 42;
/// The inner Ethernet frame's addresses, locally administered. A device
/// that is to take the frame in must have the destination's.
pub const INNER_DESTINATION_MAC: &str = "02:00:00:00:00:02";
const INNER_DESTINATION: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const INNER_SOURCE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

const TTL: u8 = 64;

/// The Internet checksum of `parts`, concatenated.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `payload` behind an IP header from `from` to `to` with `protocol`
/// (IPv4 with its header checksum, DF set; IPv6 without extension headers).
/// EAFNOSUPPORT when the two addresses are of different families.
pub fn ip(from: IpAddr, to: IpAddr, protocol: u8, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut packet = match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(20 + payload.len()).map_err(|_| too_long())?;
            let mut header = vec![0x45, 0];
            header.extend_from_slice(&total.to_be_bytes());
            header.extend_from_slice(&[0, 0, 0x40, 0, TTL, protocol, 0, 0]);
            header.extend_from_slice(&s.octets());
            header.extend_from_slice(&d.octets());
            let sum = checksum(&[&header]);
            header[10..12].copy_from_slice(&sum.to_be_bytes());
            header
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let length = u16::try_from(payload.len()).map_err(|_| too_long())?;
            let mut header = vec![0x60, 0, 0, 0];
            header.extend_from_slice(&length.to_be_bytes());
            header.extend_from_slice(&[protocol, TTL]);
            header.extend_from_slice(&s.octets());
            header.extend_from_slice(&d.octets());
            header
        }
        _ => return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
    };
    packet.extend_from_slice(payload);
    Ok(packet)
}

/// A UDP datagram of `payload` from `from` to `to` in its IP packet, both
/// checksums filled in (IPv6 requires the UDP one).
pub fn ip_udp(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    let length = u16::try_from(8 + payload.len()).map_err(|_| too_long())?;
    let mut udp = Vec::with_capacity(usize::from(length));
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&length.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [
            &s.octets()[..],
            &d.octets(),
            &[0, IPPROTO_UDP],
            &length.to_be_bytes(),
        ]
        .concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => [
            &s.octets()[..],
            &d.octets(),
            &u32::from(length).to_be_bytes(),
            &[0, 0, 0, IPPROTO_UDP],
        ]
        .concat(),
        _ => return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
    };
    // 0 means "no checksum" to UDP over IPv4; a sum of 0 is sent as its
    // other spelling (RFC 768).
    let sum = match checksum(&[&pseudo, &udp]) {
        0 => 0xffff,
        sum => sum,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    ip(from.ip(), to.ip(), IPPROTO_UDP, &udp)
}

/// A tunnel's encapsulation, as a device of that type writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// GRE (IP protocol 47) with the 4-byte header of RFC 2784 (no
    /// checksum, key or sequence number) and the inner packet's EtherType:
    /// a `gre` or `ip6gre` device.
    Gre,
    /// The inner IP packet straight after the outer header: protocol 4 for
    /// an IPv4 inner packet (`ipip`; `ip6tnl` in 4in6 mode), 41 for an
    /// IPv6 one (`sit`; `ip6tnl` in ip6ip6 mode).
    Ip,
    /// Geneve (UDP 6081, RFC 8926) with the inner IP packet and its
    /// EtherType as the protocol, no options.
    Geneve,
    /// Geneve around a whole Ethernet frame (protocol 0x6558), as a
    /// `geneve` device sends it.
    GeneveEthernet,
    /// VXLAN (UDP 4789, RFC 7348) around an Ethernet frame.
    Vxlan,
}

impl Tunnel {
    pub const ALL: [Tunnel; 5] = [
        Tunnel::Gre,
        Tunnel::Ip,
        Tunnel::Geneve,
        Tunnel::GeneveEthernet,
        Tunnel::Vxlan,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Tunnel::Gre => "gre",
            Tunnel::Ip => "ip",
            Tunnel::Geneve => "geneve",
            Tunnel::GeneveEthernet => "geneve-ethernet",
            Tunnel::Vxlan => "vxlan",
        }
    }

    /// The kind of Linux device that sends this encapsulation, with an
    /// outer and an inner packet of these families.
    pub const fn device(self, outer_v6: bool, inner_v6: bool) -> &'static str {
        match (self, outer_v6, inner_v6) {
            (Tunnel::Gre, false, _) => "gre",
            (Tunnel::Gre, true, _) => "ip6gre",
            (Tunnel::Ip, false, false) => "ipip",
            (Tunnel::Ip, false, true) => "sit",
            (Tunnel::Ip, true, false) => "ip6tnl (4in6)",
            (Tunnel::Ip, true, true) => "ip6tnl (ip6ip6)",
            (Tunnel::Geneve, _, _) => "geneve (IP payload)",
            (Tunnel::GeneveEthernet, _, _) => "geneve",
            (Tunnel::Vxlan, _, _) => "vxlan",
        }
    }

    /// The outer packet's IP protocol, for an inner packet of `inner_v6`'s
    /// family.
    pub const fn outer_protocol(self, inner_v6: bool) -> u8 {
        match self {
            Tunnel::Gre => IPPROTO_GRE,
            Tunnel::Ip if inner_v6 => IPPROTO_IPV6,
            Tunnel::Ip => IPPROTO_IPIP,
            Tunnel::Geneve | Tunnel::GeneveEthernet | Tunnel::Vxlan => IPPROTO_UDP,
        }
    }

    /// `inner`, an IP packet, encapsulated, in an outer IP packet from
    /// `from` to `to`.
    pub fn encapsulate(self, from: IpAddr, to: IpAddr, inner: &[u8]) -> io::Result<Vec<u8>> {
        let inner_v6 = match inner.first().map(|b| b >> 4) {
            Some(4) => false,
            Some(6) => true,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let ethertype = if inner_v6 {
            ETHERTYPE_IPV6
        } else {
            ETHERTYPE_IPV4
        };
        let protocol = self.outer_protocol(inner_v6);
        let vni = &VNI.to_be_bytes()[1..];
        let (header, payload): (Vec<u8>, Vec<u8>) = match self {
            Tunnel::Gre => (
                [&[0, 0][..], &ethertype.to_be_bytes()].concat(),
                inner.into(),
            ),
            Tunnel::Ip => (Vec::new(), inner.into()),
            Tunnel::Geneve => (geneve(ethertype, vni), inner.into()),
            Tunnel::GeneveEthernet => (geneve(ETHERTYPE_ETHERNET, vni), ethernet(ethertype, inner)),
            Tunnel::Vxlan => (
                [&[0x08, 0, 0, 0][..], vni, &[0]].concat(),
                ethernet(ethertype, inner),
            ),
        };
        let body = [header, payload].concat();
        match self {
            Tunnel::Gre | Tunnel::Ip => ip(from, to, protocol, &body),
            Tunnel::Geneve | Tunnel::GeneveEthernet | Tunnel::Vxlan => {
                let port = if self == Tunnel::Vxlan {
                    VXLAN_PORT
                } else {
                    GENEVE_PORT
                };
                ip_udp(
                    SocketAddr::new(from, TUNNEL_SOURCE_PORT),
                    SocketAddr::new(to, port),
                    &body,
                )
            }
        }
    }
}

impl FromStr for Tunnel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tunnel::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Tunnel::ALL.iter().map(|t| t.name()).collect();
                format!("unknown tunnel {s:?} (one of {})", names.join(", "))
            })
    }
}

/// The 8-byte Geneve header: version 0, no options, not OAM, `protocol`.
fn geneve(protocol: u16, vni: &[u8]) -> Vec<u8> {
    [&[0, 0][..], &protocol.to_be_bytes(), vni, &[0]].concat()
}

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    [
        &INNER_DESTINATION[..],
        &INNER_SOURCE,
        &ethertype.to_be_bytes(),
        payload,
    ]
    .concat()
}

/// Source, destination and protocol of an IP packet (for IPv6 the first
/// next header, extension headers not followed); `None` when `packet` is
/// not one.
pub fn addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr, u8)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let at = |i: usize| <[u8; 4]>::try_from(&packet[i..i + 4]).ok();
            Some((at(12)?.into(), at(16)?.into(), packet[9]))
        }
        6 if packet.len() >= 40 => {
            let at = |i: usize| <[u8; 16]>::try_from(&packet[i..i + 16]).ok();
            Some((at(8)?.into(), at(24)?.into(), packet[6]))
        }
        _ => None,
    }
}

fn too_long() -> io::Error {
    io::Error::from_raw_os_error(libc::EMSGSIZE)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const PAYLOAD: &[u8] = b"egress-probe";

    fn v4(d: u8) -> IpAddr {
        Ipv4Addr::new(10, 0, 0, d).into()
    }

    fn v6(d: u16) -> IpAddr {
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, d).into()
    }

    fn inner(v6_inner: bool) -> Vec<u8> {
        let (from, to) = if v6_inner {
            (v6(1), v6(2))
        } else {
            (v4(1), v4(2))
        };
        ip_udp(
            SocketAddr::new(from, 40_000),
            SocketAddr::new(to, 53),
            PAYLOAD,
        )
        .unwrap()
    }

    /// The UDP checksum verifies: summed with its pseudo-header it is 0.
    fn udp_verifies(packet: &[u8]) -> bool {
        let (src, dst, protocol) = addresses(packet).unwrap();
        let (header, octets): (usize, Vec<u8>) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (20, [s.octets(), d.octets()].concat()),
            (IpAddr::V6(s), IpAddr::V6(d)) => (40, [s.octets(), d.octets()].concat()),
            _ => unreachable!(),
        };
        let udp = &packet[header..];
        let length = u16::try_from(udp.len()).unwrap();
        let pseudo = [&octets[..], &[0, protocol], &length.to_be_bytes()].concat();
        checksum(&[&pseudo, udp]) == 0
    }

    #[test]
    fn ipv4_headers_carry_their_length_protocol_and_a_valid_checksum() {
        let packet = ip(v4(1), v4(2), IPPROTO_GRE, &[1, 2, 3]).unwrap();
        assert_eq!(packet.len(), 23);
        assert_eq!(&packet[2..4], &23u16.to_be_bytes());
        assert_eq!(packet[9], IPPROTO_GRE);
        assert_eq!(checksum(&[&packet[..20]]), 0);
        assert_eq!(addresses(&packet), Some((v4(1), v4(2), IPPROTO_GRE)));
    }

    #[test]
    fn ipv6_headers_carry_the_payload_length_and_next_header() {
        let packet = ip(v6(1), v6(2), IPPROTO_IPIP, &[0; 10]).unwrap();
        assert_eq!(packet.len(), 50);
        assert_eq!(&packet[4..6], &10u16.to_be_bytes());
        assert_eq!(addresses(&packet), Some((v6(1), v6(2), IPPROTO_IPIP)));
    }

    #[test]
    fn mixed_families_are_refused() {
        let err = ip(v4(1), v6(2), IPPROTO_UDP, &[]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EAFNOSUPPORT));
        let err = Tunnel::Gre.encapsulate(v4(1), v6(2), &inner(false));
        assert!(err.is_err());
    }

    #[test]
    fn udp_checksums_verify_in_both_families() {
        assert!(udp_verifies(&inner(false)));
        assert!(udp_verifies(&inner(true)));
    }

    #[test]
    fn gre_puts_four_bytes_and_the_inner_ethertype_before_the_inner_packet() {
        for (inner_v6, ethertype) in [(false, ETHERTYPE_IPV4), (true, ETHERTYPE_IPV6)] {
            let packet = Tunnel::Gre
                .encapsulate(v6(10), v6(20), &inner(inner_v6))
                .unwrap();
            assert_eq!(addresses(&packet), Some((v6(10), v6(20), IPPROTO_GRE)));
            assert_eq!(
                &packet[40..44],
                &[&[0, 0][..], &ethertype.to_be_bytes()].concat()[..]
            );
            assert_eq!(&packet[44..], &inner(inner_v6)[..]);
        }
    }

    #[test]
    fn ip_in_ip_is_protocol_4_or_41_by_the_inner_family() {
        for (outer, inner_v6, protocol) in [
            ((v4(10), v4(20)), false, IPPROTO_IPIP),
            ((v4(10), v4(20)), true, IPPROTO_IPV6),
            ((v6(10), v6(20)), false, IPPROTO_IPIP),
            ((v6(10), v6(20)), true, IPPROTO_IPV6),
        ] {
            let packet = Tunnel::Ip
                .encapsulate(outer.0, outer.1, &inner(inner_v6))
                .unwrap();
            let (_, _, got) = addresses(&packet).unwrap();
            assert_eq!(got, protocol);
            assert_eq!(Tunnel::Ip.outer_protocol(inner_v6), protocol);
            let header = if outer.0.is_ipv4() { 20 } else { 40 };
            assert_eq!(&packet[header..], &inner(inner_v6)[..]);
        }
    }

    #[test]
    fn geneve_and_vxlan_are_udp_to_their_ports_with_their_headers() {
        let ip_inner = inner(false);
        for (tunnel, port, header, payload_at) in [
            (
                Tunnel::Geneve,
                GENEVE_PORT,
                vec![0, 0, 0x08, 0x00, 0, 0, 42, 0],
                8,
            ),
            (
                Tunnel::GeneveEthernet,
                GENEVE_PORT,
                vec![0, 0, 0x65, 0x58, 0, 0, 42, 0],
                8 + 14,
            ),
            (
                Tunnel::Vxlan,
                VXLAN_PORT,
                vec![0x08, 0, 0, 0, 0, 0, 42, 0],
                8 + 14,
            ),
        ] {
            for (from, to) in [(v4(10), v4(20)), (v6(10), v6(20))] {
                let packet = tunnel.encapsulate(from, to, &ip_inner).unwrap();
                assert_eq!(addresses(&packet), Some((from, to, IPPROTO_UDP)));
                assert!(udp_verifies(&packet), "{tunnel:?} from {from}");
                let udp = if from.is_ipv4() { 20 } else { 40 };
                assert_eq!(&packet[udp + 2..udp + 4], &port.to_be_bytes());
                let body = &packet[udp + 8..];
                assert_eq!(&body[..8], &header[..], "{tunnel:?}");
                if payload_at > 8 {
                    assert_eq!(&body[20..22], &ETHERTYPE_IPV4.to_be_bytes());
                }
                assert_eq!(&body[payload_at..], &ip_inner[..]);
            }
        }
    }

    #[test]
    fn the_inner_destination_mac_is_spelled_as_it_is_written() {
        let written: Vec<String> = INNER_DESTINATION
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(written.join(":"), INNER_DESTINATION_MAC);
    }

    #[test]
    fn tunnels_parse_from_their_names() {
        for tunnel in Tunnel::ALL {
            assert_eq!(tunnel.name().parse::<Tunnel>(), Ok(tunnel));
        }
        assert!("ipip".parse::<Tunnel>().is_err());
    }
}
