// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The 16550 UART's exit handler with arbitrary offsets, widths and bytes, interleaved reads
//! and writes. Invariants: no panic, the console sink never keeps more than its cap, and the
//! byte total never exceeds what was written.
#![no_main]

use arbitrary::Arbitrary;
use devices::{BusDevice, ConsoleSink, SerialDevice};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        offset: u64,
        len: u8,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    /// Mostly in-window single-byte accesses, where the UART's state machine lives.
    RegWrite {
        reg: u8,
        byte: u8,
    },
    RegRead {
        reg: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    cap: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let cap = input.cap as usize;
    let sink = ConsoleSink::new(cap, false);
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut dev = SerialDevice::new(irq, sink.clone());
    let mut written = 0u64;
    for op in input.ops {
        match op {
            Op::Read { offset, len } => {
                let mut buf = vec![0u8; len as usize];
                dev.read(offset, &mut buf);
            }
            Op::Write { offset, data } => {
                assert_eq!(dev.write(offset, &data), None);
                written += data.len() as u64;
            }
            Op::RegWrite { reg, byte } => {
                assert_eq!(dev.write(u64::from(reg % 8), &[byte]), None);
                written += 1;
            }
            Op::RegRead { reg } => {
                let mut b = [0u8; 1];
                dev.read(u64::from(reg % 8), &mut b);
            }
        }
    }
    let (_, total) = sink.snapshot();
    assert!(sink.kept_len() <= cap, "sink kept more than its cap");
    assert!(
        total <= written,
        "sink counted bytes that were never written"
    );
});
