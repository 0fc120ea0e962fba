//! Bytes both ways between client and upstream, with half-close passed on
//! and one idle timeout over both directions.
//!
//! `copy_bidirectional` alone would let a peer that stops reading, or that
//! half-closes and then goes quiet, hold the connection forever; here any
//! progress in either direction resets a shared idle clock, and a stalled
//! pair is dropped when it runs out.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::Instant,
};

/// Per-direction buffer: bounded, so a connection costs at most two.
const BUF: usize = 16 * 1024;

/// How a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their sending half.
    Closed,
    /// Neither direction moved for the idle timeout.
    Idle,
    /// A read or write failed (reset, broken pipe).
    Error,
    /// The proxy is shutting down and the drain time is over.
    Shutdown,
}

impl End {
    /// The access log's reason for an allowed connection, if abnormal.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::Closed => None,
            Self::Idle => Some("idle timeout"),
            Self::Error => Some("connection reset"),
            Self::Shutdown => Some("proxy shutting down"),
        }
    }
}

/// Byte counts, readable even when the relay was cut short.
#[derive(Debug, Default)]
pub struct Counts {
    /// Client → upstream.
    pub sent: AtomicU64,
    /// Upstream → client.
    pub received: AtomicU64,
}

/// Relays until both halves are closed, the pair is idle for `idle`, an
/// error occurs, or `stop` resolves.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    counts: &Counts,
    stop: impl std::future::Future<Output = ()>,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds since `start` of the last progress in either direction.
    let last = AtomicU64::new(0);
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut upstream_rd, mut upstream_wr) = tokio::io::split(upstream);
    let up = pump(&mut client_rd, &mut upstream_wr, &counts.sent, &last, start);
    let down = pump(
        &mut upstream_rd,
        &mut client_wr,
        &counts.received,
        &last,
        start,
    );
    // One failed direction ends both: the other would otherwise wait for
    // the idle timeout.
    let both = async {
        match tokio::try_join!(up, down) {
            Ok(_) => End::Closed,
            Err(_) => End::Error,
        }
    };
    let watchdog = async {
        loop {
            let elapsed = Duration::from_millis(last.load(Relaxed));
            let deadline = start + elapsed + idle;
            if Instant::now() >= deadline {
                return End::Idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        end = both => end,
        end = watchdog => end,
        () = stop => End::Shutdown,
    }
}

/// One direction: read, write, and on EOF shut the other side's sending
/// half so the half-close reaches it.
async fn pump<R, W>(
    rd: &mut R,
    wr: &mut W,
    count: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let touch = || {
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(ms, Relaxed);
    };
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            wr.shutdown().await?;
            return Ok(());
        }
        touch();
        let mut written = 0;
        while written < n {
            let w = wr.write(&buf[written..n]).await?;
            if w == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            written += w;
            count.fetch_add(w as u64, Relaxed);
            touch();
        }
    }
}
