//! Per-port exceptions to a policy's answer for one address.
//!
//! A trie entry answers for every port of its prefix, but a node address
//! serves NodePorts, each of which kube-proxy sends to a Service's
//! backends, beside its own ports. So a policy's `ALLOW_*` host entry for
//! such an address carries [`ALLOW_FLAG`] and, instead of a port set, the
//! id of a *host table* in `HOST_PORTS`, a hash map keyed by [`key`]:
//!
//! - `(host, VERDICT, protocol, port)`: the rule that allows that port,
//!   or [`DENY`] (a NodePort judged by its Service's backends);
//! - `(host, OUTSIDE, protocol, port)`: the port leads outside the
//!   cluster (a NodePort whose backends are outside), read only when the
//!   address's `CLUSTER_*` entry is [`CLUSTER_PORTS`];
//! - `(host, INSIDE, protocol, port)`: the port stays inside (a Service
//!   port of an external or load balancer IP whose backends are all
//!   inside), read only when the address's `CLUSTER_*` entry is
//!   [`CLUSTER_ONLY_PORTS`];
//! - `(host, BASE, 0, 0)`: the port set for every other port.
//!
//! The programs look there only for flagged entries, so the cost per
//! packet stays flat: a trie lookup, plus two hash lookups for node
//! addresses alone, however many NodePorts there are. The key is a `u64`
//! because the socket hooks sit close to the 512-byte stack limit. Host
//! table ids come from the port set ids' space, below [`ALLOW_FLAG`].
/// `ALLOW_V4/V6` value bit: the rest of the value is a host table id,
/// not a port set id.
pub const ALLOW_FLAG: u32 = 1 << 31;
/// `CLUSTER_V4/V6` value: inside the cluster.
pub const CLUSTER_INSIDE: u8 = 1;
/// `CLUSTER_V4/V6` value: inside the cluster, but for the ports that
/// the policy's host table lists as [`OUTSIDE`].
pub const CLUSTER_PORTS: u8 = 2;
/// `CLUSTER_V4/V6` value: outside the cluster, but for the ports that
/// the policy's host table lists as [`INSIDE`].
pub const CLUSTER_ONLY_PORTS: u8 = 3;
/// Key kind: the verdict of one port.
pub const VERDICT: u8 = 0;
/// Key kind: one port that leads outside the cluster.
pub const OUTSIDE: u8 = 1;
/// Key kind: the port set of the other ports (protocol and port 0).
pub const BASE: u8 = 2;
/// Key kind: one port that stays inside the cluster.
pub const INSIDE: u8 = 3;
/// `VERDICT` value: denied, whatever the address's port set says.
pub const DENY: u32 = u32::MAX - 1;

/// The `HOST_PORTS` key.
#[inline(always)]
pub const fn key(host: u32, kind: u8, proto: u8, port: u16) -> u64 {
    ((host as u64) << 32) | ((kind as u64) << 24) | ((proto as u64) << 16) | port as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_keys_keep_their_fields_apart() {
        assert_eq!(key(1, VERDICT, 6, 30080), 0x0000_0001_0006_7580);
        assert_ne!(key(1, OUTSIDE, 6, 30080), key(1, VERDICT, 6, 30080));
        assert_ne!(key(1, BASE, 0, 0), key(1, VERDICT, 0, 0));
        assert_eq!(
            key(u32::MAX >> 1, BASE, 255, u16::MAX) >> 32,
            u64::from(u32::MAX >> 1)
        );
    }
}
