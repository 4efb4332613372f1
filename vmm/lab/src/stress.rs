// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm stress`: many VMs in parallel in this one process for a bounded time, every drain
//! policy and backing in turn, then checks nothing leaked: VmPin, VmLck, open fds and RSS of
//! the process, and the host's MemAvailable, Shmem and Mlocked back to where they were.
//!
//! In-process on purpose: the VMs share the process-wide state a leak would grow (pins,
//! locked pages, descriptors, allocator) and its signal handling, so what one VM leaves
//! behind is what the next ones and the final check see.
//!
//! `--payloads` and `--vcpus` make it the multi-vCPU correctness matrix: every payload under
//! every policy at each vCPU count, each run judged against what that payload must do
//! ([`expect`]: memtouch, hello, oob, garbage and flood complete, crash reports its exception
//! on every vCPU, spin times out). `--runs N` runs exactly N VMs per cell, however long that
//! takes (a loaded host gets the same coverage, only later), instead of starting VMs for
//! `--duration`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest::Payload;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::args::named;
use vmm::config::parse_size;
use vmm::exit_code::ExitCode;
use vmm::host;
use vmm::report::{Outcome, Report};
use vmm::stage2::drain::DrainPolicy;
use vmm::{Backing, HostLimits, VmConfig};

/// `pinvmm stress` options.
#[derive(Debug, Clone, clap::Args)]
pub struct StressArgs {
    /// How long to keep starting VMs (e.g. 60s, 5m, 90); running VMs then finish.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// VMs running at once (default: twice the usable CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: Option<u16>,
    /// Guest memory of each VM (memtouch writes and verifies every page of it).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub mem: u64,
    /// Drain policies to cycle through.
    #[arg(
        long,
        value_parser = named::<DrainPolicy>(),
        value_delimiter = ',',
        default_value = "none,lru-add-drain,mlock-drain,retry"
    )]
    pub policies: Vec<DrainPolicy>,
    /// Backings to cycle through.
    #[arg(long, value_parser = named::<Backing>(), value_delimiter = ',', default_value = "shmem,anon")]
    pub backings: Vec<Backing>,
    /// Payloads to cycle through (`all`: every one), each judged by what it must do: memtouch,
    /// hello, oob, garbage and flood complete (hello and flood print exactly once, on vCPU 0),
    /// crash reports its exception on every vCPU, spin times out (after 0.5 s).
    #[arg(long, value_parser = parse_payload, value_delimiter = ',', default_value = "memtouch")]
    pub payloads: Vec<Vec<Payload>>,
    /// vCPU counts to cycle through (e.g. 1,2,4).
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u8).range(1..=64))]
    pub vcpus: Vec<u8>,
    /// Run exactly N VMs of every cell (policy x backing x payload x vCPUs), however long it
    /// takes, instead of starting VMs for --duration.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub runs: Option<u64>,
    /// Seconds one VM may take before it counts as a failure (timeout).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub vm_timeout: u64,
    /// Write the summary as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// No progress bar and no table (errors and, with --json -, the JSON only).
    #[arg(long, short)]
    pub quiet: bool,
}

/// A payload name, or `all`.
fn parse_payload(s: &str) -> Result<Vec<Payload>, String> {
    if s == "all" {
        return Ok(Payload::ALL.to_vec());
    }
    Payload::from_name(s).map(|p| vec![p]).ok_or_else(|| {
        let names: Vec<_> = Payload::ALL.iter().map(|p| p.name()).collect();
        format!(
            "unknown payload '{s}' (choose from: all, {})",
            names.join(", ")
        )
    })
}

/// How long a `spin` VM runs before its (expected) timeout.
const SPIN_TIMEOUT: Duration = Duration::from_millis(500);

/// What a run of `cell` must have done; `Err` says what it did instead. A VM terminated by a
/// failed pin is counted apart, not judged here.
pub fn expect(cell: &Cell, r: &Report) -> Result<(), String> {
    let all_exceptions =
        r.vcpus.len() == usize::from(cell.vcpus) && r.vcpus.iter().all(|v| v.exception.is_some());
    let ok = match cell.payload {
        Payload::Spin => r.outcome == Outcome::Timeout,
        Payload::Crash => r.outcome == Outcome::GuestFailed && all_exceptions,
        // The judge checks each vCPU's status and checksum, and hello's one line.
        Payload::Flood => r.outcome == Outcome::Completed && r.console_bytes == guest::FLOOD_BYTES,
        Payload::Memtouch | Payload::Hello | Payload::Oob | Payload::Garbage => {
            r.outcome == Outcome::Completed
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} on {} vCPUs: {:?}: {}",
            cell.payload.name(),
            cell.vcpus,
            r.outcome,
            r.summary
        ))
    }
}

/// Parses `60s`, `5m`, `1h`, `90` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1.0),
        Some((i, 'm')) => (&t[..i], 60.0),
        Some((i, 'h')) => (&t[..i], 3600.0),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .ok_or_else(|| format!("'{s}' is not a duration (examples: 60s, 5m, 90)"))?;
    let secs = v * mult;
    if secs > 7.0 * 86_400.0 {
        return Err(format!("'{s}' is longer than a week"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// One cell of the run: what every VM of it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub policy: DrainPolicy,
    pub backing: Backing,
    pub payload: Payload,
    pub vcpus: u8,
}

/// One policy x backing (x payload x vCPUs) cell.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CellResult {
    pub policy: String,
    pub backing: String,
    pub payload: String,
    pub vcpus: u8,
    pub vms: u64,
    pub completed: u64,
    /// Ended by a failed long-term pin: the subject of pinvmm, not a stress failure (it happens
    /// naturally under policy none on kernels without the GUP fix, with movable memory).
    pub terminated: u64,
    pub failed: u64,
    /// Mean guest time per VM, seconds.
    pub mean_guest_s: f64,
}

/// A VM that did not do what its payload must (nor terminate by a failed pin).
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub policy: String,
    pub backing: String,
    pub payload: String,
    pub vcpus: u8,
    pub outcome: String,
    pub summary: String,
}

/// A value before and after the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BeforeAfter {
    pub before: u64,
    pub after: u64,
}

impl BeforeAfter {
    fn grew_by(&self) -> i64 {
        self.after as i64 - self.before as i64
    }
}

/// MemAvailable, Shmem and Mlocked after the run, less other processes' changes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OursAfter {
    pub mem_available: u64,
    pub shmem: u64,
    pub mlocked: u64,
}

/// What `pinvmm stress` found.
#[derive(Debug, Clone, Serialize)]
pub struct StressSummary {
    pub pinvmm_version: &'static str,
    /// The binary's git commit and whether its tree was dirty.
    pub build: vmm::provenance::Build,
    pub date_utc: String,
    pub kernel_release: String,
    pub cpu: String,
    pub online_cpus: usize,
    pub kvm_backend: String,
    pub duration_s: f64,
    /// `--runs`: VMs per cell (then `duration_s` is not used).
    pub runs_per_cell: Option<u64>,
    pub wall_s: f64,
    pub parallel: u16,
    pub mem_bytes: u64,
    pub vms: u64,
    pub completed: u64,
    pub terminated: u64,
    pub failed: u64,
    /// Most VMs seen running at once.
    pub max_running: u64,
    pub cells: Vec<CellResult>,
    /// The first failures (at most 20).
    pub failures: Vec<Failure>,
    /// This process, KiB (fds: count).
    pub vm_pin_kb: BeforeAfter,
    pub vm_lck_kb: BeforeAfter,
    pub open_fds: BeforeAfter,
    pub rss_kb: BeforeAfter,
    /// The host (/proc/meminfo), KiB; `mem_available_min_kb` while the VMs ran.
    pub mem_available_kb: BeforeAfter,
    pub mem_available_min_kb: u64,
    pub shmem_kb: BeforeAfter,
    pub mlocked_kb: BeforeAfter,
    /// Every other process together (/proc/PID/status), KiB: RssAnon, RssShmem, VmLck.
    pub others_rss_anon_kb: BeforeAfter,
    pub others_rss_shmem_kb: BeforeAfter,
    pub others_vm_lck_kb: BeforeAfter,
    /// The host's counters after the run, corrected for what other processes took or gave
    /// back meanwhile: what the leak check compares with the `before` values.
    pub ours_after_kb: OursAfter,
    /// More of /proc/meminfo before and after (KiB), to explain a MemAvailable change:
    /// MemFree, Cached, AnonPages, SUnreclaim (kernel memory: a VM's KVM and io_uring
    /// bookkeeping lives there while it runs).
    pub meminfo_kb: BTreeMap<&'static str, BeforeAfter>,
    /// What did not come back, one line each; empty when nothing leaked.
    pub leaks: Vec<String>,
    /// Interrupted by Ctrl-C / SIGTERM.
    pub interrupted: bool,
    pub ok: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Shared {
    cells: Vec<Cell>,
    /// `--runs`: stop starting VMs after this many.
    total: Option<u64>,
    next: AtomicU64,
    running: AtomicU64,
    max_running: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    results: Mutex<Results>,
}

#[derive(Default)]
struct Results {
    cells: BTreeMap<usize, (CellResult, f64)>,
    failures: Vec<Failure>,
}

/// /proc/meminfo lines recorded for the reader (not judged).
const MEMINFO_DETAIL: [&str; 4] = ["MemFree", "Cached", "AnonPages", "SUnreclaim"];

/// Process counters a leak would grow, in the order of [`host::ProcessCounters::named`].
fn process_counters() -> [u64; 4] {
    host::ProcessCounters::now().named().map(|(_, v)| v)
}

/// MemAvailable, Shmem, Mlocked (KiB), then what every other process holds of the same
/// kinds: RssAnon, RssShmem, VmLck.
fn host_counters() -> [u64; 6] {
    let [avail, shmem, mlocked] =
        ["MemAvailable", "Shmem", "Mlocked"].map(|k| host::meminfo_kb(k).unwrap_or(0));
    let [anon, oshmem, lck] = host::other_processes_kb(["RssAnon", "RssShmem", "VmLck"]);
    [avail, shmem, mlocked, anon, oshmem, lck]
}

/// The host's MemAvailable, Shmem and Mlocked at `after`, less what other processes took (or
/// plus what they gave back) since `before`: on a shared host, a compiler starting elsewhere
/// is not our leak.
fn ours(before: [u64; 6], after: [u64; 6]) -> [u64; 3] {
    let d = |i: usize| after[i] as i64 - before[i] as i64;
    let fix = |v: u64, by: i64| (v as i64 + by).max(0) as u64;
    [
        fix(after[0], d(3) + d(4)),
        fix(after[1], -d(4)),
        fix(after[2], -d(5)),
    ]
}

/// Runs the stress and writes its summary; the exit code is 0 when every VM completed (or
/// was terminated by a failed pin) and nothing leaked, 1 otherwise, 7 if interrupted.
pub fn main(a: &StressArgs) -> ExitCode {
    let host = HostLimits::probe();
    let parallel = a
        .parallel
        .unwrap_or((2 * host.allowed_cpus.len()).clamp(1, 256) as u16);
    // Validate one VM of each cell before starting anything.
    let payloads: Vec<Payload> = a.payloads.iter().flatten().copied().collect();
    let mut cells = Vec::new();
    for &payload in &payloads {
        for &vcpus in &a.vcpus {
            for &policy in &a.policies {
                for &backing in &a.backings {
                    cells.push(Cell {
                        policy,
                        backing,
                        payload,
                        vcpus,
                    });
                }
            }
        }
    }
    if cells.is_empty() {
        eprintln!(
            "pinvmm: bad input: --policies, --backings, --payloads and --vcpus must not be empty"
        );
        return ExitCode::BadInput;
    }
    let config = |cell: Cell| {
        let mut c = VmConfig::new(cell.payload, a.mem, host.default_placement());
        (c.policy, c.backing, c.vcpus) = (cell.policy, cell.backing, cell.vcpus);
        c.timeout = if cell.payload == Payload::Spin {
            SPIN_TIMEOUT
        } else {
            Duration::from_secs(a.vm_timeout.max(1))
        };
        c
    };
    for &cell in &cells {
        if let Err(e) = config(cell).validate(&host) {
            eprintln!("pinvmm: bad input: {e}");
            return ExitCode::BadInput;
        }
    }
    // Every running VM's mlock and pins count against RLIMIT_MEMLOCK (this process's, and the
    // user's): refuse a run that cannot fit rather than fail its VMs one by one.
    if let Err(e) = vmm::config::check_memlock(&host, a.mem, u64::from(parallel)) {
        eprintln!("pinvmm: bad input: {e} (or lower --parallel)");
        return ExitCode::BadInput;
    }
    let need = a.mem * u64::from(parallel);
    if need > host.ram / 2 {
        eprintln!(
            "pinvmm: bad input: {parallel} VMs of {} MiB need {} MiB, more than half of this host's RAM ({} MiB): lower --parallel or --mem",
            a.mem >> 20,
            need >> 20,
            host.ram >> 20
        );
        return ExitCode::BadInput;
    }

    INTERRUPTED.store(false, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let _ = vmm_sys_util::signal::register_signal_handler(sig, on_interrupt);
    }
    // Warm-up VM: one-time allocations (signal handlers, thread-locals) are not leaks.
    let mut warm = config(Cell {
        payload: Payload::Memtouch,
        vcpus: 1,
        ..cells[0]
    });
    warm.mem_size = vmm::arch::MIN_MEM.max(4 << 20);
    if let Err(e) = vmm::build(&warm).map(|vm| vm.run()) {
        eprintln!("pinvmm: the warm-up VM failed: {e}");
        return ExitCode::VmmError;
    }
    let proc_before = process_counters();
    let host_before = host_counters();
    let detail_before = MEMINFO_DETAIL.map(|k| host::meminfo_kb(k).unwrap_or(0));

    let shared = Arc::new(Shared {
        cells: cells.clone(),
        total: a.runs.map(|n| n * cells.len() as u64),
        next: AtomicU64::new(0),
        running: AtomicU64::new(0),
        max_running: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        results: Mutex::new(Results::default()),
    });
    let t0 = Instant::now();
    // With --runs the count ends the run, not the clock.
    let deadline = match a.runs {
        Some(_) => t0 + Duration::from_secs(86_400 * 365),
        None => t0 + a.duration,
    };
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (s, cfgs) = (
                shared.clone(),
                cells.iter().map(|&c| config(c)).collect::<Vec<_>>(),
            );
            std::thread::spawn(move || worker(&s, &cfgs, deadline))
        })
        .collect();

    let bar = match (a.quiet, shared.total) {
        (true, _) => ProgressBar::hidden(),
        (false, Some(n)) => ProgressBar::new(n),
        (false, None) => ProgressBar::new(a.duration.as_secs().max(1)),
    };
    let template = match shared.total {
        Some(_) => "{bar:30} {pos}/{len} VMs {elapsed} | {msg}",
        None => "{bar:30} {elapsed}/{len}s | {msg}",
    };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    let mut avail_min = host_before[0];
    let meminfo_only = || host::meminfo_kb("MemAvailable").unwrap_or(0);
    while workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(250));
        let avail = meminfo_only();
        avail_min = avail_min.min(avail);
        match shared.total {
            Some(_) => bar.set_position(shared.done.load(Ordering::Relaxed)),
            None => bar.set_position(t0.elapsed().as_secs().min(a.duration.as_secs())),
        }
        bar.set_message(format!(
            "VMs done {} failed {} running {} | MemAvailable {:.1} GiB{}",
            shared.done.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
            shared.running.load(Ordering::Relaxed),
            avail as f64 / (1 << 20) as f64,
            if Instant::now() > deadline {
                " | finishing the running VMs"
            } else {
                ""
            }
        ));
    }
    for w in workers {
        let _ = w.join();
    }
    bar.finish_and_clear();
    let wall = t0.elapsed();

    let proc_after = process_counters();
    let host_after = settle(host_before, a.mem);
    let detail_after = MEMINFO_DETAIL.map(|k| host::meminfo_kb(k).unwrap_or(0));
    let r = shared
        .results
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone_out();
    let ba = |i: usize, b: &[u64], a: &[u64]| BeforeAfter {
        before: b[i],
        after: a[i],
    };
    let mut s = StressSummary {
        pinvmm_version: env!("CARGO_PKG_VERSION"),
        build: vmm::provenance::BUILD,
        date_utc: crate::stamp::utc_now(),
        kernel_release: host::kernel_release(),
        cpu: host::cpu_model(),
        online_cpus: host.allowed_cpus.len(),
        kvm_backend: host::kvm_backend(),
        duration_s: a.duration.as_secs_f64(),
        runs_per_cell: a.runs,
        wall_s: wall.as_secs_f64(),
        parallel,
        mem_bytes: a.mem,
        vms: r.0.iter().map(|c| c.vms).sum(),
        completed: r.0.iter().map(|c| c.completed).sum(),
        terminated: r.0.iter().map(|c| c.terminated).sum(),
        failed: r.0.iter().map(|c| c.failed).sum(),
        max_running: shared.max_running.load(Ordering::Relaxed),
        cells: r.0,
        failures: r.1,
        vm_pin_kb: ba(0, &proc_before, &proc_after),
        vm_lck_kb: ba(1, &proc_before, &proc_after),
        open_fds: ba(2, &proc_before, &proc_after),
        rss_kb: ba(3, &proc_before, &proc_after),
        mem_available_kb: ba(0, &host_before, &host_after),
        mem_available_min_kb: avail_min,
        shmem_kb: ba(1, &host_before, &host_after),
        mlocked_kb: ba(2, &host_before, &host_after),
        others_rss_anon_kb: ba(3, &host_before, &host_after),
        others_rss_shmem_kb: ba(4, &host_before, &host_after),
        others_vm_lck_kb: ba(5, &host_before, &host_after),
        ours_after_kb: {
            let [mem_available, shmem, mlocked] = ours(host_before, host_after);
            OursAfter {
                mem_available,
                shmem,
                mlocked,
            }
        },
        meminfo_kb: MEMINFO_DETAIL
            .iter()
            .enumerate()
            .map(|(i, k)| (*k, ba(i, &detail_before, &detail_after)))
            .collect(),
        leaks: Vec::new(),
        interrupted: INTERRUPTED.load(Ordering::SeqCst),
        ok: false,
    };
    s.leaks = leaks(&s);
    s.ok = s.failed == 0 && s.leaks.is_empty() && s.vms > 0;
    if !a.quiet {
        eprint!("{}", s.human());
    }
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&s).unwrap_or_default();
        let w = if p.as_os_str() == "-" {
            println!("{text}");
            Ok(())
        } else {
            std::fs::write(p, text + "\n")
        };
        if let Err(e) = w {
            eprintln!("pinvmm: cannot write {}: {e}", p.display());
            return ExitCode::BadInput;
        }
    }
    if s.interrupted {
        ExitCode::Interrupted
    } else if s.ok {
        ExitCode::Ok
    } else {
        ExitCode::VmmError
    }
}

fn worker(s: &Shared, cfgs: &[VmConfig], deadline: Instant) {
    while Instant::now() < deadline && !INTERRUPTED.load(Ordering::SeqCst) {
        let k = s.next.fetch_add(1, Ordering::Relaxed);
        if s.total.is_some_and(|n| k >= n) {
            break;
        }
        let i = k as usize % cfgs.len();
        let c = &cfgs[i];
        let n = s.running.fetch_add(1, Ordering::Relaxed) + 1;
        s.max_running.fetch_max(n, Ordering::Relaxed);
        let r = vmm::build(c).map(|vm| Report::from(vm.run()));
        s.running.fetch_sub(1, Ordering::Relaxed);
        s.done.fetch_add(1, Ordering::Relaxed);
        let want = s.cells[i];
        // Terminated by a failed pin: counted apart. Otherwise the payload's own expectation.
        let (verdict, outcome, summary, guest_s) = match &r {
            Ok(r) if r.outcome == Outcome::Terminated => {
                (Some(Outcome::Terminated), r.outcome, r.summary.clone(), 0.0)
            }
            Ok(r) => {
                let v = expect(&want, r).map(|()| Outcome::Completed);
                let summary = v.clone().err().unwrap_or_default();
                (v.ok(), r.outcome, summary, r.timing.guest_ms / 1e3)
            }
            Err(e) => (None, Outcome::VmmError, e.to_string(), 0.0),
        };
        let mut res = s.results.lock().unwrap_or_else(|p| p.into_inner());
        let (cell, total_s) = res.cells.entry(i).or_insert_with(|| {
            let cell = CellResult {
                policy: want.policy.name().into(),
                backing: want.backing.to_string(),
                payload: want.payload.name().into(),
                vcpus: want.vcpus,
                ..Default::default()
            };
            (cell, 0.0)
        });
        cell.vms += 1;
        *total_s += guest_s;
        cell.mean_guest_s = *total_s / cell.vms as f64;
        match verdict {
            Some(Outcome::Terminated) => cell.terminated += 1,
            Some(_) => cell.completed += 1,
            None => {
                cell.failed += 1;
                s.failed.fetch_add(1, Ordering::Relaxed);
                let f = Failure {
                    policy: cell.policy.clone(),
                    backing: cell.backing.clone(),
                    payload: cell.payload.clone(),
                    vcpus: cell.vcpus,
                    outcome: format!("{outcome:?}"),
                    summary,
                };
                if res.failures.len() < 20 {
                    res.failures.push(f);
                }
            }
        }
    }
}

impl Results {
    fn clone_out(&self) -> (Vec<CellResult>, Vec<Failure>) {
        (
            self.cells.values().map(|(c, _)| c.clone()).collect(),
            self.failures.clone(),
        )
    }
}

/// The host's counters once ours are back within the tolerance of their baseline (freed
/// memory can take a moment to show), or after 20 s.
fn settle(before: [u64; 6], vm_mem: u64) -> [u64; 6] {
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let now = host_counters();
        if host_leaks(before, now, vm_mem).is_empty() || Instant::now() > give_up {
            return now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How far Shmem and Mlocked may move by themselves while we run (other processes on a
/// shared host, their VMs included): half a VM, at least 64 MiB. The process's own counters
/// catch a single leaked page; these catch what a process cannot see of itself (pages still
/// referenced after every descriptor and mapping is gone).
fn host_slack_kb(vm_mem: u64) -> u64 {
    (vm_mem / 2 / 1024).max(64 << 10)
}

/// MemAvailable moves more (a compiler starting elsewhere takes hundreds of MiB): at least
/// 256 MiB, or one VM.
fn available_slack_kb(vm_mem: u64) -> u64 {
    (vm_mem / 1024).max(256 << 10)
}

/// Which of MemAvailable, Shmem, Mlocked moved beyond its slack from `before` to `after`.
fn host_excess(before: [u64; 3], after: [u64; 3], vm_mem: u64) -> [Option<String>; 3] {
    let (slack, avail) = (host_slack_kb(vm_mem), available_slack_kb(vm_mem));
    [
        (after[0] + avail < before[0]).then(|| {
            format!(
                "MemAvailable {} -> {} kB (more than {avail} kB lower)",
                before[0], after[0]
            )
        }),
        (after[1] > before[1] + slack).then(|| {
            format!(
                "Shmem {} -> {} kB (more than {slack} kB higher)",
                before[1], after[1]
            )
        }),
        (after[2] > before[2] + slack).then(|| {
            format!(
                "Mlocked {} -> {} kB (more than {slack} kB higher)",
                before[2], after[2]
            )
        }),
    ]
}

/// A host counter leaks when it is beyond its slack both as read and net of other
/// processes' changes: the sum of other processes' RssAnon over- or under-states what they
/// took from MemAvailable (shared pages, memory freed to the page cache), so either view alone
/// errs by a few hundred MiB on a busy shared host; a leak of ours shows in both.
fn host_leaks(before: [u64; 6], after: [u64; 6], vm_mem: u64) -> Vec<String> {
    let b = [before[0], before[1], before[2]];
    let raw = host_excess(b, [after[0], after[1], after[2]], vm_mem);
    let net = host_excess(b, ours(before, after), vm_mem);
    raw.into_iter()
        .zip(net)
        .filter_map(|(r, n)| Some(format!("{}; net of other processes: {}", r?, n?)))
        .collect()
}

/// RSS may move by allocator noise, not by a VM's memory.
const RSS_SLACK_KB: u64 = 4096;

fn leaks(s: &StressSummary) -> Vec<String> {
    let mut l = Vec::new();
    for (name, v) in [
        ("VmPin", s.vm_pin_kb),
        ("VmLck", s.vm_lck_kb),
        ("open fds", s.open_fds),
    ] {
        if v.after != v.before {
            l.push(format!("{name} {} -> {}", v.before, v.after));
        }
    }
    if s.rss_kb.grew_by() > RSS_SLACK_KB as i64 {
        l.push(format!(
            "VmRSS {} -> {} kB (more than {RSS_SLACK_KB} kB higher)",
            s.rss_kb.before, s.rss_kb.after
        ));
    }
    let host = [
        s.mem_available_kb,
        s.shmem_kb,
        s.mlocked_kb,
        s.others_rss_anon_kb,
        s.others_rss_shmem_kb,
        s.others_vm_lck_kb,
    ];
    l.extend(host_leaks(
        host.map(|v| v.before),
        host.map(|v| v.after),
        s.mem_bytes,
    ));
    l
}

impl StressSummary {
    /// A table and a verdict for a terminal.
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let starts = match self.runs_per_cell {
            Some(n) => format!("{n} VMs per cell"),
            None => format!("{:.0} s of starts", self.duration_s),
        };
        let _ = writeln!(
            s,
            "pinvmm stress: {} VMs of {} MiB, {} at a time (max seen {}), {starts}, {:.0} s wall | {} | {} CPUs | {}",
            self.vms,
            self.mem_bytes >> 20,
            self.parallel,
            self.max_running,
            self.wall_s,
            self.kernel_release,
            self.online_cpus,
            self.date_utc
        );
        let _ = writeln!(
            s,
            "| payload | vCPUs | policy | backing | VMs | as expected | terminated | failed | mean guest s |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for c in &self.cells {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                c.payload,
                c.vcpus,
                c.policy,
                c.backing,
                c.vms,
                c.completed,
                c.terminated,
                c.failed,
                c.mean_guest_s
            );
        }
        for f in &self.failures {
            let _ = writeln!(
                s,
                "  FAILED {}/{}/{}/{} vCPUs: {}: {}",
                f.payload, f.policy, f.backing, f.vcpus, f.outcome, f.summary
            );
        }
        let d = |v: BeforeAfter| format!("{} -> {}", v.before, v.after);
        let _ = writeln!(
            s,
            "  process: VmPin {} kB, VmLck {} kB, fds {}, VmRSS {} kB",
            d(self.vm_pin_kb),
            d(self.vm_lck_kb),
            d(self.open_fds),
            d(self.rss_kb)
        );
        let _ = writeln!(
            s,
            "  host: MemAvailable {} kB (lowest while running {} kB), Shmem {} kB, Mlocked {} kB",
            d(self.mem_available_kb),
            self.mem_available_min_kb,
            d(self.shmem_kb),
            d(self.mlocked_kb)
        );
        let detail: Vec<String> = self
            .meminfo_kb
            .iter()
            .map(|(k, v)| format!("{k} {}", d(*v)))
            .collect();
        let _ = writeln!(s, "  host detail (kB): {}", detail.join(", "));
        let o = self.ours_after_kb;
        let _ = writeln!(
            s,
            "  other processes meanwhile: RssAnon {} kB, RssShmem {} kB, VmLck {} kB -> ours after: MemAvailable {} kB, Shmem {} kB, Mlocked {} kB",
            d(self.others_rss_anon_kb),
            d(self.others_rss_shmem_kb),
            d(self.others_vm_lck_kb),
            o.mem_available,
            o.shmem,
            o.mlocked
        );
        let verdict = if self.interrupted {
            "INTERRUPTED".to_owned()
        } else if self.ok {
            format!("OK: {} VMs, 0 failed, leaks found: 0", self.vms)
        } else {
            format!(
                "FAILED: {} failed VMs, leaks found: {} ({})",
                self.failed,
                self.leaks.len(),
                self.leaks.join("; ")
            )
        };
        let _ = writeln!(s, "  {verdict}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
        assert!(parse_duration("9999h").unwrap_err().contains("week"));
    }

    #[test]
    fn other_processes_changes_are_not_ours() {
        // Other processes took 1 GiB of anon memory, unmapped and freed 10 MiB of shmem and
        // unlocked 8 MiB while we ran: our own share did not move.
        let before = [20 << 20, 100 << 10, 40 << 10, 1 << 20, 20 << 10, 30 << 10];
        let after = [
            (19 << 20) + (10 << 10),
            90 << 10,
            32 << 10,
            2 << 20,
            10 << 10,
            22 << 10,
        ];
        assert_eq!(ours(before, after), [20 << 20, 100 << 10, 40 << 10]);
    }

    #[test]
    fn host_leaks_need_both_views() {
        let mem = 256 << 20;
        // MemAvailable, Shmem, Mlocked, others' RssAnon, RssShmem, VmLck (KiB).
        let before = [20 << 20, 100 << 10, 0, 1 << 20, 0, 0];
        // Noise within the slack.
        let after = [(20 << 20) - (250 << 10), 100 << 10, 512, 1 << 20, 0, 0];
        assert!(host_leaks(before, after, mem).is_empty());
        // Others took 400 MiB: not ours.
        let after = [
            (20 << 20) - (400 << 10),
            100 << 10,
            0,
            (1 << 20) + (400 << 10),
            0,
            0,
        ];
        assert!(host_leaks(before, after, mem).is_empty());
        // Others unchanged, 300 MiB gone, Shmem and Mlocked up by a VM: ours.
        let after = [
            (20 << 20) - (300 << 10),
            356 << 10,
            256 << 10,
            1 << 20,
            0,
            0,
        ];
        let l = host_leaks(before, after, mem);
        assert_eq!(l.len(), 3, "{l:?}");
    }
}
