// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Building and running one VM: a linear script (Firecracker's `build_microvm_for_boot` shape)
//! from a validated [`VmConfig`] to a [`Report`].

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::{ConsoleSink, I8042Device, SerialDevice, TestDevice};
use guest::{Payload, PayloadArgs};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::signal::Killable;

use crate::arch::LinuxBoot;
use crate::arch::{self, DeviceAddr};
use crate::config::VmConfig;
use crate::control::VcpuOutcome;
use crate::control::{HostFailure, Termination, VmControl, VmEvent};
use crate::host;
use crate::inject::{Injector, Site};
use crate::linux::{self, LinuxReport};
use crate::memory::GuestMemory;
use crate::report::{GranuleFacts, HostFacts, MemAccounting, Outcome, Report, Timing, VcpuResult};
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::stage2::Stage2;
use crate::stage2::protected;
use crate::stage2::protected::VmType;
use crate::stage2::{self, Resolver, ResolverConfig};
use crate::sys::{self, PAGE_SIZE};
use crate::vcpu::{self, Buses, ExitCounts};

/// Bytes of the guest's console kept for the report: a guest flooding its serial port costs
/// the VMM this much memory at most (the rest is counted, not kept).
pub const CONSOLE_KEEP_BYTES: usize = 64 << 10;
/// The same for a Linux guest, whose boot log alone is tens of KiB.
pub const LINUX_CONSOLE_KEEP_BYTES: usize = 256 << 10;

/// Failures that stop a VM from being built (as opposed to outcomes of a run).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM lacks a capability pinvmm needs: {0}")]
    KvmCap(&'static str),
    #[error("cannot create the VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("cannot create vCPU {id}: {err}")]
    CreateVcpu { id: u8, err: kvm_ioctls::Error },
    #[error("cannot register guest memory with KVM (GPA {gpa:#x}, {size} bytes): {err}")]
    MemoryRegion {
        gpa: u64,
        size: u64,
        err: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
    #[error(transparent)]
    Resolver(#[from] stage2::ResolverError),
    #[error("cannot place a device on the bus: {0}")]
    Bus(#[from] devices::BusError),
    #[error("cannot start a VM thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("eager pinning before boot failed: {0}")]
    EagerPin(String),
    #[error("loading the protected VM failed: {0}")]
    Protected(String),
    #[error(transparent)]
    Linux(#[from] crate::linux::LinuxError),
    #[error("cannot wire the UART's interrupt to GSI {gsi} (KVM_IRQFD): {err}")]
    Irqfd { gsi: u32, err: kvm_ioctls::Error },
}

impl VmError {
    /// Whether the failure means "this host cannot do it" rather than a VMM bug.
    pub fn is_host_unsupported(&self) -> bool {
        matches!(
            self,
            VmError::KvmOpen(_)
                | VmError::KvmCap(_)
                | VmError::Resolver(stage2::ResolverError::Create(_))
                | VmError::Memory(crate::memory::MemoryError::HugePagesShort { .. })
        )
    }

    /// The failed host call, for reports, when it is one of the injection sites.
    pub fn host_failure(&self) -> Option<HostFailure> {
        match self {
            VmError::Memory(crate::memory::MemoryError::Mlock { err, injected, .. }) => {
                Some(HostFailure::at(
                    Site::Mlock,
                    err.raw_os_error(),
                    *injected,
                    "main",
                    None,
                    self.to_string(),
                ))
            }
            _ => None,
        }
    }

    /// Whether the user's input is at fault (a bad kernel or initrd): exit 2.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, VmError::Linux(e) if e.is_bad_input())
    }
}

struct VcpuThread {
    handle: JoinHandle<ExitCounts>,
    testdev: Arc<Mutex<TestDevice>>,
    args: PayloadArgs,
}

/// Builds the VM described by `cfg`, runs it to its end, tears it down and reports.
/// `cfg` must have been validated.
pub fn run(cfg: &VmConfig) -> Result<Report, VmError> {
    let t_start = Instant::now();
    let acct_before = (
        host::status_kb("VmPin"),
        host::status_kb("VmLck"),
        sys::open_fds(),
    );
    let vmstat_before = host::vmstat();
    vcpu::install_kick_handler().map_err(VmError::Signal)?;

    let faults = Injector::new(&cfg.inject);
    // Memory and the boot image, written through the loader view (page cache / staging).
    let mem = GuestMemory::new_injected(cfg.backing, arch::RAM_START, cfg.mem_size, &faults)?;
    let boot_pages = (arch::DATA_START - arch::RAM_START) / PAGE_SIZE as u64;
    // Protected VMs: the loader thread writes through the mlocked view instead (below).
    let pkvm = cfg.vm_type == VmType::Protected;
    let linux_boot = match &cfg.linux {
        Some(l) => Some(linux::load(&mem, cfg.vcpus, l)?),
        None => None,
    };
    let (entry, prefilled) = if pkvm {
        (arch::RAM_START, 0)
    } else if let Some(boot) = &linux_boot {
        // Prefill only free RAM: a marker inside the kernel, initrd or boot structures
        // would corrupt them.
        let busy = linux_busy_pages(boot);
        (
            boot.entry,
            mem.prefill(cfg.prefill_pct, |page| {
                page < boot_pages || busy.iter().any(|r| r.contains(&page))
            })?,
        )
    } else {
        let entry = arch::load_boot_image(&mem, cfg.payload.code())?;
        (
            entry,
            mem.prefill(cfg.prefill_pct, |page| page < boot_pages)?,
        )
    };

    // KVM is opened after the images are loaded, so a bad kernel or initrd is reported as
    // such (exit 2) even on a host without KVM.
    let kvm = Kvm::new().map_err(VmError::KvmOpen)?;
    if !kvm.check_extension(kvm_ioctls::Cap::UserMemory) {
        return Err(VmError::KvmCap("KVM_CAP_USER_MEMORY"));
    }
    let vm = protected::create_vm(&kvm, cfg.vm_type).map_err(VmError::CreateVm)?;
    // Opened now: the main thread's seccomp filter allows no ioctl later.
    let kvm_page_sizes = crate::host::kvmstats::PageSizeStats::open(&vm);
    arch::setup_vm(&vm)?;
    if linux_boot.is_some() {
        arch::setup_linux_vm(&vm)?;
    }

    // Stage 2: arm userfaultfd (pin/uffd), or pin everything now (eager), or nothing (kernel).
    let mut eager_pins = None;
    let mut eager_pins_count = 0;
    let uffd = match cfg.stage2 {
        _ if pkvm => None,
        Stage2::Pin | Stage2::Uffd => Some(stage2::arm(&mem)?),
        Stage2::Eager => {
            mem.copy_staged_into_guest_view()
                .map_err(|e| VmError::EagerPin(e.to_string()))?;
            let pins = stage2::pin_all_eagerly(&mem, cfg.policy, &faults)
                .map_err(|e| VmError::EagerPin(e.to_string()))?;
            eager_pins_count = pins.0.pinned_pages();
            eager_pins = Some(pins);
            None
        }
        Stage2::Kernel => {
            mem.copy_staged_into_guest_view()
                .map_err(|e| VmError::EagerPin(e.to_string()))?;
            None
        }
    };
    register_memory(&vm, &mem, pkvm)?;

    let mem = Arc::new(mem);
    let mut protected_report = if pkvm {
        let plan = protected::LoadPlan {
            code: cfg.payload.code().to_vec(),
            entry,
            first_data_page: boot_pages,
            prefill_pct: cfg.prefill_pct,
            policy: cfg.policy,
            cpu: cfg.cpus.fault_cpu,
        };
        Some(protected::load(&mem, plan).map_err(VmError::Protected)?)
    } else {
        None
    };
    let counters = Arc::new(protected::RunCounters::default());
    let (ctl, events) = VmControl::new();
    let resolver = match &uffd {
        Some(u) => Some(Resolver::start(
            resolver_config(cfg),
            mem.clone(),
            u.clone(),
            ctl.clone(),
            faults.clone(),
        )?),
        None => None,
    };

    // Devices: one shared serial port, one test device per vCPU. A Linux console is long:
    // keep more of it, and watch it for the workload's result line.
    let console_keep = match linux_boot {
        Some(_) => LINUX_CONSOLE_KEEP_BYTES,
        None => CONSOLE_KEEP_BYTES,
    };
    let console = ConsoleSink::new(console_keep, cfg.echo_console);
    let console = match linux_boot {
        Some(_) => console.watching(linux::MARKER),
        None => console,
    };
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::Thread)?;
    let serial_irqfd = serial_irq.try_clone().map_err(VmError::Thread)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, console.clone())));
    let mut shared = Buses::default();
    place(&mut shared, arch::SERIAL, SerialDevice::LEN, serial)?;
    if let (Some(_), Some(addr)) = (&linux_boot, arch::RESET_DEVICE) {
        let reset = Arc::new(Mutex::new(I8042Device::new()));
        place(&mut shared, addr, devices::i8042::LEN, reset)?;
    }

    let base_args = PayloadArgs {
        stride: cfg.touch.stride_pages * PAGE_SIZE as u64,
        passes: cfg.touch.passes,
        seed: cfg.touch.seed,
        testdev: arch::TESTDEV.addr(),
        serial: arch::SERIAL.addr(),
        ram_end: arch::RAM_START + cfg.mem_size,
        far: arch::far_unmapped_gpa(cfg.mem_size),
        ..Default::default()
    };
    let per_vcpu = arch::split_touch_range(cfg.mem_size, cfg.vcpus, base_args);
    let mut threads = Vec::with_capacity(per_vcpu.len());
    let mut vcpu_fds = Vec::with_capacity(per_vcpu.len());
    for (id, args) in per_vcpu.iter().enumerate() {
        let id = id as u8;
        let fd = vm
            .create_vcpu(id.into())
            .map_err(|err| VmError::CreateVcpu { id, err })?;
        match &linux_boot {
            Some(boot) => arch::configure_vcpu_linux(&kvm, &vm, &fd, id, boot)?,
            None => arch::configure_vcpu(&kvm, &vm, &fd, entry, args)?,
        }
        vcpu_fds.push(fd);
    }
    arch::finish_vcpus(&vm, vcpu_fds.len())?;
    if linux_boot.is_some() {
        // Bare payloads poll the UART; Linux's 8250 driver waits for its interrupt.
        vm.register_irqfd(&serial_irqfd, arch::SERIAL_IRQ)
            .map_err(|err| VmError::Irqfd {
                gsi: arch::SERIAL_IRQ,
                err,
            })?;
    }
    let vcpu_cpu = if pkvm {
        Some(cfg.cpus.pin_cpu)
    } else {
        uffd.as_ref().and_then(|_| resolver_config(cfg).vcpu_cpu())
    };
    for (id, (fd, args)) in vcpu_fds.into_iter().zip(per_vcpu).enumerate() {
        let id = id as u8;
        let testdev = Arc::new(Mutex::new(TestDevice::new()));
        let mut buses = shared.clone();
        place(&mut buses, arch::TESTDEV, TestDevice::LEN, testdev.clone())?;
        let (c, vcpu_faults) = (ctl.clone(), faults.clone());
        let (policy, counters) = (cfg.policy, counters.clone());
        let filter = cfg.seccomp.threads() && !pkvm;
        let handle = std::thread::Builder::new()
            .name(format!("pinvmm-vcpu{id}"))
            .spawn(move || {
                // A failed affinity only costs speed (the resolver reports its CPUs).
                if let Some(cpu) = vcpu_cpu {
                    let _ = sys::pin_thread_to_cpu(cpu);
                }
                seccomp::install_or_fail_vm(ThreadKind::Vcpu, filter, &c);
                if pkvm {
                    protected::run_loop(id, fd, buses, c, policy, counters)
                } else {
                    vcpu::run_loop(id, fd, buses, c, vcpu_faults)
                }
            })
            .map_err(VmError::Thread)?;
        threads.push(VcpuThread {
            handle,
            testdev,
            args,
        });
    }

    // Every VM thread is running (and filtered): the calling thread's own filter comes last.
    seccomp::install_or_fail_vm(ThreadKind::Main, cfg.seccomp == SeccompMode::All, &ctl);
    let t_guest = Instant::now();
    let setup_ms = ms(t_start.elapsed());

    // Wait for every vCPU, a pin failure, a resolver failure, or the timeout.
    let deadline = t_guest + cfg.timeout;
    let mut outcomes: Vec<Option<VcpuOutcome>> = vec![None; threads.len()];
    let mut termination: Option<Termination> = None;
    let mut host_failure: Option<HostFailure> = None;
    let mut error: Option<String> = None;
    let mut timed_out = false;
    // A Linux guest ends as a whole: the first vCPU to stop (PSCI SYSTEM_OFF, reset) ends it.
    let mut first_done: Option<VcpuOutcome> = None;
    while outcomes.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(VmEvent::VcpuDone { id, outcome }) => {
                first_done.get_or_insert(outcome.clone());
                outcomes[id as usize] = Some(outcome);
                if linux_boot.is_some() {
                    break;
                }
            }
            Ok(VmEvent::PinFailed(t)) => {
                termination.get_or_insert(t);
                break;
            }
            Ok(VmEvent::HostFailed(f)) => {
                error.get_or_insert_with(|| f.message.clone());
                host_failure.get_or_insert(f);
                break;
            }
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    let guest_ms = ms(t_guest.elapsed());
    let guest_exit_ms = ms(t_start.elapsed());
    let first_exit_ms = ctl
        .first_exit()
        .map(|t| ms(t.saturating_duration_since(t_start)));
    let acct_running = (host::status_kb("VmPin"), host::status_kb("VmLck"));
    let rss_running = ["RssAnon", "RssFile", "RssShmem"].map(host::status_kb);
    let granule = granule_facts(kvm_page_sizes.as_ref(), &mem);

    // Teardown: stop the resolver (releasing every pin), close userfaultfd (a vCPU stuck on
    // an unresolved fault is released), then kick the vCPUs out of KVM_RUN.
    let t_teardown = Instant::now();
    ctl.request_stop();
    let resolver_report = resolver.map(Resolver::finish);
    drop(uffd);
    let stuck = kick_until_stopped(&threads, &events, &mut outcomes);
    if !stuck.is_empty() {
        error.get_or_insert(format!("vCPU threads {stuck:?} did not stop within 5 s"));
    }

    let mut vcpus = Vec::with_capacity(threads.len());
    for (id, t) in threads.into_iter().enumerate() {
        let exits = if stuck.contains(&id) {
            ExitCounts::default()
        } else {
            t.handle.join().unwrap_or_default()
        };
        let rep = t
            .testdev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report()
            .clone();
        let memtouch = is_memtouch(cfg);
        let mark = |m: u32| rep.marks.iter().find(|(v, _)| *v == m).map(|(_, t)| *t);
        let first_touch_ms = match (mark(1), mark(2)) {
            (Some(a), Some(b)) if memtouch => Some(ms(b.saturating_sub(a))),
            _ => None,
        };
        vcpus.push(VcpuResult {
            id: id as u8,
            outcome: outcomes[id].clone().unwrap_or(VcpuOutcome::Stopped),
            result: rep.result,
            expected: memtouch.then(|| t.args.memtouch_checksum()),
            errors: rep.errors,
            touched_pages: if memtouch { t.args.pages } else { 0 },
            exits,
            bad_device_writes: rep.bad_writes,
            first_touch_ms,
        });
    }
    let all_exited_ok = vcpus
        .iter()
        .all(|v| v.outcome == VcpuOutcome::Exited { status: 0 });
    let (host_check_pages, host_check_bad_pages) =
        // The host reads zeros from a protected VM's donated pages: nothing to check there.
        if is_memtouch(cfg) && all_exited_ok && !pkvm {
            host_check(&mem, &vcpus, cfg)
        } else {
            (0, 0)
        };
    drop(vm);
    drop(eager_pins);
    let (console_text, console_bytes) = console.snapshot();
    drop(mem);
    let teardown_ms = ms(t_teardown.elapsed());
    let linux_report = match (linux_boot, &cfg.linux) {
        (Some(boot), Some(l)) => Some(linux::report(
            l,
            boot,
            first_done.as_ref(),
            &console,
            &console_text,
            t_start,
        )),
        _ => None,
    };
    let console = console_text;

    let outcome = if termination.is_some() {
        Outcome::Terminated
    } else if error.is_some() {
        Outcome::VmmError
    } else if timed_out {
        Outcome::Timeout
    } else if vcpus
        .iter()
        .any(|v| matches!(v.outcome, VcpuOutcome::RunFailed { .. }))
    {
        Outcome::VmmError
    } else if let Some(l) = &linux_report {
        if l.failure.is_some() {
            Outcome::GuestFailed
        } else {
            Outcome::Completed
        }
    } else if !all_exited_ok
        || vcpus
            .iter()
            .any(|v| v.expected.is_some_and(|e| e != v.result) || v.errors > 0)
        || host_check_bad_pages > 0
        || (cfg.payload == Payload::Hello && !console.contains(guest::HELLO_LINE))
    {
        Outcome::GuestFailed
    } else {
        Outcome::Completed
    };
    let touched: u64 = vcpus.iter().map(|v| v.touched_pages).sum();
    let console_truncated = console_bytes > console_keep as u64;
    let summary = summarize(
        outcome,
        &vcpus,
        termination.as_ref(),
        error.as_deref(),
        cfg,
        touched,
        linux_report.as_ref(),
    ) + &hostile_notes(&vcpus, console_bytes, console_truncated, console_keep);
    let kb = |v: Option<u64>| v.unwrap_or(0);
    let first_touch_ms = vcpus
        .iter()
        .filter_map(|v| v.first_touch_ms)
        .reduce(f64::max);
    Ok(Report {
        pinvmm_version: env!("CARGO_PKG_VERSION"),
        outcome,
        exit_code: outcome.exit_code() as u8,
        summary,
        config: cfg.clone(),
        host: HostFacts::probe(),
        vcpus,
        host_check_bad_pages,
        host_check_pages,
        termination,
        host_failure,
        injections: faults.report(),
        resolver: resolver_report,
        linux: linux_report,
        protected: protected_report.as_mut().map(|r| {
            counters.fill(r);
            r.vcpu_cpu = cfg.cpus.pin_cpu;
            r.clone()
        }),
        eager_pins: eager_pins_count,
        prefilled_pages: prefilled,
        guest_pages: cfg.pages(),
        vmstat_delta: host::vmstat_delta(&vmstat_before, &host::vmstat()),
        memory: MemAccounting {
            vm_pin_kb_before: kb(acct_before.0),
            vm_pin_kb_running: kb(acct_running.0),
            vm_pin_kb_after: kb(host::status_kb("VmPin")),
            vm_lck_kb_before: kb(acct_before.1),
            vm_lck_kb_running: kb(acct_running.1),
            vm_lck_kb_after: kb(host::status_kb("VmLck")),
            open_fds_before: acct_before.2,
            open_fds_after: sys::open_fds(),
            rss_anon_kb_running: kb(rss_running[0]),
            rss_file_kb_running: kb(rss_running[1]),
            rss_shmem_kb_running: kb(rss_running[2]),
        },
        granule,
        timing: Timing {
            setup_ms,
            guest_ms,
            teardown_ms,
            wall_ms: ms(t_start.elapsed()),
            guest_us_per_touched_page: if touched > 0 {
                guest_ms * 1e3 / touched as f64
            } else {
                0.0
            },
            first_exit_ms,
            guest_exit_ms,
            first_touch_ms,
            first_touch_us_per_page: first_touch_ms
                .filter(|_| touched > 0)
                .map(|t| t * 1e3 / touched as f64),
        },
        console,
        console_bytes,
        console_truncated,
        error,
    })
}

/// What the pin and KVM really got, read while the guest's memory is still mapped.
fn granule_facts(
    kvm: Option<&crate::host::kvmstats::PageSizeStats>,
    mem: &GuestMemory,
) -> GranuleFacts {
    let huge = mem.huge_folios();
    let kvm = kvm.and_then(|k| k.read());
    GranuleFacts {
        granule_bytes: mem.granule() as u64,
        resident_granules: huge.map(|h| h.resident),
        huge_folio_granules: huge.map(|h| h.huge),
        kvm_pages_4k: kvm.map(|k| k.pages_4k),
        kvm_pages_2m: kvm.map(|k| k.pages_2m),
    }
}

/// Kicks still-running vCPUs (signal -> KVM_RUN returns EINTR -> the loop sees the stop flag)
/// until each has reported; returns the ids of those that never did.
fn kick_until_stopped(
    threads: &[VcpuThread],
    events: &std::sync::mpsc::Receiver<VmEvent>,
    outcomes: &mut [Option<VcpuOutcome>],
) -> Vec<usize> {
    let give_up = Instant::now() + Duration::from_secs(5);
    while Instant::now() < give_up {
        let running: Vec<usize> = (0..threads.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        if running.is_empty() {
            return running;
        }
        for &i in &running {
            if !threads[i].handle.is_finished() {
                let _ = threads[i].handle.kill(vcpu::kick_signal());
            }
        }
        while let Ok(ev) = events.recv_timeout(Duration::from_millis(10)) {
            if let VmEvent::VcpuDone { id, outcome } = ev {
                outcomes[id as usize] = Some(outcome);
            }
        }
    }
    (0..threads.len())
        .filter(|&i| outcomes[i].is_none())
        .collect()
}

/// Reads back every page memtouch wrote, from the host side, and counts wrong values.
fn host_check(mem: &GuestMemory, vcpus: &[VcpuResult], cfg: &VmConfig) -> (u64, u64) {
    let base = PayloadArgs {
        stride: cfg.touch.stride_pages * PAGE_SIZE as u64,
        seed: cfg.touch.seed,
        ..Default::default()
    };
    let parts = arch::split_touch_range(cfg.mem_size, cfg.vcpus, base);
    let (mut n, mut bad) = (0, 0);
    for a in parts.iter().take(vcpus.len()) {
        for addr in a.memtouch_addrs() {
            n += 1;
            if mem.read_u64(addr).ok() != Some(a.memtouch_value(addr)) {
                bad += 1;
            }
        }
    }
    (n, bad)
}

/// What a guest did to the VMM's devices, when it did more than a well-behaved guest does.
fn hostile_notes(vcpus: &[VcpuResult], console_bytes: u64, truncated: bool, keep: usize) -> String {
    let mut s = String::new();
    let unmapped: u64 = vcpus.iter().map(|v| v.exits.unmapped).sum();
    if unmapped > 0 {
        let first = vcpus.iter().find_map(|v| v.exits.first_unmapped);
        s += &format!(
            "; {unmapped} accesses to addresses no device answers (first: {}; reads return all ones, writes are dropped)",
            first.map_or_else(|| "?".into(), |a| a.to_string())
        );
    }
    let bad: u64 = vcpus.iter().map(|v| v.bad_device_writes).sum();
    if bad > 0 {
        s += &format!("; {bad} writes to undefined test-device registers (ignored)");
    }
    if truncated {
        s += &format!(
            "; console: {console_bytes} bytes written, the first and last {} kept (truncated)",
            keep / 2
        );
    }
    s
}

fn summarize(
    outcome: Outcome,
    vcpus: &[VcpuResult],
    term: Option<&Termination>,
    error: Option<&str>,
    cfg: &VmConfig,
    touched: u64,
    linux: Option<&LinuxReport>,
) -> String {
    match outcome {
        Outcome::Completed | Outcome::GuestFailed if linux.is_some() => {
            linux.map(LinuxReport::summary).unwrap_or_default()
        }
        Outcome::Completed if cfg.payload == Payload::Memtouch => {
            format!("memtouch checksum verified on {touched} pages")
        }
        Outcome::Completed => format!("{} finished with status 0", cfg.payload.name()),
        Outcome::Terminated if cfg.vm_type == VmType::Protected => {
            let t = term.expect("terminated has a termination");
            format!("{}; protected VM terminated, as crosvm does", t.message)
        }
        Outcome::Terminated => {
            let t = term.expect("terminated has a termination");
            format!(
                "long-term pin of GPA {:#x} failed ({}): VM terminated as pKVM would",
                t.gpa, t.errno_name
            )
        }
        Outcome::Timeout => format!(
            "guest did not finish within {:.0} s",
            cfg.timeout.as_secs_f64()
        ),
        Outcome::VmmError => error.map(str::to_owned).unwrap_or_else(|| {
            let v = vcpus
                .iter()
                .find(|v| matches!(v.outcome, VcpuOutcome::RunFailed { .. }));
            format!("KVM_RUN failed: {:?}", v.map(|v| &v.outcome))
        }),
        Outcome::GuestFailed => {
            let bad: Vec<String> = vcpus
                .iter()
                .filter(|v| {
                    v.outcome != (VcpuOutcome::Exited { status: 0 })
                        || v.expected.is_some_and(|e| e != v.result)
                })
                .map(|v| format!("vCPU {} {:?}", v.id, v.outcome))
                .collect();
            if bad.is_empty() {
                "guest result did not verify".into()
            } else {
                bad.join("; ")
            }
        }
    }
}

/// Whether the run's guest is the memtouch payload (whose result the host checks page by page).
fn is_memtouch(cfg: &VmConfig) -> bool {
    cfg.linux.is_none() && cfg.payload == Payload::Memtouch
}

/// Guest page ranges a Linux boot occupies before the first instruction (kernel with its BSS,
/// initrd, and the boot structure at `boot_info` with the 2 MiB a device tree may take).
fn linux_busy_pages(boot: &LinuxBoot) -> Vec<std::ops::Range<u64>> {
    let page = PAGE_SIZE as u64;
    let pages = |start: u64, len: u64| {
        let first = start.saturating_sub(arch::RAM_START) / page;
        first..(start + len).saturating_sub(arch::RAM_START).div_ceil(page)
    };
    let mut busy = vec![
        pages(boot.kernel.start, boot.kernel.len),
        pages(boot.boot_info, 2 << 20),
    ];
    busy.extend(boot.initrd.map(|r| pages(r.start, r.len)));
    busy
}

fn resolver_config(cfg: &VmConfig) -> ResolverConfig {
    ResolverConfig {
        stage2: cfg.stage2,
        backing: cfg.backing,
        fault_in: cfg.fault_in,
        policy: cfg.policy,
        fault_cpu: cfg.cpus.fault_cpu,
        pin_cpu: cfg.cpus.pin_cpu,
        noise_pages: cfg.noise_pages,
        fault_ahead: cfg.fault_ahead,
        spin: stage2::DEFAULT_SPIN,
        vcpus: cfg.vcpus,
        seccomp: cfg.seccomp.threads(),
    }
}

/// Slot 0: the guest view, or for a protected VM the mlocked pin view (the mapping KVM pins).
fn register_memory(vm: &VmFd, mem: &GuestMemory, pin_view: bool) -> Result<(), VmError> {
    let view = if pin_view {
        mem.pin_view()
    } else {
        mem.guest_view()
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: mem.base(),
        memory_size: mem.size(),
        userspace_addr: view.addr(),
    };
    // SAFETY: the view is a live mapping of exactly memory_size bytes owned by `mem`,
    // which the caller keeps alive until after the VM fd is closed; slot 0 is the only slot.
    unsafe { vm.set_user_memory_region(region) }.map_err(|err| VmError::MemoryRegion {
        gpa: mem.base(),
        size: mem.size(),
        err,
    })
}

fn place(
    buses: &mut Buses,
    at: DeviceAddr,
    len: u64,
    dev: Arc<Mutex<dyn devices::BusDevice>>,
) -> Result<(), devices::BusError> {
    match at {
        DeviceAddr::Pio(a) => buses.pio.insert(a, len, dev),
        DeviceAddr::Mmio(a) => buses.mmio.insert(a, len, dev),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
