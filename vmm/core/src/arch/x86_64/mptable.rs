// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Intel MultiProcessor table (MP spec 1.4): how a Linux guest without ACPI learns its
//! CPUs' APIC IDs, the IOAPIC and how ISA interrupts reach it, so it can start the secondary
//! vCPUs (INIT/SIPI through the in-kernel LAPIC) and route interrupts through the IOAPIC.
//! Same content as Firecracker's: one processor entry per vCPU, an ISA bus, the IOAPIC at
//! 0xfec00000, IRQ n -> IOAPIC pin n for n in 0..24 (KVM's default GSI routing), LINT0 =
//! ExtINT, LINT1 = NMI.
//!
//! Hand-written: linux-loader carries no mpspec bindings and no rust-vmm crate writes the
//! table. Built as bytes (every field little endian, no padding in the spec's layout).

/// Where the table goes: the last KiB of base memory (639 KiB), one of the places Linux scans
/// (arch/x86/kernel/mpparse.c), reserved in the e820 map.
pub const MPTABLE_START: u64 = 0x9_fc00;
/// Room up to the end of base memory.
pub const MPTABLE_ROOM: u64 = 0xa_0000 - MPTABLE_START;
/// The IOAPIC's MMIO base (Linux's IO_APIC_DEFAULT_PHYS_BASE).
pub const IOAPIC_BASE: u32 = 0xfec0_0000;
/// The local APIC's MMIO base (APIC_DEFAULT_PHYS_BASE).
pub const LAPIC_BASE: u32 = 0xfee0_0000;
/// IOAPIC input pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;

const APIC_VERSION: u8 = 0x14;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const IRQ_INT: u8 = 0;
const IRQ_NMI: u8 = 1;
const IRQ_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature and the APIC + FPU feature bits, as Firecracker reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// Largest vCPU count the table describes here (APIC IDs 0..n-1, the IOAPIC takes n).
pub const MAX_CPUS: u8 = 254;

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// The MP floating pointer followed by the configuration table for `cpus` vCPUs, to be
/// written at MPTABLE_START. Both carry checksums that make their bytes sum to 0.
pub fn mptable(cpus: u8) -> Vec<u8> {
    assert!((1..=MAX_CPUS).contains(&cpus), "{cpus} vCPUs");
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for id in 0..cpus {
        entries.extend([MP_PROCESSOR, id, APIC_VERSION]);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0; 8]);
    }
    entries.extend([MP_BUS, 0]);
    entries.extend(*b"ISA   ");
    entries.extend([MP_IOAPIC, ioapic_id, APIC_VERSION, 1]);
    entries.extend(IOAPIC_BASE.to_le_bytes());
    for irq in 0..IOAPIC_PINS {
        // type, irqtype, irqflag (u16: conforms to the bus), bus, bus irq, IOAPIC, pin
        entries.extend([MP_INTSRC, IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    // type, irqtype, irqflag, bus, bus irq, destination LAPIC (0xff: all), LINTn
    entries.extend([MP_LINTSRC, IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend([MP_LINTSRC, IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    let count = u16::from(cpus) + 2 + u16::from(IOAPIC_PINS) + 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend(*b"PCMP");
    table.extend(((44 + entries.len()) as u16).to_le_bytes());
    table.extend([4, 0]); // spec 1.4, checksum (below)
    table.extend(*b"PINVMM  ");
    table.extend(*b"000000000000");
    table.extend(0u32.to_le_bytes()); // no OEM table
    table.extend(0u16.to_le_bytes());
    table.extend(count.to_le_bytes());
    table.extend(LAPIC_BASE.to_le_bytes());
    table.extend(0u32.to_le_bytes()); // no extended table
    table.extend(entries);
    table[7] = sum(&table).wrapping_neg();

    let mut mpf = Vec::with_capacity(16);
    mpf.extend(*b"_MP_");
    mpf.extend(((MPTABLE_START + 16) as u32).to_le_bytes());
    mpf.extend([1, 4, 0]); // length in 16-byte units, spec 1.4, checksum (below)
    mpf.extend([0; 5]); // feature byte 1 = 0: the configuration table is present
    mpf[10] = sum(&mpf).wrapping_neg();
    mpf.extend(table);
    mpf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn floating_pointer_and_table_checksum_to_zero() {
        for cpus in [1, 2, 8, MAX_CPUS] {
            let t = mptable(cpus);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            assert_eq!(u32_at(&t, 4), (MPTABLE_START + 16) as u32);
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            assert_eq!(usize::from(u16_at(table, 4)), table.len());
            assert_eq!(sum(table), 0);
            assert_eq!(u32_at(table, 36), LAPIC_BASE);
        }
        assert!((mptable(8).len() as u64) <= MPTABLE_ROOM);
        // The largest table no longer fits below 640 KiB: load_linux caps the vCPU count.
        assert!((mptable(MAX_CPUS).len() as u64) > MPTABLE_ROOM);
    }

    #[test]
    fn entries_describe_cpus_ioapic_and_irqs() {
        let cpus = 3;
        let t = mptable(cpus);
        let table = &t[16..];
        let count = u16_at(table, 34);
        let (mut off, mut seen) = (44, Vec::new());
        for _ in 0..count {
            let e = &table[off..];
            seen.push(e[0]);
            match e[0] {
                MP_PROCESSOR => {
                    let id = e[1];
                    assert!(id < cpus);
                    assert_eq!(e[3], CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
                    off += 20;
                }
                MP_BUS => {
                    assert_eq!(&e[2..8], b"ISA   ");
                    off += 8;
                }
                MP_IOAPIC => {
                    assert_eq!((e[1], e[3], u32_at(e, 4)), (cpus, 1, IOAPIC_BASE));
                    off += 8;
                }
                MP_INTSRC => {
                    assert_eq!(e[5], e[7], "ISA IRQ n goes to IOAPIC pin n");
                    assert_eq!(e[6], cpus);
                    off += 8;
                }
                MP_LINTSRC => off += 8,
                other => panic!("unknown entry type {other}"),
            }
        }
        assert_eq!(off, table.len());
        let n = |ty| seen.iter().filter(|&&t| t == ty).count();
        assert_eq!(n(MP_PROCESSOR), 3);
        assert_eq!((n(MP_BUS), n(MP_IOAPIC)), (1, 1));
        assert_eq!(n(MP_INTSRC), usize::from(IOAPIC_PINS));
        assert_eq!(n(MP_LINTSRC), 2);
    }
}
