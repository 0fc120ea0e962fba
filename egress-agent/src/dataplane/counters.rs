//! Verdict counters: how many times each program decided what, and why.

use egress_common::Counter;

/// A snapshot of the `VERDICTS` map, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    counts: [u64; Counter::COUNT as usize],
}

impl VerdictCounts {
    pub(super) fn from_counts(counts: [u64; Counter::COUNT as usize]) -> Self {
        Self { counts }
    }

    /// How many verdicts of this kind the programs have returned since load.
    pub fn get(&self, counter: Counter) -> u64 {
        self.counts[counter.index() as usize]
    }

    /// Every counter with its value, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c, self.get(c)))
    }
}
