// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! x86_64 payloads. They run in 64-bit long mode at CPL3 with IOPL=3 (see vmm's arch/x86_64 for
//! why: on this host's KVM backend, CPL0 guest code is emulated, CPL3 runs natively), so they
//! report with `out` and never use `hlt`.
//!
//! Registers on entry: rsi = start, r9 = pages, r10 = stride, r11 = passes, r12 = seed,
//! r13 = test device port base, r14 = serial data port, r15 = first GPA past RAM, rbp = a GPA far
//! from RAM that the page tables map but nothing backs (0: none).

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
    // ---- oob: reads and writes outside RAM (just past its end, and far away) ----
    // Each is an MMIO exit to an unmapped address: the VMM must drop the writes and return
    // all ones for the reads. RESULT = the AND of every value read; EXIT 0 if it is all ones.
    ".global pinvmm_x86_oob_start",
    "pinvmm_x86_oob_start:",
    "    mov rbx, -1",
    "    mov qword ptr [r15], 0", // just past RAM: dropped...
    "    mov rax, [r15]",         // ...so this reads all ones, not 0
    "    and rbx, rax",
    "    mov rax, [r15 + 0xff8]",
    "    and rbx, rax",
    "    test rbp, rbp",
    "    jz pinvmm_x86_oob_report",
    "    mov qword ptr [rbp], 0", // far away
    "    mov rax, [rbp]",
    "    and rbx, rax",
    "pinvmm_x86_oob_report:",
    "    mov rdx, r13", // RESULT_LO
    "    mov eax, ebx",
    "    out dx, eax",
    "    lea rdx, [r13 + 4]", // RESULT_HI
    "    mov rax, rbx",
    "    shr rax, 32",
    "    out dx, eax",
    "    lea rdx, [r13 + 0xc]", // EXIT
    "    xor eax, eax",
    "    cmp rbx, -1",
    "    setne al",
    "    out dx, eax",
    "pinvmm_x86_oob_stuck:",
    "    jmp pinvmm_x86_oob_stuck",
    ".global pinvmm_x86_oob_end",
    "pinvmm_x86_oob_end:",
    // ---- garbage: every device register, every width, unmapped ports and MMIO ----
    ".global pinvmm_x86_garbage_start",
    "pinvmm_x86_garbage_start:",
    // 1. The UART's 8 registers: patterns 0x00, 0xff, 0xa5 (xor the offset), widths 1/2/4,
    //    and reads (DLAB, FIFO control, scratch, loopback all get hit).
    "    mov r8d, 0xa5ff00",
    "    mov r10d, 3",
    "pinvmm_x86_gb_pat:",
    "    xor ecx, ecx",
    "pinvmm_x86_gb_ser:",
    "    lea rdx, [r14 + rcx]",
    "    mov eax, r8d",
    "    xor al, cl",
    "    out dx, al",
    "    out dx, ax",
    "    out dx, eax",
    "    in al, dx",
    "    in ax, dx",
    "    in eax, dx",
    "    inc ecx",
    "    cmp ecx, 8",
    "    jb pinvmm_x86_gb_ser",
    "    shr r8d, 8",
    "    dec r10d",
    "    jnz pinvmm_x86_gb_pat",
    // 2. Loopback flood: 8N1, MCR loopback, 256 bytes into the 64-byte receive FIFO.
    "    lea rdx, [r14 + 3]",
    "    mov al, 3",
    "    out dx, al",
    "    lea rdx, [r14 + 4]",
    "    mov al, 0x10",
    "    out dx, al",
    "    mov rdx, r14",
    "    mov ecx, 256",
    "pinvmm_x86_gb_loop:",
    "    mov al, cl",
    "    out dx, al",
    "    dec ecx",
    "    jnz pinvmm_x86_gb_loop",
    "    lea rdx, [r14 + 4]",
    "    xor eax, eax",
    "    out dx, al",
    // 3. The test device: every offset of its window and past it, but EXIT (that ends the
    //    run: its job), widths 1/2/4, and reads.
    "    xor ecx, ecx",
    "pinvmm_x86_gb_td:",
    "    cmp ecx, 0xc",
    "    je pinvmm_x86_gb_td_next",
    "    lea rdx, [r13 + rcx]",
    "    mov eax, 0xdeadbeef",
    "    out dx, al",
    "    out dx, ax",
    "    out dx, eax",
    "    in al, dx",
    "    in eax, dx",
    "pinvmm_x86_gb_td_next:",
    "    inc ecx",
    "    cmp ecx, 0x28",
    "    jb pinvmm_x86_gb_td",
    "    lea rdx, [r13 + 0x10]", // MARK, far more often than the device keeps
    "    mov ecx, 100",
    "pinvmm_x86_gb_mark:",
    "    mov eax, ecx",
    "    out dx, eax",
    "    dec ecx",
    "    jnz pinvmm_x86_gb_mark",
    // 4. Ports nothing answers: POST code, a random one, the top of the port space.
    "    mov edx, 0x80",
    "    call pinvmm_x86_gb_port",
    "    mov edx, 0x1234",
    "    call pinvmm_x86_gb_port",
    "    mov edx, 0xfffc",
    "    call pinvmm_x86_gb_port",
    // 5. MMIO nothing answers: past RAM, far away.
    "    mov qword ptr [r15], -1",
    "    mov rax, [r15]",
    "    test rbp, rbp",
    "    jz pinvmm_x86_gb_done",
    "    mov dword ptr [rbp], 0x12345678",
    "    mov eax, [rbp]",
    // 6. The device still works: clear ERRORS (garbage went there), report MAGIC as the
    //    result, EXIT 0 if it reads back right.
    "pinvmm_x86_gb_done:",
    "    lea rdx, [r13 + 8]",
    "    xor eax, eax",
    "    out dx, eax",
    "    mov rdx, r13",
    "    in eax, dx",
    "    mov ebx, eax",
    "    out dx, eax", // RESULT_LO = MAGIC
    "    lea rdx, [r13 + 4]",
    "    xor eax, eax",
    "    out dx, eax", // RESULT_HI = 0
    "    lea rdx, [r13 + 0xc]",
    "    xor eax, eax",
    "    cmp ebx, 0x564e4950", // "PINV"
    "    setne al",
    "    out dx, eax",
    "pinvmm_x86_gb_stuck:",
    "    jmp pinvmm_x86_gb_stuck",
    "pinvmm_x86_gb_port:", // every width out and in at port dx
    "    mov eax, 0xa5a5a5a5",
    "    out dx, al",
    "    out dx, ax",
    "    out dx, eax",
    "    in al, dx",
    "    in ax, dx",
    "    in eax, dx",
    "    ret",
    ".global pinvmm_x86_garbage_end",
    "pinvmm_x86_garbage_end:",
    // ---- flood: 256 KiB on the serial port (lines of 63 characters), then EXIT 0 ----
    ".global pinvmm_x86_flood_start",
    "pinvmm_x86_flood_start:",
    "    mov rdx, r14",
    "    mov ecx, 0x40000", // FLOOD_BYTES
    "    xor ebx, ebx",
    "pinvmm_x86_fl_loop:",
    "    mov eax, ebx",
    "    and eax, 0x3f",
    "    add eax, 0x30",
    "    cmp eax, 0x6f",
    "    jne pinvmm_x86_fl_out",
    "    mov eax, 0x0a",
    "pinvmm_x86_fl_out:",
    "    out dx, al",
    "    inc ebx",
    "    dec ecx",
    "    jnz pinvmm_x86_fl_loop",
    "    lea rdx, [r13 + 0xc]",
    "    xor eax, eax",
    "    out dx, eax",
    "pinvmm_x86_fl_stuck:",
    "    jmp pinvmm_x86_fl_stuck",
    ".global pinvmm_x86_flood_end",
    "pinvmm_x86_flood_end:",
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
    static pinvmm_x86_oob_start: u8;
    static pinvmm_x86_oob_end: u8;
    static pinvmm_x86_garbage_start: u8;
    static pinvmm_x86_garbage_end: u8;
    static pinvmm_x86_flood_start: u8;
    static pinvmm_x86_flood_end: u8;
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
        Payload::Oob => bytes(
            &raw const pinvmm_x86_oob_start,
            &raw const pinvmm_x86_oob_end,
        ),
        Payload::Garbage => bytes(
            &raw const pinvmm_x86_garbage_start,
            &raw const pinvmm_x86_garbage_end,
        ),
        Payload::Flood => bytes(
            &raw const pinvmm_x86_flood_start,
            &raw const pinvmm_x86_flood_end,
        ),
    }
}
