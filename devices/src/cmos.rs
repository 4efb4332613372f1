// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The PC's CMOS real-time clock (MC146818) at ports 0x70 (index) and 0x71 (data): the host's
//! UTC time, and 128 bytes of CMOS memory.
//!
//! Why an x86 Linux guest needs it: without it every read of port 0x71 returns all ones, and
//! Linux takes bit 7 of register A (UIP, "update in progress") as set. `mc146818_avoid_UIP()`
//! then polls it for its whole timeout, 10 000 times with a 100 µs delay in between, each poll
//! two register reads (4 port accesses, each a VM exit to this VMM); Debian's 6.12 does that
//! twice (the boot-time wall clock and the rtc_cmos driver's probe): 80 000 exits and 2 s of
//! delays, ~7-12 s of a nested boot, ending in "Unable to read current time from RTC" and
//! "rtc_cmos: broken or not accessible".
//!
//! Registers: 0x00/0x02/0x04 seconds/minutes/hours, 0x06 day of week, 0x07/0x08/0x09
//! day/month/year, 0x32 century, in BCD or binary and 12/24 h as register B says; register A
//! never shows UIP; register C reads 0 (no interrupt flags); register D has VRT (valid RAM and
//! time). Writes to the time registers are dropped (the clock is the host's); other bytes are
//! memory. No interrupts (no alarm, periodic or update interrupt).
//!
//! Hand-written, after the layout of crosvm's and Cloud Hypervisor's `cmos` devices (neither is
//! a crate).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::{BusDevice, StopRequest};

/// The index port; the device spans INDEX_PORT..INDEX_PORT + LEN (0x71 is the data port).
pub const INDEX_PORT: u64 = 0x70;
/// Ports the device spans.
pub const LEN: u64 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY_OF_WEEK: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

/// Register A: 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) never set.
const REG_A_VALUE: u8 = 0x26;
/// Register B: 24-hour mode, BCD (what PC firmware sets up).
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;
/// Register D: VRT, valid RAM and time.
const REG_D_VRT: u8 = 0x80;

/// A calendar time, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 1 = Sunday .. 7 = Saturday, as the MC146818 counts.
    pub weekday: u8,
}

impl DateTime {
    /// From seconds since the Unix epoch (UTC).
    pub fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (5).
            weekday: ((days + 4) % 7 + 1) as u8,
        }
    }

    /// Now, from the host's clock.
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::from_unix(secs)
    }
}

/// The CMOS RTC and its memory.
pub struct CmosDevice {
    index: u8,
    mem: [u8; 128],
    clock: Box<dyn FnMut() -> DateTime + Send>,
}

impl std::fmt::Debug for CmosDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmosDevice")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Default for CmosDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl CmosDevice {
    /// An RTC that tells the host's time.
    pub fn new() -> Self {
        Self::with_clock(DateTime::now)
    }

    /// An RTC that tells the time `clock` returns (tests).
    pub fn with_clock(clock: impl FnMut() -> DateTime + Send + 'static) -> Self {
        let mut mem = [0u8; 128];
        mem[usize::from(REG_A)] = REG_A_VALUE;
        mem[usize::from(REG_B)] = REG_B_24H;
        mem[usize::from(REG_D)] = REG_D_VRT;
        Self {
            index: 0,
            mem,
            clock: Box::new(clock),
        }
    }

    fn encode(&self, v: u8) -> u8 {
        if self.mem[usize::from(REG_B)] & REG_B_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let time = matches!(
            reg,
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY
        );
        if !time {
            return match reg {
                REG_A => REG_A_VALUE,
                REG_C => 0,
                REG_D => REG_D_VRT,
                _ => self.mem[usize::from(reg)],
            };
        }
        let t = (self.clock)();
        match reg {
            SECONDS => self.encode(t.second),
            MINUTES => self.encode(t.minute),
            HOURS if self.mem[usize::from(REG_B)] & REG_B_24H == 0 => {
                // 12-hour mode: 1..12, bit 7 = PM.
                let h12 = match t.hour % 12 {
                    0 => 12,
                    h => h,
                };
                self.encode(h12) | if t.hour >= 12 { 0x80 } else { 0 }
            }
            HOURS => self.encode(t.hour),
            DAY_OF_WEEK => self.encode(t.weekday),
            DAY_OF_MONTH => self.encode(t.day),
            MONTH => self.encode(t.month),
            YEAR => self.encode((t.year % 100) as u8),
            _ => self.encode((t.year / 100 % 100) as u8),
        }
    }
}

impl BusDevice for CmosDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.index,
            _ => self.read_register(self.index),
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<StopRequest> {
        let &v = data.first()?;
        match offset {
            // Bit 7 masks NMIs on a PC; nothing to mask here.
            0 => self.index = v & 0x7f,
            _ => match self.index {
                SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY
                | REG_A | REG_C | REG_D => {}
                i => self.mem[usize::from(i)] = v,
            },
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Access, Bus};
    use std::sync::{Arc, Mutex};

    fn fixed() -> DateTime {
        // 2026-12-04 16:05:09 UTC, a Friday.
        DateTime::from_unix(1_796_400_309)
    }

    fn rd(bus: &Bus, reg: u8) -> u8 {
        assert_eq!(bus.write(0x70, &[reg]), Access::Handled(None));
        let mut d = [0u8];
        assert_eq!(bus.read(0x71, &mut d), Access::Handled(None));
        d[0]
    }

    fn bus() -> Bus {
        let mut bus = Bus::new();
        bus.insert(
            INDEX_PORT,
            LEN,
            Arc::new(Mutex::new(CmosDevice::with_clock(fixed))),
        )
        .unwrap();
        bus
    }

    #[test]
    fn unix_time_to_calendar() {
        assert_eq!(
            DateTime::from_unix(0),
            DateTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        let t = fixed();
        assert_eq!(
            (
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday
            ),
            (2026, 12, 4, 16, 5, 9, 6)
        );
        // A leap day.
        let t = DateTime::from_unix(951_782_400);
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
    }

    #[test]
    fn linux_reads_a_valid_clock_in_bcd() {
        let bus = bus();
        // What mc146818_avoid_UIP() and the rtc_cmos probe look at.
        assert_eq!(rd(&bus, REG_A) & 0x80, 0, "UIP must never be set");
        assert_eq!(rd(&bus, REG_D) & 0x40, 0, "bit 6 of register D must be 0");
        assert_eq!(rd(&bus, REG_D) & 0x80, 0x80, "VRT");
        assert_eq!(rd(&bus, REG_C), 0);
        assert_eq!(rd(&bus, REG_B), REG_B_24H);
        let time: Vec<u8> = [
            SECONDS,
            MINUTES,
            HOURS,
            DAY_OF_WEEK,
            DAY_OF_MONTH,
            MONTH,
            YEAR,
            CENTURY,
        ]
        .iter()
        .map(|&r| rd(&bus, r))
        .collect();
        assert_eq!(time, [0x09, 0x05, 0x16, 0x06, 0x04, 0x12, 0x26, 0x20]);
        // The NMI-mask bit of the index is ignored.
        assert_eq!(rd(&bus, 0x80 | MONTH), 0x12);
    }

    #[test]
    fn binary_and_12_hour_modes_follow_register_b() {
        let bus = bus();
        bus.write(0x70, &[REG_B]);
        bus.write(0x71, &[REG_B_BINARY]); // binary, 12-hour
        assert_eq!(rd(&bus, REG_B), REG_B_BINARY);
        assert_eq!(rd(&bus, SECONDS), 9);
        assert_eq!(rd(&bus, YEAR), 26);
        assert_eq!(rd(&bus, HOURS), 0x80 | 4, "16 h = 4 PM");
    }

    #[test]
    fn memory_keeps_writes_but_not_time_or_status() {
        let bus = bus();
        bus.write(0x70, &[0x40]);
        bus.write(0x71, &[0xab]);
        assert_eq!(rd(&bus, 0x40), 0xab);
        for reg in [SECONDS, YEAR, REG_A, REG_C, REG_D] {
            let before = rd(&bus, reg);
            bus.write(0x70, &[reg]);
            bus.write(0x71, &[0xff]);
            assert_eq!(rd(&bus, reg), before, "register {reg:#x}");
        }
        // The index port reads back the index.
        let mut d = [0u8];
        bus.write(0x70, &[0x33]);
        bus.read(0x70, &mut d);
        assert_eq!(d[0], 0x33);
    }
}
