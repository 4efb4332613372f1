// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Loud skips for tests whose prerequisite this host lacks (README: "skipped loudly ... never
//! as passed"). A test that cannot check anything here calls [`skip`] and returns; where the
//! environment says the prerequisite must be there (`PINVMM_REQUIRE_*`, set by .ci/run), the
//! skip is a failure instead, so CI never counts a test that checked nothing as a pass.

use std::fmt::Display;

/// What a test needs from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// /dev/kvm, userfaultfd (`PINVMM_REQUIRE_KVM`, set by .ci/run where /dev/kvm exists).
    Kvm,
    /// Root-only views of memory: /proc/kpageflags, PFNs in /proc/self/pagemap
    /// (`PINVMM_REQUIRE_ROOT`, set by .ci/run when it runs as root).
    Root,
    /// Transparent huge pages in the host kernel (`PINVMM_REQUIRE_THP`, set by .ci/run: every
    /// Debian kernel has them; the small ci/kernels/ board kernels do not).
    Thp,
}

impl Need {
    /// The environment variable that turns a skip into a failure.
    pub fn var(self) -> &'static str {
        match self {
            Need::Kvm => "PINVMM_REQUIRE_KVM",
            Need::Root => "PINVMM_REQUIRE_ROOT",
            Need::Thp => "PINVMM_REQUIRE_THP",
        }
    }

    /// Whether the environment demands it.
    pub fn required(self) -> bool {
        std::env::var(self.var()).is_ok_and(|v| v == "1")
    }
}

/// Skips `test` loudly because `why`, or panics (fails the test) when `need` is required here.
#[track_caller]
pub fn skip(test: &str, need: Need, why: impl Display) {
    assert!(
        !need.required(),
        "{test}: {why}, but {}=1 requires it: a test that checks nothing must not pass",
        need.var()
    );
    eprintln!(
        "!!! SKIPPED {test}: {why} (set {}=1 to make this a failure)",
        need.var()
    );
}
