// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Latency samples and their summary. Samples are preallocated (one per guest page at most),
//! so recording on the fault path never allocates.

use serde::Serialize;

/// Recorded latencies in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<u64>,
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            samples: Vec::with_capacity(n),
        }
    }

    pub fn record(&mut self, ns: u64) {
        self.samples.push(ns);
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.samples.extend_from_slice(&other.samples);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Nearest-rank percentiles.
    pub fn summary(&self) -> LatencySummary {
        if self.samples.is_empty() {
            return LatencySummary::default();
        }
        let mut s = self.samples.clone();
        s.sort_unstable();
        let rank =
            |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1] as f64 / 1e3;
        let sum: u128 = s.iter().map(|&v| v as u128).sum();
        LatencySummary {
            count: s.len() as u64,
            mean_us: sum as f64 / s.len() as f64 / 1e3,
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            max_us: *s.last().expect("non-empty") as f64 / 1e3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::with_capacity(100);
        for v in 1..=100u64 {
            l.record(v * 1000);
        }
        let s = l.summary();
        assert_eq!(
            (s.count, s.p50_us, s.p99_us, s.max_us),
            (100, 50.0, 99.0, 100.0)
        );
        assert!((s.mean_us - 50.5).abs() < 1e-9);
        assert_eq!(Latencies::default().summary(), LatencySummary::default());
    }
}
