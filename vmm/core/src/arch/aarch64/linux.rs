// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Booting an arm64 Linux `Image` (Documentation/arch/arm64/booting.rst), loaded the way
//! crosvm loads it (google/crosvm `aarch64/src/lib.rs` `build_vm`, `kernel_loader`,
//! `arch::load_image`).
//!
//! Guest RAM, bottom to top (crosvm's layout, FDT at the end):
//!
//! ```text
//! RAM_START (2 MiB aligned) + text_offset   kernel Image, then its BSS (header's image_size)
//! next 16 MiB boundary after the kernel     initrd
//! ...                                       free
//! last 2 MiB of RAM                         device tree (fdt::load_addr)
//! ```
//!
//! Which system calls write which pages, in crosvm's order, on the calling (loader) thread:
//!
//! 1. `load_elf`: `pread(16 bytes @ 0)` of the ELF ident into a stack buffer (not ELF);
//! 2. `load_arm64_kernel_lz4`: `read(4 bytes @ 0)` of the LZ4 frame magic (not LZ4);
//! 3. `load_arm64_kernel`: `pread(64 @ 0)` of the header, the file's length (`fstat`), then one
//!    `pread(file length @ 0)` (looping on short reads) straight into guest memory at
//!    RAM_START + text_offset: the kernel copies the file's page cache into the mapping, one
//!    write fault per guest page;
//! 4. `arch::load_image` of the initrd: `fstat`, `pread(length @ 0)` straight into guest
//!    memory at the 16 MiB boundary after the kernel's end (file or image_size, the larger);
//! 5. `create_fdt`: the device tree is built on the heap and copied (`write_at_addr`) into the
//!    last 2 MiB.
//!
//! pinvmm adds one read before step 1: `pread(4 KiB @ 0)` into a stack buffer, to check the
//! header and the PE/COFF section table (so a wrong file gets a message that says what it is:
//! gzip, ELF vmlinux, x86 bzImage, EFI zboot). Which mapping "guest memory" is —
//! the mlocked pin view (pKVM-exact) or the not-mlocked loader view (stress models) — is the
//! caller's choice ([`crate::memory::LoadVia`]).
//!
//! The vCPU starts at the Image's first instruction with x0 = the device tree, EL1h, DAIF
//! masked, MMU off (KVM's reset state); secondary vCPUs start powered off and are brought up
//! by the guest's PSCI CPU_ON, which KVM handles itself.

use std::fs::File;

use kvm_bindings::{KVM_ARM_VCPU_POWER_OFF, kvm_vcpu_init};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::fdt::{self, FDT_MAX, FdtConfig};
use super::layout::RAM_START;
use super::regs;
use crate::arch::{ArchError, BootFile, GpaRange, LinuxBoot, LinuxLoadError};
use crate::memory::GuestMemory;
use crate::sys;

/// GSI of the UART's interrupt: SPI 1 (INTID 33), as the device tree says. KVM's default
/// arm64 routing maps GSI n to SPI n.
pub const SERIAL_IRQ: u32 = super::layout::SERIAL_SPI;

/// What vmm::linux puts in front of the user's command line: the console on the 16550
/// (ttyS0; `earlycon` finds the UART through /chosen/stdout-path, so the first lines appear
/// before the 8250 driver probes), and reboot on panic instead of hanging (KVM reports the
/// reset, the VM ends at once instead of at the timeout).
pub const LINUX_CMDLINE_BASE: &str = "console=ttyS0 earlycon panic=-1";

/// The arm64 Image header magic, "ARM\x64", at byte 56.
const IMAGE_MAGIC: u32 = 0x644d_5241;
/// Bytes of the Image header.
const HEADER_LEN: u64 = 64;
/// Bytes read to find the header and, behind it, the PE/COFF section table.
const HEAD_READ: usize = 4096;
/// text_offset of Images older than 3.17, whose image_size is 0 (booting.rst).
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// The Image goes at a 2 MiB-aligned base.
const KERNEL_ALIGN: u64 = 2 << 20;
/// crosvm's `AARCH64_INITRD_ALIGN`: the initrd starts at the next 16 MiB boundary after the
/// kernel.
pub const INITRD_ALIGN: u64 = 16 << 20;

/// What the Image header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address (file plus BSS; booting.rst).
    pub footprint: u64,
    pub file_len: u64,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// Says what a file that is not an arm64 Image looks like.
fn identify(head: &[u8]) -> String {
    if head.starts_with(&[0x1f, 0x8b]) {
        "it is gzip-compressed (an Image.gz?): decompress it (gunzip) and pass the Image".into()
    } else if head.starts_with(b"\x7fELF") {
        "it is an ELF file (vmlinux?): pass the raw Image (arch/arm64/boot/Image)".into()
    } else if head.get(0x202..0x206) == Some(b"HdrS") {
        "it is an x86 bzImage".into()
    } else if head.starts_with(b"MZ") && head.get(4..8) == Some(b"zimg") {
        "it is an EFI zboot image (CONFIG_EFI_ZBOOT, compressed): pass the Image built before compression (arch/arm64/boot/Image)".into()
    } else {
        match le32(head, 56) {
            Some(m) => format!("no \"ARM\\x64\" magic at byte 56 (found {m:#010x})"),
            None => "no arm64 Image header".into(),
        }
    }
}

/// End of the PE/COFF sections' raw data, when the Image carries the EFI stub's PE header:
/// how long the file must be. Signed Images are longer (the signature follows).
fn pe_raw_end(head: &[u8]) -> Option<u64> {
    let pe = le32(head, 60)? as usize;
    if head.get(pe..pe + 4)? != b"PE\0\0" {
        return None;
    }
    let sections = u16::from_le_bytes(head.get(pe + 6..pe + 8)?.try_into().ok()?) as usize;
    let optional = u16::from_le_bytes(head.get(pe + 20..pe + 22)?.try_into().ok()?) as usize;
    let table = pe + 24 + optional;
    (0..sections)
        .map(|i| {
            let s = table + 40 * i;
            Some(u64::from(le32(head, s + 16)?) + u64::from(le32(head, s + 20)?))
        })
        .try_fold(0u64, |end, e| e.map(|e| end.max(e)))
}

/// Checks the header of an Image of `file_len` bytes whose first bytes are `head`.
pub fn parse_image(head: &[u8], file_len: u64) -> Result<ImageInfo, LinuxLoadError> {
    let not_image = |found| LinuxLoadError::NotAKernel {
        expected: "an arm64 Linux Image",
        found,
    };
    if le32(head, 56) != Some(IMAGE_MAGIC) {
        return Err(
            if file_len < HEADER_LEN && !head.is_empty() && head[0] == b'M' {
                LinuxLoadError::Truncated {
                    file: BootFile::Kernel,
                    len: file_len,
                    need: HEADER_LEN,
                    why: "the arm64 Image header alone is 64 bytes".into(),
                }
            } else {
                not_image(identify(head))
            },
        );
    }
    let text_offset_raw = le64(head, 8).expect("header read");
    let image_size = le64(head, 16).expect("header read");
    let flags = le64(head, 24).expect("header read");
    if flags & 1 != 0 {
        return Err(LinuxLoadError::Unsupported(
            "a big-endian arm64 Image (header flags bit 0)".into(),
        ));
    }
    if let Some(end) = pe_raw_end(head)
        && file_len < end
    {
        return Err(LinuxLoadError::Truncated {
            file: BootFile::Kernel,
            len: file_len,
            need: end,
            why: "the Image's PE/COFF section table says so".into(),
        });
    }
    // image_size 0: an Image older than 3.17, loaded at the fixed legacy text_offset.
    let text_offset = if image_size == 0 {
        LEGACY_TEXT_OFFSET
    } else {
        text_offset_raw
    };
    if text_offset % 4096 != 0 || text_offset >= KERNEL_ALIGN {
        return Err(LinuxLoadError::Unsupported(format!(
            "text_offset {text_offset:#x} is not a page-aligned offset below 2 MiB"
        )));
    }
    Ok(ImageInfo {
        text_offset,
        footprint: image_size.max(file_len),
        file_len,
    })
}

/// Where everything goes in a guest of `mem_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The 2 MiB-aligned base the Image is loaded relative to (it lands at base + text_offset).
    pub base: u64,
    pub kernel: GpaRange,
    pub initrd: Option<GpaRange>,
    pub fdt: u64,
}

/// Places the kernel at the start of RAM, the initrd at the next 16 MiB boundary after the
/// kernel (file or image_size, the larger) and the device tree in the last 2 MiB, as crosvm
/// does; refuses what does not fit.
pub fn place(
    mem_size: u64,
    image: &ImageInfo,
    initrd_len: Option<u64>,
) -> Result<Placement, LinuxLoadError> {
    let kernel = GpaRange {
        start: RAM_START + image.text_offset,
        len: image.footprint,
    };
    let kernel_need = image.text_offset + image.footprint + FDT_MAX;
    if kernel_need > mem_size {
        return Err(LinuxLoadError::TooLarge {
            file: BootFile::Kernel,
            what: format!(
                "the kernel ({} bytes with its BSS) plus the 2 MiB device tree",
                image.footprint
            ),
            need: kernel_need,
            room: mem_size,
        });
    }
    let fdt = fdt::load_addr(mem_size);
    let initrd = match initrd_len {
        None => None,
        Some(len) => {
            let start = kernel.end().next_multiple_of(INITRD_ALIGN);
            if start + len > fdt {
                return Err(LinuxLoadError::TooLarge {
                    file: BootFile::Initrd,
                    what: format!(
                        "the kernel ({} bytes with its BSS), the initrd ({len} bytes, at the next 16 MiB boundary) and the 2 MiB device tree",
                        image.footprint
                    ),
                    need: start - RAM_START + len + FDT_MAX,
                    room: mem_size,
                });
            }
            Some(GpaRange { start, len })
        }
    };
    Ok(Placement {
        base: RAM_START,
        kernel,
        initrd,
        fdt,
    })
}

fn read_err(file: BootFile) -> impl Fn(std::io::Error) -> LinuxLoadError {
    move |err| LinuxLoadError::Read { file, err }
}

/// Loads the Image (and initrd) and writes the device tree through `mem.loader()`, with
/// crosvm's system calls in crosvm's order (module docs). `cmdline` is complete (vmm::linux
/// has put [`LINUX_CMDLINE_BASE`] in front).
pub fn load_linux(
    mem: &GuestMemory,
    vcpus: u8,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
) -> Result<LinuxBoot, LinuxLoadError> {
    let k = BootFile::Kernel;
    // pinvmm's own check first: header and PE/COFF table (a stack buffer, page cache only).
    let len = kernel.metadata().map_err(read_err(k))?.len();
    let mut head = [0u8; HEAD_READ];
    let n = sys::pread_buf(kernel, 0, &mut head).map_err(read_err(k))?;
    let image = parse_image(&head[..n], len)?;
    // 1.-3. crosvm: load_elf's ident, the LZ4 magic, the arm64 header (stack buffers).
    let mut ident = [0u8; 16];
    sys::pread_buf(kernel, 0, &mut ident).map_err(read_err(k))?;
    let mut lz4_magic = [0u8; 4];
    sys::pread_buf(kernel, 0, &mut lz4_magic).map_err(read_err(k))?;
    let mut header = [0u8; HEADER_LEN as usize];
    sys::pread_buf(kernel, 0, &mut header).map_err(read_err(k))?;
    let file_len = kernel.metadata().map_err(read_err(k))?.len();
    let initrd_len = match &initrd {
        Some(f) => Some(f.metadata().map_err(read_err(BootFile::Initrd))?.len()),
        None => None,
    };
    let at = place(mem.size(), &image, initrd_len)?;
    // The whole file straight into guest memory.
    sys::pread_into_guest(mem.loader(), at.kernel.start, kernel, 0, file_len as usize)
        .map_err(read_err(k))?;
    // 4. The initrd, the same way.
    if let (Some(f), Some(r)) = (initrd, at.initrd) {
        sys::pread_into_guest(mem.loader(), r.start, f, 0, r.len as usize)
            .map_err(read_err(BootFile::Initrd))?;
    }
    // 5. The device tree, built on the heap, then copied in.
    let blob = fdt::create(&FdtConfig {
        mem_size: mem.size(),
        vcpus: vcpus.into(),
        cmdline: cmdline.to_owned(),
        initrd: at.initrd.map(|r| (r.start, r.len)),
    })
    .map_err(LinuxLoadError::setup("cannot build the device tree"))?;
    mem.load(at.fdt, &blob)
        .map_err(LinuxLoadError::setup("cannot write the device tree"))?;
    Ok(LinuxBoot {
        entry: at.kernel.start,
        boot_info: at.fdt,
        kernel: at.kernel,
        initrd: at.initrd,
        cmdline: cmdline.to_owned(),
    })
}

/// Nothing beyond `setup_vm`: the GICv3 is created in `finish_vcpus` for every guest.
pub fn setup_linux_vm(_vm: &VmFd) -> Result<(), ArchError> {
    Ok(())
}

/// The `KVM_ARM_VCPU_INIT` features of vCPU `id` of a Linux guest: PSCI 0.2, and every vCPU but
/// the first powered off until the guest's PSCI CPU_ON.
pub fn linux_vcpu_init(mut kvi: kvm_vcpu_init, id: u8) -> kvm_vcpu_init {
    if id != 0 {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    kvi
}

/// Initialises vCPU `id`; vCPU 0 starts at the Image with x0 = the device tree.
pub fn configure_vcpu_linux(
    _kvm: &Kvm,
    vm: &VmFd,
    vcpu: &VcpuFd,
    protected: bool,
    id: u8,
    boot: &LinuxBoot,
) -> Result<(), ArchError> {
    let kvi = linux_vcpu_init(regs::vcpu_init(vm, protected)?, id);
    vcpu.vcpu_init(&kvi).map_err(|err| ArchError::Set {
        what: "features (KVM_ARM_VCPU_INIT with PSCI 0.2)",
        err,
    })?;
    if id != 0 {
        return Ok(());
    }
    for r in regs::linux_boot_registers(boot.entry, boot.boot_info) {
        vcpu.set_one_reg(r.id, &r.value.to_le_bytes())
            .map_err(|err| ArchError::Set { what: r.name, err })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal Image header: code0/1, text_offset, image_size, flags (LE, 4K), magic.
    fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[0..2].copy_from_slice(b"MZ");
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        h
    }

    /// The header followed by a PE/COFF header with one section whose raw data ends at `end`.
    fn header_with_pe(end: u32) -> Vec<u8> {
        let mut h = header(0, 0x40_0000, 0xa);
        h[60..64].copy_from_slice(&64u32.to_le_bytes());
        let mut pe = vec![0u8; 24];
        pe[0..4].copy_from_slice(b"PE\0\0");
        pe[6..8].copy_from_slice(&1u16.to_le_bytes());
        pe[20..22].copy_from_slice(&0u16.to_le_bytes()); // no optional header
        h.extend(pe);
        let mut sec = vec![0u8; 40];
        sec[16..20].copy_from_slice(&(end - 0x1000).to_le_bytes()); // SizeOfRawData
        sec[20..24].copy_from_slice(&0x1000u32.to_le_bytes()); // PointerToRawData
        h.extend(sec);
        h
    }

    #[test]
    fn a_modern_image_loads_at_its_text_offset_with_its_bss() {
        let info = parse_image(&header(0, 0x250_0000, 0xa), 0x200_0000).unwrap();
        assert_eq!(info.text_offset, 0);
        assert_eq!(info.footprint, 0x250_0000);
        let legacy = parse_image(&header(0x1234, 0, 0), 0x10_0000).unwrap();
        assert_eq!(
            (legacy.text_offset, legacy.footprint),
            (0x8_0000, 0x10_0000)
        );
    }

    #[test]
    fn wrong_files_say_what_they_are() {
        let msg = |b: &[u8]| parse_image(b, b.len() as u64).unwrap_err().to_string();
        assert!(msg(&[0x1f, 0x8b, 8, 0, 0, 0]).contains("gzip"));
        assert!(msg(b"\x7fELF\x02\x01\x01").contains("ELF"));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(msg(&bz).contains("x86 bzImage"));
        let mut zboot = vec![0u8; 64];
        zboot[0..8].copy_from_slice(b"MZ\0\0zimg");
        assert!(msg(&zboot).contains("zboot"));
        assert!(msg(&[0xab; 100]).contains("0xabababab"));
        let short = &header(0, 0, 0)[..20];
        assert!(matches!(
            parse_image(short, 20),
            Err(LinuxLoadError::Truncated { need: 64, .. })
        ));
        assert!(matches!(
            parse_image(&header(0, 0x10_0000, 1), 0x8_0000),
            Err(LinuxLoadError::Unsupported(_))
        ));
    }

    #[test]
    fn a_cut_image_is_truncated_per_its_pe_section_table() {
        let h = header_with_pe(0x20_0000);
        assert_eq!(pe_raw_end(&h), Some(0x20_0000));
        assert!(parse_image(&h, 0x20_0000).is_ok());
        assert!(parse_image(&h, 0x20_0000 + 1472).is_ok()); // signed: signature appended
        match parse_image(&h, 0x1f_f000) {
            Err(LinuxLoadError::Truncated { need, len, .. }) => {
                assert_eq!((need, len), (0x20_0000, 0x1f_f000))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn placement_keeps_kernel_initrd_and_fdt_apart_inside_ram() {
        let mem = 256 << 20;
        let image = parse_image(&header(0, 0x250_0000, 0xa), 0x240_0000).unwrap();
        let p = place(mem, &image, Some(10_000_001)).unwrap();
        assert_eq!(p.base % KERNEL_ALIGN, 0);
        assert_eq!(p.kernel.start, RAM_START);
        let i = p.initrd.unwrap();
        // crosvm's placement: the next 16 MiB boundary after the kernel's 37 MiB.
        assert_eq!(i.start, RAM_START + (48 << 20));
        assert!(i.start >= p.kernel.end());
        assert!(i.end() <= p.fdt);
        assert_eq!(p.fdt, RAM_START + mem - FDT_MAX);
        assert!(p.fdt + FDT_MAX <= RAM_START + mem);
        assert_eq!(p.fdt % 8, 0);
    }

    #[test]
    fn what_does_not_fit_is_refused_naming_the_file() {
        let image = parse_image(&header(0, 60 << 20, 0xa), 40 << 20).unwrap();
        let e = place(32 << 20, &image, None).unwrap_err();
        assert_eq!(e.file(), Some(BootFile::Kernel));
        assert!(e.to_string().contains("raise --mem"), "{e}");
        let e = place(64 << 20, &image, Some(4 << 20)).unwrap_err();
        assert_eq!(e.file(), Some(BootFile::Initrd));
        assert!(place(128 << 20, &image, Some(4 << 20)).is_ok());
    }

    #[test]
    fn only_secondary_vcpus_start_powered_off() {
        let kvi = kvm_vcpu_init::default();
        assert_eq!(linux_vcpu_init(kvi, 0).features[0], 0);
        assert_eq!(
            linux_vcpu_init(kvi, 1).features[0],
            1 << KVM_ARM_VCPU_POWER_OFF
        );
    }
}
