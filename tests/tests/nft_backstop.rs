//! Scenarios: the node-level nftables backstop. Pods send through a node
//! that forwards; only egress gateways may leave the cluster through it,
//! and other tools' tables on the node keep working.
//!
//! Everything runs in namespaces the fixtures create: the backstop is
//! applied inside the node namespace, never in the root one.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use egress_agent::{
    compile::{NodeRules, WorkloadPort},
    dataplane::nft::{Backstop, BackstopCounts, CounterValue, DenyCounter, NftError, TABLE},
};
use integration_tests::{
    nftns::{in_netns, nft, nft_script, ForwardingNet as Net},
    require_root, Client, Event, Listener, Outcome, Proto,
};

const PORT: u16 = 7101;
const ARRIVAL: Duration = Duration::from_secs(2);
/// How long a listener must stay silent to count as "never received".
const SILENCE: Duration = Duration::from_millis(700);
/// What `egress-probe sendto` sends.
const PROBE_PAYLOAD: u64 = b"egress-probe".len() as u64;

/// The backstop's inputs for the fixture: the gateway pod may leave, the
/// workload pod may not. Both pods' ports are routed (no bridge), with
/// their addresses.
fn node_rules() -> NodeRules {
    NodeRules {
        cluster_cidrs: vec![
            Net::CLUSTER_V4.parse().unwrap(),
            Net::CLUSTER_V6.parse().unwrap(),
        ],
        gateway_addresses: vec![Net::GATEWAY_V4.into(), Net::GATEWAY_V6.into()],
        workload_addresses: vec![Net::WORKLOAD_V4.into(), Net::WORKLOAD_V6.into()],
        ports: vec![
            WorkloadPort {
                interface: Net::GATEWAY_IF.into(),
                addresses: vec![Net::GATEWAY_V4.into(), Net::GATEWAY_V6.into()],
            },
            WorkloadPort {
                interface: Net::WORKLOAD_IF.into(),
                addresses: vec![Net::WORKLOAD_V4.into(), Net::WORKLOAD_V6.into()],
            },
        ],
    }
}

fn apply(net: &Net, rules: &NodeRules) {
    in_netns(&net.node, || Backstop::new().apply(rules))
        .unwrap()
        .expect("the backstop applies");
}

fn uninstall(net: &Net) -> Result<(), NftError> {
    in_netns(&net.node, || Backstop::new().uninstall()).unwrap()
}

fn counters(net: &Net) -> BackstopCounts {
    in_netns(&net.node, || Backstop::new().counters())
        .unwrap()
        .expect("the backstop's counters")
}

fn internet(ip: impl Into<IpAddr>) -> SocketAddr {
    SocketAddr::new(ip.into(), PORT)
}

/// The peer a listener saw for the next connection or datagram.
fn next_peer(listener: &Listener) -> Option<IpAddr> {
    listener.next_event(ARRIVAL).map(|e| e.peer().ip())
}

#[test]
fn a_workload_pod_cannot_reach_the_internet_through_the_node_and_every_drop_is_counted() {
    require_root();
    let net = Net::new().expect("forwarding topology");
    let workload = Client::outside(&net.workload);
    let udp_v4 = Listener::start(&net.internet, internet(Net::INTERNET_V4), Proto::Udp).unwrap();
    let udp_v6 = Listener::start(&net.internet, internet(Net::INTERNET_V6), Proto::Udp).unwrap();
    let tcp_v4 = Listener::start(&net.internet, internet(Net::INTERNET_V4), Proto::Tcp).unwrap();

    // Without the backstop the path works: what follows is its doing.
    assert_eq!(workload.sendto(udp_v4.addr()).unwrap(), Outcome::Ok);
    assert_eq!(next_peer(&udp_v4), Some(Net::WORKLOAD_V4.into()));

    apply(&net, &node_rules());
    assert_eq!(counters(&net), BackstopCounts::default());

    // The node drops the datagram silently: the sender sees success.
    assert_eq!(workload.sendto(udp_v4.addr()).unwrap(), Outcome::Ok);
    assert_eq!(workload.sendto(udp_v6.addr()).unwrap(), Outcome::Ok);
    assert_eq!(udp_v4.next_event(SILENCE), None, "IPv4 datagram dropped");
    assert_eq!(udp_v6.next_event(SILENCE), None, "IPv6 datagram dropped");
    // Exactly one packet each, of the size the node forwarded: IP + UDP
    // headers and the payload.
    let counts = counters(&net);
    assert_eq!(
        counts.get(DenyCounter::ForwardV4),
        CounterValue {
            packets: 1,
            bytes: 20 + 8 + PROBE_PAYLOAD
        }
    );
    assert_eq!(
        counts.get(DenyCounter::ForwardV6),
        CounterValue {
            packets: 1,
            bytes: 40 + 8 + PROBE_PAYLOAD
        }
    );

    // Every SYN is dropped, so TCP gives up at the client's timeout.
    assert_eq!(
        workload.connect_tcp(tcp_v4.addr()).unwrap(),
        Outcome::Timeout
    );
    assert_eq!(tcp_v4.next_event(SILENCE), None);
    let syns = counters(&net).get(DenyCounter::ForwardV4).packets - 1;
    assert!(syns >= 1, "the SYN and its retries are counted, got {syns}");
}

#[test]
fn the_gateway_pod_still_reaches_the_internet() {
    require_root();
    let net = Net::new().expect("forwarding topology");
    apply(&net, &node_rules());
    let gateway = Client::outside(&net.gateway);

    for ip in [IpAddr::from(Net::INTERNET_V4), Net::INTERNET_V6.into()] {
        let listener = Listener::start(&net.internet, internet(ip), Proto::Tcp).unwrap();
        assert_eq!(gateway.connect_tcp(listener.addr()).unwrap(), Outcome::Ok);
        let expected: IpAddr = match ip {
            IpAddr::V4(_) => Net::GATEWAY_V4.into(),
            IpAddr::V6(_) => Net::GATEWAY_V6.into(),
        };
        assert_eq!(next_peer(&listener), Some(expected));
    }
    assert_eq!(counters(&net), BackstopCounts::default());
}

#[test]
fn a_workload_pod_still_reaches_addresses_inside_the_cluster() {
    require_root();
    let net = Net::new().expect("forwarding topology");
    apply(&net, &node_rules());
    let workload = Client::outside(&net.workload);

    // The gateway pod is in the cluster CIDRs, and reached through the node.
    for ip in [IpAddr::from(Net::GATEWAY_V4), Net::GATEWAY_V6.into()] {
        let listener = Listener::start(&net.gateway, internet(ip), Proto::Tcp).unwrap();
        assert_eq!(workload.connect_tcp(listener.addr()).unwrap(), Outcome::Ok);
        assert!(next_peer(&listener).is_some());
    }
    assert_eq!(counters(&net), BackstopCounts::default());
}

/// Tables like the ones Docker and kube-proxy install: a masquerade for pod
/// traffic leaving the node, and a forward chain that counts and accepts
/// everything, ahead of ours.
const OTHER_TABLES: &str = r#"
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.244.0.0/16 oifname "inet0" counter masquerade
    }
}
table inet filter {
    chain forward {
        type filter hook forward priority filter - 10; policy accept;
        counter accept
    }
}
"#;

/// The other tables as nft prints them, without counter values (`-s`) but
/// with handles: any change, even a delete and re-create, shows.
fn snapshot(net: &Net) -> Vec<String> {
    [["ip", "nat"], ["inet", "filter"]]
        .iter()
        .map(|[family, name]| nft(&net.node, &["-s", "-j", "list", "table", family, name]).unwrap())
        .collect()
}

/// The packet count of the first counter in `nft -j` output.
fn first_packets(json: &str) -> u64 {
    let key = "\"packets\": ";
    let start = json.find(key).expect("a counter") + key.len();
    let digits: String = json[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a packet count")
}

fn other_forward_packets(net: &Net) -> u64 {
    first_packets(&nft(&net.node, &["-j", "list", "table", "inet", "filter"]).unwrap())
}

#[test]
fn other_tables_keep_their_rules_and_their_masquerade_keeps_working() {
    require_root();
    let net = Net::new().expect("forwarding topology");
    net.remove_internet_return_routes().unwrap();
    nft_script(&net.node, OTHER_TABLES).unwrap();
    let before = snapshot(&net);
    let whole_before = nft(&net.node, &["-s", "-j", "list", "ruleset"]).unwrap();
    let listener = Listener::start(&net.internet, internet(Net::INTERNET_V4), Proto::Tcp).unwrap();
    let gateway = Client::outside(&net.gateway);
    let workload = Client::outside(&net.workload);
    let masqueraded = |client: &Client| {
        assert_eq!(client.connect_tcp(listener.addr()).unwrap(), Outcome::Ok);
        assert_eq!(next_peer(&listener), Some(Net::NODE_INTERNET_V4.into()));
    };
    masqueraded(&gateway);

    apply(&net, &node_rules());
    assert_eq!(snapshot(&net), before, "applying touched another table");
    masqueraded(&gateway);
    // Their accept does not override our drop, although it runs first.
    let seen_by_them = other_forward_packets(&net);
    assert_eq!(
        workload.connect_tcp(listener.addr()).unwrap(),
        Outcome::Timeout
    );
    assert!(counters(&net).get(DenyCounter::ForwardV4).packets >= 1);
    assert!(
        other_forward_packets(&net) > seen_by_them,
        "their counter keeps counting"
    );

    // Re-applying, with the same and then with other inputs.
    apply(&net, &node_rules());
    let mut more = node_rules();
    more.workload_addresses
        .push(Ipv4Addr::new(10, 244, 2, 3).into());
    more.cluster_cidrs.push("10.96.0.0/12".parse().unwrap());
    apply(&net, &more);
    assert_eq!(snapshot(&net), before, "re-applying touched another table");
    masqueraded(&gateway);

    uninstall(&net).expect("uninstall");
    assert_eq!(snapshot(&net), before, "uninstalling touched another table");
    assert_eq!(
        nft(&net.node, &["-s", "-j", "list", "ruleset"]).unwrap(),
        whole_before,
        "after uninstall the node's ruleset is what it was before"
    );
    masqueraded(&gateway);
    masqueraded(&workload);
}

#[test]
fn reapplying_is_idempotent_and_new_inputs_take_effect() {
    require_root();
    let net = Net::new().expect("forwarding topology");
    let listing = || nft(&net.node, &["list", "table", "inet", TABLE]).unwrap();
    let listener = Listener::start(&net.internet, internet(Net::INTERNET_V4), Proto::Tcp).unwrap();
    let workload = Client::outside(&net.workload);

    apply(&net, &node_rules());
    let first = listing();
    apply(&net, &node_rules());
    assert_eq!(listing(), first, "the same inputs give the same table");
    assert_eq!(
        workload.connect_tcp(listener.addr()).unwrap(),
        Outcome::Timeout
    );

    // The workload pod becomes a gateway.
    let mut promoted = node_rules();
    promoted.workload_addresses.clear();
    promoted.gateway_addresses.push(Net::WORKLOAD_V4.into());
    apply(&net, &promoted);
    assert_eq!(workload.connect_tcp(listener.addr()).unwrap(), Outcome::Ok);
    assert_eq!(next_peer(&listener), Some(Net::WORKLOAD_V4.into()));
    // The table was replaced, not added to.
    assert_eq!(listing().matches("chain forward {").count(), 1);

    // And back again.
    apply(&net, &node_rules());
    assert_eq!(listing(), first);
    assert_eq!(
        workload.connect_tcp(listener.addr()).unwrap(),
        Outcome::Timeout
    );
}

#[test]
fn the_table_is_never_missing_while_it_is_replaced() {
    require_root();
    let net = Net::new().expect("forwarding topology");
    let listener = Listener::start(&net.internet, internet(Net::INTERNET_V4), Proto::Udp).unwrap();
    apply(&net, &node_rules());

    // The workload pod sends without pause while the table is replaced
    // over and over, with inputs that alternate but always deny it. Any
    // moment without the table, or with it half filled, lets one through.
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let mut changed = node_rules();
    changed.cluster_cidrs.push("10.96.0.0/12".parse().unwrap());
    changed
        .gateway_addresses
        .extend((1..=200u32).map(|i| IpAddr::from(Ipv4Addr::from(0x0a60_0000 + i))));
    let base = node_rules();
    let target = listener.addr();
    let replacements = 40;
    thread::scope(|scope| {
        scope.spawn(|| {
            in_netns(&net.workload, || {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                while !stop.load(Ordering::Relaxed) {
                    socket.send_to(b"leak?", target).unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_micros(200));
                }
            })
            .unwrap();
        });
        for i in 0..replacements {
            apply(&net, if i % 2 == 0 { &changed } else { &base });
        }
        stop.store(true, Ordering::Relaxed);
    });

    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 100, "the sender kept sending ({sent} datagrams)");
    assert_eq!(
        listener.next_event(SILENCE),
        None,
        "a datagram got through during a replacement"
    );
}

#[test]
fn uninstall_removes_only_our_table_and_a_second_uninstall_succeeds() {
    require_root();
    let net = Net::new().expect("forwarding topology");
    nft_script(&net.node, OTHER_TABLES).unwrap();
    let before = nft(&net.node, &["-s", "-j", "list", "ruleset"]).unwrap();

    // Uninstalling what was never installed is fine too.
    uninstall(&net).expect("uninstall with no table");
    apply(&net, &node_rules());
    let tables = nft(&net.node, &["list", "tables"]).unwrap();
    for family in ["inet", "bridge"] {
        assert!(
            tables.contains(&format!("table {family} {TABLE}")),
            "{tables}"
        );
    }

    uninstall(&net).expect("uninstall");
    assert_eq!(
        nft(&net.node, &["-s", "-j", "list", "ruleset"]).unwrap(),
        before
    );
    uninstall(&net).expect("a second uninstall");

    // Nothing is dropped any more.
    let listener = Listener::start(&net.internet, internet(Net::INTERNET_V4), Proto::Tcp).unwrap();
    let workload = Client::outside(&net.workload);
    assert_eq!(workload.connect_tcp(listener.addr()).unwrap(), Outcome::Ok);

    // With no table there are no counters, and the error says why.
    let err = in_netns(&net.node, || Backstop::new().counters())
        .unwrap()
        .expect_err("no counters without the table");
    assert!(
        matches!(&err, NftError::Failed { stderr, .. } if stderr.contains("No such file or directory")),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("reading the nftables backstop's counters"));
}

#[test]
fn a_missing_nft_is_reported_with_the_operation_and_program() {
    let err = Backstop::with_program("/nonexistent/nft")
        .apply(&node_rules())
        .expect_err("no such program");
    assert!(matches!(err, NftError::Run { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "applying the nftables backstop: running \"/nonexistent/nft\""
    );
}

#[test]
fn ten_thousand_prefixes_and_addresses_apply_in_one_transaction() {
    require_root();
    let net = Net::new().expect("forwarding topology");
    const N: u32 = 10_000;
    // Every other /24, so that no two merge.
    let cluster_cidrs = (0..N)
        .map(|i| {
            let net = Ipv4Addr::new(10, (i / 128) as u8, (i % 128 * 2) as u8, 0);
            format!("{net}/24").parse().unwrap()
        })
        .collect();
    let addresses = |base: u32| -> Vec<IpAddr> {
        (0..N)
            .map(|i| IpAddr::from(Ipv4Addr::from(base + i)))
            .collect()
    };
    let rules = NodeRules {
        cluster_cidrs,
        gateway_addresses: addresses(0x6440_0000), // 100.64.0.0
        workload_addresses: addresses(0x6460_0000), // 100.96.0.0
        ports: Vec::new(),
    };

    let timed = |what: &str, f: &dyn Fn()| {
        let start = Instant::now();
        f();
        let elapsed = start.elapsed();
        eprintln!("{what}: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(30), "{what} took {elapsed:?}");
    };
    timed("install", &|| apply(&net, &rules));
    timed("replace", &|| apply(&net, &rules));
    timed("uninstall", &|| uninstall(&net).unwrap());
    apply(&net, &rules);

    let set = |name: &str| nft(&net.node, &["-j", "list", "set", "inet", TABLE, name]).unwrap();
    assert_eq!(set("cluster_v4").matches("\"prefix\"").count(), N as usize);
    assert_eq!(set("gateways_v4").matches("\"100.64.").count(), N as usize);
    assert_eq!(set("workloads_v4").matches("\"100.96.").count(), N as usize);
}

/// Sources a pod might forge, per family: the gateway's address, an
/// unused address of the pod's own subnet, an address outside the cluster.
fn forged_sources() -> [(IpAddr, IpAddr); 3] {
    [
        (Net::GATEWAY_V4.into(), Net::GATEWAY_V6.into()),
        (
            Ipv4Addr::new(10, 244, 2, 99).into(),
            "fd00:244:2::99".parse().unwrap(),
        ),
        (
            Ipv4Addr::new(198, 18, 0, 7).into(),
            "2001:db8:ff::7".parse().unwrap(),
        ),
    ]
}

#[test]
fn a_routed_pod_port_vouches_for_its_sources_and_forged_ones_never_leave() {
    require_root();
    let net = Net::new().expect("forwarding topology");
    // The pod's sockets are outside any cgroup program: only the node
    // stands in the way.
    let workload = Client::outside(&net.workload);
    let listeners: Vec<Listener> = [IpAddr::from(Net::INTERNET_V4), Net::INTERNET_V6.into()]
        .into_iter()
        .map(|ip| Listener::start(&net.internet, internet(ip), Proto::Udp).unwrap())
        .collect();
    let send_all = || {
        for (v4, v6) in forged_sources() {
            for (forged, listener) in [(v4, &listeners[0]), (v6, &listeners[1])] {
                let from = SocketAddr::new(forged, 40_000);
                assert_eq!(
                    workload.raw_udp_from(from, listener.addr()).unwrap(),
                    Outcome::Ok
                );
            }
        }
    };

    // Without the backstop every forged datagram arrives, as sent.
    send_all();
    for (v4, v6) in forged_sources() {
        assert_eq!(next_peer(&listeners[0]), Some(v4));
        assert_eq!(next_peer(&listeners[1]), Some(v6));
    }

    apply(&net, &node_rules());
    send_all();
    for listener in &listeners {
        assert_eq!(listener.next_event(SILENCE), None, "a forged source left");
    }
    let counts = counters(&net);
    assert_eq!(counts.get(DenyCounter::RoutedForgedV4).packets, 3);
    assert_eq!(counts.get(DenyCounter::RoutedForgedV6).packets, 3);
    assert_eq!(counts.get(DenyCounter::ForwardV4).packets, 0);

    // The gateway, from its own port with its own address, still leaves;
    // the same address from the workload's port did not, above.
    let gateway = Client::outside(&net.gateway);
    for (own, listener) in [
        (IpAddr::from(Net::GATEWAY_V4), &listeners[0]),
        (Net::GATEWAY_V6.into(), &listeners[1]),
    ] {
        let from = SocketAddr::new(own, 40_001);
        assert_eq!(
            gateway.raw_udp_from(from, listener.addr()).unwrap(),
            Outcome::Ok
        );
        assert_eq!(next_peer(listener), Some(own));
    }
    // And a forged source from the gateway's port is dropped too: the
    // port vouches for its own workload's addresses only.
    let from = SocketAddr::new(Net::WORKLOAD_V4.into(), 40_002);
    assert_eq!(
        gateway.raw_udp_from(from, listeners[0].addr()).unwrap(),
        Outcome::Ok
    );
    assert_eq!(listeners[0].next_event(SILENCE), None);
    assert_eq!(counters(&net).get(DenyCounter::RoutedForgedV4).packets, 4);
}

#[test]
fn a_local_address_from_an_interface_that_is_not_its_port_never_leaves() {
    require_root();
    let net = Net::new().expect("forwarding topology");
    // The agent knows the gateway's port and not the workload's (a pod it
    // has not found a port for yet, or cannot see): what the workload
    // sends comes in on an interface that is no port at all.
    let mut rules = node_rules();
    rules.ports.retain(|p| p.interface == Net::GATEWAY_IF);
    let workload = Client::outside(&net.workload);
    let gateway = Client::outside(&net.gateway);
    let listeners: Vec<Listener> = [IpAddr::from(Net::INTERNET_V4), Net::INTERNET_V6.into()]
        .into_iter()
        .map(|ip| Listener::start(&net.internet, internet(ip), Proto::Udp).unwrap())
        .collect();
    let gateway_sources = [IpAddr::from(Net::GATEWAY_V4), Net::GATEWAY_V6.into()];

    // The node's uplink is another such interface: the internet sends to
    // addresses the node routes back out of it, with the gateway's
    // address as source.
    let hairpin = [
        (IpAddr::from(Ipv4Addr::new(198, 18, 5, 5)), "198.18.5.0/24"),
        ("2001:db8:ff:5::5".parse().unwrap(), "2001:db8:ff:5::/64"),
    ];
    for (target, net_of) in hairpin {
        let (family, internet_side, node_side) = if target.is_ipv4() {
            (
                "-4",
                Net::NODE_INTERNET_V4.to_string(),
                Net::INTERNET_V4.to_string(),
            )
        } else {
            (
                "-6",
                Net::NODE_INTERNET_V6.to_string(),
                Net::INTERNET_V6.to_string(),
            )
        };
        net.internet
            .ip(&[family, "route", "add", net_of, "via", &internet_side])
            .unwrap();
        net.node
            .ip(&[family, "route", "add", net_of, "via", &node_side])
            .unwrap();
    }
    let sniffers: Vec<Listener> = hairpin
        .iter()
        .map(|(target, _)| Listener::sniff(&net.internet, *target).unwrap())
        .collect();
    let from_the_uplink = Client::outside(&net.internet);

    let send_all = || {
        for (i, own) in gateway_sources.into_iter().enumerate() {
            let from = SocketAddr::new(own, 40_000);
            assert_eq!(
                workload.raw_udp_from(from, listeners[i].addr()).unwrap(),
                Outcome::Ok
            );
            let to = SocketAddr::new(hairpin[i].0, PORT);
            assert_eq!(from_the_uplink.raw_udp_from(from, to).unwrap(), Outcome::Ok);
        }
    };

    // Without the backstop the gateway's address leaves from both.
    send_all();
    for (i, own) in gateway_sources.into_iter().enumerate() {
        assert_eq!(next_peer(&listeners[i]), Some(own), "from the workload");
        assert_eq!(
            sniffers[i].next_event(ARRIVAL),
            Some(Event::Packet {
                source: own,
                protocol: 17
            }),
            "from the uplink"
        );
    }

    apply(&net, &rules);
    send_all();
    for listener in listeners.iter().chain(&sniffers) {
        assert_eq!(
            listener.next_event(SILENCE),
            None,
            "the gateway's address left"
        );
    }
    let counts = counters(&net);
    assert_eq!(counts.get(DenyCounter::RoutedForgedV4).packets, 2);
    assert_eq!(counts.get(DenyCounter::RoutedForgedV6).packets, 2);
    assert_eq!(counts.get(DenyCounter::ForwardV4).packets, 0);
    assert_eq!(counts.get(DenyCounter::ForwardV6).packets, 0);

    // The gateway, from its own port, still leaves.
    for (i, own) in gateway_sources.into_iter().enumerate() {
        let from = SocketAddr::new(own, 40_001);
        assert_eq!(
            gateway.raw_udp_from(from, listeners[i].addr()).unwrap(),
            Outcome::Ok
        );
        assert_eq!(next_peer(&listeners[i]), Some(own));
        assert_eq!(gateway.sendto(listeners[i].addr()).unwrap(), Outcome::Ok);
        assert_eq!(next_peer(&listeners[i]), Some(own));
    }
    // The workload's own address, its port unknown, is judged by address:
    // not a gateway's, so it does not leave either.
    assert_eq!(workload.sendto(listeners[0].addr()).unwrap(), Outcome::Ok);
    assert_eq!(listeners[0].next_event(SILENCE), None);
    let counts = counters(&net);
    assert_eq!(counts.get(DenyCounter::ForwardV4).packets, 1);
    assert_eq!(counts.get(DenyCounter::RoutedForgedV4).packets, 2);
}
