// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The process exit codes of `pinvmm`, documented in README.md and `pinvmm --help`.

/// Exit codes. Stable: campaigns and CI scripts match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The guest ran and its result was verified.
    Ok = 0,
    /// The VMM itself failed (a host call it needed failed unexpectedly).
    VmmError = 1,
    /// Bad input: unknown option or value, bad size, unreadable file.
    BadInput = 2,
    /// This host cannot run it: no /dev/kvm, no userfaultfd, no io_uring, ...
    HostUnsupported = 3,
    /// The guest ran but failed: wrong checksum, non-zero status, crash.
    GuestFailed = 4,
    /// The VM was terminated because a long-term pin failed (as pKVM terminates it).
    PinTerminated = 5,
    /// The guest did not finish before --timeout.
    Timeout = 6,
    /// A campaign was interrupted (Ctrl-C, SIGTERM); `--resume` finishes it.
    Interrupted = 7,
    /// A campaign finished but a cell missed its `--expect` bound.
    ExpectationFailed = 8,
}

impl ExitCode {
    /// One line per code, for `--help` and README.
    pub const TABLE: &'static str = "\
Exit codes:
  0  guest ok (result verified)
  1  VMM error (a host call failed unexpectedly)
  2  bad input (option, value, size, file)
  3  host unsupported (no /dev/kvm, userfaultfd, io_uring, ...)
  4  guest failed (wrong result, non-zero status, crash)
  5  VM terminated by a failed long-term pin (pKVM behaviour)
  6  timeout (guest did not finish in --timeout)
  7  campaign interrupted (rerun with --resume)
  8  campaign done, but a cell missed its --expect bound";
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}
