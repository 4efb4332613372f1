// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The stage-2 fault resolver: resolves the guest's faults the way pKVM does, by a
//! FOLL_LONGTERM pin of the page, on any KVM host.
//!
//! The guest view is armed with userfaultfd (shmem: MISSING|MINOR, anon: MISSING), so a KVM
//! stage-2 fault on a page the guest view does not map yet waits for us. Per fault:
//!
//! 1. *fault-in thread* (on `fault_cpu`): reads the event; faults the page into the mlocked
//!    pin view (`--fault-in touch`) or leaves that to the pin (`--fault-in pin`); writes the
//!    noise pages; runs the policy's after-fault-in drain (mlock-drain: a local drain here);
//! 2. *pin thread* (on `pin_cpu`): runs the policy's before-pin drain (lru-add-drain), takes
//!    the long-term pin, maps the page into the guest view (UFFDIO_CONTINUE, or the anon copy
//!    made in step 1) and wakes the vCPU.
//!
//! When both CPUs are the same, one thread does both steps. A failed pin is not resolved: the
//! VM is terminated (reported to the main thread), as pKVM turns it into a failed KVM_RUN.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use serde::Serialize;
use userfaultfd::{Event, FeatureFlags, RegisterMode, Uffd, UffdBuilder};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::config::{Backing, FaultIn, InjectPinFailure, Stage2};
use crate::control::{Termination, VmControl, VmEvent, errno_name};
use crate::drain::{DrainError, DrainPolicy, DrainStats, Drainer};
use crate::memory::GuestMemory;
use crate::pin::{PinStats, PinTable};
use crate::stats::{Latencies, LatencySummary};
use crate::sys::{self, Mapping, PAGE_SIZE};

// Not in the userfaultfd crate's FeatureFlags (include/uapi/linux/userfaultfd.h).
const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;

/// Failures setting up or running the resolver.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error(
        "cannot create a userfaultfd that sees KVM's faults: {0} (needs root or vm.unprivileged_userfaultfd=1, and a kernel with MINOR_SHMEM for shmem)"
    )]
    Create(userfaultfd::Error),
    #[error("cannot register guest memory ({len} bytes at {addr:#x}) with userfaultfd: {err}")]
    Register {
        addr: u64,
        len: usize,
        err: userfaultfd::Error,
    },
    #[error("cannot set up the resolver's event loop: {0}")]
    EventLoop(String),
    #[error("cannot start the resolver thread: {0}")]
    Spawn(io::Error),
    #[error("cannot create the noise file: {0}")]
    Noise(io::Error),
    #[error(transparent)]
    Drain(#[from] DrainError),
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
    pub noise_pages: u32,
    pub inject: Option<InjectPinFailure>,
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
    pub pin_latency: LatencySummary,
    pub fault_latency: LatencySummary,
    pub fault_cpu: usize,
    pub pin_cpu: usize,
    /// Fault-ins that ran on another CPU than `fault_cpu` (the thread was moved).
    pub fault_cpu_mismatches: u64,
}

/// One fault, handed from the fault-in thread to the pin thread.
#[derive(Debug, Clone, Copy)]
struct Work {
    page: u64,
    guest_hva: u64,
    t0: Instant,
}

/// The pin half. Owns the pin table: pins live exactly as long as it does.
struct PinSide {
    cfg: ResolverConfig,
    mem: Arc<GuestMemory>,
    uffd: Arc<Uffd>,
    ctl: Arc<VmControl>,
    table: PinTable,
    drainer: Drainer,
    pin_lat: Latencies,
    fault_lat: Latencies,
    retried: u64,
    dead: bool,
}

impl PinSide {
    fn resolve(&mut self, w: Work) {
        if self.dead {
            return; // The VM is being terminated; leave the vCPU waiting until teardown.
        }
        if self.cfg.stage2 == Stage2::Pin {
            if let Err(e) = self.drainer.before_pin() {
                return self.fail_host(e.to_string());
            }
            let hva = self.mem.pin_view().addr() + w.page * PAGE_SIZE as u64;
            let t = Instant::now();
            let mut r = self.table.pin(w.page, hva);
            if r.is_err() {
                match self.drainer.after_failed_pin() {
                    Ok(true) => {
                        self.retried += 1;
                        r = self.table.pin(w.page, hva);
                    }
                    Ok(false) => {}
                    Err(e) => return self.fail_host(e.to_string()),
                }
            }
            if let Err(e) = r {
                self.dead = true;
                let errno = e.errno().unwrap_or(0);
                let injected = matches!(e, crate::pin::PinError::Pin { injected: true, .. });
                self.ctl.send(VmEvent::PinFailed(Termination {
                    errno,
                    errno_name: errno_name(errno),
                    gpa: self.mem.base() + w.page * PAGE_SIZE as u64,
                    hva,
                    page: w.page,
                    injected,
                    pins_ok_before: self.table.stats.ok,
                    message: e.to_string(),
                }));
                return;
            }
            self.pin_lat.record(t.elapsed().as_nanos() as u64);
        }
        if let Err(e) = self.map_for_guest(w.guest_hva) {
            return self.fail_host(format!(
                "cannot map guest page {} for the guest: {e}",
                w.page
            ));
        }
        self.fault_lat.record(w.t0.elapsed().as_nanos() as u64);
    }

    /// Maps the page into the guest view and wakes the faulting vCPU(s).
    fn map_for_guest(&self, guest_hva: u64) -> Result<(), userfaultfd::Error> {
        let addr = guest_hva as *mut libc::c_void;
        match self.cfg.backing {
            Backing::Shmem => match self.uffd.r#continue(addr, PAGE_SIZE, true) {
                Ok(_) => Ok(()),
                Err(userfaultfd::Error::SystemError(nix_err)) if nix_err as i32 == libc::EEXIST => {
                    self.uffd.wake(addr, PAGE_SIZE)
                }
                Err(e) => Err(e),
            },
            // The page was copied in (DONTWAKE) by the fault-in half.
            Backing::Anon => self.uffd.wake(addr, PAGE_SIZE),
        }
    }

    fn fail_host(&mut self, msg: String) {
        self.dead = true;
        self.ctl.send(VmEvent::ResolverFailed(msg));
    }
}

/// Where the pin half runs.
enum PinHalf {
    Inline(Box<PinSide>),
    Thread(SyncSender<Work>),
}

/// The fault-in half, driven by an event-manager loop over the userfaultfd and a stop event.
struct FaultSide {
    cfg: ResolverConfig,
    mem: Arc<GuestMemory>,
    uffd: Arc<Uffd>,
    ctl: Arc<VmControl>,
    stop: EventFd,
    pin: Option<PinHalf>,
    drainer: Drainer,
    seen: Vec<bool>,
    staged: Vec<bool>,
    zero_page: Mapping,
    noise: Option<Noise>,
    report: ResolverReport,
    done: bool,
}

/// Fresh, not-mlocked shmem pages written on the fault CPU: LRU traffic that can flush the
/// LRU-add batch while a folio still sits in the mlock batch (shared/DESIGN.md §1).
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
        for _ in 0..n {
            if self.next + PAGE_SIZE > Self::SIZE {
                // Recycle: punch the file so the next writes allocate fresh folios again.
                // SAFETY: fallocate on our own memfd; punching a hole only drops its pages.
                unsafe {
                    libc::fallocate(
                        self.file.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        0,
                        Self::SIZE as i64,
                    )
                };
                self.next = 0;
            }
            // SAFETY: next + PAGE_SIZE <= SIZE, inside the live noise mapping.
            unsafe { self.map.at(self.next).write_volatile(1) };
            self.next += PAGE_SIZE;
        }
        u64::from(n)
    }
}

impl FaultSide {
    fn handle_fault(&mut self, guest_hva: u64, minor: bool) {
        let t0 = Instant::now();
        let Some(page) = self.mem.page_of_guest_hva(guest_hva) else {
            self.fail(format!(
                "userfaultfd reported a fault at {guest_hva:#x}, outside guest memory"
            ));
            return;
        };
        let guest_hva = guest_hva & !(PAGE_SIZE as u64 - 1);
        self.report.faults += 1;
        if minor {
            self.report.minor_faults += 1;
        } else {
            self.report.missing_faults += 1;
        }
        let repeat = std::mem::replace(&mut self.seen[page as usize], true);
        if repeat {
            self.report.repeat_faults += 1;
        } else if let Err(msg) = self.fault_in(page, guest_hva) {
            self.fail(msg);
            return;
        }
        if !repeat {
            if let Some(n) = self.noise.as_mut() {
                self.report.noise_pages_written += n.write_pages(self.cfg.noise_pages);
            }
            if let Err(e) = self.drainer.after_fault_in(self.cfg.fault_cpu) {
                self.fail(e.to_string());
                return;
            }
        }
        let w = Work {
            page,
            guest_hva,
            t0,
        };
        match self.pin.as_mut() {
            Some(PinHalf::Inline(p)) => p.resolve(w),
            Some(PinHalf::Thread(tx)) if tx.send(w).is_err() => {
                self.fail("the pin thread is gone".into())
            }
            Some(PinHalf::Thread(_)) => {}
            None => {}
        }
    }

    /// Step 1: bring the page into the pin view (or stage it for the pin to fault in).
    fn fault_in(&mut self, page: u64, guest_hva: u64) -> Result<(), String> {
        if sys::current_cpu() != Some(self.cfg.fault_cpu) {
            self.report.fault_cpu_mismatches += 1;
        }
        let off = page as usize * PAGE_SIZE;
        match self.cfg.backing {
            Backing::Shmem => {
                // `pin` mode with a real pin (stage2 = pin) leaves the fault to the pin itself.
                if self.cfg.fault_in == FaultIn::Touch || self.cfg.stage2 != Stage2::Pin {
                    self.mem.pin_view().touch_read(off);
                }
                Ok(())
            }
            Backing::Anon => {
                // One mapping: the page is filled by the kernel (UFFDIO_COPY: contents the
                // loader staged, or zeros), without waking the vCPU. With `--fault-in pin` and
                // nothing staged, map the zero page and let the pin's write fault COW it.
                let dst = guest_hva as *mut libc::c_void;
                let staged = self.staged.get(page as usize).copied().unwrap_or(false);
                let r = if staged || self.cfg.fault_in == FaultIn::Touch {
                    let src = if staged {
                        self.mem.staged_page_addr(page).expect("page in range")
                    } else {
                        self.zero_page.as_ptr().cast_const()
                    };
                    // SAFETY: src is one readable page (staging or our zero page) and dst one
                    // page of the registered guest view; the kernel copies between them.
                    unsafe { self.uffd.copy(src.cast(), dst, PAGE_SIZE, false) }.map(drop)
                } else {
                    // SAFETY: dst is one page of the registered guest view.
                    unsafe { self.uffd.zeropage(dst, PAGE_SIZE, false) }.map(drop)
                };
                match r {
                    Ok(()) => Ok(()),
                    Err(e) if e.to_string().contains("EEXIST") => Ok(()),
                    Err(e) => Err(format!("cannot fill anon guest page {page}: {e}")),
                }
            }
        }
    }

    fn fail(&mut self, msg: String) {
        self.ctl.send(VmEvent::ResolverFailed(msg));
        self.done = true;
    }

    fn drain_uffd(&mut self) {
        loop {
            match self.uffd.read_event() {
                Ok(Some(Event::Pagefault { kind, addr, .. })) => {
                    let minor = matches!(kind, userfaultfd::FaultKind::Minor);
                    self.handle_fault(addr as u64, minor);
                    if self.done {
                        return;
                    }
                }
                Ok(Some(other)) => {
                    self.fail(format!("unexpected userfaultfd event {other:?}"));
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    self.fail(format!("reading userfaultfd failed: {e}"));
                    return;
                }
            }
        }
    }
}

impl MutEventSubscriber for FaultSide {
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
                self.fail(format!("cannot watch the resolver's descriptors: {e:?}"));
            }
        }
    }
}

/// A running resolver.
pub struct Resolver {
    stop: EventFd,
    fault_thread: Option<JoinHandle<(ResolverReport, Option<PinSide>)>>,
    pin_thread: Option<JoinHandle<PinSide>>,
    uffd: Option<Arc<Uffd>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

/// Creates the userfaultfd and registers the guest view. Done before KVM sees the memory.
pub fn arm(mem: &GuestMemory) -> Result<Arc<Uffd>, ResolverError> {
    let mut b = UffdBuilder::new();
    b.close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false);
    let (features, mode) = match mem.backing() {
        Backing::Shmem => (
            FeatureFlags::MISSING_SHMEM | FeatureFlags::from_bits_retain(UFFD_FEATURE_MINOR_SHMEM),
            RegisterMode::MISSING | RegisterMode::MINOR,
        ),
        Backing::Anon => (FeatureFlags::empty(), RegisterMode::MISSING),
    };
    b.require_features(features);
    let uffd = b.create().map_err(ResolverError::Create)?;
    let view = mem.guest_view();
    uffd.register_with_mode(view.as_ptr().cast(), view.len(), mode)
        .map_err(|err| ResolverError::Register {
            addr: view.addr(),
            len: view.len(),
            err,
        })?;
    Ok(Arc::new(uffd))
}

impl Resolver {
    /// Starts the resolver threads for an armed guest memory.
    pub fn start(
        cfg: ResolverConfig,
        mem: Arc<GuestMemory>,
        uffd: Arc<Uffd>,
        ctl: Arc<VmControl>,
    ) -> Result<Self, ResolverError> {
        let pages = mem.pages() as usize;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ResolverError::Spawn)?;
        let pin_side = PinSide {
            cfg,
            mem: mem.clone(),
            uffd: uffd.clone(),
            ctl: ctl.clone(),
            table: PinTable::new(mem.pages(), cfg.inject),
            drainer: Drainer::new(cfg.policy)?,
            pin_lat: Latencies::with_capacity(pages),
            fault_lat: Latencies::with_capacity(pages),
            retried: 0,
            dead: false,
        };
        let (pin_half, pin_thread) = if cfg.fault_cpu == cfg.pin_cpu {
            (PinHalf::Inline(Box::new(pin_side)), None)
        } else {
            let (tx, rx) = sync_channel::<Work>(1024);
            let cpu = cfg.pin_cpu;
            let h = std::thread::Builder::new()
                .name("pinvmm-pin".into())
                .spawn(move || pin_loop(pin_side, rx, cpu))
                .map_err(ResolverError::Spawn)?;
            (PinHalf::Thread(tx), Some(h))
        };
        let staged = mem.staged_pages().map_err(ResolverError::Noise)?;
        let fault_side = FaultSide {
            cfg,
            mem: mem.clone(),
            uffd: uffd.clone(),
            ctl,
            stop: stop.try_clone().map_err(ResolverError::Spawn)?,
            pin: Some(pin_half),
            drainer: Drainer::new(cfg.policy)?,
            seen: vec![false; pages],
            staged,
            zero_page: Mapping::anonymous(PAGE_SIZE).map_err(ResolverError::Noise)?,
            noise: if cfg.noise_pages > 0 {
                Some(Noise::new().map_err(ResolverError::Noise)?)
            } else {
                None
            },
            report: ResolverReport {
                fault_cpu: cfg.fault_cpu,
                pin_cpu: cfg.pin_cpu,
                ..Default::default()
            },
            done: false,
        };
        let mut mgr = EventManager::<FaultSide>::new()
            .map_err(|e| ResolverError::EventLoop(format!("{e:?}")))?;
        let id = mgr.add_subscriber(fault_side);
        let fault_cpu = cfg.fault_cpu;
        let fault_thread = std::thread::Builder::new()
            .name("pinvmm-fault".into())
            .spawn(move || fault_loop(mgr, id, fault_cpu))
            .map_err(ResolverError::Spawn)?;
        Ok(Self {
            stop,
            fault_thread: Some(fault_thread),
            pin_thread,
            uffd: Some(uffd),
        })
    }

    /// Stops the threads, releases every pin, and returns the measurements. The userfaultfd
    /// is closed when the last reference (held by the caller, if any) goes.
    pub fn finish(mut self) -> ResolverReport {
        let _ = self.stop.write(1);
        let (mut report, inline) = match self.fault_thread.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            _ => (ResolverReport::default(), None),
        };
        let pin_side = inline.or_else(|| self.pin_thread.take().and_then(|h| h.join().ok()));
        if let Some(p) = pin_side {
            report.pins = p.table.stats;
            report.retried_pins = p.retried;
            report.drain.merge(&p.drainer.stats);
            report.pin_latency = p.pin_lat.summary();
            report.fault_latency = p.fault_lat.summary();
            // Dropping `p` here unregisters the io_uring buffers: every pin is released.
        }
        self.uffd.take();
        report
    }
}

fn fault_loop(
    mut mgr: EventManager<FaultSide>,
    id: event_manager::SubscriberId,
    cpu: usize,
) -> (ResolverReport, Option<PinSide>) {
    // A failed affinity shows up as fault_cpu_mismatches in the report.
    let _ = sys::pin_thread_to_cpu(cpu);
    loop {
        let done = mgr.subscriber_mut(id).map(|s| s.done).unwrap_or(true);
        if done {
            break;
        }
        if let Err(e) = mgr.run_with_timeout(200) {
            if let Ok(s) = mgr.subscriber_mut(id) {
                s.fail(format!("resolver event loop failed: {e:?}"));
            }
            break;
        }
    }
    let Ok(mut side) = mgr.remove_subscriber(id) else {
        return (ResolverReport::default(), None);
    };
    let mut report = std::mem::take(&mut side.report);
    report.drain.merge(&side.drainer.stats);
    let inline = match side.pin.take() {
        Some(PinHalf::Inline(p)) => Some(*p),
        _ => None, // Dropping the sender ends the pin thread.
    };
    (report, inline)
}

fn pin_loop(mut side: PinSide, rx: Receiver<Work>, cpu: usize) -> PinSide {
    let _ = sys::pin_thread_to_cpu(cpu);
    while let Ok(w) = rx.recv() {
        side.resolve(w);
    }
    side
}

/// Faults in and pins every page before boot (`--stage2 eager`). The returned table holds
/// the pins until it is dropped.
pub fn pin_all_eagerly(
    mem: &GuestMemory,
    policy: DrainPolicy,
    inject: Option<InjectPinFailure>,
) -> Result<(PinTable, Drainer), String> {
    let mut table = PinTable::new(mem.pages(), inject);
    let mut drainer = Drainer::new(policy).map_err(|e| e.to_string())?;
    let cpu = sys::current_cpu().unwrap_or(0);
    for page in 0..mem.pages() {
        mem.pin_view().touch_read(page as usize * PAGE_SIZE);
        drainer.after_fault_in(cpu).map_err(|e| e.to_string())?;
        drainer.before_pin().map_err(|e| e.to_string())?;
        let hva = mem.pin_view().addr() + page * PAGE_SIZE as u64;
        table.pin(page, hva).map_err(|e| e.to_string())?;
    }
    Ok((table, drainer))
}
