// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Real VMs on /dev/kvm: every policy × backing × fault-in order, the stage-2 baselines, the
//! payloads, multi-vCPU, and the pin-failure termination path.

mod common;

use common::{ensure, kvm_test};
use guest::Payload;
use libtest_mimic::{Arguments, Failed, Trial};
use vmm::CpuPlacement;
use vmm::control::VcpuOutcome;
use vmm::host::hugepages::{HUGE_PAGE_SIZE, HostSetting};
use vmm::inject::{InjectSpec, Site};
use vmm::{Backing, DrainPolicy, FaultIn, HostLimits, Outcome, Report, Stage2, VmConfig};

const MEM: u64 = 16 << 20;

fn config(payload: Payload) -> VmConfig {
    let host = HostLimits::probe();
    let mut c = VmConfig::new(payload, MEM, host.default_placement());
    // A hang guard only: a 16 MiB VM takes well under a second on a quiet host, but
    // lru-add-drain's all-CPU drain per page took over 60 s at load 13-17 on 2 CPUs.
    c.timeout = std::time::Duration::from_secs(900);
    c
}

fn run(c: &VmConfig) -> Result<Report, Failed> {
    c.validate(&HostLimits::probe())
        .map_err(|e| format!("config: {e}"))?;
    let vm = vmm::build(c).map_err(|e| format!("build: {e}"))?;
    Ok(Report::from(vm.run()))
}

/// A memtouch VM completed, its checksum verified, and every fault was resolved by one pin.
fn check_memtouch_ok(r: &Report) -> Result<(), Failed> {
    ensure(r.outcome == Outcome::Completed, || {
        format!("outcome {:?}: {}", r.outcome, r.summary)
    })?;
    let touched: u64 = r.vcpus.iter().map(|v| v.touched_pages).sum();
    ensure(
        touched > 0 && r.host_check_pages == touched && r.host_check_bad_pages == 0,
        || {
            format!(
                "host check: {} of {} pages bad (touched {touched})",
                r.host_check_bad_pages, r.host_check_pages
            )
        },
    )?;
    for v in &r.vcpus {
        ensure(v.expected == Some(v.result), || {
            format!("vCPU {} checksum {:#x} != {:?}", v.id, v.result, v.expected)
        })?;
    }
    if r.config.stage2 == Stage2::Pin {
        let res = r.resolver.as_ref().ok_or("no resolver report")?;
        let unique_faults = res.faults - res.repeat_faults;
        ensure(res.pins.failed == 0 && res.pins.ok == unique_faults, || {
            format!(
                "pins ok {} failed {} vs {} unique faults",
                res.pins.ok, res.pins.failed, unique_faults
            )
        })?;
        let granule = r.config.backing.granule();
        if granule > 4096 {
            // One pin per 2 MiB page, and memtouch (from 1 MiB on) touches every one.
            let want = r.config.mem_size / granule;
            ensure(res.pins.ok == want && res.granule_bytes == granule, || {
                format!(
                    "pins ok {} != {want} granules of {granule} bytes ({} in the report)",
                    res.pins.ok, res.granule_bytes
                )
            })?;
        } else {
            // Data pages + page tables + code: every page the guest touched was pinned.
            ensure(res.pins.ok >= touched + 4, || {
                format!("pins ok {} < touched {touched} + 4 boot pages", res.pins.ok)
            })?;
        }
    }
    Ok(())
}

/// What a huge page backing needs from the host, set up as root and put back when the guard
/// drops: hugetlb pages in the pool, or shmem THP allowed on MADV_HUGEPAGE.
fn host_huge_pages(backing: Backing, mem: u64) -> Result<Option<HostSetting>, Failed> {
    let r = match backing {
        Backing::Hugetlb => HostSetting::reserve_hugetlb(mem / HUGE_PAGE_SIZE),
        Backing::ShmemThp => HostSetting::allow_shmem_thp(),
        Backing::Shmem | Backing::Anon => Ok(None),
    };
    r.map_err(|e| format!("{backing} backing: {e}").into())
}

fn huge_page_backings() -> Vec<Trial> {
    vec![
        kvm_test("backing::hugetlb_pins_one_buffer_per_2m_page", || {
            let _pool = host_huge_pages(Backing::Hugetlb, MEM)?;
            for (stage2, policy) in [
                (Stage2::Pin, DrainPolicy::MlockDrain),
                (Stage2::Uffd, DrainPolicy::None),
                (Stage2::Eager, DrainPolicy::None),
            ] {
                let mut c = config(Payload::Memtouch);
                (c.backing, c.stage2, c.policy) = (Backing::Hugetlb, stage2, policy);
                let r = run(&c)?;
                check_memtouch_ok(&r)?;
                let g = &r.granule;
                ensure(g.granule_bytes == HUGE_PAGE_SIZE, || format!("{g:?}"))?;
                // Every resident granule is a hugetlb page (where PFNs are readable).
                ensure(g.huge_folio_granules == g.resident_granules, || {
                    format!("{stage2:?}: {g:?}")
                })?;
                let pages = MEM / 4096;
                match stage2 {
                    Stage2::Pin => {
                        let res = r.resolver.as_ref().ok_or("no resolver report")?;
                        ensure(
                            res.pins.ok == pages / 512 && res.faults <= pages / 512 + 1,
                            || format!("{res:?}"),
                        )?;
                    }
                    Stage2::Eager => ensure(r.eager_pins == pages / 512, || {
                        format!("eager pins {} != {}", r.eager_pins, pages / 512)
                    })?,
                    _ => {}
                }
            }
            Ok(())
        }),
        kvm_test("backing::shmem_thp_resolves_2m_granules", || {
            let _thp = host_huge_pages(Backing::ShmemThp, MEM)?;
            let mut c = config(Payload::Memtouch);
            c.backing = Backing::ShmemThp;
            let r = run(&c)?;
            check_memtouch_ok(&r)?;
            ensure(r.granule.granule_bytes == HUGE_PAGE_SIZE, || {
                format!("{:?}", r.granule)
            })
        }),
    ]
}

fn matrix() -> Vec<Trial> {
    let mut v = Vec::new();
    for backing in [Backing::Shmem, Backing::Anon] {
        for policy in DrainPolicy::ALL {
            for fault_in in [FaultIn::Touch, FaultIn::Pin] {
                let name =
                    format!("memtouch::{backing}::{}::{fault_in:?}", policy.name()).to_lowercase();
                v.push(kvm_test(&name, move || {
                    let mut c = config(Payload::Memtouch);
                    (c.backing, c.policy, c.fault_in) = (backing, policy, fault_in);
                    let r = run(&c)?;
                    check_memtouch_ok(&r)?;
                    let res = r.resolver.as_ref().ok_or("no resolver report")?;
                    let d = res.drain;
                    let ok = match policy {
                        DrainPolicy::None | DrainPolicy::Retry => {
                            d.local_drains == 0 && d.all_drains == 0
                        }
                        // With `--fault-in pin` a fresh page is faulted in by the pin, on the
                        // pin CPU: only the faults handed to the fault CPU (pages the loader
                        // wrote or staged) have a fault-in there to drain after.
                        DrainPolicy::MlockDrain if fault_in == FaultIn::Pin => {
                            d.local_drains == res.fault_cpu_handoffs
                                && res.fault_cpu_handoffs < res.faults
                                && d.all_drains == 0
                        }
                        DrainPolicy::MlockDrain => {
                            d.local_drains == res.faults - res.repeat_faults && d.all_drains == 0
                        }
                        DrainPolicy::LruAddDrain => {
                            d.all_drains == res.pins.ok && d.local_drains == 0
                        }
                    };
                    ensure(ok, || {
                        format!("drain counts {d:?} do not match policy {}", policy.name())
                    })
                }));
            }
        }
    }
    v
}

fn others() -> Vec<Trial> {
    vec![
        kvm_test("stage2::kernel_has_no_resolver_and_no_pins", || {
            let mut c = config(Payload::Memtouch);
            c.stage2 = Stage2::Kernel;
            let r = run(&c)?;
            check_memtouch_ok(&r)?;
            // (Process-wide VmPin is checked in tests/leaks.rs, where no other VM runs.)
            ensure(r.resolver.is_none() && r.eager_pins == 0, || {
                "pins without a resolver".into()
            })
        }),
        kvm_test("stage2::eager_pins_every_page_before_boot", || {
            let mut c = config(Payload::Memtouch);
            c.stage2 = Stage2::Eager;
            let r = run(&c)?;
            check_memtouch_ok(&r)?;
            ensure(r.eager_pins == c.pages(), || {
                format!("eager pins {} != {} pages", r.eager_pins, c.pages())
            })
        }),
        kvm_test("stage2::fault_ahead_pins_and_maps_pages_ahead", || {
            for (backing, policy) in [
                (Backing::Shmem, DrainPolicy::MlockDrain),
                (Backing::Anon, DrainPolicy::Retry),
            ] {
                let mut c = config(Payload::Memtouch);
                (c.backing, c.policy, c.fault_ahead) = (backing, policy, 31);
                let r = run(&c)?;
                ensure(
                    r.outcome == Outcome::Completed && r.host_check_bad_pages == 0,
                    || format!("{backing}: {:?}: {}", r.outcome, r.summary),
                )?;
                let res = r.resolver.as_ref().ok_or("no resolver report")?;
                let touched: u64 = r.vcpus.iter().map(|v| v.touched_pages).sum();
                // Every pin is a faulting page or a page ahead of one, and far fewer faults.
                ensure(
                    res.pins.failed == 0
                        && res.pins.ok == res.faults - res.repeat_faults + res.pages_ahead
                        && res.pins.ok >= touched
                        && res.faults - res.repeat_faults < touched / 8,
                    || format!("{backing}: {res:?}"),
                )?;
                ensure(r.config.fault_ahead == 31, || {
                    "fault_ahead not in the report".into()
                })?;
            }
            Ok(())
        }),
        kvm_test("stage2::uffd_without_pins", || {
            let mut c = config(Payload::Memtouch);
            c.stage2 = Stage2::Uffd;
            let r = run(&c)?;
            check_memtouch_ok(&r)?;
            let res = r.resolver.as_ref().ok_or("no resolver report")?;
            ensure(res.pins.attempted == 0 && res.faults > 0, || {
                format!("{res:?}")
            })
        }),
        kvm_test("payload::hello_prints_its_line", || {
            let r = run(&config(Payload::Hello))?;
            ensure(
                r.outcome == Outcome::Completed && r.console == guest::HELLO_LINE,
                || format!("{:?} console {:?}", r.outcome, r.console),
            )
        }),
        // The exception vectors report the undefined instruction at once: a crash (exit 4)
        // naming the exception and where, long before the 60 s timeout.
        kvm_test("payload::crash_reports_its_exception_at_once", || {
            for vcpus in [1, 2] {
                let mut c = config(Payload::Crash);
                c.vcpus = vcpus;
                let r = run(&c)?;
                let ctx = || {
                    format!(
                        "{vcpus} vCPUs: {:?}: {} {:?}",
                        r.outcome, r.summary, r.vcpus
                    )
                };
                ensure(r.outcome == Outcome::GuestFailed && r.exit_code == 4, ctx)?;
                for v in &r.vcpus {
                    let e = v.exception.as_ref().ok_or_else(ctx)?;
                    let entry = if cfg!(target_arch = "aarch64") {
                        vmm::arch::RAM_START
                    } else {
                        0x2_0000
                    };
                    // arm64: EC 0 (undefined instruction); x86: #UD.
                    let what = if cfg!(target_arch = "aarch64") {
                        e.class == Some(0)
                    } else {
                        e.vector == 6
                    };
                    ensure(what && e.pc == entry, ctx)?;
                    ensure(
                        matches!(&v.outcome, VcpuOutcome::Crashed { reason } if reason.contains("guest exception")),
                        ctx,
                    )?;
                }
                // A hang guard only: it ends in milliseconds (the report shows guest_ms).
                ensure(r.timing.guest_ms < 10_000.0, ctx)?;
                eprintln!(
                    "crash on {vcpus} vCPU(s): {} after {:.1} ms of guest time",
                    r.summary, r.timing.guest_ms
                );
            }
            Ok(())
        }),
        kvm_test("payload::spin_times_out", || {
            let mut c = config(Payload::Spin);
            c.timeout = std::time::Duration::from_millis(500);
            let t = std::time::Instant::now();
            let r = run(&c)?;
            ensure(
                // A hang guard only: it ends at its 0.5 s timeout.
                r.outcome == Outcome::Timeout && t.elapsed().as_secs() < 60,
                || format!("{:?} after {:?}", r.outcome, t.elapsed()),
            )
        }),
        kvm_test("vcpus::three_vcpus_split_the_range", || {
            let mut c = config(Payload::Memtouch);
            c.vcpus = 3;
            let r = run(&c)?;
            check_memtouch_ok(&r)?;
            ensure(
                r.vcpus.len() == 3 && r.vcpus.iter().all(|v| v.touched_pages > 0),
                || format!("{:?}", r.vcpus),
            )
        }),
        kvm_test("resolver::same_cpu_prefill_noise", || {
            let mut c = config(Payload::Memtouch);
            c.cpus = CpuPlacement {
                fault_cpu: c.cpus.fault_cpu,
                pin_cpu: c.cpus.fault_cpu,
                free: false,
            };
            (c.prefill_pct, c.noise_pages, c.policy) = (50, 16, DrainPolicy::MlockDrain);
            let r = run(&c)?;
            check_memtouch_ok(&r)?;
            let res = r.resolver.as_ref().ok_or("no resolver report")?;
            ensure(
                r.prefilled_pages > 0
                    && res.minor_faults > 1000
                    && res.noise_pages_written == 16 * (res.faults - res.repeat_faults),
                || {
                    format!(
                        "prefilled {} minor {} noise {}",
                        r.prefilled_pages, res.minor_faults, res.noise_pages_written
                    )
                },
            )
        }),
        kvm_test("termination::injected_pin_failure_ends_the_vm", || {
            for backing in [Backing::Shmem, Backing::Anon] {
                let mut c = config(Payload::Memtouch);
                c.backing = backing;
                c.inject = vec![InjectSpec::new(Site::PinUpdate, 50, libc::ENOMEM)];
                let r = run(&c)?;
                let t = r
                    .termination
                    .as_ref()
                    .ok_or_else(|| format!("{backing}: no termination: {:?}", r.outcome))?;
                ensure(r.outcome == Outcome::Terminated && r.exit_code == 5, || {
                    format!("{:?}", r.outcome)
                })?;
                ensure(
                    t.errno == libc::ENOMEM && t.injected && t.pins_ok_before == 49,
                    || format!("{t:?}"),
                )?;
                ensure(t.gpa < MEM && t.hva != 0, || format!("{t:?}"))?;
            }
            Ok(())
        }),
        kvm_test("termination::retry_policy_survives_one_failure", || {
            let mut c = config(Payload::Memtouch);
            c.policy = DrainPolicy::Retry;
            c.inject = vec![InjectSpec::new(Site::PinUpdate, 10, libc::ENOMEM)];
            let r = run(&c)?;
            check_memtouch_ok_allowing_one_failure(&r)
        }),
    ]
}

fn check_memtouch_ok_allowing_one_failure(r: &Report) -> Result<(), Failed> {
    ensure(r.outcome == Outcome::Completed, || {
        format!("{:?}: {}", r.outcome, r.summary)
    })?;
    let res = r.resolver.as_ref().ok_or("no resolver report")?;
    ensure(
        res.pins.failed == 1 && res.retried_pins == 1 && res.drain.all_drains == 1,
        || format!("{res:?}"),
    )
}

fn main() {
    let args = Arguments::from_args();
    common::announce();
    let mut trials = matrix();
    trials.extend(others());
    trials.extend(huge_page_backings());
    libtest_mimic::run(&args, trials).exit();
}
