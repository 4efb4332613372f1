// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A small address bus (PIO or MMIO), in the lineage of Firecracker's `vstate/bus.rs` and
//! crosvm's `devices/src/bus.rs`: devices see offsets, each vCPU gets its own clone of the bus
//! (so lookups are never contended), and devices are `Arc<Mutex<_>>` where they are shared.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a device write can ask of the vCPU that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// The guest finished and reported this status (0 = success).
    GuestExit(u32),
    /// The guest reset the machine (x86: the keyboard controller's reset line); a Linux
    /// guest's `reboot` ends the VM this way.
    GuestReset,
    /// The guest took an exception its payload does not handle: the exception vectors the VMM
    /// installed reported it (the test device's EXCEPTION register).
    GuestException(GuestException),
}

/// An exception the guest took, as its exception vectors reported it (the meaning of each
/// field is the architecture's: see the test device's register table, `crate::testdev`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestException {
    /// arm64: the vector table entry (0-15: 4 x {sync, IRQ, FIQ, SError}); x86: the vector.
    pub kind: u32,
    pub syndrome: u64,
    pub pc: u64,
    pub addr: u64,
}

/// A device on the bus. Reads are zero-filled by the bus before dispatch.
pub trait BusDevice: Send {
    /// Handles a read of `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write; may ask the vCPU to stop.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<StopRequest>;
}

/// Errors when placing devices on the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    /// Zero-length ranges cannot be dispatched to.
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength { base: u64 },
}

/// Result of a bus access, for the vCPU loop's statistics and hostile-guest reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A device handled it.
    Handled(Option<StopRequest>),
    /// Nothing is mapped there (reads return all ones).
    Unmapped,
}

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
}

/// Address -> device map.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.devices.iter().map(|(b, e)| (*b, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `dev` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let overlaps = self
            .devices
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if overlaps {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, Entry { len, dev });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (base, e) = self.devices.range(..=addr).next_back()?;
        let off = addr - base;
        // `off < len` first: an access starting just past the device (possible only with a
        // zero-length access) is not the device's, and `len - off` cannot underflow or
        // overflow the way `off + size` could near `u64::MAX` (both found by tests/fuzz).
        (off < e.len && size as u64 <= e.len - off).then_some((off, e))
    }

    /// Dispatches a read; unmapped reads return all ones, as on real buses.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Access {
        data.fill(0);
        match self.find(addr, data.len()) {
            Some((off, e)) => {
                lock(&e.dev).read(off, data);
                Access::Handled(None)
            }
            None => {
                data.fill(0xff);
                Access::Unmapped
            }
        }
    }

    /// Dispatches a write; unmapped writes are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> Access {
        match self.find(addr, data.len()) {
            Some((off, e)) => Access::Handled(lock(&e.dev).write(off, data)),
            None => Access::Unmapped,
        }
    }
}

/// A device whose lock was poisoned by a panicking vCPU thread is still usable: its state is
/// plain data, and the VM is being torn down anyway.
fn lock(dev: &Mutex<dyn BusDevice>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Reg(u8, Vec<(u64, Vec<u8>)>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = self.0.wrapping_add(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<StopRequest> {
            self.1.push((offset, data.to_vec()));
            (offset == 3).then_some(StopRequest::GuestExit(data[0] as u32))
        }
    }

    #[test]
    fn dispatches_by_offset_and_rejects_overlaps() {
        let mut bus = Bus::new();
        let d = Arc::new(Mutex::new(Reg(10, vec![])));
        bus.insert(0x100, 4, d.clone()).unwrap();
        assert_eq!(
            bus.insert(0x102, 4, d.clone()),
            Err(BusError::Overlap {
                base: 0x102,
                len: 4
            })
        );
        assert_eq!(
            bus.insert(0xfe, 4, d.clone()),
            Err(BusError::Overlap { base: 0xfe, len: 4 })
        );
        assert_eq!(
            bus.insert(0x0, 0, d.clone()),
            Err(BusError::ZeroLength { base: 0 })
        );
        bus.insert(0x104, 4, Arc::new(Mutex::new(Reg(0, vec![]))))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(bus.read(0x102, &mut b), Access::Handled(None));
        assert_eq!(b[0], 12);
        assert_eq!(
            bus.write(0x103, &[7]),
            Access::Handled(Some(StopRequest::GuestExit(7)))
        );
        assert_eq!(d.lock().unwrap().1, vec![(3, vec![7])]);
    }

    #[test]
    fn unmapped_and_straddling_accesses() {
        let mut bus = Bus::new();
        bus.insert(0x100, 4, Arc::new(Mutex::new(Reg(0, vec![]))))
            .unwrap();
        let mut b = [0u8; 4];
        assert_eq!(bus.read(0x50, &mut b), Access::Unmapped);
        assert_eq!(b, [0xff; 4]);
        // Straddles the end of the device: not dispatched.
        assert_eq!(bus.read(0x102, &mut b), Access::Unmapped);
        assert_eq!(bus.write(u64::MAX, &[1, 2]), Access::Unmapped);
        // Zero-length access one past the end: not the device's (fuzz finding).
        assert_eq!(bus.write(0x104, &[]), Access::Unmapped);
    }

    #[test]
    fn accesses_near_the_top_of_the_address_space_do_not_overflow() {
        let mut bus = Bus::new();
        bus.insert(1, u64::MAX - 1, Arc::new(Mutex::new(Reg(0, vec![]))))
            .unwrap();
        let mut b = [0u8; 2];
        assert_eq!(bus.read(u64::MAX - 1, &mut b), Access::Unmapped);
        assert_eq!(bus.read(u64::MAX - 2, &mut b), Access::Handled(None));
        assert_eq!(bus.write(u64::MAX, &[1, 2, 3]), Access::Unmapped);
    }
}
