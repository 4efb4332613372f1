// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Eager stage 2 (`--stage2 eager`): every guest page faulted in, drained as the policy says
//! and long-term pinned before the first instruction — the baseline without faults.

use std::sync::Arc;

use super::drain::{DrainPolicy, Drainer};
use super::pin::PinTable;
use crate::inject::Injector;
use crate::memory::GuestMemory;
use crate::sys::{self, PAGE_SIZE};

/// Faults in and pins every page before boot (`--stage2 eager`). The returned table holds
/// the pins until it is dropped.
pub fn pin_all_eagerly(
    mem: &GuestMemory,
    policy: DrainPolicy,
    faults: &Arc<Injector>,
) -> Result<(PinTable, Drainer), String> {
    let g = mem.granule();
    let mut table = PinTable::new(mem.granules())
        .with_injector(faults.clone())
        .with_granule(g);
    let mut drainer = Drainer::new(policy)
        .map_err(|e| e.to_string())?
        .with_injector(faults.clone());
    let cpu = sys::current_cpu().unwrap_or(0);
    for page in 0..mem.granules() {
        let off = page as usize * g;
        for o in (off..off + g).step_by(PAGE_SIZE) {
            mem.pin_view().touch_read(o);
        }
        drainer.after_fault_in(cpu).map_err(|e| e.to_string())?;
        drainer.before_pin().map_err(|e| e.to_string())?;
        let hva = mem.pin_view().addr() + page * g as u64;
        table.pin(page, hva).map_err(|e| e.to_string())?;
    }
    Ok((table, drainer))
}
