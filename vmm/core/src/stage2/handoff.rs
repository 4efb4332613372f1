// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The hand-offs between the resolver's two threads: single-producer, single-consumer rings of
//! [`Work`] (faults to fault in, from the pin thread to the fault-in thread; and back, faulted
//! in, ready to pin and map), which neither side allocates or locks on; and how a thread waits
//! for the next one ([`Poller`]: polls while that is cheap, sleeps otherwise).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::path::Stamp;
use crate::sched::{OwnLook, OwnThreads, current_tid};

/// Hand-offs in flight between the fault-in and the pin thread (one per waiting vCPU at most,
/// without fault-ahead; the producer waits when full).
const HANDOFF_SLOTS: usize = 256;

/// A gap this long between two looks at a ring while polling means the poller was preempted
/// by a task that wanted its CPU for long (a look takes well under 1 µs; a kernel worker or
/// an interrupt takes tens of µs; another CPU-bound task a scheduler slice, milliseconds).
const PREEMPT_GAP: Duration = Duration::from_micros(200);

/// After a preempted poll, no polling for `hold`: doubled at each preempted poll, halved
/// after every [`CLEAN_POLLS`] polls in a row that were not, within these bounds. On a busy
/// CPU polling soon stops for good; on a quiet one a rare interruption costs little.
const HOLD_MIN: Duration = Duration::from_millis(1);
const HOLD_MAX: Duration = Duration::from_secs(1);
const CLEAN_POLLS: u32 = 64;

/// Polls up to this long are made even when more tasks are runnable than there are CPUs.
pub(super) const SHORT_POLL: Duration = Duration::from_micros(100);

/// How often a poller looks again at how many tasks want a CPU.
const LOAD_CHECK: Duration = Duration::from_millis(2);

/// How soon it looks again after a look that could not tell whether the task it counted
/// outside the VM was one ([`Load::Maybe`]): about two faults of a guest touching fresh memory.
const MAYBE_CHECK: Duration = Duration::from_micros(250);

/// How long a sleeping consumer sleeps before it looks again on its own (the producer wakes
/// it as soon as it pushes; this only bounds a missed wake-up and the reaction to a stop).
const SLEEP: Duration = Duration::from_millis(50);

/// One fault (and the pages resolved ahead of it), handed between the resolver's threads:
/// guest pages `page .. page + count`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Work {
    pub(super) page: u64,
    pub(super) count: u32,
    pub(super) guest_hva: u64,
    /// When the fault was read.
    pub(super) t0: Instant,
    /// Whether the faulting page is among these (the fault's latency ends with this work).
    pub(super) faulting: bool,
    /// The first page's fault-in into the mlocked view (`None`: the pin faults it in).
    pub(super) stamp: Option<Stamp>,
}

/// Single-producer, single-consumer ring of [`Work`]. Both sides only touch atomics on the
/// way; the consumer sleeps (park) when its [`Poller`] says so, and the producer's unpark is a
/// single atomic swap unless the consumer sleeps. The consumer registers itself
/// (`consumer`) before its first wait.
pub(super) struct Handoff {
    slots: Box<[UnsafeCell<Work>]>,
    /// Next slot to pop; written by the consumer only.
    head: AtomicUsize,
    /// Next slot to push; written by the producer only.
    tail: AtomicUsize,
    pub(super) closed: AtomicBool,
    pub(super) consumer: OnceLock<Thread>,
}

// SAFETY: a slot is written only by the single producer while it is outside [head, tail) and
// read only by the single consumer while it is inside; the Release store of `tail` (push) /
// `head` (pop) and the Acquire loads on the other side order those accesses.
unsafe impl Sync for Handoff {}

impl Handoff {
    pub(super) fn new(t0: Instant) -> Self {
        let blank = Work {
            page: 0,
            count: 0,
            guest_hva: 0,
            t0,
            faulting: false,
            stamp: None,
        };
        Self {
            slots: (0..HANDOFF_SLOTS).map(|_| UnsafeCell::new(blank)).collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            consumer: OnceLock::new(),
        }
    }

    /// Producer side. Waits (yielding) while the ring is full.
    pub(super) fn push(&self, w: Work) {
        let t = self.tail.load(Ordering::Relaxed);
        while t.wrapping_sub(self.head.load(Ordering::Acquire)) >= self.slots.len() {
            std::thread::yield_now();
        }
        // SAFETY: slot t is outside [head, tail) (checked above), so the consumer does not
        // read it until the Release store below publishes it.
        unsafe { *self.slots[t % self.slots.len()].get() = w };
        self.tail.store(t.wrapping_add(1), Ordering::Release);
        if let Some(c) = self.consumer.get() {
            c.unpark();
        }
    }

    /// Consumer side: the next piece of work, polling for it while `poller` says that is
    /// cheap, then sleeping until the producer pushes (or closes the ring, or `give_up`).
    /// None: closed and empty, or given up.
    pub(super) fn wait(
        &self,
        poller: &mut Poller,
        budget: Duration,
        give_up: impl Fn() -> bool,
    ) -> Option<Work> {
        if let Some(w) = self.pop().or_else(|| poller.poll(budget, || self.pop())) {
            return Some(w);
        }
        loop {
            if let Some(w) = self.pop() {
                return Some(w);
            }
            if self.closed.load(Ordering::Acquire) {
                // Closed after its last push: one more look.
                return self.pop();
            }
            if give_up() {
                return None;
            }
            poller.sleeps += 1;
            // An unpark between the pop above and this park makes it return at once.
            std::thread::park_timeout(SLEEP);
        }
    }

    /// Consumer side, without waiting.
    pub(super) fn pop(&self) -> Option<Work> {
        let h = self.head.load(Ordering::Relaxed);
        if h == self.tail.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: slot h is inside [head, tail): published by the producer's Release store
        // of `tail`, and not reused until the Release store of `head` below.
        let w = unsafe { *self.slots[h % self.slots.len()].get() };
        self.head.store(h.wrapping_add(1), Ordering::Release);
        Some(w)
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(c) = self.consumer.get() {
            c.unpark();
        }
    }
}

/// How a resolver thread waits for the next hand-off: it polls (a pause loop, no system call)
/// for up to a budget when the CPUs would otherwise idle — waking a sleeping thread on an idle
/// CPU costs tens of µs on a virtual host — and sleeps at once when other tasks want a CPU:
/// a poller takes CPU time those tasks (or this VM's own vCPU) would have had, and a poller
/// that is preempted waits for its next turn (up to a scheduler tick, several ms), while a
/// sleeper's wake-up may preempt the running task. "Other tasks want a CPU": more runnable
/// tasks than CPUs (`/proc/loadavg`, looked at every [`LOAD_CHECK`]) while a task outside
/// the VM, or one of its own threads that may share the poller's CPU, is runnable
/// ([`LoadProbe`]), or a poll that found its thread preempted (a gap between two looks), which stops polling for a while.
#[derive(Debug)]
pub(super) struct Poller {
    /// The most a poll may last (0: never poll).
    spin: Duration,
    load: LoadProbe,
    hold: Duration,
    no_poll_until: Option<Instant>,
    clean: u32,
    /// Polls cut short because the thread was preempted.
    pub(super) preempted: u64,
    /// Polls not made because more tasks were runnable than there are CPUs.
    pub(super) crowded: u64,
    /// Times the thread went to sleep waiting.
    pub(super) sleeps: u64,
}

impl Poller {
    /// A poller that counts every runnable task as another (see [`Poller::for_vm`]).
    #[cfg(test)]
    pub(super) fn new(spin: Duration) -> Self {
        Self::for_vm(spin, None)
    }

    /// A poller that tells the VM's own threads, `own`, from other tasks when it asks
    /// whether the host is crowded.
    pub(super) fn for_vm(spin: Duration, own: Option<Arc<OwnThreads>>) -> Self {
        Self {
            spin,
            load: LoadProbe::open(own),
            hold: HOLD_MIN,
            no_poll_until: None,
            clean: 0,
            preempted: 0,
            crowded: 0,
            sleeps: 0,
        }
    }

    /// Polls `ready` for up to `budget` (at most the poller's own limit); None when the
    /// caller should sleep instead.
    pub(super) fn poll<T>(
        &mut self,
        budget: Duration,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let budget = budget.min(self.spin);
        if budget.is_zero() {
            return None;
        }
        let start = Instant::now();
        match self.no_poll_until {
            Some(t) if start < t => return None,
            Some(_) => self.no_poll_until = None,
            None => {}
        }
        // A short poll (for an answer the other thread is already working on) is worth it
        // even on a crowded host: it saves a cross-CPU wake-up on the way back.
        if budget > SHORT_POLL && self.load.crowded(start) {
            self.crowded += 1;
            return None;
        }
        let mut prev = start;
        loop {
            for _ in 0..8 {
                std::hint::spin_loop();
            }
            if let Some(x) = ready() {
                self.clean_poll();
                return Some(x);
            }
            let now = Instant::now();
            if now.duration_since(prev) > PREEMPT_GAP {
                self.preempted += 1;
                self.clean = 0;
                self.hold = (self.hold * 2).clamp(HOLD_MIN, HOLD_MAX);
                self.no_poll_until = Some(now + self.hold);
                return None;
            }
            if now.duration_since(start) >= budget {
                self.clean_poll();
                return None;
            }
            prev = now;
        }
    }
}

/// Whether tasks other than the poller want its CPU.
///
/// The cheap look first: the running/runnable count of `/proc/loadavg` (its fourth field,
/// `running/total`, counts this thread too) against the online CPUs. It counts the VM's own
/// threads too, and on 2 CPUs a single-vCPU VM fills them by itself for a moment at every
/// fault (the vCPU runs again while the pin thread that woke it returns to its wait, and the
/// fault-in thread looks for its next fault): taken then, the count said "crowded" for most
/// waits of a quiet host. So when the count exceeds the CPUs, the probe reads the state of
/// each of the VM's own threads ([`OwnThreads`]) and looks at the count again, and decides
/// with [`crowded`]. All of it is hand-written reads of descriptors opened before the
/// thread's seccomp filter (which allows `pread64`, not `open`), without allocation: a
/// library that walks /proc would open files, and the bench's load threads, which must count
/// as other tasks, live in the same process as the VM. Without the file (or with a count it
/// cannot read) nothing is crowded; without registered threads every task counts as another.
#[derive(Debug)]
struct LoadProbe {
    file: Option<std::fs::File>,
    cpus: usize,
    own: Option<Arc<OwnThreads>>,
    /// The polling thread's id (read at its first look: the probe may be made elsewhere).
    me: Option<i32>,
    /// When it last looked, and for how long that look holds.
    checked: Option<(Instant, Duration)>,
    crowded: bool,
}

impl LoadProbe {
    fn open(own: Option<Arc<OwnThreads>>) -> Self {
        Self {
            file: std::fs::File::open("/proc/loadavg").ok(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            own,
            me: None,
            checked: None,
            crowded: false,
        }
    }

    fn crowded(&mut self, now: Instant) -> bool {
        if self
            .checked
            .is_some_and(|(t, hold)| now.duration_since(t) < hold)
        {
            return self.crowded;
        }
        let load = self.look();
        let hold = if load == Load::Maybe {
            MAYBE_CHECK
        } else {
            LOAD_CHECK
        };
        self.checked = Some((now, hold));
        self.crowded = load != Load::Free;
        self.crowded
    }

    fn look(&mut self) -> Load {
        let Some(n) = self.runnable() else {
            return Load::Free;
        };
        let Some(own) = &self.own else {
            return crowded(n, self.cpus, None);
        };
        // More runnable tasks than the VM has threads: some are others, no need to look.
        if n <= self.cpus || n > own.registered() {
            return crowded(n, self.cpus, None);
        }
        let me = *self.me.get_or_insert_with(current_tid);
        let mine = own.look(me);
        // A task runnable at both looks is likely still runnable; one of the VM's threads
        // that went to sleep (or woke) between them is not counted twice.
        let again = self.runnable().unwrap_or(n);
        crowded(n.min(again), self.cpus, Some(mine))
    }

    fn runnable(&self) -> Option<usize> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.file.as_ref()?.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        text.split_whitespace()
            .nth(3)?
            .split('/')
            .next()?
            .parse()
            .ok()
    }
}

/// What a look at the run queues found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Nobody else wants the poller's CPU: poll.
    Free,
    /// Someone else does: sleep.
    Crowded,
    /// The only tasks counted outside the VM are no more than the VM's threads that read as
    /// sleeping: they may be those. A thread preempted on the way to its wait has marked
    /// itself sleeping but stays on the run queue, counted, until it runs again (likely the
    /// pin thread preempted by the vCPU it has just woken; seen in 9-15% of the looks of a
    /// quiet stress-model run, not traced). Sleep, and look again soon ([`MAYBE_CHECK`]).
    Maybe,
}

/// Whether a poller should sleep rather than poll: `runnable` tasks (the poller included) on
/// `cpus` CPUs, of which the VM's own threads are `own` (None: not read). The CPUs are
/// oversubscribed, and either a task outside the VM is runnable (it may be waiting for the
/// poller's CPU), or one of the VM's own runnable threads may run where the poller runs (a
/// vCPU left to the scheduler, say). The VM's threads placed on other CPUs (a single vCPU and
/// its pin thread, seen from the fault-in thread) take nothing from the poller, nor it from
/// them.
fn crowded(runnable: usize, cpus: usize, own: Option<OwnLook>) -> Load {
    if runnable <= cpus {
        return Load::Free;
    }
    let Some(o) = own else {
        return Load::Crowded;
    };
    let others = runnable.saturating_sub(o.running);
    let sleeping = o.registered.saturating_sub(o.running);
    if o.rivals > 0 || others > sleeping {
        Load::Crowded
    } else if others > 0 {
        Load::Maybe
    } else {
        Load::Free
    }
}

impl Poller {
    fn clean_poll(&mut self) {
        self.clean += 1;
        if self.clean >= CLEAN_POLLS {
            self.clean = 0;
            self.hold = (self.hold / 2).max(HOLD_MIN);
        }
    }
}

/// The producer's end of a ring; dropping it closes the ring (the consumer ends).
pub(super) struct Producer(pub(super) Arc<Handoff>);

impl Drop for Producer {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sys::PAGE_SIZE;

    fn work(page: u64) -> Work {
        Work {
            page,
            count: 1,
            guest_hva: page * PAGE_SIZE as u64,
            t0: Instant::now(),
            faulting: true,
            stamp: None,
        }
    }

    /// Both ways of waiting (polling, and sleeping at once) get every piece of work, in
    /// order, across the ring's wrap-around, and end when the producer closes the ring.
    #[test]
    fn handoff_keeps_order_across_wraparound_and_threads() {
        for spin in [Duration::ZERO, Duration::from_micros(300)] {
            let q = Arc::new(Handoff::new(Instant::now()));
            let n = HANDOFF_SLOTS as u64 * 3 + 7;
            let rx = q.clone();
            let consumer = std::thread::spawn(move || {
                let _ = rx.consumer.set(std::thread::current());
                let mut poller = Poller::new(spin);
                let mut got = Vec::new();
                while let Some(w) = rx.wait(&mut poller, spin, || false) {
                    got.push(w.page);
                }
                got
            });
            let producer = Producer(q);
            for p in 0..n {
                producer.0.push(work(p));
                if p % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            drop(producer); // closes the ring
            let got = consumer.join().unwrap();
            assert_eq!(got, (0..n).collect::<Vec<_>>(), "spin {spin:?}");
        }
    }

    /// A poll that finds its thread preempted (here: a `ready` that sleeps, as a preempted
    /// thread would) stops, and the next polls do not poll at all for a while. (Short polls:
    /// longer ones are not made at all on a crowded host, such as a loaded CI machine.)
    #[test]
    fn a_preempted_poll_stops_polling() {
        let mut p = Poller::new(SHORT_POLL);
        let r: Option<()> = p.poll(SHORT_POLL, || {
            std::thread::sleep(PREEMPT_GAP * 2);
            None
        });
        assert!(r.is_none());
        assert_eq!(p.preempted, 1);
        let t = Instant::now();
        let mut looks = 0;
        let r: Option<()> = p.poll(SHORT_POLL, || {
            looks += 1;
            None
        });
        assert!(r.is_none() && looks == 0 && t.elapsed() < Duration::from_millis(1));
        // No budget: no look at all (the caller's own pop comes first); else found at once.
        assert_eq!(
            Poller::new(Duration::ZERO).poll(Duration::ZERO, || Some(1)),
            None
        );
        assert_eq!(
            Poller::new(Duration::from_micros(50)).poll(Duration::from_micros(50), || Some(1)),
            Some(1)
        );
    }

    #[test]
    fn the_runnable_count_is_read_from_proc_loadavg() {
        let mut l = LoadProbe::open(None);
        let n = l.runnable().expect("/proc/loadavg");
        assert!(n >= 1, "this thread runs: {n}");
        // Crowded or not, the answer is cached for LOAD_CHECK.
        let now = Instant::now();
        let c = l.crowded(now);
        assert_eq!(l.crowded(now), c);
    }

    /// The decision table: oversubscribed CPUs, and someone who may want the poller's CPU.
    #[test]
    fn crowded_means_others_or_rivals_on_oversubscribed_cpus() {
        use Load::{Crowded, Free, Maybe};
        let own = |running, rivals| {
            Some(OwnLook {
                registered: 3,
                running,
                rivals,
            })
        };
        // Not oversubscribed: never crowded, whoever runs.
        assert_eq!(crowded(1, 2, None), Free);
        assert_eq!(crowded(2, 2, None), Free);
        assert_eq!(crowded(2, 2, own(0, 0)), Free);
        // Oversubscribed, own threads not read: every task counts as another.
        assert_eq!(crowded(3, 2, None), Crowded);
        // A single vCPU and its pin thread on the other CPU, and the poller: only the VM.
        assert_eq!(crowded(3, 2, own(3, 0)), Free);
        // The pin thread went to sleep between the looks: the lower count is taken, and it
        // is not oversubscribed.
        assert_eq!(crowded(2, 2, own(2, 0)), Free);
        // More of the VM's threads read runnable than the count (they woke between the
        // looks): nobody else.
        assert_eq!(crowded(3, 2, own(4, 0)), Free);
        // One task counted outside the VM, and one of the VM's threads reads as sleeping:
        // it may be that thread, preempted on its way to sleep (or another VM's vCPU, with
        // `campaign --jobs 2`): sleep, look again soon.
        assert_eq!(crowded(3, 2, own(2, 0)), Maybe);
        // Two busy tasks outside the VM (`--load 2`) beside the poller and the vCPU: more
        // than the VM's sleeping threads could be.
        assert_eq!(crowded(4, 2, own(1, 0)), Crowded);
        assert_eq!(crowded(4, 2, own(2, 0)), Crowded);
        // The same with the vCPU and the pin thread both asleep: as many counted outside as
        // the VM's sleeping threads, so it cannot tell (it looks again soon).
        assert_eq!(crowded(3, 2, own(1, 0)), Maybe);
        assert_eq!(crowded(5, 2, own(2, 0)), Crowded);
        // Only the VM, but a runnable vCPU of its own may run where the poller polls.
        assert_eq!(crowded(3, 2, own(3, 1)), Crowded);
    }

    /// A busy thread outside the VM (not registered: the bench's load threads) makes the
    /// probe call the host crowded even when the VM's threads are read. (That the VM's own
    /// threads are counted out depends on what else the host runs: the decision table above.)
    #[test]
    fn a_busy_thread_outside_the_vm_crowds_the_host() {
        use std::sync::atomic::AtomicBool;
        let own = Arc::new(OwnThreads::default());
        own.register_current(Some(0));
        let mut l = LoadProbe::open(Some(own));
        l.cpus = 1;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let busy = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        std::thread::sleep(Duration::from_millis(5));
        let looks: Vec<Load> = (0..20).map(|_| l.look()).collect();
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
        assert!(looks.iter().all(|&c| c == Load::Crowded), "{looks:?}");
    }
}
