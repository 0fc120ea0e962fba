//! Scenario: the gateway's upstream name resolution has its own deadline.
//! A DNS server that never answers (a UDP socket that reads and drops)
//! would hold a client for as long as the system resolver keeps trying;
//! with `--resolve-timeout` the client gets a 502 in time, and the timeout
//! is counted.
//!
//! The proxy runs in a mount namespace of its own (`unshare --mount`) with
//! a resolv.conf bind-mounted over /etc/resolv.conf that names the black
//! hole and tells glibc to keep trying for minutes, so only the proxy's
//! own deadline can end the wait. Nothing outside that namespace changes.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{agent::agent_exe, require_root};

/// Bounds every wait. glibc, as configured below, would keep the client
/// waiting for 150 s; a regression fails here instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);
/// Not systemd-resolved's 127.0.0.53 or 127.0.0.54.
const BLACK_HOLE: &str = "127.0.0.77:53";

/// Kills the proxy however the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).expect("timeout");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_dns_server_that_never_answers_gets_the_client_a_502_in_time() {
    require_root();
    let black_hole = UdpSocket::bind(BLACK_HOLE).expect("bind the black-hole DNS server");
    let (queried, queries) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while black_hole.recv_from(&mut buf).is_ok() {
            if queried.send(()).is_err() {
                break;
            }
        }
    });
    let dir = std::env::temp_dir().join(format!("proxy-resolve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.77\noptions timeout:30 attempts:5\n",
    )
    .expect("resolv.conf");

    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let proxy = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
        .arg(&resolv)
        .arg(agent_exe())
        .args([
            "proxy",
            "--mode",
            "gateway",
            "--allow",
            "never.answers.test",
        ])
        .args(["--resolve-timeout", "1s", "--access-log-format", "json"])
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--admin")
        .arg(admin.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the proxy");
    let _proxy = Killed(proxy);
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(admin).is_err() {
        assert!(Instant::now() < deadline, "the proxy never listened");
        thread::sleep(Duration::from_millis(20));
    }

    let asked = Instant::now();
    let reply = exchange(
        listen,
        b"GET / HTTP/1.1\r\nHost: never.answers.test\r\n\r\n",
    );
    assert!(
        asked.elapsed() < PATIENCE,
        "the client waited for the system resolver"
    );
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply:?}");
    assert!(reply.contains("no answer within"), "{reply:?}");
    // The proxy really asked the black hole (not /etc/hosts or a cache).
    queries
        .recv_timeout(PATIENCE)
        .expect("the resolver queried the black hole");

    let stats = exchange(admin, b"GET /stats HTTP/1.1\r\nHost: admin\r\n\r\n");
    assert!(
        stats.contains("listener.egress_proxy.upstream_resolve_timeout: 1\n"),
        "{stats}"
    );
    assert!(
        stats.contains("never.answers.test.upstream_cx_connect_fail: 1\n"),
        "{stats}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
