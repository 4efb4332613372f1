// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The test/exit device's exit handler with arbitrary offsets and data. Invariants: no panic,
//! a stop request comes only from (and always from) EXIT, markers stay bounded, and the magic
//! reads back at offset 0.
#![no_main]

use arbitrary::Arbitrary;
use devices::testdev::{MAGIC, reg};
use devices::{BusDevice, StopRequest, TestDevice};
use libfuzzer_sys::fuzz_target;

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
    /// In-window accesses, so the defined registers are hit often.
    RegWrite {
        offset: u8,
        data: [u8; 8],
        len: u8,
    },
}

fuzz_target!(|ops: Vec<Op>| {
    let mut dev = TestDevice::new();
    for op in ops {
        match op {
            Op::Read { offset, len } => {
                let mut buf = vec![0u8; len as usize];
                dev.read(offset, &mut buf);
                if offset == 0 && buf.len() >= 4 {
                    assert_eq!(&buf[..4], &MAGIC.to_le_bytes());
                }
            }
            Op::Write { offset, data } => check_write(&mut dev, offset, &data),
            Op::RegWrite { offset, data, len } => {
                let off = u64::from(offset) % TestDevice::LEN;
                let n = (len as usize % 8) + 1;
                check_write(&mut dev, off, &data[..n]);
            }
        }
        assert!(dev.report().marks.len() <= 64);
    }
});

fn check_write(dev: &mut TestDevice, offset: u64, data: &[u8]) {
    let stop = dev.write(offset, data);
    if offset == reg::EXIT {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        assert_eq!(stop, Some(StopRequest::GuestExit(v)));
        assert_eq!(dev.report().status, Some(v));
    } else {
        assert_eq!(stop, None);
    }
}
