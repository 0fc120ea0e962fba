//! Redirect (traffic capture): which connects go to the proxy
//! (`CAPTURES`, `CAPTURE_*`), and the original destinations kept for it
//! (`REDIRECTED`, `ORIG_DST`, `DNS_ORIG`).

/// Values of the `CAPTURE_V4/V6` tries, keyed by policy id and prefix.
///
/// istio-iptables lets `excludeIPRanges` beat `includeIPRanges` whatever
/// the prefix lengths, and a longest-prefix match alone cannot say that:
/// the agent drops every include prefix that lies inside an exclude prefix,
/// so that the longest match is the right answer. `"*"` is stored as `/0`.
pub mod capture {
    /// The address is in `includeIPRanges`.
    pub const INCLUDE: u8 = 1;
    /// The address is in `excludeIPRanges`: never captured.
    pub const EXCLUDE: u8 = 2;
}

/// Ports per `includePorts` / `excludePorts` list; the agent refuses more.
pub const MAX_CAPTURE_PORTS: usize = 16;

/// `CAPTURES` value: where a captured workload's connects go, and the
/// port half of its capture rules (the address half is in `CAPTURE_V4/V6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CaptureInfo {
    /// [`CaptureInfo::PROXY_V4`] and friends.
    pub flags: u32,
    /// The proxy's port, host byte order.
    pub proxy_port: u16,
    /// The DNS proxy port (host byte order); 0 when DNS is not captured.
    pub dns_port: u16,
    /// The proxy address for IPv4 sockets (and IPv4-mapped destinations).
    pub proxy_v4: [u8; 4],
    /// The proxy address for IPv6 destinations.
    pub proxy_v6: [u8; 16],
    pub include_len: u16,
    pub exclude_len: u16,
    /// `includePorts`, the first `include_len` used, host byte order.
    pub include_ports: [u16; MAX_CAPTURE_PORTS],
    /// `excludePorts`, the first `exclude_len` used.
    pub exclude_ports: [u16; MAX_CAPTURE_PORTS],
}

impl CaptureInfo {
    /// `proxy_v4` is set: IPv4 destinations can be redirected.
    pub const PROXY_V4: u32 = 1 << 0;
    /// `proxy_v6` is set: IPv6 destinations can be redirected.
    pub const PROXY_V6: u32 = 1 << 1;
}

/// The original destination of a redirected connection. It lives as long
/// as the proxy's side of the connection, not the app's: an app that
/// connects and closes before the proxy calls `accept()` still leaves the
/// proxy an answer, as conntrack does after an iptables REDIRECT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDst {
    /// The app socket's cookie: only that socket's close removes the entry.
    pub cookie: u64,
    /// The address, IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    /// `AF_INET` (2) or `AF_INET6` (10): the family the app asked for.
    pub family: u16,
    /// Set once the proxy has read it with `getsockopt(SO_ORIGINAL_DST)`.
    pub answered: u8,
    /// In `REDIRECTED` only (always 0 in `ORIG_DST`): `sock_ops` turned on
    /// the state callbacks of the app's socket itself, so it turns them off
    /// again once the handshake completes (another program's request is
    /// left alone).
    pub state_cb: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
}

/// `DNS_ORIG` value: where a UDP socket's last redirected DNS query was
/// meant to go, and the proxy it went to instead, so that only replies from
/// that proxy are given the server's address back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsOrig {
    /// The server, IPv4 as `::ffff:a.b.c.d`.
    pub server: [u8; 16],
    /// The DNS proxy, IPv4 as `::ffff:a.b.c.d`.
    pub proxy: [u8; 16],
    /// Host byte order.
    pub server_port: u16,
    /// Host byte order.
    pub proxy_port: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
}

/// `ORIG_DST` key: the redirected connection as the proxy's accepted socket
/// sees it, peer (the app's local address and port) and local (the proxy's
/// listening address and port). IPv4 as `::ffff:a.b.c.d`, so that both
/// ends spell it alike whatever their socket families.
///
/// The app's address and port alone are not unique: the same local port
/// may be used at once towards other destinations (the proxy's own
/// upstream connections from the same loopback address, say), and closing
/// one of those must not touch this entry.
///
/// A loopback address means nothing outside its network namespace: every
/// pod has its own 127.0.0.1, and two pods' apps can hold the same
/// ephemeral port at once. So loopback keys carry the namespace's cookie
/// (`bpf_get_netns_cookie`), which the app and its sidecar share; other
/// keys carry 0, since a routed address is unique on the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub netns: u64,
    /// The app's local address.
    pub addr: [u8; 16],
    /// The proxy's address, where the app's connect was sent.
    pub proxy: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// Host byte order.
    pub proxy_port: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
}

impl SockKey {
    /// Whether `addr` (mapped spelling) is a loopback address, whose key
    /// needs its namespace.
    #[inline(always)]
    pub const fn is_loopback(addr: &[u8; 16]) -> bool {
        let mut i = 0;
        let mut zeros = true;
        while i < 10 {
            if addr[i] != 0 {
                zeros = false;
            }
            i += 1;
        }
        if zeros && addr[10] == 0xff && addr[11] == 0xff {
            return addr[12] == 127;
        }
        let mut i = 0;
        while i < 15 {
            if addr[i] != 0 {
                return false;
            }
            i += 1;
        }
        addr[15] == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_have_no_padding() {
        use core::mem::size_of;
        assert_eq!(
            size_of::<CaptureInfo>(),
            4 + 2 + 2 + 4 + 16 + 2 + 2 + 4 * MAX_CAPTURE_PORTS
        );
        assert_eq!(size_of::<OrigDst>(), 8 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<SockKey>(), 8 + 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<DnsOrig>(), 16 + 16 + 2 + 2 + 4);
    }
}
