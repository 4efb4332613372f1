// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Pre-migration drain policies: what the resolver does between faulting a page into the
//! mlocked pin view and taking the long-term pin, so that no per-CPU batch still holds a
//! reference to the folio when the pin tries to migrate it (docs/DESIGN.md §1, §3, §7).
//!
//! Userspace has no call that drains only the mlock batch. What it has:
//! - a *local* `lru_add_drain()` (which also runs `mlock_drain_local()`): `madvise(MADV_COLD)`
//!   on a private, not-mlocked scratch page, on the CPU to drain. `madvise_cold()` drains
//!   before it looks at any page, so the page is never touched: a present, young page would
//!   be aged, and aging flushes its TLB entry on every CPU running this process — an IPI
//!   that kicks the vCPU out of the guest on each drain (measured: +30% per fault);
//! - an *all-CPU* `lru_add_drain_all()`: `migrate_pages(2)` on ourselves with equal node masks
//!   (the kernel calls `lru_cache_disable()` first).

use std::io;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::control::HostFailure;
use crate::inject::{Injector, Site};
use crate::names::named_enum;
use crate::stage2::path::{Count, PathCounters};
use crate::sys::{self, Mapping, PAGE_SIZE};

named_enum! {
    /// The policies.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum DrainPolicy {
        /// Nothing (the status quo of crosvm on pKVM).
        None = "none",
        /// Drain every CPU's LRU and mlock batches before each pin (`lru_add_drain_all()`).
        LruAddDrain = "lru-add-drain",
        /// Drain only the batches of the CPU that faulted the page in, right after the fault-in.
        MlockDrain = "mlock-drain",
        /// No drain up front; when a pin fails, drain every CPU and pin once more.
        Retry = "retry",
    }
}

/// What a policy does around one long-term pin. [`DrainPolicy::hooks`] is the one definition
/// of every policy: the userfaultfd resolver, eager pinning and a protected VM's loader ask it
/// through a [`Drainer`], and a protected VM's vCPU loop asks it whether to run a failed
/// `KVM_RUN` again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    /// Drain the batches of the CPU that faulted the page in, right after the fault-in, on
    /// that CPU (a local `lru_add_drain()`).
    pub after_fault_in: bool,
    /// Drain every CPU's batches just before the pin (`lru_add_drain_all()`).
    pub before_pin: bool,
    /// When the pin fails, pin once more: after draining every CPU where the VMM takes the
    /// pin, or by running KVM_RUN again where KVM takes it (the kernel then drains itself).
    pub retry_failed_pin: bool,
}

impl DrainPolicy {
    /// What the policy does around a pin (see [`Hooks`]).
    pub const fn hooks(self) -> Hooks {
        let nothing = Hooks {
            after_fault_in: false,
            before_pin: false,
            retry_failed_pin: false,
        };
        match self {
            DrainPolicy::None => nothing,
            DrainPolicy::LruAddDrain => Hooks {
                before_pin: true,
                ..nothing
            },
            DrainPolicy::MlockDrain => Hooks {
                after_fault_in: true,
                ..nothing
            },
            DrainPolicy::Retry => Hooks {
                retry_failed_pin: true,
                ..nothing
            },
        }
    }
}

/// Failures of a drain call.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("cannot map the drain scratch page: {0}")]
    Scratch(io::Error),
    #[error("local drain (madvise MADV_COLD on the scratch page) failed: {err}{}", tag(*.injected))]
    Local { err: io::Error, injected: bool },
    #[error(
        "all-CPU drain (migrate_pages on self) failed: {err}{}; does the kernel have CONFIG_NUMA?",
        tag(*.injected)
    )]
    All { err: io::Error, injected: bool },
}

fn tag(injected: bool) -> &'static str {
    if injected { " [injected]" } else { "" }
}

impl DrainError {
    /// The errno of the failed call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DrainError::Scratch(e)
            | DrainError::Local { err: e, .. }
            | DrainError::All { err: e, .. } => e.raw_os_error(),
        }
    }

    /// The failed call.
    pub fn call(&self) -> &'static str {
        match self {
            DrainError::Scratch(_) => "mmap(scratch page)",
            DrainError::Local { .. } => "madvise(MADV_COLD)",
            DrainError::All { .. } => "migrate_pages",
        }
    }

    /// Whether `--inject drain` made it fail.
    pub fn injected(&self) -> bool {
        matches!(
            self,
            DrainError::Local { injected: true, .. } | DrainError::All { injected: true, .. }
        )
    }

    /// For the report: the drain before the pin of `gpa`, on `thread`, failed.
    pub fn host_failure(&self, thread: &str, gpa: u64) -> HostFailure {
        let mut f = HostFailure::named(
            Site::Drain.name(),
            self.call(),
            self.errno(),
            thread,
            format!("draining before the pin of GPA {gpa:#x}: {self}"),
        );
        (f.gpa, f.injected) = (Some(gpa), self.injected());
        f
    }
}

/// Counts and time spent draining, per resolver thread.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct DrainStats {
    pub local_drains: u64,
    pub all_drains: u64,
    pub total_ns: u64,
    /// Local drains that ran on another CPU than the one asked for (the thread moved).
    pub cpu_mismatches: u64,
}

impl DrainStats {
    pub fn merge(&mut self, o: &DrainStats) {
        self.local_drains += o.local_drains;
        self.all_drains += o.all_drains;
        self.total_ns += o.total_ns;
        self.cpu_mismatches += o.cpu_mismatches;
    }
}

/// One thread's drainer: owns its scratch page and its statistics.
#[derive(Debug)]
pub struct Drainer {
    policy: DrainPolicy,
    scratch: Mapping,
    faults: Arc<Injector>,
    /// The VM's path counters (stage2::path), when a failed pin is to be explained.
    counters: Option<Arc<PathCounters>>,
    pub stats: DrainStats,
}

impl Drainer {
    pub fn new(policy: DrainPolicy) -> Result<Self, DrainError> {
        // Never touched: MADV_COLD drains anyway, and finds no page to age (module docs).
        let scratch = Mapping::anonymous(PAGE_SIZE).map_err(DrainError::Scratch)?;
        Ok(Self {
            policy,
            scratch,
            faults: Injector::off(),
            counters: None,
            stats: DrainStats::default(),
        })
    }

    /// Drains that are also counted in the VM's path counters (what ran between a page's
    /// fault-in and its pin).
    pub fn with_counters(mut self, counters: Arc<PathCounters>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Drains that fail as `faults` says (site `drain`).
    pub fn with_injector(mut self, faults: Arc<Injector>) -> Self {
        self.faults = faults;
        self
    }

    /// `Err(errno)` instead of the call when `--inject drain` says so.
    fn injected(&self) -> Result<(), io::Error> {
        match self.faults.hit(Site::Drain) {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }

    pub fn policy(&self) -> DrainPolicy {
        self.policy
    }

    /// Runs on the fault-in thread right after the fault-in, on `fault_cpu`.
    pub fn after_fault_in(&mut self, fault_cpu: usize) -> Result<(), DrainError> {
        if self.policy.hooks().after_fault_in {
            self.drain_local(fault_cpu)?;
        }
        Ok(())
    }

    /// Runs on the pin thread just before the pin.
    pub fn before_pin(&mut self) -> Result<(), DrainError> {
        if self.policy.hooks().before_pin {
            self.drain_all()?;
        }
        Ok(())
    }

    /// Runs after a failed pin; true if the policy wants the pin tried again.
    pub fn after_failed_pin(&mut self) -> Result<bool, DrainError> {
        if !self.policy.hooks().retry_failed_pin {
            return Ok(false);
        }
        self.drain_all()?;
        Ok(true)
    }

    /// `lru_add_drain()` on the calling thread's CPU.
    pub fn drain_local(&mut self, expect_cpu: usize) -> Result<(), DrainError> {
        let t = Instant::now();
        if sys::current_cpu() != Some(expect_cpu) {
            self.stats.cpu_mismatches += 1;
        }
        let injected = self.injected();
        let injected_now = injected.is_err();
        injected
            .and_then(|()| self.scratch.madvise(0, PAGE_SIZE, libc::MADV_COLD))
            .map_err(|err| DrainError::Local {
                err,
                injected: injected_now,
            })?;
        self.stats.local_drains += 1;
        self.stats.total_ns += t.elapsed().as_nanos() as u64;
        if let Some(c) = &self.counters {
            c.add(Count::LocalDrain, 1);
        }
        Ok(())
    }

    /// `lru_add_drain_all()`.
    pub fn drain_all(&mut self) -> Result<(), DrainError> {
        let t = Instant::now();
        let injected = self.injected();
        let injected_now = injected.is_err();
        injected
            .and_then(|()| sys::migrate_pages_to_self())
            .map_err(|err| DrainError::All {
                err,
                injected: injected_now,
            })?;
        self.stats.all_drains += 1;
        self.stats.total_ns += t.elapsed().as_nanos() as u64;
        if let Some(c) = &self.counters {
            c.add(Count::AllDrain, 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_policy_has_one_hook() {
        let hooks = DrainPolicy::ALL.map(|p| {
            let h = p.hooks();
            (h.after_fault_in, h.before_pin, h.retry_failed_pin)
        });
        assert_eq!(
            hooks,
            [
                (false, false, false),
                (false, true, false),
                (true, false, false),
                (false, false, true)
            ]
        );
    }

    #[test]
    fn policies_call_the_right_drain() {
        let cpu = sys::current_cpu().unwrap();
        let mut none = Drainer::new(DrainPolicy::None).unwrap();
        none.after_fault_in(cpu).unwrap();
        none.before_pin().unwrap();
        assert!(!none.after_failed_pin().unwrap());
        assert_eq!(none.stats, DrainStats::default());

        let mut m = Drainer::new(DrainPolicy::MlockDrain).unwrap();
        m.after_fault_in(cpu).unwrap();
        m.before_pin().unwrap();
        assert_eq!((m.stats.local_drains, m.stats.all_drains), (1, 0));
    }

    /// The local drain really runs `mlock_drain_local()` on this CPU, with an untouched
    /// scratch page: freshly mlocked folios become unevictable (their mlock batch was
    /// processed). Needs /proc/kpageflags and PFNs in /proc/self/pagemap (root); without them
    /// it checks nothing and says so.
    #[test]
    fn local_drain_processes_the_mlock_batch() {
        use crate::testing::{Need, skip};
        const NAME: &str = "local_drain_processes_the_mlock_batch";
        std::thread::spawn(|| {
            use std::os::unix::fs::FileExt;
            let cpu = sys::current_cpu().unwrap();
            sys::pin_thread_to_cpu(cpu).unwrap();
            let (Ok(pagemap), Ok(kpf)) = (
                std::fs::File::open("/proc/self/pagemap"),
                std::fs::File::open("/proc/kpageflags"),
            ) else {
                return skip(NAME, Need::Root, "cannot open /proc/kpageflags");
            };
            let read = |f: &std::fs::File, idx: u64| {
                let mut b = [0u8; 8];
                f.read_exact_at(&mut b, idx * 8)
                    .map(|()| u64::from_ne_bytes(b))
            };
            const KPF_UNEVICTABLE: u64 = 18;
            let f = sys::memfd("draintest", 64 * PAGE_SIZE as u64).unwrap();
            let view = Mapping::shared(&f, 64 * PAGE_SIZE).unwrap();
            view.mlock_onfault().unwrap();
            let mut d = Drainer::new(DrainPolicy::MlockDrain).unwrap();
            let (mut before, mut after) = (0, 0);
            for i in 0..8 {
                let off = i * 8 * PAGE_SIZE;
                view.touch_read(off);
                let pfn = read(&pagemap, (view.addr() + off as u64) / PAGE_SIZE as u64).unwrap()
                    & ((1 << 55) - 1);
                if pfn == 0 {
                    return skip(NAME, Need::Root, "PFNs are hidden in /proc/self/pagemap");
                }
                before += read(&kpf, pfn).unwrap() >> KPF_UNEVICTABLE & 1;
                d.drain_local(cpu).unwrap();
                after += read(&kpf, pfn).unwrap() >> KPF_UNEVICTABLE & 1;
            }
            assert_eq!(
                after, 8,
                "unevictable after the drain: {after}/8 (before: {before})"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn names_are_the_report_names() {
        for p in DrainPolicy::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.name()));
        }
        assert_eq!(
            DrainPolicy::ALL.map(DrainPolicy::name),
            ["none", "lru-add-drain", "mlock-drain", "retry"]
        );
    }
}
