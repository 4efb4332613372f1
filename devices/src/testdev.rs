// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The test/exit device: how a bare payload reports its result and ends the VM.
//!
//! Register map (little endian; any access width that fits in a register):
//!
//! | offset | name      | access | meaning                                               |
//! |--------|-----------|--------|-------------------------------------------------------|
//! | 0x00   | RESULT_LO | w      | low 32 bits of the result (e.g. memtouch's checksum)  |
//! | 0x04   | RESULT_HI | w      | high 32 bits                                          |
//! | 0x08   | ERRORS    | w      | number of errors the guest found (e.g. bad pages)     |
//! | 0x0c   | EXIT      | w      | guest status (0 = success); ends this vCPU's run      |
//! | 0x10   | MARK      | w      | phase marker; the host timestamps it                  |
//! | 0x18   | RESULT    | w      | the whole 64-bit result in one access (arm64)         |
//! | 0x20   | EXC_SYNDROME | w   | exception syndrome: arm64 ESR_EL1; x86 the error code |
//! | 0x28   | EXC_PC    | w      | where it happened: arm64 ELR_EL1; x86 the RIP         |
//! | 0x30   | EXC_ADDR  | w      | faulting address: arm64 FAR_EL1; x86 0                |
//! | 0x38   | EXCEPTION | w      | which exception (arm64: vector table entry 0-15; x86: |
//! |        |           |        | vector 0-31); ends this vCPU's run as a crash         |
//! | 0x00   | MAGIC     | r      | reads "PINV"                                          |
//!
//! The EXC_* registers are 64 bits wide: one 8-byte access, or two 4-byte ones (low half at
//! the register, high half 4 bytes above, as x86's `out` writes them). The exception vectors the
//! VMM installs in bare payloads write them (guest/src: `vectors`).
//!
//! Each vCPU gets its own instance, so per-vCPU results never mix.

use std::time::{Duration, Instant};

pub use crate::bus::GuestException;
use crate::bus::{BusDevice, StopRequest};

/// Register offsets, shared with the guest payloads.
pub mod reg {
    pub const RESULT_LO: u64 = 0x00;
    pub const RESULT_HI: u64 = 0x04;
    pub const ERRORS: u64 = 0x08;
    pub const EXIT: u64 = 0x0c;
    pub const MARK: u64 = 0x10;
    pub const RESULT: u64 = 0x18;
    pub const EXC_SYNDROME: u64 = 0x20;
    pub const EXC_PC: u64 = 0x28;
    pub const EXC_ADDR: u64 = 0x30;
    pub const EXCEPTION: u64 = 0x38;
}

/// Value read at offset 0.
pub const MAGIC: u32 = u32::from_le_bytes(*b"PINV");

/// What one vCPU's guest code reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    pub result: u64,
    pub errors: u64,
    pub status: Option<u32>,
    /// Phase markers with their time since the device was created.
    pub marks: Vec<(u32, Duration)>,
    /// Writes to offsets the device does not define (a hostile or broken guest).
    pub bad_writes: u64,
    /// The exception the guest's vectors reported (EXCEPTION written), with the EXC_* values.
    pub exception: Option<GuestException>,
    /// The EXC_* values written so far.
    exc: GuestException,
}

/// The device.
#[derive(Debug)]
pub struct TestDevice {
    created: Instant,
    report: GuestReport,
}

impl Default for TestDevice {
    fn default() -> Self {
        Self {
            created: Instant::now(),
            report: GuestReport::default(),
        }
    }
}

impl TestDevice {
    /// Window size on the bus.
    pub const LEN: u64 = 0x40;
    /// Markers kept (a guest writing MARK in a loop cannot grow the VMM).
    const MAX_MARKS: usize = 64;

    pub fn new() -> Self {
        Self::default()
    }

    /// What the guest reported so far.
    pub fn report(&self) -> &GuestReport {
        &self.report
    }
}

fn le_u64(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl BusDevice for TestDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let magic = MAGIC.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            // Checked: a direct caller may pass any offset (tests/fuzz found `u64::MAX + i`).
            *d = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|j| magic.get(j).copied())
                .unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<StopRequest> {
        let v = le_u64(data);
        let r = &mut self.report;
        match offset {
            reg::RESULT_LO => r.result = (r.result & !0xffff_ffff) | (v & 0xffff_ffff),
            reg::RESULT_HI => r.result = (r.result & 0xffff_ffff) | (v << 32),
            reg::RESULT => r.result = v,
            reg::ERRORS => r.errors = v,
            reg::MARK => {
                if r.marks.len() < Self::MAX_MARKS {
                    r.marks.push((v as u32, self.created.elapsed()));
                }
            }
            reg::EXIT => {
                r.status = Some(v as u32);
                return Some(StopRequest::GuestExit(v as u32));
            }
            reg::EXCEPTION => {
                let e = GuestException {
                    kind: v as u32,
                    ..r.exc
                };
                r.exception = Some(e);
                return Some(StopRequest::GuestException(e));
            }
            o @ reg::EXC_SYNDROME..reg::EXCEPTION if o % 4 == 0 => {
                let field = match o & !7 {
                    reg::EXC_SYNDROME => &mut r.exc.syndrome,
                    reg::EXC_PC => &mut r.exc.pc,
                    _ => &mut r.exc.addr,
                };
                *field = match (o % 8, data.len()) {
                    (0, 8) => v,
                    (0, _) => (*field & !0xffff_ffff) | (v & 0xffff_ffff),
                    _ => (*field & 0xffff_ffff) | (v << 32),
                };
            }
            _ => r.bad_writes += 1,
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_result_and_exits() {
        let mut d = TestDevice::new();
        assert_eq!(d.write(reg::RESULT_LO, &0xdead_beefu32.to_le_bytes()), None);
        assert_eq!(d.write(reg::RESULT_HI, &0x1234_5678u32.to_le_bytes()), None);
        assert_eq!(d.report().result, 0x1234_5678_dead_beef);
        d.write(reg::RESULT, &7u64.to_le_bytes());
        assert_eq!(d.report().result, 7);
        d.write(reg::ERRORS, &[3]);
        d.write(reg::MARK, &[1]);
        assert_eq!(
            d.write(reg::EXIT, &0u32.to_le_bytes()),
            Some(StopRequest::GuestExit(0))
        );
        let r = d.report();
        assert_eq!((r.errors, r.status, r.marks.len()), (3, Some(0), 1));
        let mut m = [0u8; 4];
        d.read(0, &mut m);
        assert_eq!(u32::from_le_bytes(m), MAGIC);
    }

    #[test]
    fn exception_registers_in_one_or_two_accesses() {
        let mut d = TestDevice::new();
        // arm64: 8-byte stores.
        d.write(reg::EXC_SYNDROME, &0x0200_0000u64.to_le_bytes());
        d.write(reg::EXC_PC, &0x8000_0000u64.to_le_bytes());
        d.write(reg::EXC_ADDR, &0x1234u64.to_le_bytes());
        // x86: the PC again in two 4-byte halves.
        d.write(reg::EXC_PC, &0x2_0010u32.to_le_bytes());
        d.write(reg::EXC_PC + 4, &0xffffu32.to_le_bytes());
        let want = GuestException {
            kind: 6,
            syndrome: 0x0200_0000,
            pc: 0xffff_0002_0010,
            addr: 0x1234,
        };
        assert_eq!(
            d.write(reg::EXCEPTION, &6u32.to_le_bytes()),
            Some(StopRequest::GuestException(want))
        );
        assert_eq!(d.report().exception, Some(want));
        assert_eq!(d.report().bad_writes, 0);
        // Unaligned: a bad write, not a register.
        d.write(reg::EXC_PC + 1, &[1]);
        assert_eq!(d.report().bad_writes, 1);
    }

    #[test]
    fn garbage_is_counted_not_fatal() {
        let mut d = TestDevice::new();
        for off in 0..TestDevice::LEN {
            if off != reg::EXIT && off != reg::EXCEPTION {
                d.write(off, &[0xff; 8]);
            }
            let mut b = [0u8; 8];
            d.read(off, &mut b);
        }
        for _ in 0..1000 {
            d.write(reg::MARK, &[1]);
        }
        let mut b = [0xaau8; 4];
        d.read(u64::MAX, &mut b); // fuzz finding: offset + i overflowed
        assert_eq!(b, [0; 4]);
        assert!(d.report().bad_writes > 0);
        assert_eq!(d.report().marks.len(), TestDevice::MAX_MARKS);
        assert_eq!(d.report().status, None);
    }
}
