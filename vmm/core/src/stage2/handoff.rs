// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The hand-off between the resolver's two threads: a single-producer (fault-in thread),
//! single-consumer (pin thread) ring of faults to pin and map, which neither side allocates
//! or locks on.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Instant;

use super::path::Stamp;

/// Hand-offs in flight between the fault-in and the pin thread (one per waiting vCPU at most,
/// without fault-ahead; the producer waits when full).
const HANDOFF_SLOTS: usize = 256;

/// One fault (and the pages resolved ahead of it), handed from the fault-in thread to the
/// pin thread: guest pages `page .. page + count`.
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

/// Single-producer (fault-in thread), single-consumer (pin thread) ring of [`Work`]. Both
/// sides only touch atomics on the way; the consumer sleeps (park) only after polling for
/// `spin`, and the producer's unpark is a single atomic swap unless the consumer sleeps.
pub(super) struct Handoff {
    slots: Box<[UnsafeCell<Work>]>,
    /// Next slot to pop; written by the consumer only.
    head: AtomicUsize,
    /// Next slot to push; written by the producer only.
    tail: AtomicUsize,
    pub(super) closed: AtomicBool,
    pub(super) consumer: OnceLock<Thread>,
    pub(super) sleeps: AtomicUsize,
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
            sleeps: AtomicUsize::new(0),
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

    /// Consumer side.
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

/// The fault-in thread's end of the ring; dropping it ends the pin thread.
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

    #[test]
    fn handoff_keeps_order_across_wraparound_and_threads() {
        let q = Arc::new(Handoff::new(Instant::now()));
        let n = HANDOFF_SLOTS as u64 * 3 + 7;
        let rx = q.clone();
        let consumer = std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match rx.pop() {
                    Some(w) => got.push(w.page),
                    None if rx.closed.load(Ordering::Acquire) => match rx.pop() {
                        Some(w) => got.push(w.page),
                        None => break,
                    },
                    None => std::thread::park_timeout(Duration::from_millis(1)),
                }
            }
            got
        });
        let _ = q.consumer.set(consumer.thread().clone());
        let producer = Producer(q);
        for p in 0..n {
            producer.0.push(work(p));
        }
        drop(producer); // closes the ring
        let got = consumer.join().unwrap();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    }
}
