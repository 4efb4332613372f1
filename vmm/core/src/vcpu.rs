// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The vCPU run loop. Exit handling is a pure function over `Result<VcpuExit, Error>` (as in
//! Firecracker's `handle_kvm_exit`), so every exit, including synthetic errors, is unit-tested
//! without a guest.

use std::sync::Arc;
use std::sync::Once;

use devices::bus::Access;
use devices::{Bus, StopRequest};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::control::{HostFailure, VcpuOutcome, VmControl, VmEvent};
use crate::inject::{Injector, Site};
use crate::sys::errno_name;

/// Exits seen, for reports and hostile-guest checks.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ExitCounts {
    pub pio: u64,
    pub mmio: u64,
    /// Accesses no device answered (reads got all ones, writes were dropped).
    pub unmapped: u64,
    pub interrupted: u64,
    /// The first of them.
    pub first_unmapped: Option<UnmappedAccess>,
}

/// An access to an address no device claims.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct UnmappedAccess {
    /// `pio` or `mmio`.
    pub bus: &'static str,
    pub addr: u64,
    pub write: bool,
    pub len: usize,
}

impl std::fmt::Display for UnmappedAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, dir) = match (self.bus, self.write) {
            ("pio", true) => ("port", "write to"),
            ("pio", false) => ("port", "read from"),
            (_, true) => ("GPA", "write to"),
            (_, false) => ("GPA", "read from"),
        };
        write!(f, "{}-byte {dir} {what} {:#x}", self.len, self.addr)
    }
}

/// The buses a vCPU dispatches to (its own clones).
#[derive(Debug, Clone, Default)]
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// What kind of VM a vCPU belongs to: what a failed `KVM_RUN` means depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmKind {
    /// An ordinary VM: pinvmm resolves (or KVM maps) every page; a failed KVM_RUN is a host
    /// or VMM error.
    Normal,
    /// A pKVM protected VM: KVM long-term-pins each faulting page itself, and reports a pin it
    /// could not take as `KVM_RUN` = EFAULT (7.3), or as a `KVM_EXIT_MEMORY_FAULT` exit naming
    /// the IPA (kernels that report it).
    Protected,
}

/// A `KVM_RUN` that failed for a reason that is neither the guest's doing nor a failed pin of
/// a protected VM: the VM ends as a VMM error (exit 1), its report names the errno, the GPA
/// when KVM gave one, and what the errno means here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFailure {
    /// The errno KVM_RUN returned (EFAULT for a memory-fault exit).
    pub errno: i32,
    pub gpa: Option<u64>,
    pub what: String,
}

/// What the loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// The guest's run ended: its own exit, a crash, a reset, or an exit pinvmm does not handle.
    Stop(VcpuOutcome),
    /// Protected VM: KVM could not long-term-pin the faulting page (pKVM's failed pin). The
    /// loop terminates the VM (exit 5) or, under `--policy retry`, runs again.
    PinFailed {
        errno: i32,
        gpa: Option<u64>,
    },
    /// KVM_RUN failed: a VMM error (exit 1).
    RunFailed(RunFailure),
}

fn account(a: Access, counts: &mut ExitCounts, at: UnmappedAccess) -> Action {
    match a {
        Access::Handled(Some(StopRequest::GuestExit(status))) => {
            Action::Stop(VcpuOutcome::Exited { status })
        }
        // The same outcome as arm64's PSCI SYSTEM_RESET (below).
        Access::Handled(Some(StopRequest::GuestReset)) => Action::Stop(VcpuOutcome::Crashed {
            reason: "guest asked for a reset (keyboard controller)".into(),
        }),
        // The payload's exception vectors reported an exception it took: a crash, said at once.
        Access::Handled(Some(StopRequest::GuestException(e))) => {
            Action::Stop(VcpuOutcome::Crashed {
                reason: crate::arch::exceptions::describe(&e).to_string(),
            })
        }
        Access::Handled(None) => Action::Continue,
        Access::Unmapped => {
            counts.unmapped += 1;
            counts.first_unmapped.get_or_insert(at);
            Action::Continue
        }
    }
}

fn at(bus: &'static str, addr: u64, write: bool, len: usize) -> UnmappedAccess {
    UnmappedAccess {
        bus,
        addr,
        write,
        len,
    }
}

/// Classifies one KVM_RUN result and handles its device access: a pure function of the result
/// (synthetic ones in the tests), the VM's kind and the buses. Every way KVM_RUN can end lands
/// in one of four classes ([`Action`]): go on; the guest's run ended (exit 0 or 4); a failed
/// pin of a protected VM (exit 5); a VMM error (exit 1).
pub fn handle_exit(
    r: Result<VcpuExit<'_>, kvm_ioctls::Error>,
    kind: VmKind,
    buses: &Buses,
    counts: &mut ExitCounts,
) -> Action {
    match r {
        Ok(VcpuExit::IoOut(port, data)) => {
            counts.pio += 1;
            let a = at("pio", port.into(), true, data.len());
            account(buses.pio.write(port.into(), data), counts, a)
        }
        Ok(VcpuExit::IoIn(port, data)) => {
            counts.pio += 1;
            let a = at("pio", port.into(), false, data.len());
            account(buses.pio.read(port.into(), data), counts, a)
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            counts.mmio += 1;
            let a = at("mmio", addr, true, data.len());
            account(buses.mmio.write(addr, data), counts, a)
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            counts.mmio += 1;
            let a = at("mmio", addr, false, data.len());
            account(buses.mmio.read(addr, data), counts, a)
        }
        Ok(VcpuExit::Hlt) => Action::Stop(VcpuOutcome::Halted),
        Ok(VcpuExit::Shutdown) => Action::Stop(VcpuOutcome::Crashed {
            reason: "shutdown exit (x86: triple fault)".into(),
        }),
        Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                Action::Stop(VcpuOutcome::Exited { status: 0 })
            }
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Action::Stop(VcpuOutcome::Crashed {
                reason: "guest asked for a reset".into(),
            }),
            other => Action::Stop(VcpuOutcome::Crashed {
                reason: format!("system event {other}"),
            }),
        },
        Ok(VcpuExit::FailEntry(reason, cpu)) => Action::Stop(VcpuOutcome::Crashed {
            reason: format!("KVM entry failed: hardware reason {reason:#x} on CPU {cpu}"),
        }),
        Ok(VcpuExit::InternalError) => Action::Stop(VcpuOutcome::Crashed {
            reason: "KVM internal error".into(),
        }),
        Ok(VcpuExit::Intr) => {
            counts.interrupted += 1;
            Action::Continue
        }
        // KVM_RUN = -1 with errno EFAULT (or EHWPOISON) and exit reason KVM_EXIT_MEMORY_FAULT:
        // KVM could not map the page at `gpa` and says which. kvm-ioctls turns it into this
        // value, so the errno is not kept: EFAULT, the common case.
        Ok(VcpuExit::MemoryFault { gpa, .. }) => failed_access(kind, libc::EFAULT, Some(gpa)),
        // Exits pinvmm never enables (MSR, hypercall, debug, IRQ window, other arches') or
        // that this kvm-ioctls does not know: a guest cannot cause them on its own.
        Ok(other) => Action::RunFailed(RunFailure {
            errno: 0,
            gpa: None,
            what: format!("KVM exited with {other:?}, an exit pinvmm does not handle"),
        }),
        Err(e) => run_error(e.errno(), kind, counts),
    }
}

/// A guest access KVM could not map (EFAULT, with or without the GPA).
fn failed_access(kind: VmKind, errno: i32, gpa: Option<u64>) -> Action {
    match kind {
        VmKind::Protected => Action::PinFailed { errno, gpa },
        VmKind::Normal => Action::RunFailed(RunFailure {
            errno,
            gpa,
            what: format!(
                "KVM could not map guest memory{} ({}): an unresolved or unbacked page",
                gpa.map(|g| format!(" at GPA {g:#x}")).unwrap_or_default(),
                errno_name(errno)
            ),
        }),
    }
}

/// KVM_RUN returned -1: what its errno means.
fn run_error(errno: i32, kind: VmKind, counts: &mut ExitCounts) -> Action {
    let failed = |what: &str| {
        Action::RunFailed(RunFailure {
            errno,
            gpa: None,
            what: what.into(),
        })
    };
    match errno {
        // A kick (the VMM's signal) or a signal for another reason: the loop checks its stop
        // flag and runs again.
        libc::EINTR | libc::EAGAIN => {
            counts.interrupted += 1;
            Action::Continue
        }
        libc::EFAULT => failed_access(kind, errno, None),
        // arm64: a data abort on an address no memory slot backs whose syndrome KVM cannot
        // decode (ISV=0: a load/store pair, writeback, SIMD) -- the guest's doing.
        libc::ENOSYS if cfg!(target_arch = "aarch64") => Action::Stop(VcpuOutcome::Crashed {
            reason: "the guest accessed an unmapped address with an instruction KVM cannot \
                     emulate (arm64 data abort without a valid syndrome, ISV=0)"
                .into(),
        }),
        libc::EHWPOISON => failed("guest memory is hardware-poisoned (EHWPOISON)"),
        libc::ENOEXEC => failed("the vCPU was not initialised (ENOEXEC)"),
        libc::ENOMEM => failed("the host is out of memory (ENOMEM)"),
        libc::EPERM => failed("KVM_RUN was not permitted (EPERM: a seccomp filter?)"),
        _ => failed("KVM_RUN failed"),
    }
}

/// Signal used to kick a vCPU out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process: its only job is to make KVM_RUN
/// return EINTR.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut r = Ok(());
    ONCE.call_once(|| r = register_signal_handler(kick_signal(), noop_handler));
    r
}

/// Runs a vCPU until its guest exits or the VM is stopped; reports to the main thread. A
/// failed KVM_RUN (real, or injected by `faults` at `kvm-run`) is also reported as a host
/// failure, which ends the VM.
pub fn run_loop(
    id: u8,
    mut fd: VcpuFd,
    buses: Buses,
    ctl: Arc<VmControl>,
    faults: Arc<Injector>,
) -> ExitCounts {
    let mut counts = ExitCounts::default();
    let mut first = true;
    let outcome = loop {
        if ctl.stopping() {
            break VcpuOutcome::Stopped;
        }
        let (r, injected) = match faults.hit(Site::KvmRun) {
            Some(errno) => (Err(kvm_ioctls::Error::new(errno)), true),
            None => (fd.run(), false),
        };
        if std::mem::take(&mut first) {
            ctl.note_first_exit();
        }
        match handle_exit(r, VmKind::Normal, &buses, &mut counts) {
            Action::Continue => {}
            Action::Stop(o) => break o,
            // Only a protected VM's EFAULT is a failed pin: never here.
            Action::PinFailed { errno, gpa } => {
                let what = "KVM could not map guest memory".to_string();
                break report_run_failure(id, RunFailure { errno, gpa, what }, false, &ctl);
            }
            Action::RunFailed(f) => break report_run_failure(id, f, injected, &ctl),
        }
    };
    ctl.send(VmEvent::VcpuDone { id, outcome });
    counts
}

/// Tells the main thread that vCPU `id`'s KVM_RUN failed (a host failure at site `kvm-run`,
/// which ends the VM as a VMM error); returns the vCPU's outcome.
pub fn report_run_failure(id: u8, f: RunFailure, injected: bool, ctl: &VmControl) -> VcpuOutcome {
    let tag = if injected { " [injected]" } else { "" };
    let (errno, message) = if f.errno == 0 {
        (None, format!("vCPU {id}: {}", f.what))
    } else {
        let name = errno_name(f.errno);
        let gpa = f.gpa.map(|g| format!(", GPA {g:#x}")).unwrap_or_default();
        let msg = format!(
            "KVM_RUN of vCPU {id} failed with {name}{gpa}: {}{tag}",
            f.what
        );
        (Some(f.errno), msg)
    };
    ctl.send(VmEvent::HostFailed(HostFailure::at(
        Site::KvmRun,
        errno,
        injected,
        &format!("vcpu{id}"),
        f.gpa,
        message,
    )));
    match errno {
        Some(errno) => VcpuOutcome::RunFailed {
            errno,
            errno_name: errno_name(errno),
        },
        None => VcpuOutcome::Unhandled { exit: f.what },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use devices::TestDevice;

    use super::*;

    fn buses() -> Buses {
        let mut b = Buses::default();
        b.pio
            .insert(
                0xf0,
                TestDevice::LEN,
                Arc::new(Mutex::new(TestDevice::new())),
            )
            .unwrap();
        b
    }

    #[test]
    fn exit_register_stops_with_status() {
        let b = buses();
        let mut c = ExitCounts::default();
        let data = 3u32.to_le_bytes();
        assert_eq!(
            handle_exit(Ok(VcpuExit::IoOut(0xf0 + 0xc, &data)), N, &b, &mut c),
            Action::Stop(VcpuOutcome::Exited { status: 3 })
        );
        assert_eq!(c.pio, 1);
    }

    #[test]
    fn keyboard_controller_reset_ends_like_a_psci_reset() {
        let mut b = buses();
        let dev = Arc::new(Mutex::new(devices::I8042Device::new()));
        b.pio.insert(0x60, devices::i8042::LEN, dev).unwrap();
        let mut c = ExitCounts::default();
        let Action::Stop(out) = handle_exit(Ok(VcpuExit::IoOut(0x64, &[0xfe])), N, &b, &mut c)
        else {
            panic!("0xfe on port 0x64 did not stop the vCPU");
        };
        assert!(matches!(&out, VcpuOutcome::Crashed { reason } if reason.contains("reset")));
        assert_eq!(crate::linux::end_reason(Some(&out)), "reset");
    }

    #[test]
    fn unmapped_accesses_are_counted_and_survived() {
        let b = buses();
        let mut c = ExitCounts::default();
        let mut d = [0u8; 4];
        assert_eq!(
            handle_exit(Ok(VcpuExit::IoIn(0x80, &mut d)), N, &b, &mut c),
            Action::Continue
        );
        assert_eq!(d, [0xff; 4]);
        assert_eq!(
            handle_exit(Ok(VcpuExit::MmioWrite(0xdead_0000, &[1])), N, &b, &mut c),
            Action::Continue
        );
        assert_eq!((c.unmapped, c.mmio), (2, 1));
        assert_eq!(
            c.first_unmapped.map(|a| a.to_string()).as_deref(),
            Some("4-byte read from port 0x80")
        );
    }

    const N: VmKind = VmKind::Normal;
    const P: VmKind = VmKind::Protected;

    fn err(errno: i32) -> Result<VcpuExit<'static>, kvm_ioctls::Error> {
        Err(kvm_ioctls::Error::new(errno))
    }

    fn run_failed(a: &Action) -> Option<&RunFailure> {
        match a {
            Action::RunFailed(f) => Some(f),
            _ => None,
        }
    }

    /// Every failed KVM_RUN, in both kinds of VM: kicks go on, a protected VM's EFAULT is a
    /// failed pin, arm64's undecodable MMIO abort is the guest's crash, the rest VMM errors.
    #[test]
    fn every_errno_is_classified() {
        let b = buses();
        for kind in [N, P] {
            let mut c = ExitCounts::default();
            for e in [libc::EINTR, libc::EAGAIN] {
                assert_eq!(handle_exit(err(e), kind, &b, &mut c), Action::Continue);
            }
            assert_eq!(c.interrupted, 2);
            let efault = handle_exit(err(libc::EFAULT), kind, &b, &mut c);
            if kind == P {
                assert_eq!(
                    efault,
                    Action::PinFailed {
                        errno: libc::EFAULT,
                        gpa: None
                    }
                );
            } else {
                let f = run_failed(&efault).expect("EFAULT in a normal VM is a VMM error");
                assert_eq!((f.errno, f.gpa), (libc::EFAULT, None));
            }
            for e in [
                libc::EHWPOISON,
                libc::ENOEXEC,
                libc::ENOMEM,
                libc::EPERM,
                libc::EINVAL,
                libc::EIO,
            ] {
                let a = handle_exit(err(e), kind, &b, &mut c);
                let f = run_failed(&a).unwrap_or_else(|| panic!("errno {e}: {a:?}"));
                assert_eq!(f.errno, e);
                assert!(!f.what.is_empty());
            }
            let nosys = handle_exit(err(libc::ENOSYS), kind, &b, &mut c);
            if cfg!(target_arch = "aarch64") {
                assert!(
                    matches!(&nosys, Action::Stop(VcpuOutcome::Crashed { reason }) if reason.contains("ISV=0")),
                    "{nosys:?}"
                );
            } else {
                assert_eq!(run_failed(&nosys).map(|f| f.errno), Some(libc::ENOSYS));
            }
        }
    }

    /// `KVM_EXIT_MEMORY_FAULT` (kvm-ioctls' `Ok(MemoryFault)`): a failed pin of a protected VM
    /// with its GPA; in a normal VM a VMM error that keeps the GPA.
    #[test]
    fn memory_fault_exit_keeps_the_gpa() {
        let b = buses();
        let mut c = ExitCounts::default();
        let exit = || {
            Ok(VcpuExit::MemoryFault {
                flags: 0,
                gpa: 0x8010_2000,
                size: 4096,
            })
        };
        assert_eq!(
            handle_exit(exit(), P, &b, &mut c),
            Action::PinFailed {
                errno: libc::EFAULT,
                gpa: Some(0x8010_2000)
            }
        );
        let a = handle_exit(exit(), N, &b, &mut c);
        let f = run_failed(&a).expect("a VMM error");
        assert_eq!((f.errno, f.gpa), (libc::EFAULT, Some(0x8010_2000)));
        assert!(f.what.contains("0x80102000"), "{}", f.what);
    }

    /// The guest's own endings: exit, halt, triple fault, failed entry, internal error,
    /// PSCI/system events; and exits pinvmm never asked for, which are VMM errors.
    #[test]
    fn guest_endings_and_unhandled_exits() {
        let b = buses();
        for kind in [N, P] {
            let mut c = ExitCounts::default();
            let mut h = |r| handle_exit(r, kind, &b, &mut c);
            assert_eq!(h(Ok(VcpuExit::Hlt)), Action::Stop(VcpuOutcome::Halted));
            for r in [
                Ok(VcpuExit::Shutdown),
                Ok(VcpuExit::FailEntry(5, 1)),
                Ok(VcpuExit::InternalError),
                Ok(VcpuExit::SystemEvent(
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET,
                    &[],
                )),
                Ok(VcpuExit::SystemEvent(99, &[])),
            ] {
                let a = h(r);
                assert!(
                    matches!(a, Action::Stop(VcpuOutcome::Crashed { .. })),
                    "{a:?}"
                );
            }
            assert_eq!(
                h(Ok(VcpuExit::SystemEvent(
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN,
                    &[]
                ))),
                Action::Stop(VcpuOutcome::Exited { status: 0 })
            );
            assert_eq!(h(Ok(VcpuExit::Intr)), Action::Continue);
            for r in [
                Ok(VcpuExit::Unsupported(1234)),
                Ok(VcpuExit::IrqWindowOpen),
                Ok(VcpuExit::Hyperv),
            ] {
                let a = h(r);
                let f = run_failed(&a).unwrap_or_else(|| panic!("{a:?}"));
                assert_eq!(f.errno, 0);
                assert!(f.what.contains("does not handle"), "{}", f.what);
            }
        }
    }

    /// A failed KVM_RUN reaches the main thread as a host failure at `kvm-run` with its GPA.
    #[test]
    fn run_failures_are_reported_with_errno_and_gpa() {
        let (ctl, rx) = VmControl::new();
        let f = RunFailure {
            errno: libc::EFAULT,
            gpa: Some(0x1000),
            what: "x".into(),
        };
        let o = report_run_failure(3, f, false, &ctl);
        assert_eq!(
            o,
            VcpuOutcome::RunFailed {
                errno: libc::EFAULT,
                errno_name: "EFAULT".into()
            }
        );
        let Ok(VmEvent::HostFailed(h)) = rx.try_recv() else {
            panic!("no host failure sent");
        };
        assert_eq!(
            (h.site.as_str(), h.gpa, h.errno, h.thread.as_str()),
            ("kvm-run", Some(0x1000), Some(libc::EFAULT), "vcpu3")
        );
        let o = report_run_failure(
            0,
            RunFailure {
                errno: 0,
                gpa: None,
                what: "odd exit".into(),
            },
            false,
            &ctl,
        );
        assert!(matches!(o, VcpuOutcome::Unhandled { .. }));
    }
}
