//! Per-destination counters, named as Envoy names them so the Istio
//! walkthroughs' `grep upstream_cx_total` works unchanged.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

/// Envoy's cluster for connections REGISTRY_ONLY refuses.
pub const BLACK_HOLE: &str = "BlackHoleCluster";

/// Envoy's cluster name for a destination: `outbound|443||edition.cnn.com`.
pub fn cluster_name(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// One cluster's counters.
#[derive(Debug, Default)]
pub struct Cluster {
    pub upstream_cx_total: AtomicU64,
    pub upstream_cx_active: AtomicU64,
    pub upstream_cx_connect_fail: AtomicU64,
    pub upstream_cx_tx_bytes_total: AtomicU64,
    pub upstream_cx_rx_bytes_total: AtomicU64,
}

/// Listener-side counters (Envoy's `listener.*.downstream_cx_*`).
#[derive(Debug, Default)]
pub struct Downstream {
    pub downstream_cx_total: AtomicU64,
    pub downstream_cx_active: AtomicU64,
    /// Connections accepted over `--max-connections` and closed at once.
    pub downstream_cx_overflow: AtomicU64,
    /// Connections closed at once because their source address already
    /// had `--max-connections-per-source` open.
    pub downstream_cx_per_source_overflow: AtomicU64,
    /// Closed for not sending their first bytes, PROXY header, ClientHello
    /// or request head in time (slowloris).
    pub downstream_cx_header_timeout: AtomicU64,
    /// Closed for a PROXY header, ClientHello or request head over its cap
    /// (header flood).
    pub downstream_cx_header_too_large: AtomicU64,
    /// PROXY headers refused: their sender is not in
    /// `--proxy-protocol-from`.
    pub downstream_proxy_proto_untrusted: AtomicU64,
    /// Upstream names not resolved within `--resolve-timeout`.
    pub upstream_resolve_timeout: AtomicU64,
    /// Access-log lines dropped because the log's queue was full; shared
    /// with the [`AccessLog`](crate::access_log::AccessLog).
    pub access_log_dropped: Arc<AtomicU64>,
}

/// All counters. Cluster entries are created on first use and live as long
/// as the proxy (a gateway's are bounded by its allow-list).
#[derive(Debug, Default)]
pub struct Stats {
    pub downstream: Downstream,
    clusters: Mutex<BTreeMap<String, Arc<Cluster>>>,
}

impl Stats {
    pub fn cluster(&self, name: &str) -> Arc<Cluster> {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        clusters.entry(name.to_owned()).or_default().clone()
    }

    fn snapshot(&self) -> Vec<(String, [(&'static str, u64); 5])> {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        clusters
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    [
                        ("upstream_cx_total", c.upstream_cx_total.load(Relaxed)),
                        ("upstream_cx_active", c.upstream_cx_active.load(Relaxed)),
                        (
                            "upstream_cx_connect_fail",
                            c.upstream_cx_connect_fail.load(Relaxed),
                        ),
                        (
                            "upstream_cx_tx_bytes_total",
                            c.upstream_cx_tx_bytes_total.load(Relaxed),
                        ),
                        (
                            "upstream_cx_rx_bytes_total",
                            c.upstream_cx_rx_bytes_total.load(Relaxed),
                        ),
                    ],
                )
            })
            .collect()
    }

    fn downstream(&self) -> [(&'static str, u64); 9] {
        let d = &self.downstream;
        [
            ("downstream_cx_total", &d.downstream_cx_total),
            ("downstream_cx_active", &d.downstream_cx_active),
            ("downstream_cx_overflow", &d.downstream_cx_overflow),
            (
                "downstream_cx_per_source_overflow",
                &d.downstream_cx_per_source_overflow,
            ),
            (
                "downstream_cx_header_timeout",
                &d.downstream_cx_header_timeout,
            ),
            (
                "downstream_cx_header_too_large",
                &d.downstream_cx_header_too_large,
            ),
            (
                "downstream_proxy_proto_untrusted",
                &d.downstream_proxy_proto_untrusted,
            ),
            ("upstream_resolve_timeout", &d.upstream_resolve_timeout),
            ("access_log_dropped", &*d.access_log_dropped),
        ]
        .map(|(name, counter)| (name, counter.load(Relaxed)))
    }

    /// Envoy's admin `/stats` text: `cluster.NAME.STAT: VALUE`.
    pub fn envoy_text(&self) -> String {
        let mut out = String::new();
        for (name, counters) in self.snapshot() {
            for (stat, value) in counters {
                let _ = writeln!(out, "cluster.{name}.{stat}: {value}");
            }
        }
        for (stat, value) in self.downstream() {
            let _ = writeln!(out, "listener.egress_proxy.{stat}: {value}");
        }
        out
    }

    /// Prometheus text format, with Envoy's metric and label names.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let snapshot = self.snapshot();
        let stats = snapshot.first().map(|(_, c)| c.map(|(s, _)| s));
        for stat in stats.into_iter().flatten() {
            let kind = if stat.ends_with("_active") {
                "gauge"
            } else {
                "counter"
            };
            let _ = writeln!(out, "# TYPE envoy_cluster_{stat} {kind}");
            for (name, counters) in &snapshot {
                for (s, value) in counters.iter().filter(|(s, _)| *s == stat) {
                    let _ = writeln!(
                        out,
                        "envoy_cluster_{s}{{envoy_cluster_name=\"{}\"}} {value}",
                        escape_label(name)
                    );
                }
            }
        }
        for (stat, value) in self.downstream() {
            let kind = if stat.ends_with("_active") {
                "gauge"
            } else {
                "counter"
            };
            let _ = writeln!(out, "# TYPE envoy_listener_{stat} {kind}");
            let _ = writeln!(out, "envoy_listener_{stat} {value}");
        }
        out
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Decrements a gauge when dropped, so every exit path of a connection
/// (error, timeout, shutdown) is counted out.
pub struct Active<'a>(&'a AtomicU64);

impl<'a> Active<'a> {
    pub fn enter(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        Self(gauge)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_and_prometheus_names() {
        let stats = Stats::default();
        let c = stats.cluster(&cluster_name(443, "edition.cnn.com"));
        c.upstream_cx_total.fetch_add(3, Relaxed);
        let text = stats.envoy_text();
        assert!(
            text.contains("cluster.outbound|443||edition.cnn.com.upstream_cx_total: 3\n"),
            "{text}"
        );
        let prom = stats.prometheus();
        assert!(
            prom.contains(
                "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"outbound|443||edition.cnn.com\"} 3\n"
            ),
            "{prom}"
        );
        stats
            .downstream
            .downstream_cx_per_source_overflow
            .fetch_add(2, Relaxed);
        stats.downstream.access_log_dropped.fetch_add(5, Relaxed);
        let (text, prom) = (stats.envoy_text(), stats.prometheus());
        for line in [
            "listener.egress_proxy.downstream_cx_per_source_overflow: 2\n",
            "listener.egress_proxy.access_log_dropped: 5\n",
        ] {
            assert!(text.contains(line), "{text}");
        }
        for line in [
            "# TYPE envoy_listener_downstream_proxy_proto_untrusted counter\n",
            "envoy_listener_downstream_cx_per_source_overflow 2\n",
            "envoy_listener_access_log_dropped 5\n",
        ] {
            assert!(prom.contains(line), "{prom}");
        }
        {
            let _a = Active::enter(&c.upstream_cx_active);
            assert_eq!(c.upstream_cx_active.load(Relaxed), 1);
        }
        assert_eq!(c.upstream_cx_active.load(Relaxed), 0);
    }
}
