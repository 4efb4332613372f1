// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Helpers every section of the bench uses: how it writes µs, percentiles.

/// µs with the digits that matter (2 MiB rows go down to hundredths of a µs per page).
pub fn us(x: f64) -> String {
    if x < 1.0 {
        format!("{x:.3}")
    } else if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

pub(super) fn pct(xs: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = xs.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}
