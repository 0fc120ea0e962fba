//! Adversarial scenarios: the node backstop does not trust source
//! addresses. A non-gateway pod on the simulated node's bridge sends to
//! the internet with a forged source from sockets that no cgroup program
//! ever sees (the pod's network namespace, outside the agent's cgroup
//! root): raw IP with the header included, a whole frame on an AF_PACKET
//! socket, and the outer packet of a VXLAN device it made. Only a gateway's
//! address, from that gateway's own port, may leave.
//!
//! Tunnels other than VXLAN (GRE, IP in IP, Geneve; this kernel has no
//! module for their devices) are sent as such a device would send them,
//! written whole on a raw socket: an outer packet to the internet around
//! an inner one to a peer the pod may reach, with a forged outer source
//! and with the pod's own. A sniffer on the far side sees any outer packet
//! that arrives, whatever its protocol. The other way round, the pod has
//! the node's own VXLAN device (an overlay's, as flannel's) decapsulate a
//! packet to the internet whose inner source is the gateway's address, an
//! unused pod-subnet address, one outside the cluster or its own: that
//! inner packet comes from no port, and must not leave either. What a
//! pod on another node sends through that device to an address inside the
//! cluster (the gateway's, or another pod's) still arrives.
//!
//! Each technique is first shown to work with no agent on the node, with a
//! listener on the far side that records the source it saw; then with the
//! real agent running (nothing arrives, the bridge table counts it), then
//! with the agent SIGKILLed (the tables stay, nothing arrives).
//!
//! No assertion depends on timing: a listener's silence is a bounded wait
//! that a regression turns into an arrival, never the other way round.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use egress_agent::dataplane::nft::{BackstopCounts, DenyCounter, TABLE};
use integration_tests::{
    agent::APPLY_WAIT,
    nftns::nft,
    node::SimNode,
    packet::{self, Tunnel},
    require_root,
    scenario::{dual_stack_seed, id, Running},
    Client, Event, Listener, Netns, Outcome, Proto, Tunnelled,
};

const ARRIVAL: Duration = Duration::from_secs(2);
/// How long a listener must stay silent to count as "never received".
const SILENCE: Duration = Duration::from_millis(700);
const PORT: u16 = 7801;
const VXLAN_PORT: u16 = 4789;

const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0x20);

/// The forged sources, per family: the gateway's address, an unused
/// address of the pod's own subnet, an address outside the cluster.
const FORGED: [(&str, IpAddr, IpAddr); 3] = [
    (
        "the gateway's address",
        IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(GATEWAY_V6),
    ),
    (
        "an unused pod-subnet address",
        IpAddr::V4(Ipv4Addr::new(10, 244, 2, 99)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x99)),
    ),
    (
        "an address outside the cluster",
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 7)),
    ),
];

/// Addresses the attacker adds to its own eth0 (CAP_NET_ADMIN) to be the
/// outer source of its VXLAN device.
const ADDED_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 98);
const ADDED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x98);

/// The sleep pod's own addresses (the dual-stack seed's).
const SLEEP_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
const SLEEP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x10);

/// Where the tunnels' outer packets go: internet addresses that nothing
/// else uses, each watched by a sniffer.
const TUNNEL_END_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 70);
const TUNNEL_END_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x70);

/// The internet addresses the gateway reaches through its pod port (its
/// default route is its own uplink), one per family.
const VIA_PORT_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60);
const VIA_PORT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x60);

/// The seed, dual-stack, with the gateway dual-stack too (so that its IPv6
/// address can be forged).
fn node() -> anyhow::Result<SimNode> {
    let dir = std::env::temp_dir().join(integration_tests::names::unique("egress-ports"));
    fs::create_dir_all(&dir)?;
    let seed = dual_stack_seed(&dir)?;
    let workloads = seed.join("workloads.yaml");
    let text = fs::read_to_string(&workloads)?.replace(
        &format!(r#"addresses: ["{GATEWAY_V4}"]"#),
        &format!(r#"addresses: ["{GATEWAY_V4}", "{GATEWAY_V6}"]"#),
    );
    fs::write(&workloads, text)?;
    let sim = SimNode::new(&[seed]);
    fs::remove_dir_all(&dir)?;
    sim
}

struct Far {
    v4: Listener,
    v6: Listener,
    vxlan_v4: Listener,
    vxlan_v6: Listener,
}

impl Far {
    fn start(internet: &Netns) -> anyhow::Result<Self> {
        let at =
            |ip: IpAddr, port| Listener::start(internet, SocketAddr::new(ip, port), Proto::Udp);
        Ok(Self {
            v4: at(SimNode::INTERNET_V4.into(), PORT)?,
            v6: at(SimNode::INTERNET_V6.into(), PORT)?,
            vxlan_v4: at(Ipv4Addr::new(203, 0, 113, 20).into(), VXLAN_PORT)?,
            vxlan_v6: at(
                Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x20).into(),
                VXLAN_PORT,
            )?,
        })
    }

    fn for_family(&self, v6: bool) -> &Listener {
        if v6 {
            &self.v6
        } else {
            &self.v4
        }
    }
}

/// The source of the next datagram, if one comes within `within`.
fn arrived(listener: &Listener, within: Duration) -> Option<IpAddr> {
    listener.next_event(within).map(|e| e.peer().ip())
}

/// Sends with every forged source, per family, by raw IP and by AF_PACKET
/// to the bridge's MAC, and returns how many datagrams were sent per
/// family. `expect` is whether they arrive.
fn forge(pod: &Client<'_>, far: &Far, expect: bool, round: &str) -> anyhow::Result<[u64; 2]> {
    let mut sent = [0u64; 2];
    for (what, v4, v6) in FORGED {
        for forged in [v4, v6] {
            let listener = far.for_family(forged.is_ipv6());
            let from = SocketAddr::new(forged, 40_000);
            let mut techniques = vec![("raw IP", pod.raw_udp_from(from, listener.addr())?)];
            let frame = pod.packet_udp_to_mac(from, listener.addr(), SimNode::BRIDGE_MAC)?;
            techniques.push(("AF_PACKET", frame));
            for (technique, outcome) in techniques {
                ensure!(
                    outcome == Outcome::Ok,
                    "{technique} from {what}: {outcome:?}"
                );
                sent[usize::from(forged.is_ipv6())] += 1;
                let got = arrived(listener, if expect { ARRIVAL } else { SILENCE });
                let wanted = expect.then_some(forged);
                ensure!(
                    got == wanted,
                    "{round}: {technique} from {what} ({forged}): arrived {got:?}, expected {wanted:?}"
                );
            }
        }
    }
    Ok(sent)
}

/// Gives the pod a VXLAN device per family whose outer source is an
/// address it added to its eth0, sends into it (the neighbour lookup alone
/// makes an outer packet), and checks what the far side got; then removes
/// the devices, so that no retry outlives the check.
fn vxlan(pod: &Netns, far: &Far, expect: bool, round: &str) -> anyhow::Result<()> {
    let client = Client::outside(pod);
    for (v6, added, remote, inner) in [
        (
            false,
            IpAddr::V4(ADDED_V4),
            far.vxlan_v4.addr().ip(),
            "192.168.77.1/24",
        ),
        (
            true,
            ADDED_V6.into(),
            far.vxlan_v6.addr().ip(),
            "192.168.78.1/24",
        ),
    ] {
        let dev = if v6 { "vx6" } else { "vx4" };
        let (family, len) = if v6 { ("-6", 128) } else { ("-4", 32) };
        let added_net = format!("{added}/{len}");
        let mut add_addr = vec![family, "addr", "add", &added_net, "dev", "eth0"];
        if v6 {
            add_addr.push("nodad");
        }
        pod.ip(&add_addr)?;
        let (local, remote) = (added.to_string(), remote.to_string());
        pod.ip(&[
            "link", "add", dev, "type", "vxlan", "id", "42", "local", &local, "remote", &remote,
            "dstport", "4789", "dev", "eth0",
        ])?;
        pod.ip(&["addr", "add", inner, "dev", dev])?;
        pod.ip(&["link", "set", dev, "up"])?;
        let peer: IpAddr = inner
            .split('/')
            .next()
            .context("inner")?
            .parse::<Ipv4Addr>()
            .map(|a| Ipv4Addr::from(u32::from(a) + 1))?
            .into();
        ensure!(client.sendto(SocketAddr::new(peer, 9))? == Outcome::Ok);
        let listener = if v6 { &far.vxlan_v6 } else { &far.vxlan_v4 };
        let got = arrived(listener, if expect { ARRIVAL } else { SILENCE });
        pod.ip(&["link", "del", dev])?;
        pod.ip(&[family, "addr", "del", &added_net, "dev", "eth0"])?;
        listener.drain();
        let wanted = expect.then_some(added);
        ensure!(
            got == wanted,
            "{round}: VXLAN with outer source {added}: arrived {got:?}, expected {wanted:?}"
        );
    }
    Ok(())
}

/// The gateway, from its own port with its own addresses, reaches the
/// internet (through the node, by routes to two internet addresses over
/// its pod interface).
fn gateway_leaves(sim: &SimNode, round: &str) -> anyhow::Result<()> {
    let pod = sim
        .pod_of(&id("istio-system/istio-egressgateway"))
        .context("gateway pod")?;
    let client = Client::outside(&pod.netns);
    for (own, target) in [
        (IpAddr::V4(GATEWAY_V4), IpAddr::V4(VIA_PORT_V4)),
        (GATEWAY_V6.into(), VIA_PORT_V6.into()),
    ] {
        let listener = Listener::start(sim.internet(), SocketAddr::new(target, PORT), Proto::Udp)?;
        ensure!(client.sendto(listener.addr())? == Outcome::Ok);
        let got = arrived(&listener, ARRIVAL);
        ensure!(
            got == Some(own),
            "{round}: the gateway from its port: {got:?}"
        );
    }
    Ok(())
}

fn route_gateway_through_its_port(sim: &SimNode) -> anyhow::Result<()> {
    let pod = sim
        .pod_of(&id("istio-system/istio-egressgateway"))
        .context("gateway pod")?;
    let (v4, v6) = (format!("{VIA_PORT_V4}/32"), format!("{VIA_PORT_V6}/128"));
    let (gw4, gw6) = (
        SimNode::POD_GATEWAY_V4.to_string(),
        SimNode::POD_GATEWAY_V6.to_string(),
    );
    pod.netns
        .ip(&["route", "add", &v4, "via", &gw4, "dev", "eth0"])?;
    pod.netns
        .ip(&["-6", "route", "add", &v6, "via", &gw6, "dev", "eth0"])
}

/// Waits until the agent's bridge table knows the ports (the node's ends
/// of their veths) of `pods` (a condition wait, bounded by
/// [`APPLY_WAIT`]).
fn wait_for_ports(sim: &SimNode, pods: &[&str]) -> anyhow::Result<()> {
    let ports = pods
        .iter()
        .map(|p| {
            sim.pod_of(&id(p))
                .and_then(|pod| pod.node_if.clone())
                .with_context(|| format!("{p}'s port"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let deadline = Instant::now() + APPLY_WAIT;
    loop {
        let listed =
            nft(sim.node(), &["list", "set", "bridge", TABLE, "ports"]).unwrap_or_default();
        if ports.iter().all(|p| listed.contains(&format!("\"{p}\""))) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "ports {ports:?} not in: {listed}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn forged_drops(counts: &BackstopCounts) -> [u64; 2] {
    [
        counts.get(DenyCounter::BridgedForgedV4).packets,
        counts.get(DenyCounter::BridgedForgedV6).packets,
    ]
}

/// Every tunnelled packet the sleep pod sends per outer source: each
/// encapsulation around an inner datagram of each family, from the pod's
/// own address to the gateway (istio-system, which the seed's policy lets
/// it reach), in an outer packet from `from` to the internet.
fn tunnelled(from: IpAddr) -> Vec<Tunnelled> {
    let outer_to = if from.is_ipv6() {
        IpAddr::V6(TUNNEL_END_V6)
    } else {
        IpAddr::V4(TUNNEL_END_V4)
    };
    let inner = [
        (IpAddr::V4(SLEEP_V4), IpAddr::V4(GATEWAY_V4)),
        (SLEEP_V6.into(), GATEWAY_V6.into()),
    ];
    Tunnel::ALL
        .into_iter()
        .flat_map(|tunnel| {
            inner.map(|(own, peer)| Tunnelled {
                tunnel,
                outer_from: from,
                outer_to,
                inner_from: SocketAddr::new(own, 40_000),
                inner_to: SocketAddr::new(peer, PORT),
            })
        })
        .collect()
}

/// The outer sources of [`tunnelled`]: the forged ones and the pod's own,
/// per family.
fn outer_sources() -> Vec<(&'static str, IpAddr)> {
    FORGED
        .into_iter()
        .flat_map(|(what, v4, v6)| [(what, v4), (what, v6)])
        .chain([
            ("the pod's own address", SLEEP_V4.into()),
            ("the pod's own address", SLEEP_V6.into()),
        ])
        .collect()
}

/// Sends every packet of [`tunnelled`] for every outer source, each
/// checked for `expect_outcome` and, when `expect_arrival`, for its outer
/// packet arriving at the sniffer with its source and protocol. Returns
/// how many were sent per family of the outer packet, forged and own:
/// `[[forged v4, forged v6], [own v4, own v6]]`.
fn send_tunnelled(
    client: &Client<'_>,
    sniffers: &[Listener; 2],
    expect_outcome: &Outcome,
    expect_arrival: bool,
    round: &str,
) -> anyhow::Result<[[u64; 2]; 2]> {
    let mut sent = [[0u64; 2]; 2];
    for (what, from) in outer_sources() {
        let own = from == IpAddr::V4(SLEEP_V4) || from == IpAddr::V6(SLEEP_V6);
        for packet in tunnelled(from) {
            let outcome = client.tunnel(&packet)?;
            ensure!(
                &outcome == expect_outcome,
                "{round}: {packet} (outer source {what}): {outcome:?}, expected {expect_outcome:?}"
            );
            sent[usize::from(own)][usize::from(from.is_ipv6())] += 1;
            if expect_arrival {
                let wanted = Event::Packet {
                    source: from,
                    protocol: packet.protocol(),
                };
                let sniffer = &sniffers[usize::from(from.is_ipv6())];
                arrives(
                    sniffer,
                    wanted,
                    &format!("{round}: {packet} (outer source {what})"),
                )?;
            }
        }
    }
    if !expect_arrival {
        none_arrive(sniffers, &format!("{round}: outer packets"))?;
    }
    Ok(sent)
}

/// The node's own VXLAN device, as an overlay gives it one (flannel's
/// `flannel.1`): it takes in any VXLAN packet to any of the node's
/// addresses with its VNI and, inside, its MAC address.
const NODE_VTEP: &str = "flannel.1";

/// The cluster's pod subnet on the other node: its routes go through the
/// node's VXLAN device, as flannel installs one per node.
const PEER_SUBNET_V4: &str = "10.244.5.0/24";
const PEER_SUBNET_V6: &str = "fd00:10:244:5::/64";
/// A pod on the other node.
const PEER_POD_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 5, 7);
const PEER_POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 5, 0, 0, 0, 7);

fn add_node_vtep(sim: &SimNode) -> anyhow::Result<()> {
    let vni = packet::VNI.to_string();
    let port = packet::VXLAN_PORT.to_string();
    sim.node().ip(&[
        "link",
        "add",
        NODE_VTEP,
        "address",
        packet::INNER_DESTINATION_MAC,
        "type",
        "vxlan",
        "id",
        &vni,
        "dstport",
        &port,
        "nolearning",
    ])?;
    sim.node().ip(&["link", "set", NODE_VTEP, "up"])?;
    sim.node()
        .ip(&["route", "add", PEER_SUBNET_V4, "dev", NODE_VTEP])?;
    sim.node()
        .ip(&["-6", "route", "add", PEER_SUBNET_V6, "dev", NODE_VTEP])
}

/// The sleep pod, from its own address and port, has the node decapsulate
/// a VXLAN packet (to the node's address: never forwarded, so neither
/// check sees the outer packet) whose inner datagram goes to the internet
/// from each of [`FORGED`] (a local workload's address, the gateway's, is
/// one) and from its own address, per family of the inner packet.
/// Returns how many were sent per family.
fn through_the_node_vtep(
    sim: &SimNode,
    client: &Client<'_>,
    sniffers: &[Listener; 2],
    expect: bool,
    round: &str,
) -> anyhow::Result<[u64; 2]> {
    let node = IpAddr::V4(sim.node_cluster_address().context("node address")?);
    let mut sent = [0u64; 2];
    let inner_sources = FORGED
        .into_iter()
        .flat_map(|(_, v4, v6)| [v4, v6])
        .chain([SLEEP_V4.into(), SLEEP_V6.into()]);
    for inner_from in inner_sources {
        let inner_to = if inner_from.is_ipv6() {
            IpAddr::V6(TUNNEL_END_V6)
        } else {
            IpAddr::V4(TUNNEL_END_V4)
        };
        let packet = Tunnelled {
            tunnel: Tunnel::Vxlan,
            outer_from: SLEEP_V4.into(),
            outer_to: node,
            inner_from: SocketAddr::new(inner_from, 40_000),
            inner_to: SocketAddr::new(inner_to, PORT),
        };
        ensure!(client.tunnel(&packet)? == Outcome::Ok, "{round}: {packet}");
        let v6 = usize::from(inner_to.is_ipv6());
        sent[v6] += 1;
        if expect {
            let wanted = Event::Packet {
                source: inner_from,
                protocol: packet::IPPROTO_UDP,
            };
            let what = format!("{round}: {packet}, decapsulated by the node");
            arrives(&sniffers[v6], wanted, &what)?;
        }
    }
    if !expect {
        none_arrive(sniffers, &format!("{round}: decapsulated by the node"))?;
    }
    Ok(sent)
}

/// Listeners on the gateway's and the sleep pod's addresses, per family:
/// in-cluster destinations that pods on other nodes reach through the
/// node's VXLAN device.
fn in_cluster_listeners(sim: &SimNode) -> anyhow::Result<Vec<Listener>> {
    let gateway = sim
        .pod_of(&id("istio-system/istio-egressgateway"))
        .context("gateway pod")?;
    let sleep = sim.pod_of(&id("test-egress/sleep")).context("sleep pod")?;
    [
        (&gateway.netns, IpAddr::V4(GATEWAY_V4)),
        (&gateway.netns, GATEWAY_V6.into()),
        (&sleep.netns, SLEEP_V4.into()),
        (&sleep.netns, SLEEP_V6.into()),
    ]
    .into_iter()
    .map(|(netns, ip)| Listener::start(netns, SocketAddr::new(ip, PORT), Proto::Udp))
    .collect()
}

/// A pod on another node reaches the gateway and the sleep pod through
/// the node's VXLAN device, per family: the legitimate traffic of the
/// overlay, which stays inside the cluster and arrives, from the peer
/// pod's address. The internet namespace stands in for the other node:
/// it is on the node's uplink, as other nodes are, and the outer packet
/// goes to the node's uplink address.
fn from_a_peer_node(sim: &SimNode, listeners: &[Listener], round: &str) -> anyhow::Result<()> {
    let peer = Client::outside(sim.internet());
    for listener in listeners {
        let inner_from = if listener.addr().is_ipv6() {
            IpAddr::V6(PEER_POD_V6)
        } else {
            IpAddr::V4(PEER_POD_V4)
        };
        let packet = Tunnelled {
            tunnel: Tunnel::Vxlan,
            outer_from: SimNode::UPLINK_INTERNET_V4.into(),
            outer_to: SimNode::UPLINK_NODE_V4.into(),
            inner_from: SocketAddr::new(inner_from, 40_000),
            inner_to: listener.addr(),
        };
        ensure!(peer.tunnel(&packet)? == Outcome::Ok, "{round}: {packet}");
        let got = arrived(listener, ARRIVAL);
        ensure!(
            got == Some(inner_from),
            "{round}: {packet}, from a pod on another node: arrived {got:?}"
        );
    }
    Ok(())
}

fn tunnel_drops(counts: &BackstopCounts) -> [u64; 2] {
    [
        counts.get(DenyCounter::TunnelEgressV4).packets,
        counts.get(DenyCounter::TunnelEgressV6).packets,
    ]
}

fn routed_drops(counts: &BackstopCounts) -> [u64; 2] {
    [
        counts.get(DenyCounter::RoutedForgedV4).packets,
        counts.get(DenyCounter::RoutedForgedV6).packets,
    ]
}

fn forward_drops(counts: &BackstopCounts) -> [u64; 2] {
    [
        counts.get(DenyCounter::ForwardV4).packets,
        counts.get(DenyCounter::ForwardV6).packets,
    ]
}

#[test]
fn tunnelled_packets_from_a_pod_port_never_leave_the_node_whatever_their_outer_source(
) -> anyhow::Result<()> {
    require_root();
    let sim = node()?;
    add_node_vtep(&sim)?;
    let sleep = id("test-egress/sleep");
    let internet = sim.internet();
    let sniffers = [
        Listener::sniff(internet, TUNNEL_END_V4.into())?,
        Listener::sniff(internet, TUNNEL_END_V6.into())?,
    ];

    let in_cluster = in_cluster_listeners(&sim)?;

    // No agent: every encapsulation, from every outer source, arrives as
    // sent (an outer packet of its protocol, from its source); and what
    // the node's own VXLAN device decapsulates leaves as its inner packet,
    // whatever its source.
    let pod = sim.pod_of(&sleep).context("sleep pod")?;
    let outside = Client::outside(&pod.netns);
    send_tunnelled(&outside, &sniffers, &Outcome::Ok, true, "no agent")?;
    through_the_node_vtep(&sim, &outside, &sniffers, true, "no agent")?;
    from_a_peer_node(&sim, &in_cluster, "no agent")?;

    let mut node = Running::start(sim, &[])?;
    let sim = &node.sim;
    let pod = sim.pod_of(&sleep).context("sleep pod")?;
    // The gateway's port too: its addresses are only known to be bound to
    // a port (and so forged from any other) once it is.
    wait_for_ports(
        sim,
        &["istio-system/istio-egressgateway", "test-egress/sleep"],
    )?;

    // From the workload's cgroup, the egress program judges the outer
    // packet (to the internet: refused at the send).
    let inside = sim.client(&sleep).context("sleep client")?;
    send_tunnelled(&inside, &sniffers, &Outcome::Eperm, false, "in the cgroup")?;

    // From outside the cgroup root only the node stands in the way: a
    // forged outer source is dropped at the pod's port, the pod's own at
    // the forward hook (a non-gateway address leaving the cluster). What
    // the node decapsulates comes in on its VXLAN device, a tunnel: its
    // inner packet is dropped on leaving the cluster, whatever its source
    // (none is counted as routed_forged, which would judge a local
    // workload's address). A peer pod's packet to an address inside the
    // cluster still arrives.
    let outside = Client::outside(&pod.netns);
    for round in ["agent running", "agent SIGKILLed"] {
        let counts = node.sim.backstop_counters()?;
        let before = [
            forged_drops(&counts),
            forward_drops(&counts),
            tunnel_drops(&counts),
            routed_drops(&counts),
        ];
        let tunnelled = send_tunnelled(&outside, &sniffers, &Outcome::Ok, false, round)?;
        let decapsulated = through_the_node_vtep(&node.sim, &outside, &sniffers, false, round)?;
        from_a_peer_node(&node.sim, &in_cluster, round)?;
        let counts = node.sim.backstop_counters()?;
        let after = [
            forged_drops(&counts),
            forward_drops(&counts),
            tunnel_drops(&counts),
            routed_drops(&counts),
        ];
        let sent = [tunnelled[0], tunnelled[1], decapsulated, [0, 0]];
        for (i, counter) in [
            "bridged_forged",
            "forward_denied",
            "tunnel_egress",
            "routed_forged",
        ]
        .into_iter()
        .enumerate()
        {
            let counted = [after[i][0] - before[i][0], after[i][1] - before[i][1]];
            ensure!(
                counted == sent[i],
                "{round}: {counter} counted {counted:?} of {:?} sent",
                sent[i]
            );
        }
        if round == "agent running" {
            node.agent.kill()?;
        }
    }
    Ok(())
}

#[test]
fn forged_sources_from_a_pod_port_never_leave_the_node_with_the_agent_up_or_killed(
) -> anyhow::Result<()> {
    require_root();
    let sim = node()?;
    route_gateway_through_its_port(&sim)?;
    let sleep = id("test-egress/sleep");
    let pod = sim.pod_of(&sleep).context("sleep pod")?;
    let far = Far::start(sim.internet())?;

    // No agent: every technique gets its forged source out, and the
    // gateway leaves through its port.
    let outside = Client::outside(&pod.netns);
    forge(&outside, &far, true, "no agent")?;
    vxlan(&pod.netns, &far, true, "no agent")?;
    gateway_leaves(&sim, "no agent")?;

    let mut node = Running::start(sim, &[])?;
    let sim = &node.sim;
    let pod = sim.pod_of(&sleep).context("sleep pod")?;
    wait_for_ports(
        sim,
        &["istio-system/istio-egressgateway", "test-egress/sleep"],
    )?;
    let outside = Client::outside(&pod.netns);

    for round in ["agent running", "agent SIGKILLed"] {
        let before = forged_drops(&node.sim.backstop_counters()?);
        let sent = forge(&outside, &far, false, round)?;
        let after = forged_drops(&node.sim.backstop_counters()?);
        ensure!(
            [after[0] - before[0], after[1] - before[1]] == sent,
            "{round}: every forged datagram counted once: {before:?} → {after:?}, sent {sent:?}"
        );
        vxlan(&pod.netns, &far, false, round)?;
        let vxlan_drops = forged_drops(&node.sim.backstop_counters()?);
        ensure!(
            vxlan_drops[0] > after[0] && vxlan_drops[1] > after[1],
            "{round}: the VXLAN outer packets are counted: {after:?} → {vxlan_drops:?}"
        );
        gateway_leaves(&node.sim, round)?;
        if round == "agent running" {
            node.agent.kill()?;
        }
    }
    Ok(())
}

/// The next packet `sniffer` sees, within [`ARRIVAL`], is `wanted`.
fn arrives(sniffer: &Listener, wanted: Event, what: &str) -> anyhow::Result<()> {
    let got = sniffer.next_event(ARRIVAL);
    ensure!(
        got.as_ref() == Some(&wanted),
        "{what}: arrived {got:?}, expected {wanted:?}"
    );
    Ok(())
}

/// No sniffer sees anything. One bounded wait after the last send covers
/// every packet sent: any arrival, of any of them, ends it.
fn none_arrive(sniffers: &[Listener], what: &str) -> anyhow::Result<()> {
    for sniffer in sniffers {
        let got = sniffer.events(SILENCE);
        ensure!(got.is_empty(), "{what} arrived: {got:?}");
    }
    Ok(())
}
