// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The short `pinvmm stress`: 12 s of starting VMs, twice as many at a time as there are
//! CPUs, every policy x backing in turn, then no failure and nothing leaked (process: VmPin,
//! VmLck, fds, RSS; host: MemAvailable, Shmem, Mlocked). 16 MiB guests keep it short; the
//! long run with 256 MiB guests is recorded in docs/RELIABILITY.md.

mod common;

use common::{ensure, kvm_test, pinvmm, tally};
use libtest_mimic::Arguments;

fn main() {
    let args = Arguments::from_args();
    common::announce();
    let trials = vec![kvm_test("stress::short_run_no_failure_no_leak", || {
        let r = pinvmm(&[
            "stress",
            "--duration",
            "12s",
            "--mem",
            "16M",
            "--quiet",
            "--json",
            "-",
        ])?;
        let s: serde_json::Value = serde_json::from_str(&r.stdout)
            .map_err(|e| format!("stress JSON: {e}: {}{}", r.stdout, r.stderr))?;
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        tally::add(&tally::VMS, n("vms"));
        // Process: VmPin, VmLck, fds, RSS; host: MemAvailable, Shmem, Mlocked.
        tally::add(&tally::LEAK_CHECKS, 7);
        let leaks = s["leaks"].as_array().map_or(0, Vec::len) as u64;
        tally::add(&tally::LEAKS, leaks);
        eprintln!(
            "stress: {} VMs ({} at a time), {} failed, leaks found: {leaks}",
            n("vms"),
            n("parallel"),
            n("failed")
        );
        ensure(r.code == 0 && s["ok"] == true, || {
            format!("exit {}: {}\n{}", r.code, r.stderr, r.stdout)
        })?;
        let cells = s["cells"].as_array().ok_or("no cells")?;
        ensure(
            cells.len() == 8 && cells.iter().all(|c| c["completed"].as_u64() > Some(0)),
            || format!("not every policy x backing completed a VM: {cells:?}"),
        )?;
        ensure(
            n("max_running") == n("parallel") && n("parallel") >= 2,
            || format!("max running {} of {}", n("max_running"), n("parallel")),
        )
    })];
    common::run_and_count("stress", &args, trials)
}
