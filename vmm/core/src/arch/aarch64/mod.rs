// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! aarch64: bare payloads at EL1h with the MMU off, an in-kernel GICv3, devices over MMIO.
//!
//! - [`layout`]: the guest-physical map (GIC, UART, test device below RAM at 2 GiB).
//! - [`regs`]: `KVM_ARM_VCPU_INIT` (preferred target + PSCI 0.2) and the boot registers
//!   (payload arguments in x0..x8).
//! - [`gic`]: the GICv3, created and initialised once every vCPU exists.
//! - [`fdt`]: the device tree for Linux guests (bare payloads need none).
//! - [`linux`]: booting an arm64 Linux Image with an initrd and a device tree.
//!
//! The same calls work whatever mode the host's KVM runs in (VHE, nVHE, protected/pKVM): pinvmm
//! creates ordinary VMs (type 0), which protected-mode hosts run too.

pub mod fdt;
pub mod gic;
pub mod layout;
pub mod linux;
pub mod regs;

use guest::PayloadArgs;
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

pub use self::layout::{DATA_START, MAX_MEM, MIN_MEM, RAM_START};
pub use self::linux::{
    LINUX_CMDLINE_BASE, SERIAL_IRQ, configure_vcpu_linux, load_linux, setup_linux_vm,
};
use super::{ArchError, DeviceAddr};
use crate::memory::GuestMemory;

/// Test device: MMIO, one instance per vCPU at this address.
pub const TESTDEV: DeviceAddr = DeviceAddr::Mmio(layout::TESTDEV_BASE);
/// 16550 UART: MMIO, byte-wide registers.
pub const SERIAL: DeviceAddr = DeviceAddr::Mmio(layout::SERIAL_BASE);
/// Linux guests end through PSCI (SYSTEM_OFF / SYSTEM_RESET in KVM): no reset device.
pub const RESET_DEVICE: Option<DeviceAddr> = None;
/// No CMOS RTC on arm64.
pub const RTC_DEVICE: Option<DeviceAddr> = None;

/// Checks what the VM needs from KVM before anything is built: PSCI 0.2 for the vCPUs and a
/// GICv3 the kernel can emulate (tested with `KVM_CREATE_DEVICE_TEST`, created later in
/// [`finish_vcpus`]).
pub fn setup_vm(vm: &VmFd) -> Result<(), ArchError> {
    if !vm.check_extension(Cap::ArmPsci02) {
        return Err(ArchError::MissingCap {
            cap: "KVM_CAP_ARM_PSCI_0_2",
            why: "KVM_ARM_VCPU_INIT",
        });
    }
    gic::probe(vm)
}

/// Creates the GICv3 now that all `vcpus` vCPUs exist and are initialised, and runs
/// `KVM_DEV_ARM_VGIC_CTRL_INIT` (a GICv3 refuses KVM_RUN until then).
pub fn finish_vcpus(vm: &VmFd, vcpus: usize) -> Result<(), ArchError> {
    gic::create_and_init(vm, vcpus)
}

/// A guest-physical address far from RAM (1 GiB past its end, well inside the 40-bit IPA
/// space) that nothing backs: hostile payloads touch it.
pub fn far_unmapped_gpa(mem_size: u64) -> u64 {
    RAM_START + mem_size + (1 << 30)
}

/// Copies the payload to its slot at the start of RAM and the exception vectors after it;
/// returns the payload's entry point.
pub fn load_boot_image(mem: &GuestMemory, code: &[u8]) -> Result<u64, ArchError> {
    for (gpa, bytes) in boot_segments(code)? {
        mem.load(gpa, &bytes)?;
    }
    Ok(layout::PAYLOAD)
}

/// What a bare payload's boot image holds, and where: the payload, then the exception
/// vectors with the boot stub (guest::vectors). `crate::loader` records them as the pages
/// it wrote (a protected VM's loader writes them through the mlocked view).
pub fn boot_segments(code: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, ArchError> {
    if code.len() as u64 > layout::PAYLOAD_MAX {
        return Err(ArchError::PayloadTooLarge {
            len: code.len(),
            max: layout::PAYLOAD_MAX,
        });
    }
    let v = guest::vectors();
    if v.code.len() as u64 > layout::VECTORS_MAX {
        return Err(ArchError::PayloadTooLarge {
            len: v.code.len(),
            max: layout::VECTORS_MAX,
        });
    }
    Ok(vec![
        (layout::PAYLOAD, code.to_vec()),
        (layout::VECTORS, v.code.to_vec()),
    ])
}

/// Initialises the vCPU (preferred target, PSCI 0.2, running: no POWER_OFF on any vCPU) and
/// starts it at `entry`, EL1h with DAIF masked, with the payload's arguments in x0..x6
/// (see [`regs`]).
pub fn configure_vcpu(
    _kvm: &Kvm,
    vm: &VmFd,
    vcpu: &VcpuFd,
    protected: bool,
    entry: u64,
    args: &PayloadArgs,
) -> Result<(), ArchError> {
    regs::init_and_load(vm, vcpu, protected, entry, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Backing;

    #[test]
    fn payload_lands_at_the_start_of_ram() {
        let mem = GuestMemory::new(Backing::Shmem, RAM_START, 2 << 20).unwrap();
        let entry = load_boot_image(&mem, &[0x1f, 0x20, 0x03, 0xd5]).unwrap(); // nop
        assert_eq!(entry, RAM_START);
        assert_eq!(mem.read_u64(entry).unwrap() & 0xffff_ffff, 0xd503_201f);
        assert!(load_boot_image(&mem, &vec![0; 0x1001]).is_err());
    }

    #[test]
    fn the_vectors_follow_the_payload() {
        let s = boot_segments(&[0; 4]).unwrap();
        assert_eq!(s[1].0, layout::VECTORS);
        assert_eq!(s[1].1, guest::vectors().code);
        assert_eq!(layout::VECTORS % 2048, 0);
    }

    #[test]
    fn devices_are_mmio_below_ram() {
        for d in [TESTDEV, SERIAL] {
            assert!(matches!(d, DeviceAddr::Mmio(a) if a < RAM_START));
        }
    }
}
