// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `vmm::config::parse_size` on arbitrary strings: never panics, and every accepted size is a
//! plain number times 1, 1K, 1M or 1G.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(n) = vmm::config::parse_size(s) {
        let t = s.trim();
        let last = t.chars().last().expect("an accepted size is not empty");
        let (num, mult) = match last.to_ascii_uppercase() {
            'K' => (&t[..t.len() - 1], 1u64 << 10),
            'M' => (&t[..t.len() - 1], 1 << 20),
            'G' => (&t[..t.len() - 1], 1 << 30),
            _ => (t, 1),
        };
        let v: u64 = num.parse().expect("accepted number parses");
        assert_eq!(Some(n), v.checked_mul(mult), "{s:?}");
    }
});
