//! Where a client wants to go, read from its first bytes: the TLS SNI or the
//! HTTP `Host` header.
//!
//! The sniffer only looks; it never changes a byte, so TLS stays end to end
//! (passthrough, as Istio's `tls.match.sniHosts`). Parsing is done by
//! `tls-parser` and `httparse`; this module only decides what their answers
//! mean for routing.

use std::{fmt, net::IpAddr, str::FromStr};

use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake, TlsRecordType};

/// The most a client may send before its SNI or `Host` is known. A
/// ClientHello fits one 16 KiB record; a request head larger than this is
/// refused rather than buffered.
pub const MAX_SNIFF: usize = 16 * 1024;

/// More than any real request head carries; `httparse` refuses beyond.
const MAX_HEADERS: usize = 96;

/// A validated, lower-case DNS name or IP literal, as routing and the
/// allow-list compare it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Host(String);

impl Host {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address, when the host is an IP literal (`[v6]` unbracketed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.0
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Host {
    type Err = SniffError;

    /// Accepts DNS names (letters, digits, `-`, `_`, dots; a trailing dot is
    /// dropped) and IP literals; anything else could smuggle separators into
    /// logs, stats names or the resolver.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || SniffError::InvalidHost(s.chars().take(64).collect());
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return match inner.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => Ok(Self(ip.to_string())),
                Err(_) => Err(invalid()),
            };
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self(ip.to_string()));
        }
        let name = s.strip_suffix('.').unwrap_or(s);
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(invalid());
        }
        Ok(Self(name.to_ascii_lowercase()))
    }
}

/// What the first bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello; `sni` is `None` when it carries no server_name.
    Tls { sni: Option<Host> },
    /// An HTTP/1 request head; `port` is the one written in `Host`, if any.
    Http {
        host: Option<Host>,
        port: Option<u16>,
    },
}

impl Sniffed {
    /// The name the client asked for, if it named one.
    pub fn host(&self) -> Option<&Host> {
        match self {
            Self::Tls { sni } => sni.as_ref(),
            Self::Http { host, .. } => host.as_ref(),
        }
    }

    pub fn protocol(&self) -> &'static str {
        match self {
            Self::Tls { .. } => "tls",
            Self::Http { .. } => "http",
        }
    }
}

/// Why the first bytes cannot be routed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SniffError {
    #[error("malformed TLS ClientHello: {0}")]
    MalformedTls(&'static str),
    #[error("malformed HTTP request head: {0}")]
    MalformedHttp(String),
    #[error("invalid host name {0:?}")]
    InvalidHost(String),
    #[error("neither a TLS ClientHello nor an HTTP request")]
    UnknownProtocol,
    #[error("no complete ClientHello or request head within {MAX_SNIFF} bytes")]
    TooLong,
    #[error("request head with more than {MAX_HEADERS} headers")]
    TooManyHeaders,
}

/// The sniffer's answer for the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniff {
    Done(Sniffed),
    /// Not decidable yet: read more (up to [`MAX_SNIFF`]).
    NeedMore,
}

/// Looks at the bytes a client sent so far. Never panics, whatever `buf`
/// holds; an answer of [`Sniff::NeedMore`] at [`MAX_SNIFF`] bytes becomes
/// [`SniffError::TooLong`].
pub fn sniff(buf: &[u8]) -> Result<Sniff, SniffError> {
    let answer = match buf.first() {
        None => Ok(Sniff::NeedMore),
        Some(&b) if b == u8::from(TlsRecordType::Handshake) => sniff_tls(buf),
        Some(b) if b.is_ascii_uppercase() => sniff_http(buf),
        Some(_) => Err(SniffError::UnknownProtocol),
    }?;
    if answer == Sniff::NeedMore && buf.len() >= MAX_SNIFF {
        return Err(SniffError::TooLong);
    }
    Ok(answer)
}

fn sniff_tls(buf: &[u8]) -> Result<Sniff, SniffError> {
    use tls_parser::Err;
    let record = match tls_parser::parse_tls_plaintext(buf) {
        Ok((_, record)) => record,
        Err(Err::Incomplete(_)) => return Ok(Sniff::NeedMore),
        // A handshake message longer than its record is a ClientHello split
        // over several records: legal but unseen in practice, and refusing
        // it keeps the sniffer to one bounded record.
        Err(_) => {
            return Err(SniffError::MalformedTls(
                "not one well-formed handshake record",
            ))
        }
    };
    let hello = record.msg.iter().find_map(|m| match m {
        TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) => Some(hello),
        _ => None,
    });
    let Some(hello) = hello else {
        return Err(SniffError::MalformedTls(
            "the first handshake message is not a ClientHello",
        ));
    };
    let Some(ext) = hello.ext else {
        return Ok(Sniff::Done(Sniffed::Tls { sni: None }));
    };
    let extensions = match tls_parser::parse_tls_extensions(ext) {
        Ok((_, extensions)) => extensions,
        Err(_) => return Err(SniffError::MalformedTls("malformed extensions")),
    };
    let name = extensions.iter().find_map(|e| match e {
        // Type 0 is host_name, the only type RFC 6066 defines.
        TlsExtension::SNI(names) => names.iter().find(|(t, _)| t.0 == 0).map(|(_, n)| *n),
        _ => None,
    });
    let sni = match name {
        None => None,
        Some(bytes) => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| SniffError::MalformedTls("server_name is not ASCII"))?;
            Some(text.parse()?)
        }
    };
    Ok(Sniff::Done(Sniffed::Tls { sni }))
}

fn sniff_http(buf: &[u8]) -> Result<Sniff, SniffError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(Sniff::NeedMore),
        Err(httparse::Error::TooManyHeaders) => Err(SniffError::TooManyHeaders),
        Err(e) => Err(SniffError::MalformedHttp(e.to_string())),
        Ok(httparse::Status::Complete(_)) => {
            let mut hosts = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"));
            let (Some(header), None) = (hosts.next(), hosts.next()) else {
                // RFC 9112 §3.2: none (HTTP/1.0) or several; the latter is a
                // classic request-smuggling trick.
                return if request
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("host"))
                {
                    Err(SniffError::MalformedHttp("several Host headers".into()))
                } else {
                    Ok(Sniff::Done(Sniffed::Http {
                        host: None,
                        port: None,
                    }))
                };
            };
            let value = std::str::from_utf8(header.value)
                .map_err(|_| SniffError::MalformedHttp("Host is not ASCII".into()))?
                .trim();
            let (host, port) = split_authority(value)?;
            Ok(Sniff::Done(Sniffed::Http {
                host: Some(host),
                port,
            }))
        }
    }
}

/// `name`, `name:port`, `1.2.3.4:80`, `[::1]:80` → host and optional port.
fn split_authority(value: &str) -> Result<(Host, Option<u16>), SniffError> {
    let bad_port = || SniffError::MalformedHttp(format!("bad port in Host {value:?}"));
    let (host, port) = if value.starts_with('[') {
        match value.rsplit_once("]:") {
            Some((h, p)) => (format!("{h}]"), Some(p)),
            None => (value.to_owned(), None),
        }
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (value.to_owned(), None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(bad_port)
        })
        .transpose()?;
    Ok((host.parse()?, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TLS 1.2 ClientHello with one server_name extension.
    pub(crate) fn client_hello(sni: &str) -> Vec<u8> {
        let name = sni.as_bytes();
        let mut sni_ext = Vec::new();
        let list_len = name.len() + 3;
        sni_ext.extend_from_slice(&[0x00, 0x00]); // server_name
        sni_ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        sni_ext.extend_from_slice(&(list_len as u16).to_be_bytes());
        sni_ext.push(0); // host_name
        sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni_ext.extend_from_slice(name);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&sni_ext);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        record.extend_from_slice(&hs);
        record
    }

    fn host(s: &str) -> Option<Host> {
        Some(s.parse().expect("valid host"))
    }

    #[test]
    fn sni_of_a_client_hello() {
        let hello = client_hello("Edition.CNN.com");
        assert_eq!(
            sniff(&hello),
            Ok(Sniff::Done(Sniffed::Tls {
                sni: host("edition.cnn.com")
            }))
        );
        for cut in 0..hello.len() {
            assert_eq!(sniff(&hello[..cut]), Ok(Sniff::NeedMore), "cut at {cut}");
        }
    }

    #[test]
    fn host_of_an_http_request() {
        let req = b"GET /politics HTTP/1.1\r\nHost: edition.cnn.com:8080\r\nUser-Agent: x\r\n\r\n";
        assert_eq!(
            sniff(req),
            Ok(Sniff::Done(Sniffed::Http {
                host: host("edition.cnn.com"),
                port: Some(8080)
            }))
        );
        assert_eq!(sniff(&req[..20]), Ok(Sniff::NeedMore));
        let v6 = b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n";
        assert_eq!(
            sniff(v6),
            Ok(Sniff::Done(Sniffed::Http {
                host: host("2001:db8::1"),
                port: Some(80)
            }))
        );
    }

    #[test]
    fn refusals() {
        let two = b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n";
        assert!(matches!(sniff(two), Err(SniffError::MalformedHttp(_))));
        let bad = b"GET / HTTP/1.1\r\nHost: a.com/evil\r\n\r\n";
        assert!(matches!(sniff(bad), Err(SniffError::InvalidHost(_))));
        let port = b"GET / HTTP/1.1\r\nHost: a.com:99999\r\n\r\n";
        assert!(matches!(sniff(port), Err(SniffError::MalformedHttp(_))));
        assert_eq!(sniff(b"\x00\x01"), Err(SniffError::UnknownProtocol));
        assert!(matches!(
            sniff(&client_hello("bad name")),
            Err(SniffError::InvalidHost(_))
        ));
        let endless = [b'A'; MAX_SNIFF];
        assert!(sniff(&endless).is_err());
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(sniff(many.as_bytes()), Err(SniffError::TooManyHeaders));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_SNIFF, b'a');
        assert_eq!(sniff(&long), Err(SniffError::TooLong));
    }

    #[test]
    fn no_host_is_not_an_error() {
        assert_eq!(
            sniff(b"GET / HTTP/1.0\r\n\r\n"),
            Ok(Sniff::Done(Sniffed::Http {
                host: None,
                port: None
            }))
        );
    }

    /// Fuzz-like: random, truncated and bit-flipped inputs never panic, and
    /// every answer is one of the three outcomes.
    #[test]
    fn random_and_mutated_input_never_panics() {
        // xorshift: deterministic, no dependency.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds = [
            client_hello("edition.cnn.com"),
            b"GET / HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n".to_vec(),
        ];
        for round in 0..20_000 {
            let mut input = if round % 3 == 0 {
                let len = (next() % 600) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(first) = v.first_mut() {
                    *first = [0x16, b'G', next() as u8][round % 3];
                }
                v
            } else {
                seeds[round % 2].clone()
            };
            for _ in 0..(next() % 4) {
                if input.is_empty() {
                    break;
                }
                let i = (next() as usize) % input.len();
                input[i] ^= 1 << (next() % 8);
            }
            let cut = (next() as usize) % (input.len() + 1);
            let _ = sniff(&input[..cut]);
            let _ = sniff(&input);
        }
    }
}
