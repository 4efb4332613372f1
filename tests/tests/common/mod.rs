// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Shared helpers of pinvmm's integration tests.
//!
//! Tests that need /dev/kvm are *skipped loudly* where it is missing: they print why and are
//! counted as "ignored" by the harness, never as passed. With `PINVMM_REQUIRE_KVM=1` (set by
//! .ci/run on hosts that have /dev/kvm) a missing or unusable /dev/kvm fails them instead.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use libtest_mimic::{Completion, Failed, Trial};

/// Why KVM tests cannot run here, if they cannot.
pub fn kvm_missing() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("cannot open /dev/kvm: {e}")),
    }
}

pub fn kvm_required() -> bool {
    std::env::var("PINVMM_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

/// Prints a banner when KVM tests will be skipped.
pub fn announce() {
    if let Some(why) = kvm_missing() {
        if kvm_required() {
            eprintln!("!!! PINVMM_REQUIRE_KVM=1 but {why}: every KVM test will FAIL");
        } else {
            eprintln!(
                "!!! SKIPPING every KVM test: {why}. They are reported as ignored, not passed."
            );
        }
    }
}

/// A test that runs real VMs.
pub fn kvm_test(name: &str, f: impl FnOnce() -> Result<(), Failed> + Send + 'static) -> Trial {
    let n = name.to_owned();
    Trial::ignorable_test(name, move || {
        if let Some(why) = kvm_missing() {
            if kvm_required() {
                return Err(format!(
                    "{n}: /dev/kvm is required here (PINVMM_REQUIRE_KVM=1) but {why}"
                )
                .into());
            }
            eprintln!("SKIPPED {n}: {why}");
            return Ok(Completion::ignored_with(format!("no KVM: {why}")));
        }
        f().map(|()| Completion::Completed)
    })
    .with_kind("kvm")
}

/// A test that needs no KVM.
pub fn plain_test(name: &str, f: impl FnOnce() -> Result<(), Failed> + Send + 'static) -> Trial {
    Trial::test(name, f)
}

/// The pinvmm binary built next to this test executable.
pub fn pinvmm_bin() -> Result<PathBuf, Failed> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or("unexpected test executable location")?;
    let bin = dir.join("pinvmm");
    if !bin.exists() {
        return Err(format!(
            "{} does not exist: run `cargo build` (or `cargo test --workspace`) first",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// Output of one pinvmm invocation.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub report: Option<serde_json::Value>,
}

/// Runs `pinvmm ARGS --json FILE` (for `run`) and collects everything.
pub fn pinvmm(args: &[&str]) -> Result<CliRun, Failed> {
    let dir = std::env::temp_dir().join(format!("pinvmm-test-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("tempdir: {e}"))?;
    let json = dir.join("report.json");
    let mut cmd = Command::new(pinvmm_bin()?);
    cmd.args(args);
    if args.first() == Some(&"run") && !args.contains(&"--json") {
        cmd.arg("--json").arg(&json);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run pinvmm: {e}"))?;
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    })
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Fails with a message unless `cond`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(msg().into()) }
}

/// What a reliability test binary tried, printed after its run by [`run_and_count`] (the
/// README test command must show these counts; cargo passes a harness=false binary's stderr
/// straight through).
pub mod tally {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Bad inputs fed to pinvmm (each rejected with exit 2 and a message naming it).
    pub static INPUTS: AtomicU64 = AtomicU64::new(0);
    /// Host-call failures injected that fired (`--inject`).
    pub static FAULTS: AtomicU64 = AtomicU64::new(0);
    /// Hostile guests run.
    pub static HOSTILE: AtomicU64 = AtomicU64::new(0);
    /// VMs run.
    pub static VMS: AtomicU64 = AtomicU64::new(0);
    /// Leak checks made, and leaks found (VmPin, VmLck, fds, RSS, MemAvailable).
    pub static LEAK_CHECKS: AtomicU64 = AtomicU64::new(0);
    pub static LEAKS: AtomicU64 = AtomicU64::new(0);

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn line(binary: &str) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "[counts] {binary}: inputs tried {}, faults injected {}, hostile guests {}, VMs run {}, leak checks {}, leaks found {}",
            g(&INPUTS),
            g(&FAULTS),
            g(&HOSTILE),
            g(&VMS),
            g(&LEAK_CHECKS),
            g(&LEAKS)
        )
    }
}

/// RSS may move by allocator noise (freed memory kept for reuse), never by a VM's memory: the
/// leak tests' VMs have 8 MiB of guest memory each and resolver tables of a few hundred KiB.
pub const RSS_SLACK_KB: u64 = 2048;

/// The leak check of the tests: `after` against `before` (VmPin, VmLck and fds exactly back,
/// RSS within [`RSS_SLACK_KB`]), tallied and printed as `what: ...; leaks found: N`.
pub fn check_no_leak(
    what: &str,
    before: &vmm::host::ProcessCounters,
    after: &vmm::host::ProcessCounters,
) -> Result<(), Failed> {
    let leaks = after.leaks_since(before, RSS_SLACK_KB);
    tally::add(&tally::LEAK_CHECKS, before.named().len() as u64);
    tally::add(&tally::LEAKS, leaks.len() as u64);
    eprintln!(
        "{what}: {}; leaks found: {}",
        after.change_from(before),
        leaks.len()
    );
    ensure(leaks.is_empty(), || {
        format!("{what}: leaked {leaks:?}: {}", after.change_from(before))
    })
}

/// Runs the trials, prints the binary's counts line, and exits with the harness's status.
pub fn run_and_count(binary: &str, args: &libtest_mimic::Arguments, trials: Vec<Trial>) -> ! {
    let conclusion = libtest_mimic::run(args, trials);
    eprintln!("{}", tally::line(binary));
    conclusion.exit()
}
