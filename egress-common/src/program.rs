//! Names of the programs in the eBPF object, as `aya::Ebpf::program_mut`
//! expects them. They differ from their ELF section names on purpose:
//! bpf-linker rejects a symbol that is named like its own section.
/// `cgroup_skb/egress`: every packet; the guarantee.
pub const EGRESS_SKB: &str = "egress_skb";
/// `cgroup/connect4`: `connect()` on IPv4 sockets, refused with EPERM.
pub const CONNECT4: &str = "egress_connect4";
/// `cgroup/connect6`: `connect()` on IPv6 sockets, IPv4-mapped included.
pub const CONNECT6: &str = "egress_connect6";
/// `cgroup/sendmsg4`: unconnected UDP `sendto()` on IPv4 sockets.
pub const SENDMSG4: &str = "egress_sendmsg4";
/// `cgroup/sendmsg6`: unconnected UDP `sendto()` on IPv6 sockets.
pub const SENDMSG6: &str = "egress_sendmsg6";
/// `sockops`: marks accepted TCP sockets inbound, unmarks them on close.
pub const SOCK_OPS: &str = "egress_sock_ops";
/// `cgroup_skb/ingress`: records the UDP flows that reach managed
/// sockets. It never drops anything.
pub const SKB_INGRESS: &str = "egress_skb_ingress";
/// `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` for the proxy.
pub const GETSOCKOPT: &str = "egress_getsockopt";
/// `cgroup/recvmsg4`: restores the source of redirected DNS replies.
pub const RECVMSG4: &str = "egress_recvmsg4";
/// `cgroup/recvmsg6`.
pub const RECVMSG6: &str = "egress_recvmsg6";
/// `lsm_cgroup/socket_create`: refuses packet sockets (`AF_PACKET`),
/// whose frames no cgroup hook ever sees. `cgroup/sock_create` is not
/// enough: the kernel runs it for `AF_INET`/`AF_INET6` sockets only.
pub const SOCK_CREATE: &str = "egress_socket_create";
/// `cgroup/setsockopt`: refuses `IP_TRANSPARENT`/`IPV6_TRANSPARENT`
/// except for gateways and proxies.
pub const SETSOCKOPT: &str = "egress_setsockopt";
