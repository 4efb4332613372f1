// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The keyboard controller's reset line, and nothing else: how an x86 Linux guest ends its VM.
//! With `reboot=k` (and for `panic=-1`) Linux waits until the controller's input buffer is
//! empty (status bit 1 clear) and writes 0xfe (pulse the reset line) to the command port.
//! That write ends the VM as a reset (StopRequest::GuestReset): the guest's verdict comes from
//! its console (the workload's result line), not from how it stopped.
//!
//! Placed at port 0x60 with length 5: offset 0 is the data port (0x60), offset 4 the
//! status/command port (0x64). Port 0x61 (PC speaker, PIT gate) is inside the range but KVM's
//! in-kernel PIT handles it (KVM_PIT_SPEAKER_DUMMY), so it never reaches this device.
//! No keyboard: the guest is told not to start its i8042 driver (x86_64 LINUX_CMDLINE_BASE);
//! a driver that probes anyway reads an empty controller and gives up.
//!
//! Hand-written: no rust-vmm crate provides an i8042 (Firecracker's lives in its own tree).

use crate::bus::{BusDevice, StopRequest};

/// Legacy I/O port of the data register; the device spans DATA_PORT..DATA_PORT + LEN.
pub const DATA_PORT: u64 = 0x60;
/// Ports the device spans.
pub const LEN: u64 = 5;
/// Offset of the status (read) / command (write) register.
pub const COMMAND: u64 = 4;
/// "Pulse output line 0": the CPU reset.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// The reset-only keyboard controller.
#[derive(Debug, Default)]
pub struct I8042Device {
    reset_requested: bool,
}

impl I8042Device {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the guest pulsed the reset line.
    pub fn reset_requested(&self) -> bool {
        self.reset_requested
    }
}

impl BusDevice for I8042Device {
    /// Status 0: output buffer empty, input buffer empty (ready for a command). Data 0.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<StopRequest> {
        if offset == COMMAND && data.first() == Some(&CMD_RESET_CPU) {
            self.reset_requested = true;
            return Some(StopRequest::GuestReset);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::{Access, Bus};

    #[test]
    fn reset_command_ends_the_vm_and_nothing_else_does() {
        let dev = Arc::new(Mutex::new(I8042Device::new()));
        let mut bus = Bus::new();
        bus.insert(DATA_PORT, LEN, dev.clone()).unwrap();

        // Linux's kb_wait(): the status register says "input buffer empty" at once.
        let mut status = [0xffu8];
        assert_eq!(bus.read(0x64, &mut status), Access::Handled(None));
        assert_eq!(status[0] & 0x02, 0);

        for (port, value) in [(0x60, 0xfe), (0x64, 0xaa), (0x64, 0x20), (0x60, 0x00)] {
            assert_eq!(bus.write(port, &[value]), Access::Handled(None));
        }
        assert!(!dev.lock().unwrap().reset_requested());

        assert_eq!(
            bus.write(0x64, &[CMD_RESET_CPU]),
            Access::Handled(Some(StopRequest::GuestReset))
        );
        assert!(dev.lock().unwrap().reset_requested());
        // Not ours: COM1 and port 0x65.
        assert_eq!(bus.write(0x3f8, &[0xfe]), Access::Unmapped);
        assert_eq!(bus.write(0x65, &[0xfe]), Access::Unmapped);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut dev = I8042Device::new();
        assert_eq!(dev.write(COMMAND, &[]), None);
        let mut wide = [0xffu8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
        assert_eq!(
            dev.write(COMMAND, &[CMD_RESET_CPU, 0, 0, 0]),
            Some(StopRequest::GuestReset)
        );
    }
}
