// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A running VM ([`Vm`], made by [`crate::builder::build`]) and its run to the end: wait for
//! the guest, a failed pin, a failed host call or the timeout; tear down (stop the resolver,
//! releasing every pin; kick the vCPUs out of KVM_RUN); and return what was measured as a
//! [`RunResult`], which [`crate::report::Report::from`] judges.

use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::{ConsoleSink, TestDevice};
use guest::PayloadArgs;
use kvm_ioctls::{Kvm, VmFd};
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch;
use crate::config::VmConfig;
use crate::control::{HostFailure, Termination, VcpuOutcome, VmControl, VmEvent};
use crate::host::folio::FolioReader;
use crate::host::kvmstats::PageSizeStats;
use crate::host::trace::{KernelTrace, TraceSession};
use crate::host::{self, HostFacts};
use crate::inject::{InjectionReport, Injector};
use crate::linux::{self, LinuxReport};
pub use crate::loader::Boot;
use crate::loader::LoaderReport;
use crate::memory::GuestMemory;
use crate::sched::ThreadSched;
use crate::stage2::drain::Drainer;
use crate::stage2::explain::FailedPin;
use crate::stage2::path::PathCounters;
use crate::stage2::pin::PinTable;
use crate::stage2::protected::{ProtectedReport, RunCounters, VmType};
use crate::stage2::uffd::Uffd;
use crate::stage2::{Resolver, ResolverReport};
use crate::sys::{self, PAGE_SIZE};
use crate::vcpu::{self, Buses, ExitCounts};

/// Bytes of the guest's console kept for the report: a guest flooding its serial port costs
/// the VMM this much memory at most (the rest is counted, not kept).
pub const CONSOLE_KEEP_BYTES: usize = 64 << 10;
/// The same for a Linux guest, whose boot log alone is tens of KiB.
pub const LINUX_CONSOLE_KEEP_BYTES: usize = 256 << 10;

/// The process's counters before the VM, to report the run's differences.
#[derive(Debug, Clone)]
pub(crate) struct Baseline {
    pub vm_pin_kb: Option<u64>,
    pub vm_lck_kb: Option<u64>,
    pub open_fds: usize,
    pub vmstat: BTreeMap<String, i64>,
}

impl Baseline {
    pub fn now() -> Self {
        Self {
            vm_pin_kb: host::status_kb("VmPin"),
            vm_lck_kb: host::status_kb("VmLck"),
            open_fds: sys::open_fds(),
            vmstat: host::vmstat(),
        }
    }
}

/// A vCPU thread, its test device and what its payload was asked to do.
#[derive(Debug)]
pub(crate) struct VcpuThread {
    /// Its exits, what the scheduler did to it, and whether it ran under its seccomp filter.
    pub handle: JoinHandle<(ExitCounts, Option<ThreadSched>, bool)>,
    pub testdev: Arc<Mutex<TestDevice>>,
    pub args: PayloadArgs,
}

/// Eager stage 2 (`--stage2 eager`): the pins taken before boot, held until teardown.
#[derive(Debug)]
pub(crate) struct EagerPins {
    pub table: PinTable,
    /// Held with the pins: its scratch page goes at teardown too.
    pub _drainer: Drainer,
}

/// What explains a failed pin (docs/FAILURES.md), held for the VM's life: the path counters
/// every thread adds to, the folio reader, the `--trace` session, and the failed pins
/// explained outside the resolver (a protected VM's vCPU threads).
#[derive(Debug)]
pub struct Explainer {
    pub counters: Arc<PathCounters>,
    pub folio: Option<Arc<FolioReader>>,
    pub trace: Option<Arc<TraceSession>>,
    pub failed: Arc<std::sync::Mutex<Vec<FailedPin>>>,
    /// What cannot be seen on this host (not root, no tracefs), for the report.
    pub notes: Vec<String>,
    /// A protected VM's explainer, for the failures the trace identifies at teardown.
    pub pkvm: Option<crate::stage2::efault::ProtectedExplain>,
}

impl Explainer {
    /// Sets up what `cfg` asks for at `t0` (the VM's time zero), on the calling thread: the
    /// folio reader always (it degrades to a note without root), the trace session with
    /// `--trace` (a note when it cannot start).
    pub fn new(trace: bool, t0: Instant) -> Self {
        let mut notes = Vec::new();
        let folio = match FolioReader::open() {
            Ok(r) => {
                notes.extend(r.note());
                Some(Arc::new(r))
            }
            Err(e) => {
                notes.push(format!("folio state unavailable: {e}"));
                None
            }
        };
        let trace = if trace {
            match TraceSession::start(t0, crate::sched::current_tid()).map_err(|e| e.to_string()) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    notes.push(format!("--trace: {e}"));
                    None
                }
            }
        } else {
            None
        };
        Self {
            counters: Arc::new(PathCounters::new(t0)),
            folio,
            trace,
            failed: Arc::default(),
            notes,
            pkvm: None,
        }
    }

    /// What a protected VM's loader and vCPUs need (stage2::efault); `read_before`: read the
    /// loaded pages' folios at the end of loading (`--trace`).
    pub fn protected(
        &self,
        mem: &Arc<GuestMemory>,
        read_before: bool,
    ) -> crate::stage2::efault::ProtectedExplain {
        crate::stage2::efault::ProtectedExplain {
            mem: mem.clone(),
            counters: self.counters.clone(),
            folio: self.folio.clone(),
            record: Arc::default(),
            out: self.failed.clone(),
            read_before,
        }
    }

    /// The parts the resolver needs.
    pub fn parts(&self) -> crate::stage2::ExplainParts {
        crate::stage2::ExplainParts {
            counters: self.counters.clone(),
            folio: self.folio.clone(),
            trace: self.trace.clone(),
        }
    }

    /// At teardown: every failed pin (resolver's first, then the others), with the kernel's
    /// event of each attached, and the trace.
    fn finish(
        self,
        resolver: Option<&mut ResolverReport>,
    ) -> (Vec<FailedPin>, Option<KernelTrace>, Vec<String>) {
        let mut notes = self.notes;
        let mut failed = resolver
            .map(|r| std::mem::take(&mut r.failed_pins))
            .unwrap_or_default();
        failed.extend(std::mem::take(
            &mut *self.failed.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        let trace = self.trace.and_then(|t| match t.finish() {
            Ok(k) => Some(k),
            Err(e) => {
                notes.push(format!("--trace: {e}"));
                None
            }
        });
        if let Some(k) = &trace {
            // A protected VM's failures and the trace's failed migrations, both in order.
            let mut late = k.failures.iter();
            for f in &mut failed {
                f.resolve(k);
                if f.identified_by != "resolver" {
                    let e = late.next();
                    if let (Some(x), Some(e)) = (&self.pkvm, e) {
                        x.resolve_late(f, e);
                    }
                }
                f.attach_kernel(k);
            }
            if k.lost_events > 0 {
                notes.push(format!(
                    "--trace: the ring buffer dropped {} events: the kernel's counts are incomplete",
                    k.lost_events
                ));
            }
        }
        (failed, trace, notes)
    }
}

/// A built VM whose vCPUs run: everything its run, teardown and report need. Made by
/// [`crate::builder::build`]; [`Vm::run`] consumes it.
#[derive(Debug)]
pub struct Vm {
    pub(crate) cfg: VmConfig,
    pub(crate) boot: Boot,
    pub(crate) t_start: Instant,
    pub(crate) baseline: Baseline,
    pub(crate) faults: Arc<Injector>,
    pub(crate) mem: Arc<GuestMemory>,
    pub(crate) prefilled: u64,
    /// What the loader wrote, through which mapping, where.
    pub(crate) loader: LoaderReport,
    pub(crate) kvm: Kvm,
    pub(crate) vm_fd: VmFd,
    pub(crate) kvm_page_sizes: Option<PageSizeStats>,
    pub(crate) uffd: Option<Arc<Uffd>>,
    pub(crate) eager: Option<EagerPins>,
    pub(crate) resolver: Option<Resolver>,
    pub(crate) protected: Option<ProtectedReport>,
    pub(crate) counters: Arc<RunCounters>,
    pub(crate) ctl: Arc<VmControl>,
    pub(crate) events: Receiver<VmEvent>,
    pub(crate) console: ConsoleSink,
    pub(crate) console_keep: usize,
    /// The devices every vCPU shares (the serial port), and its interrupt's eventfd.
    pub(crate) shared: Buses,
    pub(crate) serial_irqfd: EventFd,
    pub(crate) threads: Vec<VcpuThread>,
    /// When the last VM thread was started (and the main thread filtered): the guest's start.
    pub(crate) t_guest: Instant,
    pub(crate) setup_ms: f64,
    pub(crate) explain: Explainer,
}

/// One vCPU's result.
#[derive(Debug, Clone, Serialize)]
pub struct VcpuResult {
    pub id: u8,
    pub outcome: VcpuOutcome,
    pub result: u64,
    /// What a correct guest reports (memtouch checksum); None when there is nothing to check.
    pub expected: Option<u64>,
    pub errors: u64,
    pub touched_pages: u64,
    pub exits: ExitCounts,
    pub bad_device_writes: u64,
    /// memtouch: time of the first write pass (MARK 1 to MARK 2), when every page is touched
    /// for the first time.
    pub first_touch_ms: Option<f64>,
    /// What the scheduler did to the vCPU thread (run time, run-queue wait, switches).
    pub sched: Option<ThreadSched>,
    /// The exception the guest took, as its exception vectors reported it (bare payloads).
    pub exception: Option<crate::arch::exceptions::ExceptionReport>,
    /// Whether the vCPU's thread ran the guest under its seccomp filter (`seccomp.rs`): false
    /// with `--no-seccomp`, on an architecture without filters, when the filter could not be
    /// installed (the VM then ends as a VMM error), or for a thread left stuck in KVM_RUN.
    pub seccomp: bool,
}

/// /proc/self/status values (KiB) around the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemAccounting {
    pub vm_pin_kb_before: u64,
    pub vm_pin_kb_running: u64,
    pub vm_pin_kb_after: u64,
    pub vm_lck_kb_before: u64,
    pub vm_lck_kb_running: u64,
    pub vm_lck_kb_after: u64,
    /// Open descriptors of the process before the VM was built, and after it was torn down
    /// (KVM, guest memory, userfaultfd, eventfds and trace files closed).
    pub open_fds_before: usize,
    pub open_fds_after: usize,
    /// The process's resident memory by kind while the VM ran (its guest memory is shmem for
    /// the shmem backing: RssShmem counts it once per mapped view).
    pub rss_anon_kb_running: u64,
    pub rss_file_kb_running: u64,
    pub rss_shmem_kb_running: u64,
}

/// The granule guest memory was resolved in, and what the host really used while the VM ran
/// (a huge page backing asks for 2 MiB; whether the pin and KVM got 2 MiB is measured).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GranuleFacts {
    /// Bytes faulted in, pinned (one io_uring buffer) and mapped (one UFFDIO_CONTINUE) per
    /// resolved fault: 4096, or 2 MiB for the hugetlb and shmem-thp backings.
    pub granule_bytes: u64,
    /// Resident granules of the pin view, and how many sat in a 2 MiB folio (hugetlb page or
    /// THP), from /proc/kpageflags; None where PFNs are not readable (not root).
    pub resident_granules: Option<u64>,
    pub huge_folio_granules: Option<u64>,
    /// KVM's leaf mappings of guest memory while the VM ran (VM stats fd; None where KVM
    /// keeps no such statistic, e.g. arm64).
    pub kvm_pages_4k: Option<u64>,
    pub kvm_pages_2m: Option<u64>,
}

/// Timings in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    pub setup_ms: f64,
    pub guest_ms: f64,
    pub teardown_ms: f64,
    pub wall_ms: f64,
    /// Guest time divided by the pages the guest touched (µs).
    pub guest_us_per_touched_page: f64,
    /// From the start of the launch to the first guest exit of any vCPU (the earliest point at
    /// which guest code is seen running).
    pub first_exit_ms: Option<f64>,
    /// From the start of the launch to the last vCPU's exit (or the VM's end).
    pub guest_exit_ms: f64,
    /// memtouch: the first write pass (slowest vCPU), every page's first touch.
    pub first_touch_ms: Option<f64>,
    /// `first_touch_ms` per touched page (µs): the first-touch cost the guest sees.
    pub first_touch_us_per_page: Option<f64>,
}

/// How the wait for the guest ended.
#[derive(Debug, Default)]
struct Ended {
    outcomes: Vec<Option<VcpuOutcome>>,
    termination: Option<Termination>,
    host_failure: Option<HostFailure>,
    error: Option<String>,
    timed_out: bool,
    /// The first vCPU to stop (a Linux guest ends with it).
    first_done: Option<VcpuOutcome>,
}

/// What was measured while the VM was still there (its memory mapped, its pins held).
#[derive(Debug)]
struct Running {
    guest_ms: f64,
    guest_exit_ms: f64,
    first_exit_ms: Option<f64>,
    vm_pin_kb: Option<u64>,
    vm_lck_kb: Option<u64>,
    rss: [Option<u64>; 3],
    granule: GranuleFacts,
}

/// Everything a run measured, before it is judged ([`crate::report::Report::from`]).
#[derive(Debug, Clone)]
pub struct RunResult {
    pub config: VmConfig,
    pub host: HostFacts,
    pub vcpus: Vec<VcpuResult>,
    /// Pages memtouch wrote that the host read back, and those it found wrong.
    pub host_check_pages: u64,
    pub host_check_bad_pages: u64,
    pub termination: Option<Termination>,
    pub host_failure: Option<HostFailure>,
    /// Why the VM ended as a VMM error, when a thread said so.
    pub error: Option<String>,
    pub timed_out: bool,
    pub injections: Vec<InjectionReport>,
    pub resolver: Option<ResolverReport>,
    pub linux: Option<LinuxReport>,
    pub protected: Option<ProtectedReport>,
    /// What the loader wrote before boot, through which mapping, on which CPU.
    pub loader: LoaderReport,
    pub eager_pins: u64,
    pub prefilled_pages: u64,
    pub vmstat_delta: BTreeMap<String, i64>,
    pub memory: MemAccounting,
    pub granule: GranuleFacts,
    pub timing: Timing,
    /// The kept part of the guest's console, every byte it wrote, and how much is kept.
    pub console: String,
    pub console_bytes: u64,
    pub console_keep: usize,
    /// Every failed long-term pin, explained (docs/FAILURES.md).
    pub failed_pins: Vec<FailedPin>,
    /// `--trace`: the kernel's record of the VM's pins.
    pub kernel_trace: Option<KernelTrace>,
    /// What this host did not let the explanation see.
    pub explain_notes: Vec<String>,
}

impl Vm {
    /// Waits for the guest's end (every vCPU, or for Linux the first), a failed pin, a failed
    /// host call or the timeout; tears the VM down; returns what was measured.
    pub fn run(self) -> RunResult {
        let linux = self.boot.linux().is_some();
        let deadline = self.t_guest + self.cfg.timeout;
        let ended = wait(&self.events, self.threads.len(), linux, deadline);
        let running = Running {
            guest_ms: ms(self.t_guest.elapsed()),
            guest_exit_ms: ms(self.t_start.elapsed()),
            first_exit_ms: self
                .ctl
                .first_exit()
                .map(|t| ms(t.saturating_duration_since(self.t_start))),
            vm_pin_kb: host::status_kb("VmPin"),
            vm_lck_kb: host::status_kb("VmLck"),
            rss: ["RssAnon", "RssFile", "RssShmem"].map(host::status_kb),
            granule: granule_facts(self.kvm_page_sizes.as_ref(), &self.mem),
        };
        self.tear_down(ended, running)
    }

    /// Stops the resolver (releasing every pin), closes userfaultfd (a vCPU stuck on an
    /// unresolved fault is released), kicks the vCPUs out of KVM_RUN, reads what the guest
    /// left, and releases the VM.
    fn tear_down(self, mut ended: Ended, running: Running) -> RunResult {
        let t_teardown = Instant::now();
        self.ctl.request_stop();
        let mut resolver = self.resolver.map(Resolver::finish);
        drop(self.uffd);
        let stuck = kick_until_stopped(&self.threads, &self.events, &mut ended.outcomes);
        if !stuck.is_empty() {
            let e = format!("vCPU threads {stuck:?} did not stop within 5 s");
            ended.error.get_or_insert(e);
        }
        let cfg = self.cfg;
        let vcpus = join_vcpus(self.threads, &ended.outcomes, &stuck, &cfg);
        // The host reads zeros from a protected VM's donated pages: nothing to check there.
        let all_ok = vcpus
            .iter()
            .all(|v| v.outcome == VcpuOutcome::Exited { status: 0 });
        let (host_check_pages, host_check_bad_pages) =
            if is_memtouch(&cfg) && all_ok && cfg.vm_type != VmType::Protected {
                host_check(&self.mem, &vcpus, &cfg)
            } else {
                (0, 0)
            };
        drop(self.vm_fd);
        let eager_pins = self.eager.map_or(0, |e| e.table.pinned_pages());
        let (console, console_bytes) = self.console.snapshot();
        drop(self.mem);
        let teardown_ms = ms(t_teardown.elapsed());
        let linux = match (self.boot, &cfg.linux) {
            (Boot::Linux(b), Some(l)) => Some(linux::report(
                l,
                b,
                ended.first_done.as_ref(),
                &self.console,
                &console,
                self.t_start,
            )),
            _ => None,
        };
        let protected = self.protected.map(|mut r| {
            self.counters.fill(&mut r);
            r.vcpu_cpu = (!cfg.cpus.free).then_some(cfg.cpus.pin_cpu);
            r
        });
        let timing = timing(&vcpus, &running, self.setup_ms, teardown_ms);
        // Read while the VM's last descriptors (KVM, the serial port's eventfds) are open, as
        // every report has read them.
        let host = HostFacts::probe();
        let vmstat_delta = host::vmstat_delta(&self.baseline.vmstat, &host::vmstat());
        let mut memory = accounting(&self.baseline, &running);
        let wall_ms = ms(self.t_start.elapsed());
        drop((self.kvm, self.shared, self.serial_irqfd));
        // Every VM thread has ended: the trace holds all of their events.
        let (failed_pins, kernel_trace, explain_notes) = self.explain.finish(resolver.as_mut());
        // Counted once the VM's own descriptors are closed, so that a difference from
        // `open_fds_before` is something the run left open.
        drop(self.kvm_page_sizes);
        self.ctl.own_threads().forget_all();
        memory.open_fds_after = sys::open_fds();
        RunResult {
            config: cfg,
            host,
            vcpus,
            host_check_pages,
            host_check_bad_pages,
            termination: ended.termination,
            host_failure: ended.host_failure,
            error: ended.error,
            timed_out: ended.timed_out,
            injections: self.faults.report(),
            resolver,
            linux,
            protected,
            loader: self.loader,
            eager_pins,
            prefilled_pages: self.prefilled,
            vmstat_delta,
            memory,
            granule: running.granule,
            timing: Timing { wall_ms, ..timing },
            console,
            console_bytes,
            console_keep: self.console_keep,
            failed_pins,
            kernel_trace,
            explain_notes,
        }
    }
}

/// Waits for every vCPU (for Linux: the first, which ends the whole guest), a pin failure, a
/// host failure, or `deadline`.
fn wait(events: &Receiver<VmEvent>, vcpus: usize, linux: bool, deadline: Instant) -> Ended {
    let mut e = Ended {
        outcomes: vec![None; vcpus],
        ..Default::default()
    };
    while e.outcomes.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(VmEvent::VcpuDone { id, outcome }) => {
                e.first_done.get_or_insert(outcome.clone());
                e.outcomes[id as usize] = Some(outcome);
                if linux {
                    break;
                }
            }
            Ok(VmEvent::PinFailed(t)) => {
                e.termination.get_or_insert(t);
                break;
            }
            Ok(VmEvent::HostFailed(f)) => {
                e.error.get_or_insert_with(|| f.message.clone());
                e.host_failure.get_or_insert(f);
                break;
            }
            Err(_) => {
                e.timed_out = true;
                break;
            }
        }
    }
    e
}

/// What the pin and KVM really got, read while the guest's memory is still mapped.
fn granule_facts(kvm: Option<&PageSizeStats>, mem: &GuestMemory) -> GranuleFacts {
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
    events: &Receiver<VmEvent>,
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

/// Joins the vCPU threads (but those stuck in KVM_RUN) and reads what each guest reported.
fn join_vcpus(
    threads: Vec<VcpuThread>,
    outcomes: &[Option<VcpuOutcome>],
    stuck: &[usize],
    cfg: &VmConfig,
) -> Vec<VcpuResult> {
    let memtouch = is_memtouch(cfg);
    let mut vcpus = Vec::with_capacity(threads.len());
    for (id, t) in threads.into_iter().enumerate() {
        let (exits, sched, seccomp) = if stuck.contains(&id) {
            (ExitCounts::default(), None, false)
        } else {
            t.handle.join().unwrap_or_default()
        };
        let rep = t
            .testdev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report()
            .clone();
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
            sched,
            exception: rep.exception.as_ref().map(arch::exceptions::describe),
            seccomp,
        });
    }
    vcpus
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

/// The run's timings (but `wall_ms`, taken last).
fn timing(vcpus: &[VcpuResult], r: &Running, setup_ms: f64, teardown_ms: f64) -> Timing {
    let touched: u64 = vcpus.iter().map(|v| v.touched_pages).sum();
    let first_touch_ms = vcpus
        .iter()
        .filter_map(|v| v.first_touch_ms)
        .reduce(f64::max);
    Timing {
        setup_ms,
        guest_ms: r.guest_ms,
        teardown_ms,
        wall_ms: 0.0,
        guest_us_per_touched_page: if touched > 0 {
            r.guest_ms * 1e3 / touched as f64
        } else {
            0.0
        },
        first_exit_ms: r.first_exit_ms,
        guest_exit_ms: r.guest_exit_ms,
        first_touch_ms,
        first_touch_us_per_page: first_touch_ms
            .filter(|_| touched > 0)
            .map(|t| t * 1e3 / touched as f64),
    }
}

/// VmPin, VmLck and open descriptors before, while and after (the caller counts the
/// descriptors again once the VM's are closed); RSS while the VM ran.
fn accounting(before: &Baseline, running: &Running) -> MemAccounting {
    let kb = |v: Option<u64>| v.unwrap_or(0);
    MemAccounting {
        vm_pin_kb_before: kb(before.vm_pin_kb),
        vm_pin_kb_running: kb(running.vm_pin_kb),
        vm_pin_kb_after: kb(host::status_kb("VmPin")),
        vm_lck_kb_before: kb(before.vm_lck_kb),
        vm_lck_kb_running: kb(running.vm_lck_kb),
        vm_lck_kb_after: kb(host::status_kb("VmLck")),
        open_fds_before: before.open_fds,
        open_fds_after: sys::open_fds(),
        rss_anon_kb_running: kb(running.rss[0]),
        rss_file_kb_running: kb(running.rss[1]),
        rss_shmem_kb_running: kb(running.rss[2]),
    }
}

/// Whether the run's guest is the memtouch payload (whose result the host checks page by page).
pub(crate) fn is_memtouch(cfg: &VmConfig) -> bool {
    cfg.linux.is_none() && cfg.payload == guest::Payload::Memtouch
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
