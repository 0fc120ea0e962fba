//! The measures against a real kube-apiserver (`cargo xtask
//! k8s-pod-memory`'s setup: etcd and the API server in a network namespace,
//! pods bound to fake nodes):
//!
//! - P5's slim Pod cache (issue 11): the memory of the agent's own Pod
//!   watch, samples of measure `p5cache`;
//! - the real agent in Kubernetes mode (`egress-k8s-churn`): its RSS at N
//!   pods and M NetworkPolicies (`p5k8s`), P3 from an API watch event
//!   (`p3`, variant `ours-api`) and the churn of P6 (`p6`).
//!
//! The `cidrs` field of these samples holds the pod count (P3's: the CIDR
//! count): it is each measure's size axis, as CIDRs are the others'.

use std::path::Path;

use super::samples::{Sample, Samples};
use crate::k8s::pod_memory::{self, Session};

/// The cluster of a run: issue 14's for a full one; a small one for
/// `--quick` (the same path end to end, in about a minute).
pub struct Cluster {
    pub pods: usize,
    pub policies: usize,
    pub slices: usize,
    /// CIDRs of the API-event P3.
    pub p3_cidrs: usize,
    /// Changes per second, and for how long.
    pub rate: f64,
    pub seconds: f64,
}

pub const FULL: Cluster = Cluster {
    pods: 10_000,
    policies: 1_000,
    slices: 200,
    p3_cidrs: 100_000,
    rate: 100.0,
    seconds: 60.0,
};
pub const QUICK: Cluster = Cluster {
    pods: 500,
    policies: 50,
    slices: 20,
    p3_cidrs: 10_000,
    rate: 100.0,
    seconds: 5.0,
};

/// Which of the measures to take.
pub struct Wanted {
    pub cache: bool,
    pub agent: bool,
    pub p3: bool,
    pub p6: bool,
}

/// Measures with the release build. `Ok(None)` when this machine cannot
/// (no API server binary yet): the report then has none of these figures.
pub fn measure(
    cluster: &Cluster,
    wanted: &Wanted,
    scratch: &Path,
) -> anyhow::Result<Option<Vec<Sample>>> {
    if let Some(why) = pod_memory::missing() {
        println!("bench: the API server measures (P5 at 10k pods, P3 through the API, P6 churn) skipped: {why}");
        return Ok(None);
    }
    let out = scratch.join("churn-samples.json");
    let mut args = vec![
        format!("--policies={}", cluster.policies),
        format!("--slices={}", cluster.slices),
        format!("--p3-cidrs={}", cluster.p3_cidrs),
        format!("--rate={}", cluster.rate),
        format!("--seconds={}", cluster.seconds),
    ];
    if !wanted.p3 {
        args.push("--skip-p3".into());
    }
    if !wanted.p6 {
        args.push("--skip-p6".into());
    }
    let lines = pod_memory::measure(&Session {
        pods: cluster.pods,
        release: true,
        compare: false,
        inventory: false,
        churn: wanted.agent.then(|| (args, out.clone())),
    })?;
    let mut samples = Vec::new();
    if wanted.cache {
        let cache = parse(&lines);
        if cache.is_empty() {
            anyhow::bail!("egress-k8s-mem printed no `slim cache:` line");
        }
        samples.extend(cache);
    }
    if wanted.agent {
        let text = std::fs::read_to_string(&out)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", out.display()))?;
        let agent: Vec<Sample> = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("parsing {}: {e}", out.display()))?;
        samples.extend(agent);
    }
    Ok(Some(samples))
}

/// Samples taken before the slim cache moved under P5 called it `p6`.
pub fn migrate(samples: &mut Samples) {
    let cache_metrics = ["listed", "heap", "heap_per_pod", "rss"];
    for s in &mut samples.samples {
        if s.measure == "p6" && cache_metrics.contains(&s.metric.as_str()) {
            s.measure = "p5cache".into();
        }
    }
}

/// The samples in `egress-k8s-mem measure --mode slim`'s lines:
/// `slim cache: N pods listed in 1.2s; live heap +10.1 MiB (1061 B/pod);
/// RSS +43.5 MiB (4561 B/pod)`.
pub fn parse(lines: &[String]) -> Vec<Sample> {
    let Some(line) = lines.iter().find_map(|l| l.strip_prefix("slim cache: ")) else {
        return Vec::new();
    };
    let number = |after: &str, until: &str| -> Option<f64> {
        let rest = &line[line.find(after)? + after.len()..];
        rest[..rest.find(until)?].trim().parse().ok()
    };
    let Some(pods) = number("", " pods") else {
        return Vec::new();
    };
    let sample = |metric: &str, unit: &str, value: Option<f64>| {
        value.map(|value| Sample {
            measure: "p5cache".into(),
            metric: metric.into(),
            unit: unit.into(),
            variant: "ours".into(),
            cidrs: pods as usize,
            run: 0,
            value,
        })
    };
    [
        sample("listed", "s", number("listed in ", "s;")),
        sample("heap", "MiB", number("live heap +", " MiB")),
        sample("heap_per_pod", "B", number("MiB (", " B/pod)")),
        sample("rss", "MiB", number("RSS +", " MiB")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slim_cache_line_becomes_samples() {
        let lines = [
            "pods created: 10000".to_owned(),
            "slim cache: 10000 pods listed in 3.4s; live heap +10.1 MiB (1061 B/pod); RSS +43.5 MiB (4561 B/pod)".to_owned(),
        ];
        let got: Vec<(String, f64)> = parse(&lines)
            .into_iter()
            .map(|s| {
                assert_eq!((s.measure.as_str(), s.cidrs), ("p5cache", 10_000));
                (s.metric, s.value)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("listed".to_owned(), 3.4),
                ("heap".to_owned(), 10.1),
                ("heap_per_pod".to_owned(), 1061.0),
                ("rss".to_owned(), 43.5),
            ]
        );
        assert!(parse(&["nothing".to_owned()]).is_empty());
    }
}
