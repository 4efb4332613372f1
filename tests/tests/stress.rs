// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm stress` in the default suite, counted in VMs, not seconds (a loaded host gets the
//! same coverage, later; no test depends on how fast the host is):
//!
//! - the short leak run: 2 VMs of each policy x backing cell, twice as many at a time as
//!   there are CPUs, then no failure and nothing leaked (process: VmPin, VmLck, fds, RSS; host:
//!   MemAvailable, Shmem, Mlocked). 16 MiB guests; the long run with 256 MiB guests is in
//!   docs/RELIABILITY.md;
//! - the multi-vCPU matrix: every payload under every policy at 1, 2 and 4 vCPUs, 20 runs a
//!   cell, each judged by what its payload must do (memtouch, hello, oob and garbage complete,
//!   hello with its line exactly once; crash reports its exception on every vCPU; spin times
//!   out), 0 failures. `flood` (256 KiB on the serial port, ~10 s a VM on a PVM host) runs once
//!   per vCPU count here; every policy x 20 runs of it is a `pinvmm stress` run.

mod common;

use common::{CliRun, ensure, kvm_test, pinvmm, tally};
use libtest_mimic::{Arguments, Failed};

/// Runs `pinvmm stress ARGS --quiet --json -` and returns its summary.
fn stress(args: &[&str]) -> Result<(CliRun, serde_json::Value), Failed> {
    let mut a = vec!["stress"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--quiet", "--json", "-"]);
    let r = pinvmm(&a)?;
    let s: serde_json::Value = serde_json::from_str(&r.stdout)
        .map_err(|e| format!("stress JSON: {e}: {}{}", r.stdout, r.stderr))?;
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    tally::add(&tally::VMS, n("vms"));
    // Process: VmPin, VmLck, fds, RSS; host: MemAvailable, Shmem, Mlocked.
    tally::add(&tally::LEAK_CHECKS, 7);
    let leaks = s["leaks"].as_array().map_or(0, Vec::len) as u64;
    tally::add(&tally::LEAKS, leaks);
    eprintln!(
        "stress {args:?}: {} VMs ({} at a time) in {:.0} s, {} failed, leaks found: {leaks}",
        n("vms"),
        n("parallel"),
        s["wall_s"].as_f64().unwrap_or(0.0),
        n("failed")
    );
    ensure(r.code == 0 && s["ok"] == true, || {
        format!("exit {}: {}\n{}", r.code, r.stderr, r.stdout)
    })?;
    Ok((r, s))
}

/// Every cell ran exactly `runs` VMs and each did what its payload must.
fn every_cell(s: &serde_json::Value, cells: usize, runs: u64) -> Result<(), Failed> {
    let c = s["cells"].as_array().ok_or("no cells")?;
    ensure(
        c.len() == cells
            && c.iter().all(|c| {
                c["vms"].as_u64() == Some(runs)
                    && c["completed"].as_u64().unwrap_or(0) + c["terminated"].as_u64().unwrap_or(0)
                        == runs
            }),
        || format!("want {cells} cells of {runs} VMs, each as expected: {c:?}"),
    )
}

fn main() {
    let mut args = Arguments::from_args();
    // One stress at a time: each fills the CPUs, and each checks the host's memory.
    args.test_threads = Some(1);
    common::announce();
    let trials = vec![
        kvm_test("stress::short_run_no_failure_no_leak", || {
            let (_, s) = stress(&["--runs", "2", "--mem", "16M"])?;
            every_cell(&s, 8, 2)?;
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            ensure(
                n("max_running") == n("parallel") && n("parallel") >= 2,
                || format!("max running {} of {}", n("max_running"), n("parallel")),
            )
        }),
        kvm_test(
            "stress::every_payload_every_policy_1_2_4_vcpus_20_runs",
            || {
                let (_, s) = stress(&[
                    "--payloads",
                    "memtouch,hello,crash,oob,garbage,spin",
                    "--vcpus",
                    "1,2,4",
                    "--runs",
                    "20",
                    "--mem",
                    "2M",
                    "--backings",
                    "shmem",
                ])?;
                every_cell(&s, 6 * 3 * 4, 20)
            },
        ),
        // flood is one exit per byte (~10 s a VM in a quiet release build, 566 s for 12 debug
        // VMs at load 17): once per vCPU count here, with a long per-VM hang guard; the policy
        // does not touch its path (the console). Every policy x 20 runs is a stress run.
        kvm_test("stress::flood_1_2_4_vcpus", || {
            let (_, s) = stress(&[
                "--payloads",
                "flood",
                "--vcpus",
                "1,2,4",
                "--runs",
                "1",
                "--mem",
                "2M",
                "--backings",
                "shmem",
                "--policies",
                "mlock-drain",
                "--vm-timeout",
                "3600",
            ])?;
            every_cell(&s, 3, 1)
        }),
    ];
    common::run_and_count("stress", &args, trials)
}
