// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Bare guest payloads, assembled by the host's own toolchain with `global_asm!` and copied
//! into guest memory by the VMM. Each is position independent and takes its parameters in
//! registers (see [`PayloadArgs`] and the arch module for which register holds what).
//!
//! Payloads report through the test device (devices::testdev) and end by writing its EXIT
//! register; they never rely on HLT (on x86 they run at CPL3, where HLT faults).
//!
//! Under every payload the VMM installs the exception [`vectors`] of this crate (arm64: a vector
//! table behind VBAR_EL1; x86: the stubs an IDT points at), which report an exception the
//! payload takes through the test device's EXC_* and EXCEPTION registers at once: a crashing
//! guest ends as a crash within a second instead of looping (arm64 KVM does not exit on a guest
//! exception) or triple-faulting without saying what happened (x86).
//!
//! With several vCPUs every vCPU runs the same payload with its own arguments (memtouch: its
//! share of the range; every payload: its vCPU number). Output must not depend on how the
//! vCPUs interleave: `hello` and `flood` print on vCPU 0 only, the others exit 0 at once.

use serde::Serialize;

pub mod workload;

pub mod qemu_rom;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as arch;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64 as arch;

/// The payloads this build carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Payload {
    /// Writes `passes` times to one u64 at the start of every `stride`-th page of a range,
    /// then reads it all back, checks each value and reports the sum and the error count.
    Memtouch,
    /// Prints a line on the serial port and exits with status 0.
    Hello,
    /// Loops forever without exiting: for timeouts and the stop path.
    Spin,
    /// Executes an undefined instruction: a guest crash.
    Crash,
    /// Hostile: reads and writes guest-physical memory outside its RAM, just past the end and
    /// far away; exits 0 if every read returned all ones (nothing answered, nothing was kept).
    Oob,
    /// Hostile: writes garbage to every register of the serial port and the test device (all
    /// widths, UART loopback flood, MARK flood) and to unmapped ports and MMIO; exits 0 if the
    /// test device still reads back its magic.
    Garbage,
    /// Hostile: writes [`FLOOD_BYTES`] to the serial port (4 times what the VMM keeps), then
    /// exits 0.
    Flood,
}

impl Payload {
    /// All payloads, for `--help` and tests.
    pub const ALL: [Payload; 7] = [
        Payload::Memtouch,
        Payload::Hello,
        Payload::Spin,
        Payload::Crash,
        Payload::Oob,
        Payload::Garbage,
        Payload::Flood,
    ];

    /// The payloads that attack the VMM (for tests and `--help`).
    pub const HOSTILE: [Payload; 5] = [
        Payload::Oob,
        Payload::Garbage,
        Payload::Flood,
        Payload::Crash,
        Payload::Spin,
    ];

    /// The payload's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Payload::Memtouch => "memtouch",
            Payload::Hello => "hello",
            Payload::Spin => "spin",
            Payload::Crash => "crash",
            Payload::Oob => "oob",
            Payload::Garbage => "garbage",
            Payload::Flood => "flood",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<Payload> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The payload's machine code for this host's architecture.
    pub fn code(self) -> &'static [u8] {
        arch::code(self)
    }
}

/// What the VMM tells a payload, whatever the architecture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PayloadArgs {
    /// First guest-physical address of the range to touch.
    pub start: u64,
    /// Number of pages to touch.
    pub pages: u64,
    /// Bytes between touched addresses (a multiple of the page size).
    pub stride: u64,
    /// Write passes over the range (at least 1).
    pub passes: u64,
    /// Seed mixed into every value.
    pub seed: u64,
    /// Address of the test device (a port on x86_64, MMIO on aarch64).
    pub testdev: u64,
    /// Address of the serial port's data register.
    pub serial: u64,
    /// First guest-physical address past RAM (hostile payloads touch it).
    pub ram_end: u64,
    /// A guest-physical address far from RAM that nothing backs, reachable by the payload
    /// (x86: inside its page tables); 0 when there is none.
    pub far: u64,
    /// This vCPU's number (0 for the first): output only vCPU 0 makes.
    pub vcpu: u64,
}

/// Bytes the `flood` payload writes to the serial port.
pub const FLOOD_BYTES: u64 = 256 << 10;

impl PayloadArgs {
    /// The value memtouch leaves at `addr` after its last pass.
    pub fn memtouch_value(&self, addr: u64) -> u64 {
        (addr ^ self.seed).wrapping_add(1)
    }

    /// Addresses memtouch touches.
    pub fn memtouch_addrs(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.pages).map(move |i| self.start + i * self.stride)
    }

    /// The checksum a correct memtouch run reports.
    pub fn memtouch_checksum(&self) -> u64 {
        self.memtouch_addrs()
            .fold(0u64, |s, a| s.wrapping_add(self.memtouch_value(a)))
    }
}

/// The exception vectors the VMM installs under every bare payload.
#[derive(Debug, Clone, Copy)]
pub struct Vectors {
    /// The bytes to place in guest memory (arm64: at a 2 KiB-aligned address).
    pub code: &'static [u8],
    /// arm64: offset of the boot stub the vCPU starts at (it sets VBAR_EL1 to the table and
    /// TPIDR_EL1 to the test device from x5, then branches to the payload's entry in x10).
    /// x86: offset of vector 0's stub; vector v's is `VECTOR_STUB_SIZE * v` further on. The
    /// first 8 bytes of `code` hold the test device's port, which the VMM writes.
    pub entry: usize,
}

/// Bytes between two x86 vector stubs.
pub const VECTOR_STUB_SIZE: usize = 16;
/// x86 vectors that have a stub (the architecture's exceptions).
pub const X86_VECTORS: usize = 32;

/// This architecture's exception vectors.
pub fn vectors() -> Vectors {
    arch::vectors()
}

/// The bytes between two symbols emitted by an arch module's `global_asm!`.
fn bytes(start: *const u8, end: *const u8) -> &'static [u8] {
    let len = end as usize - start as usize;
    // SAFETY: start..end delimit one block of read-only bytes emitted by global_asm! in this
    // crate, which lives for the whole program.
    unsafe { std::slice::from_raw_parts(start, len) }
}

/// Text the `hello` payload prints.
pub const HELLO_LINE: &str = "Hello from the pinvmm guest!\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_code_is_present() {
        for p in Payload::ALL {
            assert_eq!(Payload::from_name(p.name()), Some(p));
            assert!(!p.code().is_empty(), "{} has no code", p.name());
            assert!(p.code().len() < 4096, "{} does not fit in a page", p.name());
        }
        let v = vectors();
        assert!(v.entry < v.code.len() && v.code.len() <= 4096);
        assert_eq!(Payload::from_name("nope"), None);
    }

    #[test]
    fn checksum_matches_values() {
        let a = PayloadArgs {
            start: 0x10_0000,
            pages: 3,
            stride: 4096,
            passes: 2,
            seed: 5,
            ..Default::default()
        };
        let want = (0x10_0000u64 ^ 5) + 1 + (0x10_1000 ^ 5) + 1 + (0x10_2000 ^ 5) + 1;
        assert_eq!(a.memtouch_checksum(), want);
    }

    #[test]
    fn hello_code_carries_the_line() {
        let code = Payload::Hello.code();
        let line = HELLO_LINE.as_bytes();
        assert!(code.windows(line.len()).any(|w| w == line));
    }
}
