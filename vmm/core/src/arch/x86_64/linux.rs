// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Booting an x86_64 Linux bzImage with the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst): linux-loader's `BzImage` copies the protected-mode kernel
//! to its load address and returns the image's setup header; this module checks the header
//! first (so a bad file gets a clear error), places the initramfs, writes boot_params (the
//! "zero page": setup header, command line pointer, ramdisk, e820 map) with linux-loader's
//! `LinuxBootConfigurator`, the command line, a GDT and identity-mapped page tables, and puts
//! the boot vCPU in long mode at CPL0 at the 64-bit entry (load address + 0x200) with RSI =
//! boot_params.
//!
//! Guest-physical layout (Firecracker's, below the EBDA):
//!
//! | GPA | what |
//! |---|---|
//! | 0x500 | GDT: null, null, __BOOT_CS (0x10), __BOOT_DS (0x18), TSS (0x20) |
//! | 0x540 | an empty IDT (the kernel installs its own before enabling interrupts) |
//! | 0x7000 | boot_params |
//! | 0x8ff0 | initial stack |
//! | 0x9000..0xf000 | PML4, PDPT, 4 page directories: 4 GiB identity map, 2 MiB pages |
//! | 0x20000 | command line |
//! | 0x9fc00 | MP table; 0x9fc00..0x100000 (EBDA, VGA, BIOS) is reserved in e820 |
//! | code32_start (1 MiB) | the kernel; it decompresses into [pref_address, + init_size) |
//! | top of RAM (page aligned, under initrd_addr_max) | the initramfs |
//!
//! The VM ends through a reset: `reboot=k` on the command line sends 0xfe to the keyboard
//! controller (devices::i8042), or a triple fault (KVM_EXIT_SHUTDOWN).
//!
//! Time: the CPUID says "hypervisor" (linux_cpuid), so the guest finds KVM's leaves and uses
//! kvmclock (clocksource, TSC frequency, wall clock) and the TSC-deadline LAPIC timer; the CMOS
//! RTC at port 0x70 (devices::cmos) answers its rtc_cmos driver. Without the two, a Debian
//! 6.12 guest polled the missing RTC 80 000 times (80 000 VM exits, two seconds of delays) and
//! ran on jiffies with an "unstable" TSC (docs/LINUX.md has the measurements).
//!
//! Secondary vCPUs are found through an MP table (mptable.rs) in the last KiB of base memory
//! and started by the guest with INIT/SIPI through the in-kernel LAPIC; there is no ACPI.
//! Guest RAM is one block from 0, so at most 3 GiB (below the 32-bit MMIO hole: IOAPIC, LAPIC).
//!
//! On a PVM host (pinvmm's development machine) CPL0 guest code is emulated instruction by
//! instruction: a stock kernel does not boot in useful time there. The boot is meant for
//! VMX/SVM hosts; the loading is unit-tested anywhere.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, Msrs, kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry,
    kvm_pit_config, kvm_regs, kvm_segment,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::{Cmdline, KernelLoader, load_cmdline};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

use super::mptable;
use crate::arch::{ArchError, BootFile, GpaRange, LinuxBoot, LinuxLoadError};
use crate::memory::GuestMemory;

/// COM1's interrupt line (GSI 4: PIC IRQ 4 and IOAPIC pin 4 in KVM's default routing).
pub const SERIAL_IRQ: u32 = 4;

/// What vmm::linux puts in front of the user's command line:
/// - `reboot=k`: `reboot -f` (and panic=-1) reset through the keyboard controller's 0xfe
///   command, which devices::i8042 turns into the end of the VM;
/// - `initcall_blacklist=i8042_init`: that controller does nothing else, so the i8042 driver
///   would wait ~0.5 s for answers that never come; it is not started at all;
/// - `pci=off`: there is no PCI host bridge to probe.
pub const LINUX_CMDLINE_BASE: &str =
    "console=ttyS0 panic=-1 reboot=k initcall_blacklist=i8042_init pci=off";

/// Most vCPUs whose MP table fits below 640 KiB.
pub const MAX_LINUX_VCPUS: u8 = 37;

/// Largest guest a Linux boot takes: RAM must stay below the 32-bit MMIO hole.
pub const MAX_LINUX_MEM: u64 = 3 << 30;

const BOOT_GDT: u64 = 0x500;
const BOOT_IDT: u64 = 0x540;
const BOOT_PARAMS: u64 = 0x7000;
const BOOT_STACK: u64 = 0x8ff0;
const PML4: u64 = 0x9000;
const PDPT: u64 = 0xa000;
const PD: u64 = 0xb000;
/// Page directories of the identity map: 4 x 1 GiB.
const PDS: u64 = 4;
const CMDLINE_START: u64 = 0x20000;
/// Room for the command line below the EBDA.
const CMDLINE_ROOM: u64 = EBDA_START - CMDLINE_START;
const EBDA_START: u64 = 0x9_fc00;
const HIMEM_START: u64 = 0x10_0000;
const PAGE: u64 = 4096;

/// Segment selectors of the 64-bit boot protocol.
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const BOOT_TSS: u16 = 0x20;

// Setup header constants (Documentation/arch/x86/boot.rst).
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const HEADER_OFFSET: u64 = 0x1f1;
/// First byte after the setup header of protocol 2.15.
const HEADER_END: u64 = HEADER_OFFSET + std::mem::size_of::<setup_header>() as u64;
const LOADED_HIGH: u8 = 1 << 0;
const XLF_KERNEL_64: u16 = 1 << 0;
/// type_of_loader: "undefined" (no assigned loader ID).
const LOADER_UNDEFINED: u8 = 0xff;
/// Oldest protocol with xloadflags (the 64-bit entry flag): 2.12, Linux 3.8.
const MIN_PROTOCOL: u16 = 0x020c;
/// initrd_addr_max of protocols before 2.03.
const OLD_INITRD_MAX: u64 = 0x37ff_ffff;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

/// What the first bytes of a file that is not a bzImage look like, for the error message.
fn describe(head: &[u8], len: u64) -> String {
    let at = |o: usize, m: &[u8]| head.get(o..o + m.len()) == Some(m);
    if at(0, b"\x7fELF") {
        "an ELF file (a vmlinux? boot the bzImage: arch/x86/boot/bzImage or /boot/vmlinuz-*)".into()
    } else if at(0x38, b"ARM\x64") {
        "an arm64 Image (this pinvmm boots x86_64 guests)".into()
    } else if at(0, b"\x1f\x8b") {
        "gzip data (an initramfs, or a compressed kernel that must be unpacked?)".into()
    } else if at(0, b"070701") || at(0, b"070702") {
        "a cpio archive (an initramfs given as the kernel?)".into()
    } else if at(0, b"MZ") {
        "a PE/EFI file without a Linux setup header".into()
    } else if len < 0x206 {
        format!("{len} bytes, too short for a setup header")
    } else {
        let n = head.len().min(8);
        format!(
            "{len} bytes without \"HdrS\" at 0x202, starting with {:02x?}",
            &head[..n]
        )
    }
}

/// The image's setup header, checked for what this loader needs.
#[derive(Debug, Clone, Copy)]
struct Image {
    hdr: setup_header,
    /// Bytes of the file.
    len: u64,
    /// Bytes of real-mode setup code before the protected-mode kernel.
    setup_len: u64,
}

impl Image {
    fn parse<R: Read + Seek>(f: &mut R) -> Result<Image, LinuxLoadError> {
        let read = |err| LinuxLoadError::Read {
            file: BootFile::Kernel,
            err,
        };
        let len = f.seek(SeekFrom::End(0)).map_err(read)?;
        f.seek(SeekFrom::Start(0)).map_err(read)?;
        let mut head = vec![0u8; len.min(HEADER_END) as usize];
        f.read_exact(&mut head).map_err(read)?;
        if head.get(0x202..0x206) != Some(&HDRS_MAGIC.to_le_bytes()[..]) {
            return Err(LinuxLoadError::NotAKernel {
                expected: "an x86 bzImage",
                found: describe(&head, len),
            });
        }
        if len < HEADER_END {
            return Err(LinuxLoadError::Truncated {
                file: BootFile::Kernel,
                len,
                need: HEADER_END,
                why: "the setup header is cut off".into(),
            });
        }
        let mut hdr = setup_header::default();
        hdr.as_mut_slice()
            .copy_from_slice(&head[HEADER_OFFSET as usize..]);
        let version = hdr.version;
        if version < MIN_PROTOCOL {
            return Err(LinuxLoadError::Unsupported(format!(
                "boot protocol {}.{:02} has no 64-bit entry point (2.12+, Linux 3.8+, is needed)",
                version >> 8,
                version & 0xff
            )));
        }
        if hdr.loadflags & LOADED_HIGH == 0 {
            return Err(LinuxLoadError::Unsupported(
                "a zImage (loaded below 1 MiB); only bzImages boot".into(),
            ));
        }
        if hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LinuxLoadError::Unsupported(
                "no 64-bit entry point (XLF_KERNEL_64 is clear): a 32-bit kernel?".into(),
            ));
        }
        let sects = match hdr.setup_sects {
            0 => 4,
            n => u64::from(n),
        };
        let setup_len = (sects + 1) * 512;
        if len < setup_len {
            return Err(LinuxLoadError::Truncated {
                file: BootFile::Kernel,
                len,
                need: setup_len,
                why: format!("setup_sects says the real-mode setup is {setup_len} bytes"),
            });
        }
        let pm_len = u64::from(hdr.syssize) * 16;
        if len - setup_len < pm_len {
            return Err(LinuxLoadError::Truncated {
                file: BootFile::Kernel,
                len,
                need: setup_len + pm_len,
                why: format!("syssize says the protected-mode kernel is {pm_len} bytes"),
            });
        }
        let code32 = u64::from(hdr.code32_start);
        if code32 < HIMEM_START {
            return Err(LinuxLoadError::Unsupported(format!(
                "code32_start {code32:#x} is below 1 MiB"
            )));
        }
        Ok(Image {
            hdr,
            len,
            setup_len,
        })
    }

    fn load_addr(&self) -> u64 {
        u64::from(self.hdr.code32_start)
    }

    /// Guest memory the kernel uses until it runs: the protected-mode image at its load
    /// address, and the buffer it decompresses into: init_size bytes from the load address
    /// aligned to kernel_alignment, but not below pref_address (LOAD_PHYSICAL_ADDR), as
    /// arch/x86/boot/compressed/head_64.S computes it.
    fn footprint(&self) -> GpaRange {
        let load = self.load_addr();
        let align = u64::from(self.hdr.kernel_alignment).max(PAGE);
        let decompress = align_up(load, align).max(self.hdr.pref_address);
        let end =
            (load + (self.len - self.setup_len)).max(decompress + u64::from(self.hdr.init_size));
        GpaRange {
            start: load,
            len: end - load,
        }
    }

    /// Highest address + 1 the initramfs may reach.
    fn initrd_limit(&self) -> u64 {
        if self.hdr.version >= 0x0203 {
            u64::from(self.hdr.initrd_addr_max) + 1
        } else {
            OLD_INITRD_MAX + 1
        }
    }

    /// Longest command line (without the NUL) the kernel takes.
    fn cmdline_max(&self) -> u64 {
        let max = if self.hdr.version >= 0x0206 {
            u64::from(self.hdr.cmdline_size)
        } else {
            255
        };
        max.min(CMDLINE_ROOM - 1)
    }
}

/// Where the initramfs goes: the highest page-aligned address where it ends under both the
/// end of RAM and the kernel's initrd_addr_max, and that does not overlap the kernel.
fn place_initrd(
    mem_end: u64,
    limit: u64,
    kernel: GpaRange,
    size: u64,
) -> Result<u64, LinuxLoadError> {
    let top = mem_end.min(limit);
    let lowest = align_up(kernel.end(), PAGE);
    let too_large = || LinuxLoadError::TooLarge {
        file: BootFile::Initrd,
        what: format!(
            "the initrd ({size} bytes, placed between the kernel's end at {lowest:#x} and {top:#x})"
        ),
        need: lowest + size,
        room: top,
    };
    let start = align_down(top.checked_sub(size).ok_or_else(too_large)?, PAGE);
    if start < lowest {
        return Err(too_large());
    }
    Ok(start)
}

/// The e820 map of a guest with `mem_size` bytes of RAM from 0: low RAM, the legacy hole
/// (EBDA, VGA, BIOS) reserved, RAM from 1 MiB.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr, size, r#type| boot_e820_entry { addr, size, r#type };
    vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        entry(HIMEM_START, mem_size - HIMEM_START, E820_RAM),
    ]
}

/// boot_params for `image` loaded at its code32_start, with the command line at
/// CMDLINE_START and the initramfs at `initrd`.
fn boot_params_for(
    image: &Image,
    cmdline_len: u64,
    initrd: Option<GpaRange>,
    mem_size: u64,
) -> boot_params {
    let mut p = boot_params {
        hdr: image.hdr,
        ..Default::default()
    };
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    // With the NUL, as Firecracker and crosvm write it.
    p.hdr.cmdline_size = (cmdline_len + 1) as u32;
    if let Some(r) = initrd {
        // The initrd sits below initrd_addr_max (< 4 GiB): ext_ramdisk_* stay 0.
        p.hdr.ramdisk_image = r.start as u32;
        p.hdr.ramdisk_size = r.len as u32;
    }
    let map = e820_map(mem_size);
    for (slot, e) in p.e820_table.iter_mut().zip(&map) {
        *slot = *e;
    }
    p.e820_entries = map.len() as u8;
    p
}

/// GDT entry from flags (access byte and G/D/L nibble as in Firecracker's `gdt_entry`), base
/// and limit.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0x0000_f0ff) << 40)
}

/// null, null, __BOOT_CS (64-bit code), __BOOT_DS (data), TSS (busy).
fn gdt() -> [u64; 5] {
    [
        0,
        0,
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// The segment KVM needs for a GDT entry.
fn segment(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = bit(55);
    kvm_segment {
        base,
        limit: if g == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// GDT, IDT and the identity map, written into guest memory.
fn write_cpu_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    let gdt: Vec<u8> = gdt().iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(BOOT_GDT))?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT))?;
    const P_RW: u64 = 0x3;
    const PS: u64 = 0x80;
    mem.write_obj(PDPT | P_RW, GuestAddress(PML4))?;
    for i in 0..PDS {
        let pd = PD + i * PAGE;
        mem.write_obj(pd | P_RW, GuestAddress(PDPT + i * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|j| (((i << 30) | (j << 21)) | P_RW | PS).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}

/// The loader itself, over any seekable input (tests use in-memory images).
fn load<K, I>(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    vcpus: u8,
    kernel: &mut K,
    initrd: Option<&mut I>,
    cmdline: &str,
) -> Result<LinuxBoot, LinuxLoadError>
where
    K: Read + Seek + ReadVolatile,
    I: Read + Seek + ReadVolatile,
{
    let table = (1..=mptable::MAX_CPUS)
        .contains(&vcpus)
        .then(|| mptable::mptable(vcpus))
        .filter(|t| t.len() as u64 <= mptable::MPTABLE_ROOM)
        .ok_or_else(|| {
            LinuxLoadError::Unsupported(format!(
                "{vcpus} vCPUs: the MP table of an x86_64 Linux guest describes 1 to {MAX_LINUX_VCPUS}"
            ))
        })?;
    if mem_size > MAX_LINUX_MEM {
        return Err(LinuxLoadError::Unsupported(format!(
            "{mem_size} bytes of guest memory: an x86_64 Linux guest takes at most 3 GiB \
             (RAM is one block below the 32-bit MMIO hole); lower --mem"
        )));
    }
    let image = Image::parse(kernel)?;
    let footprint = image.footprint();
    if footprint.end() > mem_size {
        return Err(LinuxLoadError::TooLarge {
            file: BootFile::Kernel,
            what: format!(
                "the kernel (loaded at {:#x}, decompressing into {} bytes from {:#x})",
                footprint.start,
                { image.hdr.init_size },
                { image.hdr.pref_address }
            ),
            need: footprint.end(),
            room: mem_size,
        });
    }
    let cmdline_max = image.cmdline_max();
    if cmdline.len() as u64 > cmdline_max {
        return Err(LinuxLoadError::Cmdline(format!(
            "{} bytes, but this kernel takes at most {cmdline_max}",
            cmdline.len()
        )));
    }
    if let Some((at, c)) = cmdline
        .char_indices()
        .find(|(_, c)| !matches!(c, ' '..='~'))
    {
        return Err(LinuxLoadError::Cmdline(format!(
            "character {c:?} at byte {at}: only printable ASCII is passed to the kernel"
        )));
    }
    let cl = Cmdline::try_from(cmdline, cmdline_max as usize + 1)
        .map_err(|e| LinuxLoadError::Cmdline(e.to_string()))?;

    // Checked above: the header is valid and the kernel fits.
    let loaded = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(
        LinuxLoadError::setup("linux-loader could not copy the bzImage"),
    )?;
    let hdr = loaded.setup_header.unwrap_or(image.hdr);
    let image = Image { hdr, ..image };

    let initrd = match initrd {
        None => None,
        Some(f) => {
            let read = |err| LinuxLoadError::Read {
                file: BootFile::Initrd,
                err,
            };
            let size = f.seek(SeekFrom::End(0)).map_err(read)?;
            f.seek(SeekFrom::Start(0)).map_err(read)?;
            let start = place_initrd(mem_size, image.initrd_limit(), footprint, size)?;
            mem.read_exact_volatile_from(GuestAddress(start), f, size as usize)
                .map_err(|e| LinuxLoadError::Read {
                    file: BootFile::Initrd,
                    err: std::io::Error::other(e.to_string()),
                })?;
            Some(GpaRange { start, len: size })
        }
    };

    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(LinuxLoadError::setup("cannot write the command line"))?;
    let params = boot_params_for(&image, cmdline.len() as u64, initrd, mem_size);
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(BOOT_PARAMS)),
        mem,
    )
    .map_err(LinuxLoadError::setup("cannot write boot_params"))?;
    write_cpu_tables(mem).map_err(LinuxLoadError::setup(
        "cannot write the GDT and page tables",
    ))?;
    mem.write_slice(&table, GuestAddress(mptable::MPTABLE_START))
        .map_err(LinuxLoadError::setup("cannot write the MP table"))?;

    Ok(LinuxBoot {
        // The 64-bit entry point is 0x200 past the start of the protected-mode kernel.
        entry: image.load_addr() + 0x200,
        boot_info: BOOT_PARAMS,
        kernel: footprint,
        initrd,
        cmdline: cmdline.to_string(),
    })
}

/// Loads the bzImage `kernel` (and `initrd`) and writes boot_params, the command line, a GDT
/// and page tables. `cmdline` is complete (LINUX_CMDLINE_BASE is already in front).
pub fn load_linux(
    mem: &GuestMemory,
    vcpus: u8,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
) -> Result<LinuxBoot, LinuxLoadError> {
    load(mem.loader(), mem.size(), vcpus, kernel, initrd, cmdline)
}

/// In-kernel PIC, IOAPIC and PIT (the timer Linux calibrates against), and the TSS area VMX
/// needs for real-mode emulation. Before any vCPU exists.
pub fn setup_linux_vm(vm: &VmFd) -> Result<(), ArchError> {
    let set = |what| move |err| ArchError::Set { what, err };
    vm.set_tss_address(0xfffb_d000)
        .map_err(set("TSS address (KVM_SET_TSS_ADDR)"))?;
    vm.create_irq_chip()
        .map_err(set("in-kernel irqchip (KVM_CREATE_IRQCHIP)"))?;
    let pit = kvm_pit_config {
        // Port 0x61 (PC speaker / PIT gate) handled in KVM, as Linux polls it to calibrate.
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(set("in-kernel PIT (KVM_CREATE_PIT2)"))
}

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Sets the delivery mode of a LAPIC LVT register (bits 8..10) in KVM's register page.
fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (r, b) in regs[offset..offset + 4].iter_mut().zip(v.to_le_bytes()) {
        *r = b as std::os::raw::c_char;
    }
}

/// CPUID.1:ECX bit 31: "running on a hypervisor". KVM's supported CPUID leaves it clear (the
/// VMM decides); Linux looks for KVM's leaves (0x4000_0000, "KVMKVMKVM") only when it is set.
/// Without it a Linux guest finds no kvmclock: it calibrates the TSC against the PIT (and fails
/// under nested TCG: "Marking TSC unstable"), disables the LAPIC timer ("verification
/// failure"), keeps time with jiffies and reads the wall clock from the CMOS RTC.
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 24: TSC-deadline mode of the LAPIC timer, which KVM emulates whenever it has
/// KVM_CAP_TSC_DEADLINE_TIMER, but which its supported CPUID does not list (as QEMU and
/// Firecracker do, the VMM sets it).
const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// A Linux guest's CPUID from KVM's supported one, for vCPU `id`: the initial APIC ID (leaf 1,
/// leaves 0xb and 0x1f), the hypervisor bit, and TSC-deadline when KVM emulates it.
pub fn linux_cpuid(entries: &mut [kvm_cpuid_entry2], id: u8, tsc_deadline: bool) {
    for e in entries {
        match e.function {
            1 => {
                // Initial APIC ID.
                e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(id) << 24);
                e.ecx |= CPUID_1_ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= CPUID_1_ECX_TSC_DEADLINE;
                }
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
}

/// vCPU 0: long mode at CPL0 at the 64-bit entry, RSI = boot_params, interrupts off. Every
/// vCPU: CPUID (linux_cpuid), LAPIC LINT0 = ExtINT (the PIC) and LINT1 = NMI.
pub fn configure_vcpu_linux(
    kvm: &Kvm,
    _vm: &VmFd,
    vcpu: &VcpuFd,
    _protected: bool,
    id: u8,
    boot: &LinuxBoot,
) -> Result<(), ArchError> {
    let get = |what| move |err| ArchError::Get { what, err };
    let set = |what| move |err| ArchError::Set { what, err };
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(get("supported CPUID"))?;
    linux_cpuid(
        cpuid.as_mut_slice(),
        id,
        kvm.check_extension(Cap::TscDeadlineTimer),
    );
    vcpu.set_cpuid2(&cpuid).map_err(set("CPUID"))?;

    let mut lapic = vcpu.get_lapic().map_err(get("local APIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(set("local APIC"))?;
    if id != 0 {
        // Secondary CPUs wait for INIT/SIPI from the in-kernel LAPIC.
        return Ok(());
    }

    let msrs = Msrs::from_entries(&[
        kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: 1, // fast strings
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: (1 << 11) | 6, // MTRRs on, default type write-back
            ..Default::default()
        },
    ])
    .map_err(ArchError::MsrList)?;
    let n = vcpu.set_msrs(&msrs).map_err(set("boot MSRs"))?;
    if n != msrs.as_slice().len() {
        return Err(ArchError::MsrsSet {
            set: n,
            of: msrs.as_slice().len(),
        });
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(set("FPU"))?;

    let mut sregs = vcpu.get_sregs().map_err(get("special registers"))?;
    let table = gdt();
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cs = segment(table[2], BOOT_CS);
    let data = segment(table[3], BOOT_DS);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(table[4], BOOT_TSS);
    sregs.cr3 = PML4;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 0x8000_0033; // PG | NE | ET | MP | PE
    sregs.efer = 0x500; // LME | LMA
    vcpu.set_sregs(&sregs).map_err(set("special registers"))?;

    let regs = kvm_regs {
        rip: boot.entry,
        rsi: boot.boot_info,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(set("registers"))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    const MIB: u64 = 1 << 20;

    /// A minimal bzImage: 4 setup sectors + a 64 KiB "protected-mode kernel" of 0xcc bytes,
    /// header as a 6.x x86_64 kernel's (protocol 2.15, relocatable, 64-bit entry).
    fn fake_bzimage() -> Vec<u8> {
        let setup_sects = 4u8;
        let pm_len = 64 * 1024;
        let mut img = vec![0u8; (usize::from(setup_sects) + 1) * 512 + pm_len];
        let hdr = setup_header {
            setup_sects,
            syssize: (pm_len / 16) as u32,
            boot_flag: 0xaa55,
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            code32_start: HIMEM_START as u32,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: XLF_KERNEL_64 | 0x2,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
            ..Default::default()
        };
        img[HEADER_OFFSET as usize..HEADER_END as usize].copy_from_slice(hdr.as_slice());
        for b in &mut img[(usize::from(setup_sects) + 1) * 512..] {
            *b = 0xcc;
        }
        img
    }

    fn patch(img: &mut [u8], f: impl FnOnce(&mut setup_header)) {
        let mut hdr = setup_header::default();
        let r = HEADER_OFFSET as usize..HEADER_END as usize;
        hdr.as_mut_slice().copy_from_slice(&img[r.clone()]);
        f(&mut hdr);
        img[r].copy_from_slice(hdr.as_slice());
    }

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn boot(
        m: &GuestMemoryMmap,
        size: u64,
        img: Vec<u8>,
        initrd: Option<Vec<u8>>,
        cmdline: &str,
    ) -> Result<LinuxBoot, LinuxLoadError> {
        let mut k = Cursor::new(img);
        let mut i = initrd.map(Cursor::new);
        load(m, size, 1, &mut k, i.as_mut(), cmdline)
    }

    fn params(m: &GuestMemoryMmap) -> boot_params {
        m.read_obj(GuestAddress(BOOT_PARAMS)).unwrap()
    }

    #[test]
    fn boot_params_layout_matches_the_boot_protocol() {
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
        assert_eq!(std::mem::offset_of!(boot_params, e820_entries), 0x1e8);
        assert_eq!(std::mem::offset_of!(boot_params, hdr), 0x1f1);
        assert_eq!(std::mem::offset_of!(boot_params, e820_table), 0x2d0);
        assert_eq!(
            std::mem::offset_of!(boot_params, hdr) + std::mem::offset_of!(setup_header, header),
            0x202
        );
        assert_eq!(HEADER_END, 0x26c);
    }

    #[test]
    fn loads_kernel_initrd_cmdline_and_boot_params() {
        let size = 64 * MIB;
        let m = mem(size);
        let initrd: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let cmdline = "console=ttyS0 panic=-1 pinvmm.fill=1M";
        let b = boot(&m, size, fake_bzimage(), Some(initrd.clone()), cmdline).unwrap();

        assert_eq!(b.entry, HIMEM_START + 0x200);
        assert_eq!(b.boot_info, BOOT_PARAMS);
        // Decompression buffer: pref_address (16 MiB) + init_size (8 MiB).
        assert_eq!(
            b.kernel,
            GpaRange {
                start: MIB,
                len: 23 * MIB
            }
        );
        let mut k = [0u8; 4];
        m.read_slice(&mut k, GuestAddress(MIB)).unwrap();
        assert_eq!(k, [0xcc; 4]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(MIB + 64 * 1024)).unwrap(), 0);

        // Initramfs: page aligned, as high as possible, ending within RAM.
        let r = b.initrd.unwrap();
        assert_eq!(r.len, 10_000);
        assert_eq!(r.start % PAGE, 0);
        assert_eq!(r.start, align_down(size - 10_000, PAGE));
        assert!(r.end() <= size && size - r.end() < PAGE);
        let mut back = vec![0u8; initrd.len()];
        m.read_slice(&mut back, GuestAddress(r.start)).unwrap();
        assert_eq!(back, initrd);

        let mut c = vec![0u8; cmdline.len() + 1];
        m.read_slice(&mut c, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&c[..cmdline.len()], cmdline.as_bytes());
        assert_eq!(c[cmdline.len()], 0);

        let p = params(&m);
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.type_of_loader }, LOADER_UNDEFINED);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, cmdline.len() as u32 + 1);
        assert_eq!({ p.hdr.ramdisk_image }, r.start as u32);
        assert_eq!({ p.hdr.ramdisk_size }, 10_000);
        assert_eq!({ p.hdr.code32_start }, MIB as u32);
        assert_eq!({ p.hdr.init_size }, 0x80_0000);
        assert_eq!({ p.ext_ramdisk_image }, 0);
        assert_eq!(b.cmdline, cmdline);
    }

    #[test]
    fn e820_describes_ram_and_the_legacy_hole() {
        let size = 64 * MIB;
        let m = mem(size);
        boot(&m, size, fake_bzimage(), None, "x").unwrap();
        let p = params(&m);
        assert_eq!(p.e820_entries, 3);
        let t: Vec<(u64, u64, u32)> = p.e820_table[..3]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect();
        assert_eq!(
            t,
            [
                (0, 0x9_fc00, E820_RAM),
                (0x9_fc00, 0x6_0400, E820_RESERVED),
                (MIB, size - MIB, E820_RAM),
            ]
        );
        // Contiguous, and covers RAM exactly.
        assert_eq!(t.last().map(|e| e.0 + e.1), Some(size));
        assert!(t.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!({ p.hdr.ramdisk_size }, 0);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let regions = [
            (BOOT_GDT, 5 * 8),
            (BOOT_IDT, 8),
            (BOOT_PARAMS, 4096),
            (BOOT_STACK - 0x1000 + 0x10, 0x1000), // the stack page below 0x9000
            (PML4, PAGE),
            (PDPT, PAGE),
            (PD, PDS * PAGE),
            (CMDLINE_START, CMDLINE_ROOM),
        ];
        for (i, a) in regions.iter().enumerate() {
            assert!(a.0 + a.1 <= EBDA_START, "{a:x?} reaches the EBDA");
            for b in &regions[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
    }

    #[test]
    fn identity_map_and_gdt() {
        let size = 64 * MIB;
        let m = mem(size);
        boot(&m, size, fake_bzimage(), None, "x").unwrap();
        let rd = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(rd(PML4), PDPT | 3);
        for i in 0..PDS {
            assert_eq!(rd(PDPT + i * 8), (PD + i * PAGE) | 3);
        }
        // 2 MiB supervisor pages (no U bit), identity.
        assert_eq!(rd(PD), 0x83);
        assert_eq!(rd(PD + 8), (2 * MIB) | 0x83);
        assert_eq!(rd(PD + 3 * PAGE + 511 * 8), 0xffe0_0000 | 0x83);
        assert_eq!(rd(BOOT_GDT + 16), 0x00af_9b00_0000_ffff); // __BOOT_CS
        assert_eq!(rd(BOOT_GDT + 24), 0x00cf_9300_0000_ffff); // __BOOT_DS
        let cs = segment(gdt()[2], BOOT_CS);
        assert_eq!(
            (cs.l, cs.db, cs.dpl, cs.type_, cs.present),
            (1, 0, 0, 11, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(gdt()[3], BOOT_DS);
        assert_eq!((ds.l, ds.db, ds.type_, ds.s), (0, 1, 3, 1));
        let tr = segment(gdt()[4], BOOT_TSS);
        assert_eq!((tr.type_, tr.s, tr.present), (11, 0, 1));
    }

    #[test]
    fn initrd_respects_initrd_addr_max_and_the_kernel() {
        let mut img = fake_bzimage();
        patch(&mut img, |h| h.initrd_addr_max = (48 * MIB - 1) as u32);
        let size = 64 * MIB;
        let m = mem(size);
        let b = boot(&m, size, img, Some(vec![1; 5000]), "x").unwrap();
        let r = b.initrd.unwrap();
        assert_eq!(r.start, align_down(48 * MIB - 5000, PAGE));
        assert!(r.end() <= 48 * MIB);

        // Exactly fits between the kernel (ends at 24 MiB) and the end of RAM.
        let size = 32 * MIB;
        let m = mem(size);
        let b = boot(
            &m,
            size,
            fake_bzimage(),
            Some(vec![2; (8 * MIB) as usize]),
            "x",
        )
        .unwrap();
        assert_eq!(b.initrd.unwrap().start, 24 * MIB);
        assert_eq!(b.kernel.end(), 24 * MIB);
    }

    #[test]
    fn too_big_kernel_or_initrd_is_reported_with_sizes() {
        // Kernel: needs 24 MiB of RAM.
        let m = mem(16 * MIB);
        let e = boot(&m, 16 * MIB, fake_bzimage(), None, "x").unwrap_err();
        let LinuxLoadError::TooLarge {
            file, need, room, ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!(
            (*file, *need, *room),
            (BootFile::Kernel, 24 * MIB, 16 * MIB)
        );
        assert!(e.to_string().contains("raise --mem"), "{e}");

        // Initrd: one byte more than the room above the kernel.
        let m = mem(32 * MIB);
        let e = boot(
            &m,
            32 * MIB,
            fake_bzimage(),
            Some(vec![0; (8 * MIB + 1) as usize]),
            "x",
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                LinuxLoadError::TooLarge {
                    file: BootFile::Initrd,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.file(), Some(BootFile::Initrd));
        // Larger than all of RAM.
        let e = boot(
            &m,
            32 * MIB,
            fake_bzimage(),
            Some(vec![0; (40 * MIB) as usize]),
            "x",
        )
        .unwrap_err();
        assert!(matches!(e, LinuxLoadError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn truncated_images_say_what_is_missing() {
        let size = 64 * MIB;
        let m = mem(size);
        let full = fake_bzimage();
        // Cut inside the protected-mode kernel: syssize says more.
        let e = boot(&m, size, full[..full.len() - 1].to_vec(), None, "x").unwrap_err();
        let LinuxLoadError::Truncated { need, len, why, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!((*need, *len), (full.len() as u64, full.len() as u64 - 1));
        assert!(why.contains("syssize"), "{why}");
        // Cut inside the setup code.
        let e = boot(&m, size, full[..0x800].to_vec(), None, "x").unwrap_err();
        assert!(e.to_string().contains("setup_sects"), "{e}");
        // Cut inside the setup header.
        let e = boot(&m, size, full[..0x210].to_vec(), None, "x").unwrap_err();
        assert!(
            matches!(e, LinuxLoadError::Truncated { need: 0x26c, .. }),
            "{e}"
        );
    }

    #[test]
    fn not_a_bzimage_says_what_it_is() {
        let size = 64 * MIB;
        let m = mem(size);
        let cases: [(Vec<u8>, &str); 5] = [
            (b"\x7fELF\x02\x01\x01".to_vec(), "ELF"),
            (
                [vec![0; 0x38], b"ARM\x64".to_vec(), vec![0; 0x200]].concat(),
                "arm64 Image",
            ),
            (vec![0x1f, 0x8b, 8, 0, 0, 0], "gzip"),
            (b"07070100000000".to_vec(), "cpio"),
            (vec![0x55; 0x1000], "without \"HdrS\""),
        ];
        for (img, want) in cases {
            let e = boot(&m, size, img, None, "x").unwrap_err();
            assert!(matches!(e, LinuxLoadError::NotAKernel { .. }), "{e}");
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert_eq!(e.file(), Some(BootFile::Kernel));
        }
        let e = boot(&m, size, vec![], None, "x").unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
    }

    #[test]
    fn unsupported_headers_are_refused() {
        let size = 64 * MIB;
        let m = mem(size);
        type Patch = fn(&mut setup_header);
        let cases: [(Patch, &str); 4] = [
            (|h| h.version = 0x020b, "boot protocol 2.11"),
            (|h| h.loadflags = 0, "zImage"),
            (|h| h.xloadflags = 0, "64-bit"),
            (|h| h.code32_start = 0x1_0000, "below 1 MiB"),
        ];
        for (f, want) in cases {
            let mut img = fake_bzimage();
            patch(&mut img, f);
            let e = boot(&m, size, img, None, "x").unwrap_err();
            assert!(matches!(e, LinuxLoadError::Unsupported(_)), "{e}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn bad_command_lines_and_guests_are_refused() {
        let size = 64 * MIB;
        let m = mem(size);
        let long = "a".repeat(2048);
        let e = boot(&m, size, fake_bzimage(), None, &long).unwrap_err();
        assert!(e.to_string().contains("at most 2047"), "{e}");
        let e = boot(&m, size, fake_bzimage(), None, "bad\u{7}char").unwrap_err();
        assert!(matches!(e, LinuxLoadError::Cmdline(_)), "{e}");
        assert!(e.to_string().contains("at byte 3"), "{e}");

        let mut k = Cursor::new(fake_bzimage());
        let e = load::<_, Cursor<Vec<u8>>>(&m, size, MAX_LINUX_VCPUS + 1, &mut k, None, "x")
            .unwrap_err();
        assert!(e.to_string().contains("1 to 37"), "{e}");
        let e = load::<_, Cursor<Vec<u8>>>(&m, size, 0, &mut k, None, "x").unwrap_err();
        assert!(matches!(e, LinuxLoadError::Unsupported(_)), "{e}");
        let e = load::<_, Cursor<Vec<u8>>>(&m, 4 << 30, 1, &mut k, None, "x").unwrap_err();
        assert!(e.to_string().contains("at most 3 GiB"), "{e}");
    }

    #[test]
    fn mp_table_lists_every_vcpu_and_fits_base_memory() {
        let size = 64 * MIB;
        let m = mem(size);
        let mut k = Cursor::new(fake_bzimage());
        load::<_, Cursor<Vec<u8>>>(&m, size, 4, &mut k, None, "x").unwrap();
        let want = mptable::mptable(4);
        let mut got = vec![0u8; want.len()];
        m.read_slice(&mut got, GuestAddress(mptable::MPTABLE_START))
            .unwrap();
        assert_eq!(got, want);
        // The table lies in the reserved part of the e820 map.
        let p = params(&m);
        let hole = p.e820_table[1];
        assert_eq!(
            (hole.addr, hole.r#type),
            (mptable::MPTABLE_START, E820_RESERVED)
        );
        assert!(mptable::mptable(MAX_LINUX_VCPUS).len() as u64 <= mptable::MPTABLE_ROOM);
        assert!(mptable::mptable(MAX_LINUX_VCPUS + 1).len() as u64 > mptable::MPTABLE_ROOM);
    }

    #[test]
    fn linux_cpuid_says_hypervisor_and_sets_apic_ids() {
        let entry = |function, index| kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x00ab_cdef,
            ecx: 0x0000_0201,
            edx: 0x55,
            ..Default::default()
        };
        let mut e = [entry(0, 0), entry(1, 0), entry(0xb, 1), entry(0x1f, 0)];
        linux_cpuid(&mut e, 3, false);
        assert_eq!(e[1].ebx, 0x03ab_cdef, "initial APIC ID in EBX[31:24]");
        assert_eq!(
            e[1].ecx, 0x8000_0201,
            "hypervisor bit, nothing else changed"
        );
        assert_eq!((e[2].edx, e[3].edx), (3, 3), "x2APIC IDs");
        assert_eq!((e[0].ebx, e[0].ecx, e[0].edx), (0x00ab_cdef, 0x201, 0x55));
        linux_cpuid(&mut e, 3, true);
        assert_eq!(e[1].ecx, 0x8100_0201, "TSC-deadline when KVM emulates it");
    }

    #[test]
    fn lvt_delivery_mode_is_bits_8_to_10() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0 + 2] = 1; // bit 16 (mask) must survive
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2], 1);
        set_lvt_mode(&mut regs, APIC_LVT1, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT1 + 1] as u8, 0x04);
    }
}
