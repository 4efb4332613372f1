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

/// What the loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Stop(VcpuOutcome),
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

/// Handles one KVM_RUN result.
pub fn handle_exit(
    r: Result<VcpuExit<'_>, kvm_ioctls::Error>,
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
        Ok(other) => Action::Stop(VcpuOutcome::Crashed {
            reason: format!("unexpected exit {other:?}"),
        }),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            counts.interrupted += 1;
            Action::Continue
        }
        Err(e) => Action::Stop(VcpuOutcome::RunFailed {
            errno: e.errno(),
            errno_name: errno_name(e.errno()),
        }),
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
    let mut injected = false;
    let outcome = loop {
        if ctl.stopping() {
            break VcpuOutcome::Stopped;
        }
        let r = match faults.hit(Site::KvmRun) {
            Some(errno) => {
                injected = true;
                Err(kvm_ioctls::Error::new(errno))
            }
            None => {
                injected = false;
                fd.run()
            }
        };
        if std::mem::take(&mut first) {
            ctl.note_first_exit();
        }
        match handle_exit(r, &buses, &mut counts) {
            Action::Continue => {}
            Action::Stop(o) => break o,
        }
    };
    if let VcpuOutcome::RunFailed { errno, errno_name } = &outcome {
        let tag = if injected { " [injected]" } else { "" };
        ctl.send(VmEvent::HostFailed(HostFailure::at(
            Site::KvmRun,
            Some(*errno),
            injected,
            &format!("vcpu{id}"),
            None,
            format!("KVM_RUN of vCPU {id} failed with {errno_name}{tag}"),
        )));
    }
    ctl.send(VmEvent::VcpuDone { id, outcome });
    counts
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
            handle_exit(Ok(VcpuExit::IoOut(0xf0 + 0xc, &data)), &b, &mut c),
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
        let Action::Stop(out) = handle_exit(Ok(VcpuExit::IoOut(0x64, &[0xfe])), &b, &mut c) else {
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
            handle_exit(Ok(VcpuExit::IoIn(0x80, &mut d)), &b, &mut c),
            Action::Continue
        );
        assert_eq!(d, [0xff; 4]);
        assert_eq!(
            handle_exit(Ok(VcpuExit::MmioWrite(0xdead_0000, &[1])), &b, &mut c),
            Action::Continue
        );
        assert_eq!((c.unmapped, c.mmio), (2, 1));
        assert_eq!(
            c.first_unmapped.map(|a| a.to_string()).as_deref(),
            Some("4-byte read from port 0x80")
        );
    }

    #[test]
    fn errors_and_crashes() {
        let b = buses();
        let mut c = ExitCounts::default();
        let eintr = kvm_ioctls::Error::new(libc::EINTR);
        assert_eq!(handle_exit(Err(eintr), &b, &mut c), Action::Continue);
        let efault = kvm_ioctls::Error::new(libc::EFAULT);
        assert_eq!(
            handle_exit(Err(efault), &b, &mut c),
            Action::Stop(VcpuOutcome::RunFailed {
                errno: libc::EFAULT,
                errno_name: "EFAULT".into()
            })
        );
        assert!(matches!(
            handle_exit(Ok(VcpuExit::Shutdown), &b, &mut c),
            Action::Stop(VcpuOutcome::Crashed { .. })
        ));
        assert!(matches!(
            handle_exit(Ok(VcpuExit::FailEntry(5, 1)), &b, &mut c),
            Action::Stop(VcpuOutcome::Crashed { .. })
        ));
        assert_eq!(
            handle_exit(Ok(VcpuExit::Hlt), &b, &mut c),
            Action::Stop(VcpuOutcome::Halted)
        );
    }
}
