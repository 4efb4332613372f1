// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! userfaultfd: the few calls the resolver makes, as a small safe wrapper.
//!
//! Written by hand on purpose. The `userfaultfd` crate generates its bindings with bindgen at
//! build time, so every build host needed libclang; no other crate wraps the calls we need
//! (MINOR mode and `UFFDIO_CONTINUE` for shmem). The kernel ABI itself comes from
//! `linux-raw-sys` (the structs, `uffd_msg` and the per-arch `UFFDIO_*` ioctl numbers,
//! generated ahead of time and kept by the rustix project), the ioctl call from
//! `vmm-sys-util`, and the syscall number from `libc`. What is left here is the wrapper:
//! one function per ioctl, each returning the errno the kernel gave.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use linux_raw_sys::general::{
    UFFD_API, UFFD_EVENT_PAGEFAULT, UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_WRITE,
    UFFDIO_COPY_MODE_DONTWAKE, UFFDIO_REGISTER_MODE_MINOR, UFFDIO_REGISTER_MODE_MISSING,
    UFFDIO_ZEROPAGE_MODE_DONTWAKE, USERFAULTFD_IOC, uffd_msg, uffdio_api, uffdio_continue,
    uffdio_copy, uffdio_range, uffdio_register, uffdio_zeropage,
};
use linux_raw_sys::ioctl::{
    UFFDIO_API, UFFDIO_CONTINUE, UFFDIO_COPY, UFFDIO_REGISTER, UFFDIO_WAKE, UFFDIO_ZEROPAGE,
};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::ioctl_io_nr;

pub use linux_raw_sys::general::{
    UFFD_FEATURE_MINOR_HUGETLBFS, UFFD_FEATURE_MINOR_SHMEM, UFFD_FEATURE_MISSING_HUGETLBFS,
    UFFD_FEATURE_MISSING_SHMEM,
};

// `((__u64)1<<0)` in the header: bindgen (and so linux-raw-sys) skips casted macros.
const UFFDIO_CONTINUE_MODE_DONTWAKE: u64 = 1;

// /dev/userfaultfd's only ioctl (include/uapi/linux/userfaultfd.h): a new userfaultfd.
ioctl_io_nr!(USERFAULTFD_IOC_NEW, USERFAULTFD_IOC, 0x00);

/// Where /dev/userfaultfd lives (Linux 6.1+): lets a user with access to it handle
/// kernel-mode faults (KVM's) without `vm.unprivileged_userfaultfd`.
const DEVICE: &str = "/dev/userfaultfd";

/// Which faults a registered range reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterMode(u64);

impl RegisterMode {
    /// Faults on pages with no page-cache page (or, for anon, no page at all).
    pub const MISSING: Self = Self(UFFDIO_REGISTER_MODE_MISSING as u64);
    /// Faults on pages present in the page cache but not mapped here (shmem, hugetlbfs).
    pub const MINOR: Self = Self(UFFDIO_REGISTER_MODE_MINOR as u64);
}

impl std::ops::BitOr for RegisterMode {
    type Output = Self;
    fn bitor(self, o: Self) -> Self {
        Self(self.0 | o.0)
    }
}

/// A failed userfaultfd call: which one, and the errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed: {}", io::Error::from_raw_os_error(*.errno))]
pub struct UffdError {
    /// The call, e.g. `UFFDIO_CONTINUE`.
    pub call: &'static str,
    /// The errno the kernel returned.
    pub errno: i32,
}

impl UffdError {
    fn last(call: &'static str) -> Self {
        Self {
            call,
            errno: io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        }
    }
}

/// One page fault read from the userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pagefault {
    /// The faulting address (page-aligned unless UFFD_FEATURE_EXACT_ADDRESS).
    pub addr: u64,
    /// A MINOR fault (the page is in the page cache but not mapped here).
    pub minor: bool,
    /// The access was a write.
    pub write: bool,
}

/// A message read from the userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Pagefault(Pagefault),
    /// Any other event (fork, remap, remove, unmap): the resolver registers for none.
    Other {
        event: u8,
    },
}

impl Event {
    fn from_msg(m: &uffd_msg) -> Self {
        let event = m.event;
        if u32::from(event) != UFFD_EVENT_PAGEFAULT {
            return Self::Other { event };
        }
        // SAFETY: for UFFD_EVENT_PAGEFAULT the kernel fills the `pagefault` member of the
        // union; every bit pattern is a valid u64.
        let (flags, address) = unsafe { (m.arg.pagefault.flags, m.arg.pagefault.address) };
        Self::Pagefault(Pagefault {
            addr: address,
            minor: flags & u64::from(UFFD_PAGEFAULT_FLAG_MINOR) != 0,
            write: flags & u64::from(UFFD_PAGEFAULT_FLAG_WRITE) != 0,
        })
    }
}

/// A buffer for [`Uffd::read_events`].
pub struct EventBuffer(Vec<uffd_msg>);

impl std::fmt::Debug for EventBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventBuffer({} messages)", self.0.len())
    }
}

impl EventBuffer {
    /// Room for `n` messages per read.
    pub fn new(n: usize) -> Self {
        // SAFETY: uffd_msg is plain old data (integers and a union of integers): all zeros is
        // a valid value.
        Self(vec![unsafe { std::mem::zeroed() }; n.max(1)])
    }
}

/// An open userfaultfd (created with O_CLOEXEC; closed on drop).
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Turns an ioctl's return value into a result.
fn check(call: &'static str, ret: i32) -> Result<(), UffdError> {
    if ret < 0 {
        Err(UffdError::last(call))
    } else {
        Ok(())
    }
}

fn range(addr: *mut libc::c_void, len: usize) -> uffdio_range {
    uffdio_range {
        start: addr as u64,
        len: len as u64,
    }
}

impl Uffd {
    /// Opens a userfaultfd that also sees kernel-mode faults (KVM's), optionally
    /// non-blocking, and enables `features` (UFFD_FEATURE_* bits); fails with EINVAL when
    /// the kernel lacks one of them.
    ///
    /// Tries /dev/userfaultfd first (access to it is the modern grant for kernel-mode
    /// faults), then the syscall (root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1).
    pub fn new(features: u64, non_blocking: bool) -> Result<Self, UffdError> {
        let mut flags = libc::O_CLOEXEC;
        if non_blocking {
            flags |= libc::O_NONBLOCK;
        }
        let fd = Self::from_device(flags).or_else(|_| Self::from_syscall(flags))?;
        let uffd = Self { fd };
        let mut api = uffdio_api {
            api: u64::from(UFFD_API),
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes exactly one uffdio_api, which `api` is.
        check("UFFDIO_API", unsafe {
            ioctl_with_mut_ref(&uffd, UFFDIO_API.into(), &mut api)
        })?;
        Ok(uffd)
    }

    fn from_device(flags: i32) -> Result<OwnedFd, UffdError> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEVICE)
            .map_err(|e| UffdError {
                call: "open(/dev/userfaultfd)",
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            })?;
        // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and touches no memory of ours.
        let fd = unsafe { ioctl_with_val(&dev, USERFAULTFD_IOC_NEW(), flags as libc::c_ulong) };
        if fd < 0 {
            return Err(UffdError::last("USERFAULTFD_IOC_NEW"));
        }
        // SAFETY: the ioctl returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn from_syscall(flags: i32) -> Result<OwnedFd, UffdError> {
        // SAFETY: userfaultfd(2) takes only flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(UffdError::last("userfaultfd(2)"));
        }
        // SAFETY: the syscall returned a new descriptor (it fits an int) that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// Registers `len` bytes at `addr` for the faults `mode` names; returns the ioctls the
    /// range supports (a bit per `_UFFDIO_*` number).
    pub fn register(
        &self,
        addr: *mut libc::c_void,
        len: usize,
        mode: RegisterMode,
    ) -> Result<u64, UffdError> {
        let mut reg = uffdio_register {
            range: range(addr, len),
            mode: mode.0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes exactly one uffdio_register. The range is
        // checked by the kernel (EINVAL/ENOMEM outside a suitable mapping).
        check("UFFDIO_REGISTER", unsafe {
            ioctl_with_mut_ref(self, UFFDIO_REGISTER.into(), &mut reg)
        })?;
        Ok(reg.ioctls)
    }

    /// Wakes the threads waiting on faults in `len` bytes at `addr`.
    pub fn wake(&self, addr: *mut libc::c_void, len: usize) -> Result<(), UffdError> {
        let r = range(addr, len);
        // SAFETY: UFFDIO_WAKE only reads one uffdio_range.
        check("UFFDIO_WAKE", unsafe {
            ioctl_with_ref(self, UFFDIO_WAKE.into(), &r)
        })
    }

    /// Maps the page-cache pages behind `len` bytes at `addr` into the registered range
    /// (MINOR faults), waking the faulting threads if `wake`. Returns the bytes mapped; a
    /// range that was partly mapped already fails with EEXIST.
    pub fn r#continue(
        &self,
        addr: *mut libc::c_void,
        len: usize,
        wake: bool,
    ) -> Result<usize, UffdError> {
        let mut c = uffdio_continue {
            range: range(addr, len),
            mode: if wake {
                0
            } else {
                UFFDIO_CONTINUE_MODE_DONTWAKE
            },
            mapped: 0,
        };
        // SAFETY: UFFDIO_CONTINUE reads and writes exactly one uffdio_continue; it maps
        // existing page-cache pages and writes no memory of ours.
        let ret = unsafe { ioctl_with_mut_ref(self, UFFDIO_CONTINUE.into(), &mut c) };
        match check("UFFDIO_CONTINUE", ret) {
            // Interrupted after mapping part of it: report what was mapped.
            Err(e) if e.errno == libc::EAGAIN && c.mapped > 0 => Ok(c.mapped as usize),
            Err(e) => Err(e),
            Ok(()) => Ok(c.mapped.max(0) as usize),
        }
    }

    /// Copies `len` bytes from `src` into the registered, still missing range at `dst`.
    ///
    /// # Safety
    /// `dst` must be memory whose contents no Rust reference is borrowing (the kernel writes
    /// it); `src` must be readable for `len` bytes.
    pub unsafe fn copy(
        &self,
        src: *const libc::c_void,
        dst: *mut libc::c_void,
        len: usize,
        wake: bool,
    ) -> Result<usize, UffdError> {
        let mut c = uffdio_copy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: if wake {
                0
            } else {
                u64::from(UFFDIO_COPY_MODE_DONTWAKE)
            },
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes exactly one uffdio_copy; the memory it copies
        // from and into is the caller's promise above.
        let ret = unsafe { ioctl_with_mut_ref(self, UFFDIO_COPY.into(), &mut c) };
        check("UFFDIO_COPY", ret)?;
        Ok(c.copy.max(0) as usize)
    }

    /// Maps zero pages into the registered, still missing range of `len` bytes at `dst`.
    ///
    /// # Safety
    /// As [`Uffd::copy`] for `dst`.
    pub unsafe fn zeropage(
        &self,
        dst: *mut libc::c_void,
        len: usize,
        wake: bool,
    ) -> Result<usize, UffdError> {
        let mut z = uffdio_zeropage {
            range: range(dst, len),
            mode: if wake {
                0
            } else {
                u64::from(UFFDIO_ZEROPAGE_MODE_DONTWAKE)
            },
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes exactly one uffdio_zeropage; the memory it
        // maps is the caller's promise above.
        let ret = unsafe { ioctl_with_mut_ref(self, UFFDIO_ZEROPAGE.into(), &mut z) };
        check("UFFDIO_ZEROPAGE", ret)?;
        Ok(z.zeropage.max(0) as usize)
    }

    /// Reads the pending messages (none when non-blocking and nothing is pending).
    pub fn read_events<'a>(
        &self,
        buf: &'a mut EventBuffer,
    ) -> Result<impl Iterator<Item = Event> + 'a, UffdError> {
        let size = std::mem::size_of::<uffd_msg>();
        // SAFETY: the buffer is `buf.0.len()` messages long and the kernel writes at most
        // that many whole messages into it.
        let n = unsafe {
            libc::read(
                self.as_raw_fd(),
                buf.0.as_mut_ptr().cast(),
                buf.0.len() * size,
            )
        };
        let count = match n {
            n if n < 0 => match UffdError::last("read(userfaultfd)") {
                e if e.errno == libc::EAGAIN => 0,
                e => return Err(e),
            },
            // A userfaultfd never reaches end-of-file while open; the read is whole messages.
            n if n == 0 || !(n as usize).is_multiple_of(size) => {
                return Err(UffdError {
                    call: "read(userfaultfd)",
                    errno: libc::EIO,
                });
            }
            n => n as usize / size,
        };
        Ok(buf.0[..count].iter().map(Event::from_msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Mapping, PAGE_SIZE};

    /// Creating a userfaultfd needs root (or a grant); tests without one say so.
    fn uffd_or_skip(features: u64) -> Option<Uffd> {
        match Uffd::new(features, true) {
            Ok(u) => Some(u),
            Err(e) => {
                let why = format!("cannot create a userfaultfd here: {e}");
                crate::testing::skip("uffd test", crate::testing::Need::Kvm, why);
                None
            }
        }
    }

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        // _IOWR(0xAA, nr, struct): direction 3, size, type 0xAA, number.
        let iowr = |nr: u32, size: usize| (3u32 << 30) | ((size as u32) << 16) | (0xAA << 8) | nr;
        assert_eq!(UFFDIO_API, iowr(0x3F, std::mem::size_of::<uffdio_api>()));
        assert_eq!(
            UFFDIO_REGISTER,
            iowr(0x00, std::mem::size_of::<uffdio_register>())
        );
        assert_eq!(
            UFFDIO_CONTINUE,
            iowr(0x07, std::mem::size_of::<uffdio_continue>())
        );
        assert_eq!(UFFDIO_COPY, iowr(0x03, std::mem::size_of::<uffdio_copy>()));
        assert_eq!(USERFAULTFD_IOC_NEW(), 0xAA00);
        assert_eq!(std::mem::size_of::<uffd_msg>(), 32);
    }

    #[test]
    fn a_pagefault_message_decodes() {
        let mut buf = EventBuffer::new(1);
        buf.0[0].event = UFFD_EVENT_PAGEFAULT as u8;
        buf.0[0].arg.pagefault.flags =
            u64::from(UFFD_PAGEFAULT_FLAG_MINOR | UFFD_PAGEFAULT_FLAG_WRITE);
        buf.0[0].arg.pagefault.address = 0x7f00_0000_1000;
        assert_eq!(
            Event::from_msg(&buf.0[0]),
            Event::Pagefault(Pagefault {
                addr: 0x7f00_0000_1000,
                minor: true,
                write: true
            })
        );
        buf.0[0].event = 0x16; // UFFD_EVENT_UNMAP
        assert_eq!(Event::from_msg(&buf.0[0]), Event::Other { event: 0x16 });
    }

    #[test]
    fn an_empty_non_blocking_read_is_no_event() {
        let Some(u) = uffd_or_skip(0) else { return };
        let mut buf = EventBuffer::new(4);
        assert_eq!(u.read_events(&mut buf).unwrap().count(), 0);
    }

    #[test]
    fn register_copy_and_errors_name_the_call() {
        let Some(u) = uffd_or_skip(0) else { return };
        let m = Mapping::anonymous(2 * PAGE_SIZE).unwrap();
        let ioctls = u
            .register(m.as_ptr().cast(), m.len(), RegisterMode::MISSING)
            .unwrap();
        assert_ne!(
            ioctls & (1 << 3),
            0,
            "COPY is supported on anon: {ioctls:#x}"
        );
        let src = [0x5au8; PAGE_SIZE];
        // SAFETY: the mapping is ours and nothing borrows its contents.
        let n = unsafe { u.copy(src.as_ptr().cast(), m.as_ptr().cast(), PAGE_SIZE, true) };
        assert_eq!(n, Ok(PAGE_SIZE));
        // SAFETY: as above; the page is present now, so the kernel refuses.
        let e =
            unsafe { u.copy(src.as_ptr().cast(), m.as_ptr().cast(), PAGE_SIZE, true) }.unwrap_err();
        assert_eq!((e.call, e.errno), ("UFFDIO_COPY", libc::EEXIST));
        assert!(
            e.to_string().starts_with("UFFDIO_COPY failed: File exists"),
            "{e}"
        );
        // SAFETY: the first page was filled by the copy above.
        assert_eq!(unsafe { *m.as_ptr() }, 0x5a);
        // A range that is not page-aligned.
        let e = u
            .wake(m.as_ptr().wrapping_add(1).cast(), PAGE_SIZE)
            .unwrap_err();
        assert_eq!((e.call, e.errno), ("UFFDIO_WAKE", libc::EINVAL));
    }

    #[test]
    fn shmem_minor_mode_maps_with_continue() {
        let Some(u) = uffd_or_skip(u64::from(UFFD_FEATURE_MINOR_SHMEM)) else {
            return;
        };
        let memfd = crate::sys::memfd("uffd-test", PAGE_SIZE as u64).unwrap();
        let writer = Mapping::shared(&memfd, PAGE_SIZE).unwrap();
        let view = Mapping::shared(&memfd, PAGE_SIZE).unwrap();
        u.register(
            view.as_ptr().cast(),
            PAGE_SIZE,
            RegisterMode::MISSING | RegisterMode::MINOR,
        )
        .unwrap();
        // SAFETY: the writer view is ours and nothing borrows it.
        unsafe { *writer.as_ptr() = 7 };
        assert_eq!(
            u.r#continue(view.as_ptr().cast(), PAGE_SIZE, true),
            Ok(PAGE_SIZE)
        );
        let e = u
            .r#continue(view.as_ptr().cast(), PAGE_SIZE, true)
            .unwrap_err();
        assert_eq!(e.errno, libc::EEXIST);
        // SAFETY: the page is mapped now.
        assert_eq!(unsafe { *view.as_ptr() }, 7);
    }
}
