// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Guest memory and its views (docs/DESIGN.md §2).
//!
//! shmem backing (default, as crosvm): one memfd mapped three times, MAP_SHARED:
//! - the *guest view*, given to KVM and armed with userfaultfd;
//! - the *pin view*, `mlock2(MLOCK_ONFAULT)`ed: what the resolver faults in and long-term pins
//!   (the mapping pKVM pins in crosvm);
//! - the *loader view* (vm-memory), not mlocked: how the VMM writes the payload and prefill,
//!   leaving those pages in the page cache and on the LRU before the guest touches them.
//!
//! hugetlb and shmem-thp backings: as shmem, with 2 MiB-aligned views of a memfd of hugetlb
//! pages (MFD_HUGETLB) or of shmem asked for THP (MADV_HUGEPAGE); the resolver then works in
//! 2 MiB granules (see [`GuestMemory::granule`]).
//!
//! anon backing: one private anonymous mapping is both the guest view and the pin view
//! (mlocked on fault). The loader writes into a private *staging* area instead; the resolver
//! copies a staged page in (UFFDIO_COPY) when the guest first faults on it.

use std::fs::File;
use std::io;

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend as _, GuestMemoryMmap};

use crate::host::hugepages::{HUGE_PAGE_SIZE, HugetlbPool, NR_HUGEPAGES};
use crate::inject::{Injector, Site};
use crate::names::named_enum;
use crate::sys::{self, Mapping, PAGE_SIZE};

named_enum! {
    /// Through which mapping the VMM writes images (payload, kernel, initrd, device tree,
    /// boot structures) and `--prefill` pages before boot.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum LoadVia {
        /// The not-mlocked loader view: the pages sit in the page cache and on the LRU when
        /// the guest first touches them (the stress models' loading).
        PageCache = "page-cache",
        /// The mlocked pin view, the mapping the pins take: crosvm's guest memory is one
        /// mapping, mlock2(MLOCK_ONFAULT)ed, into which its loader reads the kernel (the
        /// pKVM-exact loading, done on a loader thread; see `crate::loader`).
        Mlocked = "mlocked",
    }
}

named_enum! {
    /// How guest memory is backed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Backing {
        /// memfd (shmem), mapped twice: guest view and mlocked pin view, as crosvm does.
        Shmem = "shmem",
        /// Private anonymous memory, one mlocked mapping (shows Hugh Dickins' point in the seed).
        Anon = "anon",
        /// memfd of 2 MiB hugetlb pages (MFD_HUGETLB), mapped as shmem is: every fault is
        /// resolved, pinned (one io_uring buffer) and mapped (one UFFDIO_CONTINUE) 2 MiB at a
        /// time. Needs pages in the hugetlb pool (/proc/sys/vm/nr_hugepages). Hugetlb pages never
        /// sit in LRU or mlock batches: a performance backing, the drain policies have nothing
        /// to drain.
        Hugetlb = "hugetlb",
        /// memfd with MADV_HUGEPAGE (2 MiB shmem THP where the kernel gives them): faults
        /// resolved 2 MiB at a time as for hugetlb, but UFFDIO_CONTINUE on shmem maps 4 KiB
        /// PTEs, so KVM maps 4 KiB pages. Needs shmem_enabled to allow madvise (always,
        /// within_size, advise).
        ShmemThp = "shmem-thp",
    }
}

impl Backing {
    /// Bytes the resolver faults in, pins and maps per unit: 4 KiB, or 2 MiB for the huge
    /// page backings.
    pub fn granule(self) -> u64 {
        match self {
            Backing::Shmem | Backing::Anon => PAGE_SIZE as u64,
            Backing::Hugetlb | Backing::ShmemThp => HUGE_PAGE_SIZE,
        }
    }

    /// Whether the backing is a memfd (guest, pin and loader views of one file).
    pub fn is_memfd(self) -> bool {
        self != Backing::Anon
    }
}

/// Failures setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create the {size}-byte memfd for guest memory: {err}")]
    Memfd { size: u64, err: io::Error },
    #[error("cannot map the {view} view ({size} bytes): {err}")]
    Map {
        view: &'static str,
        size: u64,
        err: io::Error,
    },
    #[error(
        "mlock2(MLOCK_ONFAULT) of the pin view ({size} bytes) failed: {err}{}; raise RLIMIT_MEMLOCK or run with CAP_IPC_LOCK",
        if *.injected { " [injected]" } else { "" }
    )]
    Mlock {
        size: u64,
        err: io::Error,
        injected: bool,
    },
    #[error(
        "cannot map {needed} hugetlb pages of 2 MiB: the pool has {available} available; reserve more with `sysctl vm.nr_hugepages={want}` (or echo {want} > {NR_HUGEPAGES}) as root"
    )]
    HugePagesShort {
        needed: u64,
        available: u64,
        want: u64,
    },
    #[error("cannot set up the loader view: {0}")]
    Loader(vm_memory::mmap::FromRangesError),
    #[error(
        "the {0} backing has no mlocked view to load through (its loader stages pages for UFFDIO_COPY): use --backing shmem"
    )]
    NoMlockedLoader(Backing),
    #[error("cannot write {len} bytes at guest address {gpa:#x}: {err}")]
    Write {
        gpa: u64,
        len: usize,
        err: vm_memory::GuestMemoryError,
    },
    #[error("cannot read guest address {gpa:#x}: {err}")]
    Read {
        gpa: u64,
        err: vm_memory::GuestMemoryError,
    },
    #[error("cannot see which pages the loader staged (mincore): {0}")]
    Staged(io::Error),
    #[error(
        "guest address {gpa:#x} ({len} bytes) is outside guest RAM ({size} bytes at {base:#x})"
    )]
    OutsideRam {
        gpa: u64,
        len: usize,
        base: u64,
        size: u64,
    },
}

/// vm-memory's view of an existing mapping (not owned: it is never unmapped through this).
fn raw_guest_memory(
    view: &Mapping,
    base: u64,
) -> Result<GuestMemoryMmap, vm_memory::mmap::FromRangesError> {
    use vm_memory::{GuestRegionMmap, MmapRegion};
    // SAFETY: `view` is a live MAP_SHARED read/write mapping of exactly `len` bytes; the
    // GuestMemory that holds both keeps the mapping alive as long as this region, which does
    // not own (or unmap) it. Its memory is only ever accessed through raw pointers.
    let region = unsafe {
        MmapRegion::build_raw(
            view.as_ptr(),
            view.len(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
    }
    .map_err(vm_memory::mmap::FromRangesError::MmapRegion)?;
    let region = GuestRegionMmap::new(region, GuestAddress(base))
        .ok_or(vm_memory::mmap::FromRangesError::InvalidGuestRegion)?;
    GuestMemoryMmap::from_regions(vec![region])
        .map_err(vm_memory::mmap::FromRangesError::Collection)
}

/// Guest RAM: one contiguous range at `base`.
#[derive(Debug)]
pub struct GuestMemory {
    backing: Backing,
    base: u64,
    size: u64,
    guest_view: Mapping,
    /// shmem only: the mlocked second mapping. anon: the guest view is also the pin view.
    pin_view: Option<Mapping>,
    loader: GuestMemoryMmap,
    /// The pin view as vm-memory sees it (memfd backings): how the loaders write through the
    /// mlocked mapping. Borrows `pin_view`'s mapping, which outlives it (declared later,
    /// dropped later).
    pin_writer: Option<GuestMemoryMmap>,
    /// Where [`Self::load`] and [`Self::loader`] write.
    via: LoadVia,
    /// Keeps the memfd alive for the loader view's FileOffset (shmem).
    _memfd: Option<File>,
}

/// How many of the guest's resident granules sit in 2 MiB folios (what the pin really got).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct HugeFolios {
    /// Granules with their first page resident in the pin view.
    pub resident: u64,
    /// Of those, granules whose page is part of a hugetlb page or a transparent huge page.
    pub huge: u64,
}

impl GuestMemory {
    /// Creates guest memory of `size` bytes at guest-physical `base`.
    pub fn new(backing: Backing, base: u64, size: u64) -> Result<Self, MemoryError> {
        Self::new_injected(backing, base, size, &Injector::off())
    }

    /// As [`Self::new`], with the `mlock` site of `faults` armed.
    pub fn new_injected(
        backing: Backing,
        base: u64,
        size: u64,
        faults: &Injector,
    ) -> Result<Self, MemoryError> {
        let len = size as usize;
        let map_err = |view| move |err| MemoryError::Map { view, size, err };
        let mlock = |m: &Mapping| match faults.hit(Site::Mlock) {
            Some(errno) => Err(MemoryError::Mlock {
                size,
                err: io::Error::from_raw_os_error(errno),
                injected: true,
            }),
            None => m.mlock_onfault().map_err(|err| MemoryError::Mlock {
                size,
                err,
                injected: false,
            }),
        };
        let (guest_view, pin_view, loader, memfd) = match backing {
            Backing::Shmem | Backing::Hugetlb | Backing::ShmemThp => {
                let fd = if backing == Backing::Hugetlb {
                    sys::memfd_hugetlb("pinvmm-guest", size)
                } else {
                    sys::memfd("pinvmm-guest", size)
                }
                .map_err(|err| MemoryError::Memfd { size, err })?;
                let view = |name| {
                    let m = if backing == Backing::Shmem {
                        Mapping::shared(&fd, len)
                    } else {
                        Mapping::shared_aligned(&fd, len, HUGE_PAGE_SIZE as usize)
                    };
                    m.map_err(|err| Self::map_error(backing, name, size, err))
                };
                let guest = view("guest")?;
                let pin = view("pin")?;
                // Not on hugetlb: mlock never marks a hugetlb mapping locked (its pages are
                // never on the LRU), so MLOCK_ONFAULT is lost and mlock2 faults every page in
                // at once (measured: the whole guest allocated before boot).
                if backing != Backing::Hugetlb {
                    mlock(&pin)?;
                }
                let off = FileOffset::new(fd.try_clone().map_err(map_err("loader"))?, 0);
                let loader =
                    GuestMemoryMmap::from_ranges_with_files([(GuestAddress(base), len, Some(off))])
                        .map_err(MemoryError::Loader)?;
                (guest, Some(pin), loader, Some(fd))
            }
            Backing::Anon => {
                let guest = Mapping::anonymous(len).map_err(map_err("guest"))?;
                mlock(&guest)?;
                let loader = GuestMemoryMmap::from_ranges(&[(GuestAddress(base), len)])
                    .map_err(MemoryError::Loader)?;
                (guest, None, loader, None)
            }
        };
        let views = [Some(&guest_view), pin_view.as_ref()];
        match backing {
            // 4 KiB granule: transparent huge pages would pin 2 MiB per fault and hide the effect.
            Backing::Shmem | Backing::Anon => {
                for (v, name) in views.iter().zip(["guest", "pin"]) {
                    if let Some(v) = v {
                        v.no_huge_pages().map_err(map_err(name))?;
                    }
                }
            }
            // Every view that may fault a page first (the loader writes the boot pages) asks
            // for a 2 MiB folio, or the first granule would be made of 4 KiB ones.
            Backing::ShmemThp => {
                for (v, name) in views.iter().zip(["guest", "pin"]) {
                    if let Some(v) = v {
                        v.huge_pages().map_err(map_err(name))?;
                    }
                }
                if let Some(r) = loader.iter().next() {
                    sys::advise_huge_pages(r.as_ptr(), len).map_err(map_err("loader"))?;
                }
            }
            Backing::Hugetlb => {}
        }
        let pin_writer = match (&pin_view, backing) {
            (Some(v), Backing::Shmem | Backing::Hugetlb | Backing::ShmemThp) => {
                Some(raw_guest_memory(v, base).map_err(MemoryError::Loader)?)
            }
            _ => None,
        };
        Ok(Self {
            backing,
            base,
            size,
            guest_view,
            pin_view,
            loader,
            pin_writer,
            via: LoadVia::PageCache,
            _memfd: memfd,
        })
    }

    /// Makes [`Self::load`] and [`Self::loader`] write through `via`. The anon backing has no
    /// second mapping to write through (its loader stages pages for UFFDIO_COPY): only
    /// `PageCache` there.
    pub fn set_load_via(&mut self, via: LoadVia) -> Result<(), MemoryError> {
        if via == LoadVia::Mlocked && self.pin_writer.is_none() {
            return Err(MemoryError::NoMlockedLoader(self.backing));
        }
        self.via = via;
        Ok(())
    }

    /// Where the loaders write now.
    pub fn load_via(&self) -> LoadVia {
        self.via
    }

    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// A failed mmap of a view; on hugetlb, ENOMEM means the pool is short (the mmap reserves
    /// every page of the file), which deserves advice rather than an errno.
    fn map_error(backing: Backing, view: &'static str, size: u64, err: io::Error) -> MemoryError {
        if backing == Backing::Hugetlb && err.raw_os_error() == Some(libc::ENOMEM) {
            let needed = size / HUGE_PAGE_SIZE;
            let pool = HugetlbPool::probe().unwrap_or_default();
            return MemoryError::HugePagesShort {
                needed,
                available: pool.available(),
                want: pool.total_for(needed),
            };
        }
        MemoryError::Map { view, size, err }
    }

    /// Bytes the resolver faults in, pins and maps at a time (see [`Backing::granule`]).
    pub fn granule(&self) -> usize {
        self.backing.granule() as usize
    }

    /// Number of granules.
    pub fn granules(&self) -> u64 {
        self.size / self.granule() as u64
    }

    /// Granule index of a guest-view host address.
    pub fn granule_of_guest_hva(&self, hva: u64) -> Option<u64> {
        let off = hva.checked_sub(self.guest_view.addr())?;
        (off < self.size).then_some(off / self.granule() as u64)
    }

    /// Counts the resident granules of the guest view and those in 2 MiB folios, from
    /// /proc/self/pagemap and /proc/kpageflags, for the 2 MiB backings; None for 4 KiB ones and
    /// where they are not readable (PFNs need CAP_SYS_ADMIN).
    pub fn huge_folios(&self) -> Option<HugeFolios> {
        use std::os::unix::fs::FileExt;
        // 4 KiB backings ask for no huge folios (MADV_NOHUGEPAGE), and two reads per page would
        // cost a 512 MiB guest ~0.3 s of teardown.
        if self.granule() == PAGE_SIZE {
            return None;
        }
        const KPF_HUGE: u64 = 1 << 17; // hugetlb
        const KPF_THP: u64 = 1 << 22;
        let pagemap = File::open("/proc/self/pagemap").ok()?;
        let kpf = File::open("/proc/kpageflags").ok()?;
        let read = |f: &File, index: u64| {
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, index * 8).ok()?;
            Some(u64::from_le_bytes(b))
        };
        // The guest view: the mapping KVM uses, whichever stage-2 path filled it.
        let view = &self.guest_view;
        let resident = view.resident_pages().ok()?;
        let per_granule = self.granule() / PAGE_SIZE;
        let mut out = HugeFolios::default();
        for g in 0..self.granules() as usize {
            let page = g * per_granule;
            if !resident.get(page).copied().unwrap_or(false) {
                continue;
            }
            out.resident += 1;
            let entry = read(&pagemap, view.addr() / PAGE_SIZE as u64 + page as u64)?;
            let pfn = entry & ((1 << 55) - 1);
            if entry & (1 << 63) == 0 || pfn == 0 {
                return None; // present but no PFN: not allowed to see PFNs
            }
            if read(&kpf, pfn)? & (KPF_HUGE | KPF_THP) != 0 {
                out.huge += 1;
            }
        }
        Some(out)
    }

    /// First guest-physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn pages(&self) -> u64 {
        self.size / PAGE_SIZE as u64
    }

    /// The mapping KVM uses.
    pub fn guest_view(&self) -> &Mapping {
        &self.guest_view
    }

    /// The mlocked mapping that is faulted in and pinned.
    pub fn pin_view(&self) -> &Mapping {
        self.pin_view.as_ref().unwrap_or(&self.guest_view)
    }

    /// Where the VMM writes images before boot (vm-memory, for linux-loader and friends):
    /// the loader view, or the mlocked pin view ([`Self::set_load_via`]).
    pub fn loader(&self) -> &GuestMemoryMmap {
        match (self.via, &self.pin_writer) {
            (LoadVia::Mlocked, Some(w)) => w,
            _ => &self.loader,
        }
    }

    /// Writes `data` at guest-physical `gpa` through [`Self::loader`].
    pub fn load(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.loader()
            .write_slice(data, GuestAddress(gpa))
            .map_err(|err| MemoryError::Write {
                gpa,
                len: data.len(),
                err,
            })
    }

    /// Reads a u64 at `gpa` without faulting pages into the guest or pin views (shmem: the
    /// loader view; anon: the guest view, to be called only once userfaultfd is gone).
    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        match self.backing {
            Backing::Shmem | Backing::Hugetlb | Backing::ShmemThp => self
                .loader
                .read_obj(GuestAddress(gpa))
                .map_err(|err| MemoryError::Read { gpa, err }),
            Backing::Anon => {
                let off = gpa.checked_sub(self.base).ok_or(self.outside(gpa, 8))?;
                self.guest_view
                    .read_u64(off as usize)
                    .map_err(|_| self.outside(gpa, 8))
            }
        }
    }

    /// Guest page index of a guest-view host address.
    pub fn page_of_guest_hva(&self, hva: u64) -> Option<u64> {
        let off = hva.checked_sub(self.guest_view.addr())?;
        (off < self.size).then_some(off / PAGE_SIZE as u64)
    }

    /// Writes a marker into `pct` percent of guest pages through [`Self::loader`], spread
    /// evenly: the page cache (or staging, anon) by default, the mlocked pin view when loading
    /// is pKVM-exact, as a crosvm device or loader write leaves them. Returns the number of
    /// pages written.
    pub fn prefill(&self, pct: u8, mut skip: impl FnMut(u64) -> bool) -> Result<u64, MemoryError> {
        let mut n = 0;
        for page in 0..self.pages() {
            if (page * u64::from(pct)) % 100 < u64::from(pct) && !skip(page) {
                let gpa = self.base + page * PAGE_SIZE as u64;
                // Offset 8: memtouch writes offset 0, so prefill never changes its result.
                self.load(gpa + 8, &0x0b0b_0b0b_0b0b_0b0bu64.to_le_bytes())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether each page of the not-mlocked loader view is resident.
    pub fn loader_view_resident(&self) -> io::Result<Vec<bool>> {
        let region = self
            .loader
            .iter()
            .next()
            .ok_or_else(|| io::Error::other("no loader region"))?;
        sys::resident_pages(region.as_ptr(), self.size as usize)
    }

    /// Pages of the staging area the loader wrote (anon backing); empty for shmem.
    pub fn staged_pages(&self) -> io::Result<Vec<bool>> {
        if self.backing != Backing::Anon {
            return Ok(Vec::new());
        }
        let region = self
            .loader
            .iter()
            .next()
            .ok_or_else(|| io::Error::other("no loader region"))?;
        sys::resident_pages(region.as_ptr(), self.size as usize)
    }

    /// Host address of a staged (anon) page's contents in the loader's region.
    pub fn staged_page_addr(&self, page: u64) -> Option<*const u8> {
        let region = self.loader.iter().next()?;
        (page < self.pages()).then(|| {
            region
                .as_ptr()
                .wrapping_add(page as usize * PAGE_SIZE)
                .cast_const()
        })
    }

    /// Copies every staged page into the guest view (anon backing without userfaultfd).
    pub fn copy_staged_into_guest_view(&self) -> Result<u64, MemoryError> {
        let staged = self.staged_pages().map_err(MemoryError::Staged)?;
        let mut page_buf = vec![0u8; PAGE_SIZE];
        let mut n = 0;
        for (page, _) in staged.iter().enumerate().filter(|(_, s)| **s) {
            let off = page * PAGE_SIZE;
            let gpa = self.base + off as u64;
            self.loader
                .read_slice(&mut page_buf, GuestAddress(gpa))
                .map_err(|err| MemoryError::Read { gpa, err })?;
            self.guest_view
                .copy_in(off, &page_buf)
                .map_err(|_| self.outside(gpa, PAGE_SIZE))?;
            n += 1;
        }
        Ok(n)
    }

    /// The error of an access to `len` bytes at `gpa`, outside guest RAM.
    fn outside(&self, gpa: u64, len: usize) -> MemoryError {
        MemoryError::OutsideRam {
            gpa,
            len,
            base: self.base,
            size: self.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shmem_views_see_the_loader() {
        let m = GuestMemory::new(Backing::Shmem, 0x1000_0000, 16 * PAGE_SIZE as u64).unwrap();
        m.load(0x1000_1000, &7u64.to_le_bytes()).unwrap();
        assert_eq!(m.read_u64(0x1000_1000).unwrap(), 7);
        assert_eq!(m.pin_view().touch_read(PAGE_SIZE), 7);
        assert_eq!(m.page_of_guest_hva(m.guest_view().addr() + 5000), Some(1));
        assert_eq!(m.page_of_guest_hva(m.guest_view().addr() + 16 * 4096), None);
        assert!(m.load(0x1000_0000 + 16 * 4096 - 4, &[0; 8]).is_err());
    }

    #[test]
    fn anon_stages_then_copies() {
        let m = GuestMemory::new(Backing::Anon, 0, 8 * PAGE_SIZE as u64).unwrap();
        assert_eq!(m.prefill(50, |_| false).unwrap(), 4);
        let staged = m.staged_pages().unwrap();
        assert_eq!(staged.iter().filter(|s| **s).count(), 4);
        assert_eq!(m.copy_staged_into_guest_view().unwrap(), 4);
        assert_eq!(m.read_u64(8).unwrap(), 0x0b0b_0b0b_0b0b_0b0b);
        assert_eq!(m.read_u64(4096 + 8).unwrap(), 0);
    }
}
