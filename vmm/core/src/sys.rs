// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Small safe wrappers over the host calls no rust-vmm crate offers: memfd mappings and
//! bounds-checked access to them, mlock2, madvise, migrate_pages, CPU affinity; and the names
//! of errnos. Every `unsafe` in the VMM's memory path lives here.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;

/// Host page size pinvmm works in.
pub const PAGE_SIZE: usize = 4096;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Creates a memfd (shmem file) of `size` bytes.
pub fn memfd(name: &str, size: u64) -> io::Result<File> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: cname is a valid NUL-terminated string; the returned fd is checked and owned below.
    let fd =
        check(unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) } as libc::c_long)?;
    // SAFETY: fd was just created by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd as i32) };
    file.set_len(size)?;
    Ok(file)
}

/// Creates a memfd of `size` bytes backed by 2 MiB hugetlb pages (`size` must be a multiple of
/// 2 MiB). Pages come from the hugetlb pool when a mapping of it is created (reserved) and
/// faulted (allocated, zeroed).
pub fn memfd_hugetlb(name: &str, size: u64) -> io::Result<File> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    // SAFETY: cname is a valid NUL-terminated string; the returned fd is checked and owned below.
    let fd = check(unsafe { libc::memfd_create(cname.as_ptr(), flags) } as libc::c_long)?;
    // SAFETY: fd was just created by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd as i32) };
    file.set_len(size)?;
    Ok(file)
}

/// An access to a [`Mapping`] that does not fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("{len} bytes at offset {offset:#x} are outside the {size}-byte mapping")]
    OutOfBounds {
        offset: usize,
        len: usize,
        size: usize,
    },
    #[error("offset {offset:#x} is not {align}-byte aligned")]
    Misaligned { offset: usize, align: usize },
}

/// An mmap'ed area, unmapped on drop. Safe code reads and writes it through bounds-checked
/// helpers ([`Mapping::write_u64`], [`Mapping::copy_in`], ...).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; concurrent access is governed by its users (the guest,
// the resolver), exactly as for the memory KVM itself maps.
unsafe impl Send for Mapping {}
// SAFETY: as above; the struct itself is immutable after creation.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` shared, read-write.
    pub fn shared(file: &File, len: usize) -> io::Result<Self> {
        Self::map(len, libc::MAP_SHARED, file.as_raw_fd())
    }

    /// Maps `len` bytes of private anonymous memory (no swap reservation).
    pub fn anonymous(len: usize) -> io::Result<Self> {
        Self::map(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )
    }

    /// Maps `len` bytes of `file` shared, read-write, at an address aligned to `align` (a power
    /// of two): a 2 MiB-aligned view is what lets the kernel map a 2 MiB folio with one PMD
    /// (and KVM map it as one 2 MiB stage-2 page). The kernel aligns hugetlb mappings itself,
    /// shmem ones only under some THP settings, so this asks for it.
    pub fn shared_aligned(file: &File, len: usize, align: usize) -> io::Result<Self> {
        // Reserve len + align of address space, then map the file over its aligned part.
        let area = Self::map(
            len + align,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )?;
        let start = area.addr().next_multiple_of(align as u64) as usize;
        // SAFETY: [start, start + len) lies inside `area`, a mapping we own; MAP_FIXED replaces
        // that part of it, and `area` is then forgotten without unmapping what it covered.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let (base, total) = (area.addr() as usize, area.len);
        std::mem::forget(area);
        // SAFETY: both ranges are the unused head and tail of the reservation made above.
        unsafe {
            libc::munmap(base as *mut libc::c_void, start - base);
            libc::munmap(
                (start + len) as *mut libc::c_void,
                base + total - start - len,
            );
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Self { ptr, len })
    }

    fn map(len: usize, flags: i32, fd: i32) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel (addr = NULL) overlaps nothing we own.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Self { ptr, len })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of `[offset, offset + len)`, checked to lie inside the mapping and to be
    /// `align`-byte aligned.
    fn range(&self, offset: usize, len: usize, align: usize) -> Result<*mut u8, AccessError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(AccessError::OutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        let p = self.ptr.as_ptr().wrapping_add(offset);
        if !(p as usize).is_multiple_of(align) {
            return Err(AccessError::Misaligned { offset, align });
        }
        Ok(p)
    }

    /// Writes one byte at `offset` (volatile: the write faults the page in, as a guest's or a
    /// loader's would).
    pub fn write_u8(&self, offset: usize, v: u8) -> Result<(), AccessError> {
        let p = self.range(offset, 1, 1)?;
        // SAFETY: p is inside the mapping (checked), which stays mapped while &self lives; its
        // memory is shared with the guest and is only ever accessed through raw pointers.
        unsafe { p.write_volatile(v) };
        Ok(())
    }

    /// Writes a u64 at `offset`, which must be 8-byte aligned.
    pub fn write_u64(&self, offset: usize, v: u64) -> Result<(), AccessError> {
        let p = self.range(offset, 8, 8)?;
        // SAFETY: as in write_u8; p is 8-byte aligned (checked).
        unsafe { p.cast::<u64>().write_volatile(v) };
        Ok(())
    }

    /// Reads the u64 at `offset`, which must be 8-byte aligned.
    pub fn read_u64(&self, offset: usize) -> Result<u64, AccessError> {
        let p = self.range(offset, 8, 8)?;
        // SAFETY: as in write_u64.
        Ok(unsafe { p.cast::<u64>().read_volatile() })
    }

    /// Copies `data` into the mapping at `offset`.
    pub fn copy_in(&self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        let p = self.range(offset, data.len(), 1)?;
        // SAFETY: the destination is inside the mapping (checked); `copy` allows the source to
        // be anywhere, even another mapping of the same pages.
        unsafe { std::ptr::copy(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    /// `madvise(advice)` on `[offset, offset + len)` of the mapping.
    pub fn madvise(&self, offset: usize, len: usize, advice: i32) -> io::Result<()> {
        let p = self
            .range(offset, len, 1)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the range is inside this mapping (checked), whose memory is only ever
        // accessed through raw pointers: whatever the advice does to its contents (even
        // dropping them) breaks no reference.
        unsafe { madvise(p, len, advice) }
    }

    /// `mlock2(MLOCK_ONFAULT)`: pages are locked as they are faulted in, as crosvm does.
    pub fn mlock_onfault(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this mapping.
        check(unsafe {
            libc::syscall(
                libc::SYS_mlock2,
                self.as_ptr(),
                self.len,
                libc::MLOCK_ONFAULT,
            )
        })
        .map(drop)
    }

    /// Disables transparent huge pages on the range (4 KiB granule, as the experiment needs).
    /// A kernel without CONFIG_TRANSPARENT_HUGEPAGE (the small ci/kernels/ board kernels)
    /// rejects the advice with EINVAL: it has no huge pages to disable.
    pub fn no_huge_pages(&self) -> io::Result<()> {
        match self.madvise(0, self.len, libc::MADV_NOHUGEPAGE) {
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// Asks for transparent huge pages on the range (shmem: 2 MiB folios where the shmem
    /// THP setting allows MADV_HUGEPAGE; see hugepages.rs).
    pub fn huge_pages(&self) -> io::Result<()> {
        self.madvise(0, self.len, libc::MADV_HUGEPAGE)
    }

    /// Reads one byte through the mapping (a fault-in "touch").
    pub fn touch_read(&self, offset: usize) -> u8 {
        assert!(offset < self.len, "touch beyond mapping");
        let p = self.ptr.as_ptr().wrapping_add(offset);
        // SAFETY: offset is inside the mapping (asserted), which stays mapped while &self
        // lives; a volatile read is what makes the page fault happen.
        unsafe { std::ptr::read_volatile(p) }
    }

    /// Faults the page at `offset` in for writing, without writing anything:
    /// `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+) takes the same write fault a loader's
    /// store or a `read(2)` into the mapping takes (`do_shared_fault()`: one page mapped, one
    /// `mlock_folio()` in an mlocked mapping) — unlike a read, which maps up to
    /// `fault_around_bytes` of cached neighbours (docs/DESIGN.md, read fault-around).
    pub fn touch_write(&self, offset: usize) -> io::Result<()> {
        let page = offset / PAGE_SIZE * PAGE_SIZE;
        self.madvise(
            page,
            PAGE_SIZE.min(self.len - page),
            libc::MADV_POPULATE_WRITE,
        )
    }

    /// Whether each page of the mapping is resident.
    pub fn resident_pages(&self) -> io::Result<Vec<bool>> {
        resident_pages(self.as_ptr(), self.len)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range this struct mapped; nobody uses it after drop.
        unsafe { libc::munmap(self.as_ptr().cast(), self.len) };
    }
}

/// `pread(2)` of `len` bytes at file offset `offset` straight into guest memory at `gpa`,
/// looping on short reads (and EINTR) as crosvm's `read_exact_at_volatile` does: the kernel
/// copies the file's page-cache pages into the mapping, taking a write fault per fresh page of
/// it. Errors: the range is not inside `mem` (EFAULT), the file ended early (UnexpectedEof), or
/// the read failed.
pub fn pread_into_guest(
    mem: &vm_memory::GuestMemoryMmap,
    gpa: u64,
    file: &std::fs::File,
    offset: u64,
    len: usize,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use vm_memory::{GuestAddress, GuestMemoryBackend as _};
    let slice = mem
        .get_slice(GuestAddress(gpa), len)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let guard = slice.ptr_guard_mut();
    let base = guard.as_ptr();
    let mut done = 0usize;
    while done < len {
        // SAFETY: [base, base + len) is one live guest-memory mapping (get_slice checked the
        // range); the kernel writes at most len - done bytes at base + done, memory that is
        // only ever accessed through raw pointers.
        let n = unsafe {
            libc::pread64(
                file.as_raw_fd(),
                base.add(done).cast(),
                len - done,
                (offset + done as u64) as libc::off64_t,
            )
        };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// `pread(2)` into a buffer, looping on short reads; Ok(bytes read), fewer only at the end.
pub fn pread_buf(file: &std::fs::File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Whether each page of `[addr, addr + len)` is resident (mincore). Any range is sound: the
/// kernel only looks at it (an unmapped one is ENOMEM).
pub fn resident_pages(addr: *const u8, len: usize) -> io::Result<Vec<bool>> {
    let mut vec = vec![0u8; len.div_ceil(PAGE_SIZE)];
    // SAFETY: vec has one byte per page of the range, as mincore requires; mincore reads
    // nothing of the range itself.
    let r = unsafe { libc::mincore(addr.cast_mut().cast(), len, vec.as_mut_ptr()) };
    check(r as libc::c_long)?;
    Ok(vec.into_iter().map(|b| b & 1 == 1).collect())
}

/// madvise on a raw range.
///
/// # Safety
/// Some advices drop or replace the range's contents (MADV_DONTNEED, MADV_REMOVE, ...): the
/// caller must own the range and hold no reference into it.
unsafe fn madvise(addr: *mut u8, len: usize, advice: i32) -> io::Result<()> {
    // SAFETY: the caller owns the range (see above); an invalid one is reported as an error.
    check(unsafe { libc::madvise(addr.cast(), len, advice) } as libc::c_long).map(drop)
}

/// `madvise(MADV_HUGEPAGE)` on any range (a vm-memory region, say): it changes how the kernel
/// backs the range, never its contents.
pub fn advise_huge_pages(addr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: MADV_HUGEPAGE leaves the contents as they are; a range that is not mapped is
    // reported as an error.
    check(unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) } as libc::c_long).map(drop)
}

/// Punches a hole of `len` bytes at `offset` in `file` (its pages are dropped; the size stays).
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a file we hold open; punching a hole only drops its pages.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    check(r as libc::c_long).map(drop)
}

/// `migrate_pages(2)` on this process with identical old and new node masks: migrates nothing,
/// but the kernel runs `lru_add_drain_all()` (via lru_cache_disable()) on the way.
pub fn migrate_pages_to_self() -> io::Result<()> {
    let mask: libc::c_ulong = 1; // node 0
    let maxnode = 8 * std::mem::size_of::<libc::c_ulong>() as libc::c_ulong;
    // SAFETY: both masks point at a valid c_ulong of maxnode bits; pid 0 is this process.
    check(unsafe {
        libc::syscall(
            libc::SYS_migrate_pages,
            0,
            maxnode,
            &mask as *const _,
            &mask as *const _,
        )
    })
    .map(drop)
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside the set; cpu is bounds-checked by the macro's callers below.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: set is a valid cpu_set_t of the size passed; 0 = calling thread.
    check(
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) }
            as libc::c_long,
    )
    .map(drop)
}

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no arguments and no memory effects.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).ok()
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid buffer of the size given.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return vec![0];
    }
    // SAFETY: CPU_ISSET only reads the set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// RLIMIT_MEMLOCK (soft) in bytes; None = unlimited.
pub fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0
        || r.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(r.rlim_cur)
}

const CAP_IPC_LOCK: u64 = 14; // include/uapi/linux/capability.h

/// Whether the process holds CAP_IPC_LOCK (then mlock and pins ignore RLIMIT_MEMLOCK).
pub fn has_cap_ipc_lock() -> bool {
    has_cap(CAP_IPC_LOCK as u32)
}

/// Whether this process may read page frame numbers (/proc/self/pagemap, /proc/kpageflags).
pub fn has_cap_sys_admin() -> bool {
    has_cap(21) // CAP_SYS_ADMIN
}

/// Whether capability `cap` is in this process's effective set.
fn has_cap(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("CapEff:"))?.to_owned();
            u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// Number of open file descriptors of this process (leak checks).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The errnos reports name and `--inject` accepts by name (the rest appear as numbers).
const ERRNOS: &[(i32, &str)] = &[
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::ESRCH, "ESRCH"),
    (libc::EINTR, "EINTR"),
    (libc::EIO, "EIO"),
    (libc::EBADF, "EBADF"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::ENOMEM, "ENOMEM"),
    (libc::EFAULT, "EFAULT"),
    (libc::EBUSY, "EBUSY"),
    (libc::EEXIST, "EEXIST"),
    (libc::ENODEV, "ENODEV"),
    (libc::EINVAL, "EINVAL"),
    (libc::ENOSPC, "ENOSPC"),
    (libc::ENOSYS, "ENOSYS"),
    (libc::EOPNOTSUPP, "EOPNOTSUPP"),
    (libc::EHWPOISON, "EHWPOISON"),
];

/// Symbolic name of an errno, for reports ("errno N" for one without a name here).
pub fn errno_name(e: i32) -> String {
    errno_symbol(e)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("errno {e}"))
}

/// The errno's name, if it has one here.
pub fn errno_symbol(e: i32) -> Option<&'static str> {
    ERRNOS.iter().find(|(n, _)| *n == e).map(|(_, s)| *s)
}

/// An errno from its name (case-insensitive) or its number (1-4095).
pub fn errno_from_name(s: &str) -> Option<i32> {
    ERRNOS
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(s))
        .map(|(v, _)| *v)
        .or_else(|| s.parse().ok().filter(|&v: &i32| v > 0 && v < 4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_views_share_pages() {
        let f = memfd("t", 2 * PAGE_SIZE as u64).unwrap();
        let a = Mapping::shared(&f, 2 * PAGE_SIZE).unwrap();
        let b = Mapping::shared(&f, 2 * PAGE_SIZE).unwrap();
        a.write_u8(PAGE_SIZE, 42).unwrap();
        assert_eq!(b.touch_read(PAGE_SIZE), 42);
        assert_eq!(b.resident_pages().unwrap(), vec![false, true]);
    }

    #[test]
    fn aligned_views_are_aligned_and_shared() {
        let f = memfd("aligned", 4 << 20).unwrap();
        let a = Mapping::shared_aligned(&f, 4 << 20, 2 << 20).unwrap();
        let b = Mapping::shared(&f, 4 << 20).unwrap();
        assert_eq!(a.addr() % (2 << 20), 0);
        a.write_u8(3 << 20, 9).unwrap();
        assert_eq!(b.touch_read(3 << 20), 9);
    }

    #[test]
    fn accesses_are_checked() {
        let m = Mapping::anonymous(2 * PAGE_SIZE).unwrap();
        m.write_u64(8, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(m.read_u64(8), Ok(0x1122_3344_5566_7788));
        m.copy_in(PAGE_SIZE - 2, &[1, 2, 3, 4]).unwrap();
        assert_eq!(m.touch_read(PAGE_SIZE + 1), 4);
        let end = 2 * PAGE_SIZE;
        assert_eq!(
            m.write_u8(end, 1),
            Err(AccessError::OutOfBounds {
                offset: end,
                len: 1,
                size: end
            })
        );
        assert!(m.read_u64(end - 4).is_err());
        assert!(m.copy_in(end - 1, &[0, 0]).is_err());
        assert!(m.copy_in(usize::MAX, &[0]).is_err());
        assert_eq!(
            m.write_u64(4, 0),
            Err(AccessError::Misaligned {
                offset: 4,
                align: 8
            })
        );
        let e = m.madvise(PAGE_SIZE, end, libc::MADV_COLD).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        m.madvise(0, end, libc::MADV_COLD).unwrap();
    }

    #[test]
    fn affinity_round_trip() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        std::thread::spawn(move || {
            pin_thread_to_cpu(cpus[0]).unwrap();
            assert_eq!(current_cpu(), Some(cpus[0]));
        })
        .join()
        .unwrap();
    }
}
