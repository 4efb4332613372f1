// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Why a long-term pin failed: a verdict from the folio's flags (read before the pin with
//! `--trace`, and right after the failure always) and the page's path through the VMM (which
//! thread put it into the mlocked view, on which CPU, when; which drains ran before the pin;
//! how much LRU traffic the fault-in CPU saw since). The rules and the measurements behind
//! each are in docs/FAILURES.md §3; in short:
//!
//! - on the LRU, mlocked, not unevictable → the folio's mlock-batch entry is still pending
//!   (`mlock-batch-pending`, decided by the flags);
//! - mlocked and unevictable → the flags cannot tell a processed batch from a fresh folio that
//!   LRU traffic put on the LRU before its mlock batch ran; the path decides
//!   (`mlock-batch-after-lru-add` when the fault-in was on another CPU, no drain ran there and
//!   LRU traffic did, else `undecided`);
//! - not on the LRU before the pin → the pre-fix kernel drains every CPU for it
//!   (`off-lru`: not explained by the batches); not mlocked → `not-mlocked`; outside
//!   ZONE_MOVABLE and CMA → `not-movable` (no migration was needed).

use serde::{Deserialize, Serialize};

use crate::host::folio::{FolioState, PageFlags};
use crate::host::trace::{KernelTrace, MigrateEvent};
use crate::stage2::path::PinPath;

/// Failure signatures, by their stable names (reports, campaign summaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signature {
    /// On the LRU, mlocked, not yet unevictable: its mlock-batch entry (and reference) pends.
    MlockBatchPending,
    /// Mlocked and already unevictable, but the path says a fresh folio was put on the LRU by
    /// LRU traffic on the fault-in CPU while its mlock-batch entry pended there.
    MlockBatchAfterLruAdd,
    /// Not on the LRU before the pin: the pre-fix check drains every CPU for such a folio.
    OffLru,
    /// Not mlocked: the mlock batches cannot hold it.
    NotMlocked,
    /// Outside ZONE_MOVABLE and CMA: the pin needed no migration.
    NotMovable,
    /// The pin had to fault the page in itself and could not: the page is still absent. A
    /// long-term pin's fault may only take memory outside ZONE_MOVABLE and CMA (for hugetlb:
    /// a free huge page of the pool there, or a surplus one).
    FaultInFailed,
    /// The flags and the path do not decide.
    Undecided,
    /// No folio flags could be read (not root).
    NoFolioState,
    /// A protected VM's failed page could not be identified.
    PageUnknown,
    /// The failure was injected (`--inject`).
    Injected,
}

impl Signature {
    pub const ALL: [Signature; 10] = [
        Signature::MlockBatchPending,
        Signature::MlockBatchAfterLruAdd,
        Signature::OffLru,
        Signature::NotMlocked,
        Signature::NotMovable,
        Signature::FaultInFailed,
        Signature::Undecided,
        Signature::NoFolioState,
        Signature::PageUnknown,
        Signature::Injected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Signature::MlockBatchPending => "mlock-batch-pending",
            Signature::MlockBatchAfterLruAdd => "mlock-batch-after-lru-add",
            Signature::OffLru => "off-lru",
            Signature::NotMlocked => "not-mlocked",
            Signature::NotMovable => "not-movable",
            Signature::FaultInFailed => "fault-in-failed",
            Signature::Undecided => "undecided",
            Signature::NoFolioState => "no-folio-state",
            Signature::PageUnknown => "page-unknown",
            Signature::Injected => "injected",
        }
    }

    /// The stray reference sits in a pending mlock batch (decided or inferred).
    pub fn is_mlock_batch(self) -> bool {
        matches!(
            self,
            Signature::MlockBatchPending | Signature::MlockBatchAfterLruAdd
        )
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// The verdict on one failed pin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub signature: Signature,
    /// `flags`, `flags+path`, `path` or `none`: what decided it.
    pub decided_by: String,
    /// The verdict in one sentence.
    pub summary: String,
    /// The facts it rests on, one per line.
    pub evidence: Vec<String>,
}

/// The flags as they were when the kernel isolated the folio for migration. A failed
/// migration isolated the folio from the LRU (so it was on the LRU) and put it back through
/// the pinning CPU's LRU-add batch, where it stays off the LRU with its mlocked/unevictable
/// bits unchanged: right after the failure, those bits are the ones the kernel saw — better
/// than a read before the pin, which an LRU-add batch flushed in between makes stale
/// (docs/FAILURES.md §3 rule 5). Only when the put-back batch was flushed already does the
/// read before the pin stand in.
struct AtPin {
    lru: Option<bool>,
    mlocked: bool,
    unevictable: Option<bool>,
    source: String,
}

fn at_pin(before: Option<PageFlags>, after: Option<PageFlags>) -> Option<AtPin> {
    if let Some(a) = after.filter(|a| !a.lru()) {
        return Some(AtPin {
            lru: Some(true),
            mlocked: a.mlocked(),
            unevictable: Some(a.unevictable()),
            source: format!(
                "right after the failure, {} (off the LRU: migration isolated it from the LRU, so it was on it, and put it back through the pinning CPU's LRU-add batch with its mlocked/unevictable bits as they were)",
                a.short()
            ),
        });
    }
    if let Some(b) = before {
        return Some(AtPin {
            lru: Some(b.lru()),
            mlocked: b.mlocked(),
            unevictable: Some(b.unevictable()),
            source: format!("just before the pin, {}", b.short()),
        });
    }
    let a = after?;
    Some(AtPin {
        lru: None,
        mlocked: a.mlocked(),
        unevictable: None,
        source: format!(
            "right after the failure, {} (back on the LRU already: the put-back batch was flushed, which makes a mlocked folio unevictable, so its state at the pin is unknown)",
            a.short()
        ),
    })
}

/// The verdict on a failed pin. `before` is the state read just before the pin (`--trace`),
/// `after` the state read right after the failure; `injected` a failure `--inject` made.
pub fn explain(
    before: Option<&FolioState>,
    after: Option<&FolioState>,
    path: &PinPath,
    injected: bool,
) -> Verdict {
    let mut ev = vec![format!("path: {}", path.describe())];
    let v = |signature, decided_by: &str, summary: String, evidence| Verdict {
        signature,
        decided_by: decided_by.into(),
        summary,
        evidence,
    };
    if injected {
        return v(
            Signature::Injected,
            "none",
            "the failure was injected (--inject): no kernel state behind it".into(),
            ev,
        );
    }
    for (when, s) in [("before the pin", before), ("after the failure", after)] {
        if let Some(s) = s {
            ev.push(format!("folio {when}: {}", s.describe()));
        }
    }
    // Nothing was migrated: the pin's own fault-in failed. Seen on the arm64 board with
    // --backing hugetlb (docs/FAILURES.md): EFAULT once the pool had no free huge page left
    // outside ZONE_MOVABLE, where a long-term pin's fault must allocate.
    if path.fault_in.is_none() && after.is_some_and(|a| a.page == "absent") {
        return v(
            Signature::FaultInFailed,
            "path",
            "the pin had to fault the page in itself and could not (the page is still absent after the failure): a long-term pin's fault may only allocate outside ZONE_MOVABLE and CMA; with --backing hugetlb that takes a free huge page of the pool outside ZONE_MOVABLE, or a surplus one (vm.nr_overcommit_hugepages). Not the batches: nothing was migrated".into(),
            ev,
        );
    }
    let unpinnable = after
        .and_then(|s| s.unpinnable)
        .or_else(|| before.and_then(|s| s.unpinnable));
    if unpinnable == Some(false) {
        return v(
            Signature::NotMovable,
            "flags",
            "the page is outside ZONE_MOVABLE and CMA: the pin needed no migration, so the batches cannot be why it failed".into(),
            ev,
        );
    }
    let flags = |s: Option<&FolioState>| s.and_then(FolioState::page_flags);
    let Some(st) = at_pin(flags(before), flags(after)) else {
        return v(
            Signature::NoFolioState,
            "none",
            "the folio's flags could not be read (/proc/kpageflags needs root)".into(),
            ev,
        );
    };
    ev.push(format!("state at the pin, from the flags {}", st.source));
    if !st.mlocked {
        return v(
            Signature::NotMlocked,
            "flags",
            "the folio is not mlocked: no mlock batch holds it; another reference blocked the migration".into(),
            ev,
        );
    }
    if st.lru == Some(false) {
        return v(
            Signature::OffLru,
            "flags",
            "the folio was not on the LRU before the pin: the pre-fix kernel drains every CPU's batches for such a folio, so the batches do not explain this failure".into(),
            ev,
        );
    }
    let cross = path.cross_cpu();
    let drains = path.drains_on_fault_cpu();
    let consistent = cross != Some(false) && drains == 0;
    if st.lru == Some(true) && st.unevictable == Some(false) {
        let mut summary = "on the LRU, mlocked, not yet unevictable: the folio's entry in the fault-in CPU's mlock batch (and the reference it holds) was still pending, and the pin ran on another CPU, which cannot drain it".to_owned();
        if !consistent {
            summary = format!(
                "on the LRU, mlocked, not yet unevictable: an mlock-batch entry was pending — but {}, which should have released it",
                if cross == Some(false) {
                    "the fault-in and the pin ran on the same CPU".to_owned()
                } else {
                    format!("{drains} drain(s) reached the fault-in CPU in between")
                }
            );
        }
        return v(
            Signature::MlockBatchPending,
            if consistent { "flags+path" } else { "flags" },
            summary,
            ev,
        );
    }
    // Unevictable (or unknown): the flags look like a processed batch.
    let traffic = path.lru_traffic_since();
    let b = flags(before);
    if st.unevictable == Some(true) && b.is_some_and(|b| !b.lru() && !b.unevictable()) {
        // Seen happening: off the LRU and evictable just before the pin, on it and
        // unevictable when the kernel isolated it. Only an LRU-add of the mlocked folio does
        // that; its mlock-batch entry then still pends unless the fault-in CPU drained.
        ev.push(
            "just before the pin the folio was still in an LRU-add batch (off the LRU, not unevictable); when the kernel isolated it, it was on the LRU and unevictable: an LRU-add batch was flushed in between, as the old check does not drain for a folio on the LRU".into(),
        );
        return v(
            Signature::MlockBatchAfterLruAdd,
            if consistent { "flags+path" } else { "flags" },
            "its LRU-add batch put the mlocked folio on the LRU (as unevictable) just before the pin, while its entry in the fault-in CPU's mlock batch was still pending".into(),
            ev,
        );
    }
    if cross == Some(true) && drains == 0 && traffic > 0 {
        ev.push(format!(
            "the flags alone cannot decide (a processed mlock batch looks the same); the path does: fault-in and pin on different CPUs, no drain on the fault-in CPU, {traffic} LRU adds there since"
        ));
        return v(
            Signature::MlockBatchAfterLruAdd,
            "path",
            "mlocked and already unevictable, but no drain reached the fault-in CPU and LRU traffic did: the folio was put on the LRU (as unevictable) by its LRU-add batch while its mlock-batch entry was still pending there".into(),
            ev,
        );
    }
    ev.push(format!(
        "the flags cannot decide, nor the path: cross-CPU {}, drains reaching the fault-in CPU {drains}, LRU traffic there since {traffic}",
        cross.map_or("unknown".into(), |c| c.to_string())
    ));
    v(
        Signature::Undecided,
        "none",
        "mlocked and unevictable: the mlock batch may have been processed; what held the extra reference is not visible from userspace".into(),
        ev,
    )
}

/// One failed long-term pin, explained: what the folio looked like, the page's path, the
/// verdict, and (with `--trace`) the kernel's own migration event for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedPin {
    pub gpa: u64,
    /// The page's address in the mlocked pin view (the address pinned).
    pub hva: u64,
    pub errno_name: String,
    /// `terminated` (the VM died of it), `retried` (`--policy retry` pinned it again).
    pub outcome: String,
    /// How the failing page was found (a protected VM's KVM_RUN names none on 7.x):
    /// `resolver` (pinvmm pinned it), `trace` (the kernel's set_migration_pte event),
    /// `pin-view scan` (the only loader-written page still in movable memory and off the LRU).
    pub identified_by: String,
    /// The folio read just before the pin (`--trace`), and right after the failure.
    pub before: Option<FolioState>,
    pub after: Option<FolioState>,
    pub path: PinPath,
    pub verdict: Verdict,
    /// The kernel's `mm_migrate_pages` event of this pin (`--trace`).
    pub kernel: Option<MigrateEvent>,
    /// When the page was not known at once: each candidate, explained, for the trace to pick
    /// from at teardown ([`FailedPin::resolve`]).
    #[serde(skip)]
    pub alternatives: Vec<FailedPin>,
}

impl FailedPin {
    /// Replaces a failure whose page was not known by the candidate the trace names.
    pub fn resolve(&mut self, trace: &KernelTrace) {
        let Some(i) = self
            .alternatives
            .iter()
            .position(|a| trace.failure_at(a.hva).is_some())
        else {
            return;
        };
        let mut pick = self.alternatives.swap_remove(i);
        pick.identified_by = format!("trace (set_migration_pte), among {}", self.identified_by);
        pick.outcome = std::mem::take(&mut self.outcome);
        *self = pick;
    }

    /// Attaches the kernel's failed migration of this page from `trace`, if it has one.
    pub fn attach_kernel(&mut self, trace: &KernelTrace) {
        if let Some(e) = trace.failure_at(self.hva) {
            self.verdict.evidence.push(format!(
                "kernel: mm_migrate_pages nr_failed={} nr_succeeded={} reason={} mode={} on thread {} (CPU {}) at {:.0} µs",
                e.failed, e.succeeded, e.reason, e.mode, e.tid, e.cpu, e.at_us
            ));
            self.kernel = Some(e.clone());
        }
    }

    /// One paragraph for humans.
    pub fn describe(&self) -> String {
        let found = if self.identified_by == "resolver" {
            String::new()
        } else {
            format!("; page found by {}", self.identified_by)
        };
        let mut s = format!(
            "pin of GPA {:#x} failed ({}): {} [{}, decided by {}{found}]",
            self.gpa,
            self.errno_name,
            self.verdict.summary,
            self.verdict.signature.name(),
            self.verdict.decided_by
        );
        for e in &self.verdict.evidence {
            s.push_str("\n    ");
            s.push_str(e);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::folio::{PfnRange, ZoneMap};
    use crate::stage2::path::{DrainCount, Step};

    fn zones() -> ZoneMap {
        ZoneMap {
            zones: vec![
                PfnRange {
                    name: "DMA".into(),
                    start: 0x40000,
                    end: 0xa0000,
                },
                PfnRange {
                    name: "Movable".into(),
                    start: 0xa0000,
                    end: 0xc0000,
                },
            ],
            ..Default::default()
        }
    }

    fn path(
        fcpu: u32,
        pcpu: u32,
        drains: &[(&str, Option<u32>)],
        noise: u64,
        faults: u64,
    ) -> PinPath {
        PinPath {
            fault_in: Some(Step {
                thread: "fault-in".into(),
                cpu: Some(fcpu),
                at_us: 100.0,
            }),
            pin: Step {
                thread: "pin".into(),
                cpu: Some(pcpu),
                at_us: 180.0,
            },
            fault_to_pin_us: Some(80.0),
            drains_between: drains
                .iter()
                .map(|(k, c)| DrainCount {
                    kind: (*k).into(),
                    cpu: *c,
                    count: 1,
                })
                .collect(),
            mlocked_faults_since: faults,
            noise_pages_since: noise,
            loader_writes_since: 0,
        }
    }

    fn st(pfn: u64, kpf: u64) -> FolioState {
        FolioState::from_raw(pfn, kpf, 2, &zones())
    }

    /// Each recorded class of docs/FAILURES.md §2, with its board values, gets its verdict.
    #[test]
    fn board_cases() {
        let cross = path(0, 1, &[], 0, 0);
        // page cache, pending batch, cross: before L.M. (6.12.43 and 7.3), after .AM. / ..M.
        let before = st(0xa02f4, 0x200004838);
        for after in [0x20000485c, 0x20000481c] {
            let after = st(0xa02f4, after);
            let v = explain(Some(&before), Some(&after), &cross, false);
            assert_eq!(
                (v.signature, v.decided_by.as_str()),
                (Signature::MlockBatchPending, "flags+path")
            );
            // the after-failure state alone decides the same (rule 5)
            let v = explain(None, Some(&after), &cross, false);
            assert_eq!(v.signature, Signature::MlockBatchPending, "{v:?}");
        }
        // put-back batch already flushed: after = L.MU, no before → flags cannot decide; no
        // traffic → undecided; with traffic → inferred
        let after = st(0xa030f, 0x20004483c);
        assert_eq!(
            explain(None, Some(&after), &cross, false).signature,
            Signature::Undecided
        );
        let busy = path(0, 1, &[], 31, 0);
        assert_eq!(
            explain(None, Some(&after), &busy, false).signature,
            Signature::MlockBatchAfterLruAdd
        );
        // fresh + 31 noise: before L.MU, after ..MU
        let (b, a) = (st(0xa0334, 0x200044838), st(0xa0334, 0x200044818));
        let v = explain(Some(&b), Some(&a), &busy, false);
        assert_eq!(
            (v.signature, v.decided_by.as_str()),
            (Signature::MlockBatchAfterLruAdd, "path")
        );
        assert_eq!(
            explain(None, Some(&a), &busy, false).signature,
            Signature::MlockBatchAfterLruAdd
        );
        // ... but a local drain on the fault CPU in between: undecided
        let drained = path(0, 1, &[("local", Some(0))], 31, 0);
        assert_eq!(
            explain(Some(&b), Some(&a), &drained, false).signature,
            Signature::Undecided
        );
        // a local drain on the pin CPU does not count
        let pin_drain = path(0, 1, &[("local", Some(1))], 31, 0);
        assert_eq!(
            explain(Some(&b), Some(&a), &pin_drain, false).signature,
            Signature::MlockBatchAfterLruAdd
        );
        // anonymous or fresh, off the LRU before the pin (..M. / .AM.): off-lru
        let anon = st(0xa0b12, 0x600205808);
        assert_eq!(
            explain(Some(&anon), None, &cross, false).signature,
            Signature::OffLru
        );
        // moved out of movable memory (a pin that had succeeded elsewhere): not-movable
        let moved = st(0x445f3, 0x200044838);
        assert_eq!(
            explain(None, Some(&moved), &cross, false).signature,
            Signature::NotMovable
        );
        // not mlocked
        let plain = st(0xa0000, 0x4838);
        assert_eq!(
            explain(Some(&plain), None, &cross, false).signature,
            Signature::NotMlocked
        );
    }

    /// Seen on the board (6.12.43, hello, --trace): the read before the pin found the folio
    /// still in an LRU-add batch; the kernel found it on the LRU, unevictable.
    #[test]
    fn a_stale_read_before_the_pin_is_overruled_by_the_state_after() {
        let cross = path(0, 1, &[], 0, 0);
        let (b, a) = (st(0xa0547, 0x200004858), st(0xa0547, 0x200044818));
        let v = explain(Some(&b), Some(&a), &cross, false);
        assert_eq!(
            (v.signature, v.decided_by.as_str()),
            (Signature::MlockBatchAfterLruAdd, "flags+path"),
            "{v:?}"
        );
        // before L.M. but unevictable at isolation: the batch ran in between; not decided
        let v = explain(Some(&st(0xa0547, 0x200004838)), Some(&a), &cross, false);
        assert_eq!(v.signature, Signature::Undecided, "{v:?}");
    }

    #[test]
    fn pending_batch_on_the_same_cpu_is_flagged_as_inconsistent() {
        let same = path(1, 1, &[], 0, 0);
        let v = explain(Some(&st(0xa02f4, 0x200004838)), None, &same, false);
        assert_eq!(
            (v.signature, v.decided_by.as_str()),
            (Signature::MlockBatchPending, "flags")
        );
        assert!(v.summary.contains("same CPU"), "{}", v.summary);
    }

    #[test]
    fn no_flags_injected_and_names() {
        let p = path(0, 1, &[], 0, 0);
        let mut blind = st(0xa02f4, 0);
        blind.kpageflags = None;
        assert_eq!(
            explain(None, Some(&blind), &p, false).signature,
            Signature::NoFolioState
        );
        assert_eq!(explain(None, None, &p, true).signature, Signature::Injected);
        // Seen on the board (--backing hugetlb, pKVM-exact): the pin faulted the page in
        // itself, and it is still absent after the failure.
        let mut absent = blind.clone();
        absent.page = "absent".into();
        let by_pin = PinPath {
            fault_in: None,
            ..p.clone()
        };
        let v = explain(None, Some(&absent), &by_pin, false);
        assert_eq!(
            (v.signature, v.decided_by.as_str()),
            (Signature::FaultInFailed, "path")
        );
        assert!(!v.signature.is_mlock_batch());
        // Faulted in by a thread before the pin: absent afterwards is not this (no flags).
        assert_eq!(
            explain(None, Some(&absent), &p, false).signature,
            Signature::NoFolioState
        );
        for s in Signature::ALL {
            assert_eq!(Signature::from_name(s.name()), Some(s));
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.name()));
        }
        assert!(p.describe().contains("CPU 0") && p.describe().contains("CPU 1"));
    }
}
