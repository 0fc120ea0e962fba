//! `egress-agent proxy` as users run it: the real binary, the seed's
//! EgressGateway allow-list, a text access log in a file, the admin
//! endpoint, and SIGTERM. Loopback only.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use egress_proxy::proxy_protocol;

const PATIENCE: Duration = Duration::from_secs(10);

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_egress-agent"))
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

fn wait_listening(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("proxy exited early: {status}");
        }
        assert!(Instant::now() < deadline, "proxy never listened on {addr}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).expect("timeout");
    s.write_all(bytes).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn the_gateway_binary_enforces_the_seed_allowed_hosts() {
    let dir = std::env::temp_dir().join(format!("egress-proxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("access.log");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut child = exe()
        .args(["proxy", "--mode", "gateway"])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args([
            "--policies",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"),
        ])
        .args(["--gateway", "istio-system/istio-egressgateway"])
        .args(["--resolve", "edition.cnn.com=127.0.0.2"])
        // This test plays the sidecar, from loopback.
        .args(["--proxy-protocol-from", "127.0.0.1"])
        .args(["--access-log", &log.display().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    wait_listening(listen, &mut child);
    wait_listening(admin, &mut child);

    // A name the EgressGateway does not list: 403 naming it.
    let reply = exchange(listen, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(reply.contains("example.com"), "{reply}");

    // edition.cnn.com on 443 (the port comes from the PROXY header) is
    // allowed; nothing listens at 127.0.0.2:443, so the gateway answers
    // 502, which shows it tried.
    let mut request = proxy_protocol::encode(
        "10.244.1.10:40000".parse().expect("addr"),
        "151.101.65.67:443".parse().expect("addr"),
    )
    .expect("header");
    request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n");
    let reply = exchange(listen, &request);
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");

    let stats = exchange(admin, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        stats.contains("cluster.BlackHoleCluster.upstream_cx_total: 1\n"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.outbound|443||edition.cnn.com.upstream_cx_connect_fail: 1\n"),
        "{stats}"
    );

    // SIGTERM: a clean exit.
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");

    let text = std::fs::read_to_string(&log).expect("access log");
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains(" tcp - - ")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" gateway http - example.com ")
                && l.contains(" denied \"example.com:")),
        "{text}"
    );
    assert!(
        lines.iter().any(
            |l| l.contains(" gateway http 151.101.65.67:443 edition.cnn.com ")
                && l.contains(" allowed \"connect to 127.0.0.2:443")
                && l.ends_with(" 10.244.1.10:40000")
        ),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gateway_without_an_allow_list_does_not_start() {
    let out = exe()
        .args(["proxy", "--mode", "gateway", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-any"), "{stderr}");

    let out = exe()
        .args(["proxy", "--mode", "gateway", "--listen", "127.0.0.1:0"])
        .args([
            "--policies",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"),
        ])
        .args(["--gateway", "istio-system/nope"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no EgressGateway istio-system/nope"),
        "{stderr}"
    );
}
