// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The drain section: each policy's cost in the VM (from the touch rows) and alone
//! (micro-benchmarks of the local and all-CPU drains and of the long-term pin).

use std::sync::mpsc;
use std::time::Instant;

use serde::Serialize;
use vmm::stage2::drain::{DrainPolicy, Drainer};
use vmm::stage2::pin::PinTable;
use vmm::sys::{self, Mapping, PAGE_SIZE};
use vmm::{Backing, HostLimits, Stage2};

use super::common::pct;
use super::touch::{TouchRow, paired, row_name};

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

/// Each policy against `pin:none` of the same backing.
pub(super) fn drain_in_vm(touch: &[TouchRow]) -> Vec<DrainInVm> {
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

/// A helper thread bound to one CPU that faults fresh shmem pages in on request (creating a
/// pending per-CPU LRU-add batch there).
pub(super) struct Dirtier {
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
pub(super) fn drain_micro(host: &HostLimits) -> Result<Vec<DrainMicro>, String> {
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

pub(super) const MICRO_N: usize = 200;

pub(super) fn micro(name: &str, cpus: Option<usize>, xs: &[f64]) -> DrainMicro {
    DrainMicro {
        name: name.to_owned(),
        cpus_with_pending: cpus,
        samples: xs.len(),
        p50_us: pct(xs, 0.5),
        p90_us: pct(xs, 0.9),
    }
}

/// The local drain (mlock-drain), on the fault CPU right after a fault-in there.
pub(super) fn local_drain_micro(cpu: usize) -> Result<Vec<DrainMicro>, String> {
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
pub(super) fn all_drain_and_pin_micro(order: &[usize]) -> Result<Vec<DrainMicro>, String> {
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
    out.extend(fault_in_and_pin_micro()?);
    Ok(out)
}

/// What the pKVM-exact pin costs against its parts: a write fault-in of an untouched page of
/// an mlocked memfd view alone, then the long-term pin of an untouched page (the pin faults
/// it in itself, as pKVM's does; its allocation avoids ZONE_MOVABLE and CMA, so nothing
/// migrates), one page per call and 16 per call.
fn fault_in_and_pin_micro() -> Result<Vec<DrainMicro>, String> {
    let pages = 4096u64;
    let file = sys::memfd("pinvmm-bench-pin-fresh", pages * PAGE_SIZE as u64)
        .map_err(|e| e.to_string())?;
    let view = Mapping::shared(&file, pages as usize * PAGE_SIZE).map_err(|e| e.to_string())?;
    view.mlock_onfault().map_err(|e| e.to_string())?;
    let hva = |p: u64| view.addr() + p * PAGE_SIZE as u64;
    let mut out = Vec::new();
    let mut xs = Vec::with_capacity(MICRO_N);
    for p in 0..MICRO_N as u64 {
        let t = Instant::now();
        view.touch_write(p as usize * PAGE_SIZE)
            .map_err(|e| e.to_string())?;
        xs.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    out.push(micro(
        "write fault-in of an untouched page (mlocked view), no pin",
        None,
        &xs,
    ));
    let mut table = PinTable::new(pages);
    let first = MICRO_N as u64;
    let half = first + (pages - first) / 2;
    let mut xs = Vec::with_capacity((half - first) as usize);
    for p in first..half {
        let t = Instant::now();
        table.pin(p, hva(p)).map_err(|e| e.to_string())?;
        xs.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    out.push(micro(
        "long-term pin of an untouched page (the pin faults it in), one page per call",
        None,
        &xs,
    ));
    let mut xs = Vec::with_capacity(((pages - half) / 16) as usize);
    let mut p = half;
    while p + 16 <= pages {
        let t = Instant::now();
        table.pin_range(p, hva(p), 16).map_err(|e| e.to_string())?;
        xs.push(t.elapsed().as_nanos() as f64 / 1e3 / 16.0);
        p += 16;
    }
    out.push(micro(
        "long-term pin of untouched pages, 16 pages per call, per page",
        None,
        &xs,
    ));
    Ok(out)
}
