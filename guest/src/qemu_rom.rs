// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! memtouch's idea as a 64 KiB BIOS image for QEMU (`-bios`), so that `pinvmm bench` can time
//! `qemu-system-x86_64 -accel kvm` on the same bare work as pinvmm's own payloads.
//!
//! QEMU starts a vCPU the way hardware does, in real mode at the reset vector, so the image
//! has to get to long mode itself — at CPL0, which the PVM backend of pinvmm's development
//! host emulates (~1 µs per instruction; real mode too, measured: 0.6–1.2 µs per instruction).
//! So the CPL0 part is as short as it can be: a few dozen instructions, plus one page
//! directory entry per 2 MiB of RAM (written in a 4-instruction loop). Then, at CPL3 (native):
//!
//! 1. `A` on COM1 (the first instruction after the reset jump: "first guest instruction");
//! 2. page tables (identity map with 2 MiB pages, U bit everywhere), GDT, protected mode,
//!    long mode, `iretq` to CPL3 with IOPL=3;
//! 3. `B`, then one u64 written at the start of every 4 KiB page of
//!    `[data_start, data_end)` (every page's first touch), then `C`;
//! 4. every page read back: `D` when all are right, `F` otherwise;
//! 5. `T`, then three TSC intervals as 16 hex digits each: `A` to `B` (reset to CPL3), `B` to
//!    `C` (the first touch) and the optional real-mode loop right after `A` (`real_mode_loops`
//!    turns of `dec ecx; jnz`: how fast real-mode code runs), then a newline;
//! 6. a write of the error count to QEMU's `isa-debug-exit` port: QEMU exits with status
//!    `(errors << 1) | 1`, so 1 means success.
//!
//! The host reads COM1 through a pipe and timestamps each byte (launch), and converts the TSC
//! intervals with its own TSC rate (the first touch: a reader woken late on a busy host would
//! move a byte's timestamp, not the guest's TSC). The image is x86 code: other
//! builds carry only the constants, and [`image`] tells them so.

#[cfg(target_arch = "x86_64")]
use std::arch::global_asm;

/// COM1 bytes the image writes, in order.
pub const MARK_FIRST: u8 = b'A';
pub const MARK_USER: u8 = b'B';
pub const MARK_WRITTEN: u8 = b'C';
pub const MARK_OK: u8 = b'D';
pub const MARK_BAD: u8 = b'F';
/// Followed by the three TSC intervals (16 hex digits each) and `\n`.
pub const MARK_TSC: u8 = b'T';

/// QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=1`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// QEMU's exit status when every page read back right.
pub const EXIT_OK: i32 = 1;

/// The image size (QEMU wants a multiple of 64 KiB; this one is mapped at 0xF0000 and just
/// below 4 GiB).
pub const ROM_SIZE: usize = 64 << 10;
/// Largest guest RAM the identity map covers (one page directory).
pub const MAX_RAM: u64 = 1 << 30;
/// Where the parameters sit in the image (read at CPL0 through CS, at CPL3 at 0xF0000 + it).
const PARAMS: usize = 0xffd0;
/// The reset vector: the CPU's first instruction, 16 bytes below the end.
const RESET: usize = 0xfff0;

#[cfg(target_arch = "x86_64")]
global_asm!(
    ".pushsection .rodata.pinvmm_qemu_rom,\"a\"",
    ".code16",
    ".global pinvmm_qemu_rom_start",
    "pinvmm_qemu_rom_start:",
    "    mov dx, 0x3f8", // MARK A: first guest instruction
    "    mov al, 0x41",
    "    out dx, al",
    "    rdtsc", // TSC at A, kept at 0x500 for CPL3
    "    xor bx, bx",
    "    mov es, bx",
    "    mov dword ptr es:[0x500], eax",
    "    mov dword ptr es:[0x504], edx",
    // Optional real-mode timing loop (`dec ecx; jnz`, 2 instructions per turn), timed by TSC.
    "    mov ecx, dword ptr cs:[0xffe4]",
    "    test ecx, ecx",
    "    jz pinvmm_qemu_rom_no_loop",
    "pinvmm_qemu_rom_loop:",
    "    dec ecx",
    "    jnz pinvmm_qemu_rom_loop",
    "pinvmm_qemu_rom_no_loop:",
    "    rdtsc", // TSC after the loop, at 0x508
    "    mov dword ptr es:[0x508], eax",
    "    mov dword ptr es:[0x50c], edx",
    "    cli",
    "    cld",
    // Page tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD): zeroed by one instruction.
    "    mov di, 0x1000",
    "    mov cx, 3072",
    "    xor eax, eax",
    "    rep stosd",
    "    mov dword ptr es:[0x1000], 0x2007", // P | RW | US
    "    mov dword ptr es:[0x2000], 0x3007",
    "    mov cx, word ptr cs:[0xffe0]", // PD entries: one per 2 MiB of RAM
    "    mov di, 0x3000",
    "    mov eax, 0x87", // P | RW | US | PS
    "2:",
    "    mov dword ptr es:[di], eax",
    "    add eax, 0x200000",
    "    add di, 8",
    "    loop 2b",
    // Protected mode (a real-mode -> long-mode jump in one step triple-faults on PVM).
    "    mov ax, cs",
    "    mov ds, ax",
    // lgdt ds:[gdtr offset], encoded by hand: LLVM takes no label difference in an operand.
    "    .byte 0x0f, 0x01, 0x16",
    "    .word pinvmm_qemu_rom_gdtr - pinvmm_qemu_rom_start",
    "    mov eax, cr0",
    "    or eax, 1",
    "    mov cr0, eax",
    "    .byte 0x66, 0xea", // ljmp 0x18:pm32 (32-bit offset)
    "    .long 0xf0000 + (3f - pinvmm_qemu_rom_start)",
    "    .word 0x18",
    ".code32",
    "3:",
    "    mov eax, cr4",
    "    or eax, 0x20", // PAE
    "    mov cr4, eax",
    "    mov eax, 0x1000",
    "    mov cr3, eax",
    "    mov ecx, 0xc0000080", // EFER.LME
    "    rdmsr",
    "    or eax, 0x100",
    "    wrmsr",
    "    mov eax, cr0",
    "    or eax, 0x80000000", // PG
    "    mov cr0, eax",
    "    .byte 0xea", // ljmp 0x08:lm64
    "    .long 0xf0000 + (4f - pinvmm_qemu_rom_start)",
    "    .word 0x08",
    ".code64",
    "4:",
    "    mov ax, 0x10",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    mov rsp, 0x9000",
    "    push 0x2b",           // SS: user data, RPL 3
    "    push 0x8000",         // RSP
    "    push 0x3002",         // RFLAGS: IOPL=3, interrupts off
    "    push 0x23",           // CS: user code, RPL 3
    "    lea rax, [rip + 5f]", // the image runs at its 0xF0000 alias, identity-mapped
    "    push rax",
    "    iretq",
    "5:",                // CPL3 from here on: native speed on PVM
    "    mov dx, 0x3f8", // MARK B: at CPL3
    "    mov al, 0x42",
    "    out dx, al",
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov r12, rax", // TSC at B
    "    mov rsi, 0xf0000 + 0xffd0",
    "    mov rdi, [rsi]",     // data_start
    "    mov rcx, [rsi + 8]", // data_end
    "    mov rbx, rdi",
    "6:",
    "    mov [rdi], rdi",
    "    add rdi, 4096",
    "    cmp rdi, rcx",
    "    jb 6b",
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov r13, rax", // TSC at C
    "    mov dx, 0x3f8",
    "    mov al, 0x43", // MARK C: every page touched once
    "    out dx, al",
    "    xor r8, r8",
    "    mov rdi, rbx",
    "7:",
    "    cmp [rdi], rdi",
    "    je 8f",
    "    inc r8",
    "8:",
    "    add rdi, 4096",
    "    cmp rdi, rcx",
    "    jb 7b",
    "    mov al, 0x44", // MARK D (ok) or F (errors)
    "    test r8, r8",
    "    jz 9f",
    "    mov al, 0x46",
    "9:",
    "    out dx, al",
    "    mov al, 0x54", // T, A..B, B..C and A..end of the real-mode loop in TSC ticks, newline
    "    out dx, al",
    "    mov rax, r12",
    "    sub rax, qword ptr [0x500]",
    "    call pinvmm_qemu_rom_hex64",
    "    mov rax, r13",
    "    sub rax, r12",
    "    call pinvmm_qemu_rom_hex64",
    "    mov rax, qword ptr [0x508]",
    "    sub rax, qword ptr [0x500]",
    "    call pinvmm_qemu_rom_hex64",
    "    mov al, 0x0a",
    "    out dx, al",
    "    mov dx, 0xf4", // isa-debug-exit: QEMU exits with (errors << 1) | 1
    "    mov eax, r8d",
    "    out dx, al",
    "pinvmm_qemu_rom_stuck:",
    "    jmp pinvmm_qemu_rom_stuck",
    // rax as 16 hex digits to port dx; clobbers rcx, r9, r10.
    "pinvmm_qemu_rom_hex64:",
    "    mov ecx, 16",
    "    lea r10, [rip + pinvmm_qemu_rom_digits]",
    "pinvmm_qemu_rom_hex_digit:",
    "    rol rax, 4",
    "    mov r9, rax",
    "    and r9, 0xf",
    "    push rax",
    "    mov al, byte ptr [r10 + r9]",
    "    out dx, al",
    "    pop rax",
    "    loop pinvmm_qemu_rom_hex_digit",
    "    ret",
    "pinvmm_qemu_rom_digits:",
    "    .ascii \"0123456789abcdef\"",
    ".balign 8",
    "pinvmm_qemu_rom_gdt:",
    "    .quad 0",
    "    .quad 0x00af9a000000ffff", // 0x08 kernel code, 64-bit
    "    .quad 0x00cf92000000ffff", // 0x10 kernel data
    "    .quad 0x00cf9a000000ffff", // 0x18 kernel code, 32-bit
    "    .quad 0x00affa000000ffff", // 0x20 user code, 64-bit
    "    .quad 0x00cff2000000ffff", // 0x28 user data
    "pinvmm_qemu_rom_gdtr:",
    "    .word 6 * 8 - 1",
    "    .long 0xf0000 + (pinvmm_qemu_rom_gdt - pinvmm_qemu_rom_start)",
    ".global pinvmm_qemu_rom_end",
    "pinvmm_qemu_rom_end:",
    ".code64",
    ".popsection",
);

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    static pinvmm_qemu_rom_start: u8;
    static pinvmm_qemu_rom_end: u8;
}

/// Bad parameters for the image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RomError {
    #[error(
        "the QEMU image needs 4 KiB-aligned data_start < data_end <= {MAX_RAM:#x}, got {start:#x}..{end:#x}"
    )]
    Range { start: u64, end: u64 },
    #[error("the QEMU image is x86_64 code; this build is for {0}")]
    Arch(&'static str),
}

#[cfg(target_arch = "x86_64")]
fn code() -> Result<&'static [u8], RomError> {
    Ok(crate::bytes(
        &raw const pinvmm_qemu_rom_start,
        &raw const pinvmm_qemu_rom_end,
    ))
}

#[cfg(not(target_arch = "x86_64"))]
fn code() -> Result<&'static [u8], RomError> {
    Err(RomError::Arch(std::env::consts::ARCH))
}

/// The 64 KiB image that touches every page of `[data_start, data_end)` (guest-physical;
/// RAM must cover it), after `real_mode_loops` turns of a 2-instruction loop in real mode.
pub fn image(data_start: u64, data_end: u64, real_mode_loops: u32) -> Result<Vec<u8>, RomError> {
    if data_start >= data_end
        || data_end > MAX_RAM
        || !data_start.is_multiple_of(4096)
        || !data_end.is_multiple_of(4096)
        || data_start < 0x10_0000
    {
        return Err(RomError::Range {
            start: data_start,
            end: data_end,
        });
    }
    let code = code()?;
    assert!(
        code.len() < PARAMS,
        "QEMU image code overlaps its parameters"
    );
    let mut rom = vec![0u8; ROM_SIZE];
    rom[..code.len()].copy_from_slice(code);
    let pd_entries = data_end.div_ceil(2 << 20) as u32;
    rom[PARAMS..PARAMS + 8].copy_from_slice(&data_start.to_le_bytes());
    rom[PARAMS + 8..PARAMS + 16].copy_from_slice(&data_end.to_le_bytes());
    rom[PARAMS + 16..PARAMS + 20].copy_from_slice(&pd_entries.to_le_bytes());
    rom[PARAMS + 20..PARAMS + 24].copy_from_slice(&real_mode_loops.to_le_bytes());
    // jmp rel16 from the reset vector to offset 0 of the same 64 KiB segment.
    let rel = 0u16.wrapping_sub((RESET + 3) as u16);
    rom[RESET] = 0xe9;
    rom[RESET + 1..RESET + 3].copy_from_slice(&rel.to_le_bytes());
    Ok(rom)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_laid_out_for_the_reset_vector() {
        let rom = image(1 << 20, 32 << 20, 7).unwrap();
        assert_eq!(rom.len(), ROM_SIZE);
        // mov dx, 0x3f8 first; the reset jump lands on it (0xfff3 + 0x000d wraps to 0).
        assert_eq!(&rom[..3], &[0xba, 0xf8, 0x03]);
        assert_eq!(&rom[RESET..RESET + 3], &[0xe9, 0x0d, 0x00]);
        assert_eq!(
            u64::from_le_bytes(rom[PARAMS..PARAMS + 8].try_into().unwrap()),
            1 << 20
        );
        assert_eq!(
            u32::from_le_bytes(rom[PARAMS + 16..PARAMS + 20].try_into().unwrap()),
            16
        );
        assert_eq!(
            u32::from_le_bytes(rom[PARAMS + 20..PARAMS + 24].try_into().unwrap()),
            7
        );
        assert!(image(1 << 20, 1 << 20, 0).is_err());
        assert!(image(1 << 20, (1 << 30) + 4096, 0).is_err());
        assert!(image(0, 4 << 20, 0).is_err());
    }
}
