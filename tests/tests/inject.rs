// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Fault injection at every host call on the resolver path (`--inject SITE[@NTH][:ERRNO]`):
//! for each site the VM ends promptly with the documented outcome and exit code (a failed
//! pin: 5, terminated; any other host call: 1, VMM error), the report names the site, the call,
//! the errno and the GPA where there is one, and after many injected VMs in this one process
//! VmPin, VmLck, open fds and RSS are back to their baseline. Then the same through the
//! `pinvmm` binary: exit codes and the JSON report (also for a failed setup).
//!
//! One test thread: the leak check reads this process's own counters.

mod common;

use std::time::{Duration, Instant};

use common::{check_no_leak, ensure, kvm_test, pinvmm, tally};
use guest::Payload;
use libtest_mimic::{Arguments, Failed, Trial};
use vmm::host::ProcessCounters;
use vmm::inject::{InjectSpec, Site};
use vmm::{Backing, DrainPolicy, FaultIn, HostLimits, Outcome, Report, Stage2, VmConfig};

/// One injection case.
struct Case {
    name: &'static str,
    /// `--inject` values.
    specs: &'static [&'static str],
    backing: Backing,
    policy: DrainPolicy,
    fault_in: FaultIn,
    stage2: Stage2,
    vcpus: u8,
    /// Resolver halves on one CPU (the pin runs inline on the fault-in thread).
    same_cpu: bool,
    /// The site the report must name.
    site: Site,
    /// Whether the report must carry a guest-physical address.
    gpa: bool,
}

const fn case(name: &'static str, specs: &'static [&'static str], site: Site, gpa: bool) -> Case {
    Case {
        name,
        specs,
        backing: Backing::Shmem,
        policy: DrainPolicy::None,
        fault_in: FaultIn::Touch,
        stage2: Stage2::Pin,
        vcpus: 1,
        same_cpu: false,
        site,
        gpa,
    }
}

/// Every site, plus variants where the failing thread is another one or other vCPUs run on.
fn cases() -> Vec<Case> {
    vec![
        case("uffd_read", &["uffd-read"], Site::UffdRead, false),
        case(
            "uffd_read_later",
            &["uffd-read@40:EINVAL"],
            Site::UffdRead,
            false,
        ),
        Case {
            backing: Backing::Anon,
            ..case("uffd_copy", &["uffd-copy@3"], Site::UffdCopy, true)
        },
        Case {
            backing: Backing::Anon,
            fault_in: FaultIn::Pin,
            ..case(
                "uffd_zeropage",
                &["uffd-zeropage@3"],
                Site::UffdZeropage,
                true,
            )
        },
        case(
            "uffd_continue",
            &["uffd-continue@5"],
            Site::UffdContinue,
            true,
        ),
        Case {
            vcpus: 2,
            ..case(
                "uffd_continue_2_vcpus",
                &["uffd-continue@200:ENOMEM"],
                Site::UffdContinue,
                true,
            )
        },
        Case {
            same_cpu: true,
            ..case(
                "uffd_continue_inline",
                &["uffd-continue@20"],
                Site::UffdContinue,
                true,
            )
        },
        Case {
            backing: Backing::Anon,
            ..case("uffd_wake", &["uffd-wake@2"], Site::UffdWake, true)
        },
        case("pin_register", &["pin-register"], Site::PinRegister, true),
        case("pin_update", &["pin-update@9"], Site::PinUpdate, true),
        Case {
            vcpus: 3,
            ..case(
                "pin_update_3_vcpus",
                &["pin-update@100:EFAULT"],
                Site::PinUpdate,
                true,
            )
        },
        Case {
            backing: Backing::Anon,
            same_cpu: true,
            ..case(
                "pin_update_anon_inline",
                &["pin-update@30"],
                Site::PinUpdate,
                true,
            )
        },
        case("mlock", &["mlock"], Site::Mlock, false),
        Case {
            backing: Backing::Anon,
            ..case("mlock_anon", &["mlock:ENOMEM"], Site::Mlock, false)
        },
        Case {
            policy: DrainPolicy::MlockDrain,
            ..case("drain_local", &["drain@4"], Site::Drain, true)
        },
        Case {
            policy: DrainPolicy::LruAddDrain,
            ..case("drain_all", &["drain@4:EBUSY"], Site::Drain, true)
        },
        // The retry policy drains only after a failed pin: that drain fails.
        Case {
            policy: DrainPolicy::Retry,
            ..case(
                "drain_after_failed_pin",
                &["pin-update@3", "drain@1"],
                Site::Drain,
                true,
            )
        },
        // Eager stage 2 pins before boot: a failed drain or pin fails the setup, and the
        // setup failure names the site and the GPA.
        Case {
            stage2: Stage2::Eager,
            policy: DrainPolicy::MlockDrain,
            ..case("eager_drain", &["drain@3"], Site::Drain, true)
        },
        Case {
            stage2: Stage2::Eager,
            ..case("eager_pin", &["pin-update@5"], Site::PinUpdate, true)
        },
        case("kvm_run", &["kvm-run@2"], Site::KvmRun, false),
        Case {
            vcpus: 2,
            ..case("kvm_run_2_vcpus", &["kvm-run@3:EIO"], Site::KvmRun, false)
        },
    ]
}

/// The VM of a case: memtouch on 8 MiB, with a long timeout (the test checks it ends long
/// before it).
fn config(c: &Case) -> Result<VmConfig, Failed> {
    let host = HostLimits::probe();
    let mut cfg = VmConfig::new(Payload::Memtouch, 8 << 20, host.default_placement());
    cfg.backing = c.backing;
    cfg.policy = c.policy;
    cfg.fault_in = c.fault_in;
    cfg.stage2 = c.stage2;
    cfg.vcpus = c.vcpus;
    if c.same_cpu {
        cfg.cpus.pin_cpu = cfg.cpus.fault_cpu;
    }
    cfg.timeout = TIMEOUT;
    cfg.inject = c
        .specs
        .iter()
        .map(|s| s.parse::<InjectSpec>())
        .collect::<Result<_, _>>()?;
    cfg.validate(&host).map_err(|e| format!("config: {e}"))?;
    Ok(cfg)
}

/// A VM that hit an injected failure must end long before its timeout: no vCPU may be left
/// waiting on a fault nobody resolves. It ends in well under a second; a quarter of the
/// timeout is a hang guard only (a loaded CI host may be slow, never 150 s slow).
const TIMEOUT: Duration = Duration::from_secs(600);
const PROMPT: Duration = Duration::from_secs(150);

/// Runs one case in this process and checks what the report says.
fn run_case(c: &Case) -> Result<(), Failed> {
    let cfg = config(c)?;
    let t = Instant::now();
    let r = vmm::build(&cfg).map(|vm| Report::from(vm.run()));
    let took = t.elapsed();
    tally::add(&tally::VMS, 1);
    ensure(took < PROMPT, || {
        format!(
            "{}: the VM took {took:?} to end (timeout {TIMEOUT:?})",
            c.name
        )
    })?;
    let name = c.name;
    let r = match r {
        // A failed setup (mlock): no VM ran; the error names the call.
        Err(e) => {
            let f = e
                .host_failure()
                .ok_or_else(|| format!("{name}: setup failed without a host failure: {e}"))?;
            ensure(
                f.site == c.site.name() && f.injected && f.gpa.is_some() == c.gpa,
                || format!("{name}: {f:?}"),
            )?;
            ensure(e.to_string().contains("[injected]"), || {
                format!("{name}: {e}")
            })?;
            tally::add(&tally::FAULTS, 1);
            return Ok(());
        }
        Ok(r) => r,
    };
    let fired = r.injections.iter().filter(|i| i.fired).count() as u64;
    ensure(fired > 0, || {
        format!("{name}: no injection fired: {:?}", r.injections)
    })?;
    tally::add(&tally::FAULTS, fired);
    ensure(
        r.error
            .as_deref()
            .is_none_or(|e| !e.contains("did not stop")),
        || format!("{name}: {:?}", r.error),
    )?;
    ensure(
        r.vcpus
            .iter()
            .all(|v| !matches!(v.outcome, vmm::control::VcpuOutcome::Exited { .. })),
        || {
            format!(
                "{name}: a vCPU finished its work despite the failure: {:?}",
                r.vcpus
            )
        },
    )?;
    if c.site == Site::PinUpdate {
        let t = r
            .termination
            .as_ref()
            .ok_or_else(|| format!("{name}: no termination: {:?} {}", r.outcome, r.summary))?;
        ensure(r.outcome == Outcome::Terminated && r.exit_code == 5, || {
            format!("{name}: {:?} / {}", r.outcome, r.exit_code)
        })?;
        let want_errno = cfg.inject[0].errno;
        ensure(
            t.site == "pin-update"
                && t.call.contains("IORING_REGISTER_BUFFERS_UPDATE")
                && t.errno == want_errno
                && t.injected
                && t.gpa < cfg.mem_size
                && t.hva != 0,
            || format!("{name}: {t:?}"),
        )?;
        return Ok(());
    }
    ensure(r.outcome == Outcome::VmmError && r.exit_code == 1, || {
        format!("{name}: {:?} / {}: {}", r.outcome, r.exit_code, r.summary)
    })?;
    let f = r
        .host_failure
        .as_ref()
        .ok_or_else(|| format!("{name}: no host_failure: {}", r.summary))?;
    let spec = cfg
        .inject
        .iter()
        .find(|s| s.site == c.site)
        .expect("case injects its site");
    ensure(
        f.site == c.site.name()
            && f.injected
            && f.errno == Some(spec.errno)
            && !f.call.is_empty()
            && f.gpa.is_some() == c.gpa
            && f.gpa.is_none_or(|g| g < cfg.mem_size),
        || format!("{name}: {f:?}"),
    )
}

/// Every case, several rounds, in this process; the counters after the last round must equal
/// those after the first (one-time allocations happen in round one).
fn every_site_ends_the_vm_and_leaks_nothing() -> Result<(), Failed> {
    const ROUNDS: usize = 4;
    let cases = cases();
    let mut baseline = None;
    for round in 0..ROUNDS {
        for c in &cases {
            run_case(c)?;
        }
        if round == 0 {
            baseline = Some(ProcessCounters::now());
        }
    }
    let before = baseline.expect("one round ran");
    let what = format!(
        "inject: {} cases x {ROUNDS} rounds, after round 1 -> after round {ROUNDS}",
        cases.len()
    );
    check_no_leak(&what, &before, &ProcessCounters::now())
}

/// Through the binary: the exit code, and the JSON report naming the site (for a failed
/// setup too: `--inject mlock`, or a failed pin under `--stage2 eager`, writes a setup-failure
/// report).
fn cli_cases() -> Vec<Trial> {
    let cli = |name: &str, args: &'static [&'static str], code: i32, site: &'static str| {
        kvm_test(&format!("cli::{name}"), move || {
            let mut a = vec!["run", "--mem", "8M", "--timeout", "600"];
            a.extend_from_slice(args);
            let t = Instant::now();
            let r = pinvmm(&a)?;
            tally::add(&tally::VMS, 1);
            ensure(t.elapsed() < PROMPT, || {
                format!("{a:?} took {:?}", t.elapsed())
            })?;
            ensure(r.code == code, || {
                format!(
                    "{a:?}: exit {} (want {code}): {}{}",
                    r.code, r.stdout, r.stderr
                )
            })?;
            ensure(!r.stderr.contains("panicked"), || r.stderr.clone())?;
            let rep = r.report.ok_or("no JSON report")?;
            let named = if code == 5 {
                &rep["termination"]
            } else {
                &rep["host_failure"]
            };
            ensure(
                named["site"] == site && named["injected"] == true && named["errno"].is_i64(),
                || format!("{a:?}: {named}"),
            )?;
            ensure(rep["exit_code"] == code, || format!("{}", rep["exit_code"]))?;
            tally::add(&tally::FAULTS, 1);
            Ok(())
        })
    };
    vec![
        cli(
            "pin_update_exit_5",
            &["--inject", "pin-update@20:EFAULT"],
            5,
            "pin-update",
        ),
        cli(
            "pin_failure_alias_exit_5",
            &["--inject-pin-failure", "20"],
            5,
            "pin-update",
        ),
        cli(
            "uffd_continue_exit_1",
            &["--inject", "uffd-continue@3"],
            1,
            "uffd-continue",
        ),
        cli(
            "drain_exit_1",
            &["--policy", "lru-add-drain", "--inject", "drain@2"],
            1,
            "drain",
        ),
        cli("kvm_run_exit_1", &["--inject", "kvm-run"], 1, "kvm-run"),
        cli(
            "mlock_setup_failure_exit_1",
            &["--inject", "mlock"],
            1,
            "mlock",
        ),
        cli(
            "eager_pin_setup_failure_exit_1",
            &["--stage2", "eager", "--inject", "pin-update@7"],
            1,
            "pin-update",
        ),
        // A site this mode reaches, but fewer times than asked (a site it can never reach is
        // refused: tests/options.rs).
        kvm_test("cli::unfired_injection_is_reported", || {
            let r = pinvmm(&["run", "--mem", "4M", "--inject", "pin-update@100000"])?;
            tally::add(&tally::VMS, 1);
            let rep = r.report.ok_or("no JSON report")?;
            ensure(
                r.code == 0 && rep["injections"][0]["fired"] == false,
                || format!("exit {}: {}", r.code, rep["injections"]),
            )?;
            ensure(r.stdout.contains("never fired"), || r.stdout.clone())
        }),
    ]
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    common::announce();
    let mut trials = vec![kvm_test(
        "inject::every_site_ends_the_vm_and_leaks_nothing",
        every_site_ends_the_vm_and_leaks_nothing,
    )];
    trials.extend(cli_cases());
    common::run_and_count("inject", &args, trials)
}
