// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The VMM's loader: what it writes into guest memory before boot, through which mapping, on
//! which thread and CPU — the pages a pKVM guest is exposed through (docs/DESIGN.md,
//! *pKVM-exact*).
//!
//! crosvm's guest memory is one memfd mapping, `mlock2(MLOCK_ONFAULT)`ed before anything is
//! loaded; its main thread then reads the kernel and initrd straight into it (`pread`) and
//! copies the device tree in (`arch::aarch64::linux` lists the exact calls). Each such write
//! faults a fresh shmem folio into the mlocked mapping **on the loader's CPU**: the folio
//! enters that CPU's LRU-add batch and its mlock batch. KVM later pins the page on the vCPU's
//! thread. So, pKVM-exact ([`LoadVia::Mlocked`], the default for protected VMs and for normal
//! VMs with `--fault-in pin`):
//!
//! - a **loader thread** writes the payload or Linux boot files and the `--prefill` pages
//!   through the mlocked pin view, placed on `--fault-cpu` (or wherever the scheduler puts
//!   it, `--cpus free`);
//! - nothing else is done to the folios: no settling drain (the batches are left exactly as
//!   the writes leave them);
//! - then the policy's drain, on the loader thread: `mlock-drain` drains the loader's CPU
//!   (what a VMM that drains after writing guest memory does), `lru-add-drain` every CPU;
//! - the report keeps the state of the last pages written (root only: PFN zone and
//!   kpageflags), the ones that can still sit in the loader CPU's batches when the guest
//!   starts.
//!
//! The stress models ([`LoadVia::PageCache`]) write through the not-mlocked loader view on the
//! calling thread, as pinvmm always did before: the pages sit in the page cache and on the
//! LRU, and the resolver's fault-in touch mlocks them later, on the fault CPU.

use std::fs::File;
use std::time::Instant;

use serde::Serialize;

use crate::arch::{self, LinuxBoot};
use crate::config::VmConfig;
use crate::linux::{self, LinuxError, LinuxFiles};
use crate::memory::{GuestMemory, LoadVia, MemoryError};
use crate::stage2::drain::{DrainError, DrainStats, Drainer};
use crate::stage2::efault::ProtectedExplain;
use crate::sys::{self, PAGE_SIZE};

/// What the vCPUs boot, and so which way the VM is built, run and judged (in an ordinary or a
/// protected VM alike: `VmConfig::vm_type` says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// A bare payload; its first instruction at `entry`.
    Payload { entry: u64 },
    /// A Linux kernel (`--kernel`): it ends as a whole, with its console's result line.
    Linux(LinuxBoot),
}

impl Boot {
    /// The Linux boot, for a Linux guest.
    pub fn linux(&self) -> Option<&LinuxBoot> {
        match self {
            Boot::Linux(b) => Some(b),
            Boot::Payload { .. } => None,
        }
    }
}

/// Why the guest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot start the loader thread: {0}")]
    Thread(std::io::Error),
    #[error("the loader thread panicked")]
    Panicked,
    #[error("cannot place the loader thread on CPU {cpu}: {err}")]
    Cpu { cpu: usize, err: std::io::Error },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
    #[error(transparent)]
    Linux(#[from] LinuxError),
    /// The drainer's scratch page, or the policy's drain after loading.
    #[error("the loader's drain: {0}")]
    Drain(#[from] DrainError),
}

/// What the loader did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LoaderReport {
    /// Which mapping it wrote through.
    pub via: Option<LoadVia>,
    /// The CPU the loader thread was placed on; None when it was not placed (`--cpus free`,
    /// or page-cache loading on the calling thread).
    pub placed_cpu: Option<usize>,
    /// The CPU it ran on when it started and when it finished writing.
    pub cpu_start: Option<usize>,
    pub cpu_end: Option<usize>,
    /// Guest pages resident in the mapping it wrote through, once it was done.
    pub pages: u64,
    /// Of those, `--prefill` pages.
    pub prefilled_pages: u64,
    pub ms: f64,
    /// The policy's drain after loading (mlocked loading only).
    pub drain: DrainStats,
    /// The last pages it wrote, as the kernel saw them right after loading (and its drain).
    pub tail: Option<TailState>,
}

/// The state of the last pages the loader wrote, in write order (the last is the last
/// written), read from /proc/self/pagemap and /proc/kpageflags (root only). Of the last 31
/// pages written through the mlocked view, those still in the loader CPU's mlock batch are
/// what a pin on another CPU can fail on (docs/DESIGN.md §1).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TailState {
    /// One entry per page: `GPA:flags`, flags as `L` (on the LRU), `M` (mlocked), `U`
    /// (unevictable), `m` (in ZONE_MOVABLE/CMA), a dot when clear.
    pub pages: Vec<String>,
    /// Pages on the LRU, mlocked and not unevictable, in movable memory: their mlock-batch
    /// entry is still pending (docs/FAILURES.md rule 2) — pinned on another CPU they fail.
    pub pending_on_lru: u64,
    /// Pages not on the LRU: still in an LRU-add batch; the old GUP check drains every CPU
    /// for them, which releases the mlock batch too.
    pub off_lru: u64,
    /// Pages whose mlock was processed (unevictable).
    pub processed: u64,
}

/// Pages of the tail looked at: the mlock batch holds at most 31 folios (PAGEVEC_SIZE, 6.9+).
const TAIL_PAGES: usize = 31;

/// Loads the guest `cfg` describes into `mem` through `mem.load_via()`: on a loader thread
/// placed on the fault CPU for mlocked loading, on the calling thread for page-cache loading.
/// Returns what the vCPUs boot and what the loader did.
/// `explain` (protected VMs) records each page the loader writes through the mlocked view, to
/// explain a failed pin later (`stage2::efault`).
pub fn load(
    cfg: &VmConfig,
    mem: &GuestMemory,
    explain: Option<&ProtectedExplain>,
) -> Result<(Boot, LoaderReport), LoadError> {
    // Opening and checking the files (the whole initrd read through) is done here, before
    // the loader thread: its own system calls are then only the loading ones.
    let files = match &cfg.linux {
        Some(l) => Some(linux::open_files(l, mem.size())?),
        None => None,
    };
    let via = mem.load_via();
    if via == LoadVia::PageCache {
        let t = Instant::now();
        let (boot, order) = write_guest(cfg, mem, files)?;
        let report = LoaderReport {
            via: Some(via),
            cpu_start: sys::current_cpu(),
            cpu_end: sys::current_cpu(),
            pages: resident(mem),
            prefilled_pages: order.prefilled,
            ms: t.elapsed().as_secs_f64() * 1e3,
            ..Default::default()
        };
        return Ok((boot, report));
    }
    let placed = (!cfg.cpus.free).then_some(cfg.cpus.fault_cpu);
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("pinvmm-loader".into())
            .spawn_scoped(s, || loader_thread(cfg, mem, files, placed, explain))
            .map_err(LoadError::Thread)?
            .join()
            .map_err(|_| LoadError::Panicked)?
    })
}

fn loader_thread(
    cfg: &VmConfig,
    mem: &GuestMemory,
    files: Option<LinuxFiles>,
    placed: Option<usize>,
    explain: Option<&ProtectedExplain>,
) -> Result<(Boot, LoaderReport), LoadError> {
    let t = Instant::now();
    if let Some(cpu) = placed {
        sys::pin_thread_to_cpu(cpu).map_err(|err| LoadError::Cpu { cpu, err })?;
    }
    let mut drainer = Drainer::new(cfg.policy)?;
    if let Some(x) = explain {
        drainer = drainer.with_counters(x.counters.clone());
    }
    let cpu_start = sys::current_cpu();
    let (boot, order) = write_guest(cfg, mem, files)?;
    let cpu_end = sys::current_cpu();
    if let Some(x) = explain {
        // In write order: each page's stamp says how many mlocked faults came after it.
        let mut seen = std::collections::HashSet::new();
        for &p in order.pages.iter().filter(|p| seen.insert(**p)) {
            x.wrote(p, cpu_end);
        }
    }
    // The loader wrote on its CPU; the pins come later, in KVM or the resolver: the policy's
    // drains run now, in the order the resolver runs them (local on this CPU, then all CPUs).
    drainer.after_fault_in(cpu_end.unwrap_or(cfg.cpus.fault_cpu))?;
    drainer.before_pin()?;
    if let Some(x) = explain {
        x.loaded();
    }
    let report = LoaderReport {
        via: Some(LoadVia::Mlocked),
        placed_cpu: placed,
        cpu_start,
        cpu_end,
        pages: resident(mem),
        prefilled_pages: order.prefilled,
        ms: t.elapsed().as_secs_f64() * 1e3,
        drain: drainer.stats,
        tail: tail_state(mem, &order.pages),
    };
    Ok((boot, report))
}

/// The guest pages the loader wrote, in write order (the tail is what matters).
#[derive(Debug, Default)]
struct WriteOrder {
    pages: Vec<u64>,
    prefilled: u64,
}

impl WriteOrder {
    fn range(&mut self, mem: &GuestMemory, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = (gpa - mem.base()) / PAGE_SIZE as u64;
        let last = (gpa + len - 1 - mem.base()) / PAGE_SIZE as u64;
        self.pages.extend(first..=last);
    }
}

/// Writes the boot image (payload, or Linux kernel, initrd and device tree) and then the
/// `--prefill` pages through `mem.loader()`, on the calling thread.
fn write_guest(
    cfg: &VmConfig,
    mem: &GuestMemory,
    files: Option<LinuxFiles>,
) -> Result<(Boot, WriteOrder), LoadError> {
    let boot_pages = (arch::DATA_START - arch::RAM_START) / PAGE_SIZE as u64;
    let mut order = WriteOrder::default();
    if let (Some(l), Some(files)) = (&cfg.linux, files) {
        let kernel_len = files.kernel_len();
        let initrd_len = files.initrd_len();
        let boot = linux::load(mem, cfg.vcpus, l, files)?;
        order.range(mem, boot.kernel.start, kernel_len);
        if let (Some(r), Some(_)) = (boot.initrd, initrd_len) {
            order.range(mem, r.start, r.len);
        }
        order.range(mem, boot.boot_info, boot_info_len(mem, boot.boot_info));
        // Prefill only free RAM: a marker inside the kernel, initrd or boot structures
        // would corrupt them.
        let busy = linux_busy_pages(&boot);
        let prefilled = mem.prefill(cfg.prefill_pct, |page| {
            let skip = page < boot_pages || busy.iter().any(|r| r.contains(&page));
            if !skip {
                order.pages.push(page);
            }
            skip
        })?;
        order.prefilled = prefilled;
        return Ok((Boot::Linux(boot), order));
    }
    let code = cfg.payload.code();
    let entry = arch::load_boot_image(mem, code)?;
    // The payload and, on arm64, the exception vectors with their boot stub.
    for (gpa, bytes) in arch::boot_segments(code)? {
        order.range(mem, gpa, bytes.len() as u64);
    }
    let prefilled = mem.prefill(cfg.prefill_pct, |page| {
        let skip = page < boot_pages;
        if !skip {
            order.pages.push(page);
        }
        skip
    })?;
    order.prefilled = prefilled;
    Ok((Boot::Payload { entry }, order))
}

/// Bytes of the boot structure at `gpa`: a device tree's `totalsize` (arm64), else one page.
fn boot_info_len(mem: &GuestMemory, gpa: u64) -> u64 {
    // Read through the not-mlocked loader view: no fault on the pin view.
    match mem.read_u64(gpa) {
        Ok(w) if (w as u32).swap_bytes() == 0xd00d_feed => {
            u64::from(((w >> 32) as u32).swap_bytes()).max(1)
        }
        _ => PAGE_SIZE as u64,
    }
}

/// Guest page ranges a Linux boot occupies before the first instruction (kernel with its BSS,
/// initrd, and the boot structure at `boot_info` with the 2 MiB a device tree may take).
pub fn linux_busy_pages(boot: &arch::LinuxBoot) -> Vec<std::ops::Range<u64>> {
    let page = PAGE_SIZE as u64;
    let pages = |start: u64, len: u64| {
        let first = start.saturating_sub(arch::RAM_START) / page;
        first..(start + len).saturating_sub(arch::RAM_START).div_ceil(page)
    };
    let mut busy = vec![
        pages(boot.kernel.start, boot.kernel.len),
        pages(boot.boot_info, 2 << 20),
    ];
    busy.extend(boot.initrd.map(|r| pages(r.start, r.len)));
    busy
}

/// Pages resident in the mapping the loader wrote through.
fn resident(mem: &GuestMemory) -> u64 {
    let r = match mem.load_via() {
        LoadVia::Mlocked => mem.pin_view().resident_pages(),
        LoadVia::PageCache => mem.loader_view_resident(),
    };
    r.map_or(0, |v| v.iter().filter(|p| **p).count() as u64)
}

/// The kpageflags bits the tail reads (include/uapi/linux/kernel-page-flags.h).
const KPF_LRU: u64 = 1 << 5;
const KPF_UNEVICTABLE: u64 = 1 << 18;
const KPF_MLOCKED: u64 = 1 << 33;

/// The state of the last [`TAIL_PAGES`] distinct pages written (root only).
fn tail_state(mem: &GuestMemory, order: &[u64]) -> Option<TailState> {
    use std::os::unix::fs::FileExt;
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let kpf = File::open("/proc/kpageflags").ok()?;
    let zones = crate::host::PfnZones::probe();
    let read = |f: &File, idx: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, idx * 8).ok()?;
        Some(u64::from_le_bytes(b))
    };
    let mut seen = std::collections::HashSet::new();
    let mut tail: Vec<u64> = order
        .iter()
        .rev()
        .copied()
        .filter(|p| seen.insert(*p))
        .take(TAIL_PAGES)
        .collect();
    tail.reverse();
    let view = mem.pin_view();
    let mut out = TailState::default();
    for page in tail {
        let entry = read(&pagemap, view.addr() / PAGE_SIZE as u64 + page)?;
        let pfn = entry & ((1 << 55) - 1);
        if entry >> 63 == 0 || pfn == 0 {
            return None; // not present, or PFNs hidden
        }
        let f = read(&kpf, pfn)?;
        let (l, m, u) = (
            f & KPF_LRU != 0,
            f & KPF_MLOCKED != 0,
            f & KPF_UNEVICTABLE != 0,
        );
        let movable = zones.unpinnable(pfn);
        out.pending_on_lru += u64::from(l && m && !u && movable);
        out.off_lru += u64::from(!l);
        out.processed += u64::from(u);
        let flag = |b: bool, c: char| if b { c } else { '.' };
        out.pages.push(format!(
            "{:#x}:{}{}{}{}",
            mem.base() + page * PAGE_SIZE as u64,
            flag(l, 'L'),
            flag(m, 'M'),
            flag(u, 'U'),
            flag(movable, 'm')
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::CpuPlacement;
    use crate::memory::Backing;
    use crate::stage2::drain::DrainPolicy;
    use guest::Payload;

    /// Whether `page` of `view` is mapped in this process (pagemap's present bit: readable
    /// without root, unlike mincore, which reports the page cache).
    fn mapped(view: &crate::sys::Mapping, page: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let pm = File::open("/proc/self/pagemap").unwrap();
        let mut b = [0u8; 8];
        pm.read_exact_at(&mut b, (view.addr() / 4096 + page) * 8)
            .unwrap();
        u64::from_le_bytes(b) >> 63 == 1
    }

    fn cfg(policy: DrainPolicy, prefill: u8) -> VmConfig {
        let cpu = sys::allowed_cpus()[0];
        let mut c = VmConfig::new(
            Payload::Memtouch,
            arch::MIN_MEM.max(4 << 20),
            CpuPlacement {
                fault_cpu: cpu,
                pin_cpu: cpu,
                free: false,
            },
        );
        c.policy = policy;
        c.prefill_pct = prefill;
        c
    }

    #[test]
    fn mlocked_loading_writes_through_the_pin_view_on_the_fault_cpu() {
        let c = cfg(DrainPolicy::MlockDrain, 50);
        let mut mem = GuestMemory::new(Backing::Shmem, arch::RAM_START, c.mem_size).unwrap();
        mem.set_load_via(LoadVia::Mlocked).unwrap();
        let (boot, r) = load(&c, &mem, None).unwrap();
        let Boot::Payload { entry } = boot else {
            panic!("{boot:?}")
        };
        assert_eq!(r.via, Some(LoadVia::Mlocked));
        assert_eq!(r.placed_cpu, Some(c.cpus.fault_cpu));
        assert_eq!(r.cpu_end, Some(c.cpus.fault_cpu));
        assert!(r.prefilled_pages > 0);
        // Every page it wrote is mapped in the mlocked view (payload + prefill + the
        // payload's boot structures).
        assert!(r.pages > r.prefilled_pages, "{r:?}");
        assert_eq!(r.drain.local_drains, 1);
        assert!(mapped(mem.pin_view(), (entry - mem.base()) / 4096));
    }

    #[test]
    fn page_cache_loading_leaves_the_pin_view_untouched() {
        let c = cfg(DrainPolicy::None, 25);
        let mem = GuestMemory::new(Backing::Shmem, arch::RAM_START, c.mem_size).unwrap();
        let (_, r) = load(&c, &mem, None).unwrap();
        assert_eq!(r.via, Some(LoadVia::PageCache));
        assert_eq!(r.drain, DrainStats::default());
        assert!((0..mem.pages()).all(|p| !mapped(mem.pin_view(), p)));
        assert!(r.pages >= r.prefilled_pages && r.prefilled_pages > 0);
    }

    /// The loader drains as the resolver does for the same policy: its Drainer's hooks.
    #[test]
    fn the_loader_drains_as_the_policy_says() {
        for policy in DrainPolicy::ALL {
            let c = cfg(policy, 0);
            let mut mem = GuestMemory::new(Backing::Shmem, arch::RAM_START, c.mem_size).unwrap();
            mem.set_load_via(LoadVia::Mlocked).unwrap();
            let d = load(&c, &mem, None).unwrap().1.drain;
            let h = policy.hooks();
            assert_eq!(
                (d.local_drains, d.all_drains),
                (u64::from(h.after_fault_in), u64::from(h.before_pin)),
                "{policy}"
            );
        }
    }

    /// The loader records its writes in order, on its CPU: boot image then prefill, all in
    /// one drain epoch (pKVM-exact loading has no settling drain; policy none adds none).
    #[test]
    fn the_loader_records_what_it_wrote() {
        let cpu = sys::allowed_cpus()[0];
        let placement = CpuPlacement {
            fault_cpu: cpu,
            pin_cpu: cpu,
            free: false,
        };
        let mem_size = arch::MIN_MEM.max(4 << 20);
        let mut c = VmConfig::new(guest::Payload::Memtouch, mem_size, placement);
        c.prefill_pct = 50;
        let mut mem = GuestMemory::new(Backing::Shmem, arch::RAM_START, mem_size).unwrap();
        mem.set_load_via(LoadVia::Mlocked).unwrap();
        let mem = std::sync::Arc::new(mem);
        let x = crate::stage2::efault::tests::explainer(&mem);
        load(&c, &mem, Some(&x)).unwrap();
        let r = x.record.lock().unwrap();
        let n = r.writes.len();
        assert!(
            n > 2 * crate::stage2::efault::BATCH_SIZE as usize,
            "{n} writes"
        );
        assert!(r.writes.iter().all(|(_, s)| s.cpu == Some(cpu as u32)));
        assert!(r.writes.iter().all(|(_, s)| s.local_drains() == 0));
        assert_eq!(r.before.len(), n);
        let e = x.batch_evidence(&r, n - 1);
        assert!(
            e.contains(&format!("write {n} of {n}")) && e.contains("none after"),
            "{e}"
        );
    }

    #[test]
    fn anon_memory_cannot_load_through_a_second_view() {
        let mut mem = GuestMemory::new(Backing::Anon, 0, 16 * 4096).unwrap();
        assert!(mem.set_load_via(LoadVia::Mlocked).is_err());
    }
}
