// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Eager stage 2 (`--stage2 eager`): every guest page faulted in, drained as the policy says
//! and long-term pinned before the first instruction — the baseline without faults.

use std::sync::Arc;

use super::drain::{DrainError, DrainPolicy, Drainer};
use super::pin::{PinError, PinTable};
use crate::control::HostFailure;
use crate::inject::Injector;
use crate::memory::GuestMemory;
use crate::sys::{self, PAGE_SIZE};

/// Why eager pinning failed (the VM is not built: exit 1).
#[derive(Debug, thiserror::Error)]
pub enum EagerError {
    /// The drainer's scratch page could not be mapped.
    #[error(transparent)]
    Drainer(DrainError),
    #[error("draining before the pin of GPA {gpa:#x}: {err}")]
    Drain { gpa: u64, err: DrainError },
    #[error("at GPA {gpa:#x}: {err}")]
    Pin { gpa: u64, err: PinError },
}

impl EagerError {
    /// For the report: the failed host call (a drain or pin site), on the building thread.
    pub fn host_failure(&self) -> Option<HostFailure> {
        const THREAD: &str = "main";
        match self {
            EagerError::Drainer(_) => None,
            EagerError::Drain { gpa, err } => Some(err.host_failure(THREAD, *gpa)),
            EagerError::Pin { gpa, err } => {
                Some(err.host_failure(THREAD, *gpa, format!("pinning before boot: {self}")))
            }
        }
    }
}

/// Faults in and pins every page before boot (`--stage2 eager`). The returned table holds
/// the pins until it is dropped.
pub fn pin_all_eagerly(
    mem: &GuestMemory,
    policy: DrainPolicy,
    faults: &Arc<Injector>,
) -> Result<(PinTable, Drainer), EagerError> {
    let g = mem.granule();
    let mut table = PinTable::new(mem.granules())
        .with_injector(faults.clone())
        .with_granule(g);
    let mut drainer = Drainer::new(policy)
        .map_err(EagerError::Drainer)?
        .with_injector(faults.clone());
    let cpu = sys::current_cpu().unwrap_or(0);
    for page in 0..mem.granules() {
        let off = page as usize * g;
        for o in (off..off + g).step_by(PAGE_SIZE) {
            mem.pin_view().touch_read(o);
        }
        let gpa = mem.base() + page * g as u64;
        let drained = drainer
            .after_fault_in(cpu)
            .and_then(|()| drainer.before_pin());
        drained.map_err(|err| EagerError::Drain { gpa, err })?;
        let hva = mem.pin_view().addr() + page * g as u64;
        table
            .pin(page, hva)
            .map_err(|err| EagerError::Pin { gpa, err })?;
    }
    Ok((table, drainer))
}
