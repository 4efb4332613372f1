// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Statistics for termination rates: Wilson score intervals for one proportion, Newcombe's
//! hybrid-score interval for a difference of two, and Fisher's exact test. Hand-written because
//! they are a few lines each and no small, well-kept crate offers exactly these.

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval for `k` successes in `n` trials. (0, 1) when n = 0.
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt()) / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's method 10 interval for p1 - p2 (built from the two Wilson intervals).
pub fn newcombe_diff(k1: u64, n1: u64, k2: u64, n2: u64, z: f64) -> (f64, f64, f64) {
    let p1 = if n1 == 0 { 0.0 } else { k1 as f64 / n1 as f64 };
    let p2 = if n2 == 0 { 0.0 } else { k2 as f64 / n2 as f64 };
    let (l1, u1) = wilson(k1, n1, z);
    let (l2, u2) = wilson(k2, n2, z);
    let d = p1 - p2;
    let lo = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let hi = d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    (d, lo.max(-1.0), hi.min(1.0))
}

fn ln_factorial(n: u64) -> f64 {
    (1..=n).map(|i| (i as f64).ln()).sum()
}

/// Two-sided Fisher's exact test p-value for the 2x2 table [[a, b], [c, d]]: the sum of the
/// probabilities of all tables with the same margins that are no more likely than this one.
pub fn fisher_exact(a: u64, b: u64, c: u64, d: u64) -> f64 {
    let (r1, r2, c1) = (a + b, c + d, a + c);
    let n = r1 + r2;
    let base = ln_factorial(r1) + ln_factorial(r2) + ln_factorial(c1) + ln_factorial(n - c1)
        - ln_factorial(n);
    let prob = |x: u64| -> f64 {
        let (xa, xb, xc) = (x, r1 - x, c1 - x);
        let xd = r2 - xc;
        (base - ln_factorial(xa) - ln_factorial(xb) - ln_factorial(xc) - ln_factorial(xd)).exp()
    };
    let lo = c1.saturating_sub(r2);
    let hi = c1.min(r1);
    let p_obs = prob(a);
    let p: f64 = (lo..=hi)
        .map(prob)
        .filter(|&p| p <= p_obs * (1.0 + 1e-7))
        .sum();
    p.min(1.0)
}

/// The smallest rate a campaign of `n` runs with zero terminations can rule out (the Wilson
/// upper bound at 0/n): the "power" statement for "0 with an interval".
pub fn zero_upper_bound(n: u64) -> f64 {
    wilson(0, n, Z95).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn wilson_matches_published_values() {
        // Newcombe (1998), table I: 81/263 -> 0.2553..0.3662; 15/148 -> 0.0624..0.1605;
        // 0/10 -> 0..0.2775; 10/10 -> 0.7225..1.
        let (l, u) = wilson(81, 263, Z95);
        assert!(close(l, 0.2553, 5e-4) && close(u, 0.3662, 5e-4), "{l} {u}");
        let (l, u) = wilson(15, 148, Z95);
        assert!(close(l, 0.0624, 5e-4) && close(u, 0.1605, 5e-4), "{l} {u}");
        let (l, u) = wilson(0, 10, Z95);
        assert!(close(l, 0.0, 1e-12) && close(u, 0.2775, 5e-4), "{l} {u}");
        let (l, u) = wilson(10, 10, Z95);
        assert!(close(l, 0.7225, 5e-4) && close(u, 1.0, 1e-12), "{l} {u}");
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
        assert!(close(zero_upper_bound(100), 0.0370, 5e-4));
    }

    #[test]
    fn newcombe_matches_published_values() {
        // Newcombe (1998), table II, example (a): 56/70 - 48/80 -> 0.0524..0.3339.
        let (d, l, u) = newcombe_diff(56, 70, 48, 80, Z95);
        assert!(
            close(d, 0.2, 1e-9) && close(l, 0.0524, 5e-4) && close(u, 0.3339, 5e-4),
            "{d} {l} {u}"
        );
        // Example (h): 0/10 - 0/20 -> -0.1611..0.2775.
        let (_, l, u) = newcombe_diff(0, 10, 0, 20, Z95);
        assert!(close(l, -0.1611, 5e-4) && close(u, 0.2775, 5e-4), "{l} {u}");
    }

    #[test]
    fn fisher_matches_known_values() {
        // Fisher's tea tasting: [[3,1],[1,3]] -> 0.4857 (two-sided).
        assert!(close(fisher_exact(3, 1, 1, 3), 0.485_714, 1e-5));
        // [[10,0],[0,10]] -> 2/C(20,10) = 1.0825e-5.
        assert!(close(fisher_exact(10, 0, 0, 10), 1.082_509e-5, 1e-9));
        // Identical groups -> 1.
        assert!(close(fisher_exact(0, 100, 0, 100), 1.0, 1e-12));
        assert!(close(fisher_exact(5, 5, 5, 5), 1.0, 1e-9));
    }
}
