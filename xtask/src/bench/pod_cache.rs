//! P6: the memory of the agent's slim Pod cache (issue 11), measured by
//! `cargo xtask k8s-pod-memory`'s code against a real kube-apiserver, and
//! turned into samples of measure `p6` (the `cidrs` field holds the pod
//! count: it is the measure's size axis, as CIDRs are the others').

use super::samples::Sample;
use crate::k8s::pod_memory::{self, Session};

/// Pods of a full run (issue 11's figure) and of a quick one (the same
/// path end to end, in well under a minute).
pub const FULL_PODS: usize = 10_000;
pub const QUICK_PODS: usize = 500;

/// Measures `pods` pods with the release build. `Ok(None)` when this
/// machine cannot (no API server binary yet): the report then has no P6.
pub fn measure(pods: usize) -> anyhow::Result<Option<Vec<Sample>>> {
    if let Some(why) = pod_memory::missing() {
        println!("bench: P6 (slim Pod cache) skipped: {why}");
        return Ok(None);
    }
    let lines = pod_memory::measure(&Session {
        pods,
        release: true,
        compare: false,
        inventory: false,
    })?;
    let samples = parse(&lines);
    if samples.is_empty() {
        anyhow::bail!("egress-k8s-mem printed no `slim cache:` line");
    }
    Ok(Some(samples))
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
            measure: "p6".into(),
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
                assert_eq!((s.measure.as_str(), s.cidrs), ("p6", 10_000));
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
