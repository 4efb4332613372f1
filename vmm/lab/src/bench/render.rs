// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! How the bench writes its numbers.

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
