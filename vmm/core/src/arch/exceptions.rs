// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What a guest exception was, from what the payload's exception vectors reported through the
//! test device (devices::testdev: EXC_SYNDROME, EXC_PC, EXC_ADDR, EXCEPTION). Both decoders are
//! compiled everywhere (and unit-tested on any host); [`describe`] picks this build's.

use devices::testdev::GuestException;
use serde::Serialize;

/// A guest exception, decoded for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExceptionReport {
    /// `aarch64` or `x86_64`.
    pub arch: &'static str,
    /// arm64: the vector table entry (0-15); x86: the vector.
    pub vector: u32,
    /// What the vector and syndrome mean, e.g. `#UD (invalid opcode)` or `synchronous
    /// exception from the current EL with SPx: EC 0x00 (undefined instruction)`.
    pub name: String,
    /// arm64: ESR_EL1; x86: the error code (0 for vectors that push none).
    pub syndrome: u64,
    /// arm64: the exception class, ESR_EL1.EC; x86: none.
    pub class: Option<u32>,
    /// arm64: ELR_EL1; x86: RIP.
    pub pc: u64,
    /// arm64: FAR_EL1 (meaningful for aborts and alignment faults); x86: none.
    pub addr: Option<u64>,
}

impl std::fmt::Display for ExceptionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.arch == "aarch64" {
            write!(
                f,
                "guest exception: {}, ESR {:#x}, ELR {:#x}, FAR {:#x}",
                self.name,
                self.syndrome,
                self.pc,
                self.addr.unwrap_or(0)
            )
        } else {
            write!(
                f,
                "guest exception: vector {} {}, error code {:#x}, RIP {:#x}",
                self.vector, self.name, self.syndrome, self.pc
            )
        }
    }
}

/// This build's decoder.
pub fn describe(e: &GuestException) -> ExceptionReport {
    if cfg!(target_arch = "aarch64") {
        aarch64(e)
    } else {
        x86_64(e)
    }
}

/// ESR_EL1.EC names (Arm ARM D19.2.37), the ones a bare EL1 payload can take.
fn ec_name(ec: u32) -> &'static str {
    match ec {
        0x00 => "undefined instruction",
        0x01 => "trapped WFI/WFE",
        0x07 => "SVE/SIMD/FP access",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "trapped MSR/MRS/system instruction",
        0x19 => "SVE access",
        0x20 | 0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 | 0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2c => "floating-point exception",
        0x2f => "SError",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "unknown class",
    }
}

/// arm64: the entry of the vector table (which EL and stack, which kind) and ESR_EL1.
pub fn aarch64(e: &GuestException) -> ExceptionReport {
    const FROM: [&str; 4] = [
        "the current EL with SP0",
        "the current EL with SPx",
        "a lower EL (AArch64)",
        "a lower EL (AArch32)",
    ];
    const KIND: [&str; 4] = ["synchronous exception", "IRQ", "FIQ", "SError"];
    let entry = e.kind as usize % 16;
    let ec = ((e.syndrome >> 26) & 0x3f) as u32;
    let mut name = format!("{} from {}", KIND[entry % 4], FROM[entry / 4]);
    let sync = entry.is_multiple_of(4);
    if sync {
        name += &format!(": EC {ec:#04x} ({})", ec_name(ec));
    }
    ExceptionReport {
        arch: "aarch64",
        vector: e.kind,
        name,
        syndrome: e.syndrome,
        class: sync.then_some(ec),
        pc: e.pc,
        addr: Some(e.addr),
    }
}

/// x86: the vector's mnemonic (Intel SDM Vol. 3 Table 6-1) and the error code.
pub fn x86_64(e: &GuestException) -> ExceptionReport {
    let name = match e.kind {
        0 => "#DE (divide error)",
        1 => "#DB (debug)",
        2 => "NMI",
        3 => "#BP (breakpoint)",
        4 => "#OF (overflow)",
        5 => "#BR (bound range exceeded)",
        6 => "#UD (invalid opcode)",
        7 => "#NM (device not available)",
        8 => "#DF (double fault)",
        9 => "coprocessor segment overrun",
        10 => "#TS (invalid TSS)",
        11 => "#NP (segment not present)",
        12 => "#SS (stack-segment fault)",
        13 => "#GP (general protection)",
        14 => "#PF (page fault)",
        16 => "#MF (x87 floating-point error)",
        17 => "#AC (alignment check)",
        18 => "#MC (machine check)",
        19 => "#XM (SIMD floating-point)",
        20 => "#VE (virtualization exception)",
        21 => "#CP (control protection)",
        28 => "#HV (hypervisor injection)",
        29 => "#VC (VMM communication)",
        30 => "#SX (security exception)",
        _ => "reserved vector",
    };
    ExceptionReport {
        arch: "x86_64",
        vector: e.kind,
        name: name.into(),
        syndrome: e.syndrome,
        class: None,
        pc: e.pc,
        addr: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm64_undefined_instruction() {
        // udf #0 at EL1h: entry 4 (current EL, SPx, sync), ESR = EC 0 | IL.
        let r = aarch64(&GuestException {
            kind: 4,
            syndrome: 0x0200_0000,
            pc: 0x8000_0000,
            addr: 0,
        });
        assert_eq!(r.class, Some(0));
        let s = r.to_string();
        assert!(
            s.contains("synchronous exception from the current EL with SPx")
                && s.contains("EC 0x00 (undefined instruction)")
                && s.contains("ELR 0x80000000"),
            "{s}"
        );
        // A data abort at EL1 (EC 0x25) names FAR; an SError has no class.
        let r = aarch64(&GuestException {
            kind: 4,
            syndrome: 0x25 << 26,
            pc: 0x8000_0010,
            addr: 0xdead_0000,
        });
        assert!(r.to_string().contains("data abort") && r.to_string().contains("FAR 0xdead0000"));
        assert_eq!(
            aarch64(&GuestException {
                kind: 7,
                ..Default::default()
            })
            .class,
            None
        );
    }

    #[test]
    fn x86_vectors() {
        let r = x86_64(&GuestException {
            kind: 6,
            syndrome: 0,
            pc: 0x2_0000,
            addr: 0,
        });
        assert_eq!(
            r.to_string(),
            "guest exception: vector 6 #UD (invalid opcode), error code 0x0, RIP 0x20000"
        );
        assert!(
            x86_64(&GuestException {
                kind: 14,
                syndrome: 7,
                ..Default::default()
            })
            .to_string()
            .contains("#PF (page fault), error code 0x7")
        );
        assert_eq!(
            x86_64(&GuestException {
                kind: 99,
                ..Default::default()
            })
            .name,
            "reserved vector"
        );
    }
}
