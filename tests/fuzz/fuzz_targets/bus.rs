// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The address bus with arbitrary inserts and accesses, checked against a naive model:
//! inserts succeed iff the range is non-empty, does not wrap and overlaps nothing already
//! placed; an access is dispatched iff it lies wholly inside one device, at the right offset.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use devices::bus::Access;
use devices::{Bus, BusDevice, BusError, StopRequest};
use libfuzzer_sys::fuzz_target;

/// Records the last access it saw; reads return the offset's low byte.
#[derive(Default)]
struct Probe {
    last: Option<(u64, usize)>,
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.last = Some((offset, data.len()));
        for (i, d) in data.iter_mut().enumerate() {
            *d = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<StopRequest> {
        self.last = Some((offset, data.len()));
        (offset == 0 && data.len() == 1).then(|| StopRequest::GuestExit(data[0].into()))
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        base: u64,
        len: u64,
    },
    /// Small ranges near earlier ones, so adjacency and overlap are exercised.
    InsertNear {
        which: u8,
        delta: i16,
        len: u16,
    },
    Read {
        addr: u64,
        len: u8,
    },
    Write {
        addr: u64,
        data: Vec<u8>,
    },
    AccessNear {
        which: u8,
        delta: i16,
        len: u8,
        write: bool,
    },
}

struct Placed {
    base: u64,
    len: u64,
    dev: Arc<Mutex<Probe>>,
}

fuzz_target!(|ops: Vec<Op>| {
    let mut bus = Bus::new();
    let mut placed: Vec<Placed> = Vec::new();
    for op in ops {
        match op {
            Op::Insert { base, len } => insert(&mut bus, &mut placed, base, len),
            Op::InsertNear { which, delta, len } => {
                let base = near(&placed, which, delta);
                insert(&mut bus, &mut placed, base, len.into());
            }
            Op::Read { addr, len } => access(&bus, &placed, addr, len.into(), None),
            Op::Write { addr, data } => access(&bus, &placed, addr, data.len(), Some(&data)),
            Op::AccessNear {
                which,
                delta,
                len,
                write,
            } => {
                let addr = near(&placed, which, delta);
                let data = vec![0x5a; len.into()];
                access(&bus, &placed, addr, data.len(), write.then_some(&data[..]));
            }
        }
    }
    // Clones (one per vCPU) dispatch identically.
    let _ = format!("{:?}", bus.clone());
});

fn near(placed: &[Placed], which: u8, delta: i16) -> u64 {
    let anchor = match placed.len() {
        0 => 0,
        n => {
            let p = &placed[which as usize % n];
            if which & 0x80 != 0 {
                p.base.wrapping_add(p.len)
            } else {
                p.base
            }
        }
    };
    anchor.wrapping_add_signed(delta.into())
}

fn insert(bus: &mut Bus, placed: &mut Vec<Placed>, base: u64, len: u64) {
    let dev = Arc::new(Mutex::new(Probe::default()));
    let got = bus.insert(base, len, dev.clone());
    let want = if len == 0 {
        Err(BusError::ZeroLength { base })
    } else {
        match base.checked_add(len) {
            None => Err(BusError::Overlap { base, len }),
            Some(end) => {
                if placed.iter().any(|p| p.base < end && base < p.base + p.len) {
                    Err(BusError::Overlap { base, len })
                } else {
                    Ok(())
                }
            }
        }
    };
    assert_eq!(got, want, "insert {base:#x}+{len:#x}");
    if got.is_ok() {
        placed.push(Placed { base, len, dev });
    }
}

fn access(bus: &Bus, placed: &[Placed], addr: u64, size: usize, write: Option<&[u8]>) {
    // Model: the device containing addr, and whether [addr, addr+size) fits inside it.
    let target = placed
        .iter()
        .find(|p| addr >= p.base && addr - p.base < p.len);
    let fits = target.filter(|p| {
        (addr - p.base)
            .checked_add(size as u64)
            .is_some_and(|e| e <= p.len)
    });
    if let Some(p) = target {
        p.dev.lock().unwrap().last = None;
    }
    let got = match write {
        Some(data) => bus.write(addr, data),
        None => {
            let mut buf = vec![0u8; size];
            let got = bus.read(addr, &mut buf);
            if got == Access::Unmapped {
                assert!(buf.iter().all(|&b| b == 0xff), "unmapped read not all ones");
            }
            got
        }
    };
    match fits {
        Some(p) => {
            assert!(
                matches!(got, Access::Handled(_)),
                "{addr:#x}+{size} not dispatched"
            );
            assert_eq!(p.dev.lock().unwrap().last, Some((addr - p.base, size)));
        }
        None => {
            assert_eq!(
                got,
                Access::Unmapped,
                "{addr:#x}+{size} dispatched outside a device"
            );
            if let Some(p) = target {
                assert_eq!(p.dev.lock().unwrap().last, None);
            }
        }
    }
}
