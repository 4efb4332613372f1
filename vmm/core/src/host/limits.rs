// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What this host allows a VM: RAM, the mlock limit, the CPUs this process may use, the huge
//! page pool and THP mode; configuration validation checks a VM against them.

use serde::Serialize;

use super::hugepages;
use crate::sys;

/// Where the resolver's two halves run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CpuPlacement {
    /// CPU of the fault-in thread (and of the targeted drain).
    pub fault_cpu: usize,
    /// CPU of the pin thread.
    pub pin_cpu: usize,
    /// `--cpus free`: no thread is placed on a CPU (the loader, the resolver's threads, the
    /// vCPUs): the scheduler decides, as for crosvm without `--cpu-affinity`. `fault_cpu` and
    /// `pin_cpu` then only say which resolver thread is which.
    pub free: bool,
}

/// Host facts validation needs (kept separate so tests can pass their own).
#[derive(Debug, Clone)]
pub struct HostLimits {
    pub ram: u64,
    pub memlock: Option<u64>,
    pub cap_ipc_lock: bool,
    pub allowed_cpus: Vec<usize>,
    /// The 2 MiB hugetlb pool (None: the kernel has none).
    pub hugetlb: Option<hugepages::HugetlbPool>,
    /// The effective shmem THP mode for 2 MiB folios (None: unknown, no THP).
    pub shmem_thp_mode: Option<String>,
}

impl HostLimits {
    /// Reads this host's limits.
    pub fn probe() -> Self {
        Self {
            ram: super::info::mem_total_bytes().unwrap_or(u64::MAX),
            memlock: sys::memlock_limit(),
            cap_ipc_lock: sys::has_cap_ipc_lock(),
            allowed_cpus: sys::allowed_cpus(),
            hugetlb: hugepages::HugetlbPool::probe(),
            shmem_thp_mode: hugepages::shmem_thp_mode().ok(),
        }
    }

    /// Default placement: two different CPUs when the host has them (fault-in and pin on
    /// different CPUs is the case that fails on unfixed kernels), else one.
    pub fn default_placement(&self) -> CpuPlacement {
        let f = self.allowed_cpus.first().copied().unwrap_or(0);
        let p = self.allowed_cpus.get(1).copied().unwrap_or(f);
        CpuPlacement {
            fault_cpu: f,
            pin_cpu: p,
            free: false,
        }
    }
}
