//! The rule sets of the baselines, as the tools users would pick write
//! them: istio-iptables' `nat` chains, the nftables equivalent, one
//! iptables rule per CIDR (bare, and behind the conntrack `ESTABLISHED`
//! shortcut), and an nftables interval set.
//!
//! iptables is driven through its legacy (x_tables) backend: that is the
//! linear rule walk that kube-router's 675k-rule tables ran into. Every
//! rule set lives in a pod's network namespace and goes with it.

use std::fmt::Write as _;

use crate::node::{EXCLUDE_RANGE, INCLUDE_RANGE, PROXY_PORT};

pub const IPTABLES: &str = "iptables-legacy";
pub const IPTABLES_RESTORE: &str = "iptables-legacy-restore";
/// The chain the per-CIDR rules live in (filter table, from OUTPUT).
pub const CIDR_CHAIN: &str = "BENCH_EGRESS";
/// The nftables table of both nftables baselines.
pub const NFT_TABLE: &str = "egress_bench";

/// What `istio-iptables -p 15001 -z 15006 -u 1337 -g 1337 -i INCLUDE -x
/// EXCLUDE` installs for outbound capture (istio 1.2x), for
/// `iptables-restore`.
pub fn istio_nat() -> String {
    format!(
        "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {PROXY_PORT}
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d {EXCLUDE_RANGE} -j RETURN
-A ISTIO_OUTPUT -d {INCLUDE_RANGE} -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -j RETURN
COMMIT
"
    )
}

/// Empties the `nat` table again.
pub fn flush_nat() -> String {
    "*nat\nCOMMIT\n".to_owned()
}

/// The same capture with nftables: one `nat` output chain.
pub fn nft_redirect() -> String {
    format!(
        "table ip {NFT_TABLE} {{
  chain output {{
    type nat hook output priority -100; policy accept;
    ip saddr 127.0.0.6 oifname \"lo\" return
    meta skuid 1337 return
    meta skgid 1337 return
    ip daddr 127.0.0.1 return
    ip daddr {EXCLUDE_RANGE} return
    ip daddr {INCLUDE_RANGE} meta l4proto tcp redirect to :{PROXY_PORT}
  }}
}}
"
    )
}

/// One `ACCEPT` rule per CIDR, in order, then a drop of the rest of what
/// leaves through `eth0`, for `iptables-restore` (which replaces the whole
/// filter table). Every packet walks the list: the rule set as
/// kube-router generated it.
pub fn iptables_cidrs(cidrs: &[String]) -> String {
    filter_table(cidrs, false)
}

/// [`iptables_cidrs`] behind the conntrack shortcut that hand-written and
/// most generated rule sets start with: the first rule of `OUTPUT`
/// accepts every packet of a connection conntrack already knows, so only a
/// connection's first packet (or a UDP flow's, until a reply) walks the
/// list. Loading it turns conntrack on in the pod's namespace, which then
/// tracks every packet.
pub fn iptables_cidrs_established(cidrs: &[String]) -> String {
    filter_table(cidrs, true)
}

fn filter_table(cidrs: &[String], established_first: bool) -> String {
    let mut s = String::with_capacity(64 * (cidrs.len() + 8));
    let _ = writeln!(s, "*filter\n:{CIDR_CHAIN} - [0:0]");
    if established_first {
        s.push_str(ESTABLISHED_RULE);
        s.push('\n');
    }
    let _ = writeln!(s, "-A OUTPUT -o eth0 -j {CIDR_CHAIN}");
    for c in cidrs {
        let _ = writeln!(s, "-A {CIDR_CHAIN} -d {c} -j ACCEPT");
    }
    if !cidrs.is_empty() {
        let _ = writeln!(s, "-A {CIDR_CHAIN} -j DROP");
    }
    s.push_str("COMMIT\n");
    s
}

/// The conntrack shortcut, as the first rule of the filter `OUTPUT` chain.
pub const ESTABLISHED_RULE: &str = "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT";

/// Empties the filter table again.
pub fn flush_filter() -> String {
    "*filter\nCOMMIT\n".to_owned()
}

/// The allow-list as an nftables interval set, loaded with `nft -f`.
pub fn nft_cidrs(cidrs: &[String]) -> String {
    let mut s = String::with_capacity(20 * (cidrs.len() + 16));
    let _ = writeln!(
        s,
        "table ip {NFT_TABLE} {{\n  set allowed {{\n    type ipv4_addr; flags interval;"
    );
    if !cidrs.is_empty() {
        s.push_str("    elements = {\n");
        for (i, c) in cidrs.iter().enumerate() {
            let sep = if i + 1 == cidrs.len() { "" } else { "," };
            let _ = writeln!(s, "      {c}{sep}");
        }
        s.push_str("    }\n");
    }
    s.push_str("  }\n  chain output {\n    type filter hook output priority 0; policy accept;\n");
    if !cidrs.is_empty() {
        s.push_str("    oifname \"eth0\" ip daddr @allowed accept\n    oifname \"eth0\" drop\n");
    }
    s.push_str("  }\n}\n");
    s
}

/// `nft -f` input that removes the table (created first if missing, so
/// the delete never fails).
pub fn nft_delete() -> String {
    format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_sets_list_every_cidr_once() {
        let cidrs = vec!["10.0.0.0/32".to_owned(), "10.0.0.2/32".to_owned()];
        let ipt = iptables_cidrs(&cidrs);
        assert_eq!(ipt.matches("-j ACCEPT").count(), 2);
        assert!(ipt.trim_end().ends_with("COMMIT"));
        assert!(!ipt.contains("conntrack"));
        let nft = nft_cidrs(&cidrs);
        assert!(nft.contains("10.0.0.0/32,\n") && nft.contains("10.0.0.2/32\n"));
        assert!(!nft_cidrs(&[]).contains("elements"));
        assert!(istio_nat().contains("-d 10.96.0.0/12 -j ISTIO_REDIRECT"));
    }

    #[test]
    fn the_established_shortcut_comes_first_then_the_same_list() {
        let cidrs = vec!["10.0.0.0/32".to_owned(), "10.0.0.2/32".to_owned()];
        let est = iptables_cidrs_established(&cidrs);
        let rules: Vec<&str> = est.lines().filter(|l| l.starts_with("-A ")).collect();
        assert_eq!(rules[0], ESTABLISHED_RULE);
        // Past the shortcut, exactly the linear baseline's rules.
        let linear = iptables_cidrs(&cidrs);
        let linear: Vec<&str> = linear.lines().filter(|l| l.starts_with("-A ")).collect();
        assert_eq!(rules[1..], linear[..]);
        // With no CIDRs: the shortcut alone (conntrack on, nothing dropped).
        assert!(iptables_cidrs_established(&[]).contains(ESTABLISHED_RULE));
        assert!(!iptables_cidrs_established(&[]).contains("DROP"));
    }
}
