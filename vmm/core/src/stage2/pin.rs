// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Long-term pins of guest pages through io_uring fixed buffers.
//!
//! `IORING_REGISTER_BUFFERS_UPDATE` on a sparse table calls
//! `pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM)` on the page: the same kernel path pKVM
//! takes on a protected guest's stage-2 fault, including the migration out of ZONE_MOVABLE/CMA
//! that fails when a stray reference (a per-CPU mlock batch) holds the folio. Each slot of the
//! table is one guest page of the table's granule (4 KiB, or 2 MiB for huge page backings:
//! one fixed buffer per huge page); pins are released when the rings are dropped (VM teardown).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::IoUring;
use serde::Serialize;

use crate::control::HostFailure;
use crate::inject::{Injector, Site};
use crate::sys::PAGE_SIZE;

/// io_uring accepts at most this many registered buffers per ring (IORING_MAX_REG_BUFFERS).
pub const SLOTS_PER_RING: u64 = 1 << 14;

/// `IORING_REGISTER_BUFFERS_UPDATE` (include/uapi/linux/io_uring.h).
const IORING_REGISTER_BUFFERS_UPDATE: libc::c_uint = 16;

/// `struct io_uring_rsrc_update2`: the io-uring crate's wrapper drops the count the kernel
/// returns, which a batch needs to know how far it got.
#[repr(C)]
struct RsrcUpdate2 {
    offset: u32,
    resv: u32,
    data: u64,
    tags: u64,
    nr: u32,
    resv2: u32,
}

/// One `IORING_REGISTER_BUFFERS_UPDATE` of `iovs.len()` slots from `offset`: how many slots
/// the kernel updated (it stops at the first page it cannot pin, and fails only when that is
/// the first one).
fn update_slots(ring_fd: i32, offset: u32, iovs: &[Iovec]) -> io::Result<u64> {
    let upd = RsrcUpdate2 {
        offset,
        resv: 0,
        data: iovs.as_ptr() as u64,
        tags: 0,
        nr: iovs.len() as u32,
        resv2: 0,
    };
    // SAFETY: `upd` describes `iovs.len()` iovecs for slots of the ring's sparse table; the
    // kernel only reads them. The caller passes pages of the pin view, which outlives the
    // ring (and so the pins).
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring_fd,
            IORING_REGISTER_BUFFERS_UPDATE,
            &upd as *const RsrcUpdate2,
            std::mem::size_of::<RsrcUpdate2>() as u32,
        )
    };
    u64::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// A failed pin.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot create the io_uring for pins: {0} (is kernel.io_uring_disabled set?)")]
    Ring(io::Error),
    #[error("cannot register a sparse buffer table of {slots} slots: {err}{injected}",
        injected = if *.injected { " [injected]" } else { "" })]
    Table {
        slots: u64,
        err: io::Error,
        injected: bool,
    },
    #[error("long-term pin of guest page {page} (host address {hva:#x}) failed: {err}{injected}",
        injected = if *.injected { " [injected]" } else { "" })]
    Pin {
        page: u64,
        hva: u64,
        err: io::Error,
        injected: bool,
    },
}

impl PinError {
    /// The errno of the failure, for reports.
    pub fn errno(&self) -> Option<i32> {
        match self {
            PinError::Ring(e) | PinError::Table { err: e, .. } | PinError::Pin { err: e, .. } => {
                e.raw_os_error()
            }
        }
    }

    /// Whether `--inject` made the call fail.
    pub fn injected(&self) -> bool {
        matches!(
            self,
            PinError::Table { injected: true, .. } | PinError::Pin { injected: true, .. }
        )
    }

    /// For the report: the failed call (the pin itself at `pin-update`, the table's setup at
    /// `pin-register`), on `thread`, about guest-physical `gpa`; `message` says what it was
    /// doing.
    pub fn host_failure(&self, thread: &str, gpa: u64, message: String) -> HostFailure {
        let site = match self {
            PinError::Pin { .. } => Site::PinUpdate,
            PinError::Ring(_) | PinError::Table { .. } => Site::PinRegister,
        };
        let mut f = HostFailure::at(
            site,
            self.errno(),
            self.injected(),
            thread,
            Some(gpa),
            message,
        );
        if matches!(self, PinError::Ring(_)) {
            f.call = "io_uring_setup".into();
        }
        f
    }
}

/// Pin counters.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PinStats {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    /// Requests for a page that was already pinned (another vCPU's fault, a retry).
    pub already_pinned: u64,
}

/// The guest's pin table.
pub struct PinTable {
    rings: Vec<Option<IoUring>>,
    pinned: Vec<bool>,
    faults: Arc<Injector>,
    /// Scratch iovecs of a batched update, kept to avoid allocating per fault.
    iovs: Vec<Iovec>,
    /// Bytes per slot (one guest page of the memory's granule).
    granule: u64,
    pub stats: PinStats,
}

/// `struct iovec` as plain integers (the table stays `Send`).
#[repr(C)]
struct Iovec {
    base: u64,
    len: u64,
}

impl Drop for PinTable {
    fn drop(&mut self) {
        self.release_all();
    }
}

impl std::fmt::Debug for PinTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinTable")
            .field("rings", &self.rings.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl PinTable {
    /// A table for `pages` guest pages; rings are created as pages need them.
    pub fn new(pages: u64) -> Self {
        let rings = pages.div_ceil(SLOTS_PER_RING) as usize;
        Self {
            rings: (0..rings).map(|_| None).collect(),
            pinned: vec![false; pages as usize],
            faults: Injector::off(),
            iovs: Vec::new(),
            granule: PAGE_SIZE as u64,
            stats: PinStats::default(),
        }
    }

    /// A table whose host calls fail as `faults` says (sites `pin-register`, `pin-update`).
    pub fn with_injector(mut self, faults: Arc<Injector>) -> Self {
        self.faults = faults;
        self
    }

    /// Makes every slot `bytes` long (a multiple of 4 KiB: 2 MiB for a huge page backing), so
    /// that one pin covers one huge page.
    pub fn with_granule(mut self, bytes: usize) -> Self {
        debug_assert!(bytes.is_multiple_of(PAGE_SIZE));
        self.granule = bytes as u64;
        self
    }

    fn ring(&mut self, idx: usize, slots: u64) -> Result<&IoUring, PinError> {
        if self.rings[idx].is_none() {
            let ring = IoUring::new(2).map_err(PinError::Ring)?;
            let r = match self.faults.hit(Site::PinRegister) {
                Some(errno) => Err((io::Error::from_raw_os_error(errno), true)),
                None => ring
                    .submitter()
                    .register_buffers_sparse(slots as u32)
                    .map_err(|e| (e, false)),
            };
            r.map_err(|(err, injected)| PinError::Table {
                slots,
                err,
                injected,
            })?;
            self.rings[idx] = Some(ring);
        }
        Ok(self.rings[idx].as_ref().expect("ring created above"))
    }

    /// Whether `page` holds a pin.
    pub fn is_pinned(&self, page: u64) -> bool {
        self.pinned.get(page as usize).copied().unwrap_or(false)
    }

    /// Takes the long-term pin of guest page `page`, whose pin-view address is `hva`.
    pub fn pin(&mut self, page: u64, hva: u64) -> Result<(), PinError> {
        if self.is_pinned(page) {
            self.stats.already_pinned += 1;
            return Ok(());
        }
        let ring_idx = (page / SLOTS_PER_RING) as usize;
        let total = self.pinned.len() as u64;
        let slots = (total - ring_idx as u64 * SLOTS_PER_RING).min(SLOTS_PER_RING);
        let slot = (page % SLOTS_PER_RING) as u32;
        let iov = libc::iovec {
            iov_base: hva as *mut libc::c_void,
            iov_len: self.granule as usize,
        };
        self.ring(ring_idx, slots)?;
        self.stats.attempted += 1;
        if let Some(errno) = self.faults.hit(Site::PinUpdate) {
            self.stats.failed += 1;
            return Err(PinError::Pin {
                page,
                hva,
                err: io::Error::from_raw_os_error(errno),
                injected: true,
            });
        }
        let ring = self.rings[ring_idx].as_ref().expect("ring created above");
        // SAFETY: hva is a page of the pin view, which stays mapped until after this table
        // (and its rings) are dropped: GuestMemory outlives the resolver that owns the table.
        let r = unsafe { ring.submitter().register_buffers_update(slot, &[iov], None) };
        match r {
            Ok(()) => {
                self.pinned[page as usize] = true;
                self.stats.ok += 1;
                Ok(())
            }
            Err(err) => {
                self.stats.failed += 1;
                Err(PinError::Pin {
                    page,
                    hva,
                    err,
                    injected: false,
                })
            }
        }
    }

    /// Takes the long-term pins of the `n` guest pages from `first` (pin-view address `hva`)
    /// with as few `IORING_REGISTER_BUFFERS_UPDATE` calls as the table allows (one per run of
    /// not-yet-pinned pages inside one ring; each page still gets its own slot, and the kernel
    /// still pins it with its own `pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM)`).
    ///
    /// On failure, the pages before the failed one stay pinned and the error names the failed
    /// page. Counters are per page, as with [`Self::pin`]. With `pin-update` armed, pages are
    /// pinned one by one so the injection hits exactly the n-th page's pin.
    pub fn pin_range(&mut self, first: u64, hva: u64, n: u64) -> Result<(), PinError> {
        if n == 1 || self.faults.is_armed(Site::PinUpdate) {
            for i in 0..n {
                self.pin(first + i, hva + i * self.granule)?;
            }
            return Ok(());
        }
        let total = self.pinned.len() as u64;
        let end = (first + n).min(total);
        let mut page = first;
        while page < end {
            if self.is_pinned(page) {
                self.stats.already_pinned += 1;
                page += 1;
                continue;
            }
            let ring_idx = page / SLOTS_PER_RING;
            let ring_end = ((ring_idx + 1) * SLOTS_PER_RING).min(end);
            let run_end = (page..ring_end)
                .find(|&p| self.is_pinned(p))
                .unwrap_or(ring_end);
            let run = run_end - page;
            let granule = self.granule;
            let page_hva = |p: u64| hva + (p - first) * granule;
            self.iovs.clear();
            self.iovs.extend((page..run_end).map(|p| Iovec {
                base: page_hva(p),
                len: granule,
            }));
            let slots = (total - ring_idx * SLOTS_PER_RING).min(SLOTS_PER_RING);
            let fd = self.ring(ring_idx as usize, slots)?.as_raw_fd();
            // An error means no slot was updated: the single pin below gets its errno.
            let done = update_slots(fd, (page % SLOTS_PER_RING) as u32, &self.iovs)
                .unwrap_or(0)
                .min(run);
            for p in page..page + done {
                self.pinned[p as usize] = true;
            }
            self.stats.attempted += done;
            self.stats.ok += done;
            page += done;
            if done < run {
                // The first page the batch could not pin: pin it alone for its own errno (a
                // transient failure may also pass now), then go on with the rest.
                self.pin(page, page_hva(page))?;
                page += 1;
            }
        }
        Ok(())
    }

    /// Releases every pin now. Closing a ring alone would release them too, but from a kernel
    /// workqueue some time later: VmPin would still count them when the VM is gone.
    pub fn release_all(&mut self) {
        for ring in self.rings.iter_mut().filter_map(Option::take) {
            // A failure leaves the release to the ring's close, which still happens.
            let _ = ring.submitter().unregister_buffers();
        }
        self.pinned.iter_mut().for_each(|p| *p = false);
    }

    /// Pages currently pinned.
    pub fn pinned_pages(&self) -> u64 {
        self.stats.ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::InjectSpec;
    use crate::sys::{Mapping, memfd};

    #[test]
    fn pins_pages_and_injects_failures() {
        let f = memfd("pintest", 8 * PAGE_SIZE as u64).unwrap();
        let view = Mapping::shared(&f, 8 * PAGE_SIZE).unwrap();
        let inject = Injector::new(&[InjectSpec::new(Site::PinUpdate, 3, libc::ENOMEM)]);
        let mut t = PinTable::new(8).with_injector(inject);
        let hva = |p: u64| view.addr() + p * PAGE_SIZE as u64;
        t.pin(0, hva(0)).unwrap();
        t.pin(0, hva(0)).unwrap();
        t.pin(1, hva(1)).unwrap();
        let e = t.pin(2, hva(2)).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOMEM));
        assert!(e.to_string().contains("[injected]"), "{e}");
        t.pin(3, hva(3)).unwrap();
        assert_eq!(
            t.stats,
            PinStats {
                attempted: 4,
                ok: 3,
                failed: 1,
                already_pinned: 1
            }
        );
        assert!(t.is_pinned(3) && !t.is_pinned(2));
    }

    #[test]
    fn pins_ranges_in_one_call_and_skips_pinned_pages() {
        let f = memfd("pinrange", 40 * PAGE_SIZE as u64).unwrap();
        let view = Mapping::shared(&f, 40 * PAGE_SIZE).unwrap();
        let mut t = PinTable::new(40);
        t.pin(3, view.addr() + 3 * PAGE_SIZE as u64).unwrap();
        t.pin_range(0, view.addr(), 8).unwrap();
        assert!((0..8).all(|p| t.is_pinned(p)) && !t.is_pinned(8));
        assert_eq!(
            t.stats,
            PinStats {
                attempted: 8,
                ok: 8,
                failed: 0,
                already_pinned: 1
            }
        );
        // Clipped at the end of the table.
        t.pin_range(36, view.addr() + 36 * PAGE_SIZE as u64, 10)
            .unwrap();
        assert!((36..40).all(|p| t.is_pinned(p)));
        assert_eq!(t.pinned_pages(), 12);
    }

    #[test]
    fn a_batch_is_one_update_of_every_slot() {
        let f = memfd("pinbatch", 16 * PAGE_SIZE as u64).unwrap();
        let view = Mapping::shared(&f, 16 * PAGE_SIZE).unwrap();
        let mut t = PinTable::new(16);
        let fd = t.ring(0, 16).unwrap().as_raw_fd();
        let iovs: Vec<Iovec> = (0..16)
            .map(|p| Iovec {
                base: view.addr() + p * PAGE_SIZE as u64,
                len: PAGE_SIZE as u64,
            })
            .collect();
        assert_eq!(update_slots(fd, 0, &iovs).unwrap(), 16);
    }

    #[test]
    fn a_2m_granule_is_one_buffer_per_slot() {
        const G: usize = 2 << 20;
        let f = memfd("pin2m", 3 * G as u64).unwrap();
        let view = Mapping::shared(&f, 3 * G).unwrap();
        let mut t = PinTable::new(3).with_granule(G);
        t.pin(1, view.addr() + G as u64).unwrap();
        t.pin_range(0, view.addr(), 3).unwrap();
        assert!((0..3).all(|p| t.is_pinned(p)));
        assert_eq!((t.stats.ok, t.stats.already_pinned), (3, 1));
        // One pin covers all 512 pages of the granule: VmPin holds at least 3 x 2 MiB (where
        // the kernel charges io_uring pins to VmPin at all: 7.x does not for CAP_IPC_LOCK).
        match crate::host::status_kb("VmPin").unwrap_or(0) {
            0 => eprintln!("a_2m_granule_is_one_buffer_per_slot: VmPin not charged here"),
            kb => assert!(kb >= 3 * 2048, "VmPin {kb} KiB"),
        }
    }

    #[test]
    fn pin_range_with_injection_fails_at_the_nth_page() {
        let f = memfd("pinrange-inj", 8 * PAGE_SIZE as u64).unwrap();
        let view = Mapping::shared(&f, 8 * PAGE_SIZE).unwrap();
        let inject = Injector::new(&[InjectSpec::new(Site::PinUpdate, 3, libc::EFAULT)]);
        let mut t = PinTable::new(8).with_injector(inject);
        let e = t.pin_range(0, view.addr(), 8).unwrap_err();
        assert!(matches!(e, PinError::Pin { page: 2, .. }), "{e}");
        assert_eq!((t.stats.ok, t.stats.failed), (2, 1));
    }
}
