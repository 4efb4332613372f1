// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm lru-traffic`: background LRU traffic from another process, at a set rate, on a
//! set CPU — what a phone's other processes do to the loader CPU's per-CPU batches
//! (docs/PKVM.md, "why the quiet rate is what it is").
//!
//! Every page it adds is a fresh folio that goes through the CPU's LRU-add batch and *not*
//! through its mlock batch: that is what moves the two batches out of step. Kinds:
//!
//! - `anon`: write-faults fresh anonymous pages (`folio_add_lru_vma()`);
//! - `page-cache`: reads a file whose page cache was dropped, in 4 KiB reads (readahead
//!   allocates page-cache folios: `filemap_add_folio()` → `folio_add_lru()`); the file should
//!   sit on a real block device (on tmpfs its pages are the file and nothing is allocated);
//! - `shmem`: writes fresh pages of a memfd (shmem folios, as a tmpfs file's).
//!
//! Freeing memory drains the freeing CPU's batches (`free_pages_and_swap_cache()` and
//! `__folio_batch_release()` call `lru_add_drain()`), and dropping a file's cache does too
//! (`POSIX_FADV_DONTNEED`). So the traffic frees only every `--cycle-pages` pages (one local
//! drain per cycle), and says how many cycles it ran: at 64 MiB per cycle, one drain per
//! 16384 added pages.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use vmm::exit_code::ExitCode;
use vmm::sys::{self, Mapping, PAGE_SIZE};

/// Arguments of `pinvmm lru-traffic`.
#[derive(Args, Debug, Clone)]
pub struct TrafficArgs {
    /// What adds the pages: anon (anonymous write faults), page-cache (reads of --file,
    /// cache dropped every cycle), shmem (writes to a memfd).
    #[arg(long, default_value = "anon", value_parser = ["anon", "page-cache", "shmem"])]
    pub kind: String,
    /// Pages added per second (spread over 100 ticks a second).
    #[arg(long, value_name = "PAGES")]
    pub rate: u64,
    /// CPU to run on (default: not placed).
    #[arg(long, value_name = "N")]
    pub cpu: Option<usize>,
    /// Pages per cycle: after this many, the memory is freed (or the file's cache dropped),
    /// which drains this CPU's batches once.
    #[arg(long, default_value_t = 16384, value_name = "PAGES")]
    pub cycle_pages: u64,
    /// The file `page-cache` reads (at least --cycle-pages pages long; on a block device).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Stop after this many seconds (default: until SIGTERM/SIGINT).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP.store(true, Ordering::SeqCst);
}

/// Where the pages come from.
enum Source {
    Anon(Option<Mapping>),
    Shmem(Mapping),
    PageCache(File),
}

/// Runs the traffic until stopped; prints one summary line.
pub fn main(a: &TrafficArgs) -> ExitCode {
    match run(a) {
        Ok(line) => {
            println!("{line}");
            ExitCode::Ok
        }
        Err(e) => {
            eprintln!("pinvmm: lru-traffic: {e}");
            ExitCode::BadInput
        }
    }
}

fn run(a: &TrafficArgs) -> Result<String, String> {
    if a.rate == 0 || a.cycle_pages == 0 {
        return Err("--rate and --cycle-pages must be at least 1".into());
    }
    if let Some(cpu) = a.cpu {
        sys::pin_thread_to_cpu(cpu).map_err(|e| format!("cannot run on CPU {cpu}: {e}"))?;
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let _ = vmm_sys_util::signal::register_signal_handler(sig, on_stop);
    }
    let len = a.cycle_pages as usize * PAGE_SIZE;
    let mut src = match a.kind.as_str() {
        "anon" => Source::Anon(None),
        "shmem" => {
            let fd = sys::memfd("pinvmm-traffic", len as u64).map_err(|e| format!("memfd: {e}"))?;
            Source::Shmem(Mapping::shared(&fd, len).map_err(|e| format!("mmap: {e}"))?)
        }
        _ => {
            let p = a.file.as_ref().ok_or("--kind page-cache needs --file")?;
            let f = File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let flen = f.metadata().map_err(|e| e.to_string())?.len();
            if flen < len as u64 {
                return Err(format!(
                    "{}: {flen} bytes, shorter than --cycle-pages ({len} bytes)",
                    p.display()
                ));
            }
            drop_cache(&f, len)?;
            Source::PageCache(f)
        }
    };
    let t0 = Instant::now();
    let tick = Duration::from_millis(10);
    let (mut added, mut in_cycle, mut cycles) = (0u64, 0u64, 0u64);
    let mut buf = [0u8; PAGE_SIZE];
    let mut next = t0;
    while !STOP.load(Ordering::SeqCst) && a.duration.is_none_or(|d| t0.elapsed().as_secs_f64() < d)
    {
        // Pages due by now, at the asked rate.
        let due = (t0.elapsed().as_secs_f64() * a.rate as f64) as u64;
        while added < due && !STOP.load(Ordering::SeqCst) {
            if in_cycle == a.cycle_pages {
                cycles += 1;
                in_cycle = 0;
                match &mut src {
                    Source::Anon(m) => *m = None, // munmap: frees, drains this CPU
                    Source::Shmem(m) => {
                        m.madvise(0, len, libc::MADV_REMOVE)
                            .map_err(|e| format!("MADV_REMOVE: {e}"))?;
                    }
                    Source::PageCache(f) => drop_cache(f, len)?,
                }
            }
            let off = in_cycle as usize * PAGE_SIZE;
            match &mut src {
                Source::Anon(m) => {
                    if m.is_none() {
                        *m = Some(Mapping::anonymous(len).map_err(|e| format!("mmap: {e}"))?);
                    }
                    let m = m.as_ref().expect("mapped above");
                    m.write_u8(off, 1).map_err(|e| e.to_string())?;
                }
                Source::Shmem(m) => m.write_u8(off, 1).map_err(|e| e.to_string())?,
                Source::PageCache(f) => {
                    f.read_at(&mut buf, off as u64)
                        .map_err(|e| format!("read: {e}"))?;
                }
            }
            in_cycle += 1;
            added += 1;
        }
        next += tick;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(format!(
        "lru-traffic: {} {added} pages in {secs:.1} s ({:.0} pages/s, asked {}), {cycles} cycles of {} pages (one local drain each), CPU {}",
        a.kind,
        added as f64 / secs.max(1e-9),
        a.rate,
        a.cycle_pages,
        a.cpu.map_or_else(|| "any".to_owned(), |c| c.to_string())
    ))
}

/// Drops the file's clean page cache (`POSIX_FADV_DONTNEED`; it drains this CPU too).
fn drop_cache(f: &File, len: usize) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain fadvise on an open descriptor; no memory is passed.
    let r = unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            0,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    if r != 0 {
        return Err(format!(
            "posix_fadvise(DONTNEED): {}",
            std::io::Error::from_raw_os_error(r)
        ));
    }
    Ok(())
}
