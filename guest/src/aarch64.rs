// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! aarch64 payloads. They run at EL1h with the MMU off and DAIF masked (see vmm's arch/aarch64),
//! so every data access is a Device access: RAM and MMIO both work as long as accesses are
//! aligned. They report by storing to the MMIO test device and never use `wfi`.
//!
//! Registers on entry: x0 = start, x1 = pages, x2 = stride, x3 = passes, x4 = seed,
//! x5 = test device base (MMIO), x6 = serial data register (MMIO, byte wide), x7 = first GPA
//! past RAM, x8 = a GPA far from RAM that nothing backs (0: none), x9 = the vCPU's number.
//! (memtouch and hello use x7 and x8, memtouch and garbage x9 and up, as scratch: they never
//! read them before writing them.)
//!
//! Exceptions: the vCPU starts in the [`vectors`] boot stub, which points VBAR_EL1 at the vector
//! table and TPIDR_EL1 at the test device (x5) and branches to the payload (x10). An exception
//! then lands in the table, whose handler writes ESR_EL1, ELR_EL1, FAR_EL1 and the entry's
//! number to the test device (arm64 KVM does not exit on a guest exception: without a table
//! the vCPU would loop through an unset VBAR until the VMM's timeout).
//!
//! Every MMIO access is a single `str`/`strb` with an immediate offset and no writeback, so the
//! data abort carries a valid syndrome (ISV=1) and KVM can hand it to the VMM as an MMIO exit.
//! Post-indexed loads (`ldrb w8, [x7], #1`) are only used on RAM.

use std::arch::global_asm;

use crate::{Payload, bytes};

global_asm!(
    ".pushsection .rodata.pinvmm_guest,\"a\"",
    // ---- memtouch ----
    ".balign 4",
    ".global pinvmm_a64_memtouch_start",
    "pinvmm_a64_memtouch_start:",
    "    mov x7, #1",
    "    str w7, [x5, #0x10]", // MARK 1: started
    "    mov x8, xzr",         // checksum
    "    mov x9, xzr",         // errors
    "    cbz x1, pinvmm_a64_mt_report",
    "    cbz x3, pinvmm_a64_mt_report",
    "    mov x10, x3", // passes left; the last pass writes (addr ^ seed) + 1
    "pinvmm_a64_mt_pass:",
    "    mov x11, x0",
    "    mov x12, x1",
    "pinvmm_a64_mt_write:",
    "    eor x13, x11, x4",
    "    add x13, x13, x10",
    "    str x13, [x11]",
    "    add x11, x11, x2",
    "    subs x12, x12, #1",
    "    b.ne pinvmm_a64_mt_write",
    "    subs x10, x10, #1",
    "    b.ne pinvmm_a64_mt_pass",
    "    mov x7, #2",
    "    str w7, [x5, #0x10]", // MARK 2: written
    "    mov x11, x0",
    "    mov x12, x1",
    "pinvmm_a64_mt_read:",
    "    ldr x13, [x11]",
    "    add x8, x8, x13",
    "    eor x14, x11, x4",
    "    add x14, x14, #1",
    "    cmp x13, x14",
    "    cinc x9, x9, ne",
    "    add x11, x11, x2",
    "    subs x12, x12, #1",
    "    b.ne pinvmm_a64_mt_read",
    "pinvmm_a64_mt_report:",
    "    str x8, [x5, #0x18]", // RESULT: the whole checksum in one 64-bit store
    "    str x9, [x5, #0x08]", // ERRORS
    "    cmp x9, #0",
    "    cset w7, ne",
    "    str w7, [x5, #0x0c]", // EXIT: 0 when no page was wrong
    "pinvmm_a64_mt_stuck:",
    "    b pinvmm_a64_mt_stuck",
    ".global pinvmm_a64_memtouch_end",
    "pinvmm_a64_memtouch_end:",
    // ---- hello ----
    ".balign 4",
    ".global pinvmm_a64_hello_start",
    "pinvmm_a64_hello_start:",
    "    cbnz x9, pinvmm_a64_hello_done", // only vCPU 0 prints: the line never interleaves
    "    adr x7, pinvmm_a64_hello_msg",
    "pinvmm_a64_hello_loop:",
    "    ldrb w8, [x7], #1", // RAM: post-index is fine here
    "    cbz w8, pinvmm_a64_hello_done",
    "    strb w8, [x6]", // serial THR
    "    b pinvmm_a64_hello_loop",
    "pinvmm_a64_hello_done:",
    "    mov w7, #0",
    "    str w7, [x5, #0x0c]", // EXIT 0
    "pinvmm_a64_hello_stuck:",
    "    b pinvmm_a64_hello_stuck",
    "pinvmm_a64_hello_msg:",
    ".asciz \"Hello from the pinvmm guest!\\n\"",
    ".global pinvmm_a64_hello_end",
    "pinvmm_a64_hello_end:",
    // ---- spin ----
    ".balign 4",
    ".global pinvmm_a64_spin_start",
    "pinvmm_a64_spin_start:",
    "    b pinvmm_a64_spin_start",
    ".global pinvmm_a64_spin_end",
    "pinvmm_a64_spin_end:",
    // ---- crash ----
    // The undefined instruction traps to the vector table the boot stub installed (EC 0).
    ".balign 4",
    ".global pinvmm_a64_crash_start",
    "pinvmm_a64_crash_start:",
    "    udf #0",
    "    b pinvmm_a64_crash_start",
    ".global pinvmm_a64_crash_end",
    "pinvmm_a64_crash_end:",
    // ---- oob: reads and writes outside RAM (just past its end, and far away) ----
    // MMU off: every access is a stage-2 abort outside any memslot, an MMIO exit (single
    // register, no writeback: ISV=1). RESULT = the AND of every value read; EXIT 0 if all ones.
    ".balign 4",
    ".global pinvmm_a64_oob_start",
    "pinvmm_a64_oob_start:",
    "    mov x9, #-1",
    "    str xzr, [x7]", // just past RAM: dropped...
    "    ldr x10, [x7]", // ...so this reads all ones, not 0
    "    and x9, x9, x10",
    "    ldr x10, [x7, #0xff8]",
    "    and x9, x9, x10",
    "    cbz x8, pinvmm_a64_oob_report",
    "    str xzr, [x8]", // far away
    "    ldr x10, [x8]",
    "    and x9, x9, x10",
    "pinvmm_a64_oob_report:",
    "    str x9, [x5, #0x18]", // RESULT
    "    cmn x9, #1",
    "    cset w10, ne",
    "    str w10, [x5, #0x0c]", // EXIT
    "pinvmm_a64_oob_stuck:",
    "    b pinvmm_a64_oob_stuck",
    ".global pinvmm_a64_oob_end",
    "pinvmm_a64_oob_end:",
    // ---- garbage: every device register, every aligned width, unmapped MMIO ----
    // (Device memory faults on unaligned accesses, so wide accesses only at aligned offsets.)
    ".balign 4",
    ".global pinvmm_a64_garbage_start",
    "pinvmm_a64_garbage_start:",
    // 1. The UART's 8 byte registers: patterns 0x00, 0xff, 0xa5 (xor the offset), reads, and
    //    32-bit accesses at offsets 0 and 4.
    "    movz w12, #0xff00",
    "    movk w12, #0xa5, lsl #16",
    "    mov x11, #3",
    "pinvmm_a64_gb_pat:",
    "    mov x9, #0",
    "pinvmm_a64_gb_ser:",
    "    add x10, x6, x9",
    "    eor w13, w12, w9",
    "    strb w13, [x10]",
    "    ldrb w14, [x10]",
    "    add x9, x9, #1",
    "    cmp x9, #8",
    "    b.lo pinvmm_a64_gb_ser",
    "    str w12, [x6]",
    "    str w12, [x6, #4]",
    "    ldr w14, [x6]",
    "    ldr w14, [x6, #4]",
    "    lsr w12, w12, #8",
    "    subs x11, x11, #1",
    "    b.ne pinvmm_a64_gb_pat",
    // 2. Loopback flood: 8N1, MCR loopback, 256 bytes into the 64-byte receive FIFO.
    "    mov w13, #3",
    "    strb w13, [x6, #3]",
    "    mov w13, #0x10",
    "    strb w13, [x6, #4]",
    "    mov x9, #256",
    "pinvmm_a64_gb_loop:",
    "    strb w9, [x6]",
    "    subs x9, x9, #1",
    "    b.ne pinvmm_a64_gb_loop",
    "    strb wzr, [x6, #4]",
    // 3. The test device: every byte offset of its window and past it but EXIT (0xc, which
    //    ends the run: its job), 32-bit at every 4-aligned one but EXIT, 64-bit at 0x10.
    "    movz w13, #0xbeef",
    "    movk w13, #0xdead, lsl #16",
    "    mov x9, #0",
    "pinvmm_a64_gb_td:",
    "    cmp x9, #0xc",
    "    b.eq pinvmm_a64_gb_td_next",
    "    add x10, x5, x9",
    "    strb w13, [x10]",
    "    ldrb w14, [x10]",
    "    tst x9, #3",
    "    b.ne pinvmm_a64_gb_td_next",
    "    str w13, [x10]",
    "    ldr w14, [x10]",
    "pinvmm_a64_gb_td_next:",
    "    add x9, x9, #1",
    "    cmp x9, #0x28",
    "    b.lo pinvmm_a64_gb_td",
    "    str x13, [x5, #0x10]",
    "    mov x9, #100", // MARK, far more often than the device keeps
    "pinvmm_a64_gb_mark:",
    "    str w9, [x5, #0x10]",
    "    subs x9, x9, #1",
    "    b.ne pinvmm_a64_gb_mark",
    // 4. MMIO nothing answers: past RAM, far away, past the test device's window.
    "    mov x13, #-1",
    "    str x13, [x7]",
    "    ldr x14, [x7]",
    "    cbz x8, pinvmm_a64_gb_near",
    "    str w13, [x8]",
    "    ldr w14, [x8]",
    "pinvmm_a64_gb_near:",
    "    str w13, [x5, #0x800]",
    "    ldr w14, [x5, #0x800]",
    // 5. The device still works: clear ERRORS (garbage went there), report MAGIC as the
    //    result, EXIT 0 if it reads back right.
    "    str xzr, [x5, #0x08]",
    "    ldr w9, [x5]",
    "    str x9, [x5, #0x18]",
    "    movz w10, #0x4950", // "PINV"
    "    movk w10, #0x564e, lsl #16",
    "    cmp w9, w10",
    "    cset w10, ne",
    "    str w10, [x5, #0x0c]",
    "pinvmm_a64_gb_stuck:",
    "    b pinvmm_a64_gb_stuck",
    ".global pinvmm_a64_garbage_end",
    "pinvmm_a64_garbage_end:",
    // ---- flood: 256 KiB on the serial port (lines of 63 characters), then EXIT 0 ----
    ".balign 4",
    ".global pinvmm_a64_flood_start",
    "pinvmm_a64_flood_start:",
    "    cbnz x9, pinvmm_a64_fl_done", // only vCPU 0 floods
    "    mov x9, #0",
    "    movz x11, #0x4, lsl #16", // FLOOD_BYTES
    "    mov w12, #0x0a",
    "pinvmm_a64_fl_loop:",
    "    and x10, x9, #0x3f",
    "    add w13, w10, #0x30",
    "    cmp x10, #0x3f",
    "    csel w13, w12, w13, eq",
    "    strb w13, [x6]",
    "    add x9, x9, #1",
    "    cmp x9, x11",
    "    b.lo pinvmm_a64_fl_loop",
    "pinvmm_a64_fl_done:",
    "    str wzr, [x5, #0x0c]",
    "pinvmm_a64_fl_stuck:",
    "    b pinvmm_a64_fl_stuck",
    ".global pinvmm_a64_flood_end",
    "pinvmm_a64_flood_end:",
    // ---- exception vectors: 16 entries of 0x80 bytes (current EL with SP0, with SPx, lower
    //      EL AArch64, AArch32; each sync, IRQ, FIQ, SError), each `mov x0, #entry` and a branch
    //      to the handler; then the boot stub. MMIO stores: single register, immediate offset.
    ".balign 2048",
    ".global pinvmm_a64_vectors_start",
    "pinvmm_a64_vectors_start:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    ".balign 128",
    "    mov x0, #\\n",
    "    b pinvmm_a64_vec_common",
    ".endr",
    ".balign 128",
    "pinvmm_a64_vec_common:",
    "    mrs x1, esr_el1",
    "    mrs x2, elr_el1",
    "    mrs x3, far_el1",
    "    mrs x4, tpidr_el1",   // the test device (the boot stub put it there)
    "    str x1, [x4, #0x20]", // EXC_SYNDROME
    "    str x2, [x4, #0x28]", // EXC_PC
    "    str x3, [x4, #0x30]", // EXC_ADDR
    "    str w0, [x4, #0x38]", // EXCEPTION: ends the vCPU's run
    "pinvmm_a64_vec_stuck:",
    "    b pinvmm_a64_vec_stuck",
    ".global pinvmm_a64_vec_boot",
    "pinvmm_a64_vec_boot:",
    "    adr x11, pinvmm_a64_vectors_start",
    "    msr vbar_el1, x11",
    "    msr tpidr_el1, x5",
    "    isb",
    "    br x10",
    ".global pinvmm_a64_vectors_end",
    "pinvmm_a64_vectors_end:",
    ".popsection",
);

unsafe extern "C" {
    static pinvmm_a64_memtouch_start: u8;
    static pinvmm_a64_memtouch_end: u8;
    static pinvmm_a64_hello_start: u8;
    static pinvmm_a64_hello_end: u8;
    static pinvmm_a64_spin_start: u8;
    static pinvmm_a64_spin_end: u8;
    static pinvmm_a64_crash_start: u8;
    static pinvmm_a64_crash_end: u8;
    static pinvmm_a64_oob_start: u8;
    static pinvmm_a64_oob_end: u8;
    static pinvmm_a64_garbage_start: u8;
    static pinvmm_a64_garbage_end: u8;
    static pinvmm_a64_flood_start: u8;
    static pinvmm_a64_flood_end: u8;
    static pinvmm_a64_vectors_start: u8;
    static pinvmm_a64_vec_boot: u8;
    static pinvmm_a64_vectors_end: u8;
}

pub(crate) fn vectors() -> crate::Vectors {
    let start = &raw const pinvmm_a64_vectors_start;
    crate::Vectors {
        code: bytes(start, &raw const pinvmm_a64_vectors_end),
        entry: &raw const pinvmm_a64_vec_boot as usize - start as usize,
    }
}

pub(crate) fn code(p: Payload) -> &'static [u8] {
    match p {
        Payload::Memtouch => bytes(
            &raw const pinvmm_a64_memtouch_start,
            &raw const pinvmm_a64_memtouch_end,
        ),
        Payload::Hello => bytes(
            &raw const pinvmm_a64_hello_start,
            &raw const pinvmm_a64_hello_end,
        ),
        Payload::Spin => bytes(
            &raw const pinvmm_a64_spin_start,
            &raw const pinvmm_a64_spin_end,
        ),
        Payload::Crash => bytes(
            &raw const pinvmm_a64_crash_start,
            &raw const pinvmm_a64_crash_end,
        ),
        Payload::Oob => bytes(
            &raw const pinvmm_a64_oob_start,
            &raw const pinvmm_a64_oob_end,
        ),
        Payload::Garbage => bytes(
            &raw const pinvmm_a64_garbage_start,
            &raw const pinvmm_a64_garbage_end,
        ),
        Payload::Flood => bytes(
            &raw const pinvmm_a64_flood_start,
            &raw const pinvmm_a64_flood_end,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(code: &[u8]) -> Vec<u32> {
        code.chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect()
    }

    #[test]
    fn payloads_are_whole_instructions() {
        for p in Payload::ALL {
            let c = code(p);
            assert_eq!(c.as_ptr() as usize % 4, 0, "{} misaligned", p.name());
            if p != Payload::Hello {
                assert_eq!(c.len() % 4, 0, "{} has a partial instruction", p.name());
            }
        }
    }

    #[test]
    fn spin_branches_to_itself_and_crash_is_udf() {
        assert_eq!(words(code(Payload::Spin)), vec![0x1400_0000]); // b .
        assert_eq!(words(code(Payload::Crash))[0], 0x0000_0000); // udf #0
    }

    /// The table is 2 KiB aligned with an entry every 0x80 bytes (`mov x0, #n`), the boot stub
    /// after it; hello and flood start by letting every vCPU but 0 exit.
    #[test]
    fn vector_table_layout_and_vcpu_0_output() {
        let v = vectors();
        assert_eq!(v.code.as_ptr() as usize % 2048, 0);
        let w = words(v.code);
        for n in 0..16u32 {
            assert_eq!(w[(n * 0x20) as usize], 0xd280_0000 | (n << 5), "entry {n}"); // mov x0, #n
        }
        assert!(v.entry >= 0x800 && v.entry.is_multiple_of(4));
        assert_eq!(w[v.entry / 4 + 4], 0xd61f_0140); // br x10
        for p in [Payload::Hello, Payload::Flood] {
            assert_eq!(words(code(p))[0] & 0xff00_001f, 0xb500_0009, "{}", p.name()); // cbnz x9
        }
    }

    #[test]
    fn memtouch_reports_through_mmio_without_writeback() {
        // str x8, [x5, #0x18] (RESULT) and str w7, [x5, #0xc] (EXIT) are present.
        let w = words(code(Payload::Memtouch));
        assert!(w.contains(&0xf9000ca8), "RESULT store missing");
        assert!(w.contains(&0xb9000ca7), "EXIT store missing");
    }
}
