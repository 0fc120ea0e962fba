//! The simulated internet's web sites: nginx serving every seed host over
//! HTTP and TLS, with a self-signed certificate from openssl, and an access
//! log that tells which client address each request came from.
//!
//! One virtual server answers for every name, on every address of the
//! internet namespace (AnyIP), and says who asked:
//! `edition.cnn.com /politics served to 10.244.0.20 over https`. A test can
//! then tell *which* pod reached a site (the access log's client address)
//! without trusting the client's own account.

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{nftns::in_netns, Netns};

/// The ports the web server takes on every internet address.
pub const HTTP_PORT: u16 = 80;
pub const HTTPS_PORT: u16 = 443;

/// nginx in the internet namespace; killed on drop.
pub struct WebServer {
    child: Child,
    dir: PathBuf,
}

/// One line of the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client address as the site saw it.
    pub client: IpAddr,
    /// The `Host` header.
    pub host: String,
    /// The TLS server name; `None` over plain HTTP.
    pub sni: Option<String>,
    pub uri: String,
    pub status: u16,
}

impl WebServer {
    /// Writes a certificate for `names` and a configuration under `dir`,
    /// then starts nginx in `internet` (through `spawn`, which places it in
    /// the fixture's cgroup) and waits until it answers on `probe`.
    pub fn start(
        dir: &Path,
        names: &[String],
        internet: &Netns,
        probe: IpAddr,
        spawn: impl FnOnce(&Netns) -> anyhow::Result<Command>,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dir.join("tmp"))
            .with_context(|| format!("creating {}", dir.display()))?;
        write_certificate(dir, names)?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config(dir)).with_context(|| format!("writing {}", conf.display()))?;
        let log = fs::File::create(dir.join("stderr.log"))?;
        let child = spawn(internet)?
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting nginx (apt package nginx-light; run `cargo xtask setup`)")?;
        let mut server = Self {
            child,
            dir: dir.to_owned(),
        };
        server.wait_until_serving(internet, SocketAddr::new(probe, HTTP_PORT))?;
        Ok(server)
    }

    /// The CA certificate clients pass to `curl --cacert`.
    pub fn ca_certificate(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// Every request served so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(parse_line)
            .collect()
    }

    fn wait_until_serving(&mut self, internet: &Netns, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = in_netns(internet, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let log = fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
                let errors = fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}):\n{log}{errors}");
            }
            if Instant::now() > deadline {
                bail!("nginx does not answer on {addr}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        // The master's workers die with the fixture's cgroup.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate whose subjectAltName lists every name, so
/// that `curl --cacert` verifies each site as a browser would.
fn write_certificate(dir: &Path, names: &[String]) -> anyhow::Result<()> {
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args([
            "-days",
            "2",
            "-subj",
            "/CN=egress-enforcer simulated internet",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .arg("-addext")
        .arg(format!("subjectAltName={san}"))
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    if !output.status.success() {
        bail!(
            "openssl could not make a certificate: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
worker_processes 1;
user root root;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    log_format site '$remote_addr|$host|$ssl_server_name|$request_uri|$status';
    access_log {d}/access.log site;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type text/plain;
    server {{
        listen {HTTP_PORT} default_server;
        listen [::]:{HTTP_PORT} ipv6only=on default_server;
        listen {HTTPS_PORT} ssl default_server;
        listen [::]:{HTTPS_PORT} ssl ipv6only=on default_server;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        server_name _;
        location / {{
            return 200 "$host $request_uri served to $remote_addr over $scheme\n";
        }}
    }}
}}
"#
    )
}

fn parse_line(line: &str) -> Option<Request> {
    let mut fields = line.split('|');
    let client = fields.next()?.parse().ok()?;
    let host = fields.next()?.to_owned();
    let sni = Some(fields.next()?)
        .filter(|s| !s.is_empty() && *s != "-")
        .map(str::to_owned);
    let uri = fields.next()?.to_owned();
    let status = fields.next()?.trim().parse().ok()?;
    Some(Request {
        client,
        host,
        sni,
        uri,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_lines_are_parsed_with_and_without_sni() {
        let tls = parse_line("10.244.0.20|edition.cnn.com|edition.cnn.com|/politics|200").unwrap();
        assert_eq!(tls.client, IpAddr::from([10, 244, 0, 20]));
        assert_eq!(tls.sni.as_deref(), Some("edition.cnn.com"));
        assert_eq!(tls.status, 200);
        let plain = parse_line("2001:db8:2::10|httpbin.org||/get|200").unwrap();
        assert_eq!(plain.sni, None);
        assert_eq!(plain.uri, "/get");
        assert_eq!(parse_line("garbage"), None);
    }
}
