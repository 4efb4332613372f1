// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Facts about the host: kernel, CPU, KVM backend, movable memory, process counters
//! ([`info`], re-exported here), the huge page pool and THP settings ([`hugepages`]) and KVM's
//! page-size statistics ([`kvmstats`]), and what the host allows a VM ([`limits`]).

pub mod hugepages;
pub mod info;
pub mod kvmstats;
pub mod limits;

pub use info::*;
pub use limits::{CpuPlacement, HostLimits};
