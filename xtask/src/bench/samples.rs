//! The raw samples `egress-bench` writes (its `samples.rs` is the other
//! half of this contract), and their summary statistics.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Sample {
    pub measure: String,
    pub metric: String,
    pub unit: String,
    pub variant: String,
    pub cidrs: usize,
    pub run: usize,
    pub value: f64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Meta {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub quick: bool,
    pub reps: usize,
    pub seconds_per_run: f64,
    pub cidr_counts: Vec<usize>,
    pub tools: Vec<String>,
    pub duration_s: f64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Samples {
    pub meta: Meta,
    pub samples: Vec<Sample>,
}

impl Samples {
    /// Writes the samples where [`Samples::read`] reads them.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).context("encoding the samples")?;
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Every (metric, variant, cidrs) of `measure`, summarised.
    pub fn stats(&self, measure: &str) -> Table {
        let mut values: BTreeMap<(String, String, usize), (String, Vec<f64>)> = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.measure == measure) {
            values
                .entry((s.metric.clone(), s.variant.clone(), s.cidrs))
                .or_insert_with(|| (s.unit.clone(), Vec::new()))
                .1
                .push(s.value);
        }
        Table(
            values
                .into_iter()
                .filter_map(|(key, (unit, v))| Some((key, Stat::of(&v, unit)?)))
                .collect(),
        )
    }
}

/// Summaries keyed by (metric, variant, cidrs).
#[derive(Debug, Default)]
pub struct Table(pub BTreeMap<(String, String, usize), Stat>);

impl Table {
    pub fn get(&self, metric: &str, variant: &str, cidrs: usize) -> Option<&Stat> {
        self.0.get(&(metric.to_owned(), variant.to_owned(), cidrs))
    }

    /// The CIDR counts present for `metric`, ascending.
    pub fn cidrs(&self, metric: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .0
            .keys()
            .filter(|(m, _, _)| m == metric)
            .map(|(_, _, n)| *n)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Median and spread of one figure's runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub q1: f64,
    pub q3: f64,
    pub n: usize,
    pub unit: String,
}

impl Stat {
    pub fn of(values: &[f64], unit: String) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Self {
            median: quantile(&v, 0.5),
            min: v[0],
            max: v[v.len() - 1],
            q1: quantile(&v, 0.25),
            q3: quantile(&v, 0.75),
            n: v.len(),
            unit,
        })
    }
}

/// Linear interpolation between closest ranks, on sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Stat::of(&[5.0, 1.0, 3.0, 2.0, 4.0], "x".into()).unwrap();
        assert_eq!(
            (s.median, s.min, s.max, s.q1, s.q3),
            (3.0, 1.0, 5.0, 2.0, 4.0)
        );
        let even = Stat::of(&[1.0, 2.0, 3.0, 4.0], "x".into()).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Stat::of(&[], "x".into()).is_none());
    }

    #[test]
    fn samples_group_by_metric_variant_and_cidrs() {
        let sample = |variant: &str, run, value| Sample {
            measure: "p2".into(),
            metric: "tcp_throughput".into(),
            unit: "Gbit/s".into(),
            variant: variant.into(),
            cidrs: 1000,
            run,
            value,
        };
        let samples = Samples {
            meta: Meta::default(),
            samples: vec![
                sample("ours", 0, 10.0),
                sample("ours", 1, 12.0),
                sample("none", 0, 20.0),
            ],
        };
        let table = samples.stats("p2");
        assert_eq!(
            table.get("tcp_throughput", "ours", 1000).unwrap().median,
            11.0
        );
        assert_eq!(table.get("tcp_throughput", "none", 1000).unwrap().n, 1);
        assert_eq!(table.cidrs("tcp_throughput"), vec![1000]);
        assert!(samples.stats("p1").0.is_empty());
    }
}
