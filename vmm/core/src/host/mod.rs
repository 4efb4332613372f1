// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Facts about the host: kernel, CPU, KVM backend, movable memory, process counters
//! ([`info`], re-exported here), the huge page pool and THP settings ([`hugepages`]) and KVM's
//! page-size statistics ([`kvmstats`]), what the host allows a VM ([`limits`]), the state of
//! the folio behind a page ([`folio`]: PFN, zone, kpageflags) and the kernel's own trace of a
//! VM's page migrations ([`trace`]: tracefs).

pub mod folio;
pub mod hugepages;
pub mod info;
pub mod kvmstats;
pub mod limits;
pub mod trace;

pub use info::*;
pub use limits::{CpuPlacement, HostLimits};
