// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The stage-2 fault resolver: resolves the guest's faults the way pKVM does, by a
//! FOLL_LONGTERM pin of the page, on any KVM host.
//!
//! The guest view is armed with userfaultfd (shmem: MISSING|MINOR, anon: MISSING), so a KVM
//! stage-2 fault on a page the guest view does not map yet waits for us. Per fault:
//!
//! 1. *fault-in* (on `fault_cpu`): fault the page into the mlocked pin view (`--fault-in
//!    touch`) or leave that to the pin (`--fault-in pin`); write the noise pages; run the
//!    policy's after-fault-in drain (mlock-drain: a local drain there);
//! 2. *pin* (on `pin_cpu`): run the policy's before-pin drain (lru-add-drain), take the
//!    long-term pin, map the page into the guest view (UFFDIO_CONTINUE, or the anon copy made
//!    in step 1) and wake the vCPU.
//!
//! Threads. The *pin thread* (on `pin_cpu`, where a single vCPU is placed too) reads the
//! userfaultfd and does step 2; the *fault-in thread* (on `fault_cpu`) does step 1 when the
//! pin thread hands it a fault, and hands it back. With `--fault-in pin` step 1 is empty for a
//! page nobody faulted in before (a MISSING fault: the pin faults it in, on the pin CPU, as in
//! pKVM), so the pin thread resolves it alone; only a page already in memory (a MINOR fault:
//! the VMM wrote it), an anon page the loader staged, and `--noise` go to the fault CPU. When
//! both CPUs are the same, one thread does both steps; `--stage2 uffd` (the bare round trip, no
//! pin) runs on the fault-in CPU alone. A failed pin is not resolved: the VM is terminated
//! (reported to the main thread), as pKVM turns it into a failed KVM_RUN.
//!
//! Speed (docs/PERFORMANCE.md): the guest waits for every hand-off. The vCPU's fault wakes the
//! pin thread on its own CPU, and the pin thread's UFFDIO_CONTINUE wakes the vCPU there: two
//! local wake-ups, as cheap as a hand-off gets, on a quiet or a busy CPU. A hand-off to the
//! fault-in thread and back crosses CPUs: there the waiting side polls while its CPU would
//! otherwise idle (waking an idle CPU costs tens of µs on a virtual host) and sleeps as soon
//! as it finds other tasks wanting its CPU ([`Poller`]): a poller that is preempted waits for
//! its next turn, up to a scheduler tick, while a sleeper's wake-up can preempt. Every
//! resolver thread and a placed vCPU ask the scheduler for a short slice
//! ([`crate::sched::request_short_slice`]), so that their wake-ups preempt a busy CPU's
//! running task at once. The fault path does not allocate. With `fault_ahead` K > 0 (off by
//! default: it changes what the experiment measures), one event faults in, drains, pins (one
//! batched io_uring update) and maps the faulting page and up to K not-yet-seen pages after
//! it, in chunks, so the pin thread pins and maps one chunk while the fault-in thread faults
//! in the next.
//!
//! Every failed pin is explained ([`crate::stage2::explain`]): the pin thread reads the
//! folio's state right after the failure (and, with `--trace`, just before each pin), and
//! each page carries the [`Stamp`] of its fault-in — thread, CPU, time, and the counts of
//! drains and LRU traffic at that moment — so the failure's report gives the page's path.
//!
//! "Page" here means the memory's granule ([`GuestMemory::granule`]): 4 KiB, or 2 MiB for the
//! hugetlb and shmem-thp backings, where one fault is resolved by faulting in, pinning (one
//! io_uring buffer) and mapping (one UFFDIO_CONTINUE) the whole 2 MiB around it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use serde::Serialize;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::handoff::{Handoff, Poller, Producer, Work};
use super::{FaultIn, Stage2};
use crate::control::{CallFailure, HostFailure, Termination, VmControl, VmEvent};
use crate::host::folio::{FolioReader, FolioState};
use crate::host::trace::TraceSession;
use crate::inject::{Injector, Site};
use crate::memory::Backing;
use crate::memory::GuestMemory;
use crate::sched::{self, SchedProbe, ThreadSched};
use crate::seccomp::{self, ThreadKind};
use crate::stage2::drain::{DrainError, DrainPolicy, DrainStats, Drainer};
use crate::stage2::explain::{FailedPin, explain};
use crate::stage2::path::{Count, PathCounters, Stamp};
use crate::stage2::pin::{PinError, PinStats, PinTable};
use crate::stage2::uffd::{self, Event, EventBuffer, Pagefault, RegisterMode, Uffd, UffdError};
use crate::stats::{Latencies, LatencySummary};
use crate::sys::errno_name;
use crate::sys::{self, Mapping, PAGE_SIZE};

/// How long a resolver thread may poll for its next hand-off from the other CPU before it
/// sleeps, while its CPU has nothing else to run ([`Poller`]). A guest touching fresh memory
/// faults every few tens of µs, so this covers the gaps between its faults; a guest that stops
/// faulting costs at most this much CPU time per pause.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(300);

/// The fault-in thread's name in reports.
const FAULT_THREAD: &str = "fault-in";

/// The pin thread's name in reports.
const PIN_THREAD: &str = "pin";

/// The longest the pin thread polls for a fault to come back from the fault-in thread, even on
/// a crowded host (the vCPU waits for it anyway): a fault-in there takes a few µs, and waking
/// that thread, on an idle CPU or past a busy one's running task, tens of µs. Longer, and the
/// pin thread would keep another VM's vCPU off this CPU.
const BACK_POLL: Duration = super::handoff::SHORT_POLL;

/// Events read from the userfaultfd in one read(2) (several vCPUs may be waiting).
const EVENTS_PER_READ: usize = 16;

/// Pages per hand-off with fault-ahead: the pin side pins and maps one chunk while the
/// fault-in side faults in the next (measured: 4-8 pay too many hand-offs and wake-ups, 64
/// leaves the two CPUs waiting for each other).
const FAULT_AHEAD_CHUNK: u64 = 16;

/// Failures setting up or running the resolver.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error(
        "cannot create a userfaultfd that sees KVM's faults: {0} (needs root or vm.unprivileged_userfaultfd=1, and a kernel with MINOR_SHMEM for shmem)"
    )]
    Create(UffdError),
    /// An unprivileged user without a grant for kernel-mode userfaultfds.
    #[error(
        "this user may not create a userfaultfd that sees KVM's faults ({0}): {grant}, or use --stage2 kernel (no userfaultfd, no pins)",
        grant = uffd_grant()
    )]
    NotPermitted(UffdError),
    #[error("cannot register guest memory ({len} bytes at {addr:#x}) with userfaultfd: {err}")]
    Register {
        addr: u64,
        len: usize,
        err: UffdError,
    },
    #[error("cannot set up the resolver's event loop: {0}")]
    EventLoop(event_manager::Error),
    #[error("cannot start the resolver thread: {0}")]
    Spawn(io::Error),
    #[error("cannot create the noise file: {0}")]
    Noise(io::Error),
    #[error(transparent)]
    Drain(#[from] DrainError),
}

/// How to allow an unprivileged user kernel-mode userfaultfds on this host.
fn uffd_grant() -> &'static str {
    if std::path::Path::new("/dev/userfaultfd").exists() {
        "give it read-write access to /dev/userfaultfd (e.g. `chgrp kvm /dev/userfaultfd && chmod 0660 /dev/userfaultfd` for members of group kvm), or `sysctl vm.unprivileged_userfaultfd=1`, or run as root"
    } else {
        "`sysctl vm.unprivileged_userfaultfd=1` allows it (this kernel has no /dev/userfaultfd), or run as root"
    }
}

/// How the resolver is asked to work.
#[derive(Debug, Clone, Copy)]
pub struct ResolverConfig {
    pub stage2: Stage2,
    pub backing: Backing,
    pub fault_in: FaultIn,
    pub policy: DrainPolicy,
    pub fault_cpu: usize,
    pub pin_cpu: usize,
    /// Whether the threads are placed on `fault_cpu` / `pin_cpu` (false: `--cpus free`).
    pub placed: bool,
    pub noise_pages: u32,
    /// Pages after the faulting one resolved on the same event (0: one page per fault).
    pub fault_ahead: u32,
    /// How long the resolver threads may poll for a hand-off before sleeping (0: never poll).
    pub spin: Duration,
    /// Ask the scheduler for short slices for the resolver threads (and a placed vCPU).
    pub short_slice: bool,
    /// vCPUs of the VM (a single vCPU is placed next to the thread that wakes it).
    pub vcpus: u8,
    /// Install the resolver threads' seccomp filters.
    pub seccomp: bool,
    /// Read the folio's state just before every pin (`--trace`), not only after a failure.
    pub read_before_pin: bool,
}

/// Failed pins kept, explained, per VM (the first ones; a retrying VM can fail thousands).
pub const MAX_FAILED_PINS: usize = 64;

/// What the resolver needs to explain a failed pin: the VM's path counters and a reader of
/// folio state (`None` where /proc/self/pagemap cannot be opened).
#[derive(Debug, Clone)]
pub struct ExplainParts {
    pub counters: Arc<PathCounters>,
    pub folio: Option<Arc<FolioReader>>,
    /// `--trace`: the resolver threads add themselves to the session's filter.
    pub trace: Option<Arc<TraceSession>>,
}

impl ResolverConfig {
    /// The CPU a single vCPU thread should run on: the CPU of the resolver thread that maps
    /// its pages and wakes it (the pin thread; the fault-in thread when it does everything).
    /// Waking a thread on another, idle CPU costs tens of µs on a virtual host, on every
    /// fault; on the waker's own CPU the wake is a local context switch. It also matches
    /// pKVM, where the vCPU thread takes the pin itself. Several vCPUs are left to the
    /// scheduler.
    pub fn vcpu_cpu(&self) -> Option<usize> {
        if self.vcpus != 1 || !self.placed {
            return None;
        }
        match self.stage2 {
            Stage2::Pin => Some(self.pin_cpu),
            Stage2::Uffd => Some(self.fault_cpu),
            Stage2::Kernel | Stage2::Eager => None,
        }
    }
}

/// What the resolver measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResolverReport {
    pub faults: u64,
    pub minor_faults: u64,
    pub missing_faults: u64,
    /// Faults on pages already resolved (another vCPU raced, or a spurious wake).
    pub repeat_faults: u64,
    pub pins: PinStats,
    pub retried_pins: u64,
    pub drain: DrainStats,
    pub noise_pages_written: u64,
    /// Per pin call (one page; with fault-ahead, one chunk of pages).
    pub pin_latency: LatencySummary,
    /// From reading the fault to the return of the UFFDIO_CONTINUE (or wake) that maps the
    /// faulting page. The wake-up it does lets the vCPU run on this CPU (its place), so this
    /// can include the guest's run up to its next fault: see `resolve_latency`.
    pub fault_latency: LatencySummary,
    /// From reading the fault to the faulting page being ready to map (faulted in, drained,
    /// pinned): the resolver's own work and hand-off, without the vCPU's time.
    pub resolve_latency: LatencySummary,
    pub fault_cpu: usize,
    pub pin_cpu: usize,
    /// Fault-ins that ran on another CPU than `fault_cpu` (the thread was moved).
    pub fault_cpu_mismatches: u64,
    /// Pages resolved ahead of a fault (`fault_ahead` > 0), included in the pins.
    pub pages_ahead: u64,
    /// Times the event loop of the thread that reads the userfaultfd (the pin thread; the
    /// fault-in thread when it works alone) woke up from epoll.
    pub event_loop_wakeups: u64,
    /// Times the pin thread slept waiting for the fault-in thread to hand a fault back.
    pub pin_thread_sleeps: u64,
    /// Times the fault-in thread slept waiting for the next fault to fault in.
    pub fault_thread_sleeps: u64,
    /// Faults (chunks, with fault-ahead) handed to the fault-in thread on the fault CPU; the
    /// other faults were resolved by the pin thread alone.
    pub fault_cpu_handoffs: u64,
    /// Polls that stopped because their thread was preempted (other tasks wanted the CPU).
    pub preempted_polls: u64,
    /// Waits that slept at once, without polling, because more tasks were runnable than
    /// there are CPUs, one of them outside the VM or a thread of the VM that may share the
    /// waiting thread's CPU (the VM's threads placed on other CPUs do not count).
    pub crowded_waits: u64,
    /// The polling limit, µs.
    pub spin_us: u64,
    /// Whether the resolver threads asked for short scheduler slices.
    pub short_slice: bool,
    /// Pins taken on another CPU than `pin_cpu` (the thread was moved).
    pub pin_cpu_mismatches: u64,
    /// What the scheduler did to each resolver thread (run time, run-queue wait, switches).
    pub threads: Vec<ThreadSched>,
    /// The CPU the vCPU thread was placed on (one vCPU), see [`ResolverConfig::vcpu_cpu`].
    pub vcpu_cpu: Option<usize>,
    /// Bytes faulted in, pinned and mapped per resolved page (4096, or 2 MiB for the huge page
    /// backings): faults, pins and `pages_ahead` count these units.
    pub granule_bytes: u64,
    /// From a page's fault-in into the mlocked view to the start of its pin, over the pins
    /// that succeeded (a failed pin's time is in its explanation; none with `--fault-in pin`).
    pub fault_to_pin_latency: LatencySummary,
    /// Failed pins, each explained (docs/FAILURES.md); at most [`MAX_FAILED_PINS`].
    pub failed_pins: Vec<FailedPin>,
    /// Failed pins beyond those kept.
    pub failed_pins_dropped: u64,
}

/// Makes a userfaultfd call at `site`, unless `faults` fails it first.
fn uffd_call<T>(
    faults: &Injector,
    site: Site,
    call: impl FnOnce() -> Result<T, UffdError>,
) -> Result<T, CallFailure> {
    if let Some(errno) = faults.hit(site) {
        return Err(CallFailure::injected(site, errno));
    }
    call().map_err(|e| CallFailure {
        site,
        errno: Some(e.errno),
        injected: false,
        detail: e.to_string(),
    })
}

fn is_eexist(e: &CallFailure) -> bool {
    e.errno == Some(libc::EEXIST)
}

/// The pin half. Owns the pin table: pins live exactly as long as it does.
struct PinSide {
    cfg: ResolverConfig,
    mem: Arc<GuestMemory>,
    uffd: Arc<Uffd>,
    ctl: Arc<VmControl>,
    faults: Arc<Injector>,
    /// The thread this side runs on, for reports.
    thread: &'static str,
    table: PinTable,
    drainer: Drainer,
    pin_lat: Latencies,
    fault_lat: Latencies,
    resolve_lat: Latencies,
    fault_to_pin: Latencies,
    retried: u64,
    pin_cpu_mismatches: u64,
    dead: bool,
    explain: ExplainParts,
    failed: Vec<FailedPin>,
    failed_dropped: u64,
}

impl PinSide {
    /// The folio at `hva` now, if it can be read.
    fn folio(&self, hva: u64) -> Option<FolioState> {
        self.explain.folio.as_ref()?.read(hva).ok()
    }

    /// Explains the failed pin `e` of work `w`, read at once; `before` is the first page's
    /// state read before the pin (`--trace`), `pin_at` when the pin started.
    fn explain_failure(
        &self,
        e: &PinError,
        w: &Work,
        before: Option<FolioState>,
        pin_at: Instant,
        outcome: &str,
    ) -> Option<FailedPin> {
        let PinError::Pin {
            page,
            hva,
            injected,
            ..
        } = *e
        else {
            return None;
        };
        let after = self.folio(hva);
        let before = before.filter(|_| page == w.page);
        let fault_in = w.stamp.as_ref().map(|s| (s, FAULT_THREAD));
        let path = self
            .explain
            .counters
            .path(fault_in, self.thread, sys::current_cpu(), pin_at);
        let verdict = explain(before.as_ref(), after.as_ref(), &path, injected);
        Some(FailedPin {
            gpa: self.gpa(page),
            hva,
            errno_name: errno_name(e.errno().unwrap_or(0)),
            outcome: outcome.into(),
            identified_by: "resolver".into(),
            before,
            after,
            path,
            verdict,
            kernel: None,
            alternatives: Vec::new(),
        })
    }

    fn keep(&mut self, f: Option<FailedPin>) {
        match f {
            Some(f) if self.failed.len() < MAX_FAILED_PINS => self.failed.push(f),
            Some(_) => self.failed_dropped += 1,
            None => {}
        }
    }

    fn gpa(&self, page: u64) -> u64 {
        self.mem.base() + page * self.mem.granule() as u64
    }

    fn resolve(&mut self, w: Work) {
        if self.dead {
            return; // The VM is being torn down; teardown releases the waiting vCPU.
        }
        let n = u64::from(w.count);
        if self.cfg.stage2 == Stage2::Pin {
            if let Err(e) = self.drainer.before_pin() {
                return self.fail_host(e.host_failure(self.thread, self.gpa(w.page)));
            }
            if sys::current_cpu() != Some(self.cfg.pin_cpu) {
                self.pin_cpu_mismatches += 1;
            }
            let g = self.mem.granule() as u64;
            let base = self.mem.pin_view().addr();
            let pin_hva = move |p: u64| base + p * g;
            let before = if self.cfg.read_before_pin {
                self.folio(pin_hva(w.page))
            } else {
                None
            };
            let t = Instant::now();
            let mut r = self.table.pin_range(w.page, pin_hva(w.page), n);
            // A failed pin (not a failed table setup) may be retried, as the policy says.
            if let Err(e @ PinError::Pin { page: failed, .. }) = &r {
                let failed = *failed;
                // Read the folio at once, before the retry's drain changes it.
                let record = self.explain_failure(e, &w, before, t, "retried");
                // Pages before the failed one stay pinned; the retry starts at it.
                match self.drainer.after_failed_pin() {
                    Ok(true) => {
                        self.retried += 1;
                        self.keep(record);
                        let left = w.page + n - failed;
                        let t2 = Instant::now();
                        r = self.table.pin_range(failed, pin_hva(failed), left);
                        if let Err(e) = &r {
                            let again = self.explain_failure(e, &w, None, t2, "terminated");
                            self.keep(again);
                        }
                    }
                    Ok(false) => self.keep(record.map(|mut f| {
                        f.outcome = "terminated".into();
                        f
                    })),
                    Err(e) => {
                        return self.fail_host(e.host_failure(self.thread, self.gpa(failed)));
                    }
                }
            }
            match r {
                Ok(()) => {}
                Err(e @ PinError::Pin { .. }) => return self.terminate(&e),
                Err(e) => {
                    let gpa = self.gpa(w.page);
                    let what = format!("setting up the pin table for GPA {gpa:#x}: {e}");
                    return self.fail_host(e.host_failure(self.thread, gpa, what));
                }
            }
            self.pin_lat.record(t.elapsed().as_nanos() as u64);
            // Successful pins only: a failed one has its own time in its explanation.
            if let Some(s) = &w.stamp {
                self.fault_to_pin
                    .record(t.saturating_duration_since(s.at).as_nanos() as u64);
            }
        }
        if w.faulting {
            self.resolve_lat.record(w.t0.elapsed().as_nanos() as u64);
        }
        if let Err(e) = self.map_for_guest(w.guest_hva, n) {
            let gpa = self.gpa(w.page);
            let what = format!("mapping guest page {} (GPA {gpa:#x}) for the guest", w.page);
            return self.fail_host(e.into_host_failure(self.thread, Some(gpa), &what));
        }
        if w.faulting {
            self.fault_lat.record(w.t0.elapsed().as_nanos() as u64);
        }
    }

    /// A failed long-term pin: the VM is terminated, as pKVM terminates it.
    fn terminate(&mut self, e: &PinError) {
        self.dead = true;
        let PinError::Pin {
            page,
            hva,
            injected,
            ..
        } = *e
        else {
            return;
        };
        let errno = e.errno().unwrap_or(0);
        self.ctl.send(VmEvent::PinFailed(Termination {
            site: Site::PinUpdate.name().into(),
            call: Site::PinUpdate.call().into(),
            errno,
            errno_name: errno_name(errno),
            gpa: self.gpa(page),
            hva,
            page,
            injected,
            pins_ok_before: self.table.stats.ok,
            message: e.to_string(),
        }));
    }

    /// Maps `n` pages into the guest view and wakes the faulting vCPU(s).
    fn map_for_guest(&self, guest_hva: u64, n: u64) -> Result<(), CallFailure> {
        let addr = guest_hva as *mut libc::c_void;
        let g = self.mem.granule();
        let len = n as usize * g;
        let (f, uffd) = (&*self.faults, &self.uffd);
        let wake = || uffd_call(f, Site::UffdWake, || uffd.wake(addr, len));
        match self.cfg.backing {
            // hugetlb: one CONTINUE maps a whole 2 MiB page (a PMD); shmem maps 4 KiB PTEs.
            Backing::Shmem | Backing::Hugetlb | Backing::ShmemThp => {
                match uffd_call(f, Site::UffdContinue, || uffd.r#continue(addr, len, true)) {
                    Ok(mapped) if mapped == len => Ok(()),
                    // Partly mapped already (a racing vCPU, or a range with a mapped page):
                    // map the rest page by page, then wake the whole range.
                    Err(e) if !is_eexist(&e) => Err(e),
                    Ok(_) | Err(_) => {
                        for i in 0..n as usize {
                            let a = addr.wrapping_byte_add(i * g);
                            match uffd_call(f, Site::UffdContinue, || uffd.r#continue(a, g, false))
                            {
                                Err(e) if !is_eexist(&e) => return Err(e),
                                _ => {}
                            }
                        }
                        wake()
                    }
                }
            }
            // The pages were copied in (DONTWAKE) by the fault-in half.
            Backing::Anon => wake(),
        }
    }

    fn fail_host(&mut self, f: HostFailure) {
        self.dead = true;
        self.ctl.send(VmEvent::HostFailed(f));
    }
}

/// Where the fault-in half runs.
enum FaultHalf {
    /// On the pin thread itself (fault CPU = pin CPU, or `--stage2 uffd`).
    Inline(Box<FaultSide>),
    /// On the fault-in thread: faults go there on `to_fault`, faulted in they come back on
    /// `from_fault` (this thread is its consumer).
    Thread {
        to_fault: Producer,
        from_fault: Arc<Handoff>,
    },
}

/// The fault-in half (step 1), on the fault CPU: its own thread, or inline.
struct FaultSide {
    cfg: ResolverConfig,
    mem: Arc<GuestMemory>,
    uffd: Arc<Uffd>,
    ctl: Arc<VmControl>,
    faults: Arc<Injector>,
    drainer: Drainer,
    staged: Arc<[bool]>,
    zero_page: Mapping,
    noise: Option<Noise>,
    /// MADV_POPULATE_READ works here (Linux 5.14+).
    populate: bool,
    fault_cpu_mismatches: u64,
    noise_pages_written: u64,
    sleeps: u64,
    preempted_polls: u64,
    crowded_waits: u64,
    sched: Option<ThreadSched>,
    /// The VM's path counters: fault-ins, noise, drains (stage2::path).
    counters: Arc<PathCounters>,
    /// The CPU of the last fault-in.
    last_cpu: Option<usize>,
    trace: Option<Arc<TraceSession>>,
}

/// Fresh, not-mlocked shmem pages written on the fault CPU: LRU traffic that can flush the
/// LRU-add batch while a folio still sits in the mlock batch (docs/DESIGN.md §1).
struct Noise {
    file: std::fs::File,
    map: Mapping,
    next: usize,
}

impl Noise {
    const SIZE: usize = 64 << 20;

    fn new() -> io::Result<Self> {
        let file = sys::memfd("pinvmm-noise", Self::SIZE as u64)?;
        let map = Mapping::shared(&file, Self::SIZE)?;
        Ok(Self { file, map, next: 0 })
    }

    fn write_pages(&mut self, n: u32) -> u64 {
        let mut written = 0;
        for _ in 0..n {
            if self.next + PAGE_SIZE > Self::SIZE {
                // Recycle: punch the file so the next writes allocate fresh folios again (a
                // failed punch only means the next writes find their pages already there).
                let _ = sys::punch_hole(&self.file, 0, Self::SIZE as u64);
                self.next = 0;
            }
            // next + PAGE_SIZE <= SIZE: inside the mapping, so the write never fails.
            written += u64::from(self.map.write_u8(self.next, 1).is_ok());
            self.next += PAGE_SIZE;
        }
        written
    }
}

impl FaultSide {
    /// Step 1 for the pages of `w`: fault them in (each followed by its noise pages), then the
    /// policy's after-fault-in drain, once: it covers every page faulted in on this CPU.
    /// Returns the stamp of the first page's fault-in (stage2::path).
    fn prepare(&mut self, w: &Work) -> Result<Option<Stamp>, Box<HostFailure>> {
        let stamp = self.fault_in_range(w.page, u64::from(w.count), w.guest_hva)?;
        self.drainer
            .after_fault_in(self.cfg.fault_cpu)
            .map_err(|e| Box::new(e.host_failure(FAULT_THREAD, self.gpa(w.page))))?;
        Ok(stamp)
    }

    fn gpa(&self, page: u64) -> u64 {
        self.mem.base() + page * self.mem.granule() as u64
    }

    /// Fault-in for `n` pages, each followed by its noise pages. A run of several shmem pages
    /// (fault-ahead), or a 2 MiB granule, is faulted in with one MADV_POPULATE_READ on the pin
    /// view: the same faults as touching each 4 KiB page (mlocked on fault, on this CPU), in
    /// one system call. Returns the stamp of the first page's fault-in, taken before its noise
    /// (`None` when the pin is left to fault the pages in).
    fn fault_in_range(
        &mut self,
        page: u64,
        n: u64,
        guest_hva: u64,
    ) -> Result<Option<Stamp>, Box<HostFailure>> {
        let g = self.mem.granule();
        let touch = self.cfg.backing.is_memfd()
            && (self.cfg.fault_in == FaultIn::Touch || self.cfg.stage2 != Stage2::Pin);
        let mlocked = touch || self.cfg.backing == Backing::Anon;
        if (n > 1 || g > PAGE_SIZE) && touch && self.populate {
            self.note_cpu();
            let view = self.mem.pin_view();
            match view.madvise(page as usize * g, n as usize * g, libc::MADV_POPULATE_READ) {
                Ok(()) => {
                    let pages = n * (g / PAGE_SIZE) as u64;
                    self.counters.add(Count::MlockedFault, pages);
                    let stamp = self.counters.stamp(self.last_cpu);
                    self.write_noise(n);
                    return Ok(Some(stamp));
                }
                // Before Linux 5.14: touch page by page.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.populate = false,
                Err(e) => {
                    let mut f = HostFailure::named(
                        "fault-in",
                        "madvise(MADV_POPULATE_READ)",
                        e.raw_os_error(),
                        FAULT_THREAD,
                        format!("cannot fault in guest pages {page}+{n}: {e}"),
                    );
                    f.gpa = Some(self.gpa(page));
                    return Err(Box::new(f));
                }
            }
        }
        let mut stamp = None;
        for i in 0..n {
            self.fault_in(page + i, guest_hva + i * g as u64)?;
            if mlocked {
                self.counters
                    .add(Count::MlockedFault, (g / PAGE_SIZE) as u64);
                if i == 0 {
                    stamp = Some(self.counters.stamp(self.last_cpu));
                }
            }
            self.write_noise(1);
        }
        Ok(stamp)
    }

    fn write_noise(&mut self, faulted_pages: u64) {
        if let Some(noise) = self.noise.as_mut() {
            let n = u64::from(self.cfg.noise_pages) * faulted_pages;
            let written = noise.write_pages(n.min(u32::MAX.into()) as u32);
            self.noise_pages_written += written;
            self.counters.add(Count::NoisePage, written);
        }
    }

    /// Notes the CPU this thread runs on (for the path record and the mismatch count).
    fn note_cpu(&mut self) {
        self.last_cpu = sys::current_cpu();
        if self.last_cpu != Some(self.cfg.fault_cpu) {
            self.fault_cpu_mismatches += 1;
        }
    }

    /// Step 1: bring the page into the pin view (or stage it for the pin to fault in).
    fn fault_in(&mut self, page: u64, guest_hva: u64) -> Result<(), Box<HostFailure>> {
        self.note_cpu();
        let g = self.mem.granule();
        let off = page as usize * g;
        match self.cfg.backing {
            Backing::Shmem | Backing::Hugetlb | Backing::ShmemThp => {
                // `pin` mode with a real pin (stage2 = pin) leaves the fault to the pin itself.
                if self.cfg.fault_in == FaultIn::Touch || self.cfg.stage2 != Stage2::Pin {
                    // Every 4 KiB page of a granule: a shmem-thp granule may have got 4 KiB
                    // folios, and CONTINUE maps only pages that are there.
                    for o in (off..off + g).step_by(PAGE_SIZE) {
                        self.mem.pin_view().touch_read(o);
                    }
                }
                Ok(())
            }
            Backing::Anon => {
                // One mapping: the page is filled by the kernel (UFFDIO_COPY: contents the
                // loader staged, or zeros), without waking the vCPU. With `--fault-in pin` and
                // nothing staged, map the zero page and let the pin's write fault COW it.
                let staged = self.staged.get(page as usize).copied().unwrap_or(false);
                if !staged && self.cfg.fault_in == FaultIn::Pin {
                    return map_zero_page(&self.uffd, &self.faults, &self.mem, page, guest_hva);
                }
                let dst = guest_hva as *mut libc::c_void;
                let src = if staged {
                    self.mem.staged_page_addr(page).expect("page in range")
                } else {
                    self.zero_page.as_ptr().cast_const()
                };
                let (f, uffd) = (&*self.faults, &self.uffd);
                // SAFETY: src is one readable page (staging or our zero page) and dst one
                // page of the registered guest view; the kernel copies between them.
                let r = uffd_call(f, Site::UffdCopy, || unsafe {
                    uffd.copy(src.cast(), dst, PAGE_SIZE, false)
                });
                anon_filled(r, &self.mem, page)
            }
        }
    }
}

/// Maps the zero page at an anon guest page (`--fault-in pin`, nothing staged: the pin's write
/// fault then COWs it, on the pin's CPU), without waking the vCPU.
fn map_zero_page(
    uffd: &Uffd,
    faults: &Injector,
    mem: &GuestMemory,
    page: u64,
    guest_hva: u64,
) -> Result<(), Box<HostFailure>> {
    let dst = guest_hva as *mut libc::c_void;
    // SAFETY: dst is one page of the registered guest view.
    let r = uffd_call(faults, Site::UffdZeropage, || unsafe {
        uffd.zeropage(dst, PAGE_SIZE, false)
    });
    anon_filled(r, mem, page)
}

fn anon_filled(
    r: Result<usize, CallFailure>,
    mem: &GuestMemory,
    page: u64,
) -> Result<(), Box<HostFailure>> {
    match r {
        // EEXIST: already mapped (the page raced with another fault).
        Ok(_) => Ok(()),
        Err(e) if is_eexist(&e) => Ok(()),
        Err(e) => {
            let gpa = mem.base() + page * PAGE_SIZE as u64;
            let what = format!("filling anon guest page {page} (GPA {gpa:#x})");
            Err(Box::new(e.into_host_failure(
                FAULT_THREAD,
                Some(gpa),
                &what,
            )))
        }
    }
}

/// The pin thread's half that reads the userfaultfd, driven by an event-manager loop over the
/// userfaultfd and a stop event: step 2 itself, step 1 inline or on the fault-in thread.
struct Reader {
    cfg: ResolverConfig,
    mem: Arc<GuestMemory>,
    uffd: Arc<Uffd>,
    ctl: Arc<VmControl>,
    faults: Arc<Injector>,
    stop: EventFd,
    pin: PinSide,
    fault: FaultHalf,
    seen: Vec<bool>,
    staged: Arc<[bool]>,
    /// Read buffer of the userfaultfd (taken while events are handled).
    events: Option<EventBuffer>,
    /// How this thread waits for the fault-in thread.
    poller: Poller,
    report: ResolverReport,
    done: bool,
}

impl Reader {
    fn handle_fault(&mut self, guest_hva: u64, minor: bool) {
        let t0 = Instant::now();
        let Some(page) = self.mem.granule_of_guest_hva(guest_hva) else {
            return self.fail(HostFailure::named(
                "resolver",
                Site::UffdRead.call(),
                None,
                self.pin.thread,
                format!("userfaultfd reported a fault at {guest_hva:#x}, outside guest memory"),
            ));
        };
        let g = self.mem.granule() as u64;
        let guest_hva = guest_hva & !(g - 1);
        self.report.faults += 1;
        if minor {
            self.report.minor_faults += 1;
        } else {
            self.report.missing_faults += 1;
        }
        if self.seen[page as usize] {
            // Already resolved (every hand-off of a fault completes before the next event is
            // read): the pin side finds it pinned and only wakes.
            self.report.repeat_faults += 1;
            return self.pin.resolve(Work {
                page,
                count: 1,
                guest_hva,
                t0,
                faulting: true,
                stamp: None,
            });
        }
        // The faulting page, then up to `fault_ahead` pages after it that no fault has reached
        // yet (stopping at the first one already seen, or at the end of memory).
        let limit = (self.seen.len() as u64 - page).min(u64::from(self.cfg.fault_ahead) + 1);
        let count = (1..limit)
            .find(|&i| self.seen[(page + i) as usize])
            .unwrap_or(limit);
        self.report.pages_ahead += count - 1;
        for p in page..page + count {
            self.seen[p as usize] = true;
        }
        let w = Work {
            page,
            count: count as u32,
            guest_hva,
            t0,
            faulting: true,
            stamp: None,
        };
        if matches!(self.fault, FaultHalf::Thread { .. }) && self.needs_fault_cpu(&w, minor) {
            self.resolve_across(w);
        } else {
            self.resolve_here(w);
        }
    }

    /// Whether step 1 of these pages has work for the fault CPU. With `--fault-in pin` a page
    /// nobody faulted in before (MISSING) is faulted in by the pin itself, on the pin CPU:
    /// nothing ran on the fault CPU, so there is nothing for the policy to drain there.
    fn needs_fault_cpu(&self, w: &Work, minor: bool) -> bool {
        let c = &self.cfg;
        if c.stage2 != Stage2::Pin || c.fault_in == FaultIn::Touch || c.noise_pages > 0 {
            return true;
        }
        match c.backing {
            // The loader staged its contents: the copy faults it in on the fault CPU.
            Backing::Anon => (w.page..w.page + u64::from(w.count))
                .any(|p| self.staged.get(p as usize).copied().unwrap_or(false)),
            // Already in memory (the VMM wrote it): drain there as the policy says. With
            // fault-ahead the other pages' state is unknown: drain whenever the policy does.
            _ => c.policy.hooks().after_fault_in && (minor || c.fault_ahead > 0),
        }
    }

    /// Steps 1 and 2 on this thread, chunk by chunk.
    fn resolve_here(&mut self, w: Work) {
        let g = self.mem.granule() as u64;
        let mut done = 0;
        while done < w.count && !self.done {
            let n = (w.count - done).min(FAULT_AHEAD_CHUNK as u32);
            let mut chunk = Work {
                page: w.page + u64::from(done),
                count: n,
                guest_hva: w.guest_hva + u64::from(done) * g,
                t0: w.t0,
                faulting: done == 0,
                stamp: None,
            };
            let r = match &mut self.fault {
                FaultHalf::Inline(f) => f.prepare(&chunk).map(|s| chunk.stamp = s),
                // Only anon zero pages are left to do here (see `needs_fault_cpu`).
                FaultHalf::Thread { .. } if self.cfg.backing == Backing::Anon => {
                    (chunk.page..chunk.page + u64::from(n)).try_for_each(|p| {
                        let hva = w.guest_hva + (p - w.page) * g;
                        map_zero_page(&self.uffd, &self.faults, &self.mem, p, hva)
                    })
                }
                FaultHalf::Thread { .. } => Ok(()),
            };
            if let Err(f) = r {
                return self.fail(*f);
            }
            self.pin.resolve(chunk);
            done += n;
        }
    }

    /// Step 1 on the fault-in thread, step 2 here as each chunk comes back. This thread polls
    /// for the chunk that holds the faulting page while its CPU would idle (the vCPU waits for
    /// it); once that chunk is mapped the vCPU runs here, so it sleeps for the rest.
    fn resolve_across(&mut self, w: Work) {
        let FaultHalf::Thread {
            to_fault,
            from_fault,
        } = &self.fault
        else {
            return;
        };
        self.report.fault_cpu_handoffs += 1;
        to_fault.0.push(w);
        let mut left = w.count;
        let mut budget = self.cfg.spin.min(BACK_POLL);
        while left > 0 {
            let ctl = &self.ctl;
            let Some(back) = from_fault.wait(&mut self.poller, budget, || ctl.stopping()) else {
                // The fault-in thread failed (it told the VM) or the VM is stopping.
                self.done = true;
                return;
            };
            self.pin.resolve(back);
            left = left.saturating_sub(back.count);
            budget = Duration::ZERO;
        }
    }

    fn fail(&mut self, f: HostFailure) {
        self.ctl.send(VmEvent::HostFailed(f));
        self.done = true;
    }

    /// Reads and handles every pending event, then goes back to the event loop: the next
    /// fault's vCPU wakes this thread on its own CPU.
    fn drain_uffd(&mut self) {
        self.report.event_loop_wakeups += 1;
        while !self.done && self.read_batch() > 0 {}
    }

    /// One non-blocking read of up to [`EVENTS_PER_READ`] events, each handled; returns how
    /// many were read.
    fn read_batch(&mut self) -> usize {
        let mut batch = [(0u64, false); EVENTS_PER_READ];
        let mut n = 0;
        let mut unexpected = None;
        let mut buf = self.events.take().expect("event buffer present");
        let uffd = &self.uffd;
        let r = uffd_call(&self.faults, Site::UffdRead, || {
            for ev in uffd.read_events(&mut buf)? {
                match ev {
                    Event::Pagefault(Pagefault { addr, minor, .. }) if n < batch.len() => {
                        batch[n] = (addr, minor);
                        n += 1;
                    }
                    // Not registered for (fork, remap, remove, unmap): the read is not what
                    // failed.
                    other => unexpected = Some(format!("{other:?}")),
                }
            }
            Ok(())
        });
        self.events = Some(buf);
        if let Err(e) = r {
            self.fail(e.into_host_failure(self.pin.thread, None, "reading guest faults"));
        } else if let Some(ev) = unexpected {
            self.fail(HostFailure::named(
                "resolver",
                Site::UffdRead.call(),
                None,
                self.pin.thread,
                format!("unexpected userfaultfd event {ev}"),
            ));
        }
        for &(addr, minor) in &batch[..n] {
            if self.done {
                break;
            }
            self.handle_fault(addr, minor);
        }
        n
    }
}

impl MutEventSubscriber for Reader {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.stop.as_raw_fd() {
            self.done = true;
        } else if events.fd() == self.uffd.as_raw_fd() {
            self.drain_uffd();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let regs = [
            Events::new(&self.stop, EventSet::IN),
            Events::new(self.uffd.as_ref(), EventSet::IN),
        ];
        for r in regs {
            if let Err(e) = ops.add(r) {
                self.fail(HostFailure::named(
                    "event-loop",
                    "epoll_ctl",
                    None,
                    self.pin.thread,
                    format!("cannot watch the resolver's descriptors: {e:?}"),
                ));
            }
        }
    }
}

/// What the pin thread hands back when it ends.
type PinThreadEnd = (ResolverReport, Option<PinSide>, Option<FaultSide>);

/// A running resolver.
pub struct Resolver {
    stop: EventFd,
    pin_thread: Option<JoinHandle<PinThreadEnd>>,
    fault_thread: Option<JoinHandle<FaultSide>>,
    uffd: Option<Arc<Uffd>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

/// Creates the userfaultfd and registers the guest view. Done before KVM sees the memory.
pub fn arm(mem: &GuestMemory) -> Result<Arc<Uffd>, ResolverError> {
    let (features, mode) = match mem.backing() {
        Backing::Shmem | Backing::ShmemThp => (
            uffd::UFFD_FEATURE_MISSING_SHMEM | uffd::UFFD_FEATURE_MINOR_SHMEM,
            RegisterMode::MISSING | RegisterMode::MINOR,
        ),
        Backing::Hugetlb => (
            uffd::UFFD_FEATURE_MISSING_HUGETLBFS | uffd::UFFD_FEATURE_MINOR_HUGETLBFS,
            RegisterMode::MISSING | RegisterMode::MINOR,
        ),
        Backing::Anon => (0, RegisterMode::MISSING),
    };
    let uffd = Uffd::new(u64::from(features), true).map_err(|e| match e.errno {
        libc::EPERM | libc::EACCES => ResolverError::NotPermitted(e),
        _ => ResolverError::Create(e),
    })?;
    let view = mem.guest_view();
    uffd.register(view.as_ptr().cast(), view.len(), mode)
        .map_err(|err| ResolverError::Register {
            addr: view.addr(),
            len: view.len(),
            err,
        })?;
    Ok(Arc::new(uffd))
}

/// What every resolver thread does first: its CPU, its trace filter, its slice, its probe, its
/// place among the VM's threads (for the pollers' crowded check), its seccomp filter.
fn start_thread(
    cfg: &ResolverConfig,
    cpu: usize,
    kind: ThreadKind,
    name: &str,
    ctl: &Arc<VmControl>,
    trace: Option<&TraceSession>,
) -> SchedProbe {
    // A failed affinity shows up as the CPU mismatches of the report. `--cpus free`: not
    // placed.
    if cfg.placed {
        let _ = sys::pin_thread_to_cpu(cpu);
    }
    // A thread the trace filter misses only leaves the trace without its events; the report
    // says how many it has.
    if let Some(t) = trace {
        let _ = t.add_current_thread();
    }
    if cfg.short_slice {
        // Refused (an old kernel or a policy): the thread keeps the default slice.
        let _ = sched::request_short_slice(sched::SHORT_SLICE_NS);
    }
    let probe = SchedProbe::open(name);
    ctl.own_threads()
        .register_current(cfg.placed.then_some(cpu));
    seccomp::install_or_fail_vm(kind, cfg.seccomp, ctl);
    probe
}

impl Resolver {
    /// Starts the resolver threads for an armed guest memory; their host calls fail as
    /// `faults` says.
    pub fn start(
        cfg: ResolverConfig,
        mem: Arc<GuestMemory>,
        uffd: Arc<Uffd>,
        ctl: Arc<VmControl>,
        faults: Arc<Injector>,
        explain: ExplainParts,
    ) -> Result<Self, ResolverError> {
        let pages = mem.granules() as usize;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ResolverError::Spawn)?;
        // `uffd` is the bare round trip: no pin, so no second thread and no hand-off either.
        let inline = cfg.fault_cpu == cfg.pin_cpu || cfg.stage2 == Stage2::Uffd;
        let pin_name = if inline { FAULT_THREAD } else { PIN_THREAD };
        let staged: Arc<[bool]> = mem.staged_pages().map_err(ResolverError::Noise)?.into();
        let fault_side = FaultSide {
            cfg,
            mem: mem.clone(),
            uffd: uffd.clone(),
            ctl: ctl.clone(),
            faults: faults.clone(),
            drainer: Drainer::new(cfg.policy)?
                .with_injector(faults.clone())
                .with_counters(explain.counters.clone()),
            staged: staged.clone(),
            zero_page: Mapping::anonymous(PAGE_SIZE).map_err(ResolverError::Noise)?,
            noise: if cfg.noise_pages > 0 {
                Some(Noise::new().map_err(ResolverError::Noise)?)
            } else {
                None
            },
            populate: true,
            fault_cpu_mismatches: 0,
            noise_pages_written: 0,
            sleeps: 0,
            preempted_polls: 0,
            crowded_waits: 0,
            sched: None,
            counters: explain.counters.clone(),
            last_cpu: None,
            trace: explain.trace.clone(),
        };
        let (fault, fault_thread) = if inline {
            (FaultHalf::Inline(Box::new(fault_side)), None)
        } else {
            let to_fault = Arc::new(Handoff::new(Instant::now()));
            let from_fault = Arc::new(Handoff::new(Instant::now()));
            let (rx, tx) = (to_fault.clone(), Producer(from_fault.clone()));
            let h = std::thread::Builder::new()
                .name("pinvmm-fault".into())
                .spawn(move || fault_loop(fault_side, &rx, tx))
                .map_err(ResolverError::Spawn)?;
            let half = FaultHalf::Thread {
                to_fault: Producer(to_fault),
                from_fault,
            };
            (half, Some(h))
        };
        let pin_side = PinSide {
            cfg,
            mem: mem.clone(),
            uffd: uffd.clone(),
            ctl: ctl.clone(),
            faults: faults.clone(),
            thread: pin_name,
            table: PinTable::new(mem.granules())
                .with_injector(faults.clone())
                .with_granule(mem.granule()),
            drainer: Drainer::new(cfg.policy)?
                .with_injector(faults.clone())
                .with_counters(explain.counters.clone()),
            pin_lat: Latencies::with_capacity(pages),
            fault_lat: Latencies::with_capacity(pages),
            resolve_lat: Latencies::with_capacity(pages),
            fault_to_pin: Latencies::with_capacity(pages),
            retried: 0,
            pin_cpu_mismatches: 0,
            dead: false,
            explain: explain.clone(),
            failed: Vec::new(),
            failed_dropped: 0,
        };
        let own = ctl.own_threads().clone();
        let reader = Reader {
            cfg,
            mem: mem.clone(),
            uffd: uffd.clone(),
            ctl,
            faults,
            stop: stop.try_clone().map_err(ResolverError::Spawn)?,
            pin: pin_side,
            fault,
            seen: vec![false; pages],
            staged,
            events: Some(EventBuffer::new(EVENTS_PER_READ)),
            poller: Poller::for_vm(cfg.spin, Some(own)),
            report: ResolverReport {
                fault_cpu: cfg.fault_cpu,
                pin_cpu: cfg.pin_cpu,
                spin_us: cfg.spin.as_micros() as u64,
                short_slice: cfg.short_slice,
                vcpu_cpu: cfg.vcpu_cpu(),
                granule_bytes: mem.granule() as u64,
                ..Default::default()
            },
            done: false,
        };
        let mut mgr = EventManager::<Reader>::new().map_err(ResolverError::EventLoop)?;
        let id = mgr.add_subscriber(reader);
        // The thread reading the userfaultfd runs where the vCPU waits: the pin CPU (the fault
        // CPU when it works alone).
        let cpu = if inline { cfg.fault_cpu } else { cfg.pin_cpu };
        let name = if inline { "pinvmm-fault" } else { "pinvmm-pin" };
        let pin_thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || pin_loop(mgr, id, cpu))
            .map_err(ResolverError::Spawn)?;
        Ok(Self {
            stop,
            pin_thread: Some(pin_thread),
            fault_thread,
            uffd: Some(uffd),
        })
    }

    /// Stops the threads, releases every pin, and returns the measurements. The userfaultfd
    /// is closed when the last reference (held by the caller, if any) goes.
    pub fn finish(mut self) -> ResolverReport {
        let _ = self.stop.write(1);
        let (mut report, pin_side, inline) = match self.pin_thread.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            _ => (ResolverReport::default(), None, None),
        };
        // The pin thread has closed the fault-in thread's ring: it ends too.
        let fault_side = inline.or_else(|| self.fault_thread.take()?.join().ok());
        if let Some(f) = fault_side {
            report.drain.merge(&f.drainer.stats);
            report.fault_cpu_mismatches += f.fault_cpu_mismatches;
            report.noise_pages_written += f.noise_pages_written;
            report.fault_thread_sleeps += f.sleeps;
            report.preempted_polls += f.preempted_polls;
            report.crowded_waits += f.crowded_waits;
            report.threads.extend(f.sched);
        }
        if let Some(p) = pin_side {
            report.pins = p.table.stats;
            report.retried_pins = p.retried;
            report.pin_cpu_mismatches = p.pin_cpu_mismatches;
            report.drain.merge(&p.drainer.stats);
            report.pin_latency = p.pin_lat.summary();
            report.fault_latency = p.fault_lat.summary();
            report.resolve_latency = p.resolve_lat.summary();
            report.fault_to_pin_latency = p.fault_to_pin.summary();
            report.failed_pins = p.failed;
            report.failed_pins_dropped = p.failed_dropped;
            // Dropping `p` here unregisters the io_uring buffers: every pin is released.
        }
        self.uffd.take();
        report
    }
}

/// The pin thread (the fault-in thread when it works alone): the event loop over the
/// userfaultfd. Returns the report, the pin side (its pins) and an inline fault side.
fn pin_loop(
    mut mgr: EventManager<Reader>,
    id: event_manager::SubscriberId,
    cpu: usize,
) -> PinThreadEnd {
    let mut probe = None;
    if let Ok(s) = mgr.subscriber_mut(id) {
        let (kind, name) = match s.fault {
            FaultHalf::Inline(_) => (ThreadKind::Fault, FAULT_THREAD),
            FaultHalf::Thread { .. } => (ThreadKind::Pin, PIN_THREAD),
        };
        let trace = s.pin.explain.trace.as_deref();
        probe = Some(start_thread(&s.cfg, cpu, kind, name, &s.ctl, trace));
        if let FaultHalf::Thread { from_fault, .. } = &s.fault {
            let _ = from_fault.consumer.set(std::thread::current());
        }
    }
    loop {
        let done = mgr.subscriber_mut(id).map(|s| s.done).unwrap_or(true);
        if done {
            break;
        }
        if let Err(e) = mgr.run_with_timeout(200) {
            if let Ok(s) = mgr.subscriber_mut(id) {
                let thread = s.pin.thread;
                s.fail(HostFailure::named(
                    "event-loop",
                    "epoll_wait",
                    None,
                    thread,
                    format!("resolver event loop failed: {e:?}"),
                ));
            }
            break;
        }
    }
    let Ok(mut r) = mgr.remove_subscriber(id) else {
        return (ResolverReport::default(), None, None);
    };
    let mut report = std::mem::take(&mut r.report);
    report.pin_thread_sleeps = r.poller.sleeps;
    report.preempted_polls = r.poller.preempted;
    report.crowded_waits = r.poller.crowded;
    report.threads.extend(probe.and_then(SchedProbe::read));
    // Dropping the fault-in thread's ring (with `r`) ends that thread.
    let inline = match r.fault {
        FaultHalf::Inline(f) => Some(*f),
        FaultHalf::Thread { .. } => None,
    };
    (report, Some(r.pin), inline)
}

/// The fault-in thread: faults in what the pin thread hands it, chunk by chunk, and hands each
/// chunk back; polls for the next fault while its CPU would idle, sleeps otherwise. Ends when
/// the pin thread closes the ring, the VM stops, or a fault-in fails (told to the VM; dropping
/// `back` then tells the pin thread).
fn fault_loop(mut side: FaultSide, faults_in: &Handoff, back: Producer) -> FaultSide {
    // Before the filter: it opens /proc/loadavg.
    let own = side.ctl.own_threads().clone();
    let mut poller = Poller::for_vm(side.cfg.spin, Some(own));
    let probe = start_thread(
        &side.cfg,
        side.cfg.fault_cpu,
        ThreadKind::Fault,
        FAULT_THREAD,
        &side.ctl,
        side.trace.as_deref(),
    );
    let _ = faults_in.consumer.set(std::thread::current());
    let g = side.mem.granule() as u64;
    let spin = side.cfg.spin;
    'faults: loop {
        let ctl = side.ctl.clone();
        let Some(w) = faults_in.wait(&mut poller, spin, || ctl.stopping()) else {
            break;
        };
        let mut done = 0;
        while done < w.count {
            let n = (w.count - done).min(FAULT_AHEAD_CHUNK as u32);
            let mut chunk = Work {
                page: w.page + u64::from(done),
                count: n,
                guest_hva: w.guest_hva + u64::from(done) * g,
                t0: w.t0,
                faulting: done == 0,
                stamp: None,
            };
            match side.prepare(&chunk) {
                Ok(stamp) => chunk.stamp = stamp,
                Err(f) => {
                    side.ctl.send(VmEvent::HostFailed(*f));
                    break 'faults;
                }
            }
            back.0.push(chunk);
            done += n;
        }
    }
    drop(back);
    side.sleeps = poller.sleeps;
    side.preempted_polls = poller.preempted;
    side.crowded_waits = poller.crowded;
    side.sched = probe.read();
    side
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_goes_next_to_the_thread_that_wakes_it() {
        let mut c = ResolverConfig {
            seccomp: false,
            stage2: Stage2::Pin,
            backing: Backing::Shmem,
            fault_in: FaultIn::Touch,
            policy: DrainPolicy::None,
            fault_cpu: 0,
            pin_cpu: 1,
            placed: true,
            noise_pages: 0,
            fault_ahead: 0,
            spin: DEFAULT_SPIN,
            short_slice: true,
            vcpus: 1,
            read_before_pin: false,
        };
        assert_eq!(c.vcpu_cpu(), Some(1));
        c.stage2 = Stage2::Uffd;
        assert_eq!(c.vcpu_cpu(), Some(0));
        c.stage2 = Stage2::Kernel;
        assert_eq!(c.vcpu_cpu(), None);
        c.stage2 = Stage2::Pin;
        c.vcpus = 2;
        assert_eq!(c.vcpu_cpu(), None);
    }
}
