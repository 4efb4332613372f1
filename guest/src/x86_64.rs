// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! x86_64 payloads. They run in 64-bit long mode at CPL3 with IOPL=3 (see vmm's arch/x86_64 for
//! why: on this host's KVM backend, CPL0 guest code is emulated, CPL3 runs natively), so they
//! report with `out` and never use `hlt`.
//!
//! Registers on entry: rsi = start, r9 = pages, r10 = stride, r11 = passes, r12 = seed,
//! r13 = test device port base, r14 = serial data port, r15 = first GPA past RAM, rbp = a GPA far
//! from RAM that the page tables map but nothing backs (0: none), rdi = the vCPU's number.
//! (memtouch uses rdi as scratch: it never reads it before writing it.)
//!
//! Exceptions: the VMM points an IDT at the [`vectors`] stubs, each an interrupt gate to the
//! payload's own DPL3 code segment with IST1, so the handler runs at CPL3 too (natively on
//! PVM, no privilege change) on a stack of its own (the TSS's IST1: a bad RSP cannot make it
//! double-fault). It writes the error code, the RIP and the vector to the test device.

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
    "    test rdi, rdi", // only vCPU 0 prints: the line never interleaves
    "    jnz pinvmm_x86_hello_done",
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
    "    test rdi, rdi", // only vCPU 0 floods
    "    jnz pinvmm_x86_fl_done",
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
    "pinvmm_x86_fl_done:",
    "    lea rdx, [r13 + 0xc]",
    "    xor eax, eax",
    "    out dx, eax",
    "pinvmm_x86_fl_stuck:",
    "    jmp pinvmm_x86_fl_stuck",
    ".global pinvmm_x86_flood_end",
    "pinvmm_x86_flood_end:",
    // ---- exception vectors: 8 bytes for the test device's port, then one 16-byte stub per
    //      vector 0-31 (push a 0 error code where the CPU pushes none, push the vector), then
    //      the common handler. Frame: [rsp] vector, +8 error code, +16 RIP, +24 CS, ...
    ".balign 16",
    ".global pinvmm_x86_vectors_start",
    "pinvmm_x86_vectors_start:",
    "pinvmm_x86_vec_port:",
    "    .quad 0",
    ".balign 16",
    ".global pinvmm_x86_vec_stubs",
    "pinvmm_x86_vec_stubs:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".balign 16",
    ".if (\\v == 8) || ((\\v >= 10) && (\\v <= 14)) || (\\v == 17) || (\\v == 21) || (\\v == 29) || (\\v == 30)",
    "    push \\v",
    ".else",
    "    push 0",
    "    push \\v",
    ".endif",
    "    jmp pinvmm_x86_vec_common",
    ".endr",
    ".balign 16",
    "pinvmm_x86_vec_common:",
    "    mov rdx, [rip + pinvmm_x86_vec_port]",
    "    add edx, 0x20", // EXC_SYNDROME: the error code
    "    mov rbx, [rsp + 8]",
    "    mov eax, ebx",
    "    out dx, eax",
    "    add edx, 4",
    "    mov rax, rbx",
    "    shr rax, 32",
    "    out dx, eax",
    "    add edx, 4", // EXC_PC: the RIP
    "    mov rbx, [rsp + 16]",
    "    mov eax, ebx",
    "    out dx, eax",
    "    add edx, 4",
    "    mov rax, rbx",
    "    shr rax, 32",
    "    out dx, eax",
    "    add edx, 12", // EXCEPTION: the vector; ends the vCPU's run
    "    mov rax, [rsp]",
    "    out dx, eax",
    "pinvmm_x86_vec_stuck:",
    "    jmp pinvmm_x86_vec_stuck",
    ".global pinvmm_x86_vectors_end",
    "pinvmm_x86_vectors_end:",
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
    static pinvmm_x86_vectors_start: u8;
    static pinvmm_x86_vec_stubs: u8;
    static pinvmm_x86_vectors_end: u8;
}

pub(crate) fn vectors() -> crate::Vectors {
    let start = &raw const pinvmm_x86_vectors_start;
    crate::Vectors {
        code: bytes(start, &raw const pinvmm_x86_vectors_end),
        entry: &raw const pinvmm_x86_vec_stubs as usize - start as usize,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{VECTOR_STUB_SIZE, X86_VECTORS};

    /// Every stub starts with `push imm8` (0x6a): the vector (error-code exceptions) or the 0
    /// error code, 16 bytes apart; the port slot comes first.
    #[test]
    fn vector_stubs_are_evenly_spaced_pushes() {
        let v = vectors();
        assert_eq!(v.entry % VECTOR_STUB_SIZE, 0);
        assert_eq!(&v.code[..8], &[0; 8]);
        for n in 0..X86_VECTORS {
            let stub = &v.code[v.entry + n * VECTOR_STUB_SIZE..];
            assert_eq!(stub[0], 0x6a, "vector {n}");
            let has_code = matches!(n, 8 | 10..=14 | 17 | 21 | 29 | 30);
            // push <vector> first for error-code vectors, push 0 then push <vector> otherwise.
            if has_code {
                assert_eq!(stub[1] as usize, n, "vector {n}");
            } else {
                assert_eq!(
                    (stub[1], stub[2], stub[3] as usize),
                    (0, 0x6a, n),
                    "vector {n}"
                );
            }
        }
    }

    #[test]
    fn hello_and_flood_print_on_vcpu_0_only() {
        // test rdi, rdi (48 85 ff) first: the other vCPUs skip to the exit.
        for p in [Payload::Hello, Payload::Flood] {
            assert_eq!(&code(p)[..3], &[0x48, 0x85, 0xff], "{}", p.name());
        }
    }
}
