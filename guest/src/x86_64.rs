// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! x86_64 payloads. They run in 64-bit long mode at CPL3 with IOPL=3 (see vmm's arch/x86_64 for
//! why: on this host's KVM backend, CPL0 guest code is emulated, CPL3 runs natively), so they
//! report with `out` and never use `hlt`.
//!
//! Registers on entry: rsi = start, r9 = pages, r10 = stride, r11 = passes, r12 = seed,
//! r13 = test device port base, r14 = serial data port.

use std::arch::global_asm;

use crate::{Payload, bytes};

global_asm!(
    ".pushsection .rodata.pinvmm_guest,\"a\"",
    // ---- memtouch ----
    ".global pinvmm_x86_memtouch_start",
    "pinvmm_x86_memtouch_start:",
    "    lea rdx, [r13 + 0x10]", // MARK 1: started
    "    mov eax, 1",
    "    out dx, eax",
    "    xor rbx, rbx", // checksum
    "    xor r8, r8",   // errors
    "    test r9, r9",
    "    jz pinvmm_x86_mt_report",
    "    test r11, r11",
    "    jz pinvmm_x86_mt_report",
    "    mov r15, r11", // passes left; the last pass writes (addr ^ seed) + 1
    "pinvmm_x86_mt_pass:",
    "    mov rdi, rsi",
    "    mov rcx, r9",
    "pinvmm_x86_mt_write:",
    "    mov rax, rdi",
    "    xor rax, r12",
    "    add rax, r15",
    "    mov [rdi], rax",
    "    add rdi, r10",
    "    dec rcx",
    "    jnz pinvmm_x86_mt_write",
    "    dec r15",
    "    jnz pinvmm_x86_mt_pass",
    "    lea rdx, [r13 + 0x10]", // MARK 2: written
    "    mov eax, 2",
    "    out dx, eax",
    "    mov rdi, rsi",
    "    mov rcx, r9",
    "pinvmm_x86_mt_read:",
    "    mov rax, [rdi]",
    "    add rbx, rax",
    "    mov r15, rdi",
    "    xor r15, r12",
    "    inc r15",
    "    cmp rax, r15",
    "    je pinvmm_x86_mt_ok",
    "    inc r8",
    "pinvmm_x86_mt_ok:",
    "    add rdi, r10",
    "    dec rcx",
    "    jnz pinvmm_x86_mt_read",
    "pinvmm_x86_mt_report:",
    "    mov rdx, r13", // RESULT_LO
    "    mov eax, ebx",
    "    out dx, eax",
    "    lea rdx, [r13 + 4]", // RESULT_HI
    "    mov rax, rbx",
    "    shr rax, 32",
    "    out dx, eax",
    "    lea rdx, [r13 + 8]", // ERRORS
    "    mov eax, r8d",
    "    out dx, eax",
    "    lea rdx, [r13 + 0xc]", // EXIT: 0 when no page was wrong
    "    xor eax, eax",
    "    test r8, r8",
    "    setnz al",
    "    out dx, eax",
    "pinvmm_x86_mt_stuck:",
    "    jmp pinvmm_x86_mt_stuck",
    ".global pinvmm_x86_memtouch_end",
    "pinvmm_x86_memtouch_end:",
    // ---- hello ----
    ".global pinvmm_x86_hello_start",
    "pinvmm_x86_hello_start:",
    "    lea rsi, [rip + pinvmm_x86_hello_msg]",
    "    mov rdx, r14",
    "pinvmm_x86_hello_loop:",
    "    mov al, [rsi]",
    "    test al, al",
    "    jz pinvmm_x86_hello_done",
    "    out dx, al",
    "    inc rsi",
    "    jmp pinvmm_x86_hello_loop",
    "pinvmm_x86_hello_done:",
    "    lea rdx, [r13 + 0xc]",
    "    xor eax, eax",
    "    out dx, eax",
    "pinvmm_x86_hello_stuck:",
    "    jmp pinvmm_x86_hello_stuck",
    "pinvmm_x86_hello_msg:",
    ".asciz \"Hello from the pinvmm guest!\\n\"",
    ".global pinvmm_x86_hello_end",
    "pinvmm_x86_hello_end:",
    // ---- spin ----
    ".global pinvmm_x86_spin_start",
    "pinvmm_x86_spin_start:",
    "    jmp pinvmm_x86_spin_start",
    ".global pinvmm_x86_spin_end",
    "pinvmm_x86_spin_end:",
    // ---- crash ----
    ".global pinvmm_x86_crash_start",
    "pinvmm_x86_crash_start:",
    "    ud2",
    ".global pinvmm_x86_crash_end",
    "pinvmm_x86_crash_end:",
    ".popsection",
);

unsafe extern "C" {
    static pinvmm_x86_memtouch_start: u8;
    static pinvmm_x86_memtouch_end: u8;
    static pinvmm_x86_hello_start: u8;
    static pinvmm_x86_hello_end: u8;
    static pinvmm_x86_spin_start: u8;
    static pinvmm_x86_spin_end: u8;
    static pinvmm_x86_crash_start: u8;
    static pinvmm_x86_crash_end: u8;
}

pub(crate) fn code(p: Payload) -> &'static [u8] {
    match p {
        Payload::Memtouch => bytes(
            &raw const pinvmm_x86_memtouch_start,
            &raw const pinvmm_x86_memtouch_end,
        ),
        Payload::Hello => bytes(
            &raw const pinvmm_x86_hello_start,
            &raw const pinvmm_x86_hello_end,
        ),
        Payload::Spin => bytes(
            &raw const pinvmm_x86_spin_start,
            &raw const pinvmm_x86_spin_end,
        ),
        Payload::Crash => bytes(
            &raw const pinvmm_x86_crash_start,
            &raw const pinvmm_x86_crash_end,
        ),
    }
}
