// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `InjectSpec::from_str` (`--inject SITE[@NTH][:ERRNO]`) and `InjectSpec::parse_pin_failure`
//! (`--inject-pin-failure N[:ERRNO]`) on arbitrary strings: never panic, whatever they accept
//! has nth >= 1 and a plausible errno, and an accepted spec prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::inject::{InjectSpec, Site};

fuzz_target!(|s: &str| {
    if let Ok(f) = s.parse::<InjectSpec>() {
        assert!(f.nth >= 1, "{s:?} -> {f:?}");
        assert!(f.errno > 0 && f.errno < 4096, "{s:?} -> {f:?}");
        assert_eq!(f.to_string().parse::<InjectSpec>(), Ok(f), "{s:?}");
    }
    if let Ok(f) = InjectSpec::parse_pin_failure(s) {
        assert!(f.site == Site::PinUpdate && f.nth >= 1, "{s:?} -> {f:?}");
        assert!(f.errno > 0 && f.errno < 4096, "{s:?} -> {f:?}");
    }
});
