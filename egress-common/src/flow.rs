//! Flows the workload did not initiate, as the recording hooks learn them:
//! accepted TCP sockets (`INBOUND_TCP`, [`inbound`]), UDP remotes that sent
//! first (`INBOUND_UDP`, [`UdpFlowKey`]), and the `FLOW_EVENTS` counters
//! of every path through those hooks ([`FlowEvent`]).

/// `INBOUND_TCP` values: what is known of an accepted TCP socket.
///
/// `sock_ops` writes them; `cgroup_skb/egress` reads them. A socket that
/// the workload opened with `connect()` never has an entry: only
/// `BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB`, which the kernel runs for
/// sockets created by a listener, creates one. Keys are socket cookies,
/// which the kernel never reuses (a 64-bit counter), so a stale entry can
/// never stand for another socket.
pub mod inbound {
    /// The three-way handshake completed: every packet of the socket is a
    /// reply. Completing it proves the client received our SYN-ACK at the
    /// address it claims, so a forged source address cannot get here.
    pub const ESTABLISHED: u8 = 1;
    /// A TCP Fast Open child: the kernel creates it (and runs
    /// `PASSIVE_ESTABLISHED_CB`) on the SYN, before the client has shown it
    /// can receive at its source address. Its packets are not replies
    /// until `SYN_RECV -> ESTABLISHED` upgrades it (its SYN-ACK is allowed
    /// by the SYN-ACK rule).
    pub const HANDSHAKE: u8 = 2;
    /// Went to `TCP_CLOSE` from `ESTABLISHED` or `CLOSE_WAIT`: the kernel
    /// may still send one RST (close with unread data, `SO_LINGER` 0,
    /// `connect(AF_UNSPEC)`), which it does after the state change. That
    /// RST is allowed and the entry deleted; if none comes (the peer reset
    /// the connection), the entry stays until LRU eviction.
    pub const ABORTED: u8 = 3;
}

/// How long a UDP flow stays recorded without traffic: 60 s, between
/// conntrack's UDP timeouts for unreplied (30 s) and replied (120 s)
/// flows. Datagrams in either direction refresh it, as with conntrack.
pub const UDP_IDLE_NS: u64 = 60_000_000_000;

/// `INBOUND_UDP` key: a managed UDP socket and a remote that sent to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpFlowKey {
    /// The socket's cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// The remote address; an IPv4 address as `::ffff:a.b.c.d`, so that a
    /// dual-stack socket's IPv4 flows have one spelling.
    pub addr: [u8; 16],
    /// The remote port, host byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 6],
}

impl UdpFlowKey {
    pub const fn new(cookie: u64, addr: [u8; 16], port: u16) -> Self {
        Self {
            cookie,
            addr,
            port,
            _pad: [0; 6],
        }
    }

    /// `::ffff:a.b.c.d`.
    pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    }
}

/// What the recording programs did, and how replies were found; one
/// `FLOW_EVENTS` slot each. The recording hooks never refuse anything, so
/// these are not verdicts, but every path through them is counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowEvent {
    /// `sock_ops`: an accepted socket completed its handshake and was
    /// marked [`inbound::ESTABLISHED`].
    TcpInbound = 0,
    /// `sock_ops`: a Fast Open child was marked [`inbound::HANDSHAKE`].
    TcpFastOpen = 1,
    /// `sock_ops`: an accepted socket could not be marked (map update or
    /// `bpf_sock_ops_cb_flags_set` failed): its replies are decided by the
    /// egress policy (fail closed).
    TcpRecordFailed = 2,
    /// `sock_ops`: an inbound socket closed; its entry was deleted.
    TcpClosed = 3,
    /// `sock_ops`: an inbound socket was aborted; marked
    /// [`inbound::ABORTED`] for its last RST.
    TcpAborted = 4,
    /// `cgroup_skb/ingress`: a new UDP flow was recorded.
    UdpRecorded = 5,
    /// `cgroup_skb/ingress`: a recorded UDP flow was refreshed.
    UdpRefreshed = 6,
    /// `cgroup_skb/ingress`: a UDP flow could not be recorded (map update
    /// failed): replies to it are decided by the egress policy.
    UdpRecordFailed = 7,
    /// `cgroup_skb/ingress`: not recorded: the datagram came over the
    /// loopback device from a source that is neither a loopback address nor
    /// its own destination. Only this host can send on loopback, and a
    /// socket may pick a foreign source (IPv6 `IP_FREEBIND`, raw sockets):
    /// recording it would let a workload allow itself any destination.
    UdpForeignLoopback = 8,
    /// A reply was looked for and the UDP flow had been idle longer than
    /// [`UDP_IDLE_NS`]: the entry was deleted and the policy's verdict kept.
    UdpExpired = 9,
    /// `cgroup_skb/ingress`: a packet of a managed socket that is not UDP
    /// to a UDP socket (TCP has `sock_ops`), or not IP: nothing to record.
    IngressIgnored = 10,
    /// `cgroup_skb/ingress`: a packet of an unmanaged socket.
    IngressUnmanaged = 11,
    /// `cgroup_skb/ingress`: headers unreadable; nothing recorded (the
    /// packet is still delivered: this program never drops).
    IngressMalformed = 12,
    /// `sock_ops`: a redirected connect completed its handshake; its
    /// original destination was filed under its local address.
    RedirectEstablished = 13,
    /// `sock_ops`: a redirected connection closed; its entry was deleted.
    RedirectClosed = 14,
    /// `sock_ops`: a redirected connection could not be filed (map full):
    /// the proxy will not find its original destination.
    RedirectRecordFailed = 15,
    /// `cgroup/getsockopt`: `SO_ORIGINAL_DST` answered from `ORIG_DST`.
    OriginalDstAnswered = 16,
    /// `cgroup/getsockopt`: `SO_ORIGINAL_DST` asked for a connection with no
    /// entry (not redirected, or the client already closed): the kernel's
    /// own answer stands.
    OriginalDstUnknown = 17,
    /// `sendmsg4/6`: a DNS query was sent to the DNS proxy instead; its
    /// server was recorded in `DNS_ORIG`.
    DnsRedirected = 18,
    /// `recvmsg4/6`: a reply from the DNS proxy was given the source of
    /// the server the query was meant for.
    DnsReplyRestored = 19,
    /// A UDP packet or `sendto()` of a non-gateway workload to a
    /// destination outside the cluster matched a recorded inbound flow and
    /// was NOT allowed as a reply: an inbound UDP datagram proves nothing
    /// about its source (it is trivially forged), and such a workload could
    /// never send there anyway. TCP replies (handshake completed) still are.
    UdpReplyOutsideCluster = 20,
}

impl FlowEvent {
    /// Slots in `FLOW_EVENTS` (room to grow without a layout change).
    pub const SLOTS: u32 = 32;
    pub const ALL: [FlowEvent; 21] = [
        FlowEvent::TcpInbound,
        FlowEvent::TcpFastOpen,
        FlowEvent::TcpRecordFailed,
        FlowEvent::TcpClosed,
        FlowEvent::TcpAborted,
        FlowEvent::UdpRecorded,
        FlowEvent::UdpRefreshed,
        FlowEvent::UdpRecordFailed,
        FlowEvent::UdpForeignLoopback,
        FlowEvent::UdpExpired,
        FlowEvent::IngressIgnored,
        FlowEvent::IngressUnmanaged,
        FlowEvent::IngressMalformed,
        FlowEvent::RedirectEstablished,
        FlowEvent::RedirectClosed,
        FlowEvent::RedirectRecordFailed,
        FlowEvent::OriginalDstAnswered,
        FlowEvent::OriginalDstUnknown,
        FlowEvent::DnsRedirected,
        FlowEvent::DnsReplyRestored,
        FlowEvent::UdpReplyOutsideCluster,
    ];

    pub fn from_index(index: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| *e as u32 == index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_events_fit_and_round_trip() {
        for (i, event) in FlowEvent::ALL.into_iter().enumerate() {
            assert_eq!(event as usize, i);
            assert!((event as u32) < FlowEvent::SLOTS);
            assert_eq!(FlowEvent::from_index(i as u32), Some(event));
        }
        assert_eq!(FlowEvent::from_index(FlowEvent::SLOTS - 1), None);
    }

    #[test]
    fn types_have_no_padding() {
        assert_eq!(core::mem::size_of::<UdpFlowKey>(), 8 + 16 + 2 + 6);
    }
}
