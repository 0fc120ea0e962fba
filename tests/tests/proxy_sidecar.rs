//! Scenarios: the built-in sidecar proxy recovers the original destination
//! of a redirected connection, as Envoy does, and sends it on directly or
//! through the built-in gateway.
//!
//! The redirect here is istio-init's own: an nftables `redirect to :15001`
//! in the client namespace's nat OUTPUT hook, skipping the proxy's UID 1337,
//! so conntrack answers `SO_ORIGINAL_DST`. (With the agent, a
//! `cgroup/getsockopt` program answers the same call; the proxy cannot tell
//! the difference, which is the point.) All traffic stays in the two
//! namespaces of a [`TestNet`].

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{agent::agent_exe, require_root, Netns, TestNet};

const PROXY_UID: &str = "1337";
const SERVER_PORT: u16 = 8080;
const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `f` on a thread that has joined `ns`: sockets it creates live
/// there.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name());
    in_netns_path(path, f)
}

fn in_netns_path<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        let file = File::open(&path).expect("open the netns");
        // SAFETY: setns on this thread only; the fd is valid while `file`
        // lives.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

/// nftables in `ns`: every TCP connection to port 8080 of `family` (`ip`
/// or `ip6`), except the proxy's own (UID 1337), is redirected to the
/// loopback port 15001, as istio-iptables does.
fn redirect(ns: &Netns, family: &str) {
    // One statement per line: nft's parser wants a newline after
    // `redirect to :PORT`.
    let rules = format!(
        "table {family} proxy_test {{\n chain out {{\n  type nat hook output priority -100;\n  \
         meta skuid != {PROXY_UID} tcp dport {SERVER_PORT} redirect to :15001\n }}\n}}\n"
    );
    let status = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(rules.as_bytes())?;
            child.wait()
        })
        .expect("nft runs");
    assert!(status.success(), "nft -f failed for: {rules}");
}

/// `egress-agent proxy ARGS` in `ns` as UID 1337; its access log (JSON) is
/// read from stdout.
struct ProxyProcess {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl ProxyProcess {
    fn start(ns: &Netns, args: &[&str], ready: SocketAddr) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "setpriv"])
            .args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"])
            .arg(agent_exe())
            .args(["proxy", "--access-log-format", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the proxy");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).expect("a JSON access-log line");
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        while !in_netns(ns, move || {
            TcpStream::connect_timeout(&ready, Duration::from_millis(200)).is_ok()
        }) {
            assert!(Instant::now() < deadline, "proxy never listened on {ready}");
            thread::sleep(Duration::from_millis(20));
        }
        // The probe connection above is logged too (refused: not
        // redirected, or a gateway connection without SNI/Host).
        let _ = lines.recv_timeout(PATIENCE);
        Self { child, lines }
    }

    fn next_line(&self) -> serde_json::Value {
        self.lines
            .recv_timeout(PATIENCE)
            .expect("an access-log line")
    }

    fn stop(mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "proxy exit: {status}");
    }
}

/// One server connection: the request it got and where from.
fn serve_once(net: &TestNet, at: SocketAddr) -> mpsc::Receiver<(SocketAddr, String)> {
    let (tx, rx) = mpsc::channel();
    let (bound_tx, bound_rx) = mpsc::channel();
    let path = format!("/run/netns/{}", net.server.name());
    thread::spawn(move || {
        let file = File::open(&path).expect("open the netns");
        // SAFETY: as in `in_netns`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        let listener = TcpListener::bind(at).expect("server binds");
        let _ = bound_tx.send(());
        let (mut s, peer) = listener.accept().expect("accept");
        s.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nhi\n");
        let _ = tx.send((peer, String::from_utf8_lossy(&got).into_owned()));
    });
    bound_rx.recv_timeout(PATIENCE).expect("server bound");
    rx
}

/// The client connects to the server's real address; the redirect takes it
/// to the sidecar.
fn client_get(net: &TestNet, dst: SocketAddr, host: &'static str) -> String {
    in_netns(&net.client, move || {
        let mut s = TcpStream::connect_timeout(&dst, PATIENCE).expect("connect");
        s.set_read_timeout(Some(PATIENCE)).expect("timeout");
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .expect("send");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

/// The direct path for one address family: the client dials `server`,
/// the redirect takes it to the sidecar on `listen`, and the sidecar must
/// find `server` again with SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST
/// (IPv6).
fn sidecar_direct(family: &str, listen: &str, server: IpAddr, client: IpAddr) {
    require_root();
    let net = TestNet::new().expect("test net");
    redirect(&net.client, family);
    let proxy = ProxyProcess::start(
        &net.client,
        &["--mode", "sidecar", "--listen", listen],
        listen.parse().expect("addr"),
    );
    let original = SocketAddr::new(server, SERVER_PORT);
    let seen = serve_once(&net, original);

    let reply = client_get(&net, original, "server.test");
    assert!(reply.ends_with("hi\n"), "{reply}");
    let (peer, request) = seen.recv_timeout(PATIENCE).expect("server saw it");
    assert!(request.contains("Host: server.test"));
    assert_eq!(peer.ip(), client);

    let line = proxy.next_line();
    assert_eq!(line["mode"], "sidecar");
    assert_eq!(line["verdict"], "allowed");
    assert_eq!(line["original_dst"], original.to_string());
    assert_eq!(line["upstream"], original.to_string());
    assert_eq!(line["cluster"], format!("outbound|{SERVER_PORT}||{server}"));
    proxy.stop();
}

#[test]
fn the_sidecar_sends_a_redirected_connection_to_its_original_destination() {
    sidecar_direct(
        "ip",
        "127.0.0.1:15001",
        TestNet::SERVER_V4.into(),
        TestNet::CLIENT_V4.into(),
    );
}

#[test]
fn the_sidecar_recovers_an_ipv6_original_destination() {
    sidecar_direct(
        "ip6",
        "[::1]:15001",
        TestNet::SERVER_V6.into(),
        TestNet::CLIENT_V6.into(),
    );
}

#[test]
fn through_the_gateway_the_original_port_travels_in_a_proxy_header() {
    require_root();
    let net = TestNet::new().expect("test net");
    redirect(&net.client, "ip");
    let resolve = format!("server.test={}", TestNet::SERVER_V4);
    let allow = format!("server.test:{SERVER_PORT}");
    let gateway = ProxyProcess::start(
        &net.client,
        &[
            "--mode",
            "gateway",
            "--listen",
            "127.0.0.1:15443",
            "--allow",
            &allow,
            "--resolve",
            &resolve,
            // The sidecar below, the only one allowed a PROXY header.
            "--proxy-protocol-from",
            "127.0.0.1",
        ],
        "127.0.0.1:15443".parse().expect("addr"),
    );
    let sidecar = ProxyProcess::start(
        &net.client,
        &[
            "--mode",
            "sidecar",
            "--listen",
            "127.0.0.1:15001",
            "--via-gateway",
            "127.0.0.1:15443",
        ],
        "127.0.0.1:15001".parse().expect("addr"),
    );
    let original = SocketAddr::from((TestNet::SERVER_V4, SERVER_PORT));
    let server = serve_once(&net, original);

    // Allowed: the gateway routes by Host, on the port the client dialled
    // (8080), which only the PROXY header tells it.
    let reply = client_get(&net, original, "server.test");
    assert!(reply.ends_with("hi\n"), "{reply}");
    let (_, request) = server.recv_timeout(PATIENCE).expect("server saw it");
    assert!(
        request.starts_with("GET / HTTP/1.1"),
        "no PROXY header upstream: {request}"
    );
    let gw = gateway.next_line();
    assert_eq!(gw["verdict"], "allowed");
    assert_eq!(gw["authority"], "server.test");
    assert_eq!(
        gw["original_dst"],
        format!("{}:{SERVER_PORT}", TestNet::SERVER_V4)
    );
    assert_eq!(
        gw["downstream"]
            .as_str()
            .map(|d| d.starts_with(&TestNet::CLIENT_V4.to_string())),
        Some(true)
    );
    assert_eq!(sidecar.next_line()["upstream"], "127.0.0.1:15443");

    // Refused at the gateway: a Host not in the allow-list.
    let reply = client_get(&net, original, "evil.test");
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    let gw = gateway.next_line();
    assert_eq!(gw["verdict"], "denied");
    assert_eq!(gw["authority"], "evil.test");
    sidecar.stop();
    gateway.stop();
}
