// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm gup-check`: a kselftest-style check (KTAP output, no KVM needed) of whether this
//! kernel's long-term pins of mlocked shmem fail under the seed's conditions: pages already in
//! the page cache (prefilled through a not-mlocked view), faulted into an mlocked view on one
//! CPU, then pinned (FOLL_LONGTERM, io_uring) on another. Kernels without Hugh Dickins' 2025
//! GUP fix fail most such pins with ENOMEM when the pages sit in ZONE_MOVABLE or CMA.
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

use vmm::exit_code::ExitCode;
use vmm::host;
use vmm::host::folio::{FolioReader, FolioState};
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
    /// Run the cases even with no ZONE_MOVABLE/CMA (then no pin can fail: this tests the check).
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

/// One case's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: &'static str,
    pub pins: u64,
    pub failed: u64,
    pub errno: Option<String>,
    /// Pages whose PFN was in ZONE_MOVABLE just before the pin (-1: unknown).
    pub movable_before_pin: i64,
    pub pgmigrate_success: i64,
    pub pgmigrate_fail: i64,
    pub seconds: f64,
    /// `--states`: pages by state path, and the drain probe.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub states: BTreeMap<String, StateCount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<DrainProbe>,
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

/// ZONE_MOVABLE PFN ranges from /proc/zoneinfo.
fn movable_ranges() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/zoneinfo").unwrap_or_default();
    let mut out = Vec::new();
    let (mut movable, mut spanned) = (false, 0u64);
    for l in text.lines() {
        if l.starts_with("Node ") {
            movable = l.split_whitespace().last() == Some("Movable");
            spanned = 0;
        } else if let Some(v) = l.trim().strip_prefix("spanned") {
            spanned = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.trim().strip_prefix("start_pfn:") {
            let start: u64 = v.trim().parse().unwrap_or(0);
            if movable && spanned > 0 {
                out.push((start, start + spanned));
            }
        }
    }
    out
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
    ranges: &[(u64, u64)],
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
    let (mut pins, mut failed, mut movable, mut errno) = (0, 0, 0i64, None);
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
            if let Some(pfn) = pagemap
                .as_ref()
                .and_then(|pm| pfn_of(pm, view.addr() + off as u64))
            {
                movable += i64::from(ranges.iter().any(|&(s, e)| (s..e).contains(&pfn)));
            }
            if c.cross {
                sys::pin_thread_to_cpu(cpus.1).map_err(|e| format!("affinity: {e}"))?;
            }
            pins += 1;
            let before = st.as_ref().and_then(|s| s.reader.read(addr).ok());
            let t_pin = Instant::now();
            let r = table.pin(p, addr);
            if let Err(e) = &r {
                failed += 1;
                errno = e.errno().map(vmm::sys::errno_name);
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
        errno,
        movable_before_pin: if pagemap.is_some() { movable } else { -1 },
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

/// Runs the check; prints KTAP; returns the exit code (0 all ok or skipped, 1 a case failed).
pub fn main(a: &GupCheckArgs) -> ExitCode {
    let release = host::kernel_release();
    let version = host::kernel_version();
    let movable = host::movable_pages();
    let cma = host::cma_total_bytes().unwrap_or(0);
    let cpus = sys::allowed_cpus();
    let mut out = String::from("KTAP version 1\n");
    let _ = writeln!(
        out,
        "# pinvmm gup-check: kernel {release} (version {version}, fix by version: {:?})",
        host::gup_fix_status(&version)
    );
    let _ = writeln!(
        out,
        "# ZONE_MOVABLE {} MiB, CMA {} MiB, {} CPUs, {} pages x {} rounds per case",
        movable * 4 / 1024,
        cma >> 20,
        cpus.len(),
        a.pages,
        a.rounds
    );
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
    let ranges = movable_ranges();
    let mut results = Vec::new();
    let mut any_fail = false;
    for (i, c) in cases.iter().enumerate() {
        let n = i + 1;
        if let Some(why) = &skip_all {
            let _ = writeln!(out, "ok {n} {} # SKIP {why}", c.name);
            continue;
        }
        match run_case(c, a.pages, a.rounds, (cpus[0], cpus[1]), &ranges, a.states) {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "# {}: {} of {} pins failed{}; {} pages in ZONE_MOVABLE before the pin; pgmigrate_success {:+}, pgmigrate_fail {:+}; {:.1} s",
                    c.name,
                    r.failed,
                    r.pins,
                    r.errno
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                    r.movable_before_pin,
                    r.pgmigrate_success,
                    r.pgmigrate_fail,
                    r.seconds
                );
                state_lines(&mut out, &r);
                let ok = r.failed == 0;
                any_fail |= !ok;
                let _ = writeln!(out, "{} {n} {}", if ok { "ok" } else { "not ok" }, c.name);
                results.push(r);
            }
            Err(e) => {
                any_fail = true;
                let _ = writeln!(out, "# {}: could not run: {e}", c.name);
                let _ = writeln!(out, "not ok {n} {}", c.name);
            }
        }
    }
    if let Some(f) = results.first().filter(|r| r.failed > 0) {
        let _ = writeln!(
            out,
            "# verdict: long-term pins of mlocked shmem FAIL here ({} of {}): this kernel lacks the upstream GUP fix (mm: better GUP pin lru_add_drain_all())",
            f.failed, f.pins
        );
    }
    print!("{out}");
    if let Some(p) = &a.json {
        let v = serde_json::json!({ "kernel_release": release, "kernel_version": version, "skipped": skip_all, "cases": results });
        if let Err(e) = std::fs::write(
            p,
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
        ) {
            eprintln!("pinvmm: cannot write {}: {e}", p.display());
            return ExitCode::BadInput;
        }
    }
    if any_fail {
        ExitCode::VmmError
    } else {
        ExitCode::Ok
    }
}
