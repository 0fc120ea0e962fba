//! PROXY protocol v2 from sidecar to gateway: how the gateway learns the
//! original destination (address and port) of a connection the sidecar
//! forwards.
//!
//! Istio carries this inside mTLS/HBONE metadata; without a mesh, the PROXY
//! header (HAProxy's spec, also understood by Envoy's `proxy_protocol`
//! listener filter) is the standard, binary, unambiguous way: its 12-byte
//! signature can start neither a TLS record nor an HTTP request, so the
//! gateway accepts connections with or without it on the same port.

use std::net::SocketAddr;

use ppp::v2::{self, Addresses, Builder, Command, Protocol, Version};

/// The v2 signature every header starts with.
pub const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("malformed PROXY v2 header: {0}")]
    Malformed(v2::ParseError),
    #[error("PROXY v2 header is not for a TCP connection over IPv4 or IPv6")]
    NotTcp,
    #[error("cannot write the PROXY v2 header: {0}")]
    Build(std::io::Error),
}

/// What the gateway learns from a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// The client (`source`) and the address it connected to
    /// (`destination`), before any redirect.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// A `LOCAL` header (health checks): no addresses.
    Local,
}

/// The outcome of looking for a header at the start of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No header: the bytes are the client's own.
    Absent,
    /// A header of `len` bytes; the client's bytes follow it.
    Present { header: Received, len: usize },
    /// Read more.
    NeedMore,
}

/// Encodes a `PROXY` header for a TCP connection. Mixed families are
/// written as IPv6 (the v4 side mapped), so the destination is never lost.
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Result<Vec<u8>, HeaderError> {
    let (source, destination) = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (source, destination)
        }
        _ => (to_v6(source), to_v6(destination)),
    };
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    )
    .build()
    .map_err(HeaderError::Build)
}

fn to_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

/// Looks for a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let n = buf.len().min(SIGNATURE.len());
    if buf[..n] != SIGNATURE[..n] {
        return Ok(Parsed::Absent);
    }
    if n < SIGNATURE.len() {
        return Ok(Parsed::NeedMore);
    }
    let header = match v2::Header::try_from(buf) {
        Ok(header) => header,
        Err(v2::ParseError::Incomplete(_) | v2::ParseError::Partial(..)) => {
            return Ok(Parsed::NeedMore)
        }
        Err(e) => return Err(HeaderError::Malformed(e)),
    };
    let received = match (header.command, header.protocol, header.addresses) {
        (Command::Local, _, _) => Received::Local,
        (Command::Proxy, Protocol::Stream, Addresses::IPv4(a)) => Received::Proxied {
            source: SocketAddr::new(a.source_address.into(), a.source_port),
            destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
        (Command::Proxy, Protocol::Stream, Addresses::IPv6(a)) => Received::Proxied {
            source: super::original_dst::unmap(SocketAddr::new(
                a.source_address.into(),
                a.source_port,
            )),
            destination: super::original_dst::unmap(SocketAddr::new(
                a.destination_address.into(),
                a.destination_port,
            )),
        },
        _ => return Err(HeaderError::NotTcp),
    };
    Ok(Parsed::Present {
        header: received,
        len: header.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn round_trip_v4_v6_and_mixed() {
        for (src, dst) in [
            ("10.244.1.10:50482", "151.101.65.67:443"),
            ("[fd00::1]:40000", "[2001:db8::10]:80"),
            ("10.244.1.10:50482", "[2001:db8::10]:443"),
        ] {
            let mut bytes = encode(addr(src), addr(dst)).expect("encode");
            let len = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                parse(&bytes).expect("parse"),
                Parsed::Present {
                    header: Received::Proxied {
                        source: addr(src),
                        destination: addr(dst)
                    },
                    len
                }
            );
            for cut in 0..len {
                assert_eq!(parse(&bytes[..cut]).expect("prefix"), Parsed::NeedMore);
            }
        }
    }

    #[test]
    fn tls_and_http_are_not_headers() {
        assert_eq!(parse(b"\x16\x03\x01").expect("tls"), Parsed::Absent);
        assert_eq!(parse(b"GET / HTTP/1.1").expect("http"), Parsed::Absent);
        assert_eq!(parse(b"\r\n\r\nX").expect("near miss"), Parsed::Absent);
    }

    #[test]
    fn a_bad_version_is_refused() {
        let mut bytes = encode(addr("10.0.0.1:1"), addr("10.0.0.2:2")).expect("encode");
        bytes[12] = 0x31;
        assert!(parse(&bytes).is_err());
    }
}
