//! Scenarios for the built-in proxy, over real loopback sockets: a client,
//! the proxy (in process, as the binary runs it), and upstream servers
//! bound on other loopback addresses (127.0.0.2, 127.0.0.3) that `--resolve`
//! style entries point names at. No traffic leaves the host, and no
//! assertion depends on timing: timeouts only bound how long a failing test
//! waits.

use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use egress_proxy::{
    access_log::{AccessLog, Format},
    allow::AllowList,
    gateway::Gateway,
    proxy_protocol,
    sidecar::Sidecar,
    Config, Limits, Mode, Proxy,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

/// Bounds every wait, so a broken proxy fails the test instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

/// Access-log lines, collected in memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// Waits until `n` lines were logged: a connection's line is written
    /// when the proxy is done with it, just after the client sees the end.
    async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = self.text();
            if text.lines().count() >= n {
                return text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("a JSON access-log line"))
                    .collect();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} access-log lines, got:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A running proxy.
struct Running {
    addr: SocketAddr,
    admin: SocketAddr,
    log: Lines,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    async fn start(mode: Mode, limits: Limits, resolve: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", mode, limits, resolve).await
    }

    async fn start_on(listen: &str, mode: Mode, limits: Limits, resolve: &[&str]) -> Self {
        let log = Lines::default();
        let proxy = Proxy::bind(Config {
            mode,
            listen: vec![listen.parse().expect("listen address")],
            admin: Some("127.0.0.1:0".parse().expect("admin address")),
            limits,
            resolve: resolve
                .iter()
                .map(|r| r.parse().expect("resolve"))
                .collect(),
            access_log: AccessLog::writer(Format::Json, Box::new(log.clone()))
                .expect("access log writer"),
        })
        .await
        .expect("proxy binds");
        let addr = proxy.local_addrs()[0];
        let admin = proxy.admin_addr().expect("admin");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.serve(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            log,
            stop: Some(stop),
            task,
        }
    }

    async fn stats(&self) -> String {
        http_get(self.admin, "/stats").await
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("proxy stops")
            .expect("proxy task");
    }
}

/// A gateway that believes PROXY headers from loopback (the tests'
/// "sidecars").
fn gateway(allow: &[&str]) -> Mode {
    trusting(allow, &["127.0.0.0/8"])
}

/// A gateway that believes PROXY headers from `trusted` only.
fn trusting(allow: &[&str], trusted: &[&str]) -> Mode {
    Mode::Gateway(Gateway {
        allow: allow_list(allow).into(),
        proxy_protocol_from: trusted.iter().map(|t| t.parse().expect("CIDR")).collect(),
    })
}

fn allow_list(allow: &[&str]) -> AllowList {
    AllowList::Only(allow.iter().map(|a| a.parse().expect("rule")).collect())
}

fn quick() -> Limits {
    Limits {
        sniff_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_millis(200),
        ..Limits::default()
    }
}

/// An upstream on `ip` and `port` that answers `expect` connections with
/// its name and the bytes it received, after reading the request head
/// (HTTP) or the whole stream up to the client's half-close (otherwise).
async fn upstream(
    ip: &str,
    port: u16,
    name: &'static str,
    expect: usize,
) -> (SocketAddr, JoinHandle<Vec<Vec<u8>>>) {
    let listener = TcpListener::bind((ip, port)).await.expect("upstream binds");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..expect {
            let Ok(Ok((mut s, _))) = tokio::time::timeout(PATIENCE, listener.accept()).await else {
                break;
            };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                got.extend_from_slice(&buf[..n]);
                if n == 0 || (got.starts_with(b"GET") && got.ends_with(b"\r\n\r\n")) {
                    break;
                }
            }
            let body = format!("{name} got {} bytes\n", got.len());
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
            seen.push(got);
        }
        seen
    });
    (addr, task)
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect to proxy");
    s.write_all(request).await.expect("send");
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("proxy answers or closes in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
    )
    .await
}

fn get(host: &str) -> Vec<u8> {
    format!("GET /politics HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n\r\n").into_bytes()
}

/// What a sidecar sends the gateway: a PROXY header saying `client` meant
/// `original`, then the client's GET for edition.cnn.com.
fn proxied_get(client: SocketAddr, original: SocketAddr) -> Vec<u8> {
    let mut request = proxy_protocol::encode(client, original).expect("header");
    request.extend_from_slice(&get("edition.cnn.com"));
    request
}

/// A minimal TLS 1.2 ClientHello naming `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let list_len = name.len() + 3;
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list_len as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[9; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn the_gateway_routes_http_by_host_and_counts_like_envoy() {
    let gw = Running::start(
        gateway(&["edition.cnn.com", "httpbin.org"]),
        quick(),
        &["edition.cnn.com=127.0.0.2", "httpbin.org=127.0.0.3"],
    )
    .await;
    let port = gw.addr.port();
    let (_, cnn) = upstream("127.0.0.2", port, "cnn", 3).await;
    let (_, httpbin) = upstream("127.0.0.3", port, "httpbin", 1).await;

    for _ in 0..3 {
        let reply = exchange(gw.addr, &get("edition.cnn.com")).await;
        assert!(
            reply.contains("200 OK") && reply.contains("cnn got"),
            "{reply}"
        );
    }
    let reply = exchange(gw.addr, &get("HTTPBIN.org")).await;
    assert!(reply.contains("httpbin got"), "{reply}");

    let lines = gw.log.wait_for(4).await;
    let stats = gw.stats().await;
    assert!(
        stats.contains(&format!(
            "cluster.outbound|{port}||edition.cnn.com.upstream_cx_total: 3\n"
        )),
        "{stats}"
    );
    assert!(stats.contains(&format!(
        "cluster.outbound|{port}||httpbin.org.upstream_cx_total: 1\n"
    )));
    let metrics = http_get(gw.admin, "/metrics").await;
    assert!(metrics.contains(&format!(
        "envoy_cluster_upstream_cx_total{{envoy_cluster_name=\"outbound|{port}||edition.cnn.com\"}} 3"
    )));

    // Every line carries the fields of the seed's Envoy lines.
    let cnn_line = &lines[0];
    assert_eq!(cnn_line["verdict"], "allowed");
    assert_eq!(cnn_line["protocol"], "http");
    assert_eq!(cnn_line["authority"], "edition.cnn.com");
    assert_eq!(cnn_line["upstream"], format!("127.0.0.2:{port}"));
    assert_eq!(
        cnn_line["cluster"],
        format!("outbound|{port}||edition.cnn.com")
    );
    assert_eq!(cnn_line["bytes_sent"], get("edition.cnn.com").len());
    assert!(cnn_line["bytes_received"].as_u64().unwrap_or(0) > 0);
    for field in [
        "start_time",
        "duration_ms",
        "downstream",
        "original_dst",
        "reason",
    ] {
        assert!(cnn_line.get(field).is_some(), "{field} missing: {cnn_line}");
    }
    gw.shutdown().await;
    assert_eq!(cnn.await.expect("cnn").len(), 3);
    assert_eq!(httpbin.await.expect("httpbin").len(), 1);
}

#[tokio::test]
async fn the_gateway_passes_tls_through_by_sni() {
    let gw = Running::start(
        gateway(&["edition.cnn.com"]),
        quick(),
        &["edition.cnn.com=127.0.0.2"],
    )
    .await;
    let (_, cnn) = upstream("127.0.0.2", gw.addr.port(), "cnn", 1).await;

    let hello = client_hello("edition.cnn.com");
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(&hello).await.expect("hello");
    s.write_all(b"more client bytes").await.expect("more");
    s.shutdown().await.expect("half-close");
    let mut reply = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut reply))
        .await
        .expect("reply in time")
        .expect("reply");
    assert!(reply.contains("cnn got"), "{reply}");

    let lines = gw.log.wait_for(1).await;
    assert_eq!(lines[0]["protocol"], "tls");
    assert_eq!(lines[0]["authority"], "edition.cnn.com");
    assert_eq!(lines[0]["verdict"], "allowed");
    gw.shutdown().await;
    // Passthrough: the upstream saw the client's bytes unchanged.
    let seen = cnn.await.expect("cnn");
    let mut expected = hello.clone();
    expected.extend_from_slice(b"more client bytes");
    assert_eq!(seen, vec![expected]);
}

#[tokio::test]
async fn a_host_not_in_allowed_hosts_is_refused_and_logged() {
    let gw = Running::start(gateway(&["edition.cnn.com:80"]), quick(), &[]).await;

    let reply = exchange(gw.addr, &get("evil.example")).await;
    assert!(reply.starts_with("HTTP/1.1 403 Forbidden"), "{reply}");
    assert!(reply.contains("evil.example"), "{reply}");

    // TLS: closed without a byte, logged with the SNI.
    let reply = exchange(gw.addr, &client_hello("evil.example")).await;
    assert_eq!(reply, "");

    // Allowed name, wrong port (the listener's ephemeral port, not 80).
    let reply = exchange(gw.addr, &get("edition.cnn.com")).await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");

    let lines = gw.log.wait_for(3).await;
    let mut denied: Vec<_> = lines
        .iter()
        .map(|l| {
            (
                l["protocol"].as_str(),
                l["authority"].as_str(),
                l["verdict"].as_str(),
            )
        })
        .collect();
    denied.sort();
    assert_eq!(
        denied,
        vec![
            (Some("http"), Some("edition.cnn.com"), Some("denied")),
            (Some("http"), Some("evil.example"), Some("denied")),
            (Some("tls"), Some("evil.example"), Some("denied")),
        ]
    );
    assert!(lines.iter().all(|l| l["reason"]
        .as_str()
        .is_some_and(|r| r.contains("not in allowedHosts"))));
    let stats = gw.stats().await;
    assert!(
        stats.contains("cluster.BlackHoleCluster.upstream_cx_total: 3\n"),
        "{stats}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_input_is_refused_cleanly() {
    let gw = Running::start(gateway(&["edition.cnn.com"]), quick(), &[]).await;
    let mut truncated_hello = client_hello("edition.cnn.com");
    truncated_hello[3] = 0xff; // a record length past the ClientHello
    truncated_hello.truncate(20);
    let mut bad_hello = client_hello("edition.cnn.com");
    bad_hello[5] = 2; // ServerHello, not ClientHello
    let cases: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02garbage".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n".to_vec(),
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        bad_hello,
        truncated_hello,
    ];
    for case in &cases {
        // Half-close so a truncated input ends instead of waiting.
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(case).await.expect("send");
        s.shutdown().await.expect("half-close");
        let mut out = Vec::new();
        tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
            .await
            .expect("closed in time")
            .ok();
        assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    }
    let lines = gw.log.wait_for(cases.len()).await;
    assert!(lines.iter().all(|l| l["verdict"] == "denied"), "{lines:?}");
    // Still serving.
    assert!(gw.stats().await.contains("downstream_cx_total"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_answer() {
    let gw = Running::start(
        gateway(&["edition.cnn.com"]),
        quick(),
        &["edition.cnn.com=127.0.0.2"],
    )
    .await;
    // This upstream answers only after the client's EOF reaches it, so the
    // reply proves the half-close crossed the proxy.
    let listener = TcpListener::bind(("127.0.0.2", gw.addr.port()))
        .await
        .expect("bind");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read to EOF");
        s.write_all(format!("saw EOF after {} bytes", got.len()).as_bytes())
            .await
            .expect("reply");
    });
    let request = b"GET / HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\nbody";
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    s.shutdown().await.expect("half-close");
    let mut reply = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut reply))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(reply, format!("saw EOF after {} bytes", request.len()));
    server.await.expect("server");
    let lines = gw.log.wait_for(1).await;
    assert_eq!(lines[0]["reason"], serde_json::Value::Null);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_silent_peer_cannot_pin_a_connection() {
    let limits = Limits {
        sniff_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(300),
        ..quick()
    };
    let gw = Running::start(
        gateway(&["edition.cnn.com"]),
        limits,
        &["edition.cnn.com=127.0.0.2"],
    )
    .await;
    // An upstream that accepts and never answers nor closes.
    let listener = TcpListener::bind(("127.0.0.2", gw.addr.port()))
        .await
        .expect("bind");
    let held = tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(PATIENCE).await;
        drop(s);
    });

    // 1. A client that sends nothing: closed by the first-byte deadline
    //    (bounded by the sniff timeout).
    let silent = exchange(gw.addr, b"").await;
    assert_eq!(silent, "");
    // 2. A client whose upstream goes quiet: closed by the idle timeout.
    let quiet = exchange(gw.addr, &get("edition.cnn.com")).await;
    assert_eq!(quiet, "");

    let lines = gw.log.wait_for(2).await;
    let reasons: Vec<_> = lines
        .iter()
        .map(|l| l["reason"].as_str().unwrap_or(""))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("no first bytes within")),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"idle timeout"), "{reasons:?}");
    held.abort();
    gw.shutdown().await;
}

#[tokio::test]
async fn the_gateway_never_connects_to_itself() {
    let gw = Running::start(gateway(&["loop.test"]), quick(), &["loop.test=127.0.0.1"]).await;
    let reply = exchange(gw.addr, &get("loop.test")).await;
    assert!(reply.starts_with("HTTP/1.1 508"), "{reply}");
    let lines = gw.log.wait_for(1).await;
    assert_eq!(lines.len(), 1, "exactly one connection: no loop");
    assert_eq!(lines[0]["verdict"], "denied");
    assert!(lines[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("loop")));
    gw.shutdown().await;
}

#[tokio::test]
async fn the_port_comes_from_the_sidecars_proxy_header() {
    // The upstream listens on an ephemeral port Q; the PROXY header says the
    // client meant 203.0.113.10:Q, so the gateway (listening on another
    // port) must use Q, and the allow-list's port Q is what admits it.
    let (upstream_addr, cnn) = upstream("127.0.0.2", 0, "cnn", 1).await;
    let q = upstream_addr.port();
    let gw = Running::start(
        gateway(&[&format!("edition.cnn.com:{q}")]),
        quick(),
        &["edition.cnn.com=127.0.0.2"],
    )
    .await;
    let original: SocketAddr = format!("203.0.113.10:{q}").parse().expect("addr");
    let client: SocketAddr = "10.244.1.10:50000".parse().expect("addr");
    let reply = exchange(gw.addr, &proxied_get(client, original)).await;
    assert!(reply.contains("cnn got"), "{reply}");
    let lines = gw.log.wait_for(1).await;
    assert_eq!(lines[0]["original_dst"], original.to_string());
    assert_eq!(lines[0]["downstream"], client.to_string());
    gw.shutdown().await;
    // The upstream got the request without the PROXY header.
    assert_eq!(cnn.await.expect("cnn"), vec![get("edition.cnn.com")]);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let limits = Limits {
        max_connections: 1,
        ..quick()
    };
    let gw = Running::start(gateway(&["edition.cnn.com"]), limits, &[]).await;
    // The first connection holds the only slot while it is being sniffed.
    let mut first = TcpStream::connect(gw.addr).await.expect("first");
    first.write_all(b"GET / HT").await.expect("partial");
    let second = exchange(gw.addr, &get("edition.cnn.com")).await;
    assert_eq!(second, "");
    let stats = gw.stats().await;
    assert!(
        stats.contains("listener.egress_proxy.downstream_cx_overflow: 1\n"),
        "{stats}"
    );
    drop(first);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_sidecar_refuses_a_connection_nothing_redirected() {
    let sidecar = Running::start(Mode::Sidecar(Sidecar::default()), quick(), &[]).await;
    let reply = exchange(sidecar.addr, b"hello").await;
    assert_eq!(reply, "");
    let lines = sidecar.log.wait_for(1).await;
    assert_eq!(lines[0]["mode"], "sidecar");
    assert_eq!(lines[0]["verdict"], "denied");
    let reason = lines[0]["reason"].as_str().unwrap_or("");
    // ENOENT/ENOPROTOOPT, or conntrack reporting the listener itself.
    assert!(
        reason.contains("not redirected"),
        "unexpected reason: {reason}"
    );
    assert_eq!(lines[0]["upstream"], serde_json::Value::Null);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_connections_after_the_drain_time() {
    let gw = Running::start(
        gateway(&["edition.cnn.com"]),
        quick(),
        &["edition.cnn.com=127.0.0.2"],
    )
    .await;
    let listener = TcpListener::bind(("127.0.0.2", gw.addr.port()))
        .await
        .expect("bind");
    let held = tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(PATIENCE).await;
        drop(s);
    });
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(&get("edition.cnn.com")).await.expect("send");
    // Wait until the proxy has connected upstream.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !gw
        .stats()
        .await
        .contains("edition.cnn.com.upstream_cx_active: 1")
    {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = gw.log.clone();
    gw.shutdown().await;
    let lines = log.wait_for(1).await;
    assert_eq!(lines[0]["reason"], "proxy shutting down");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("closed");
    held.abort();
}

#[tokio::test]
async fn a_reloaded_allow_list_applies_to_the_next_connection() {
    let allow = egress_proxy::allow::SharedAllowList::new(allow_list(&["old.test"]));
    let gw = Running::start(
        Mode::Gateway(Gateway {
            allow: allow.clone(),
            proxy_protocol_from: Vec::new(),
        }),
        quick(),
        &["new.test=127.0.0.2"],
    )
    .await;
    let (_, new) = upstream("127.0.0.2", gw.addr.port(), "new", 1).await;
    let reply = exchange(gw.addr, &get("new.test")).await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");

    allow.replace(allow_list(&["new.test"]));
    let reply = exchange(gw.addr, &get("new.test")).await;
    assert!(reply.contains("new got"), "{reply}");
    let reply = exchange(gw.addr, &get("old.test")).await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    gw.shutdown().await;
    assert_eq!(new.await.expect("upstream").len(), 1);
}

/// A gateway allowing edition.cnn.com, which it resolves to `ip`.
async fn cnn_gateway(limits: Limits, ip: &str) -> Running {
    let resolve = format!("edition.cnn.com={ip}");
    Running::start(gateway(&["edition.cnn.com"]), limits, &[&resolve]).await
}

/// Whether some access-log line's reason contains `needle`.
fn has_reason(lines: &[serde_json::Value], needle: &str) -> bool {
    lines
        .iter()
        .filter_map(|l| l["reason"].as_str())
        .any(|r| r.contains(needle))
}

/// Connects to `to` from the loopback address `from`, so one test can play
/// several clients (sources) at once.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind the client's source address");
    socket.connect(to).await.expect("connect to proxy")
}

/// Sends `request` on `s` and reads until the proxy closes.
async fn exchange_on(mut s: TcpStream, request: &[u8]) -> String {
    s.write_all(request).await.expect("send");
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("proxy answers or closes in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until the proxy closes (EOF or reset); fails after PATIENCE.
async fn closed_by_proxy(s: &mut TcpStream) {
    let mut sink = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut sink))
        .await
        .expect("the proxy closes the connection in time")
        .ok();
}

/// Waits until `/stats` shows `line`.
async fn stats_show(gw: &Running, line: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = gw.stats().await;
        if stats.contains(line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line:?} in:\n{stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_slowloris_client_is_cut_while_a_normal_client_is_served() {
    let (cnn_addr, cnn) = upstream("127.0.0.2", 0, "cnn", 1).await;
    let limits = Limits {
        first_byte_timeout: Duration::from_secs(1),
        sniff_timeout: Duration::from_secs(2),
        ..quick()
    };
    let gw = cnn_gateway(limits, "127.0.0.2").await;
    // One byte a second of a head that would take a minute and a half.
    let slow = {
        let addr = gw.addr;
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let head = get("edition.cnn.com");
            let mut sent = 0;
            for byte in &head {
                if s.write_all(&[*byte]).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (sent, head.len())
        })
    };
    // A silent client: not even a first byte.
    let mut silent = TcpStream::connect(gw.addr).await.expect("connect");
    // Meanwhile a normal client, to the upstream's port through the
    // PROXY header (trusted from loopback), is served.
    let q = cnn_addr.port();
    let request = proxied_get(
        "10.244.1.10:50000".parse().expect("addr"),
        format!("203.0.113.10:{q}").parse().expect("addr"),
    );
    let reply = exchange(gw.addr, &request).await;
    assert!(reply.contains("cnn got"), "{reply}");

    closed_by_proxy(&mut silent).await;
    let (sent, whole) = tokio::time::timeout(PATIENCE * 2, slow)
        .await
        .expect("the slow client is cut before a generous bound")
        .expect("slow client task");
    assert!(sent < whole, "the slow client finished its head: not cut");
    stats_show(
        &gw,
        "listener.egress_proxy.downstream_cx_header_timeout: 2\n",
    )
    .await;
    let lines = gw.log.wait_for(3).await;
    assert!(has_reason(&lines, "no first bytes within"), "{lines:?}");
    assert!(
        has_reason(&lines, "no complete ClientHello or request head within"),
        "{lines:?}"
    );
    gw.shutdown().await;
    let _ = cnn.await;
}

#[tokio::test]
async fn a_header_flood_is_refused_at_the_cap() {
    let gw = Running::start(gateway(&["edition.cnn.com"]), quick(), &[]).await;
    // A huge head: one endless header line. The proxy stops reading at its
    // 16 KiB cap and closes; what the client gets written before that is
    // bounded by the cap plus the two sockets' buffers, far below 64 MiB.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nX-Flood: ")
        .await
        .expect("send");
    let chunk = vec![b'a'; 64 * 1024];
    let mut written = 0usize;
    let flood = async {
        while written < 64 << 20 {
            match s.write(&chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => written += n,
            }
        }
        false
    };
    let cut = tokio::time::timeout(PATIENCE, flood)
        .await
        .expect("the flood is cut in time");
    assert!(cut, "the proxy took {written} bytes of one header line");
    // Endless small headers: refused at the header count, before the cap.
    let endless = format!("GET / HTTP/1.1\r\n{}", "X: y\r\n".repeat(1000));
    let reply = exchange(gw.addr, endless.as_bytes()).await;
    assert_eq!(reply, "");
    stats_show(
        &gw,
        "listener.egress_proxy.downstream_cx_header_too_large: 2\n",
    )
    .await;
    let lines = gw.log.wait_for(2).await;
    assert!(has_reason(&lines, "16384 bytes"), "{lines:?}");
    assert!(has_reason(&lines, "more than 96 headers"), "{lines:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_proxy_header_is_believed_only_from_a_trusted_source() {
    let (upstream_addr, cnn) = upstream("127.0.0.3", 0, "cnn", 1).await;
    let q = upstream_addr.port();
    // Only 127.0.0.2 plays the sidecar.
    let gw = Running::start(
        trusting(&[&format!("edition.cnn.com:{q}")], &["127.0.0.2/32"]),
        quick(),
        &["edition.cnn.com=127.0.0.3"],
    )
    .await;
    let original: SocketAddr = format!("203.0.113.10:{q}").parse().expect("addr");
    let claimed: SocketAddr = "10.244.1.10:50000".parse().expect("addr");
    let request = proxied_get(claimed, original);

    let untrusted = exchange_on(connect_from("127.0.0.1", gw.addr).await, &request).await;
    assert_eq!(untrusted, "", "an untrusted PROXY header gets nothing");
    let lines = gw.log.wait_for(1).await;
    assert_eq!(lines[0]["verdict"], "denied");
    assert!(
        lines[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("--proxy-protocol-from")),
        "{}",
        lines[0]
    );
    // The log names the real peer, not the client the header claimed.
    assert!(
        lines[0]["downstream"]
            .as_str()
            .is_some_and(|d| d.starts_with("127.0.0.1:")),
        "{}",
        lines[0]
    );

    let trusted = exchange_on(connect_from("127.0.0.2", gw.addr).await, &request).await;
    assert!(trusted.contains("cnn got"), "{trusted}");
    let lines = gw.log.wait_for(2).await;
    assert_eq!(lines[1]["downstream"], claimed.to_string());
    assert_eq!(lines[1]["original_dst"], original.to_string());
    let stats = gw.stats().await;
    assert!(
        stats.contains("listener.egress_proxy.downstream_proxy_proto_untrusted: 1\n"),
        "{stats}"
    );
    gw.shutdown().await;
    assert_eq!(cnn.await.expect("cnn"), vec![get("edition.cnn.com")]);
}

#[tokio::test]
async fn the_per_source_cap_refuses_one_more_and_serves_others() {
    let limits = Limits {
        max_connections_per_source: 2,
        ..quick()
    };
    let gw = cnn_gateway(limits, "127.0.0.3").await;
    // Without a PROXY header the port is the gateway's own.
    let (_, cnn) = upstream("127.0.0.3", gw.addr.port(), "cnn", 2).await;
    // 127.0.0.1 holds both of its slots, mid-head.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.1", gw.addr).await;
        s.write_all(b"GET / HT").await.expect("partial");
        held.push(s);
    }
    let mut third = connect_from("127.0.0.1", gw.addr).await;
    closed_by_proxy(&mut third).await;
    stats_show(
        &gw,
        "listener.egress_proxy.downstream_cx_per_source_overflow: 1\n",
    )
    .await;
    // Another source is served meanwhile.
    let other = exchange_on(
        connect_from("127.0.0.2", gw.addr).await,
        &get("edition.cnn.com"),
    )
    .await;
    assert!(other.contains("cnn got"), "{other}");
    // A slot given back is usable again.
    drop(held.pop());
    gw.log.wait_for(2).await;
    let again = exchange_on(
        connect_from("127.0.0.1", gw.addr).await,
        &get("edition.cnn.com"),
    )
    .await;
    assert!(again.contains("cnn got"), "{again}");
    drop(held);
    gw.shutdown().await;
    assert_eq!(cnn.await.expect("cnn").len(), 2);
}
