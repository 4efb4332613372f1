// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Real pKVM protected VMs (`--vm-type protected`, arm64 hosts booted with
//! `kvm-arm.mode=protected`, Linux 7.x): KVM itself resolves every stage-2 fault of the guest by
//! a `FOLL_LONGTERM` pin of the VMM's page, on the vCPU thread — the seed's exact kernel path,
//! no userfaultfd (docs/DESIGN.md §5).
//!
//! What differs from the userfaultfd emulation (`vm.rs` calls into this module at each point):
//! - the VM is created with `KVM_VM_TYPE_ARM_PROTECTED`;
//! - the memory slot's `userspace_addr` is the mlocked **pin view** (the mapping crosvm gives
//!   KVM, so the mapping KVM pins); there is no userfaultfd and no resolver;
//! - `crate::loader`'s **loader thread** on `--fault-cpu` writes the payload or the Linux boot
//!   files (crosvm's system calls) and the `--prefill` pages through that mlocked mapping,
//!   then runs the policy's drain; the vCPU then runs on `--pin-cpu` (or wherever the
//!   scheduler puts it, `--cpus free`), where KVM takes the pins. Pages the VMM wrote on one
//!   CPU, pinned on another, are what fails on a kernel without the upstream GUP fix;
//! - `KVM_RUN` failing with `EFAULT` is pKVM's failed pin: the VM is terminated, or, under
//!   `--policy retry`, `KVM_RUN` is simply called again ([`run_loop`]);
//! - the host reads zeros from donated pages, so a payload's results come only through the
//!   test device and a Linux guest's through its console (no host-side page check).
//!
//! GIC and PSCI: the same in-kernel GICv3 and `KVM_ARM_VCPU_INIT` with PSCI 0.2 as ordinary
//! VMs (`arch::aarch64`). The reference C reproduction (shared/reference/kernels/pkvmpin.c) used
//! neither a GIC nor PSCI and only MMIO exits; pinvmm's bare payloads poll and never take an
//! interrupt, and exit through the test device, so neither is on the measured path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::Serialize;

use crate::control::{Termination, VcpuOutcome, VmControl, VmEvent};
use crate::names::named_enum;
use crate::stage2::drain::{DrainPolicy, DrainStats};
use crate::stage2::efault::ProtectedExplain;
use crate::sys::errno_name;
use crate::vcpu::{self, Action, Buses, ExitCounts, VmKind};

/// `KVM_VM_TYPE_ARM_PROTECTED` (arch/arm64/include/uapi/asm/kvm.h, Linux 7.x).
pub const KVM_VM_TYPE_ARM_PROTECTED: u64 = 1 << 31;
/// Consecutive EFAULTs (no guest exit in between) a retrying VMM accepts before giving up.
pub const MAX_CONSECUTIVE_RETRIES: u64 = 8;

named_enum! {
    /// Which kind of VM `KVM_CREATE_VM` makes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum VmType {
        /// An ordinary VM (type 0); pins come from pinvmm's userfaultfd resolver (`--stage2`).
        Normal = "normal",
        /// A pKVM protected VM (arm64, kvm-arm.mode=protected, Linux 7.x): KVM long-term-pins
        /// each page on the guest's stage-2 fault itself. Cannot be combined with userfaultfd,
        /// so only the default `--stage2` and the shmem backing are accepted.
        Protected = "protected",
    }
}

/// What the loader thread and the vCPUs of a protected VM did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ProtectedReport {
    /// CPU the loader thread ran on when it finished writing (placed on `--fault-cpu`, or
    /// anywhere with `--cpus free`; the report's `loader` section has the rest).
    pub loader_cpu: Option<usize>,
    /// CPU the vCPU threads were placed on (`--pin-cpu`), where KVM takes the pins; None with
    /// `--cpus free`.
    pub vcpu_cpu: Option<usize>,
    /// Pages the loader wrote through the mlocked mapping KVM pins (boot image + prefill).
    pub loader_pages: u64,
    /// Of those, `--prefill` pages.
    pub prefilled_pages: u64,
    pub loader_ms: f64,
    /// The policy's drain after loading (none, local on the loader CPU, or all CPUs).
    pub drain: DrainStats,
    /// KVM_RUN calls that failed with EFAULT (pKVM's failed pin).
    pub efaults: u64,
    /// KVM_RUN calls made again after an EFAULT (`--policy retry`).
    pub retries: u64,
    /// The faulting IPA of the first EFAULT, when KVM reported it (KVM_EXIT_MEMORY_FAULT).
    pub first_efault_gpa: Option<u64>,
}

/// Counters the vCPU threads update while they run.
#[derive(Debug, Default)]
pub struct RunCounters {
    efaults: AtomicU64,
    retries: AtomicU64,
    first_gpa: AtomicU64,
}

impl RunCounters {
    /// Adds the run counters to the loader's report.
    pub fn fill(&self, r: &mut ProtectedReport) {
        r.efaults = self.efaults.load(Ordering::Relaxed);
        r.retries = self.retries.load(Ordering::Relaxed);
        r.first_efault_gpa = match self.first_gpa.load(Ordering::Relaxed) {
            0 => None,
            g => Some(g),
        };
    }
}

/// Creates the VM: type 0, or `KVM_VM_TYPE_ARM_PROTECTED` (configuration validation keeps
/// protected VMs to arm64).
pub fn create_vm(kvm: &Kvm, vm_type: VmType) -> Result<VmFd, kvm_ioctls::Error> {
    match vm_type {
        VmType::Normal => kvm.create_vm(),
        VmType::Protected => kvm.create_vm_with_type(KVM_VM_TYPE_ARM_PROTECTED),
    }
}

/// What the run loop does with a `KVM_RUN` that failed with EFAULT.
#[derive(Debug, PartialEq, Eq)]
pub enum OnEfault {
    /// Call KVM_RUN again (retry policy, under the consecutive limit).
    Retry,
    /// Terminate the VM, as crosvm does.
    Terminate,
}

/// The policy's answer to the `consecutive`-th EFAULT in a row (1-based).
pub fn on_efault(policy: DrainPolicy, consecutive: u64) -> OnEfault {
    if policy.hooks().retry_failed_pin && consecutive <= MAX_CONSECUTIVE_RETRIES {
        OnEfault::Retry
    } else {
        OnEfault::Terminate
    }
}

/// The protected VM's vCPU loop: [`vcpu::handle_exit`] classifies every exit as for a
/// protected VM, where KVM_RUN = EFAULT, or a `KVM_EXIT_MEMORY_FAULT` exit with its IPA, is
/// pKVM's failed pin: the VM is terminated — reported to the main thread as a
/// [`VmEvent::PinFailed`] — or, under `--policy retry`, run again.
pub fn run_loop(
    id: u8,
    mut fd: VcpuFd,
    buses: Buses,
    ctl: Arc<VmControl>,
    policy: DrainPolicy,
    counters: Arc<RunCounters>,
    explain: Option<ProtectedExplain>,
) -> ExitCounts {
    let mut counts = ExitCounts::default();
    let (mut first, mut consecutive) = (true, 0u64);
    let outcome = loop {
        if ctl.stopping() {
            break VcpuOutcome::Stopped;
        }
        let r = fd.run();
        let returned = Instant::now();
        if std::mem::take(&mut first) {
            ctl.note_first_exit();
        }
        match vcpu::handle_exit(r, VmKind::Protected, &buses, &mut counts) {
            Action::Continue => consecutive = 0,
            Action::Stop(o) => break o,
            Action::RunFailed(f) => break vcpu::report_run_failure(id, f, false, &ctl),
            Action::PinFailed { errno, gpa } => {
                consecutive += 1;
                counters.efaults.fetch_add(1, Ordering::Relaxed);
                let _ = counters.first_gpa.compare_exchange(
                    0,
                    gpa.unwrap_or(0),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                let retry = on_efault(policy, consecutive) == OnEfault::Retry;
                if let Some(x) = &explain {
                    // At once: the failed folio's state changes as the CPUs' batches drain.
                    x.efault(
                        id,
                        gpa,
                        returned,
                        if retry { "retried" } else { "terminated" },
                    );
                }
                if retry {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                ctl.send(VmEvent::PinFailed(termination(gpa, consecutive, policy)));
                break VcpuOutcome::RunFailed {
                    errno,
                    errno_name: errno_name(errno),
                };
            }
        }
    };
    ctl.send(VmEvent::VcpuDone { id, outcome });
    counts
}

fn termination(gpa: Option<u64>, consecutive: u64, policy: DrainPolicy) -> Termination {
    let at = gpa.map_or_else(|| "an IPA KVM did not report".into(), |g| format!("{g:#x}"));
    let retried = if policy.hooks().retry_failed_pin {
        format!(" after {} retries", consecutive - 1)
    } else {
        String::new()
    };
    Termination {
        site: crate::inject::Site::KvmRun.name().into(),
        call: crate::inject::Site::KvmRun.call().into(),
        errno: libc::EFAULT,
        errno_name: errno_name(libc::EFAULT),
        gpa: gpa.unwrap_or(0),
        hva: 0,
        page: 0,
        injected: false,
        pins_ok_before: 0,
        message: format!(
            "KVM_RUN failed with EFAULT{retried}: pKVM could not long-term-pin the page at {at}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_retry_retries_and_only_so_often() {
        for p in DrainPolicy::ALL {
            let want = if p == DrainPolicy::Retry {
                OnEfault::Retry
            } else {
                OnEfault::Terminate
            };
            assert_eq!(on_efault(p, 1), want, "{p:?}");
        }
        assert_eq!(
            on_efault(DrainPolicy::Retry, MAX_CONSECUTIVE_RETRIES),
            OnEfault::Retry
        );
        assert_eq!(
            on_efault(DrainPolicy::Retry, MAX_CONSECUTIVE_RETRIES + 1),
            OnEfault::Terminate
        );
    }

    #[test]
    fn termination_names_the_ipa() {
        let t = termination(Some(0x8010_0000), 3, DrainPolicy::Retry);
        assert_eq!(t.errno_name, "EFAULT");
        assert!(t.message.contains("0x80100000") && t.message.contains("2 retries"));
        assert!(
            termination(None, 1, DrainPolicy::None)
                .message
                .contains("did not report")
        );
    }
}
