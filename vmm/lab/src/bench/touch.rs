// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The touch section: first-touch cost of guest memory per stage-2 path, drain policy,
//! fault-ahead and backing (4 KiB and 2 MiB granules); the VMs every section runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use guest::Payload;
use serde::Serialize;
use vmm::host::hugepages::{HUGE_PAGE_SIZE, HostSetting};
use vmm::report::{Outcome, Report};
use vmm::stage2::drain::DrainPolicy;
use vmm::stats::median;
use vmm::sys::PAGE_SIZE;
use vmm::{Backing, FaultIn, HostLimits, Stage2, VmConfig};

use super::args::BenchArgs;

/// One first-touch configuration.
#[derive(Debug, Clone, Serialize)]
pub struct TouchRow {
    pub name: String,
    /// Busy threads running beside the VM (0: a quiet row; see `pinvmm bench --load`).
    pub load: usize,
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
    /// Over the `uffd` row of the same load.
    pub ratio_to_uffd: f64,
    /// A loaded row over its quiet row (median of the per-round ratios).
    pub ratio_to_quiet: Option<f64>,
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
    /// Waits of the resolver threads that slept at once (more runnable tasks than CPUs, and
    /// one of them outside the VM or sharing the waiting thread's CPU).
    pub crowded_waits: u64,
    /// Run-queue wait of the vCPU and resolver threads, µs per fault.
    pub runq_wait_us_per_fault: Option<f64>,
    /// What the host really used (report.granule).
    pub kvm_pages_4k: Option<u64>,
    pub kvm_pages_2m: Option<u64>,
    pub resident_granules: Option<u64>,
    pub huge_folio_granules: Option<u64>,
}

pub(super) struct TouchSpec {
    pub(super) name: String,
    pub(super) load: usize,
    pub(super) backing: Backing,
    pub(super) stage2: Stage2,
    pub(super) policy: DrainPolicy,
    pub(super) fault_in: FaultIn,
    pub(super) fault_ahead: u32,
}

/// The row name: as before for shmem (so that baselines of earlier runs still match), with
/// the backing in front otherwise.
pub(super) fn row_name(backing: Backing, base: &str) -> String {
    match backing {
        Backing::Shmem => base.to_owned(),
        b => format!("{b}:{base}"),
    }
}

/// The name of a row measured with busy threads beside it.
pub(super) fn loaded_name(base: &str) -> String {
    format!("loaded:{base}")
}

/// Every row: the quiet ones, then (with `load` busy threads) the loaded ones.
pub(super) fn touch_specs(
    fault_ahead: &[u32],
    backings: &[Backing],
    load: usize,
) -> Vec<TouchSpec> {
    let s = |backing, name: &str, stage2, policy, fault_in, fa| TouchSpec {
        name: row_name(backing, name),
        load: 0,
        backing,
        stage2,
        policy,
        fault_in,
        fault_ahead: fa,
    };
    // The rows keep the touch they were measured with (a stress model; the
    // pin:*,fault-in=pin row is the pKVM-exact one).
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
    // pKVM-exact: the pin faults the page in itself.
    for p in [DrainPolicy::None, DrainPolicy::MlockDrain] {
        v.push(s(
            sh,
            &format!("pin:{},fault-in=pin", p.name()),
            Stage2::Pin,
            p,
            FaultIn::Pin,
            0,
        ));
    }
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
    // Under load: the baselines and both models' pinning path with and without the drain.
    if load > 0 {
        let quiet: Vec<TouchSpec> = v
            .iter()
            .filter(|t| t.backing == sh && LOADED_ROWS.contains(&t.name.as_str()))
            .map(|t| TouchSpec {
                name: loaded_name(&t.name),
                load,
                backing: t.backing,
                stage2: t.stage2,
                policy: t.policy,
                fault_in: t.fault_in,
                fault_ahead: t.fault_ahead,
            })
            .collect();
        v.extend(quiet);
    }
    v
}

/// The rows measured again under load.
const LOADED_ROWS: [&str; 6] = [
    "kernel",
    "uffd",
    "pin:none",
    "pin:mlock-drain",
    "pin:none,fault-in=pin",
    "pin:mlock-drain,fault-in=pin",
];

/// Makes a huge page backing usable for the run: nothing to do when the host already offers
/// it; as root, a [`HostSetting`] that raises the hugetlb pool or allows shmem THP until it is
/// dropped; otherwise why the rows must be skipped.
pub(super) fn prepare_backing(
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

pub(super) fn vm_config(
    payload: Payload,
    mem: u64,
    host: &HostLimits,
    spec: &TouchSpec,
) -> Result<VmConfig, String> {
    let mut c = VmConfig::new(payload, mem, host.default_placement());
    c.backing = spec.backing;
    c.stage2 = spec.stage2;
    c.policy = spec.policy;
    // KVM's own fault path has no fault-in to model (the table refuses `--fault-in touch`
    // there, vmm::applies): its rows run with the default.
    c.fault_in = if spec.stage2 == Stage2::Kernel {
        FaultIn::Pin
    } else {
        spec.fault_in
    };
    c.fault_ahead = spec.fault_ahead;
    c.timeout = Duration::from_secs(120);
    c.validate(host)
        .map_err(|e| format!("{}: {e}", spec.name))?;
    Ok(c)
}

pub(super) fn run_vm(cfg: &VmConfig, what: &str) -> Result<Report, String> {
    let r = Report::from(vmm::build(cfg).map_err(|e| format!("{what}: {e}"))?.run());
    if r.outcome != Outcome::Completed {
        return Err(format!("{what}: {:?}: {}", r.outcome, r.summary));
    }
    Ok(r)
}

pub(super) fn med_of<T>(xs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&xs.iter().map(f).collect::<Vec<_>>())
}

/// The first-touch rows. `skipped` and `changes` collect the huge page backings that could
/// not be measured and the host settings changed for them.
pub(super) fn touch_section(
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
    let specs = touch_specs(&a.fault_ahead, &usable, a.load());
    let cfgs: Vec<VmConfig> = specs
        .iter()
        .map(|s| vm_config(Payload::Memtouch, a.mem, host, s))
        .collect::<Result<_, _>>()?;
    let mut samples: Vec<Vec<TouchSample>> = vec![Vec::new(); specs.len()];
    let quiet: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].load == 0).collect();
    let loaded: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].load > 0).collect();
    for round in 0..a.reps as usize {
        // Quiet rows, then the loaded ones with the busy threads running; the starting row
        // of each group rotates each round, so position effects spread over the rows too.
        for group in [&quiet, &loaded] {
            let _busy = match group.first() {
                Some(&i) if specs[i].load > 0 => Some(Busy::start(specs[i].load)),
                _ => None,
            };
            for k in 0..group.len() {
                let i = group[(k + round) % group.len()];
                samples[i].push(touch_sample(
                    &run_vm(&cfgs[i], &specs[i].name)?,
                    &specs[i].name,
                )?);
            }
        }
        log(&format!("touch: round {}/{} done", round + 1, a.reps));
    }
    let med_us: Vec<f64> = samples
        .iter()
        .map(|s| med_of(s, |x| x.us_per_page))
        .collect();
    let of = |name: &str| specs.iter().position(|s| s.name == name);
    let med = |name: &str| of(name).map(|i| med_us[i]);
    let at_load = |spec: &TouchSpec, base: &str| {
        if spec.load > 0 {
            loaded_name(base)
        } else {
            base.to_owned()
        }
    };
    let rows: Vec<TouchRow> = specs
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
            let kernel = med(&at_load(spec, "kernel")).unwrap_or(f64::NAN);
            let uffd = med(&at_load(spec, "uffd")).unwrap_or(f64::NAN);
            TouchRow {
                name: spec.name.clone(),
                load: spec.load,
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
                ratio_to_backing_kernel: (spec.load == 0)
                    .then(|| med(&row_name(spec.backing, "kernel")).map(|k| us / k))
                    .flatten(),
                ratio_to_uffd: us / uffd,
                ratio_to_quiet: None,
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
        .collect();
    // Loaded over quiet, round by round.
    let quiet_of = |r: &TouchRow| {
        let base = r.name.strip_prefix("loaded:")?;
        rows.iter().find(|q| q.load == 0 && q.name == base)
    };
    let ratios: Vec<Option<f64>> = rows
        .iter()
        .map(|r| quiet_of(r).map(|q| paired(r, q, |a, b| a / b)))
        .collect();
    Ok(rows
        .into_iter()
        .zip(ratios)
        .map(|(r, q)| TouchRow {
            ratio_to_quiet: q,
            ..r
        })
        .collect())
}

/// One VM's first-touch figures from its report.
fn touch_sample(r: &Report, name: &str) -> Result<TouchSample, String> {
    let t = &r.timing;
    let res = r.resolver.clone().unwrap_or_default();
    let faults = res.faults.max(1) as f64;
    let waits: Vec<u64> = res
        .threads
        .iter()
        .chain(r.vcpus.iter().filter_map(|v| v.sched.as_ref()))
        .map(|s| s.runq_wait_ns)
        .collect();
    Ok(TouchSample {
        us_per_page: t
            .first_touch_us_per_page
            .ok_or_else(|| format!("{name}: no first-touch marks"))?,
        guest_us_per_touched_page: t.guest_us_per_touched_page,
        setup_ms: t.setup_ms,
        faults: res.faults,
        pins: res.pins.ok,
        fault_p50_us: res.fault_latency.p50_us,
        fault_p99_us: res.fault_latency.p99_us,
        resolve_p50_us: res.resolve_latency.p50_us,
        pin_p50_us: res.pin_latency.p50_us,
        drain_ns: res.drain.total_ns,
        crowded_waits: res.crowded_waits,
        runq_wait_us_per_fault: (res.faults > 0 && !waits.is_empty())
            .then(|| waits.iter().sum::<u64>() as f64 / 1e3 / faults),
        kvm_pages_4k: r.granule.kvm_pages_4k,
        kvm_pages_2m: r.granule.kvm_pages_2m,
        resident_granules: r.granule.resident_granules,
        huge_folio_granules: r.granule.huge_folio_granules,
    })
}

/// `n` threads that do nothing but spin (each a CPU-bound task, like `sh -c 'while :; do :;
/// done'`), in this process, so in the VMs' scheduling group: the load of `--load`. They stop
/// when this is dropped. Thread `i` is placed on CPU `i mod CPUs`, so `--load` = the CPU count
/// loads every CPU: left to the scheduler, both busy threads of `--load 2` sometimes shared
/// one CPU and left the vCPU's alone, and such loaded samples ran at quiet speed (measured:
/// loaded `uffd` 102.7 µs/page in one run against 169-181 in the runs beside it).
pub(super) struct Busy {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Busy {
    pub(super) fn start(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
        let threads = (0..n)
            .filter_map(|i| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("bench-busy{i}"))
                    .spawn(move || {
                        // Not placed (a CPU outside this process's mask): left to the
                        // scheduler, as before.
                        let _ = vmm::sys::pin_thread_to_cpu(i % cpus);
                        while !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    })
                    .ok()
            })
            .collect();
        // Let them start spinning before the first VM starts.
        std::thread::sleep(Duration::from_millis(50));
        Self { stop, threads }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Median over rounds of `f(a, b)` on the two rows' first-touch µs/page of the same round:
/// rows of one round ran next to each other, so drift of a shared host cancels out.
pub(super) fn paired(a: &TouchRow, b: &TouchRow, f: impl Fn(f64, f64) -> f64) -> f64 {
    let v: Vec<f64> = a
        .samples
        .iter()
        .zip(&b.samples)
        .map(|(x, y)| f(x.us_per_page, y.us_per_page))
        .collect();
    median(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_distinct_name_and_baselines_come_first() {
        let all = [Backing::Shmem, Backing::Hugetlb, Backing::ShmemThp];
        let v = touch_specs(&[0, 8, 64], &all, 0);
        assert_eq!(v[0].name, "kernel");
        assert_eq!(v[2].name, "uffd");
        let mut names: Vec<_> = v.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), v.len());
        assert!(names.contains(&"pin:mlock-drain,fa=64".to_owned()));
        assert!(names.contains(&"hugetlb:pin:lru-add-drain".to_owned()));
        assert!(names.contains(&"shmem-thp:kernel".to_owned()));
        assert_eq!(touch_specs(&[0], &[Backing::Shmem], 0).len(), 9);
        // 9 + 4 fault-ahead rows at 4 KiB, 7 hugetlb rows, 4 shmem-thp rows.
        assert_eq!(v.len(), 9 + 4 + 7 + 4);
        // Under load: six more, each named after its quiet row, after every quiet row.
        let l = touch_specs(&[0], &[Backing::Shmem], 2);
        assert_eq!(l.len(), 9 + 6);
        assert!(l[..9].iter().all(|s| s.load == 0));
        assert!(
            l[9..]
                .iter()
                .all(|s| s.load == 2 && s.name.starts_with("loaded:"))
        );
        for s in &l[9..] {
            let q = s.name.strip_prefix("loaded:").unwrap();
            assert!(l.iter().any(|x| x.load == 0 && x.name == q), "{q}");
        }
        assert!(
            v.iter()
                .all(|s| s.backing.granule() == 4096 || !s.name.contains("fa="))
        );
    }
}
