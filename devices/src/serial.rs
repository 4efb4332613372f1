// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! 16550A UART (vm-superio) on the bus, with a console sink that keeps a bounded copy of what
//! the guest printed (a guest that floods the port cannot grow the VMM's memory).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// Where the guest's console output goes: kept for the report (the first and the last
/// `cap / 2` bytes, so both the boot and the end of a long console survive), optionally echoed
/// to the VMM's stderr as it arrives, and watched for lines containing a marker (a Linux
/// guest's result line), each stamped with the time it completed.
#[derive(Debug, Clone)]
pub struct ConsoleSink {
    inner: Arc<Mutex<ConsoleBuf>>,
}

/// A watched console line and when its newline arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedLine {
    pub text: String,
    pub at: Instant,
}

/// Longest line the watcher assembles; longer lines are cut (the rest is still kept above).
const MAX_LINE: usize = 4096;
/// Watched lines remembered (a guest printing the marker in a loop cannot grow the VMM).
const MAX_WATCHED: usize = 16;

#[derive(Debug, Default)]
struct ConsoleBuf {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
    cap: usize,
    echo: bool,
    first_output: Option<Instant>,
    marker: Option<&'static str>,
    line: Vec<u8>,
    watched: Vec<WatchedLine>,
}

impl ConsoleBuf {
    fn keep(&mut self, data: &[u8]) {
        let head_cap = self.cap / 2;
        let take = head_cap.saturating_sub(self.head.len()).min(data.len());
        self.head.extend_from_slice(&data[..take]);
        let tail_cap = self.cap - head_cap;
        let rest = &data[take..];
        let rest = &rest[rest.len().saturating_sub(tail_cap)..];
        let overflow = (self.tail.len() + rest.len()).saturating_sub(tail_cap);
        self.tail.drain(..overflow);
        self.tail.extend(rest);
    }

    fn watch(&mut self, data: &[u8], now: Instant) {
        let Some(marker) = self.marker else { return };
        for &b in data {
            if b != b'\n' {
                if self.line.len() < MAX_LINE {
                    self.line.push(b);
                }
                continue;
            }
            let text = String::from_utf8_lossy(&self.line)
                .trim_end_matches('\r')
                .to_owned();
            self.line.clear();
            if text.contains(marker) && self.watched.len() < MAX_WATCHED {
                self.watched.push(WatchedLine { text, at: now });
            }
        }
    }
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

    /// Also records every line that contains `marker`, with the time it ended.
    pub fn watching(self, marker: &'static str) -> Self {
        self.lock().marker = Some(marker);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConsoleBuf> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What was kept, lossily decoded (with a note where the middle was dropped), and the
    /// total number of bytes the guest wrote.
    pub fn snapshot(&self) -> (String, u64) {
        let b = self.lock();
        let mut text = String::from_utf8_lossy(&b.head).into_owned();
        let kept = (b.head.len() + b.tail.len()) as u64;
        if kept < b.total {
            text.push_str(&format!(
                "\n[... pinvmm: {} bytes of console output not kept ...]\n",
                b.total - kept
            ));
        }
        let (a, c) = b.tail.as_slices();
        text.push_str(&String::from_utf8_lossy(&[a, c].concat()));
        (text, b.total)
    }

    /// Bytes kept (at most the cap).
    pub fn kept_len(&self) -> usize {
        let b = self.lock();
        b.head.len() + b.tail.len()
    }

    /// When the guest wrote its first byte.
    pub fn first_output(&self) -> Option<Instant> {
        self.lock().first_output
    }

    /// The watched lines seen so far, in order.
    pub fn watched(&self) -> Vec<WatchedLine> {
        self.lock().watched.clone()
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let now = Instant::now();
        let mut b = self.lock();
        if data.is_empty() {
            return Ok(0);
        }
        b.first_output.get_or_insert(now);
        b.total += data.len() as u64;
        b.keep(data);
        b.watch(data, now);
        if b.echo {
            // Echo is best effort: a closed stderr must not stop the guest.
            let _ = io::stderr().write_all(data);
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
        assert_eq!(
            kept,
            "he\n[... pinvmm: 1 bytes of console output not kept ...]\nlo"
        );
        assert_eq!(total, 5);
        assert_eq!(sink.kept_len(), 4);
    }

    #[test]
    fn short_output_is_kept_whole_and_the_tail_survives_a_flood() {
        let mut sink = ConsoleSink::new(8, false);
        sink.write_all(b"abc").unwrap();
        assert_eq!(sink.snapshot().0, "abc");
        for _ in 0..100 {
            sink.write_all(b"xxxxxxx").unwrap();
        }
        sink.write_all(b"END").unwrap();
        let (kept, total) = sink.snapshot();
        assert!(kept.starts_with("abcx") && kept.ends_with("xEND"), "{kept}");
        assert_eq!(total, 3 + 700 + 3);
        assert_eq!(sink.kept_len(), 8);
    }

    #[test]
    fn watched_lines_are_found_across_writes_and_stamped() {
        let mut sink = ConsoleSink::new(16, false).watching("RESULT:");
        assert_eq!(sink.first_output(), None);
        sink.write_all(b"boot\r\n[ 1.0] RES").unwrap();
        let first = sink.first_output().unwrap();
        sink.write_all(b"ULT: {\"a\":1}\r\nmore\nRESULT: 2")
            .unwrap();
        let w = sink.watched();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].text, "[ 1.0] RESULT: {\"a\":1}");
        assert!(w[0].at >= first);
        // An unterminated line is not reported yet; a flood of markers stays bounded.
        for _ in 0..100 {
            sink.write_all(b"\nRESULT: x").unwrap();
        }
        assert_eq!(sink.watched().len(), MAX_WATCHED);
    }

    fn libc_nonblock() -> i32 {
        0o4000 // EFD_NONBLOCK
    }
}
