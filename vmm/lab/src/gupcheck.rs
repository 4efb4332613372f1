// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm gup-check`: a kselftest-style check (KTAP output, no KVM needed) of whether this
//! kernel's long-term pins of mlocked shmem fail under the seed's conditions: pages already in
//! the page cache (prefilled through a not-mlocked view), faulted into an mlocked view on one
//! CPU, then pinned (FOLL_LONGTERM, io_uring) on
//! another. Kernels without Hugh Dickins' 2025 GUP fix fail most such pins with ENOMEM when
//! the pages sit in ZONE_MOVABLE or CMA. A *stress model* (docs/DESIGN.md, vocabulary): every
//! page is faulted in on one CPU and pinned on another, which a pKVM VMM does only for pages
//! its loader wrote.
//!
//! What makes a verdict trustworthy:
//! - a case is `ok` only if every pin succeeded **and** every page sat in ZONE_MOVABLE or CMA
//!   just before its pin (so each pin had to migrate it): the PFN is in ZONE_MOVABLE's span
//!   (/proc/zoneinfo) or a CMA area (debugfs), or the pin moved the page (its PFN changed).
//!   Otherwise the case tested nothing and is skipped, saying why;
//! - a failed pin counts as the seed's failure only with ENOMEM (what GUP returns when a
//!   migration failed); any other errno is reported as such;
//! - kselftest conventions: `# Totals:` line, exit 0 when every case passed, 1 when one
//!   failed, 4 when every case was skipped.
//!
//! `--states` checks the rules that explain such failures (docs/FAILURES.md) on the running
//! kernel: it reads every page's folio state after its fault-in, before its pin and after it,
//! tallies them per case with each failed pin's verdict, adds a case of fresh pages with LRU
//! traffic on the fault CPU, and shows a failed page's state after a drain on the fault CPU
//! and on the pin CPU.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use vmm::host::folio::{FolioReader, FolioState};
use vmm::host::{self, PfnZones};
use vmm::stage2::drain::{DrainPolicy, Drainer};
use vmm::stage2::explain::explain;
use vmm::stage2::path::{Count, PathCounters};
use vmm::stage2::pin::PinTable;
use vmm::sys::{self, Mapping, PAGE_SIZE};

/// Arguments of `pinvmm gup-check`.
#[derive(Args, Debug, Clone)]
pub struct GupCheckArgs {
    /// Pages per case (each case uses a fresh memfd of this many pages).
    #[arg(long, default_value_t = 4096)]
    pub pages: u64,
    /// Rounds per case.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Run the cases even with no ZONE_MOVABLE/CMA (then no pin can fail, and each case is
    /// skipped for not testing migration: this exercises the check itself).
    #[arg(long)]
    pub force: bool,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Check the failure-explanation rules (docs/FAILURES.md): read each page's folio state
    /// (kpageflags; needs root) after its fault-in and around its pin, tally the states with
    /// each failed pin's verdict, add a case of fresh pages with 31 noise pages per fault-in
    /// on the fault CPU, and probe a failed page with a drain on each CPU.
    #[arg(long)]
    pub states: bool,
}

/// Pages whose states went the same way: `fault_in → before → after`, in `LAMU` letters.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StateCount {
    pub pins: u64,
    pub failed: u64,
    /// Failed pins by verdict signature.
    pub signatures: BTreeMap<String, u64>,
}

/// A failed page after a local drain on each CPU (the last failed page of a round).
#[derive(Debug, Clone, Serialize)]
pub struct DrainProbe {
    pub after_failure: FolioState,
    pub after_fault_cpu_drain: Option<FolioState>,
    pub after_pin_cpu_drain: Option<FolioState>,
}

/// kselftest exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KsftExit {
    Pass = 0,
    Fail = 1,
    Skip = 4,
}

impl From<KsftExit> for std::process::ExitCode {
    fn from(c: KsftExit) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

/// One case's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: &'static str,
    pub pins: u64,
    pub failed: u64,
    /// errno name -> failed pins.
    pub errnos: BTreeMap<String, u64>,
    /// Pages shown to sit in ZONE_MOVABLE/CMA just before their pin (-1: PFNs not readable).
    pub movable_before_pin: i64,
    /// Of those, pages the successful pin moved (PFN changed).
    pub moved_by_pin: u64,
    pub pgmigrate_success: i64,
    pub pgmigrate_fail: i64,
    pub seconds: f64,
    /// `--states`: pages by state path, and the drain probe.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub states: BTreeMap<String, StateCount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<DrainProbe>,
}

/// A case's KTAP verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    NotOk(String),
    Skip(String),
}

impl CaseResult {
    /// `ok` only when every pin succeeded and every page had to be migrated.
    pub fn verdict(&self) -> Verdict {
        if self.failed > 0 {
            let e: Vec<String> = self
                .errnos
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            let what = if self.errnos.keys().all(|k| k == "ENOMEM") {
                "the seed's failure: a migration failed"
            } else {
                "not only ENOMEM: another failure than the seed's"
            };
            return Verdict::NotOk(format!(
                "{} of {} pins failed ({}; {what})",
                self.failed,
                self.pins,
                e.join(", ")
            ));
        }
        if self.movable_before_pin < 0 {
            return Verdict::Skip(
                "PFNs are hidden (/proc/self/pagemap needs CAP_SYS_ADMIN): cannot tell whether the pins had to migrate anything".into(),
            );
        }
        if (self.movable_before_pin as u64) < self.pins {
            return Verdict::Skip(format!(
                "only {} of {} pages sat in ZONE_MOVABLE/CMA before their pin: the pins did not test migration",
                self.movable_before_pin, self.pins
            ));
        }
        Verdict::Ok
    }
}

struct Case {
    name: &'static str,
    cross: bool,
    drain: DrainPolicy,
    /// Pages written through the loader view (page cache) first; else fresh.
    prefill: bool,
    /// Fresh noise pages written on the fault CPU after each fault-in.
    noise: u32,
}

/// `--states` adds it: fresh pages whose LRU-add batch LRU traffic flushes before the pin.
const NOISE_CASE: Case = Case {
    name: "fresh_noise31_fault_cpu0_pin_cpu1",
    cross: true,
    drain: DrainPolicy::None,
    prefill: false,
    noise: 31,
};

const CASES: [Case; 3] = [
    Case {
        name: "prefill_fault_cpu0_pin_cpu1_no_drain",
        cross: true,
        drain: DrainPolicy::None,
        prefill: true,
        noise: 0,
    },
    Case {
        name: "prefill_fault_cpu0_pin_cpu1_local_drain",
        cross: true,
        drain: DrainPolicy::MlockDrain,
        prefill: true,
        noise: 0,
    },
    Case {
        name: "prefill_fault_and_pin_same_cpu",
        cross: false,
        drain: DrainPolicy::None,
        prefill: true,
        noise: 0,
    },
];

/// Fresh, not-mlocked shmem pages written one after another (recycled by punching the file).
struct NoiseWriter {
    fd: std::fs::File,
    map: Mapping,
    next: usize,
}

impl NoiseWriter {
    const LEN: usize = 16 << 20;

    fn new() -> Result<Self, String> {
        let fd =
            sys::memfd("pinvmm-gup-noise", Self::LEN as u64).map_err(|e| format!("memfd: {e}"))?;
        let map = Mapping::shared(&fd, Self::LEN).map_err(|e| format!("mmap: {e}"))?;
        Ok(Self { fd, map, next: 0 })
    }

    fn write(&mut self, n: u32) -> Result<(), String> {
        for _ in 0..n {
            if self.next + PAGE_SIZE > Self::LEN {
                sys::punch_hole(&self.fd, 0, Self::LEN as u64)
                    .map_err(|e| format!("fallocate: {e}"))?;
                self.next = 0;
            }
            self.map
                .write_u8(self.next, 1)
                .map_err(|e| format!("noise write: {e}"))?;
            self.next += PAGE_SIZE;
        }
        Ok(())
    }
}

/// `--states`: what a case reads and tallies.
struct States {
    reader: FolioReader,
    counters: Arc<PathCounters>,
    counts: BTreeMap<String, StateCount>,
    probe: Option<DrainProbe>,
}

fn short(s: &Option<FolioState>) -> String {
    s.as_ref()
        .and_then(|s| s.short.clone())
        .unwrap_or_else(|| "?".into())
}

fn pfn_of(pagemap: &std::fs::File, addr: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 8];
    pagemap
        .read_exact_at(&mut b, addr / PAGE_SIZE as u64 * 8)
        .ok()?;
    let e = u64::from_le_bytes(b);
    let pfn = e & ((1 << 55) - 1);
    (e >> 63 == 1 && pfn != 0).then_some(pfn)
}

fn run_case(
    c: &Case,
    pages: u64,
    rounds: u32,
    cpus: (usize, usize),
    zones: &PfnZones,
    states: bool,
) -> Result<CaseResult, String> {
    let len = pages as usize * PAGE_SIZE;
    let pagemap = std::fs::File::open("/proc/self/pagemap").ok();
    let mut drainer = Drainer::new(c.drain).map_err(|e| e.to_string())?;
    let mut noise = if c.noise > 0 {
        Some(NoiseWriter::new()?)
    } else {
        None
    };
    let mut st = if states {
        let reader = FolioReader::open().map_err(|e| e.to_string())?;
        if let Some(n) = reader.note() {
            return Err(format!("--states: {n}"));
        }
        let counters = Arc::new(PathCounters::new(Instant::now()));
        drainer = drainer.with_counters(counters.clone());
        Some(States {
            reader,
            counters,
            counts: BTreeMap::new(),
            probe: None,
        })
    } else {
        None
    };
    let before = host::vmstat();
    let t = Instant::now();
    let (mut pins, mut failed, mut movable, mut moved) = (0, 0, 0u64, 0u64);
    let mut pfns_hidden = pagemap.is_none();
    let mut errnos: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..rounds {
        let fd = sys::memfd("pinvmm-gup-check", len as u64).map_err(|e| format!("memfd: {e}"))?;
        let loader = Mapping::shared(&fd, len).map_err(|e| format!("mmap: {e}"))?;
        let view = Mapping::shared(&fd, len).map_err(|e| format!("mmap: {e}"))?;
        view.mlock_onfault().map_err(|e| format!("mlock2: {e}"))?;
        view.no_huge_pages().map_err(|e| format!("madvise: {e}"))?;
        sys::pin_thread_to_cpu(cpus.0).map_err(|e| format!("affinity: {e}"))?;
        for p in (0..pages as usize).filter(|_| c.prefill) {
            loader
                .write_u8(p * PAGE_SIZE, 1)
                .map_err(|e| format!("loader write: {e}"))?;
        }
        let mut table = PinTable::new(pages);
        let mut last_failed = None;
        for p in 0..pages {
            let off = p as usize * PAGE_SIZE;
            let addr = view.addr() + off as u64;
            sys::pin_thread_to_cpu(cpus.0).map_err(|e| format!("affinity: {e}"))?;
            view.touch_read(off);
            let stamp = st.as_ref().map(|s| {
                s.counters.add(Count::MlockedFault, 1);
                (s.counters.stamp(Some(cpus.0)), s.reader.read(addr).ok())
            });
            if let Some(n) = noise.as_mut() {
                n.write(c.noise)?;
                if let Some(s) = &st {
                    s.counters.add(Count::NoisePage, u64::from(c.noise));
                }
            }
            drainer.after_fault_in(cpus.0).map_err(|e| e.to_string())?;
            let pfn_before = pagemap.as_ref().and_then(|pm| pfn_of(pm, addr));
            pfns_hidden |= pfn_before.is_none();
            if c.cross {
                sys::pin_thread_to_cpu(cpus.1).map_err(|e| format!("affinity: {e}"))?;
            }
            pins += 1;
            let before = st.as_ref().and_then(|s| s.reader.read(addr).ok());
            let t_pin = Instant::now();
            let r = table.pin(p, addr);
            let pfn_after = pagemap.as_ref().and_then(|pm| pfn_of(pm, addr));
            let in_zone = pfn_before.is_some_and(|f| zones.unpinnable(f));
            let was_moved = r.is_ok() && pfn_before.is_some() && pfn_after != pfn_before;
            let enomem = matches!(&r, Err(e) if e.errno() == Some(libc::ENOMEM));
            if pfn_before.is_some() && (in_zone || was_moved || enomem) {
                movable += 1;
            }
            moved += u64::from(was_moved);
            if let Err(e) = &r {
                failed += 1;
                let name = e
                    .errno()
                    .map_or_else(|| format!("error: {e}"), vmm::sys::errno_name);
                *errnos.entry(name).or_default() += 1;
                last_failed = Some(addr);
            }
            if let (Some(s), Some((stamp, at_fault_in))) = (st.as_mut(), stamp) {
                let after = s.reader.read(addr).ok();
                let key = format!(
                    "{} -> {} -> {}",
                    short(&at_fault_in),
                    short(&before),
                    short(&after)
                );
                let e = s.counts.entry(key).or_default();
                e.pins += 1;
                if r.is_err() {
                    e.failed += 1;
                    let pin_cpu = if c.cross { cpus.1 } else { cpus.0 };
                    let path =
                        s.counters
                            .path(Some((&stamp, "fault-in")), "pin", Some(pin_cpu), t_pin);
                    let v = explain(before.as_ref(), after.as_ref(), &path, false);
                    *e.signatures
                        .entry(v.signature.name().to_owned())
                        .or_default() += 1;
                }
            }
        }
        // The round's last failed page: its state now, then after a drain on each CPU.
        if let (Some(s), Some(addr)) = (st.as_mut(), last_failed)
            && let Ok(after_failure) = s.reader.read(addr)
        {
            let mut probe_drain = Drainer::new(DrainPolicy::None).map_err(|e| e.to_string())?;
            sys::pin_thread_to_cpu(cpus.0).map_err(|e| format!("affinity: {e}"))?;
            probe_drain.drain_local(cpus.0).map_err(|e| e.to_string())?;
            let d = s.reader.read(addr).ok();
            sys::pin_thread_to_cpu(cpus.1).map_err(|e| format!("affinity: {e}"))?;
            probe_drain.drain_local(cpus.1).map_err(|e| e.to_string())?;
            let e = s.reader.read(addr).ok();
            s.probe = Some(DrainProbe {
                after_failure,
                after_fault_cpu_drain: d,
                after_pin_cpu_drain: e,
            });
        }
    }
    let after = host::vmstat();
    let d = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let _ = sys::pin_thread_to_cpu(cpus.0);
    Ok(CaseResult {
        name: c.name,
        pins,
        failed,
        errnos,
        movable_before_pin: if pfns_hidden { -1 } else { movable as i64 },
        moved_by_pin: moved,
        pgmigrate_success: d("pgmigrate_success"),
        pgmigrate_fail: d("pgmigrate_fail"),
        seconds: t.elapsed().as_secs_f64(),
        states: st.as_ref().map(|s| s.counts.clone()).unwrap_or_default(),
        probe: st.and_then(|s| s.probe),
    })
}

/// `--states` lines of one case, as KTAP diagnostics.
fn state_lines(out: &mut String, r: &CaseResult) {
    if r.states.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# {}: folio states, after fault-in -> before the pin -> after it (L lru, A active, M mlocked, U unevictable):",
        r.name
    );
    for (k, v) in &r.states {
        let sigs: Vec<String> = v
            .signatures
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "#   {k}: {} pins, {} failed{}",
            v.pins,
            v.failed,
            if sigs.is_empty() {
                String::new()
            } else {
                format!(" [{}]", sigs.join(", "))
            }
        );
    }
    if let Some(p) = &r.probe {
        let s = |x: &Option<FolioState>| {
            x.as_ref()
                .and_then(|x| x.short.clone())
                .unwrap_or_else(|| "?".into())
        };
        let _ = writeln!(
            out,
            "#   a failed page ({}): now {}; after a drain on the fault CPU {}; after one on the pin CPU {}",
            p.after_failure.describe(),
            p.after_failure.short.as_deref().unwrap_or("?"),
            s(&p.after_fault_cpu_drain),
            s(&p.after_pin_cpu_drain)
        );
    }
}

/// kselftest's totals line.
fn totals(pass: usize, fail: usize, skip: usize) -> String {
    format!("# Totals: pass:{pass} fail:{fail} xfail:0 xpass:0 skip:{skip} error:0")
}

/// The exit code for the case counts: any failure 1, all skipped 4, else 0.
pub fn exit_for(pass: usize, fail: usize, skip: usize) -> KsftExit {
    if fail > 0 {
        KsftExit::Fail
    } else if pass == 0 && skip > 0 {
        KsftExit::Skip
    } else {
        KsftExit::Pass
    }
}

/// Runs the check; prints KTAP; returns the kselftest exit code.
pub fn main(a: &GupCheckArgs) -> KsftExit {
    let release = host::kernel_release();
    let version = host::kernel_version();
    let movable = host::movable_pages();
    let cma = host::cma_bytes();
    let cpus = sys::allowed_cpus();
    let zones = PfnZones::probe();
    let mut out = String::from("KTAP version 1\n");
    let _ = writeln!(
        out,
        "# pinvmm gup-check {}: kernel {release} (version {version}, fix by version: {:?}); stress model: write fault-in on one CPU, pin on another",
        vmm::provenance::BUILD.describe(),
        host::gup_fix_status(&version)
    );
    let _ = writeln!(
        out,
        "# ZONE_MOVABLE {} MiB, CMA {} MiB ({} CMA areas located), {} CPUs, {} pages x {} rounds per case",
        movable * 4 / 1024,
        cma >> 20,
        zones.cma.len(),
        cpus.len(),
        a.pages,
        a.rounds
    );
    if !sys::has_cap_sys_admin() {
        let _ = writeln!(
            out,
            "# note: page frame numbers are hidden from this process (CAP_SYS_ADMIN): where the pages sit before the pin is not measured (-1)"
        );
    }
    let cases: Vec<&Case> = CASES
        .iter()
        .chain(a.states.then_some(&NOISE_CASE))
        .collect();
    let _ = writeln!(out, "1..{}", cases.len());
    let skip_all = if movable == 0 && cma == 0 && !a.force {
        Some("no ZONE_MOVABLE or CMA memory: long-term pins never migrate here (boot with movablecore= or cma=)".to_owned())
    } else if cpus.len() < 2 {
        Some("needs two CPUs (fault-in on one, pin on another)".to_owned())
    } else if a.pages == 0 || a.rounds == 0 {
        Some("--pages and --rounds must be at least 1".to_owned())
    } else {
        None
    };
    // Each case mlocks and long-term-pins its pages: both count against RLIMIT_MEMLOCK. Above
    // it the pins would fail with ENOMEM like the failed pins this checks for: skip, naming it.
    let skip_all = skip_all.or_else(|| {
        let limits = vmm::HostLimits::probe();
        vmm::config::check_memlock(&limits, a.pages * PAGE_SIZE as u64, 1)
            .err()
            .map(|e| {
                eprintln!("pinvmm: gup-check: {e} (or lower --pages)");
                format!("{e} (or lower --pages)")
            })
    });
    let mut results = Vec::new();
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for (i, c) in cases.iter().enumerate() {
        let n = i + 1;
        if let Some(why) = &skip_all {
            let _ = writeln!(out, "ok {n} {} # SKIP {why}", c.name);
            skip += 1;
            continue;
        }
        match run_case(c, a.pages, a.rounds, (cpus[0], cpus[1]), &zones, a.states) {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "# {}: {} of {} pins failed{}; {} pages in ZONE_MOVABLE/CMA before the pin ({} moved by it); pgmigrate_success {:+}, pgmigrate_fail {:+}; {:.1} s",
                    c.name,
                    r.failed,
                    r.pins,
                    if r.errnos.is_empty() {
                        String::new()
                    } else {
                        format!(" ({:?})", r.errnos)
                    },
                    r.movable_before_pin,
                    r.moved_by_pin,
                    r.pgmigrate_success,
                    r.pgmigrate_fail,
                    r.seconds
                );
                state_lines(&mut out, &r);
                match r.verdict() {
                    Verdict::Ok => {
                        pass += 1;
                        let _ = writeln!(out, "ok {n} {}", c.name);
                    }
                    Verdict::NotOk(why) => {
                        fail += 1;
                        let _ = writeln!(out, "# {}: {why}", c.name);
                        let _ = writeln!(out, "not ok {n} {}", c.name);
                    }
                    Verdict::Skip(why) => {
                        skip += 1;
                        let _ = writeln!(out, "ok {n} {} # SKIP {why}", c.name);
                    }
                }
                results.push(r);
            }
            Err(e) => {
                fail += 1;
                let _ = writeln!(out, "# {}: could not run: {e}", c.name);
                let _ = writeln!(out, "not ok {n} {}", c.name);
            }
        }
    }
    if let Some(f) = results
        .first()
        .filter(|r| r.failed > 0 && r.errnos.keys().all(|k| k == "ENOMEM"))
    {
        let _ = writeln!(
            out,
            "# verdict: long-term pins of mlocked shmem FAIL here ({} of {}, ENOMEM): this kernel lacks the upstream GUP fix (mm: better GUP pin lru_add_drain_all())",
            f.failed, f.pins
        );
    }
    let _ = writeln!(out, "{}", totals(pass, fail, skip));
    print!("{out}");
    if let Some(p) = &a.json {
        let v = serde_json::json!({ "build": vmm::provenance::BUILD, "kernel_release": release, "kernel_version": version, "skipped": skip_all, "cases": results, "totals": {"pass": pass, "fail": fail, "skip": skip} });
        if let Err(e) = std::fs::write(
            p,
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
        ) {
            eprintln!("pinvmm: cannot write {}: {e}", p.display());
            return KsftExit::Fail;
        }
    }
    exit_for(pass, fail, skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(pins: u64, failed: u64, errno: &str, movable: i64) -> CaseResult {
        CaseResult {
            name: "t",
            pins,
            failed,
            errnos: if failed > 0 {
                [(errno.to_owned(), failed)].into()
            } else {
                BTreeMap::new()
            },
            movable_before_pin: movable,
            moved_by_pin: 0,
            pgmigrate_success: 0,
            pgmigrate_fail: 0,
            seconds: 0.0,
            states: BTreeMap::new(),
            probe: None,
        }
    }

    #[test]
    fn ok_needs_every_page_in_movable_memory_and_no_failure() {
        assert_eq!(case(10, 0, "", 10).verdict(), Verdict::Ok);
        assert!(matches!(case(10, 0, "", 9).verdict(), Verdict::Skip(w) if w.contains("9 of 10")));
        assert!(matches!(case(10, 0, "", -1).verdict(), Verdict::Skip(w) if w.contains("hidden")));
        assert!(
            matches!(case(10, 3, "ENOMEM", 10).verdict(), Verdict::NotOk(w) if w.contains("seed's failure"))
        );
        assert!(
            matches!(case(10, 3, "EFAULT", 10).verdict(), Verdict::NotOk(w) if w.contains("another failure"))
        );
    }

    #[test]
    fn kselftest_exit_codes_and_totals() {
        assert_eq!(exit_for(0, 0, 3), KsftExit::Skip);
        assert_eq!(exit_for(1, 0, 2), KsftExit::Pass);
        assert_eq!(exit_for(2, 1, 0), KsftExit::Fail);
        assert_eq!(
            totals(2, 1, 0),
            "# Totals: pass:2 fail:1 xfail:0 xpass:0 skip:0 error:0"
        );
    }
}
