// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! x86_64: bare payloads in 64-bit long mode at CPL3.
//!
//! Why CPL3: on hosts whose /dev/kvm is the PVM backend (no VMX/SVM, as on pinvmm's
//! development machine), guest code at CPL0 is emulated instruction by instruction (~1 µs
//! each) while real mode and long mode at CPL3 run natively. So payloads run at CPL3: the U bit
//! on every page-table level, 2 MiB pages (this CPUID offers no 1 GiB pages), IOPL=3 so `out`
//! exits to the VMM, and no `hlt` (it faults at CPL3). The same setup runs on VMX/SVM hosts.

pub mod linux;
pub mod mptable;

use guest::PayloadArgs;
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_regs, kvm_segment};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

pub use self::linux::{
    LINUX_CMDLINE_BASE, SERIAL_IRQ, configure_vcpu_linux, load_linux, setup_linux_vm,
};
use super::{ArchError, DeviceAddr};
use crate::memory::GuestMemory;

/// Guest RAM starts at 0.
pub const RAM_START: u64 = 0;
/// Smallest guest: boot structures + payload below 1 MiB, then data.
pub const MIN_MEM: u64 = 2 << 20;
/// Largest guest the identity map covers (one page directory per GiB).
pub const MAX_MEM: u64 = MAX_PDS << 30;
/// memtouch's range starts here.
pub const DATA_START: u64 = 1 << 20;

const GDT: u64 = 0x1000;
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
const MAX_PDS: u64 = 16;
/// The exception vectors (guest::vectors): IDT, TSS, stubs, and the stack their handler
/// runs on (IST1), right after the last page directory.
const IDT: u64 = PD + MAX_PDS * 0x1000;
const VECTORS: u64 = IDT + 0x1000;
const IST_TOP: u64 = VECTORS + 0x2000;
const TSS: u64 = IST_TOP;
/// Selectors: null, code, data, then the 16-byte TSS descriptor.
const TSS_SELECTOR: u16 = 0x18;
/// The TSS and its I/O permission bitmap (every port, then the all-ones end byte).
const IOPB_OFFSET: usize = 104;
const TSS_LIMIT: u32 = (IOPB_OFFSET + 0x1_0000 / 8) as u32;
const PAYLOAD: u64 = 0x20000;
const PAYLOAD_MAX: u64 = 0x10000;
const STACK_TOP: u64 = 0x40000;

/// Test device ports.
pub const TESTDEV: DeviceAddr = DeviceAddr::Pio(0xf0);
/// COM1.
pub const SERIAL: DeviceAddr = DeviceAddr::Pio(0x3f8);
/// Linux guests: the reset-only keyboard controller (devices::i8042), how `reboot=k` ends the VM.
pub const RESET_DEVICE: Option<DeviceAddr> = Some(DeviceAddr::Pio(devices::i8042::DATA_PORT));
/// Linux guests: the CMOS real-time clock (devices::cmos). Without it Linux polls the missing
/// RTC 80 000 times during boot (devices/src/cmos.rs says why).
pub const RTC_DEVICE: Option<DeviceAddr> = Some(DeviceAddr::Pio(devices::cmos::INDEX_PORT));

const PTE_P: u64 = 1;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_PS: u64 = 1 << 7;

/// Nothing to do on x86_64 for bare payloads (no irqchip: payloads poll).
pub fn setup_vm(_vm: &VmFd) -> Result<(), ArchError> {
    Ok(())
}

/// Nothing to finish once the vCPUs exist (x86 bare payloads need no irqchip).
pub fn finish_vcpus(_vm: &VmFd, _vcpus: usize) -> Result<(), ArchError> {
    Ok(())
}

/// GiB of guest-physical space the identity map covers: RAM and one more GiB (where
/// [`far_unmapped_gpa`] lies), up to the 16 GiB the page directories have room for.
fn mapped_gib(mem_size: u64) -> u64 {
    (mem_size.div_ceil(1 << 30) + 1).min(MAX_PDS)
}

/// A guest-physical address far from RAM that the payload's page tables map but nothing
/// backs (the last page of the identity map): hostile payloads touch it. 0 when RAM fills the
/// whole map (16 GiB).
pub fn far_unmapped_gpa(mem_size: u64) -> u64 {
    let end = mapped_gib(mem_size) << 30;
    if end > RAM_START + mem_size + (1 << 20) {
        end - 4096
    } else {
        0
    }
}

/// Writes the GDT, the identity-mapped page tables and the payload; returns the entry point.
pub fn load_boot_image(mem: &GuestMemory, code: &[u8]) -> Result<u64, ArchError> {
    if code.len() as u64 > PAYLOAD_MAX {
        return Err(ArchError::PayloadTooLarge {
            len: code.len(),
            max: PAYLOAD_MAX,
        });
    }
    // null, 64-bit code DPL3, data DPL3, the TSS (a 16-byte system descriptor: busy 64-bit TSS).
    let (tss_lo, tss_hi) = tss_descriptor(TSS, TSS_LIMIT);
    let gdt: [u64; 5] = [
        0,
        0x00af_fb00_0000_ffff,
        0x00cf_f300_0000_ffff,
        tss_lo,
        tss_hi,
    ];
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.load(GDT, &gdt_bytes)?;
    load_vectors(mem)?;

    let user = PTE_P | PTE_RW | PTE_US;
    let pds = mapped_gib(mem.size());
    mem.load(PML4, &(PDPT | user).to_le_bytes())?;
    for i in 0..pds {
        let pd = PD + i * 0x1000;
        mem.load(PDPT + i * 8, &(pd | user).to_le_bytes())?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|j| (((i << 30) + (j << 21)) | user | PTE_PS).to_le_bytes())
            .collect();
        mem.load(pd, &entries)?;
    }
    mem.load(PAYLOAD, code)?;
    Ok(PAYLOAD)
}

/// The two halves of a 64-bit busy-TSS descriptor for `base`/`limit`.
fn tss_descriptor(base: u64, limit: u32) -> (u64, u64) {
    let lo = u64::from(limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x8b << 40) // present, DPL0, type 11: busy 64-bit TSS
        | (u64::from((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    (lo, base >> 32)
}

/// An interrupt gate to `handler` in the payload's own DPL3 code segment, on IST1: an
/// exception at CPL3 stays at CPL3 (natively run on PVM) and switches to the IST1 stack.
fn idt_gate(handler: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&0x0bu16.to_le_bytes()); // code selector 0x08, RPL 3
    g[4] = 1; // IST1
    g[5] = 0xee; // present, DPL3, 64-bit interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// The exception vectors: the stubs (with the test device's port in their first 8 bytes), an
/// IDT whose 32 gates point at them, and a TSS whose IST1 (and RSP0) is their stack and whose
/// I/O permission bitmap allows every port. The bitmap matters on PVM, measured: it clears IOPL
/// when it delivers an exception (RFLAGS read 0x2 in the handler), so without a bitmap the
/// handler's `out` to the test device raises #GP and loops through vector 13; and it checks
/// the bitmap for every `in`/`out` at CPL3 even with IOPL=3 (a bitmap of ports 0-0x3ff only made
/// `garbage`'s 4-byte `out` to port 0x3f8 fault), so it must allow all 65536 ports the payloads
/// may touch. (VMX/SVM keep IOPL and skip the bitmap at IOPL=3.)
fn load_vectors(mem: &GuestMemory) -> Result<(), ArchError> {
    let v = guest::vectors();
    mem.load(VECTORS, v.code)?;
    mem.load(VECTORS, &TESTDEV.addr().to_le_bytes())?;
    let idt: Vec<u8> = (0..guest::X86_VECTORS)
        .flat_map(|n| idt_gate(VECTORS + (v.entry + n * guest::VECTOR_STUB_SIZE) as u64))
        .collect();
    mem.load(IDT, &idt)?;
    let mut tss = vec![0u8; TSS_LIMIT as usize + 1];
    tss[4..12].copy_from_slice(&IST_TOP.to_le_bytes()); // RSP0
    tss[36..44].copy_from_slice(&IST_TOP.to_le_bytes()); // IST1
    tss[102..104].copy_from_slice(&(IOPB_OFFSET as u16).to_le_bytes());
    // Every port allowed (clear bits); the byte after the bitmap must be 0xff.
    tss[TSS_LIMIT as usize] = 0xff;
    mem.load(TSS, &tss)?;
    Ok(())
}

/// The payload's segment, as `crate::loader` records what it wrote. Protected VMs are
/// arm64-only (config validation refuses them here): the payload alone.
pub fn boot_segments(code: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, ArchError> {
    Ok(vec![(PAYLOAD, code.to_vec())])
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: selector | 3,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// Puts the vCPU in 64-bit long mode at CPL3 at `entry`, with the payload's arguments.
pub fn configure_vcpu(
    kvm: &Kvm,
    _vm: &VmFd,
    vcpu: &VcpuFd,
    _protected: bool,
    entry: u64,
    args: &PayloadArgs,
) -> Result<(), ArchError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|err| ArchError::Get {
            what: "supported CPUID",
            err,
        })?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|err| ArchError::Set { what: "CPUID", err })?;

    let mut sregs = vcpu.get_sregs().map_err(|err| ArchError::Get {
        what: "special registers",
        err,
    })?;
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 5 * 8 - 1;
    sregs.idt.base = IDT;
    sregs.idt.limit = (guest::X86_VECTORS * 16 - 1) as u16;
    sregs.tr = kvm_segment {
        base: TSS,
        limit: TSS_LIMIT,
        selector: TSS_SELECTOR,
        type_: 11,
        present: 1,
        ..Default::default()
    };
    sregs.cs = segment(0x8, true);
    let data = segment(0x10, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.cr3 = PML4;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 0x8005_0033; // PG | AM | WP | NE | ET | MP | PE
    sregs.efer = 0x500; // LME | LMA
    vcpu.set_sregs(&sregs).map_err(|err| ArchError::Set {
        what: "special registers",
        err,
    })?;

    let regs = kvm_regs {
        rip: entry,
        rsp: STACK_TOP,
        rflags: 0x2 | 0x3000, // IOPL=3: `out` from CPL3 exits instead of faulting
        rsi: args.start,
        r9: args.pages,
        r10: args.stride,
        r11: args.passes,
        r12: args.seed,
        r13: args.testdev,
        r14: args.serial,
        r15: args.ram_end,
        rbp: args.far,
        rdi: args.vcpu,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|err| ArchError::Set {
        what: "registers",
        err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Backing;

    /// The IDT's gates point at the stubs, on IST1, reachable from CPL3; the TSS holds the
    /// stack; the stubs know the test device's port.
    #[test]
    fn exception_vectors_are_installed() {
        let mem = GuestMemory::new(Backing::Shmem, 0, 4 << 20).unwrap();
        load_boot_image(&mem, &[0x90; 16]).unwrap();
        let v = guest::vectors();
        assert_eq!(mem.read_u64(VECTORS).unwrap(), TESTDEV.addr());
        for n in [0u64, 6, 13, 14, 31] {
            let lo = mem.read_u64(IDT + n * 16).unwrap();
            let hi = mem.read_u64(IDT + n * 16 + 8).unwrap();
            let target = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi << 32);
            assert_eq!(target, VECTORS + v.entry as u64 + n * 16, "vector {n}");
            assert_eq!((lo >> 16) & 0xffff, 0x0b, "selector");
            assert_eq!((lo >> 32) & 0xff, 1, "IST1");
            assert_eq!((lo >> 40) & 0xff, 0xee, "present DPL3 interrupt gate");
        }
        assert_eq!(mem.read_u64(TSS + 36).unwrap(), IST_TOP);
        // The I/O bitmap allows the test device's ports and ends with an all-ones byte.
        let byte = |gpa: u64| mem.read_u64(gpa).unwrap() & 0xff;
        assert_eq!(mem.read_u64(TSS + 96).unwrap() >> 48, IOPB_OFFSET as u64);
        assert_eq!(byte(TSS + IOPB_OFFSET as u64 + TESTDEV.addr() / 8), 0);
        assert_eq!(byte(TSS + u64::from(TSS_LIMIT)), 0xff);
        assert!(VECTORS + v.code.len() as u64 <= IST_TOP - 0x1000);
        assert!(TSS + u64::from(TSS_LIMIT) < PAYLOAD);
        assert_eq!(tss_descriptor(0x1234_5678, 103).0 >> 40 & 0xff, 0x8b);
    }

    #[test]
    fn identity_map_is_user_accessible_2m_pages() {
        let mem = GuestMemory::new(Backing::Shmem, 0, 4 << 20).unwrap();
        let entry = load_boot_image(&mem, &[0x90; 16]).unwrap();
        assert_eq!(entry, PAYLOAD);
        assert_eq!(mem.read_u64(PML4).unwrap(), PDPT | 7);
        assert_eq!(mem.read_u64(PDPT).unwrap(), PD | 7);
        assert_eq!(mem.read_u64(PD + 8).unwrap(), (2 << 20) | 0x87);
        assert_eq!(mem.read_u64(PAYLOAD).unwrap(), 0x9090_9090_9090_9090);
        assert!(load_boot_image(&mem, &vec![0; 0x10001]).is_err());
        // One GiB past RAM is mapped too: the far unmapped address is inside the map.
        assert_eq!(mem.read_u64(PDPT + 8).unwrap(), (PD + 0x1000) | 7);
        assert_eq!(far_unmapped_gpa(4 << 20), (2 << 30) - 4096);
        assert_eq!(far_unmapped_gpa(MAX_MEM), 0);
    }
}
