// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The guest-physical map of an aarch64 pinvmm guest.
//!
//! ```text
//! 0x0800_0000  GICv3 distributor            64 KiB
//! 0x080a_0000  GICv3 redistributors         128 KiB per vCPU, up to 0x0900_0000 (123 vCPUs)
//! 0x0900_0000  16550 UART (byte registers)  4 KiB window, 8 registers
//! 0x0900_1000  test device                  4 KiB window, 0x20 bytes of registers
//! 0x8000_0000  RAM: payload slot (4 KiB)
//! 0x8000_1000  RAM: exception vectors and the boot stub (guest::vectors, 4 KiB)
//! 0x8010_0000  RAM: memtouch's data range, to the end of RAM
//! ```
//!
//! The devices sit where QEMU's `virt` board puts its GIC and UART, RAM at 2 GiB as in crosvm
//! and Firecracker. Everything stays below 1 TiB: the default 40-bit IPA space of
//! `KVM_CREATE_VM` type 0.

/// Guest RAM starts at 2 GiB.
pub const RAM_START: u64 = 0x8000_0000;
/// memtouch's range starts 1 MiB into RAM; the pages below hold the payload.
pub const DATA_START: u64 = RAM_START + (1 << 20);
/// Smallest guest: the payload's MiB and one MiB of data.
pub const MIN_MEM: u64 = 2 << 20;
/// Largest guest (well inside the 40-bit IPA space; the board has 2 GiB anyway).
pub const MAX_MEM: u64 = 64 << 30;

/// The payload is copied to the start of RAM and entered there (from the boot stub).
pub const PAYLOAD: u64 = RAM_START;
/// Bytes the payload slot holds.
pub const PAYLOAD_MAX: u64 = 0x1000;
/// The exception vector table (2 KiB aligned) and the boot stub every vCPU starts in.
pub const VECTORS: u64 = PAYLOAD + PAYLOAD_MAX;
pub const VECTORS_MAX: u64 = 0x1000;

/// GICv3 distributor (GICD) frame.
pub const GIC_DIST: u64 = 0x0800_0000;
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// First GICv3 redistributor (GICR): RD_base + SGI_base frames, 64 KiB each, per vCPU.
pub const GIC_REDIST: u64 = 0x080a_0000;
pub const GIC_REDIST_PER_VCPU: u64 = 0x2_0000;
/// End of the redistributor region (the UART follows).
pub const GIC_REDIST_END: u64 = 0x0900_0000;

/// 16550 UART over MMIO.
pub const SERIAL_BASE: u64 = 0x0900_0000;
/// Test/exit device (one instance per vCPU at the same address).
pub const TESTDEV_BASE: u64 = 0x0900_1000;
/// Size of each device window.
pub const DEVICE_WINDOW: u64 = 0x1000;
/// The UART's shared interrupt (SPI 1 = GIC INTID 33), for Linux guests; bare payloads poll.
pub const SERIAL_SPI: u32 = 1;

/// How many vCPUs the redistributor region has room for.
pub const fn max_vcpus_for_gic() -> u64 {
    (GIC_REDIST_END - GIC_REDIST) / GIC_REDIST_PER_VCPU
}

/// Size of the redistributor region `vcpus` vCPUs use.
pub const fn redist_size(vcpus: u64) -> u64 {
    vcpus * GIC_REDIST_PER_VCPU
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_VCPUS;

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.0 + b.1 && b.0 < a.0 + a.1
    }

    #[test]
    fn regions_do_not_overlap_and_sit_below_ram() {
        let regions = [
            ("gicd", (GIC_DIST, GIC_DIST_SIZE)),
            ("gicr", (GIC_REDIST, redist_size(MAX_VCPUS))),
            ("serial", (SERIAL_BASE, DEVICE_WINDOW)),
            ("testdev", (TESTDEV_BASE, DEVICE_WINDOW)),
            ("payload", (PAYLOAD, PAYLOAD_MAX)),
            ("vectors", (VECTORS, VECTORS_MAX)),
            ("data", (DATA_START, MAX_MEM - (DATA_START - RAM_START))),
        ];
        for (i, (na, a)) in regions.iter().enumerate() {
            for (nb, b) in &regions[i + 1..] {
                assert!(!overlaps(*a, *b), "{na} overlaps {nb}");
            }
        }
        for (name, (base, size)) in &regions[..4] {
            assert!(base + size <= RAM_START, "{name} is not below RAM");
        }
        const {
            assert!(
                RAM_START + MAX_MEM <= 1 << 40,
                "RAM leaves the 40-bit IPA space"
            )
        };
    }

    #[test]
    fn gic_has_room_for_every_vcpu_pinvmm_allows() {
        assert!(max_vcpus_for_gic() >= MAX_VCPUS);
        assert!(GIC_REDIST + redist_size(max_vcpus_for_gic()) <= GIC_REDIST_END);
        // 64 KiB alignment of every GIC frame.
        assert_eq!(GIC_DIST % 0x1_0000, 0);
        assert_eq!(GIC_REDIST % 0x1_0000, 0);
    }

    #[test]
    fn payload_slot_ends_before_data() {
        const {
            assert!(VECTORS + VECTORS_MAX <= DATA_START);
            assert!(VECTORS.is_multiple_of(2048));
            assert!(MIN_MEM >= DATA_START - RAM_START + 4096);
            assert!(DATA_START.is_multiple_of(4096));
        };
    }
}
