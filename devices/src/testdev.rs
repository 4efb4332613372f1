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
//! | 0x00   | MAGIC     | r      | reads "PINV"                                          |
//!
//! Each vCPU gets its own instance, so per-vCPU results never mix.

use std::time::{Duration, Instant};

use crate::bus::{BusDevice, StopRequest};

/// Register offsets, shared with the guest payloads.
pub mod reg {
    pub const RESULT_LO: u64 = 0x00;
    pub const RESULT_HI: u64 = 0x04;
    pub const ERRORS: u64 = 0x08;
    pub const EXIT: u64 = 0x0c;
    pub const MARK: u64 = 0x10;
    pub const RESULT: u64 = 0x18;
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
    pub const LEN: u64 = 0x20;
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
    fn garbage_is_counted_not_fatal() {
        let mut d = TestDevice::new();
        for off in 0..TestDevice::LEN {
            if off != reg::EXIT {
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
