// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Seccomp filters, one per thread kind (rust-vmm `seccompiler`).
//!
//! Each thread installs its own filter at the start of its work, after its setup (affinity,
//! io_uring rings are created lazily and stay allowed); threads it spawns afterwards would
//! inherit it, so the main thread installs its filter last, once every thread is running.
//!
//! The allow-lists were found by running every stage-2 mode, backing, policy, fault-in mode,
//! payload, `--inject-pin-failure` and several vCPUs under `strace -ff`, then widened by the
//! syscalls the same code reaches on paths strace did not see (allocation, thread exit,
//! error reporting, vDSO fallbacks).
//!
//! **Denied syscalls fail with `EPERM`** (not `KillThread`/`KillProcess`): the syscall never
//! runs either way, and an `EPERM` surfaces through the code's ordinary error paths into the
//! report (`vmm_error` with the errno) instead of a thread that silently vanishes and leaves
//! the VM to its timeout or a joined thread with no result.
//!
//! Filters are built for x86_64 and aarch64 (the same lists: the calls are the same, only the
//! numbers differ; aarch64 has no `epoll_wait`, only `epoll_pwait`). On other architectures
//! [`install`] does nothing. Protected VMs' vCPU threads are filtered too (KVM takes their
//! pins inside KVM_RUN). The aarch64 lists are tested on the arm64 board: every policy and a
//! Linux guest run filtered, and [`self_test`] (in `pinvmm probe`) shows a denied call failing
//! with EPERM.

use std::sync::Arc;

use serde::Serialize;

use crate::control::{HostFailure, VmControl, VmEvent};

/// Which threads of a VM get a seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompMode {
    /// No filter anywhere (`pinvmm run --no-seccomp`).
    Off,
    /// vCPU and resolver threads only: the default for VMs run in-process (tests, campaign,
    /// bench), whose calling thread goes on to do other work.
    #[default]
    Threads,
    /// Also the thread that built the VM (`builder::build`), once every VM thread is running
    /// (`pinvmm run`). Irreversible for that thread.
    All,
}

impl SeccompMode {
    /// Whether vCPU and resolver threads are filtered.
    pub fn threads(self) -> bool {
        self != Self::Off
    }
}

/// The kinds of thread that get a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs KVM_RUN and emulates MMIO/PIO devices.
    Vcpu,
    /// The fault-in thread: fault-in, drains (and, alone, the userfaultfd event loop and the
    /// pin).
    Fault,
    /// The pin thread: userfaultfd event loop, drain, long-term pin (io_uring),
    /// UFFDIO_CONTINUE and wake.
    Pin,
    /// The thread that built the VM: waits, kicks the vCPUs, tears down, writes the report.
    Main,
}

/// A filter that could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter of the {kind:?} thread: {err}")]
    Build {
        kind: ThreadKind,
        err: seccompiler::BackendError,
    },
    #[error("cannot compile the seccomp filter of the {kind:?} thread to BPF: {err}")]
    Compile {
        kind: ThreadKind,
        err: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter of the {kind:?} thread: {err}")]
    Install {
        kind: ThreadKind,
        err: seccompiler::Error,
    },
}

/// Whether this build has filters (x86_64, aarch64).
pub const SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Installs `kind`'s filter on the calling thread.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let prog = filter::program(kind)?;
    seccompiler::apply_filter(&prog).map_err(|err| SeccompError::Install { kind, err })
}

/// Does nothing: filters exist for x86_64 and aarch64 only.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn install(_kind: ThreadKind) -> Result<(), SeccompError> {
    Ok(())
}

/// What [`self_test`] found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SelfTest {
    /// The errno `socket(2)` got in a thread with the vCPU filter (EPERM when it works).
    pub denied_errno: i32,
    /// Whether an allowed call (`gettid`, a 4 MiB allocation) still worked there.
    pub allowed_ok: bool,
}

/// Installs the vCPU filter in a fresh thread (filters are per thread and irreversible), then
/// makes a call it denies (`socket`) and calls it allows: what `pinvmm probe` reports, so the
/// filters are shown to work on each host and architecture (the arm64 board included).
pub fn self_test() -> Result<SelfTest, String> {
    if !SUPPORTED {
        return Err(format!("no seccomp filters for {}", std::env::consts::ARCH));
    }
    std::thread::spawn(|| {
        install(ThreadKind::Vcpu).map_err(|e| e.to_string())?;
        // SAFETY: socket(2) takes no pointers; a returned fd (the failure case) is closed.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        let denied_errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if fd >= 0 {
            // SAFETY: `fd` was just returned by socket(2) and is owned here.
            unsafe { libc::close(fd) };
        }
        // SAFETY: gettid(2) has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        let v = vec![7u8; 4 << 20];
        Ok(SelfTest {
            denied_errno: if fd >= 0 { 0 } else { denied_errno },
            allowed_ok: tid > 0 && v[v.len() - 1] == 7,
        })
    })
    .join()
    .map_err(|_| "the filtered test thread died".to_string())?
}

/// Installs `kind`'s filter if `enabled`; a failure fails the VM (a `HostFailed` event,
/// reported as a VMM error) rather than running it unfiltered unnoticed. Returns whether the
/// calling thread now runs under its filter (false when not `enabled`, on an architecture
/// without filters, or when installing failed).
pub fn install_or_fail_vm(kind: ThreadKind, enabled: bool, ctl: &Arc<VmControl>) -> bool {
    if !enabled || !SUPPORTED {
        return false;
    }
    if let Err(e) = install(kind) {
        let thread = match kind {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Fault => "fault-in",
            ThreadKind::Pin => "pin",
            ThreadKind::Main => "main",
        };
        let errno = match &e {
            SeccompError::Install {
                err: seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e),
                ..
            } => e.raw_os_error(),
            _ => None,
        };
        ctl.send(VmEvent::HostFailed(HostFailure::named(
            "seccomp",
            "seccomp(SECCOMP_SET_MODE_FILTER)",
            errno,
            thread,
            e.to_string(),
        )));
        return false;
    }
    true
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod filter {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::{SeccompError, ThreadKind};

    /// `KVM_RUN` = `_IO(KVMIO, 0x80)`.
    pub const KVM_RUN: u64 = 0xae80;
    /// The userfaultfd ioctl type (`UFFDIO` = 0xAA): COPY, ZEROPAGE, CONTINUE, WAKE.
    const UFFDIO_TYPE: u64 = 0xaa;

    /// What every Rust thread needs: memory, locks/channels, time, signals, exit.
    const COMMON: &[i64] = &[
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_mprotect,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_getcpu,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_close,
        libc::SYS_write, // stderr, eventfds, the echoed console
        libc::SYS_exit,
    ];

    /// vCPU threads: their own scheduler statistics at the end (`sched::SchedProbe`, opened
    /// before the filter), and a protected VM's vCPU reads the failed folio's state at once
    /// when its KVM_RUN fails (pagemap, kpageflags: fds opened before the filter).
    const VCPU: &[i64] = &[libc::SYS_read, libc::SYS_pread64];

    /// Resolver threads (fault-in and pin): drains, pins, userfaultfd.
    const RESOLVER: &[i64] = &[
        libc::SYS_read,
        // /proc/loadavg (whether to poll for a hand-off or sleep); the folio's state at a
        // failed pin (pagemap, kpageflags)
        libc::SYS_pread64,
        libc::SYS_io_uring_setup, // the pin table's ring is created on first use
        libc::SYS_io_uring_register,
        libc::SYS_io_uring_enter,
        libc::SYS_migrate_pages, // lru-add-drain / retry
    ];

    /// The event loop of the thread that reads the userfaultfd (pin or fault-in thread;
    /// aarch64 has only `epoll_pwait`).
    const FAULT: &[i64] = &[
        #[cfg(target_arch = "x86_64")]
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
    ];

    #[cfg(target_arch = "x86_64")]
    const ARCH: TargetArch = TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    const ARCH: TargetArch = TargetArch::aarch64;

    /// The main thread after setup: kicks, teardown, /proc reads, the JSON report.
    const MAIN: &[i64] = &[
        libc::SYS_read,
        libc::SYS_openat,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
        libc::SYS_statx,
        libc::SYS_lseek,
        libc::SYS_getdents64,
        libc::SYS_fcntl,
        libc::SYS_tgkill,
        libc::SYS_io_uring_register, // releasing the pins
        libc::SYS_rt_sigaction,
        libc::SYS_exit_group,
        libc::SYS_pread64, // KVM's stats fd, /proc/self/pagemap, /proc/kpageflags
        libc::SYS_mincore, // which granules are resident (the report's granule facts)
        // --trace: removing the VM's tracefs instance at teardown (rmdir(3): aarch64 has
        // only unlinkat(AT_REMOVEDIR)).
        #[cfg(target_arch = "x86_64")]
        libc::SYS_rmdir,
        #[cfg(target_arch = "aarch64")]
        libc::SYS_unlinkat,
    ];

    fn cond(
        arg: u8,
        op: SeccompCmpOp,
        val: u64,
        kind: ThreadKind,
    ) -> Result<SeccompRule, SeccompError> {
        let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, val)
            .map_err(|err| SeccompError::Build { kind, err })?;
        SeccompRule::new(vec![c]).map_err(|err| SeccompError::Build { kind, err })
    }

    pub fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        let lists: &[&[i64]] = match kind {
            ThreadKind::Vcpu => &[COMMON, VCPU],
            ThreadKind::Pin => &[COMMON, RESOLVER, FAULT],
            ThreadKind::Fault => &[COMMON, RESOLVER, FAULT],
            ThreadKind::Main => &[COMMON, MAIN],
        };
        for nr in lists.iter().flat_map(|l| l.iter()) {
            rules.insert(*nr, vec![]);
        }
        // ioctl: vCPUs only KVM_RUN; resolvers only userfaultfd's; main none.
        let ioctl = match kind {
            ThreadKind::Vcpu => Some(cond(1, SeccompCmpOp::Eq, KVM_RUN, kind)?),
            ThreadKind::Fault | ThreadKind::Pin => Some(cond(
                1,
                SeccompCmpOp::MaskedEq(0xff00),
                UFFDIO_TYPE << 8,
                kind,
            )?),
            ThreadKind::Main => None,
        };
        if let Some(r) = ioctl {
            rules.insert(libc::SYS_ioctl, vec![r]);
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            ARCH,
        )
        .map_err(|err| SeccompError::Build { kind, err })?;
        filter
            .try_into()
            .map_err(|err| SeccompError::Compile { kind, err })
    }
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// In a fresh thread (filters are per thread): install the vCPU filter, then a forbidden
    /// syscall (`socket`, a non-KVM_RUN ioctl) fails with EPERM while allowed ones work.
    #[test]
    fn vcpu_filter_denies_socket_with_eperm_and_allows_its_syscalls() {
        let r = std::thread::spawn(|| {
            install(ThreadKind::Vcpu).map_err(|e| e.to_string())?;
            // SAFETY: socket(2) takes no pointers; a returned fd (the failure case) is closed.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let socket_errno = errno();
            if fd >= 0 {
                // SAFETY: `fd` was just returned by socket(2) and is owned here.
                unsafe { libc::close(fd) };
            }
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD on stdin writes one c_int into `n`, which outlives the call.
            let ioctl_rc = unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
            let ioctl_errno = errno();
            // Allowed: gettid, and memory allocation (mmap/munmap via a large Vec).
            // SAFETY: gettid(2) has no arguments and cannot fail.
            let tid = unsafe { libc::gettid() };
            let v = vec![7u8; 4 << 20];
            Ok::<_, String>((fd, socket_errno, ioctl_rc, ioctl_errno, tid, v[v.len() - 1]))
        })
        .join()
        .expect("the filtered thread was not killed");
        let (fd, socket_errno, ioctl_rc, ioctl_errno, tid, last) = r.expect("install");
        assert_eq!(
            (fd, socket_errno),
            (-1, libc::EPERM),
            "socket(2) must be denied"
        );
        assert_eq!(
            (ioctl_rc, ioctl_errno),
            (-1, libc::EPERM),
            "FIONREAD must be denied"
        );
        assert!(tid > 0);
        assert_eq!(last, 7);
        // This thread is unfiltered: socket(2) still works here.
        // SAFETY: as above; the fd is closed at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0, "the filter leaked to another thread");
        // SAFETY: `fd` is owned here.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn self_test_sees_eperm() {
        assert_eq!(
            self_test(),
            Ok(SelfTest {
                denied_errno: libc::EPERM,
                allowed_ok: true
            })
        );
    }

    #[test]
    fn every_filter_compiles() {
        for k in [
            ThreadKind::Vcpu,
            ThreadKind::Fault,
            ThreadKind::Pin,
            ThreadKind::Main,
        ] {
            filter::program(k).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
