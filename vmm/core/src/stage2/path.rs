// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The path of a page from its fault-in to its long-term pin: which thread put it into the
//! mlocked pin view, on which CPU and when; which thread pinned it, where and when; which
//! drains ran in between, and how much LRU traffic the fault-in CPU saw since. Whether a pin
//! of an mlocked folio fails on a kernel without the upstream GUP fix depends on exactly these
//! (docs/FAILURES.md): the folio's mlock-batch entry sits on the fault-in CPU until something
//! drains or fills that CPU's batch.
//!
//! The resolver threads and the protected VM's loader count what they do in one
//! [`PathCounters`] (relaxed atomics, one add per event); each fault-in takes a [`Stamp`] of
//! the counters, carried with the page to the pin; a failed pin turns its stamp into a
//! [`PinPath`] (the differences since the stamp).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What the VMM did that can release or fill a per-CPU batch, counted since the VM started.
#[derive(Debug)]
pub struct PathCounters {
    /// The VM's time zero (the report's µs are since then).
    pub t0: Instant,
    /// Pages faulted into the mlocked view (each one mlock-batch add, more with read
    /// fault-around) by the fault-in thread or written through it by the loader.
    mlocked_faults: AtomicU64,
    /// Fresh page-cache pages written on the fault-in CPU (`--noise`): LRU-add batch adds.
    noise_pages: AtomicU64,
    /// Pages the loader wrote through the loader view (page cache) after the stamp.
    loader_writes: AtomicU64,
    /// Local drains (`lru_add_drain()` on the fault-in thread's CPU).
    local_drains: AtomicU64,
    /// All-CPU drains (`lru_add_drain_all()`), from whichever thread.
    all_drains: AtomicU64,
}

/// The counters at one page's fault-in, and where and when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub at: Instant,
    pub cpu: Option<u32>,
    mlocked_faults: u64,
    noise_pages: u64,
    loader_writes: u64,
    local_drains: u64,
    all_drains: u64,
}

impl Stamp {
    /// Local drains counted before this stamp (with [`Stamp::all_drains`]: which drain epoch
    /// the fault-in belongs to).
    pub fn local_drains(&self) -> u64 {
        self.local_drains
    }

    pub fn all_drains(&self) -> u64 {
        self.all_drains
    }
}

/// Which of [`PathCounters`]' counters an event adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    MlockedFault,
    NoisePage,
    LoaderWrite,
    LocalDrain,
    AllDrain,
}

impl PathCounters {
    pub fn new(t0: Instant) -> Self {
        Self {
            t0,
            mlocked_faults: AtomicU64::new(0),
            noise_pages: AtomicU64::new(0),
            loader_writes: AtomicU64::new(0),
            local_drains: AtomicU64::new(0),
            all_drains: AtomicU64::new(0),
        }
    }

    fn counter(&self, c: Count) -> &AtomicU64 {
        match c {
            Count::MlockedFault => &self.mlocked_faults,
            Count::NoisePage => &self.noise_pages,
            Count::LoaderWrite => &self.loader_writes,
            Count::LocalDrain => &self.local_drains,
            Count::AllDrain => &self.all_drains,
        }
    }

    /// Counts `n` events of kind `c`.
    pub fn add(&self, c: Count, n: u64) {
        self.counter(c).fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, c: Count) -> u64 {
        self.counter(c).load(Ordering::Relaxed)
    }

    /// A stamp of a fault-in that happened now, on `cpu`.
    pub fn stamp(&self, cpu: Option<usize>) -> Stamp {
        Stamp {
            at: Instant::now(),
            cpu: cpu.map(|c| c as u32),
            mlocked_faults: self.get(Count::MlockedFault),
            noise_pages: self.get(Count::NoisePage),
            loader_writes: self.get(Count::LoaderWrite),
            local_drains: self.get(Count::LocalDrain),
            all_drains: self.get(Count::AllDrain),
        }
    }

    /// µs since the VM started.
    pub fn us(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.t0).as_secs_f64() * 1e6
    }

    /// The path of a page faulted in at `fault_in` (by `fault_thread`; `None`: the pin faulted
    /// it in itself) and pinned by `pin_thread` on `pin_cpu`, the pin starting at `pin_at`.
    /// Stamps are taken after their own fault-in is counted, so it is not traffic since.
    pub fn path(
        &self,
        fault_in: Option<(&Stamp, &str)>,
        pin_thread: &str,
        pin_cpu: Option<usize>,
        pin_at: Instant,
    ) -> PinPath {
        let pin = Step {
            thread: pin_thread.into(),
            cpu: pin_cpu.map(|c| c as u32),
            at_us: self.us(pin_at),
        };
        let Some((s, thread)) = fault_in else {
            return PinPath {
                fault_in: None,
                pin,
                fault_to_pin_us: None,
                drains_between: Vec::new(),
                mlocked_faults_since: 0,
                noise_pages_since: 0,
                loader_writes_since: 0,
            };
        };
        let since = |c, at: u64| self.get(c).saturating_sub(at);
        let mut drains = Vec::new();
        let local = since(Count::LocalDrain, s.local_drains);
        if local > 0 {
            drains.push(DrainCount {
                kind: "local".into(),
                cpu: s.cpu,
                count: local,
            });
        }
        let all = since(Count::AllDrain, s.all_drains);
        if all > 0 {
            drains.push(DrainCount {
                kind: "all-cpus".into(),
                cpu: pin.cpu,
                count: all,
            });
        }
        PinPath {
            fault_in: Some(Step {
                thread: thread.into(),
                cpu: s.cpu,
                at_us: self.us(s.at),
            }),
            fault_to_pin_us: Some(pin_at.saturating_duration_since(s.at).as_secs_f64() * 1e6),
            pin,
            drains_between: drains,
            mlocked_faults_since: since(Count::MlockedFault, s.mlocked_faults),
            noise_pages_since: since(Count::NoisePage, s.noise_pages),
            loader_writes_since: since(Count::LoaderWrite, s.loader_writes),
        }
    }
}

/// One step of a page's path: a thread, its CPU, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `fault-in`, `pin`, `loader`, `vcpu0`, ...
    pub thread: String,
    pub cpu: Option<u32>,
    /// µs since the VM started.
    pub at_us: f64,
}

/// Drains of one kind on one CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainCount {
    /// `local` (`lru_add_drain()` on `cpu`: MADV_COLD) or `all-cpus` (`lru_add_drain_all()`,
    /// called from `cpu`: migrate_pages(2)).
    pub kind: String,
    pub cpu: Option<u32>,
    pub count: u64,
}

/// The path of the page whose pin failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinPath {
    /// Who put the page into the mlocked view (the fault-in thread's touch; the protected
    /// loader's write). `None`: the pin faulted it in itself (`--fault-in pin`).
    pub fault_in: Option<Step>,
    pub pin: Step,
    /// From the fault-in to the start of the pin.
    pub fault_to_pin_us: Option<f64>,
    /// Drains that ran between the fault-in and the pin.
    pub drains_between: Vec<DrainCount>,
    /// LRU traffic on the fault-in CPU since the fault-in: other pages faulted or written into
    /// the mlocked view there (mlock-batch adds), noise pages (LRU-add batch adds), pages the
    /// loader wrote into the page cache.
    pub mlocked_faults_since: u64,
    pub noise_pages_since: u64,
    pub loader_writes_since: u64,
}

impl PinPath {
    /// The fault-in and the pin ran on different CPUs (the failure's precondition).
    pub fn cross_cpu(&self) -> Option<bool> {
        let f = self.fault_in.as_ref()?.cpu?;
        Some(f != self.pin.cpu?)
    }

    /// Drains that would have released a batch on the fault-in CPU (local drains there, and
    /// every all-CPU drain).
    pub fn drains_on_fault_cpu(&self) -> u64 {
        let fcpu = self.fault_in.as_ref().and_then(|s| s.cpu);
        self.drains_between
            .iter()
            .filter(|d| d.kind != "local" || d.cpu.is_none() || d.cpu == fcpu)
            .map(|d| d.count)
            .sum()
    }

    /// LRU adds on the fault-in CPU since the fault-in.
    pub fn lru_traffic_since(&self) -> u64 {
        self.mlocked_faults_since + self.noise_pages_since + self.loader_writes_since
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        let cpu = |c: Option<u32>| c.map_or_else(|| "?".into(), |c| c.to_string());
        let fault = match &self.fault_in {
            Some(f) => format!(
                "faulted into the mlocked view by the {} thread on CPU {} at {:.0} µs",
                f.thread,
                cpu(f.cpu),
                f.at_us
            ),
            None => "faulted in by the pin itself".into(),
        };
        let gap = self
            .fault_to_pin_us
            .map(|g| format!(" ({g:.0} µs later)"))
            .unwrap_or_default();
        let drains = if self.drains_between.is_empty() {
            "no drain in between".to_owned()
        } else {
            self.drains_between
                .iter()
                .map(|d| format!("{} {} drain(s) from CPU {}", d.count, d.kind, cpu(d.cpu)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{fault}; pinned by the {} thread on CPU {} at {:.0} µs{gap}; {drains}; LRU traffic on the fault-in CPU since: {} mlocked-view faults, {} noise pages, {} loader writes",
            self.pin.thread,
            cpu(self.pin.cpu),
            self.pin.at_us,
            self.mlocked_faults_since,
            self.noise_pages_since,
            self.loader_writes_since
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_counts_what_happened_since_the_stamp() {
        let c = PathCounters::new(Instant::now());
        c.add(Count::MlockedFault, 5);
        c.add(Count::LocalDrain, 2);
        c.add(Count::MlockedFault, 1); // this page's own fault-in
        let s = c.stamp(Some(0));
        c.add(Count::MlockedFault, 1); // the next page's
        c.add(Count::NoisePage, 31);
        c.add(Count::AllDrain, 1);
        let p = c.path(Some((&s, "fault-in")), "pin", Some(1), Instant::now());
        assert_eq!(p.cross_cpu(), Some(true));
        assert_eq!(
            p.mlocked_faults_since, 1,
            "the next page's fault-in, not its own"
        );
        assert_eq!(p.noise_pages_since, 31);
        assert_eq!(p.lru_traffic_since(), 32);
        assert_eq!(
            p.drains_between,
            vec![DrainCount {
                kind: "all-cpus".into(),
                cpu: Some(1),
                count: 1
            }]
        );
        assert_eq!(p.drains_on_fault_cpu(), 1);
        assert!(p.fault_to_pin_us.unwrap() >= 0.0);
        let d = p.describe();
        assert!(
            d.contains("CPU 0") && d.contains("CPU 1") && d.contains("31 noise"),
            "{d}"
        );
        let none = c.path(None, "pin", Some(1), Instant::now());
        assert!(none.fault_in.is_none() && none.cross_cpu().is_none());
        assert!(none.describe().contains("by the pin itself"));
    }

    #[test]
    fn local_drains_on_another_cpu_do_not_reach_the_fault_cpu() {
        let p = PinPath {
            fault_in: Some(Step {
                thread: "loader".into(),
                cpu: Some(0),
                at_us: 1.0,
            }),
            pin: Step {
                thread: "vcpu0".into(),
                cpu: Some(1),
                at_us: 2.0,
            },
            fault_to_pin_us: Some(1.0),
            drains_between: vec![DrainCount {
                kind: "local".into(),
                cpu: Some(1),
                count: 3,
            }],
            mlocked_faults_since: 0,
            noise_pages_since: 0,
            loader_writes_since: 0,
        };
        assert_eq!(p.drains_on_fault_cpu(), 0);
    }
}
