//! The report's figures from the real API server ([`super::pod_cache`]):
//! P5 at N pods and M NetworkPolicies, the slim Pod cache (under P5), and
//! P6, the churn.

use std::{fmt::Write as _, path::Path};

use super::{
    plot::{self, Bars, Line, Panel},
    report::{cell, count, num, Row},
    samples::{Samples, Stat, Table},
};

/// Issue 14's P6 target: `status` and `/metrics` answer within this (p99,
/// ms) during the churn.
const P6_TARGET: f64 = 100.0;

/// The three latencies of P6, each with its caption.
const P6_LATENCIES: [(&str, &str); 3] = [
    ("verdict", "time to verdict"),
    ("status", "`status`"),
    ("metrics", "`/metrics`"),
];

pub fn p5_pods(md: &mut String, t: &Table) {
    let sizes = t.cidrs("peak_rss");
    if sizes.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "In Kubernetes mode, with N pods and M NetworkPolicies in a real kube-apiserver 1.20.2 \
         (P6's setup, before its churn): the agent (release) started with all of them in the \
         API server, watching for one node that has one pod (the probe pod of P6; the N pods \
         are on other nodes, so each is a NetworkPolicy peer). Peak RSS (`VmHWM`) and RSS \
         (`VmRSS`) once its applies have settled, and how long from its start until the probe \
         pod was enforced.\n\n\
         | pods | NetworkPolicies | peak RSS (MiB) | steady RSS (MiB) | probe enforced after (s) |\n\
         |---|---|---|---|---|"
    );
    for n in sizes {
        let g = |m: &str| t.get(m, "ours", n);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            count(n),
            g("policies").map_or_else(|| "–".to_owned(), |s| count(s.median as usize)),
            cell(g("peak_rss")),
            cell(g("steady_rss")),
            cell(g("first_enforced"))
        );
    }
    md.push('\n');
}

pub fn p5_cache(md: &mut String, t: &Table) {
    let sizes = t.cidrs("heap");
    if sizes.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### The slim Pod cache\n\n\
         The agent's own Pod watch (`kubernetes::watch_pods`, release build) alone lists and \
         keeps N pods from the same API server (pods bound to 100-pod fake nodes with their \
         `status.podIP` set): the live heap it adds (a counting allocator: exact), per pod, and \
         the RSS it adds (allocator slack included). No target: issue 11 asks for the figure. \
         See [kubernetes](kubernetes.md#memory-at-10k-pods) for the comparison with a reflector \
         of whole Pods.\n\n\
         | pods | listed in (s) | live heap (MiB) | per pod (B) | RSS (MiB) |\n\
         |---|---|---|---|---|"
    );
    for n in sizes {
        let g = |m: &str| t.get(m, "ours", n);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            count(n),
            cell(g("listed")),
            cell(g("heap")),
            cell(g("heap_per_pod")),
            cell(g("rss"))
        );
    }
    md.push('\n');
}

/// The raw values of one P6 figure at the largest pod count.
fn values(samples: &Samples, metric: &str) -> (usize, Vec<f64>) {
    let size = samples
        .samples
        .iter()
        .filter(|s| s.measure == "p6")
        .map(|s| s.cidrs)
        .max()
        .unwrap_or(0);
    let mut v: Vec<f64> = samples
        .samples
        .iter()
        .filter(|s| s.measure == "p6" && s.metric == metric && s.cidrs == size)
        .map(|s| s.value)
        .filter(|v| v.is_finite())
        .collect();
    v.sort_by(f64::total_cmp);
    (size, v)
}

/// The `q` quantile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn one(samples: &Samples, metric: &str) -> Option<f64> {
    values(samples, metric).1.first().copied()
}

pub fn p6_section(md: &mut String, samples: &Samples, summary: &mut Vec<Row>, rel: &str) {
    let (size, _) = values(samples, "verdict");
    let n = |metric| one(samples, metric).map_or_else(|| "–".to_owned(), |v| count(v as usize));
    let _ = writeln!(
        md,
        "## P6: churn\n\n\
         A real kube-apiserver 1.20.2 and etcd (`cargo xtask k8s-pod-memory`'s setup, in a \
         network namespace of their own) hold {pods} pods on 100-pod fake nodes, {policies} \
         NetworkPolicies (each lets one app's pods reach another app's on 8080, and one /32) \
         and {slices} EndpointSlices. The agent (release) runs in Kubernetes mode for a node \
         of its own whose one pod, the probe pod, has a kubelet-style cgroup (cgroupfs \
         layout, `kubepods/besteffort/pod<uid>`, found by its UID as on a real node) with a \
         probe connecting every millisecond. Then changes at a fixed rate: in turn a pod \
         created (and its `status.podIP` set), a pod's labels updated, a pod deleted, a \
         NetworkPolicy replaced, created, deleted, an EndpointSlice replaced, created, \
         deleted. Meanwhile the probe pod's own NetworkPolicy is toggled (allow the probe's \
         destination, allow elsewhere only), one change at a time: *time to verdict* is from \
         that API write to the probe's first connect with the new verdict. `status` (one \
         request on the agent socket, what `egress-agent status` sends) and `/metrics` (one \
         HTTP GET) are timed every 100 ms; the agent's CPU is utime + stime over the run \
         (`/proc/PID/stat`).\n\n\
         What differs from a cluster: no kubelet, scheduler or controller-manager (pods are \
         bound by `spec.nodeName`, their status written as a kubelet would), no container \
         runtime (the probe's cgroup is made by hand, the probe is a process in it), the \
         probe and its destination live in the API server's network namespace (the \
         destination an address of its loopback, whose local route makes the probe pod's \
         address the source), no Services beside the EndpointSlices, and the API server, \
         etcd, the load generator and the agent share the same two CPUs.\n\n\
         ![P6]({rel}p6.svg)\n\n\
         | figure | p50 (ms) | p99 (ms) | max (ms) | samples | target |\n\
         |---|---|---|---|---|---|",
        pods = count(size),
        policies = n("policies"),
        slices = n("slices"),
    );
    for (metric, what) in P6_LATENCIES {
        let (_, v) = values(samples, metric);
        let q = |q| percentile(&v, q).map_or_else(|| "–".to_owned(), num);
        let target = if metric == "verdict" {
            "–".to_owned()
        } else {
            format!("p99 < {} ms", num(P6_TARGET))
        };
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {} | {target} |",
            q(0.5),
            q(0.99),
            q(1.0),
            v.len()
        );
        if metric != "verdict" {
            if let Some(p99) = percentile(&v, 0.99) {
                summary.push(Row {
                    measure: format!("P6 {what} latency during churn, p99"),
                    target: format!("< {} ms", num(P6_TARGET)),
                    result: format!("{} ms", num(p99)),
                    met: p99 < P6_TARGET,
                });
            }
        }
    }
    md.push('\n');
    let get = |m| one(samples, m).map_or_else(|| "–".to_owned(), num);
    let whole = |m| one(samples, m).map_or_else(|| "–".to_owned(), |v| format!("{v:.0}"));
    let _ = writeln!(
        md,
        "{} changes per second over {} s ({} writes failed), {} applies by the agent; the \
         agent's CPU over the run: {} % of a core. {} of the `status` and `/metrics` requests \
         failed.\n",
        get("rate"),
        get("seconds"),
        whole("failed"),
        whole("applies"),
        get("cpu"),
        whole("probe_failed"),
    );
}

pub fn p6_plot(samples: &Samples, path: &Path) -> anyhow::Result<()> {
    let series = [("p50", 0.5), ("p99", 0.99)]
        .iter()
        .enumerate()
        .map(|(i, (name, q))| Bars {
            name: (*name).to_owned(),
            colour: if i == 0 {
                plotters::style::RGBColor(0x9e, 0xc5, 0xe8)
            } else {
                plot::colour("ours")
            },
            stats: P6_LATENCIES
                .iter()
                .map(|(metric, _)| {
                    let (_, v) = values(samples, metric);
                    percentile(&v, *q).and_then(|p| Stat::of(&[p], "ms".into()))
                })
                .collect(),
        })
        .collect();
    plot::draw(
        path,
        "P6: latencies under churn",
        &[Panel {
            title: "lower is better; log scale",
            y_label: "ms",
            groups: vec!["time to verdict".into(), "status".into(), "/metrics".into()],
            series,
            log: true,
            lines: false,
            line: Some(Line {
                label: format!("target {} ms (status, /metrics)", num(P6_TARGET)),
                value: P6_TARGET,
            }),
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
