// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The in-kernel GICv3 (`KVM_DEV_TYPE_ARM_VGIC_V3`).
//!
//! Order: the vCPUs are created and initialised (`KVM_ARM_VCPU_INIT`) first, then
//! [`create_and_init`] creates the GIC, places it (distributor + one redistributor region that
//! the kernel sizes for the vCPUs that exist) and initialises it with
//! `KVM_DEV_ARM_VGIC_CTRL_INIT`, all before any vCPU runs. Firecracker also creates the GIC
//! after the vCPUs; crosvm creates it before them and only initialises it afterwards. Doing all
//! of it in one place means no device fd has to be carried from `setup_vm` to `finish_vcpus`
//! (their signatures only pass the VM fd). A GICv3 must be initialised explicitly by userspace:
//! without CTRL_INIT the first KVM_RUN fails with EBUSY.
//!
//! The device fd is dropped afterwards: the vGIC's kvm_device_ops have no `release`
//! callback, so closing the fd leaves the GIC attached until the VM is destroyed.
//! Nothing here depends on the host's KVM mode; verified on the emulated board in nVHE,
//! protected nVHE (`-cpu cortex-a72`) and protected hVHE (`-cpu neoverse-n2`) mode.

use kvm_bindings::{
    KVM_CREATE_DEVICE_TEST, KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR,
    KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST, kvm_create_device, kvm_device_attr,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
};
use kvm_ioctls::{DeviceFd, VmFd};

use super::layout::{GIC_DIST, GIC_REDIST, max_vcpus_for_gic};
use crate::arch::ArchError;

/// Interrupt lines: 32 private (SGI + PPI) and 96 shared; a multiple of 32 as the GIC needs.
pub const NR_IRQS: u32 = 128;

fn vgic_v3(flags: u32) -> kvm_create_device {
    kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags,
    }
}

/// Checks that KVM can emulate a GICv3 for this VM, without creating it.
pub fn probe(vm: &VmFd) -> Result<(), ArchError> {
    let fd = vm
        .create_device(&mut vgic_v3(KVM_CREATE_DEVICE_TEST))
        .map_err(|err| ArchError::Gic {
            step: "KVM_CREATE_DEVICE_TEST: KVM cannot emulate a GICv3 here",
            err,
        })?;
    // With KVM_CREATE_DEVICE_TEST the kernel creates nothing and leaves the fd field as we
    // passed it (0); kvm-ioctls wraps it all the same. Dropping that would close stdin.
    std::mem::forget(fd);
    Ok(())
}

/// Sets one attribute; `value` is what the kernel reads through `addr` (none for CTRL_INIT).
fn set_attr<T>(
    fd: &DeviceFd,
    step: &'static str,
    group: u32,
    attr: u32,
    value: Option<&T>,
) -> Result<(), ArchError> {
    let a = kvm_device_attr {
        flags: 0,
        group,
        attr: attr.into(),
        // `value` is borrowed for the whole ioctl, which reads size_of::<T>() bytes from it.
        addr: value.map_or(0, |v| std::ptr::from_ref(v) as u64),
    };
    fd.set_device_attr(&a)
        .map_err(|err| ArchError::Gic { step, err })
}

/// Creates, places and initialises the GICv3 for the `vcpus` vCPUs that now exist.
pub fn create_and_init(vm: &VmFd, vcpus: usize) -> Result<(), ArchError> {
    if vcpus as u64 > max_vcpus_for_gic() {
        return Err(ArchError::TooManyVcpus {
            vcpus,
            max: max_vcpus_for_gic(),
        });
    }
    let fd = vm
        .create_device(&mut vgic_v3(0))
        .map_err(|err| ArchError::Gic {
            step: "KVM_CREATE_DEVICE",
            err,
        })?;
    let (dist, redist): (u64, u64) = (GIC_DIST, GIC_REDIST);
    set_attr(
        &fd,
        "distributor address",
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_DIST,
        Some(&dist),
    )?;
    set_attr(
        &fd,
        "redistributor address",
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_REDIST,
        Some(&redist),
    )?;
    set_attr(
        &fd,
        "number of interrupts",
        KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        0,
        Some(&NR_IRQS),
    )?;
    set_attr::<u64>(
        &fd,
        "KVM_DEV_ARM_VGIC_CTRL_INIT",
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        KVM_DEV_ARM_VGIC_CTRL_INIT,
        None,
    )
}
