//! Which connections a Redirect captures, in istio-iptables' exact order.

use std::net::IpAddr;

use egress_policy::model::CaptureRules;

/// Whether a TCP connect to `ip:port` is sent to the proxy.
///
/// istio-iptables builds its `ISTIO_OUTPUT` chain in this order, and the
/// first match wins, so the order *is* the semantics:
/// 1. `excludePorts` → not captured;
/// 2. loopback destinations → not captured;
/// 3. `excludeIPRanges` → not captured (so an excluded range beats an
///    included port);
/// 4. `includePorts` → captured, whatever the address;
/// 5. `includeIPRanges` (`*` = all) → captured; anything else is not.
pub fn captures(rules: &CaptureRules, ip: IpAddr, port: u16) -> bool {
    if rules.exclude_ports.contains(&port) || ip.is_loopback() {
        return false;
    }
    if rules.exclude_ip_ranges.iter().any(|n| n.contains(&ip)) {
        return false;
    }
    rules.include_ports.contains(&port) || rules.include_ip_ranges.contains(ip)
}
