// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `InjectPinFailure::from_str` (`--inject-pin-failure N[:ERRNO]`) on arbitrary strings:
//! never panics, and whatever it accepts has nth >= 1 and a plausible errno.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::config::InjectPinFailure;

fuzz_target!(|s: &str| {
    if let Ok(f) = s.parse::<InjectPinFailure>() {
        assert!(f.nth >= 1, "{s:?} -> {f:?}");
        assert!(f.errno > 0 && f.errno < 4096, "{s:?} -> {f:?}");
    }
});
