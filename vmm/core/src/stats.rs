// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Latency histograms and their summary. A fixed log-linear histogram (64 sub-buckets per
//! power of two: percentiles within 0.8%, mean and max exact) of ~30 KiB, whatever the guest
//! size: recording on the fault path is a few instructions and never allocates, and the
//! VMM's memory does not grow with the guest (one sample per page did: 8 bytes per page and
//! histogram, 96 MiB for three of them on a 16 GiB guest).

use serde::Serialize;

/// Exact buckets below this many ns, then `SUB` buckets per power of two.
const SUB: usize = 64;
const SUB_BITS: u32 = SUB.trailing_zeros();
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// Recorded latencies in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    counts: Vec<u64>,
    n: u64,
    sum: u128,
    max: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
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

fn bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros(); // >= SUB_BITS
    let sub = (ns >> (e - SUB_BITS)) as usize & (SUB - 1);
    SUB + (e - SUB_BITS) as usize * SUB + sub
}

/// The middle of bucket `i` (exact below `SUB`).
fn value(i: usize) -> f64 {
    if i < SUB {
        return i as f64;
    }
    let e = ((i - SUB) / SUB) as u32 + SUB_BITS;
    let sub = ((i - SUB) % SUB) as u64;
    let width = 1u64 << (e - SUB_BITS);
    ((SUB as u64 + sub) * width) as f64 + (width as f64 - 1.0) / 2.0
}

impl Latencies {
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            n: 0,
            sum: 0,
            max: 0,
        }
    }

    /// Same as [`Self::new`]: the histogram's size does not depend on the sample count.
    pub fn with_capacity(_n: usize) -> Self {
        Self::new()
    }

    pub fn record(&mut self, ns: u64) {
        self.counts[bucket(ns)] += 1;
        self.n += 1;
        self.sum += u128::from(ns);
        self.max = self.max.max(ns);
    }

    pub fn merge(&mut self, other: &Latencies) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    pub fn len(&self) -> usize {
        self.n as usize
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Nearest-rank percentiles (the middle of the bucket holding the rank, at most the max).
    pub fn summary(&self) -> LatencySummary {
        if self.n == 0 {
            return LatencySummary::default();
        }
        let rank = |p: f64| {
            let r = ((p * self.n as f64).ceil() as u64).clamp(1, self.n);
            let mut seen = 0;
            for (i, &c) in self.counts.iter().enumerate() {
                seen += c;
                if seen >= r {
                    return value(i).min(self.max as f64) / 1e3;
                }
            }
            self.max as f64 / 1e3
        };
        LatencySummary {
            count: self.n,
            mean_us: self.sum as f64 / self.n as f64 / 1e3,
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            max_us: self.max as f64 / 1e3,
        }
    }
}

/// Median of `xs` (mean of the two middle values for an even count); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
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
        assert_eq!((s.count, s.max_us), (100, 100.0));
        let near = |a: f64, b: f64| (a - b).abs() <= b * 0.008;
        assert!(near(s.p50_us, 50.0) && near(s.p99_us, 99.0), "{s:?}");
        assert!((s.mean_us - 50.5).abs() < 1e-9);
        assert_eq!(Latencies::default().summary(), LatencySummary::default());
    }

    #[test]
    fn buckets_are_ordered_and_tight() {
        let tight = |ns: u64| {
            let (b, v) = (bucket(ns), value(bucket(ns)));
            assert!(b < BUCKETS && (v - ns as f64).abs() <= ns as f64 / SUB as f64 + 0.5);
            b
        };
        let mut last = 0;
        for ns in 0..200_000u64 {
            let b = tight(ns);
            assert!(b >= last, "bucket({ns}) went back");
            last = b;
        }
        for ns in (1..64).map(|e| 1u64 << e).chain([u64::MAX]) {
            tight(ns);
        }
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record(10);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!((a.len(), a.summary().max_us), (2, 1000.0));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
