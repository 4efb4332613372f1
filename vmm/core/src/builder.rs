// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Building a VM: a linear script (Firecracker's `build_microvm_for_boot` shape) from a
//! validated [`VmConfig`] to a running [`Vm`] — guest memory and the boot image, KVM, stage 2,
//! devices, vCPUs — one function per step. [`Vm::run`] then waits and tears down, and
//! [`crate::report::Report::from`] judges the result.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::{CmosDevice, ConsoleSink, I8042Device, SerialDevice, TestDevice};
use guest::PayloadArgs;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::arch::{self, DeviceAddr};
use crate::config::VmConfig;
use crate::control::{HostFailure, VmControl};
use crate::host::kvmstats::PageSizeStats;
use crate::inject::{Injector, Site};
use crate::linux;
use crate::loader::{self, LoadError};
use crate::memory::{GuestMemory, MemoryError};
use crate::sched::{self, SchedProbe};
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::stage2::efault::ProtectedExplain;
use crate::stage2::protected::{self, ProtectedReport, RunCounters, VmType};
use crate::stage2::uffd::Uffd;
use crate::stage2::{self, EagerError, Resolver, ResolverConfig, ResolverError, Stage2};
use crate::sys::{self, PAGE_SIZE};
use crate::vcpu::{self, Buses};
use crate::vm::{
    Baseline, Boot, CONSOLE_KEEP_BYTES, EagerPins, Explainer, LINUX_CONSOLE_KEEP_BYTES, VcpuThread,
    Vm, ms,
};

/// Failures that stop a VM from being built (as opposed to outcomes of a run).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
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
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    #[error("cannot place a device on the bus: {0}")]
    Bus(#[from] devices::BusError),
    #[error("cannot start a VM thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("cannot copy the staged (anon) pages into the guest view: {0}")]
    CopyStaged(MemoryError),
    #[error("eager pinning before boot failed: {0}")]
    EagerPin(#[from] EagerError),
    #[error("loading the guest failed: {0}")]
    Load(#[from] LoadError),
    #[error("cannot wire the UART's interrupt to GSI {gsi} (KVM_IRQFD): {err}")]
    Irqfd { gsi: u32, err: kvm_ioctls::Error },
}

impl BuildError {
    /// Whether the failure means "this host cannot do it" rather than a VMM bug.
    pub fn is_host_unsupported(&self) -> bool {
        matches!(
            self,
            BuildError::KvmOpen(_)
                | BuildError::KvmCap(_)
                | BuildError::Resolver(ResolverError::Create(_) | ResolverError::NotPermitted(_))
                | BuildError::Memory(MemoryError::HugePagesShort { .. })
        )
    }

    /// The failed host call, for reports, when it is one of the injection sites (mlock of
    /// guest memory; the drains and pins of eager stage 2).
    pub fn host_failure(&self) -> Option<HostFailure> {
        match self {
            BuildError::Memory(MemoryError::Mlock { err, injected, .. }) => Some(HostFailure::at(
                Site::Mlock,
                err.raw_os_error(),
                *injected,
                "main",
                None,
                self.to_string(),
            )),
            BuildError::EagerPin(e) => e.host_failure(),
            _ => None,
        }
    }

    /// Whether the user's input is at fault (a bad kernel or initrd): exit 2.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, BuildError::Load(LoadError::Linux(e)) if e.is_bad_input())
    }
}

/// Stage 2 as armed before KVM sees the memory.
struct Armed {
    uffd: Option<Arc<Uffd>>,
    eager: Option<EagerPins>,
}

/// The devices the vCPUs share, and the console they write to.
struct SharedDevices {
    buses: Buses,
    console: ConsoleSink,
    console_keep: usize,
    serial_irqfd: EventFd,
}

/// Builds the VM `cfg` describes and starts its vCPUs. `cfg` must have been validated.
pub fn build(cfg: &VmConfig) -> Result<Vm, BuildError> {
    let t_start = Instant::now();
    let baseline = Baseline::now();
    // Before anything pins (eager pins happen on this thread, at arm_stage2).
    let mut explain = Explainer::new(cfg.trace, t_start);
    vcpu::install_kick_handler().map_err(BuildError::Signal)?;
    let faults = Injector::new(&cfg.inject);
    // Memory, then the boot image and --prefill: through the mlocked pin view on a loader
    // thread (pKVM-exact), or through the not-mlocked loader view (stress models, baselines;
    // see crate::loader).
    let mut mem = GuestMemory::new_injected(cfg.backing, arch::RAM_START, cfg.mem_size, &faults)?;
    mem.set_load_via(cfg.load_via())?;
    let mem = Arc::new(mem);
    let protected_vm = cfg.vm_type == VmType::Protected;
    // A protected VM's failed pins are explained from what its loader wrote (stage2::efault).
    let pkvm_explain = protected_vm.then(|| explain.protected(&mem, cfg.trace));
    explain.pkvm = pkvm_explain.clone();
    let (boot, loaded) = loader::load(cfg, &mem, pkvm_explain.as_ref())?;
    // KVM is opened after the images are loaded, so a bad kernel or initrd is reported as
    // such (exit 2) even on a host without KVM.
    let kvm = Kvm::new().map_err(BuildError::KvmOpen)?;
    let (vm_fd, kvm_page_sizes) = create_vm(&kvm, cfg.vm_type, &boot)?;
    let armed = arm_stage2(cfg, protected_vm, &mem, &faults)?;
    register_memory(&vm_fd, &mem, protected_vm)?;
    let protected = protected_vm.then(|| protected_report(&loaded));
    let counters = Arc::new(RunCounters::default());
    let (ctl, events) = VmControl::new();
    let resolver = match &armed.uffd {
        Some(u) => Some(Resolver::start(
            resolver_config(cfg),
            mem.clone(),
            u.clone(),
            ctl.clone(),
            faults.clone(),
            explain.parts(),
        )?),
        None => None,
    };
    let shared = shared_devices(cfg, &boot)?;
    let (fds, args) = create_vcpus(&kvm, &vm_fd, cfg, &boot)?;
    if boot.linux().is_some() {
        // Bare payloads poll the UART; Linux's 8250 driver waits for its interrupt.
        vm_fd
            .register_irqfd(&shared.serial_irqfd, arch::SERIAL_IRQ)
            .map_err(|err| BuildError::Irqfd {
                gsi: arch::SERIAL_IRQ,
                err,
            })?;
    }
    let vcpu_cpu = match (protected_vm, &armed.uffd) {
        _ if cfg.cpus.free => None,
        (true, _) => Some(cfg.cpus.pin_cpu),
        (false, Some(_)) => resolver_config(cfg).vcpu_cpu(),
        (false, None) => None,
    };
    let start = VcpuStart {
        protected: protected_vm,
        vcpu_cpu,
        ctl: &ctl,
        faults: &faults,
        counters: &counters,
        trace: explain.trace.as_ref(),
        pkvm_explain: pkvm_explain.as_ref(),
    };
    let threads = start_vcpus(cfg, &start, fds, args, &shared.buses)?;
    // Every VM thread is running (and filtered): the calling thread's own filter comes last.
    seccomp::install_or_fail_vm(ThreadKind::Main, cfg.seccomp == SeccompMode::All, &ctl);
    let t_guest = Instant::now();
    let setup_ms = ms(t_start.elapsed());
    Ok(Vm {
        cfg: cfg.clone(),
        boot,
        t_start,
        baseline,
        faults,
        mem,
        prefilled: loaded.prefilled_pages,
        loader: loaded,
        kvm,
        vm_fd,
        kvm_page_sizes,
        uffd: armed.uffd,
        eager: armed.eager,
        resolver,
        protected,
        counters,
        ctl,
        events,
        console: shared.console,
        console_keep: shared.console_keep,
        shared: shared.buses,
        serial_irqfd: shared.serial_irqfd,
        threads,
        t_guest,
        setup_ms,
        explain,
    })
}

/// Creates the VM (of `vm_type`) and its arch setup; opens KVM's page-size statistics now,
/// as the main thread's seccomp filter allows no ioctl later.
fn create_vm(
    kvm: &Kvm,
    vm_type: VmType,
    boot: &Boot,
) -> Result<(VmFd, Option<PageSizeStats>), BuildError> {
    if !kvm.check_extension(kvm_ioctls::Cap::UserMemory) {
        return Err(BuildError::KvmCap("KVM_CAP_USER_MEMORY"));
    }
    let vm = protected::create_vm(kvm, vm_type).map_err(BuildError::CreateVm)?;
    let kvm_page_sizes = PageSizeStats::open(&vm);
    arch::setup_vm(&vm)?;
    if boot.linux().is_some() {
        arch::setup_linux_vm(&vm)?;
    }
    Ok((vm, kvm_page_sizes))
}

/// Stage 2: arms userfaultfd (pin, uffd), or pins everything now (eager), or leaves the
/// faults to KVM (kernel); nothing for a protected VM, whose pins KVM takes.
fn arm_stage2(
    cfg: &VmConfig,
    protected_vm: bool,
    mem: &GuestMemory,
    faults: &Arc<Injector>,
) -> Result<Armed, BuildError> {
    let mut armed = Armed {
        uffd: None,
        eager: None,
    };
    if protected_vm {
        return Ok(armed);
    }
    match cfg.stage2 {
        Stage2::Pin | Stage2::Uffd => armed.uffd = Some(stage2::arm(mem)?),
        Stage2::Eager => {
            mem.copy_staged_into_guest_view()
                .map_err(BuildError::CopyStaged)?;
            let (table, drainer) = stage2::pin_all_eagerly(mem, cfg.policy, faults)?;
            armed.eager = Some(EagerPins {
                table,
                _drainer: drainer,
            });
        }
        Stage2::Kernel => {
            mem.copy_staged_into_guest_view()
                .map_err(BuildError::CopyStaged)?;
        }
    }
    Ok(armed)
}

/// Slot 0: the guest view, or for a protected VM the mlocked pin view (the mapping KVM pins).
fn register_memory(vm: &VmFd, mem: &GuestMemory, pin_view: bool) -> Result<(), BuildError> {
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
    unsafe { vm.set_user_memory_region(region) }.map_err(|err| BuildError::MemoryRegion {
        gpa: mem.base(),
        size: mem.size(),
        err,
    })
}

/// A protected VM's report, the loader's part from what `crate::loader` did.
fn protected_report(l: &loader::LoaderReport) -> ProtectedReport {
    ProtectedReport {
        loader_cpu: l.cpu_end,
        loader_pages: l.pages,
        prefilled_pages: l.prefilled_pages,
        loader_ms: l.ms,
        drain: l.drain,
        ..Default::default()
    }
}

fn resolver_config(cfg: &VmConfig) -> ResolverConfig {
    ResolverConfig {
        stage2: cfg.stage2,
        backing: cfg.backing,
        fault_in: cfg.fault_in,
        policy: cfg.policy,
        fault_cpu: cfg.cpus.fault_cpu,
        pin_cpu: cfg.cpus.pin_cpu,
        placed: !cfg.cpus.free,
        noise_pages: cfg.noise_pages,
        fault_ahead: cfg.fault_ahead,
        spin: cfg.sched.spin(),
        short_slice: cfg.sched.short_slice,
        vcpus: cfg.vcpus,
        seccomp: cfg.seccomp.threads(),
        read_before_pin: cfg.trace,
    }
}

/// Devices: one shared serial port (and, for Linux, the keyboard controller that resets).
/// A Linux console is long: keep more of it, and watch it for the workload's result line.
fn shared_devices(cfg: &VmConfig, boot: &Boot) -> Result<SharedDevices, BuildError> {
    let linux = boot.linux().is_some();
    let console_keep = if linux {
        LINUX_CONSOLE_KEEP_BYTES
    } else {
        CONSOLE_KEEP_BYTES
    };
    let console = ConsoleSink::new(console_keep, cfg.echo_console);
    let console = if linux {
        console.watching(linux::MARKER)
    } else {
        console
    };
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(BuildError::Thread)?;
    let serial_irqfd = serial_irq.try_clone().map_err(BuildError::Thread)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, console.clone())));
    let mut buses = Buses::default();
    place(&mut buses, arch::SERIAL, SerialDevice::LEN, serial)?;
    if let (true, Some(addr)) = (linux, arch::RESET_DEVICE) {
        let reset = Arc::new(Mutex::new(I8042Device::new()));
        place(&mut buses, addr, devices::i8042::LEN, reset)?;
    }
    if let (true, Some(addr)) = (linux, arch::RTC_DEVICE) {
        let rtc = Arc::new(Mutex::new(CmosDevice::new()));
        place(&mut buses, addr, devices::cmos::LEN, rtc)?;
    }
    Ok(SharedDevices {
        buses,
        console,
        console_keep,
        serial_irqfd,
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

/// Creates and configures the vCPUs (memtouch's range split between them) and finishes the
/// arch setup that needs them all (arm64: the GIC).
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    cfg: &VmConfig,
    boot: &Boot,
) -> Result<(Vec<VcpuFd>, Vec<PayloadArgs>), BuildError> {
    let base = PayloadArgs {
        stride: cfg.touch.stride_pages * PAGE_SIZE as u64,
        passes: cfg.touch.passes,
        seed: cfg.touch.seed,
        testdev: arch::TESTDEV.addr(),
        serial: arch::SERIAL.addr(),
        ram_end: arch::RAM_START + cfg.mem_size,
        far: arch::far_unmapped_gpa(cfg.mem_size),
        ..Default::default()
    };
    let per_vcpu = arch::split_touch_range(cfg.mem_size, cfg.vcpus, base);
    let protected = cfg.vm_type == VmType::Protected;
    let mut fds = Vec::with_capacity(per_vcpu.len());
    for (id, args) in per_vcpu.iter().enumerate() {
        let id = id as u8;
        let fd = vm
            .create_vcpu(id.into())
            .map_err(|err| BuildError::CreateVcpu { id, err })?;
        match boot {
            Boot::Linux(b) => arch::configure_vcpu_linux(kvm, vm, &fd, protected, id, b)?,
            Boot::Payload { entry } => arch::configure_vcpu(kvm, vm, &fd, protected, *entry, args)?,
        }
        fds.push(fd);
    }
    arch::finish_vcpus(vm, fds.len())?;
    Ok((fds, per_vcpu))
}

/// What every vCPU thread is started with.
struct VcpuStart<'a> {
    /// A pKVM protected VM: its own run loop (EFAULT from KVM_RUN is a failed pin).
    protected: bool,
    /// The CPU to place a vCPU thread on, if any.
    vcpu_cpu: Option<usize>,
    ctl: &'a Arc<VmControl>,
    faults: &'a Arc<Injector>,
    counters: &'a Arc<RunCounters>,
    /// `--trace`: each vCPU thread adds itself (KVM pins a protected VM's pages on it).
    trace: Option<&'a Arc<crate::host::trace::TraceSession>>,
    /// A protected VM's vCPUs explain their failed pins (stage2::efault).
    pkvm_explain: Option<&'a ProtectedExplain>,
}

/// Starts one thread per vCPU, each with its own test device on a copy of the shared buses:
/// the ordinary run loop, or a protected VM's (which terminates on KVM_RUN = EFAULT).
fn start_vcpus(
    cfg: &VmConfig,
    s: &VcpuStart<'_>,
    fds: Vec<VcpuFd>,
    args: Vec<PayloadArgs>,
    shared: &Buses,
) -> Result<Vec<VcpuThread>, BuildError> {
    let pkvm = s.protected;
    let mut threads = Vec::with_capacity(fds.len());
    for (id, (fd, args)) in fds.into_iter().zip(args).enumerate() {
        let id = id as u8;
        let testdev = Arc::new(Mutex::new(TestDevice::new()));
        let mut buses = shared.clone();
        place(&mut buses, arch::TESTDEV, TestDevice::LEN, testdev.clone())?;
        let (c, vcpu_faults) = (s.ctl.clone(), s.faults.clone());
        let (policy, counters, vcpu_cpu) = (cfg.policy, s.counters.clone(), s.vcpu_cpu);
        let filter = cfg.seccomp.threads();
        let trace = s.trace.cloned();
        let pkvm_explain = s.pkvm_explain.cloned();
        let short_slice = cfg.sched.short_slice;
        let handle = std::thread::Builder::new()
            .name(format!("pinvmm-vcpu{id}"))
            .spawn(move || {
                // A failed affinity only costs speed (the resolver reports its CPUs).
                if let Some(cpu) = vcpu_cpu {
                    let _ = sys::pin_thread_to_cpu(cpu);
                }
                if let Some(t) = trace {
                    let _ = t.add_current_thread();
                }
                if short_slice {
                    // Refused (an old kernel or a policy): the default slice.
                    let _ = sched::request_short_slice(sched::SHORT_SLICE_NS);
                }
                let probe = SchedProbe::open(format!("vcpu{id}"));
                // Before the filter (it opens the thread's stat): the resolver's pollers
                // count this thread as the VM's own.
                c.own_threads().register_current(vcpu_cpu);
                let filtered = seccomp::install_or_fail_vm(ThreadKind::Vcpu, filter, &c);
                let counts = if pkvm {
                    protected::run_loop(id, fd, buses, c, policy, counters, pkvm_explain)
                } else {
                    vcpu::run_loop(id, fd, buses, c, vcpu_faults)
                };
                (counts, probe.read(), filtered)
            })
            .map_err(BuildError::Thread)?;
        threads.push(VcpuThread {
            handle,
            testdev,
            args,
        });
    }
    Ok(threads)
}
