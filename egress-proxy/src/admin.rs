//! The admin endpoint, as Envoy's on port 15000: `GET /stats` (Envoy's text
//! format), `GET /metrics` (Prometheus), `GET /ready`.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::stats::Stats;

/// A request head larger than this is refused; admin requests are tiny.
const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves admin requests until the task is aborted.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, &stats)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, stats: &Stats) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let path = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break (request.method == Some("GET"))
                    .then(|| request.path.unwrap_or("/").to_owned());
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => {}
            _ => break None,
        }
    };
    let (status, body) = match path.as_deref().map(|p| p.split('?').next().unwrap_or(p)) {
        Some("/stats") => ("200 OK", stats.envoy_text()),
        Some("/metrics" | "/stats/prometheus") => ("200 OK", stats.prometheus()),
        Some("/ready") => ("200 OK", "LIVE\n".to_owned()),
        Some(_) => (
            "404 Not Found",
            "not found: try /stats, /metrics, /ready\n".to_owned(),
        ),
        None => ("400 Bad Request", "GET only\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
