// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm bench`: what the pinning stage-2 path costs, side by side with its baselines, in one
//! run (issue 8; results and how to read them in docs/PERFORMANCE.md).
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
//!   first guest output and to exit, and first-touch throughput (`qemu.rs`).
//!
//! The touch rows come in 4 KiB (shmem) and 2 MiB granules (hugetlb, shmem-thp backings).
//!
//! Repetitions are interleaved (round 1 runs every row, then round 2, ...) so that drift of a
//! shared machine hits every row alike; tables give medians.

pub mod qemu;
pub mod render;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guest::Payload;
use serde::Serialize;

use crate::args::named;
use crate::stamp::{loadavg, utc_now};
use render::us;
use vmm::config::parse_size;
use vmm::exit_code::ExitCode;
use vmm::host::HostFacts;
use vmm::host::hugepages::{HUGE_PAGE_SIZE, HostSetting};
use vmm::report::{Outcome, Report};
use vmm::stage2::drain::{DrainPolicy, Drainer};
use vmm::stage2::pin::PinTable;
use vmm::stats::median;
use vmm::sys::{self, Mapping, PAGE_SIZE};
use vmm::{Backing, FaultIn, HostLimits, Stage2, VmConfig};

/// Sections of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    Touch,
    Drain,
    Launch,
    Rss,
    Qemu,
}

/// `pinvmm bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Guest memory of the first-touch VMs.
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    pub mem: u64,
    /// Repetitions of every row, interleaved round by round.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub reps: u32,
    /// Fault-ahead values (pages) for the extra pinning rows; 0 = no extra rows.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "15,63",
        value_name = "K,..."
    )]
    pub fault_ahead: Vec<u32>,
    /// Back-to-back VMs per round in the launch section.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub launches: u32,
    /// Guest memory of the launch VMs.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub launch_mem: u64,
    /// Guest memory of the largest RSS VM (the VMM's per-page bookkeeping shows there).
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub rss_mem: u64,
    /// Memory backings of the first-touch rows: shmem (4 KiB granule; always measured: the
    /// baselines), hugetlb and shmem-thp (2 MiB granules). As root, the bench reserves the
    /// hugetlb pages (vm.nr_hugepages) and allows shmem THP (shmem_enabled=advise) for the run
    /// and puts both back at the end; otherwise the host must offer them (see `pinvmm probe`)
    /// or those rows are skipped, and the output says so.
    #[arg(
        long,
        value_parser = named::<Backing>(),
        value_delimiter = ',',
        default_value = "shmem,hugetlb,shmem-thp",
        value_name = "BACKING,..."
    )]
    pub backings: Vec<Backing>,
    /// The QEMU binary of the `qemu` section (Debian: apt-get install qemu-system-x86). When it
    /// is missing the section says so and measures nothing (exit 3 with --only qemu).
    #[arg(long, default_value = "qemu-system-x86_64", value_name = "PATH")]
    pub qemu: PathBuf,
    /// Run only these sections (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Write every sample and summary as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the first-touch rows (and the baseline's, with --baseline) as an SVG bar chart.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// A previous `--json` output: its first-touch rows are shown next to this run's
    /// (before/after of a change; measure both on the same host).
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Print progress to stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

/// One first-touch configuration.
#[derive(Debug, Clone, Serialize)]
pub struct TouchRow {
    pub name: String,
    pub backing: Backing,
    /// Bytes resolved per fault (4096 or 2 MiB).
    pub granule_bytes: u64,
    pub stage2: Stage2,
    pub policy: DrainPolicy,
    pub fault_in: FaultIn,
    /// Per repetition.
    pub samples: Vec<TouchSample>,
    /// Medians over the repetitions.
    pub us_per_page: f64,
    /// Fastest and slowest repetition.
    pub us_per_page_min: f64,
    pub us_per_page_max: f64,
    pub gib_per_s: f64,
    /// Over the 4 KiB `kernel` row (KVM's own fault on shmem: the floor).
    pub ratio_to_kernel: f64,
    /// Over the `kernel` row of the same backing (KVM's own fault at the same granule).
    pub ratio_to_backing_kernel: Option<f64>,
    pub ratio_to_uffd: f64,
    pub fault_p50_us: Option<f64>,
    pub fault_p99_us: Option<f64>,
    pub resolve_p50_us: Option<f64>,
    pub pin_p50_us: Option<f64>,
    pub drain_us_per_pin: Option<f64>,
    pub pins_per_fault: Option<f64>,
    /// Share of the memory KVM mapped that it mapped with 2 MiB entries (median).
    pub kvm_2m_share: Option<f64>,
    /// Share of the resident granules that sat in 2 MiB folios (median; needs root).
    pub huge_folio_share: Option<f64>,
}

/// One VM's first-touch figures.
#[derive(Debug, Clone, Serialize)]
pub struct TouchSample {
    pub us_per_page: f64,
    pub guest_us_per_touched_page: f64,
    pub setup_ms: f64,
    pub faults: u64,
    pub pins: u64,
    pub fault_p50_us: f64,
    pub fault_p99_us: f64,
    pub resolve_p50_us: f64,
    pub pin_p50_us: f64,
    pub drain_ns: u64,
    /// What the host really used (report.granule).
    pub kvm_pages_4k: Option<u64>,
    pub kvm_pages_2m: Option<u64>,
    pub resident_granules: Option<u64>,
    pub huge_folio_granules: Option<u64>,
}

/// One drain micro-benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct DrainMicro {
    pub name: String,
    /// CPUs that had a pending LRU batch before the drain (all-CPU drain rows).
    pub cpus_with_pending: Option<usize>,
    pub samples: usize,
    pub p50_us: f64,
    pub p90_us: f64,
}

/// Drain cost inside the VM, from the touch rows.
#[derive(Debug, Clone, Serialize)]
pub struct DrainInVm {
    pub backing: Backing,
    pub policy: String,
    /// Resolver-measured drain time per pin (µs).
    pub drain_us_per_pin: f64,
    /// The guest's first-touch cost over `pin:none` per page (µs) and in percent.
    pub over_none_us_per_page: f64,
    pub over_none_pct: f64,
}

/// One launch configuration.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchRow {
    pub name: String,
    pub in_process: bool,
    pub vms: usize,
    pub first_exit_ms_p50: Option<f64>,
    pub first_exit_ms_p90: Option<f64>,
    pub guest_exit_ms_p50: Option<f64>,
    pub wall_ms_p50: f64,
    pub vms_per_s: f64,
}

/// The VMM's own resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct RssRow {
    pub name: String,
    pub guest_mem_mib: u64,
    pub rss_anon_kb: u64,
    pub rss_file_kb: u64,
    pub rss_shmem_kb: u64,
    /// RssAnon + RssFile: everything resident that is not guest memory.
    pub vmm_rss_kb: u64,
}

/// A goal of issue 8 and where this run stands.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// Everything a bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub pinvmm_version: &'static str,
    pub date_utc: String,
    pub command: String,
    pub host: HostFacts,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub mem_bytes: u64,
    pub reps: u32,
    pub fault_cpu: usize,
    pub pin_cpu: usize,
    pub fault_ahead: Vec<u32>,
    pub touch: Vec<TouchRow>,
    pub drain_in_vm: Vec<DrainInVm>,
    pub drain_micro: Vec<DrainMicro>,
    pub launch: Vec<LaunchRow>,
    pub rss: Vec<RssRow>,
    pub qemu: Option<qemu::QemuSection>,
    pub goals: Vec<Goal>,
    /// Host settings the bench changed for the run (and restored), and rows it had to skip.
    pub host_changes: Vec<String>,
    pub skipped: Vec<String>,
    /// First-touch µs/page of the `--baseline` run, by row name.
    pub baseline: Vec<(String, f64)>,
    pub baseline_file: Option<String>,
    pub wall_s: f64,
}

struct TouchSpec {
    name: String,
    backing: Backing,
    stage2: Stage2,
    policy: DrainPolicy,
    fault_in: FaultIn,
    fault_ahead: u32,
}

/// The row name: as before for shmem (so that baselines of earlier runs still match), with
/// the backing in front otherwise.
fn row_name(backing: Backing, base: &str) -> String {
    match backing {
        Backing::Shmem => base.to_owned(),
        b => format!("{b}:{base}"),
    }
}

fn touch_specs(fault_ahead: &[u32], backings: &[Backing]) -> Vec<TouchSpec> {
    let s = |backing, name: &str, stage2, policy, fault_in, fa| TouchSpec {
        name: row_name(backing, name),
        backing,
        stage2,
        policy,
        fault_in,
        fault_ahead: fa,
    };
    let (none, touch) = (DrainPolicy::None, FaultIn::Touch);
    // The 4 KiB baselines first: every ratio refers to them.
    let sh = Backing::Shmem;
    let mut v = vec![
        s(sh, "kernel", Stage2::Kernel, none, touch, 0),
        s(sh, "eager", Stage2::Eager, none, touch, 0),
        s(sh, "uffd", Stage2::Uffd, none, touch, 0),
    ];
    for p in [
        DrainPolicy::None,
        DrainPolicy::MlockDrain,
        DrainPolicy::LruAddDrain,
        DrainPolicy::Retry,
    ] {
        v.push(s(
            sh,
            &format!("pin:{}", p.name()),
            Stage2::Pin,
            p,
            touch,
            0,
        ));
    }
    v.push(s(
        sh,
        "pin:none,fault-in=pin",
        Stage2::Pin,
        none,
        FaultIn::Pin,
        0,
    ));
    for &k in fault_ahead.iter().filter(|&&k| k > 0) {
        for p in [DrainPolicy::None, DrainPolicy::MlockDrain] {
            v.push(s(
                sh,
                &format!("pin:{},fa={k}", p.name()),
                Stage2::Pin,
                p,
                touch,
                k,
            ));
        }
    }
    // 2 MiB granules: KVM's own fault, the bare round trip and the pinning path per policy
    // (shmem-thp: the two policies that matter; its KVM mappings are 4 KiB anyway).
    for &b in backings.iter().filter(|b| b.granule() > PAGE_SIZE as u64) {
        v.push(s(b, "kernel", Stage2::Kernel, none, touch, 0));
        if b == Backing::Hugetlb {
            v.push(s(b, "eager", Stage2::Eager, none, touch, 0));
        }
        v.push(s(b, "uffd", Stage2::Uffd, none, touch, 0));
        let policies: &[DrainPolicy] = if b == Backing::Hugetlb {
            &DrainPolicy::ALL
        } else {
            &[DrainPolicy::None, DrainPolicy::MlockDrain]
        };
        for &p in policies {
            v.push(s(b, &format!("pin:{}", p.name()), Stage2::Pin, p, touch, 0));
        }
    }
    v
}

/// Makes a huge page backing usable for the run: nothing to do when the host already offers
/// it; as root, a [`HostSetting`] that raises the hugetlb pool or allows shmem THP until it is
/// dropped; otherwise why the rows must be skipped.
fn prepare_backing(
    backing: Backing,
    mem: u64,
    host: &HostLimits,
    changes: &mut Vec<String>,
) -> Result<Option<HostSetting>, String> {
    let mut probe = VmConfig::new(Payload::Memtouch, mem, host.default_placement());
    probe.backing = backing;
    let Err(e) = probe.validate(host) else {
        return Ok(None);
    };
    if !matches!(
        e,
        vmm::config::ConfigError::HugePagesShort { .. }
            | vmm::config::ConfigError::ShmemThpDisabled(_)
    ) {
        return Err(e.to_string());
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "{e} (or run the bench as root: it does that itself)"
        ));
    }
    let guard = match backing {
        Backing::Hugetlb => HostSetting::reserve_hugetlb(mem / HUGE_PAGE_SIZE),
        _ => HostSetting::allow_shmem_thp(),
    }
    .map_err(|e| e.to_string())?;
    if let Some(g) = &guard {
        let msg = format!("{g} for the {backing} rows, put back at the end of the run");
        eprintln!("pinvmm bench: {msg} (if interrupted: {})", g.undo_hint());
        changes.push(msg);
    }
    Ok(guard)
}

fn vm_config(
    payload: Payload,
    mem: u64,
    host: &HostLimits,
    spec: &TouchSpec,
) -> Result<VmConfig, String> {
    let mut c = VmConfig::new(payload, mem, host.default_placement());
    c.backing = spec.backing;
    c.stage2 = spec.stage2;
    c.policy = spec.policy;
    c.fault_in = spec.fault_in;
    c.fault_ahead = spec.fault_ahead;
    c.timeout = Duration::from_secs(120);
    c.validate(host)
        .map_err(|e| format!("{}: {e}", spec.name))?;
    Ok(c)
}

fn run_vm(cfg: &VmConfig, what: &str) -> Result<Report, String> {
    let r = Report::from(vmm::build(cfg).map_err(|e| format!("{what}: {e}"))?.run());
    if r.outcome != Outcome::Completed {
        return Err(format!("{what}: {:?}: {}", r.outcome, r.summary));
    }
    Ok(r)
}

fn pct(xs: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = xs.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

fn med_of<T>(xs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&xs.iter().map(f).collect::<Vec<_>>())
}

/// The first-touch rows. `skipped` and `changes` collect the huge page backings that could
/// not be measured and the host settings changed for them.
fn touch_section(
    a: &BenchArgs,
    host: &HostLimits,
    log: &dyn Fn(&str),
    skipped: &mut Vec<String>,
    changes: &mut Vec<String>,
) -> Result<Vec<TouchRow>, String> {
    // shmem-thp's setting is changed for these rows only (the qemu section must see the
    // host's own); the hugetlb pool is raised by `run` for the whole bench.
    let mut usable = vec![Backing::Shmem];
    let mut _thp = None;
    for &b in a
        .backings
        .iter()
        .filter(|&&b| b.granule() > PAGE_SIZE as u64)
    {
        let prepared = if b == Backing::ShmemThp {
            prepare_backing(b, a.mem, &HostLimits::probe(), changes).map(|g| _thp = g)
        } else {
            let mut probe = VmConfig::new(Payload::Memtouch, a.mem, host.default_placement());
            probe.backing = b;
            probe
                .validate(&HostLimits::probe())
                .map_err(|e| e.to_string())
        };
        match prepared {
            Ok(()) => usable.push(b),
            Err(why) => {
                let msg = format!("{b} rows skipped: {why}");
                eprintln!("pinvmm bench: {msg}");
                skipped.push(msg);
            }
        }
    }
    let host = &HostLimits::probe();
    let specs = touch_specs(&a.fault_ahead, &usable);
    let cfgs: Vec<VmConfig> = specs
        .iter()
        .map(|s| vm_config(Payload::Memtouch, a.mem, host, s))
        .collect::<Result<_, _>>()?;
    let mut samples: Vec<Vec<TouchSample>> = vec![Vec::new(); specs.len()];
    for round in 0..a.reps {
        // Rotate the starting row each round: position effects spread over the rows too.
        for k in 0..specs.len() {
            let i = (k + round as usize) % specs.len();
            let r = run_vm(&cfgs[i], &specs[i].name)?;
            let t = &r.timing;
            let res = r.resolver.clone().unwrap_or_default();
            samples[i].push(TouchSample {
                us_per_page: t
                    .first_touch_us_per_page
                    .ok_or_else(|| format!("{}: no first-touch marks", specs[i].name))?,
                guest_us_per_touched_page: t.guest_us_per_touched_page,
                setup_ms: t.setup_ms,
                faults: res.faults,
                pins: res.pins.ok,
                fault_p50_us: res.fault_latency.p50_us,
                fault_p99_us: res.fault_latency.p99_us,
                resolve_p50_us: res.resolve_latency.p50_us,
                pin_p50_us: res.pin_latency.p50_us,
                drain_ns: res.drain.total_ns,
                kvm_pages_4k: r.granule.kvm_pages_4k,
                kvm_pages_2m: r.granule.kvm_pages_2m,
                resident_granules: r.granule.resident_granules,
                huge_folio_granules: r.granule.huge_folio_granules,
            });
        }
        log(&format!("touch: round {}/{} done", round + 1, a.reps));
    }
    let med_us: Vec<f64> = samples
        .iter()
        .map(|s| med_of(s, |x| x.us_per_page))
        .collect();
    let of = |name: &str| specs.iter().position(|s| s.name == name).map(|i| med_us[i]);
    let kernel = of("kernel").unwrap_or(f64::NAN);
    let uffd = of("uffd").unwrap_or(f64::NAN);
    Ok(specs
        .iter()
        .zip(samples)
        .zip(med_us.iter().copied())
        .map(|((spec, s), us)| {
            let resolved = matches!(spec.stage2, Stage2::Pin | Stage2::Uffd);
            let pinned = spec.stage2 == Stage2::Pin;
            let share = |part: &dyn Fn(&TouchSample) -> Option<f64>| {
                let v: Vec<f64> = s.iter().filter_map(part).collect();
                (!v.is_empty()).then(|| median(&v))
            };
            TouchRow {
                name: spec.name.clone(),
                backing: spec.backing,
                granule_bytes: spec.backing.granule(),
                stage2: spec.stage2,
                policy: spec.policy,
                fault_in: spec.fault_in,
                us_per_page: us,
                us_per_page_min: s
                    .iter()
                    .map(|x| x.us_per_page)
                    .fold(f64::INFINITY, f64::min),
                us_per_page_max: s.iter().map(|x| x.us_per_page).fold(0.0, f64::max),
                gib_per_s: PAGE_SIZE as f64 / us / 1e3 / 1.073_741_824,
                ratio_to_kernel: us / kernel,
                ratio_to_backing_kernel: of(&row_name(spec.backing, "kernel")).map(|k| us / k),
                ratio_to_uffd: us / uffd,
                fault_p50_us: resolved.then(|| med_of(&s, |x| x.fault_p50_us)),
                fault_p99_us: resolved.then(|| med_of(&s, |x| x.fault_p99_us)),
                resolve_p50_us: resolved.then(|| med_of(&s, |x| x.resolve_p50_us)),
                pin_p50_us: pinned.then(|| med_of(&s, |x| x.pin_p50_us)),
                drain_us_per_pin: pinned
                    .then(|| med_of(&s, |x| x.drain_ns as f64 / 1e3 / x.pins.max(1) as f64)),
                pins_per_fault: pinned
                    .then(|| med_of(&s, |x| x.pins as f64 / x.faults.max(1) as f64)),
                kvm_2m_share: share(&|x| {
                    let (k4, k2) = (x.kvm_pages_4k? as f64, x.kvm_pages_2m? as f64 * 512.0);
                    (k4 + k2 > 0.0).then(|| k2 / (k4 + k2))
                }),
                huge_folio_share: share(&|x| {
                    let (r, h) = (x.resident_granules? as f64, x.huge_folio_granules? as f64);
                    (r > 0.0).then(|| h / r)
                }),
                samples: s,
            }
        })
        .collect())
}

/// Each policy against `pin:none` of the same backing.
fn drain_in_vm(touch: &[TouchRow]) -> Vec<DrainInVm> {
    let mut out = Vec::new();
    for none in touch
        .iter()
        .filter(|r| r.name == row_name(r.backing, "pin:none"))
    {
        out.extend(
            touch
                .iter()
                .filter(|r| {
                    r.backing == none.backing
                        && r.stage2 == Stage2::Pin
                        && r.name == row_name(r.backing, &format!("pin:{}", r.policy.name()))
                })
                .map(|r| DrainInVm {
                    backing: r.backing,
                    policy: r.policy.name().to_owned(),
                    drain_us_per_pin: r.drain_us_per_pin.unwrap_or(0.0),
                    over_none_us_per_page: paired(r, none, |a, b| a - b),
                    over_none_pct: (paired(r, none, |a, b| a / b) - 1.0) * 100.0,
                }),
        );
    }
    out
}

/// Median over rounds of `f(a, b)` on the two rows' first-touch µs/page of the same round:
/// rows of one round ran next to each other, so drift of a shared host cancels out.
fn paired(a: &TouchRow, b: &TouchRow, f: impl Fn(f64, f64) -> f64) -> f64 {
    let v: Vec<f64> = a
        .samples
        .iter()
        .zip(&b.samples)
        .map(|(x, y)| f(x.us_per_page, y.us_per_page))
        .collect();
    median(&v)
}

/// A helper thread bound to one CPU that faults fresh shmem pages in on request (creating a
/// pending per-CPU LRU-add batch there).
struct Dirtier {
    tx: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

impl Dirtier {
    fn new(cpu: usize) -> Result<Self, String> {
        let file = sys::memfd("pinvmm-bench-dirt", 64 << 20).map_err(|e| e.to_string())?;
        let map = Mapping::shared(&file, 64 << 20).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel::<()>();
        let (dtx, done) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _ = sys::pin_thread_to_cpu(cpu);
            let _keep = file;
            let mut next = 0;
            while rx.recv().is_ok() {
                // Two fresh pages: each lands in this CPU's LRU-add batch.
                for _ in 0..2 {
                    map.write_u8(next, 1)
                        .expect("next < 64 MiB: inside the mapping");
                    next = (next + PAGE_SIZE) % (64 << 20);
                }
                if dtx.send(()).is_err() {
                    break;
                }
            }
        });
        Ok(Self { tx, done })
    }

    fn dirty(&self) -> Result<(), String> {
        self.tx.send(()).map_err(|e| e.to_string())?;
        self.done.recv().map_err(|e| e.to_string())
    }
}

/// Runs the micro-benchmarks on threads of their own, placed as the resolver's (the local
/// drain on the fault CPU, the all-CPU drain and the pin on the pin CPU), so that pinning them
/// never leaks into the VMs measured afterwards (their threads inherit the creator's affinity).
fn drain_micro(host: &HostLimits) -> Result<Vec<DrainMicro>, String> {
    let place = host.default_placement();
    // The fault CPU first (the VM's case: its fault-in left a batch there), the pin CPU last.
    let mut order = vec![place.fault_cpu];
    order.extend(
        host.allowed_cpus
            .iter()
            .filter(|&&c| c != place.fault_cpu && c != place.pin_cpu),
    );
    if place.pin_cpu != place.fault_cpu {
        order.push(place.pin_cpu);
    }
    let on = |cpu: usize, f: Box<dyn FnOnce() -> Result<Vec<DrainMicro>, String> + Send>| {
        std::thread::spawn(move || {
            let _ = sys::pin_thread_to_cpu(cpu);
            f()
        })
        .join()
        .map_err(|_| "a drain micro-benchmark thread panicked".to_owned())?
    };
    let fault_cpu = place.fault_cpu;
    let mut out = on(fault_cpu, Box::new(move || local_drain_micro(fault_cpu)))?;
    out.extend(on(
        place.pin_cpu,
        Box::new(move || all_drain_and_pin_micro(&order)),
    )?);
    Ok(out)
}

const MICRO_N: usize = 200;

fn micro(name: &str, cpus: Option<usize>, xs: &[f64]) -> DrainMicro {
    DrainMicro {
        name: name.to_owned(),
        cpus_with_pending: cpus,
        samples: xs.len(),
        p50_us: pct(xs, 0.5),
        p90_us: pct(xs, 0.9),
    }
}

/// The local drain (mlock-drain), on the fault CPU right after a fault-in there.
fn local_drain_micro(cpu: usize) -> Result<Vec<DrainMicro>, String> {
    let dirtier = Dirtier::new(cpu)?;
    let mut d = Drainer::new(DrainPolicy::MlockDrain).map_err(|e| e.to_string())?;
    let mut xs = Vec::with_capacity(MICRO_N);
    for _ in 0..MICRO_N {
        dirtier.dirty()?;
        let t = Instant::now();
        d.drain_local(cpu).map_err(|e| e.to_string())?;
        xs.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    Ok(vec![micro(
        "local drain on the fault CPU (MADV_COLD: mlock-drain)",
        Some(1),
        &xs,
    )])
}

/// The all-CPU drain (lru-add-drain, retry) from the pin CPU with 0..=n CPUs holding a
/// pending batch (in `order`: the fault CPU first), then the long-term pin alone.
fn all_drain_and_pin_micro(order: &[usize]) -> Result<Vec<DrainMicro>, String> {
    let dirtiers: Vec<Dirtier> = order
        .iter()
        .map(|&c| Dirtier::new(c))
        .collect::<Result<_, _>>()?;
    let mut d = Drainer::new(DrainPolicy::LruAddDrain).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for k in 0..=dirtiers.len() {
        let mut xs = Vec::with_capacity(MICRO_N);
        for _ in 0..MICRO_N {
            for dt in &dirtiers[..k] {
                dt.dirty()?;
            }
            let t = Instant::now();
            d.drain_all().map_err(|e| e.to_string())?;
            xs.push(t.elapsed().as_nanos() as f64 / 1e3);
        }
        out.push(micro(
            "all-CPU drain from the pin CPU (migrate_pages: lru-add-drain, retry)",
            Some(k),
            &xs,
        ));
    }
    drop(dirtiers);
    // The pin alone: touched pages of an mlocked memfd view, one page per call, then 16.
    let pages = 4096u64;
    let file =
        sys::memfd("pinvmm-bench-pin", pages * PAGE_SIZE as u64).map_err(|e| e.to_string())?;
    let view = Mapping::shared(&file, pages as usize * PAGE_SIZE).map_err(|e| e.to_string())?;
    view.mlock_onfault().map_err(|e| e.to_string())?;
    for p in 0..pages {
        view.touch_read(p as usize * PAGE_SIZE);
    }
    let hva = |p: u64| view.addr() + p * PAGE_SIZE as u64;
    let mut table = PinTable::new(pages);
    let mut xs = Vec::with_capacity(pages as usize / 2);
    for p in 0..pages / 2 {
        let t = Instant::now();
        table.pin(p, hva(p)).map_err(|e| e.to_string())?;
        xs.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    out.push(micro("long-term pin, one page per call", None, &xs));
    let mut xs = Vec::with_capacity(pages as usize / 32);
    for p in (pages / 2..pages).step_by(16) {
        let t = Instant::now();
        table.pin_range(p, hva(p), 16).map_err(|e| e.to_string())?;
        xs.push(t.elapsed().as_nanos() as f64 / 1e3 / 16.0);
    }
    out.push(micro(
        "long-term pin, 16 pages per call (fault-ahead), per page",
        None,
        &xs,
    ));
    Ok(out)
}

struct LaunchSpec {
    name: &'static str,
    stage2: Stage2,
}

const LAUNCH_SPECS: [LaunchSpec; 2] = [
    LaunchSpec {
        name: "hello, stage2 pin",
        stage2: Stage2::Pin,
    },
    LaunchSpec {
        name: "hello, stage2 kernel",
        stage2: Stage2::Kernel,
    },
];

fn launch_section(
    a: &BenchArgs,
    host: &HostLimits,
    log: &dyn Fn(&str),
) -> Result<Vec<LaunchRow>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mem_arg = format!("{}K", a.launch_mem >> 10);
    let cfgs: Vec<VmConfig> = LAUNCH_SPECS
        .iter()
        .map(|l| {
            let spec = TouchSpec {
                name: l.name.into(),
                backing: Backing::Shmem,
                stage2: l.stage2,
                policy: DrainPolicy::None,
                fault_in: FaultIn::Touch,
                fault_ahead: 0,
            };
            vm_config(Payload::Hello, a.launch_mem, host, &spec)
        })
        .collect::<Result<_, _>>()?;
    // [spec][in-process, process]: per-VM samples and total time.
    let n = LAUNCH_SPECS.len();
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); n];
    let mut inproc_total = vec![Duration::ZERO; n];
    let mut proc_wall: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut proc_total = vec![Duration::ZERO; n];
    for round in 0..a.reps {
        for i in 0..n {
            let t = Instant::now();
            for _ in 0..a.launches {
                reports[i].push(run_vm(&cfgs[i], LAUNCH_SPECS[i].name)?);
            }
            inproc_total[i] += t.elapsed();
            let t = Instant::now();
            for _ in 0..a.launches {
                let t1 = Instant::now();
                let st = Command::new(&exe)
                    .args(["run", "--quiet", "--guest", "hello", "--mem", &mem_arg])
                    .args(["--stage2", stage2_name(LAUNCH_SPECS[i].stage2)])
                    .status()
                    .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
                if !st.success() {
                    return Err(format!("pinvmm run (hello) failed: {st}"));
                }
                proc_wall[i].push(t1.elapsed().as_secs_f64() * 1e3);
            }
            proc_total[i] += t.elapsed();
        }
        log(&format!("launch: round {}/{} done", round + 1, a.reps));
    }
    let mut rows = Vec::new();
    for i in 0..n {
        let first: Vec<f64> = reports[i]
            .iter()
            .filter_map(|r| r.timing.first_exit_ms)
            .collect();
        let exit: Vec<f64> = reports[i].iter().map(|r| r.timing.guest_exit_ms).collect();
        let wall: Vec<f64> = reports[i].iter().map(|r| r.timing.wall_ms).collect();
        rows.push(LaunchRow {
            name: LAUNCH_SPECS[i].name.into(),
            in_process: true,
            vms: reports[i].len(),
            first_exit_ms_p50: Some(pct(&first, 0.5)),
            first_exit_ms_p90: Some(pct(&first, 0.9)),
            guest_exit_ms_p50: Some(pct(&exit, 0.5)),
            wall_ms_p50: pct(&wall, 0.5),
            vms_per_s: reports[i].len() as f64 / inproc_total[i].as_secs_f64(),
        });
        rows.push(LaunchRow {
            name: LAUNCH_SPECS[i].name.into(),
            in_process: false,
            vms: proc_wall[i].len(),
            first_exit_ms_p50: None,
            first_exit_ms_p90: None,
            guest_exit_ms_p50: None,
            wall_ms_p50: pct(&proc_wall[i], 0.5),
            vms_per_s: proc_wall[i].len() as f64 / proc_total[i].as_secs_f64(),
        });
    }
    Ok(rows)
}

fn stage2_name(s: Stage2) -> &'static str {
    match s {
        Stage2::Pin => "pin",
        Stage2::Uffd => "uffd",
        Stage2::Kernel => "kernel",
        Stage2::Eager => "eager",
    }
}

fn rss_section(a: &BenchArgs) -> Result<Vec<RssRow>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut rows = Vec::new();
    for (name, guest, mem) in [
        ("memtouch, stage2 pin", "memtouch", a.rss_mem),
        ("memtouch, stage2 pin", "memtouch", a.mem),
        ("hello, stage2 pin", "hello", a.launch_mem),
    ] {
        let out = Command::new(&exe)
            .args(["run", "--quiet", "--guest", guest, "--json", "-"])
            .args(["--mem", &format!("{}K", mem >> 10)])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if !out.status.success() {
            return Err(format!("pinvmm run ({name}) failed: {}", out.status));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("pinvmm run ({name}): bad JSON: {e}"))?;
        let kb = |k: &str| v["memory"][k].as_u64().unwrap_or(0);
        let (anon, file, shmem) = (
            kb("rss_anon_kb_running"),
            kb("rss_file_kb_running"),
            kb("rss_shmem_kb_running"),
        );
        rows.push(RssRow {
            name: name.into(),
            guest_mem_mib: mem >> 20,
            rss_anon_kb: anon,
            rss_file_kb: file,
            rss_shmem_kb: shmem,
            vmm_rss_kb: anon + file,
        });
    }
    Ok(rows)
}

fn goals(r: &BenchReport) -> Vec<Goal> {
    let mut g = Vec::new();
    let row = |n: &str| r.touch.iter().find(|t| t.name == n);
    if let (Some(none), Some(uffd)) = (row("pin:none"), row("uffd")) {
        let x = paired(none, uffd, |a, b| a / b);
        g.push(Goal {
            goal: "pin:none first touch vs bare userfaultfd (uffd), paired by round".into(),
            target: "≤ 1.2x".into(),
            measured: format!(
                "{x:.2}x ({:.1} vs {:.1} µs/page)",
                none.us_per_page, uffd.us_per_page
            ),
            met: x <= 1.2,
        });
    }
    let best_fa = r
        .touch
        .iter()
        .filter(|t| t.name.contains("fa="))
        .min_by(|a, b| a.us_per_page.total_cmp(&b.us_per_page));
    if let Some(fa) = best_fa {
        g.push(Goal {
            goal: format!("fault-ahead first touch ({}) vs kernel", fa.name),
            target: "≤ 3x".into(),
            measured: format!("{:.2}x", fa.ratio_to_kernel),
            met: fa.ratio_to_kernel <= 3.0,
        });
    }
    // 2 MiB granules: the goal is against --stage2 kernel (the 4 KiB floor); KVM's own
    // fault at the same granule is the stricter comparison, shown too.
    for b in [Backing::Hugetlb, Backing::ShmemThp] {
        if let Some(p) = row(&row_name(b, "pin:none")) {
            g.push(Goal {
                goal: format!("2 MiB granules: first touch ({}) vs kernel (4 KiB)", p.name),
                target: "≤ 3x".into(),
                measured: format!(
                    "{:.2}x ({:.2} vs {:.2} µs/page)",
                    p.ratio_to_kernel,
                    p.us_per_page,
                    p.us_per_page / p.ratio_to_kernel
                ),
                met: p.ratio_to_kernel <= 3.0,
            });
            if let Some(x) = p.ratio_to_backing_kernel {
                g.push(Goal {
                    goal: format!(
                        "2 MiB granules: first touch ({}) vs {} (KVM's own fault, same memory)",
                        p.name,
                        row_name(b, "kernel")
                    ),
                    target: "≤ 3x".into(),
                    measured: format!("{x:.2}x"),
                    met: x <= 3.0,
                });
            }
        }
    }
    if let (Some(none), Some(m)) = (row("pin:none"), row("pin:mlock-drain")) {
        let x = (paired(m, none, |a, b| a / b) - 1.0) * 100.0;
        g.push(Goal {
            goal: "mlock-drain over none (first touch, paired by round)".into(),
            target: "≤ 5%".into(),
            measured: format!("{x:+.1}%"),
            met: x <= 5.0,
        });
    }
    if let Some(l) = r
        .launch
        .iter()
        .find(|l| l.in_process && l.name.contains("pin"))
    {
        let f = l.first_exit_ms_p50.unwrap_or(f64::NAN);
        g.push(Goal {
            goal: "bare VM launch to first guest exit (hello, p50, in process)".into(),
            target: "≤ 5 ms".into(),
            measured: format!("{f:.2} ms"),
            met: f <= 5.0,
        });
    }
    if let Some(l) = r
        .launch
        .iter()
        .find(|l| !l.in_process && l.name.contains("pin"))
    {
        g.push(Goal {
            goal: "VMs/s back to back (hello, 16 MiB, one process per VM)".into(),
            target: "≥ 20".into(),
            measured: format!("{:.1}", l.vms_per_s),
            met: l.vms_per_s >= 20.0,
        });
    }
    if let Some(x) = r.rss.iter().map(|x| x.vmm_rss_kb).max() {
        g.push(Goal {
            goal: "VMM RSS besides guest memory (max of the RSS rows)".into(),
            target: "≤ 8 MiB".into(),
            measured: format!("{:.1} MiB", x as f64 / 1024.0),
            met: x <= 8 << 10,
        });
    }
    g
}

fn f(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

fn granule_name(bytes: u64) -> &'static str {
    if bytes >= HUGE_PAGE_SIZE {
        "2 MiB"
    } else {
        "4 KiB"
    }
}

impl BenchReport {
    fn baseline_of(&self, name: &str) -> Option<f64> {
        self.baseline
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Markdown tables for people (and docs/PERFORMANCE.md).
    pub fn human(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        if !self.touch.is_empty() {
            let _ = writeln!(
                w,
                "First touch: memtouch's first write pass over a {} MiB guest, µs per 4 KiB page (2 MiB granules: per 4 KiB page equivalent; median of {} interleaved runs)\n",
                self.mem_bytes >> 20,
                self.reps
            );
            let base = !self.baseline.is_empty();
            let _ = writeln!(
                w,
                "| path | granule | µs/page | min–max | GiB/s | × kernel | × kernel, same memory | × uffd | resolve p50 µs | fault p50 µs | fault p99 µs | pin p50 µs | drain µs/pin | pins/fault |{}",
                if base {
                    " baseline µs/page | speed-up |"
                } else {
                    ""
                }
            );
            let _ = writeln!(
                w,
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|{}",
                if base { "---|---|" } else { "" }
            );
            for r in &self.touch {
                let b = self.baseline_of(&r.name);
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {}–{} | {:.3} | {:.2}x | {} | {:.2}x | {} | {} | {} | {} | {} | {} |{}",
                    r.name,
                    granule_name(r.granule_bytes),
                    us(r.us_per_page),
                    us(r.us_per_page_min),
                    us(r.us_per_page_max),
                    r.gib_per_s,
                    r.ratio_to_kernel,
                    r.ratio_to_backing_kernel
                        .map_or("-".into(), |x| format!("{x:.2}x")),
                    r.ratio_to_uffd,
                    f(r.resolve_p50_us),
                    f(r.fault_p50_us),
                    f(r.fault_p99_us),
                    r.pin_p50_us.map_or("-".into(), |x| format!("{x:.2}")),
                    r.drain_us_per_pin.map_or("-".into(), |x| format!("{x:.2}")),
                    r.pins_per_fault.map_or("-".into(), |x| format!("{x:.2}")),
                    match (base, b) {
                        (false, _) => String::new(),
                        (true, Some(b)) => format!(" {b:.2} | {:.2}x |", b / r.us_per_page),
                        (true, None) => " - | - |".into(),
                    }
                );
            }
            if let Some(f) = &self.baseline_file {
                let _ = writeln!(w, "\nBaseline: {f}.");
            }
            let _ = writeln!(w);
            let facts: Vec<&TouchRow> = self
                .touch
                .iter()
                .filter(|r| r.kvm_2m_share.is_some() || r.huge_folio_share.is_some())
                .filter(|r| {
                    r.backing != Backing::Shmem || r.name == "kernel" || r.name == "pin:none"
                })
                .collect();
            if !facts.is_empty() {
                let _ = writeln!(
                    w,
                    "What the pin and KVM really got (medians over the runs; read while each VM ran)\n"
                );
                let _ = writeln!(
                    w,
                    "| path | granule asked | guest memory KVM mapped with 2 MiB entries | resident granules in 2 MiB folios |"
                );
                let _ = writeln!(w, "|---|---|---|---|");
                let pct = |v: Option<f64>| v.map_or("-".into(), |x| format!("{:.0}%", x * 100.0));
                for r in facts {
                    let _ = writeln!(
                        w,
                        "| {} | {} | {} | {} |",
                        r.name,
                        granule_name(r.granule_bytes),
                        pct(r.kvm_2m_share),
                        pct(r.huge_folio_share)
                    );
                }
                let _ = writeln!(w);
            }
        }
        if !self.drain_in_vm.is_empty() {
            let _ = writeln!(
                w,
                "Drain policies in the VM (from the rows above; over none: median over rounds of the same round's difference)\n"
            );
            let _ = writeln!(
                w,
                "| memory | policy | drain µs/pin (resolver) | guest µs/page over none | over none |"
            );
            let _ = writeln!(w, "|---|---|---|---|---|");
            for d in &self.drain_in_vm {
                let _ = writeln!(
                    w,
                    "| {} | {} | {:.2} | {:+.3} | {:+.1}% |",
                    d.backing,
                    d.policy,
                    d.drain_us_per_pin,
                    d.over_none_us_per_page,
                    d.over_none_pct
                );
            }
            let _ = writeln!(w);
        }
        if !self.drain_micro.is_empty() {
            let _ = writeln!(w, "Drains and pins alone (no VM)\n");
            let _ = writeln!(w, "| call | CPUs with a pending batch | p50 µs | p90 µs |");
            let _ = writeln!(w, "|---|---|---|---|");
            for d in &self.drain_micro {
                let _ = writeln!(
                    w,
                    "| {} | {} | {:.2} | {:.2} |",
                    d.name,
                    d.cpus_with_pending.map_or("-".into(), |c| c.to_string()),
                    d.p50_us,
                    d.p90_us
                );
            }
            let _ = writeln!(w);
        }
        if !self.launch.is_empty() {
            let _ = writeln!(w, "Launch: bare hello VM, back to back\n");
            let _ = writeln!(
                w,
                "| VM | how | VMs | first exit p50 ms | first exit p90 ms | guest exit p50 ms | wall p50 ms | VMs/s |"
            );
            let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
            for l in &self.launch {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {} | {:.2} | {:.1} |",
                    l.name,
                    if l.in_process {
                        "in process"
                    } else {
                        "process per VM"
                    },
                    l.vms,
                    l.first_exit_ms_p50
                        .map_or("-".into(), |x| format!("{x:.2}")),
                    l.first_exit_ms_p90
                        .map_or("-".into(), |x| format!("{x:.2}")),
                    l.guest_exit_ms_p50
                        .map_or("-".into(), |x| format!("{x:.2}")),
                    l.wall_ms_p50,
                    l.vms_per_s
                );
            }
            let _ = writeln!(w);
        }
        if !self.rss.is_empty() {
            let _ = writeln!(w, "VMM resident memory while the VM runs\n");
            let _ = writeln!(
                w,
                "| VM | guest MiB | RssAnon KiB | RssFile KiB | RssShmem KiB (guest) | VMM RSS besides guest MiB |"
            );
            let _ = writeln!(w, "|---|---|---|---|---|---|");
            for r in &self.rss {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {:.1} |",
                    r.name,
                    r.guest_mem_mib,
                    r.rss_anon_kb,
                    r.rss_file_kb,
                    r.rss_shmem_kb,
                    r.vmm_rss_kb as f64 / 1024.0
                );
            }
            let _ = writeln!(w);
        }
        if let Some(q) = &self.qemu {
            q.human(w);
        }
        if !self.goals.is_empty() {
            let _ = writeln!(w, "Goals (issue 8)\n");
            let _ = writeln!(w, "| goal | target | measured | met |");
            let _ = writeln!(w, "|---|---|---|---|");
            for g in &self.goals {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} |",
                    g.goal,
                    g.target,
                    g.measured,
                    if g.met { "yes" } else { "**no**" }
                );
            }
            let _ = writeln!(w);
        }
        for c in &self.host_changes {
            let _ = writeln!(w, "Host setting changed for the run: {c}.");
        }
        for x in &self.skipped {
            let _ = writeln!(w, "**Not measured**: {x}.");
        }
        if !self.host_changes.is_empty() || !self.skipped.is_empty() {
            let _ = writeln!(w);
        }
        let h = &self.host;
        let _ = writeln!(
            w,
            "`{}` — host: kernel {}, CPU {} ({} CPUs), KVM {}; fault CPU {}, pin CPU {}; load average {} before, {} after; {} UTC; {:.0} s.",
            self.command,
            h.kernel_release,
            h.cpu,
            h.online_cpus,
            h.kvm_backend.split(" (").next().unwrap_or(""),
            self.fault_cpu,
            self.pin_cpu,
            self.loadavg_before,
            self.loadavg_after,
            self.date_utc,
            self.wall_s
        );
        s
    }
}

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
        date_utc: utc_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        host: HostFacts::probe(),
        loadavg_before,
        loadavg_after: String::new(),
        mem_bytes: a.mem,
        reps: a.reps,
        fault_cpu: place.fault_cpu,
        pin_cpu: place.pin_cpu,
        fault_ahead: a.fault_ahead.clone(),
        touch: Vec::new(),
        drain_in_vm: Vec::new(),
        drain_micro: Vec::new(),
        launch: Vec::new(),
        rss: Vec::new(),
        qemu: None,
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
fn check_mem(mem: u64, huge: bool, qemu: bool) -> Result<(), String> {
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
fn qemu_unusable(a: &BenchArgs) -> Result<Option<String>, String> {
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
fn qemu_section(
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
fn load_baseline(p: &std::path::Path) -> Result<Vec<(String, f64)>, String> {
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

/// One bar of the chart.
struct Bar {
    label: String,
    median: f64,
    min: f64,
    max: f64,
    colour: plotters::style::RGBColor,
    baseline: Option<f64>,
}

/// The chart's bars: every touch row (2 MiB rows in lighter colours), then QEMU's rows.
fn chart_bars(r: &BenchReport) -> Vec<Bar> {
    use plotters::style::RGBColor;
    let policy_colour = |t: &TouchRow| match (t.stage2, t.policy) {
        (Stage2::Kernel | Stage2::Eager, _) => RGBColor(60, 60, 60),
        (Stage2::Uffd, _) => RGBColor(0, 170, 190),
        (_, DrainPolicy::None) => RGBColor(215, 40, 40),
        (_, DrainPolicy::MlockDrain) => RGBColor(30, 150, 50),
        (_, DrainPolicy::LruAddDrain) => RGBColor(40, 70, 210),
        (_, DrainPolicy::Retry) => RGBColor(180, 40, 180),
    };
    let lighten = |c: RGBColor| RGBColor(c.0 / 2 + 120, c.1 / 2 + 120, c.2 / 2 + 120);
    let mut bars: Vec<Bar> = r
        .touch
        .iter()
        .map(|t| {
            let c = policy_colour(t);
            Bar {
                label: t.name.clone(),
                median: t.us_per_page,
                min: t.us_per_page_min,
                max: t.us_per_page_max,
                colour: if t.granule_bytes > PAGE_SIZE as u64 {
                    lighten(c)
                } else {
                    c
                },
                baseline: r.baseline_of(&t.name),
            }
        })
        .collect();
    if let Some(q) = &r.qemu {
        bars.extend(q.rows.iter().filter(|x| x.vmm == "qemu").filter_map(|x| {
            Some(Bar {
                label: format!("QEMU, {}", x.memory.split(" (").next().unwrap_or("")),
                median: x.first_touch_us_per_page?,
                min: x.first_touch_min?,
                max: x.first_touch_max?,
                colour: RGBColor(230, 130, 0),
                baseline: None,
            })
        }));
    }
    bars
}

/// Horizontal bars of first-touch µs per 4 KiB page per row (log scale), with the
/// fastest–slowest repetition as a whisker: 4 KiB rows, 2 MiB rows (lighter) and QEMU
/// (orange); the baseline's bar (grey, above) next to each row when given.
pub fn touch_chart(path: &std::path::Path, r: &BenchReport) -> Result<(), String> {
    use plotters::prelude::*;
    let perr = |e: &dyn std::fmt::Debug| format!("plotting {} failed: {e:?}", path.display());
    let bars = chart_bars(r);
    let n = bars.len().max(1) as i32;
    let xmax = bars
        .iter()
        .map(|b| b.max.max(b.baseline.unwrap_or(0.0)))
        .fold(10.0f64, f64::max)
        * 4.0;
    let xmin = bars
        .iter()
        .map(|b| b.min)
        .filter(|x| *x > 0.0)
        .fold(1.0f64, f64::min)
        / 2.0;
    let height = (90 + 28 * n) as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(&e))?;
    let mut title = format!(
        "First touch, {} MiB guest: µs per 4 KiB page (median; whisker: min–max of {}); lighter: 2 MiB granules; orange: QEMU",
        r.mem_bytes >> 20,
        r.reps
    );
    if !r.baseline.is_empty() {
        title.push_str("; grey: baseline");
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(200)
        .build_cartesian_2d((xmin..xmax).log_scale(), (0..n - 1).into_segmented())
        .map_err(|e| perr(&e))?;
    // Row 0 (kernel) at the top.
    let y = |i: usize| n - 1 - i as i32;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n as usize)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels
                .get((n - 1 - *i) as usize)
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_style(("sans-serif", 12))
        .x_desc("µs per 4 KiB page (log scale)")
        .draw()
        .map_err(|e| perr(&e))?;
    let has_base = !r.baseline.is_empty();
    for (i, b) in bars.iter().enumerate() {
        let (lo, hi) = (SegmentValue::Exact(y(i)), SegmentValue::Exact(y(i) + 1));
        let mut bar = Rectangle::new([(xmin, lo), (b.median, hi)], b.colour.mix(0.8).filled());
        // Pixel margins: top, bottom, left, right (the baseline takes the top half).
        bar.set_margin(if has_base { 14 } else { 5 }, 3, 0, 0);
        chart.draw_series([bar]).map_err(|e| perr(&e))?;
        if let Some(base) = b.baseline {
            let (lo, hi) = (SegmentValue::Exact(y(i)), SegmentValue::Exact(y(i) + 1));
            let mut bb = Rectangle::new([(xmin, lo), (base, hi)], RGBColor(175, 175, 175).filled());
            bb.set_margin(3, 15, 0, 0);
            chart.draw_series([bb]).map_err(|e| perr(&e))?;
        }
    }
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            ErrorBar::new_horizontal(
                SegmentValue::CenterOf(y(i)),
                b.min,
                b.median,
                b.max,
                BLACK.filled(),
                6,
            )
        }))
        .map_err(|e| perr(&e))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let mut s = us(b.median);
            if let Some(base) = b.baseline {
                s.push_str(&format!(" (was {})", us(base)));
            }
            Text::new(
                s,
                (b.max * 1.08, SegmentValue::CenterOf(y(i))),
                ("sans-serif", 11),
            )
        }))
        .map_err(|e| perr(&e))?;
    root.present().map_err(|e| perr(&e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_distinct_name_and_baselines_come_first() {
        let all = [Backing::Shmem, Backing::Hugetlb, Backing::ShmemThp];
        let v = touch_specs(&[0, 8, 64], &all);
        assert_eq!(v[0].name, "kernel");
        assert_eq!(v[2].name, "uffd");
        let mut names: Vec<_> = v.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), v.len());
        assert!(names.contains(&"pin:mlock-drain,fa=64".to_owned()));
        assert!(names.contains(&"hugetlb:pin:lru-add-drain".to_owned()));
        assert!(names.contains(&"shmem-thp:kernel".to_owned()));
        assert_eq!(touch_specs(&[0], &[Backing::Shmem]).len(), 8);
        // 8 + 4 fault-ahead rows at 4 KiB, 7 hugetlb rows, 4 shmem-thp rows.
        assert_eq!(v.len(), 8 + 4 + 7 + 4);
        assert!(
            v.iter()
                .all(|s| s.backing.granule() == 4096 || !s.name.contains("fa="))
        );
    }

    #[test]
    fn utc_date_is_well_formed() {
        let d = utc_now();
        assert_eq!(d.len(), 16, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
