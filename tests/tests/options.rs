// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The table of options that cannot apply to a mode (`vmm::applies`), checked against what
//! VMs really do: every injection site in every stage-2 mode, backing, fault-in order and
//! policy is run *without* the check (the table's refusal bypassed), and a site the table
//! refuses must never fire, a site it accepts must fire (but the two that fire only after
//! another failure: `uffd-wake` on a memfd backing, `drain` under `retry`). `--noise` the same
//! way: accepted, its pages are written; refused, none would be (but `--stage2 uffd`, where the
//! resolver would write them though no pin follows for them to matter to). The defaults are the
//! pKVM-exact ones (`--fault-in pin`); `--fault-in touch` is one of the modes.

mod common;

use std::time::Duration;

use common::{ensure, kvm_test, tally};
use guest::Payload;
use libtest_mimic::{Arguments, Trial};
use vmm::applies::{self, Opt};
use vmm::inject::{InjectSpec, Site};
use vmm::{Backing, DrainPolicy, FaultIn, HostLimits, Report, Stage2, VmConfig};

/// Whether a site the table accepts may still not fire on its own.
fn may_not_fire(site: Site, c: &VmConfig) -> bool {
    match site {
        // A memfd page is woken by its CONTINUE; UFFDIO_WAKE only after a partial one.
        Site::UffdWake => c.backing != Backing::Anon,
        // retry drains after a failed pin only.
        Site::Drain => c.policy == DrainPolicy::Retry,
        _ => false,
    }
}

fn sites_in_every_mode() -> Trial {
    kvm_test(
        "applies::injection_sites_fire_exactly_where_accepted",
        || {
            let host = HostLimits::probe();
            let (mut runs, mut refused) = (0, 0);
            for stage2 in Stage2::ALL {
                for backing in [Backing::Shmem, Backing::Anon] {
                    for fault_in in FaultIn::ALL {
                        for policy in DrainPolicy::ALL {
                            for site in Site::ALL {
                                // The policy only matters to the drain site: one policy for the rest.
                                if site != Site::Drain && policy != DrainPolicy::None {
                                    continue;
                                }
                                let mut c = VmConfig::new(
                                    Payload::Memtouch,
                                    4 << 20,
                                    host.default_placement(),
                                );
                                (c.stage2, c.backing, c.fault_in, c.policy) =
                                    (stage2, backing, fault_in, policy);
                                c.timeout = Duration::from_secs(120);
                                // The mode itself must be valid (its own fault-in and policy too).
                                if c.validate(&host).is_err() {
                                    continue;
                                }
                                c.inject = vec![InjectSpec::new(site, 1, site.default_errno())];
                                let why = applies::refusal(Opt::Inject(site), &c.mode());
                                let what = format!("--inject {} in {:?}", site.name(), c.mode());
                                // Accepted exactly where the table says (the CLI's check).
                                ensure(c.validate(&host).is_ok() == why.is_none(), || {
                                    format!("{what}: validate disagrees with the table ({why:?})")
                                })?;
                                // Run it without the check.
                                tally::add(&tally::VMS, 1);
                                let fired = match vmm::build(&c) {
                                    Ok(vm) => {
                                        let r = Report::from(vm.run());
                                        r.injections.iter().any(|i| i.fired)
                                    }
                                    // A failed setup (mlock, eager pins) fired at its site.
                                    Err(e) => e.host_failure().is_some_and(|f| f.injected),
                                };
                                runs += 1;
                                if fired {
                                    tally::add(&tally::FAULTS, 1);
                                }
                                match why {
                                    Some(why) => {
                                        refused += 1;
                                        ensure(!fired, || {
                                            format!("{what}: refused ({why}) but it fired")
                                        })?;
                                    }
                                    None => ensure(fired || may_not_fire(site, &c), || {
                                        format!("{what}: accepted but it never fired")
                                    })?,
                                }
                            }
                        }
                    }
                }
            }
            eprintln!(
                "injection sites x modes: {runs} VMs, {refused} refused combinations never fired, every accepted one that must fire fired"
            );
            Ok(())
        },
    )
}

fn noise_in_every_mode() -> Trial {
    kvm_test("applies::noise_is_written_exactly_where_accepted", || {
        let host = HostLimits::probe();
        let mut runs = 0;
        for stage2 in Stage2::ALL {
            for backing in [Backing::Shmem, Backing::Anon] {
                for fault_in in FaultIn::ALL {
                    let mut c = VmConfig::new(Payload::Memtouch, 4 << 20, host.default_placement());
                    (c.stage2, c.backing, c.fault_in) = (stage2, backing, fault_in);
                    c.timeout = Duration::from_secs(120);
                    if c.validate(&host).is_err() {
                        continue;
                    }
                    c.noise_pages = 4;
                    let why = applies::refusal(Opt::Noise, &c.mode());
                    let what = format!("--noise 4 in {:?}", c.mode());
                    ensure(c.validate(&host).is_ok() == why.is_none(), || {
                        format!("{what}: validate disagrees with the table ({why:?})")
                    })?;
                    tally::add(&tally::VMS, 1);
                    runs += 1;
                    let vm = vmm::build(&c).map_err(|e| format!("{what}: {e}"))?;
                    let r = Report::from(vm.run());
                    let written = r.resolver.as_ref().map_or(0, |r| r.noise_pages_written);
                    // Accepted: written. Refused: never written, but under --stage2 uffd, whose
                    // resolver would write it between fault-in and map although no pin follows
                    // for it to matter to (refused as meaningless, not as ignored).
                    let ok = match why {
                        None => written > 0,
                        Some(_) => written == 0 || stage2 == Stage2::Uffd,
                    };
                    ensure(ok, || {
                        format!("{what}: {written} noise pages written, table says {why:?}")
                    })?;
                }
            }
        }
        eprintln!("--noise x modes: {runs} VMs, written exactly where accepted");
        Ok(())
    })
}

fn main() {
    let args = Arguments::from_args();
    common::announce();
    common::run_and_count(
        "options",
        &args,
        vec![sites_in_every_mode(), noise_in_every_mode()],
    )
}
