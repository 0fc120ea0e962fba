//! One line per connection, in the spirit of Envoy's TCP access log: when,
//! where the client meant to go, the name it asked for, where the proxy
//! connected, bytes each way, how long, and the verdict with its reason.
//!
//! Lines go through a bounded queue to one writer thread. A connection task
//! never waits for the sink: a stuck stdout pipe or a slow disk would
//! otherwise stall every worker behind one lock. When the queue is full the
//! line is dropped and counted (`access_log_dropped`) instead.

use std::{
    fmt,
    fs::File,
    io::{self, Write},
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Lines queued for the writer before new ones are dropped: a few seconds
/// of a busy gateway, a few MiB at most.
pub const QUEUE: usize = 4096;

/// What the proxy decided for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Forwarded upstream (even if the upstream then failed: see `reason`).
    Allowed,
    /// Refused by policy or because it could not be routed.
    Denied,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
        })
    }
}

/// One connection's record. Bytes are counted from the client's side:
/// `bytes_sent` went from the client to the upstream, `bytes_received` came
/// back.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    #[serde(serialize_with = "ser_time")]
    pub start_time: SystemTime,
    pub mode: &'static str,
    pub downstream: SocketAddr,
    /// The destination the client connected to before any redirect: from
    /// SO_ORIGINAL_DST (sidecar) or the PROXY header (gateway).
    pub original_dst: Option<SocketAddr>,
    /// `tls`, `http`, or `tcp` when nothing was sniffed.
    pub protocol: &'static str,
    /// The TLS SNI or HTTP Host.
    pub authority: Option<String>,
    pub upstream: Option<SocketAddr>,
    /// Envoy's cluster name, as in the stats: `outbound|443||edition.cnn.com`.
    pub cluster: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    #[serde(rename = "duration_ms", serialize_with = "ser_millis")]
    pub duration: Duration,
    pub verdict: Verdict,
    /// Why it was denied, or how an allowed connection ended abnormally.
    pub reason: Option<String>,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Rfc3339(*t))
}

fn ser_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `--access-log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// `[START] MODE PROTO ORIGINAL_DST AUTHORITY "UPSTREAM" CLUSTER SENT
    /// RECEIVED DURATION_MS VERDICT "REASON" DOWNSTREAM`, `-` when absent.
    #[default]
    Text,
    /// One JSON object per line, the fields of [`Entry`].
    Json,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn or_dash<T: fmt::Display>(v: &Option<T>) -> String {
            v.as_ref().map_or_else(|| "-".to_owned(), |v| v.to_string())
        }
        write!(
            f,
            "[{}] {} {} {} {} \"{}\" {} {} {} {} {} \"{}\" {}",
            Rfc3339(self.start_time),
            self.mode,
            self.protocol,
            or_dash(&self.original_dst),
            or_dash(&self.authority),
            or_dash(&self.upstream),
            or_dash(&self.cluster),
            self.bytes_sent,
            self.bytes_received,
            self.duration.as_millis(),
            self.verdict,
            or_dash(&self.reason),
            self.downstream,
        )
    }
}

/// What the writer thread receives.
enum Msg {
    Line(String),
    /// Answered once every earlier line is written.
    Flush(oneshot::Sender<()>),
}

/// Where lines go: a bounded queue in front of one writer thread, which
/// writes and flushes each line whole, so lines never interleave.
pub struct AccessLog {
    format: Format,
    queue: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    pub fn stdout(format: Format) -> io::Result<Self> {
        Self::writer(format, Box::new(io::stdout()))
    }

    /// Appends to `path`, creating it.
    pub fn file(format: Format, path: &Path) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        Self::writer(format, Box::new(file))
    }

    /// Any writer (tests collect lines in memory), behind a [`QUEUE`]-line
    /// queue.
    pub fn writer(format: Format, writer: Box<dyn Write + Send>) -> io::Result<Self> {
        Self::with_queue(format, writer, QUEUE)
    }

    /// Any writer behind a queue of `lines` lines (at least one).
    pub fn with_queue(
        format: Format,
        mut writer: Box<dyn Write + Send>,
        lines: usize,
    ) -> io::Result<Self> {
        let (queue, mut rx) = mpsc::channel(lines.max(1));
        // A thread, not a task: writes block, and a blocked write must not
        // hold one of the runtime's workers.
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Some(msg) = rx.blocking_recv() {
                    match msg {
                        Msg::Line(line) => {
                            let written = writeln!(writer, "{line}").and_then(|()| writer.flush());
                            if let Err(e) = written {
                                tracing::warn!(error = %e, "cannot write the access log");
                            }
                        }
                        Msg::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(Self {
            format,
            queue,
            dropped: Arc::default(),
        })
    }

    /// Queues the entry's line; never waits. A full queue drops the line.
    pub fn log(&self, entry: &Entry) {
        let line = match self.format {
            Format::Text => entry.to_string(),
            Format::Json => match serde_json::to_string(entry) {
                Ok(json) => json,
                Err(e) => format!("{{\"error\":\"access log entry not serialisable: {e}\"}}"),
            },
        };
        if self.queue.try_send(Msg::Line(line)).is_err() {
            let dropped = self.dropped.fetch_add(1, Relaxed) + 1;
            // Say so, but not once per line while the sink is stuck.
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "access log queue full: lines dropped");
            }
        }
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    /// Waits until every line queued so far is written (at shutdown).
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Msg::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

/// A UTC timestamp with milliseconds, as Envoy prints `%START_TIME%`.
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            start_time: UNIX_EPOCH + Duration::from_millis(1_567_544_269_103),
            mode: "gateway",
            downstream: "10.244.2.10:50482".parse().expect("addr"),
            original_dst: Some("151.101.65.67:443".parse().expect("addr")),
            protocol: "tls",
            authority: Some("edition.cnn.com".into()),
            upstream: Some("151.101.65.67:443".parse().expect("addr")),
            cluster: Some("outbound|443||edition.cnn.com".into()),
            bytes_sent: 627,
            bytes_received: 1_879_689,
            duration: Duration::from_millis(44),
            verdict: Verdict::Allowed,
            reason: None,
        }
    }

    #[test]
    fn text_line() {
        assert_eq!(
            entry().to_string(),
            "[2019-09-03T20:57:49.103Z] gateway tls 151.101.65.67:443 edition.cnn.com \
             \"151.101.65.67:443\" outbound|443||edition.cnn.com 627 1879689 44 allowed \"-\" \
             10.244.2.10:50482"
        );
    }

    #[test]
    fn json_line() {
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&entry()).expect("json")).expect("parse");
        assert_eq!(v["start_time"], "2019-09-03T20:57:49.103Z");
        assert_eq!(v["authority"], "edition.cnn.com");
        assert_eq!(v["bytes_received"], 1_879_689);
        assert_eq!(v["duration_ms"], 44);
        assert_eq!(v["verdict"], "allowed");
    }

    /// A sink that blocks until released, as a stuck stdout pipe does.
    struct Stuck(std::sync::mpsc::Receiver<()>, Arc<AtomicU64>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            let lines = buf.iter().filter(|&&b| b == b'\n').count();
            self.1.fetch_add(lines as u64, Relaxed);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stuck_sink_drops_and_counts_lines_instead_of_blocking() {
        let (release, gate) = std::sync::mpsc::channel();
        let writes = Arc::new(AtomicU64::new(0));
        let log = AccessLog::with_queue(Format::Text, Box::new(Stuck(gate, writes.clone())), 4)
            .expect("writer thread");
        // The writer holds at most one line while stuck; the queue holds
        // four; everything past that is dropped, and `log` returns at once
        // every time (a blocking `log` would hang this test).
        for _ in 0..100 {
            log.log(&entry());
        }
        let dropped = log.dropped().load(Relaxed);
        assert!((95..=96).contains(&dropped), "dropped {dropped}");
        drop(release);
        log.flush().await;
        assert_eq!(writes.load(Relaxed) + dropped, 100);
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_722), (2023, 12, 31));
    }
}
