// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Booting an x86_64 Linux bzImage: NOT IMPLEMENTED YET in this file. The helper working on the
//! x86 loader (issue 6 part 3) replaces it with linux-loader's `BzImage`, boot_params, e820 and
//! the 64-bit boot protocol; until then every call says so plainly, and `pinvmm run --kernel`
//! on x86_64 fails with that message (exit 2) instead of pretending to boot.

use std::fs::File;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::arch::{ArchError, LinuxBoot, LinuxLoadError};
use crate::memory::GuestMemory;

/// COM1's interrupt line.
pub const SERIAL_IRQ: u32 = 4;

/// What vmm::linux puts in front of the user's command line.
pub const LINUX_CMDLINE_BASE: &str = "console=ttyS0 panic=-1";

const NOT_YET: &str = "booting x86_64 Linux guests is not implemented in this build yet";

pub fn load_linux(
    _mem: &GuestMemory,
    _vcpus: u8,
    _kernel: &mut File,
    _initrd: Option<&mut File>,
    _cmdline: &str,
) -> Result<LinuxBoot, LinuxLoadError> {
    Err(LinuxLoadError::Unsupported(NOT_YET.into()))
}

pub fn setup_linux_vm(_vm: &VmFd) -> Result<(), ArchError> {
    Err(ArchError::Vm(NOT_YET.into()))
}

pub fn configure_vcpu_linux(
    _kvm: &Kvm,
    _vm: &VmFd,
    _vcpu: &VcpuFd,
    _id: u8,
    _boot: &LinuxBoot,
) -> Result<(), ArchError> {
    Err(ArchError::Vm(NOT_YET.into()))
}
