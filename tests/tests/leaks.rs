// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Nothing leaks: many VMs in one process, completed and terminated, and afterwards VmPin,
//! VmLck and the open file descriptors are back where they started. One test per process,
//! run alone, so no other VM disturbs the counters.

mod common;

use common::{ensure, kvm_test, tally};
use guest::Payload;
use libtest_mimic::{Arguments, Failed};
use vmm::hostinfo::status_kb;
use vmm::inject::{InjectSpec, Site};
use vmm::{Backing, DrainPolicy, HostLimits, Outcome, Stage2, VmConfig};

fn snapshot() -> (u64, u64, usize) {
    (
        status_kb("VmPin").unwrap_or(0),
        status_kb("VmLck").unwrap_or(0),
        vmm::sys::open_fds(),
    )
}

fn many_vms() -> Result<(), Failed> {
    let host = HostLimits::probe();
    // Warm-up VM: one-time allocations (signal handler, thread-locals) are not leaks.
    vmm::vm::run(&VmConfig::new(
        Payload::Hello,
        4 << 20,
        host.default_placement(),
    ))
    .map_err(|e| e.to_string())?;
    let before = snapshot();
    let mut runs = 0;
    let mut injected = 0;
    for round in 0..3 {
        for backing in [Backing::Shmem, Backing::Anon] {
            for policy in DrainPolicy::ALL {
                for inject in [
                    None,
                    Some(InjectSpec::new(Site::PinUpdate, 30 + round, libc::ENOMEM)),
                ] {
                    let mut c = VmConfig::new(Payload::Memtouch, 8 << 20, host.default_placement());
                    (c.backing, c.policy, c.inject) =
                        (backing, policy, inject.into_iter().collect());
                    if policy == DrainPolicy::Retry && inject.is_some() {
                        c.stage2 = Stage2::Eager; // eager pins fail hard: another exit path
                    }
                    let r = vmm::vm::run(&c);
                    runs += 1;
                    injected += u64::from(inject.is_some());
                    match (&r, inject) {
                        (Ok(r), None) => ensure(r.outcome == Outcome::Completed, || {
                            format!("{:?}", r.outcome)
                        })?,
                        (Ok(r), Some(_)) => ensure(r.outcome == Outcome::Terminated, || {
                            format!("{:?}", r.outcome)
                        })?,
                        (Err(_), Some(_)) if c.stage2 == Stage2::Eager => {}
                        (Err(e), _) => return Err(format!("run failed: {e}").into()),
                    }
                }
            }
        }
    }
    let after = snapshot();
    let leaks = u64::from(after.0 != before.0)
        + u64::from(after.1 != before.1)
        + u64::from(after.2 != before.2);
    tally::add(&tally::VMS, runs);
    tally::add(&tally::FAULTS, injected);
    tally::add(&tally::LEAK_CHECKS, 3);
    tally::add(&tally::LEAKS, leaks);
    eprintln!(
        "VMs run: {runs}, pin failures injected: {injected}, leaks found: {leaks} (VmPin {} -> {} kB, VmLck {} -> {} kB, fds {} -> {})",
        before.0, after.0, before.1, after.1, before.2, after.2
    );
    ensure(leaks == 0, || {
        format!("leak: before {before:?} after {after:?}")
    })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    common::announce();
    common::run_and_count(
        "leaks",
        &args,
        vec![kvm_test("leaks::many_vms_leave_nothing_behind", many_vms)],
    )
}
