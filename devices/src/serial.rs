// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! 16550A UART (vm-superio) on the bus, with a console sink that keeps a bounded copy of what
//! the guest printed (a guest that floods the port cannot grow the VMM's memory).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, StopRequest};

/// Interrupt line of the UART. Bare payloads poll; Linux guests get it wired to an irqfd.
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's console output goes: kept (up to `cap` bytes) for the report and,
/// optionally, echoed to the VMM's stderr as it arrives.
#[derive(Debug, Clone)]
pub struct ConsoleSink {
    inner: Arc<Mutex<ConsoleBuf>>,
}

#[derive(Debug, Default)]
struct ConsoleBuf {
    kept: Vec<u8>,
    total: u64,
    cap: usize,
    echo: bool,
}

impl ConsoleSink {
    /// A sink keeping at most `cap` bytes.
    pub fn new(cap: usize, echo: bool) -> Self {
        let buf = ConsoleBuf {
            cap,
            echo,
            ..Default::default()
        };
        Self {
            inner: Arc::new(Mutex::new(buf)),
        }
    }

    /// What was kept, lossily decoded, and the total number of bytes the guest wrote.
    pub fn snapshot(&self) -> (String, u64) {
        let b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (String::from_utf8_lossy(&b.kept).into_owned(), b.total)
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        b.total += data.len() as u64;
        let room = b.cap.saturating_sub(b.kept.len());
        let keep = &data[..data.len().min(room)];
        b.kept.extend_from_slice(keep);
        if b.echo && !keep.is_empty() {
            // Echo is best effort: a closed stderr must not stop the guest.
            let _ = io::stderr().write_all(keep);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The UART as a bus device (8 byte-wide registers).
#[derive(Debug)]
pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, ConsoleSink>,
}

impl SerialDevice {
    /// Register window size.
    pub const LEN: u64 = 8;

    /// A UART writing to `sink`, raising `irq` on interrupts.
    pub fn new(irq: EventFd, sink: ConsoleSink) -> Self {
        Self {
            uart: Serial::new(IrqLine(irq), sink),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < Self::LEN {
            data[0] = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<StopRequest> {
        if data.len() == 1 && offset < Self::LEN {
            // An interrupt that cannot be signalled is not the guest's fault; output is kept.
            let _ = self.uart.write(offset as u8, data[0]);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_bounded_output_and_counts_the_rest() {
        let sink = ConsoleSink::new(4, false);
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let mut dev = SerialDevice::new(irq, sink.clone());
        for &c in b"hello" {
            assert_eq!(dev.write(0, &[c]), None);
        }
        // Wide accesses and out-of-window offsets are ignored, never a panic.
        assert_eq!(dev.write(0, &[1, 2]), None);
        assert_eq!(dev.write(100, &[1]), None);
        let mut b = [0u8; 2];
        dev.read(5, &mut b);
        let (kept, total) = sink.snapshot();
        assert_eq!(kept, "hell");
        assert_eq!(total, 5);
    }

    fn libc_nonblock() -> i32 {
        0o4000 // EFD_NONBLOCK
    }
}
