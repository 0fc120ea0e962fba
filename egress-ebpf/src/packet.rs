//! Reading IPv4/IPv6 and transport headers in `cgroup_skb` programs. In
//! both directions the program sees the packet from the network header on
//! (the kernel pushes the transport header back for ingress).
//!
//! Non-first fragments carry no ports, so they are read with ports 0 and
//! only match entries without ports: "any protocol", or their protocol
//! with every port (a rule that names the protocol alone). Every protocol
//! other than TCP, UDP and SCTP (ICMP, ESP, ...) is read with port 0 too,
//! and so matches only "any protocol" entries; so does an IPv6 packet with
//! more than [`MAX_EXTENSION_HEADERS`] extension headers, whose protocol
//! is the next header number where the walk stopped.

use aya_ebpf::programs::SkBuffContext;

use crate::decide::{has_ports, Addr, Dst};

/// Offsets in the IPv4 header.
const IPV4_FRAG: usize = 6;
const IPV4_PROTO: usize = 9;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
/// "More fragments" is not about being first: only the offset is.
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// Offsets in the IPv6 fixed header.
const IPV6_NEXT: usize = 6;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
const IPV6_FIXED_LEN: usize = 40;

/// Extension headers followed to find the transport header.
pub const MAX_EXTENSION_HEADERS: usize = 4;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS: usize = 13;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A header the program needed could not be read.
pub struct Malformed;

/// The addresses, protocol and ports of one packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub src: Addr,
    pub dst: Addr,
    /// IP protocol number.
    pub proto: u8,
    /// Ports for TCP, UDP and SCTP (first fragments); 0 otherwise.
    pub src_port: u16,
    pub dst_port: u16,
    /// Offset of the transport header when the ports were read from it;
    /// 0 when there is none to read (no ports, non-first fragment).
    l4: usize,
}

impl Packet {
    /// Where the packet goes, for the egress decision.
    #[inline(always)]
    pub fn destination(&self) -> Dst {
        Dst {
            addr: self.dst,
            proto: self.proto,
            port: self.dst_port,
        }
    }

    /// The TCP flags byte; `Malformed` if the packet has no TCP header to
    /// read (not TCP, or a non-first fragment).
    #[inline(always)]
    pub fn tcp_flags(&self, ctx: &SkBuffContext) -> Result<u8, Malformed> {
        if self.proto != crate::decide::IPPROTO_TCP || self.l4 == 0 {
            return Err(Malformed);
        }
        load(ctx, self.l4 + TCP_FLAGS)
    }
}

/// `skb->protocol` of an IPv4 and of an IPv6 packet (network byte order,
/// as the field holds it).
const ETH_P_IP_BE: u32 = 0x0800_u16.to_be() as u32;
const ETH_P_IPV6_BE: u32 = 0x86dd_u16.to_be() as u32;

/// The packet's headers; `None` if it is not IP.
#[inline(always)]
pub fn parse(ctx: &SkBuffContext) -> Result<Option<Packet>, Malformed> {
    let first: u8 = load(ctx, 0)?;
    let version = first >> 4;
    // The family the kernel sends the packet as must be the one its first
    // byte claims. A raw IPv4 socket with IP_HDRINCL may write any version
    // nibble, and read as IPv6 its payload would stand where the
    // destination is: a packet routed as IPv4 to one address could be
    // judged as IPv6 to another. A mismatch cannot be judged: fail closed.
    match (ctx.skb.protocol(), version) {
        (ETH_P_IP_BE, 4) | (ETH_P_IPV6_BE, 6) => {}
        (ETH_P_IP_BE | ETH_P_IPV6_BE, _) => return Err(Malformed),
        // Not sent as IP (test runs with other ethertypes): the first byte
        // is all there is to go on.
        _ => {}
    }
    match version {
        4 => {
            let header_len = usize::from(first & 0x0f) * 4;
            if header_len < 20 {
                return Err(Malformed);
            }
            let proto: u8 = load(ctx, IPV4_PROTO)?;
            let frag = u16::from_be_bytes(load(ctx, IPV4_FRAG)?);
            let src: [u8; 4] = load(ctx, IPV4_SRC)?;
            let dst: [u8; 4] = load(ctx, IPV4_DST)?;
            let first_fragment = frag & IPV4_OFFSET_MASK == 0;
            let (src_port, dst_port, l4) = ports(ctx, proto, header_len, first_fragment)?;
            Ok(Some(Packet {
                src: Addr::V4(src),
                dst: Addr::V4(dst),
                proto,
                src_port,
                dst_port,
                l4,
            }))
        }
        6 => {
            let src: [u8; 16] = load(ctx, IPV6_SRC)?;
            let dst: [u8; 16] = load(ctx, IPV6_DST)?;
            let mut next: u8 = load(ctx, IPV6_NEXT)?;
            let mut offset = IPV6_FIXED_LEN;
            let mut first_fragment = true;
            let mut i = 0;
            while i < MAX_EXTENSION_HEADERS {
                i += 1;
                match next {
                    NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                        let [nh, len]: [u8; 2] = load(ctx, offset)?;
                        next = nh;
                        offset += (usize::from(len) + 1) * 8;
                    }
                    NEXTHDR_AUTH => {
                        let [nh, len]: [u8; 2] = load(ctx, offset)?;
                        next = nh;
                        offset += (usize::from(len) + 2) * 4;
                    }
                    NEXTHDR_FRAGMENT => {
                        let [nh, _, off_hi, off_lo]: [u8; 4] = load(ctx, offset)?;
                        next = nh;
                        offset += 8;
                        if u16::from_be_bytes([off_hi, off_lo]) & 0xfff8 != 0 {
                            first_fragment = false;
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let (src_port, dst_port, l4) = ports(ctx, next, offset, first_fragment)?;
            Ok(Some(Packet {
                src: Addr::V6(src),
                dst: Addr::V6(dst),
                proto: next,
                src_port,
                dst_port,
                l4,
            }))
        }
        _ => Ok(None),
    }
}

/// Source and destination ports of a transport header at `offset` (TCP,
/// UDP and SCTP start with them), and the offset if there was one to read.
#[inline(always)]
fn ports(
    ctx: &SkBuffContext,
    proto: u8,
    offset: usize,
    first_fragment: bool,
) -> Result<(u16, u16, usize), Malformed> {
    if first_fragment && has_ports(proto) {
        let [s0, s1, d0, d1]: [u8; 4] = load(ctx, offset)?;
        Ok((
            u16::from_be_bytes([s0, s1]),
            u16::from_be_bytes([d0, d1]),
            offset,
        ))
    } else {
        Ok((0, 0, 0))
    }
}

#[inline(always)]
fn load<T>(ctx: &SkBuffContext, offset: usize) -> Result<T, Malformed> {
    ctx.load(offset).map_err(|_| Malformed)
}
