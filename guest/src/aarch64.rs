// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! aarch64 payloads. They run at EL1h with the MMU off and DAIF masked (see vmm's arch/aarch64),
//! so every data access is a Device access: RAM and MMIO both work as long as accesses are
//! aligned. They report by storing to the MMIO test device and never use `wfi`.
//!
//! Registers on entry: x0 = start, x1 = pages, x2 = stride, x3 = passes, x4 = seed,
//! x5 = test device base (MMIO), x6 = serial data register (MMIO, byte wide).
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
    // No vector table is installed: the exception goes to VBAR_EL1 (reset: UNKNOWN, outside
    // RAM), so the vCPU keeps taking aborts and never reaches the test device's EXIT.
    ".balign 4",
    ".global pinvmm_a64_crash_start",
    "pinvmm_a64_crash_start:",
    "    udf #0",
    "    b pinvmm_a64_crash_start",
    ".global pinvmm_a64_crash_end",
    "pinvmm_a64_crash_end:",
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

    #[test]
    fn memtouch_reports_through_mmio_without_writeback() {
        // str x8, [x5, #0x18] (RESULT) and str w7, [x5, #0xc] (EXIT) are present.
        let w = words(code(Payload::Memtouch));
        assert!(w.contains(&0xf9000ca8), "RESULT store missing");
        assert!(w.contains(&0xb9000ca7), "EXIT store missing");
    }
}
