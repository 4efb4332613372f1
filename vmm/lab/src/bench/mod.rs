// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm bench`: what the pinning stage-2 path costs, side by side with its baselines, in one
//! run (results and how to read them in docs/PERFORMANCE.md).
//!
//! Sections:
//! - **touch**: first-touch cost of guest memory (memtouch's first write pass, µs per 4 KiB
//!   page and GiB/s) for KVM's own fault path, a bare userfaultfd round trip, and the pinning
//!   path under each drain policy (and with fault-ahead, when asked), as ratios;
//! - **drain**: each policy's cost per pin, in the VM (row minus `pin:none`) and alone
//!   (micro-benchmarks of the local and all-CPU drains and of the pin itself);
//! - **launch**: a bare `hello` VM (16 MiB): launch to first guest exit and to guest exit,
//!   VMs/s back to back, in this process and one process per VM;
//! - **rss**: the VMM's resident memory besides guest memory (a `pinvmm run` child);
//! - **qemu**: `qemu-system-x86_64 -accel kvm` on the same bare work (a BIOS image that
//!   touches every page once, guest/src/qemu_rom.rs), next to pinvmm processes: launch to the
//!   first guest output and to exit, and first-touch throughput (`qemu.rs`);
//! - **jobs**: VMs per minute of `pinvmm campaign --jobs N` against `--jobs 1` (`jobs.rs`).
//!
//! The touch rows come in 4 KiB (shmem) and 2 MiB granules (hugetlb, shmem-thp backings), and
//! (`--load N`) once more with N busy threads beside them: loaded over quiet per path.
//!
//! Repetitions are interleaved (round 1 runs every row, then round 2, ...) so that drift of a
//! shared machine hits every row alike; tables give medians.

pub mod args;
mod common;
pub mod drain;
pub mod jobs;
pub mod launch;
pub mod qemu;
pub mod render;
pub mod report;
pub mod touch;

use std::time::Instant;

use crate::stamp::{loadavg, utc_now};
use vmm::exit_code::ExitCode;
use vmm::host::HostFacts;
use vmm::host::hugepages::HUGE_PAGE_SIZE;
use vmm::sys::PAGE_SIZE;
use vmm::{Backing, HostLimits};

pub use args::{BenchArgs, Section};
use drain::{drain_in_vm, drain_micro};
use launch::{launch_section, rss_section};
use render::touch_chart;
use report::goals;
pub use report::{BenchReport, Goal};
use touch::{prepare_backing, touch_section};

/// Runs the bench; the exit code says whether it could measure (not whether goals were met).
pub fn run(a: &BenchArgs) -> Result<BenchReport, (ExitCode, String)> {
    let t0 = Instant::now();
    let host = HostLimits::probe();
    let verbose = a.verbose;
    let log = move |m: &str| {
        if verbose {
            eprintln!("pinvmm bench: {m}");
        }
    };
    let want = |s: Section| a.only.is_empty() || a.only.contains(&s);
    let place = host.default_placement();
    let bad = |e: String| (ExitCode::VmmError, e);
    let loadavg_before = loadavg();
    let mut r = BenchReport {
        pinvmm_version: env!("CARGO_PKG_VERSION"),
        build: vmm::provenance::BUILD,
        date_utc: utc_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        host: HostFacts::probe(),
        loadavg_before,
        loadavg_after: String::new(),
        mem_bytes: a.mem,
        reps: a.reps,
        load: if want(Section::Touch) { a.load() } else { 0 },
        fault_cpu: place.fault_cpu,
        pin_cpu: place.pin_cpu,
        fault_ahead: a.fault_ahead.clone(),
        touch: Vec::new(),
        drain_in_vm: Vec::new(),
        drain_micro: Vec::new(),
        launch: Vec::new(),
        rss: Vec::new(),
        qemu: None,
        jobs: None,
        goals: Vec::new(),
        host_changes: Vec::new(),
        skipped: Vec::new(),
        baseline: Vec::new(),
        baseline_file: None,
        wall_s: 0.0,
    };
    if a.backings.contains(&Backing::Anon) {
        return Err((
            ExitCode::BadInput,
            "--backings: anon has no first-touch rows (it has a single mapping: no uffd row); use shmem, hugetlb, shmem-thp".into(),
        ));
    }
    if want(Section::Touch) || want(Section::Qemu) {
        let huge =
            want(Section::Touch) && a.backings.iter().any(|b| b.granule() > PAGE_SIZE as u64);
        check_mem(a.mem, huge, want(Section::Qemu)).map_err(|e| (ExitCode::BadInput, e))?;
    }
    // QEMU first: a missing one ends a `--only qemu` run before anything else happens.
    let qemu_missing = if want(Section::Qemu) {
        qemu_unusable(a).map_err(|e| (ExitCode::HostUnsupported, e))?
    } else {
        None
    };
    // The hugetlb pool, raised (as root) for the whole run: touch rows and QEMU's hugetlb RAM.
    let hugetlb_wanted = (want(Section::Touch) && a.backings.contains(&Backing::Hugetlb))
        || (want(Section::Qemu) && qemu_missing.is_none());
    let mut hugetlb_ok = false;
    let _pool = if hugetlb_wanted {
        match prepare_backing(Backing::Hugetlb, a.mem, &host, &mut r.host_changes) {
            Ok(g) => {
                hugetlb_ok = true;
                g
            }
            Err(why) => {
                let msg = format!("hugetlb rows (touch and qemu) skipped: {why}");
                eprintln!("pinvmm bench: {msg}");
                r.skipped.push(msg);
                None
            }
        }
    } else {
        None
    };
    if want(Section::Touch) {
        let backings: Vec<Backing> = a
            .backings
            .iter()
            .copied()
            .filter(|&b| b != Backing::Hugetlb || hugetlb_ok)
            .collect();
        let a2 = BenchArgs {
            backings,
            ..a.clone()
        };
        r.touch =
            touch_section(&a2, &host, &log, &mut r.skipped, &mut r.host_changes).map_err(bad)?;
        r.drain_in_vm = drain_in_vm(&r.touch);
    }
    if want(Section::Drain) {
        r.drain_micro = drain_micro(&host).map_err(bad)?;
        log("drain: done");
    }
    if want(Section::Launch) {
        r.launch = launch_section(a, &host, &log).map_err(bad)?;
    }
    if want(Section::Rss) {
        r.rss = rss_section(a).map_err(bad)?;
        log("rss: done");
    }
    if want(Section::Qemu) {
        r.qemu = Some(match qemu_missing {
            Some(why) => qemu::not_measured(&a.qemu, a.mem, why),
            None => qemu_section(a, hugetlb_ok, &log)?,
        });
    }
    if want(Section::Jobs) {
        r.jobs = Some(jobs::jobs_section(a, &log).map_err(bad)?);
    }
    if let Some(p) = &a.baseline {
        r.baseline = load_baseline(p).map_err(|e| (ExitCode::BadInput, e))?;
        r.baseline_file = Some(p.display().to_string());
    }
    r.goals = goals(&r);
    r.loadavg_after = loadavg();
    r.wall_s = t0.elapsed().as_secs_f64();
    Ok(r)
}

/// Guest sizes the touch rows and the QEMU image can take.
pub(super) fn check_mem(mem: u64, huge: bool, qemu: bool) -> Result<(), String> {
    if huge && !mem.is_multiple_of(HUGE_PAGE_SIZE) {
        return Err(format!(
            "--mem {mem}: the 2 MiB rows need a multiple of 2 MiB (or --backings shmem)"
        ));
    }
    if qemu && mem > guest::qemu_rom::MAX_RAM {
        return Err(format!(
            "--mem {mem}: at most 1 GiB with the qemu section (its image maps one page directory; or --only touch,...)"
        ));
    }
    Ok(())
}

/// Why the QEMU section cannot run here (None: it can), said loudly. Err when it was the only
/// section asked for: then the run fails with exit 3.
pub(super) fn qemu_unusable(a: &BenchArgs) -> Result<Option<String>, String> {
    let why = if !cfg!(target_arch = "x86_64") {
        "the QEMU comparison boots an x86_64 image: x86_64 hosts only".to_owned()
    } else if let Err(why) = qemu::qemu_version(&a.qemu) {
        why
    } else {
        return Ok(None);
    };
    eprintln!("pinvmm bench: QEMU NOT MEASURED: {why}");
    if a.only == [Section::Qemu] {
        Err(why)
    } else {
        Ok(Some(why))
    }
}

/// The QEMU comparison (QEMU is there: see [`qemu_unusable`]).
pub(super) fn qemu_section(
    a: &BenchArgs,
    hugetlb: bool,
    log: &dyn Fn(&str),
) -> Result<qemu::QemuSection, (ExitCode, String)> {
    let exe = std::env::current_exe().map_err(|e| (ExitCode::VmmError, e.to_string()))?;
    let dir = std::env::temp_dir().join(format!("pinvmm-bench-{}", std::process::id()));
    let args = qemu::QemuArgs {
        qemu: &a.qemu,
        pinvmm: &exe,
        mem: a.mem,
        reps: a.reps,
        hugetlb,
        dir: &dir,
    };
    qemu::run(&args, log).map_err(|e| (ExitCode::VmmError, e))
}

/// First-touch µs/page by row name from a previous `--json` output.
pub(super) fn load_baseline(p: &std::path::Path) -> Result<Vec<(String, f64)>, String> {
    let text =
        std::fs::read_to_string(p).map_err(|e| format!("--baseline {}: {e}", p.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("--baseline {}: not JSON: {e}", p.display()))?;
    let rows = v["touch"]
        .as_array()
        .ok_or_else(|| format!("--baseline {}: no `touch` rows", p.display()))?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r["name"].as_str()?.to_owned(), r["us_per_page"].as_f64()?)))
        .collect())
}

/// `pinvmm bench`: runs, prints the tables, writes the JSON.
pub fn main(a: &BenchArgs) -> ExitCode {
    let r = match run(a) {
        Ok(r) => r,
        Err((code, e)) => {
            eprintln!("pinvmm bench: {e}");
            return code;
        }
    };
    // With the JSON on stdout, the tables go to stderr.
    if a.json.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        eprint!("{}", r.human());
    } else {
        print!("{}", r.human());
    }
    if let Some(p) = &a.svg
        && let Err(e) = touch_chart(p, &r)
    {
        eprintln!("pinvmm bench: {e}");
        return ExitCode::VmmError;
    }
    if let Some(p) = &a.json {
        let text = match serde_json::to_string_pretty(&r) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("pinvmm bench: cannot encode the report: {e}");
                return ExitCode::VmmError;
            }
        };
        if p.as_os_str() == "-" {
            println!("{text}");
        } else if let Err(e) = std::fs::write(p, text + "\n") {
            eprintln!("pinvmm bench: cannot write {}: {e}", p.display());
            return ExitCode::BadInput;
        }
    }
    ExitCode::Ok
}
