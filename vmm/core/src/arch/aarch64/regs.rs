// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vCPU initialisation and core registers: `KVM_ARM_VCPU_INIT` and `KVM_SET_ONE_REG`.
//!
//! A bare payload starts at EL1h, MMU off, DAIF masked, at the entry point, with its arguments
//! in x0..x6 (the order guest/src/aarch64.rs expects):
//!
//! | reg | argument                                   |
//! |-----|--------------------------------------------|
//! | x0  | start: first GPA memtouch touches          |
//! | x1  | pages to touch                             |
//! | x2  | stride in bytes                            |
//! | x3  | write passes                               |
//! | x4  | seed                                       |
//! | x5  | test device base (MMIO)                    |
//! | x6  | serial data register (MMIO)                |
//! | x7  | first GPA past RAM (hostile payloads)      |
//! | x8  | a GPA far from RAM nothing backs (or 0)    |
//! | x9  | the vCPU's number                          |
//! | x10 | the payload's entry                        |
//!
//! PC is the boot stub of the exception vectors (guest::vectors): it sets VBAR_EL1 and
//! TPIDR_EL1 (the test device, from x5), then branches to x10.

use std::mem::offset_of;

use guest::PayloadArgs;
use kvm_bindings::{
    KVM_ARM_VCPU_PSCI_0_2, KVM_ARM_VCPU_PTRAUTH_ADDRESS, KVM_ARM_VCPU_PTRAUTH_GENERIC,
    KVM_REG_ARM_CORE, KVM_REG_ARM64, KVM_REG_SIZE_U64, PSR_A_BIT, PSR_D_BIT, PSR_F_BIT, PSR_I_BIT,
    PSR_MODE_EL1h, kvm_regs, kvm_vcpu_init, user_pt_regs,
};
use kvm_ioctls::{Cap, VcpuFd, VmFd};

use crate::arch::ArchError;

/// PSTATE at entry: EL1 with SP_EL1 (EL1h), debug, SError, IRQ and FIQ masked.
pub const PSTATE_EL1H_DAIF: u64 =
    (PSR_MODE_EL1h | PSR_D_BIT | PSR_A_BIT | PSR_I_BIT | PSR_F_BIT) as u64;

/// `KVM_SET_ONE_REG` id of the 64-bit core register at byte `offset` in `struct kvm_regs`.
pub const fn core_reg_id(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / 4) as u64
}

/// Id of general-purpose register `xn` (n < 31).
pub const fn xreg(n: usize) -> u64 {
    core_reg_id(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, regs) + n * 8)
}

/// Id of the program counter.
pub const PC: u64 = core_reg_id(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pc));
/// Id of PSTATE.
pub const PSTATE: u64 = core_reg_id(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pstate));

/// One register write: id, value, and its name for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegWrite {
    pub id: u64,
    pub value: u64,
    pub name: &'static str,
}

/// The register writes that start a payload at `entry` through the boot stub (pure:
/// unit-tested without KVM).
pub fn boot_registers(entry: u64, args: &PayloadArgs) -> [RegWrite; 13] {
    let stub = super::layout::VECTORS + guest::vectors().entry as u64;
    let w = |id, value, name| RegWrite { id, value, name };
    [
        w(xreg(0), args.start, "x0 (start)"),
        w(xreg(1), args.pages, "x1 (pages)"),
        w(xreg(2), args.stride, "x2 (stride)"),
        w(xreg(3), args.passes, "x3 (passes)"),
        w(xreg(4), args.seed, "x4 (seed)"),
        w(xreg(5), args.testdev, "x5 (test device)"),
        w(xreg(6), args.serial, "x6 (serial)"),
        w(xreg(7), args.ram_end, "x7 (end of RAM)"),
        w(xreg(8), args.far, "x8 (far unmapped address)"),
        w(xreg(9), args.vcpu, "x9 (vCPU number)"),
        w(xreg(10), entry, "x10 (payload entry)"),
        w(PSTATE, PSTATE_EL1H_DAIF, "PSTATE"),
        w(PC, stub, "PC (the vectors' boot stub)"),
    ]
}

/// The register writes that start a Linux Image at `entry` (booting.rst): x0 = the device
/// tree, x1..x3 = 0, EL1h with DAIF masked (the MMU is off after KVM's vCPU reset).
pub fn linux_boot_registers(entry: u64, fdt: u64) -> [RegWrite; 6] {
    let w = |id, value, name| RegWrite { id, value, name };
    [
        w(xreg(0), fdt, "x0 (device tree)"),
        w(xreg(1), 0, "x1"),
        w(xreg(2), 0, "x2"),
        w(xreg(3), 0, "x3"),
        w(PSTATE, PSTATE_EL1H_DAIF, "PSTATE"),
        w(PC, entry, "PC"),
    ]
}

/// The `KVM_ARM_VCPU_INIT` argument: the host's preferred target with PSCI 0.2, and, for a
/// protected VM only, pointer authentication (address and generic keys) where KVM offers both,
/// as crosvm asks (`hypervisor/src/kvm/aarch64.rs`).
///
/// Why only protected VMs (both measured on the emulated board): without PAuth a 7.3 pKVM
/// protected VM still sees PAuth in its ID registers but traps the key registers (a Linux
/// guest's first context switch is an undefined instruction, `ptrauth_keys_install_user`);
/// with PAuth a normal VM on 6.12.118 in protected (hVHE) mode traps `msr apiakeylo_el1` in
/// `start_kernel` instead, so the Linux guest dies before its console is up. Normal VMs keep
/// the init every kernel here boots (KVM then hides PAuth from the guest).
///
/// Bare payloads: no vCPU gets `KVM_ARM_VCPU_POWER_OFF` (they have no PSCI `CPU_ON` caller,
/// so every vCPU starts at the entry point, each on its own share of memory). Linux guests
/// add it for secondary vCPUs (`linux::linux_vcpu_init`).
pub fn vcpu_init(vm: &VmFd, protected: bool) -> Result<kvm_vcpu_init, ArchError> {
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(|err| ArchError::Get {
            what: "preferred target (KVM_ARM_PREFERRED_TARGET)",
            err,
        })?;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if protected
        && vm.check_extension(Cap::ArmPtrAuthAddress)
        && vm.check_extension(Cap::ArmPtrAuthGeneric)
    {
        kvi.features[0] |=
            (1 << KVM_ARM_VCPU_PTRAUTH_ADDRESS) | (1 << KVM_ARM_VCPU_PTRAUTH_GENERIC);
    }
    Ok(kvi)
}

/// Initialises `vcpu` and loads the boot registers.
pub fn init_and_load(
    vm: &VmFd,
    vcpu: &VcpuFd,
    protected: bool,
    entry: u64,
    args: &PayloadArgs,
) -> Result<(), ArchError> {
    let kvi = vcpu_init(vm, protected)?;
    vcpu.vcpu_init(&kvi).map_err(|err| ArchError::Set {
        what: "features (KVM_ARM_VCPU_INIT with PSCI 0.2)",
        err,
    })?;
    for r in boot_registers(entry, args) {
        vcpu.set_one_reg(r.id, &r.value.to_le_bytes())
            .map_err(|err| ArchError::Set { what: r.name, err })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_match_the_kernel_abi() {
        // Values of the C macro in shared/reference/uffd-arm64/uffdkvm.c (CORE_REG(regs.pc)).
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(xreg(0), 0x6030_0000_0010_0000);
        assert_eq!(xreg(6), 0x6030_0000_0010_000c);
        assert_eq!(PSTATE_EL1H_DAIF, 0x3c5);
    }

    #[test]
    fn linux_starts_with_the_device_tree_in_x0() {
        let regs = linux_boot_registers(0x8000_0000, 0x8fe0_0000);
        assert_eq!(regs[0].id, xreg(0));
        assert_eq!(regs[0].value, 0x8fe0_0000);
        assert!(regs[1..4].iter().all(|r| r.value == 0));
        assert_eq!(regs[4].value, PSTATE_EL1H_DAIF);
        assert_eq!((regs[5].id, regs[5].value), (PC, 0x8000_0000));
    }

    #[test]
    fn boot_registers_carry_the_arguments_in_order() {
        let a = PayloadArgs {
            start: 1,
            pages: 2,
            stride: 3,
            passes: 4,
            seed: 5,
            testdev: 6,
            serial: 7,
            ram_end: 8,
            far: 9,
            vcpu: 10,
        };
        let regs = boot_registers(0x8000_0000, &a);
        let xs: Vec<u64> = regs[..11].iter().map(|r| r.value).collect();
        assert_eq!(xs, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x8000_0000]);
        for (n, r) in regs[..11].iter().enumerate() {
            assert_eq!(r.id, xreg(n));
        }
        let stub = super::super::layout::VECTORS + guest::vectors().entry as u64;
        assert_eq!((regs[12].id, regs[12].value), (PC, stub));
    }
}
