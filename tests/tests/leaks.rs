// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Nothing leaks: many VMs in one process, completed and terminated, and afterwards VmPin,
//! VmLck and the open file descriptors are back where they started and RSS is within allocator
//! noise. One test per process, run alone, so no other VM disturbs the counters.

mod common;

use common::{check_no_leak, ensure, kvm_test, tally};
use guest::Payload;
use libtest_mimic::{Arguments, Failed};
use vmm::host::ProcessCounters;
use vmm::inject::{InjectSpec, Site};
use vmm::{Backing, DrainPolicy, HostLimits, Outcome, Report, Stage2, VmConfig};

fn many_vms() -> Result<(), Failed> {
    let host = HostLimits::probe();
    // Warm-up VM: one-time allocations (signal handler, thread-locals) are not leaks.
    vmm::build(&VmConfig::new(
        Payload::Hello,
        4 << 20,
        host.default_placement(),
    ))
    .map_err(|e| e.to_string())?
    .run();
    let before = ProcessCounters::now();
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
                    let r = vmm::build(&c).map(|vm| Report::from(vm.run()));
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
                    // Each report's own count: the VM closed every descriptor it opened.
                    if let Ok(r) = &r {
                        let m = &r.memory;
                        ensure(m.open_fds_after == m.open_fds_before, || {
                            format!(
                                "the report counts {} open descriptors after the VM, {} before ({c:?})",
                                m.open_fds_after, m.open_fds_before
                            )
                        })?;
                    }
                }
            }
        }
    }
    tally::add(&tally::VMS, runs);
    tally::add(&tally::FAULTS, injected);
    let what = format!("{runs} VMs, {injected} pin failures injected");
    check_no_leak(&what, &before, &ProcessCounters::now())
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
