//! One line per connection, in the spirit of Envoy's TCP access log: when,
//! where the client meant to go, the name it asked for, where the proxy
//! connected, bytes each way, how long, and the verdict with its reason.

use std::{
    fmt,
    fs::File,
    io::{self, Write},
    net::SocketAddr,
    path::Path,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

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

/// Where lines go. Each line is written and flushed whole under a lock, so
/// concurrent connections never interleave.
pub struct AccessLog {
    format: Format,
    sink: Mutex<Box<dyn Write + Send>>,
}

impl AccessLog {
    pub fn stdout(format: Format) -> Self {
        Self {
            format,
            sink: Mutex::new(Box::new(io::stdout())),
        }
    }

    /// Appends to `path`, creating it.
    pub fn file(format: Format, path: &Path) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(Self {
            format,
            sink: Mutex::new(Box::new(file)),
        })
    }

    /// Any writer (tests collect lines in memory).
    pub fn writer(format: Format, writer: Box<dyn Write + Send>) -> Self {
        Self {
            format,
            sink: Mutex::new(writer),
        }
    }

    pub fn log(&self, entry: &Entry) {
        let line = match self.format {
            Format::Text => entry.to_string(),
            Format::Json => match serde_json::to_string(entry) {
                Ok(json) => json,
                Err(e) => format!("{{\"error\":\"access log entry not serialisable: {e}\"}}"),
            },
        };
        // A poisoned lock only means another line's write panicked; the
        // sink itself is still usable.
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(sink, "{line}").and_then(|()| sink.flush()) {
            tracing::warn!(error = %e, "cannot write the access log");
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

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_722), (2023, 12, 31));
    }
}
