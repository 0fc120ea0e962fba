//! The destination a redirected connection was meant for, as Envoy reads it:
//! `getsockopt(SOL_IP, SO_ORIGINAL_DST)` for IPv4 and
//! `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` for IPv6, on the accepted
//! socket.
//!
//! With iptables REDIRECT, conntrack answers. With this project's cgroup
//! redirect, a `cgroup/getsockopt` eBPF program answers the same call, so
//! the proxy does not care which one redirected.
//!
//! The contract such a program must meet is Envoy's and conntrack's: the
//! call arrives with `optlen = sizeof(struct sockaddr_storage)` (128); the
//! answer is a `struct sockaddr_in` (16 bytes, `sin_family = AF_INET`) or
//! `struct sockaddr_in6` (28 bytes, `AF_INET6`), port and address in network
//! byte order, with `optlen` set to that size. Refusing with `ENOENT`
//! means "not redirected".

use std::{io, net::SocketAddr};

use socket2::SockRef;
use tokio::net::TcpStream;

/// Why the original destination is not known.
#[derive(Debug, thiserror::Error)]
pub enum OriginalDstError {
    /// Nothing redirected this connection: conntrack has no NAT entry
    /// (`ENOENT`), or nothing answers the option at all (`ENOPROTOOPT`, no
    /// `nf_conntrack` and no eBPF program).
    #[error("connection was not redirected: SO_ORIGINAL_DST unavailable ({0})")]
    NotRedirected(io::Error),
    #[error("getsockopt(SO_ORIGINAL_DST) failed: {0}")]
    Io(io::Error),
    #[error("SO_ORIGINAL_DST returned a non-IP address")]
    NotIp,
}

/// The original destination of an accepted, redirected connection.
pub fn original_dst(stream: &TcpStream) -> Result<SocketAddr, OriginalDstError> {
    let local = stream.local_addr().map_err(OriginalDstError::Io)?;
    let socket = SockRef::from(stream);
    // A v4-mapped local address is an IPv4 connection on a dual-stack
    // socket: the IPv4 option is the one that answers, as in Envoy.
    let is_v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let answer = if is_v4 {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    let addr = answer.map_err(classify)?;
    let addr = addr.as_socket().ok_or(OriginalDstError::NotIp)?;
    Ok(unmap(addr))
}

fn classify(err: io::Error) -> OriginalDstError {
    match err.raw_os_error() {
        Some(libc::ENOENT | libc::ENOPROTOOPT) => OriginalDstError::NotRedirected(err),
        _ => OriginalDstError::Io(err),
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`, so logs, stats and loop checks see one
/// spelling per destination.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_kinds() {
        let e = classify(io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(e, OriginalDstError::NotRedirected(_)));
        let e = classify(io::Error::from_raw_os_error(libc::ENOPROTOOPT));
        assert!(matches!(e, OriginalDstError::NotRedirected(_)));
        let e = classify(io::Error::from_raw_os_error(libc::EBADF));
        assert!(matches!(e, OriginalDstError::Io(_)));
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:443".parse().expect("addr");
        assert_eq!(unmap(mapped), "10.0.0.1:443".parse().expect("addr"));
        let v6: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
        assert_eq!(unmap(v6), v6);
    }

    /// On a loopback connection nothing redirected, the call is refused
    /// cleanly rather than answering with the proxy's own address.
    #[tokio::test]
    async fn a_plain_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        match original_dst(&accepted) {
            Err(OriginalDstError::NotRedirected(_)) => {}
            // A host whose conntrack tracks loopback without NAT may report
            // the unchanged destination; that is the listener itself.
            Ok(dst) => assert_eq!(dst, addr),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}
