// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `Expectation::parse_list` (`campaign --expect none>0,mlock-drain==0`) on arbitrary
//! strings: never panics, accepted bounds are rates in [0, 1] with a normalised operator and
//! a non-empty policy, and `holds` never panics on any rate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lab::campaign::summary::Expectation;

fuzz_target!(|s: &str| {
    if let Ok(list) = Expectation::parse_list(s) {
        for e in &list {
            assert!(!e.policy.is_empty(), "{s:?} -> {e:?}");
            assert!((0.0..=1.0).contains(&e.value), "{s:?} -> {e:?}");
            assert!(
                ["==", "!=", ">=", "<=", ">", "<"].contains(&e.op.as_str()),
                "{s:?} -> {e:?}"
            );
            for r in [0.0, 0.5, 1.0, e.value, f64::NAN] {
                let _ = e.holds(r);
            }
        }
    }
});
