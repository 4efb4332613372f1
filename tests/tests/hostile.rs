// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Hostile guests (guest/src: `oob`, `garbage`, `flood`, `crash`, `spin`): each ends with a
//! report and its documented outcome, never a panic or a hang, and the host stays healthy:
//! after each, an ordinary memtouch VM still completes, and after all of them (several
//! rounds in this one process) VmPin, VmLck, open fds and RSS are back to their baseline.
//! Then the same guests through the `pinvmm` binary: exit code and the summary line a user
//! reads.
//!
//! One test thread: the leak check reads this process's own counters.

mod common;

use std::time::{Duration, Instant};

use common::{check_no_leak, ensure, kvm_test, pinvmm, tally};
use guest::Payload;
use libtest_mimic::{Arguments, Failed, Trial};
use vmm::control::VcpuOutcome;
use vmm::host::ProcessCounters;
use vmm::vm::CONSOLE_KEEP_BYTES;
use vmm::{Backing, HostLimits, Outcome, Report, VmConfig};

const MEM: u64 = 8 << 20;

/// A hang guard only: the slowest guest (`flood`, one exit per byte) takes ~10 s on a quiet
/// PVM host and several times that on a loaded one (its 60 s limit was hit at load 14-19).
const TIMEOUT: Duration = Duration::from_secs(600);

fn config(payload: Payload) -> VmConfig {
    let host = HostLimits::probe();
    let mut c = VmConfig::new(payload, MEM, host.default_placement());
    c.timeout = TIMEOUT;
    c
}

fn run(c: &VmConfig) -> Result<Report, Failed> {
    c.validate(&HostLimits::probe())
        .map_err(|e| format!("config: {e}"))?;
    tally::add(&tally::VMS, 1);
    let vm = vmm::build(c).map_err(|e| format!("build: {e}"))?;
    Ok(Report::from(vm.run()))
}

/// The outcome a hostile guest must get, and what its report must show.
fn check(p: Payload, r: &Report, took: Duration) -> Result<(), Failed> {
    let name = p.name();
    let v = &r.vcpus[0];
    let ctx = || format!("{name}: {:?} ({}): {:?}", r.outcome, r.summary, r.vcpus);
    match p {
        Payload::Oob => {
            ensure(r.outcome == Outcome::Completed && r.exit_code == 0, ctx)?;
            // Every read outside RAM returned all ones: nothing answered, no write was kept.
            ensure(v.result == u64::MAX, ctx)?;
            let first = v
                .exits
                .first_unmapped
                .ok_or("no unmapped access recorded")?;
            ensure(
                v.exits.unmapped >= 3
                    && first.bus == "mmio"
                    && first.addr == vmm::arch::RAM_START + MEM,
                ctx,
            )?;
            ensure(r.summary.contains("no device answers"), ctx)
        }
        Payload::Garbage => {
            ensure(r.outcome == Outcome::Completed && r.exit_code == 0, ctx)?;
            // The test device still reads back its magic after the garbage.
            ensure(v.result == u64::from(devices::testdev::MAGIC), ctx)?;
            ensure(v.bad_device_writes > 0 && v.exits.unmapped > 0, ctx)?;
            ensure(
                r.summary.contains("undefined test-device registers")
                    && r.summary.contains("no device answers"),
                ctx,
            )
        }
        Payload::Flood => {
            ensure(r.outcome == Outcome::Completed && r.exit_code == 0, ctx)?;
            // The first and last halves of the cap are kept, with a note between them.
            ensure(
                r.console_bytes == guest::FLOOD_BYTES
                    && r.console_truncated
                    && r.console.len() >= CONSOLE_KEEP_BYTES
                    && r.console.len() < CONSOLE_KEEP_BYTES + 128
                    && r.console.contains("not kept"),
                || {
                    format!(
                        "{name}: console {} bytes kept of {} (truncated: {})",
                        r.console.len(),
                        r.console_bytes,
                        r.console_truncated
                    )
                },
            )?;
            ensure(r.summary.contains("(truncated)"), ctx)
        }
        Payload::Crash => {
            ensure(r.outcome == Outcome::GuestFailed && r.exit_code == 4, ctx)?;
            ensure(matches!(v.outcome, VcpuOutcome::Crashed { .. }), ctx)?;
            // Reported by the exception vectors, long before the timeout.
            ensure(
                v.exception.is_some() && r.summary.contains("guest exception"),
                ctx,
            )
        }
        Payload::Spin => {
            ensure(r.outcome == Outcome::Timeout && r.exit_code == 6, ctx)?;
            // Ends at its timeout; a minute more is a hang guard only (teardown takes ms).
            ensure(took < r.config.timeout + Duration::from_secs(60), || {
                format!("{name}: took {took:?}")
            })
        }
        _ => Err(format!("{name} is not a hostile payload").into()),
    }
}

/// Runs a hostile guest, checks it, then checks the host still runs an ordinary VM.
fn hostile_then_healthy(p: Payload, backing: Backing, vcpus: u8) -> Result<(), Failed> {
    let mut c = config(p);
    (c.backing, c.vcpus) = (backing, vcpus);
    if p == Payload::Spin {
        c.timeout = Duration::from_millis(500);
    }
    let t = Instant::now();
    let r = run(&c)?;
    check(p, &r, t.elapsed())?;
    tally::add(&tally::HOSTILE, 1);
    let ok = run(&config(Payload::Memtouch))?;
    ensure(ok.outcome == Outcome::Completed, || {
        format!(
            "after {}: memtouch {:?}: {}",
            p.name(),
            ok.outcome,
            ok.summary
        )
    })
}

fn every_hostile_guest_ends_with_a_report_and_leaks_nothing() -> Result<(), Failed> {
    const ROUNDS: usize = 3;
    let mut baseline = None;
    for round in 0..ROUNDS {
        for p in Payload::HOSTILE {
            // The slow flood (one exit per byte) once; the rest with both backings.
            if p == Payload::Flood && round > 0 {
                continue;
            }
            hostile_then_healthy(p, Backing::Shmem, 1)?;
            if p != Payload::Flood {
                hostile_then_healthy(p, Backing::Anon, 1)?;
            }
        }
        hostile_then_healthy(Payload::Garbage, Backing::Shmem, 2)?;
        if round == 0 {
            baseline = Some(ProcessCounters::now());
        }
    }
    let before = baseline.expect("a round ran");
    let what = format!(
        "hostile: {} guests x {ROUNDS} rounds, after round 1 -> after round {ROUNDS}",
        Payload::HOSTILE.len()
    );
    check_no_leak(&what, &before, &ProcessCounters::now())
}

/// What a user sees: the exit code and the first line of `pinvmm run`.
fn cli_cases() -> Vec<Trial> {
    let cli = |guest: &'static str, code: i32, first_line: &'static [&'static str]| {
        kvm_test(&format!("cli::{guest}"), move || {
            // spin must time out (1 s); for the others the timeout is a hang guard only.
            let timeout = if guest == "spin" { "1" } else { "600" };
            let args = ["run", "--mem", "8M", "--guest", guest, "--timeout", timeout];
            let r = pinvmm(&args)?;
            tally::add(&tally::VMS, 1);
            let line = r.stdout.lines().next().unwrap_or_default();
            ensure(r.code == code && !r.stderr.contains("panicked"), || {
                format!(
                    "{guest}: exit {} (want {code}): {}{}",
                    r.code, r.stdout, r.stderr
                )
            })?;
            for needle in first_line {
                ensure(line.contains(needle), || {
                    format!("{guest}: first line lacks {needle:?}: {line}")
                })?;
            }
            let rep = r.report.ok_or("no JSON report")?;
            ensure(rep["exit_code"] == code, || format!("{}", rep["exit_code"]))
        })
    };
    vec![
        cli("oob", 0, &["OK", "no device answers", "write to GPA"]),
        cli("garbage", 0, &["OK", "undefined test-device registers"]),
        cli("crash", 4, &["GUEST FAILED", "Crashed", "guest exception"]),
        cli("spin", 6, &["TIMEOUT", "did not finish within 1 s"]),
    ]
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    common::announce();
    let mut trials = vec![kvm_test(
        "hostile::every_guest_ends_with_a_report_and_leaks_nothing",
        every_hostile_guest_ends_with_a_report_and_leaks_nothing,
    )];
    trials.extend(cli_cases());
    common::run_and_count("hostile", &args, trials)
}
