// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Explaining a protected VM's failed pin. KVM takes the pin itself, on the vCPU thread, and
//! on 7.x turns a failed pin into a plain `EFAULT` from `KVM_RUN` — no
//! `KVM_EXIT_MEMORY_FAULT`, no address. What userspace can still see (docs/FAILURES.md §4):
//!
//! - which page: KVM's IPA where it reports one; else the kernel's trace (`--trace`: the
//!   `set_migration_pte` events of the failed migration name the page's addresses); else a scan
//!   of the pages the loader wrote through the mlocked view — pins KVM took moved their pages
//!   out of movable memory, pages not yet faulted are still on the LRU, and the failed folio is
//!   the one in movable memory that migration took off the LRU (and put back through the vCPU
//!   CPU's LRU-add batch);
//! - the folio's state (kpageflags) right after the failure, and before the run (`--trace`);
//! - the loader's own record ([`LoaderRecord`]): which pages it wrote through the mlocked view,
//!   in which order, on which CPU, and which drains followed — which says exactly which of
//!   them were still in that CPU's mlock batch when the vCPU ran (the last N mod 31 written
//!   since the last drain, when nothing else mlocks on that CPU).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::host::folio::{FolioReader, FolioState};
use crate::host::trace::MigrateEvent;
use crate::memory::GuestMemory;
use crate::stage2::explain::{FailedPin, Signature, explain};
use crate::stage2::path::{Count, PathCounters, Stamp};
use crate::sys::{self, PAGE_SIZE};

/// Candidates kept when the failed page is not known at once.
const MAX_CANDIDATES: usize = 8;

/// Folios per per-CPU folio batch (`PAGEVEC_SIZE`/`FOLIO_BATCH_SIZE`, 31 since Linux 5.x): an
/// mlock batch is processed when an add fills it.
pub const BATCH_SIZE: u64 = 31;

/// What the loader did, page by page.
#[derive(Debug, Default)]
pub struct LoaderRecord {
    /// Pages written through the mlocked view, in order, each with the stamp of its write.
    pub writes: Vec<(u64, Stamp)>,
    /// With `--trace`: each written page's folio at the end of loading (after the drain).
    pub before: Vec<Option<FolioState>>,
}

/// What a protected VM needs to explain its failed pins; shared by the loader and the vCPUs.
#[derive(Debug, Clone)]
pub struct ProtectedExplain {
    pub mem: Arc<GuestMemory>,
    pub counters: Arc<PathCounters>,
    pub folio: Option<Arc<FolioReader>>,
    pub record: Arc<Mutex<LoaderRecord>>,
    /// Where the explained failures go (collected at teardown).
    pub out: Arc<Mutex<Vec<FailedPin>>>,
    /// Read each written page's folio at the end of loading (`--trace`).
    pub read_before: bool,
}

impl ProtectedExplain {
    fn hva(&self, page: u64) -> u64 {
        self.mem.pin_view().addr() + page * PAGE_SIZE as u64
    }

    fn page_of(&self, addr: u64) -> Option<u64> {
        let base = self.mem.pin_view().addr();
        (addr >= base && addr < base + self.mem.size()).then(|| (addr - base) / PAGE_SIZE as u64)
    }

    /// The loader wrote `page` through the mlocked view, now, on `cpu`.
    pub fn wrote(&self, page: u64, cpu: Option<usize>) {
        self.counters.add(Count::MlockedFault, 1);
        let s = self.counters.stamp(cpu);
        self.lock().writes.push((page, s));
    }

    /// The loader is done (after its drains): with `--trace`, read every written page.
    pub fn loaded(&self) {
        if !self.read_before {
            return;
        }
        let Some(f) = &self.folio else { return };
        let mut r = self.lock();
        let states: Vec<_> = r
            .writes
            .iter()
            .map(|&(p, _)| f.read(self.hva(p)).ok())
            .collect();
        r.before = states;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoaderRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Which pages the failed one may be, and how that is known: KVM's IPA where it reports
    /// one; else the loader-written pages still in movable memory that migration took off the
    /// LRU. Reads flags only (no allocation: fresh heap pages would add to the LRU batches of
    /// this CPU, whose state a retry depends on). With `--trace` the kernel's
    /// `set_migration_pte` events pick among several candidates at teardown.
    fn candidates(&self, gpa: Option<u64>) -> (Vec<u64>, String) {
        if let Some(g) = gpa {
            let page = g.checked_sub(self.mem.base()).map(|o| o / PAGE_SIZE as u64);
            return (page.into_iter().collect(), "KVM (memory-fault exit)".into());
        }
        let Some(f) = &self.folio else {
            return (Vec::new(), "unknown: folio state unreadable".into());
        };
        let r = self.lock();
        let mut found = Vec::with_capacity(MAX_CANDIDATES);
        let mut n = 0;
        for &(p, _) in &r.writes {
            let off_lru = f
                .flags_at(self.hva(p))
                .is_some_and(|(_, fl, pin)| pin == Some(true) && fl.mlocked() && !fl.lru());
            if off_lru {
                n += 1;
                if found.len() < MAX_CANDIDATES {
                    found.push(p);
                }
            }
        }
        let how = match n {
            1 => "pin-view scan".to_owned(),
            0 => "unknown: no loader-written page in movable memory is off the LRU".to_owned(),
            n => format!(
                "unknown: {n} loader-written pages in movable memory are off the LRU (--trace picks)"
            ),
        };
        (found, how)
    }

    /// Explains a KVM_RUN that failed with EFAULT on vCPU `id`, returned at `at`, at once;
    /// `gpa` is KVM's IPA when it reported one.
    pub fn efault(&self, id: u8, gpa: Option<u64>, at: Instant, outcome: &str) {
        let cpu = sys::current_cpu();
        let (pages, how) = self.candidates(gpa);
        let mut each: Vec<FailedPin> = pages
            .iter()
            .map(|&p| self.explain_page(Some(p), (id, cpu, at), outcome, &how, true))
            .collect();
        let f = if each.len() == 1 && !how.starts_with("unknown") {
            each.remove(0)
        } else {
            let mut f = self.explain_page(None, (id, cpu, at), outcome, &how, false);
            f.alternatives = each;
            f
        };
        self.out.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    }

    /// `pin`: the vCPU, its CPU, and when its KVM_RUN returned.
    fn explain_page(
        &self,
        page: Option<u64>,
        (id, cpu, at): (u8, Option<usize>, Instant),
        outcome: &str,
        identified_by: &str,
        read_after: bool,
    ) -> FailedPin {
        let thread = format!("vcpu{id}");
        let after = page
            .filter(|_| read_after)
            .and_then(|p| self.folio.as_ref()?.read(self.hva(p)).ok());
        let (stamp, before, batch) = {
            let r = self.lock();
            let i = page.and_then(|p| r.writes.iter().position(|&(q, _)| q == p));
            (
                i.map(|i| r.writes[i].1),
                i.and_then(|i| r.before.get(i).cloned().flatten()),
                i.map(|i| self.batch_evidence(&r, i)),
            )
        };
        let path = self
            .counters
            .path(stamp.as_ref().map(|s| (s, "loader")), &thread, cpu, at);
        let mut verdict = explain(before.as_ref(), after.as_ref(), &path, false);
        if page.is_none() {
            verdict.signature = Signature::PageUnknown;
            verdict.decided_by = "none".into();
            verdict.summary = format!("the failed page is not known ({identified_by})");
        }
        verdict.evidence.extend(batch);
        if page.is_some() && stamp.is_none() {
            verdict
                .evidence
                .push("the loader did not write this page: KVM's pin faulted it in itself".into());
        }
        FailedPin {
            gpa: page.map_or(0, |p| self.mem.base() + p * PAGE_SIZE as u64),
            hva: page.map_or(0, |p| self.hva(p)),
            errno_name: "EFAULT".into(),
            outcome: outcome.into(),
            identified_by: identified_by.into(),
            before,
            after,
            path,
            verdict,
            kernel: None,
            alternatives: Vec::new(),
        }
    }

    /// At teardown, for a failure whose page was not known at once: the page the kernel's
    /// trace names (`failure`: its failed migration). The folio's state after the failure is
    /// lost by then; the path, the loader's record and the state before the run remain.
    pub fn resolve_late(&self, f: &mut FailedPin, failure: &MigrateEvent) {
        if f.verdict.signature != Signature::PageUnknown {
            return;
        }
        let Some(page) = failure.addrs.iter().find_map(|&a| self.page_of(a)) else {
            return;
        };
        let thread = f
            .path
            .pin
            .thread
            .trim_start_matches("vcpu")
            .parse()
            .unwrap_or(0);
        let cpu = f.path.pin.cpu.map(|c| c as usize);
        let at = self.counters.t0 + std::time::Duration::from_secs_f64(f.path.pin.at_us / 1e6);
        let how = format!(
            "trace (set_migration_pte), at teardown; at the failure: {}",
            f.identified_by
        );
        let outcome = f.outcome.clone();
        let mut late = self.explain_page(Some(page), (thread, cpu, at), &outcome, &how, false);
        late.verdict.evidence.push(
            "the folio's state right after the failure was not read (its page was not known then)"
                .into(),
        );
        *f = late;
    }

    /// What the loader's record says about write `i`: was it among the last writes since the
    /// last drain on the loader's CPU that no full batch flushed?
    pub(crate) fn batch_evidence(&self, r: &LoaderRecord, i: usize) -> String {
        let (_, s) = r.writes[i];
        let epoch = |t: &Stamp| (t.local_drains(), t.all_drains());
        let same: Vec<usize> = (0..r.writes.len())
            .filter(|&j| epoch(&r.writes[j].1) == epoch(&s))
            .collect();
        let k = same.iter().position(|&j| j == i).unwrap_or(0) as u64;
        let n = same.len() as u64;
        let cpu = s.cpu.map_or_else(|| "?".into(), |c| c.to_string());
        let now = self.counters.stamp(None);
        if epoch(&now) != epoch(&s) {
            return format!(
                "loader record: write {} of {n} through the mlocked view on CPU {cpu} since the last drain, and a drain ran after them: none of them can still be batched there",
                k + 1
            );
        }
        let left = n % BATCH_SIZE;
        let pending = k >= n - left;
        format!(
            "loader record: write {} of {n} through the mlocked view on CPU {cpu} since the last drain there, none after; batches of {BATCH_SIZE} leave the last {left} of them in that CPU's mlock batch: this page {} (if nothing else mlocked on CPU {cpu})",
            k + 1,
            if pending {
                "was one of them"
            } else {
                "was not"
            }
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::Backing;

    pub(crate) fn explainer(mem: &Arc<GuestMemory>) -> ProtectedExplain {
        ProtectedExplain {
            mem: mem.clone(),
            counters: Arc::new(PathCounters::new(Instant::now())),
            folio: FolioReader::open().ok().map(Arc::new),
            record: Arc::default(),
            out: Arc::default(),
            read_before: true,
        }
    }

    #[test]
    fn an_efault_without_a_known_page_says_so() {
        let mem = Arc::new(GuestMemory::new(Backing::Shmem, 0x4000_0000, 16 * 4096).unwrap());
        let x = explainer(&mem);
        x.efault(0, None, Instant::now(), "terminated");
        let out = x.out.lock().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].verdict.signature, Signature::PageUnknown);
        assert!(
            out[0].identified_by.starts_with("unknown"),
            "{}",
            out[0].identified_by
        );
        drop(out);
        // KVM's IPA names the page (an x86 host's memory is not movable: not-movable, or no
        // flags without root).
        x.efault(0, Some(0x4000_1000), Instant::now(), "retried");
        let out = x.out.lock().unwrap();
        assert_eq!(out[1].gpa, 0x4000_1000);
        assert_eq!(out[1].identified_by, "KVM (memory-fault exit)");
    }

    /// A protected VM's vCPU explains its failed pin at once, inside the vCPU's seccomp
    /// filter (KVM_RUN's EFAULT arrives there): the scan of the loader's pages, the folio
    /// reads (pagemap, kpageflags: opened before the filter), the path and the verdict must
    /// all work without a denied call. The boards we boot with protected VMs (Debian's 7.3)
    /// never fail a pin, so this is where that path runs filtered.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn an_efault_is_explained_under_the_vcpu_filter() {
        use crate::seccomp::{ThreadKind, install};
        let mem = Arc::new(GuestMemory::new(Backing::Shmem, 0x4000_0000, 16 * 4096).unwrap());
        mem.load(0x4000_0000, &[1u8; 3 * 4096]).unwrap();
        // Map page 1 in the pin view, as KVM's pin would: its folio then reads as present.
        let hva = mem.pin_view().addr() + 4096;
        // SAFETY: `hva` lies inside the pin view (16 pages of shared memory), mapped and alive
        // for `mem`'s life; a byte read through it has no other effect.
        assert_eq!(unsafe { std::ptr::read_volatile(hva as *const u8) }, 1);
        let x = explainer(&mem);
        for p in 0..3 {
            x.wrote(p, sys::current_cpu());
        }
        x.loaded();
        let y = x.clone();
        let r = std::thread::spawn(move || {
            install(ThreadKind::Vcpu).map_err(|e| e.to_string())?;
            y.efault(0, None, Instant::now(), "terminated");
            y.efault(1, Some(0x4000_1000), Instant::now(), "retried");
            // SAFETY: socket(2) takes no pointers; a returned fd (the failure case) is closed.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let denied = std::io::Error::last_os_error().raw_os_error();
            if fd >= 0 {
                // SAFETY: `fd` was just returned by socket(2) and is owned here.
                unsafe { libc::close(fd) };
            }
            Ok::<_, String>((fd, denied))
        })
        .join()
        .expect("the filtered thread was not killed");
        let (fd, denied) = r.expect("install");
        assert_eq!((fd, denied), (-1, Some(libc::EPERM)), "the filter is on");
        let out = x.out.lock().unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].gpa, 0x4000_1000);
        assert_eq!(out[1].outcome, "retried");
        assert!(!out[1].verdict.summary.is_empty());
        // The folio read at once worked where the reader could open pagemap.
        if x.folio.is_some() {
            let after = out[1].after.as_ref().expect("the folio read at once");
            assert_eq!(after.page, "present", "{after:?}");
        }
    }
}
