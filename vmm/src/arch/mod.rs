// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Architecture split, Firecracker-style: each arch module exports the same names, and callers
//! write `arch::configure_vcpu(..)` with no `cfg` of their own.

use guest::PayloadArgs;

/// Where a device lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAddr {
    /// x86 I/O port.
    Pio(u64),
    /// Memory-mapped.
    Mmio(u64),
}

impl DeviceAddr {
    pub fn addr(self) -> u64 {
        match self {
            DeviceAddr::Pio(a) | DeviceAddr::Mmio(a) => a,
        }
    }
}

/// Errors of the arch layer.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("cannot read the vCPU's {what}: {err}")]
    Get {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("cannot set the vCPU's {what}: {err}")]
    Set {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("cannot write the boot image: {0}")]
    Image(#[from] crate::memory::MemoryError),
    #[error("the payload ({len} bytes) does not fit its {max}-byte slot")]
    PayloadTooLarge { len: usize, max: u64 },
    #[error("{0}")]
    Vm(String),
    #[cfg(target_arch = "aarch64")]
    #[error("cannot set up the in-kernel GICv3 ({step}): {err}")]
    Gic {
        step: &'static str,
        err: kvm_ioctls::Error,
    },
}

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::{
    DATA_START, MAX_MEM, MIN_MEM, RAM_START, SERIAL, TESTDEV, configure_vcpu, finish_vcpus,
    load_boot_image, setup_vm,
};

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::{
    DATA_START, MAX_MEM, MIN_MEM, RAM_START, SERIAL, TESTDEV, configure_vcpu, finish_vcpus,
    load_boot_image, setup_vm,
};

/// Guest pages memtouch may use: from DATA_START to the end of RAM.
pub fn data_pages(mem_size: u64) -> u64 {
    (RAM_START + mem_size).saturating_sub(DATA_START) / crate::sys::PAGE_SIZE as u64
}

/// Splits the memtouch range across `vcpus`: each vCPU gets a contiguous share of the touched
/// pages (every `stride`-th page of the data range).
pub fn split_touch_range(mem_size: u64, vcpus: u8, base: PayloadArgs) -> Vec<PayloadArgs> {
    let page = crate::sys::PAGE_SIZE as u64;
    let stride_pages = (base.stride / page).max(1);
    let touched = data_pages(mem_size).div_ceil(stride_pages);
    let n = u64::from(vcpus.max(1));
    (0..n)
        .map(|v| {
            let first = touched * v / n;
            let last = touched * (v + 1) / n;
            PayloadArgs {
                start: DATA_START + first * stride_pages * page,
                pages: last - first,
                ..base
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_touched_page_once() {
        let base = PayloadArgs {
            stride: 3 * 4096,
            passes: 1,
            ..Default::default()
        };
        let mem = DATA_START - RAM_START + 100 * 4096;
        let parts = split_touch_range(mem, 3, base);
        let addrs: Vec<u64> = parts
            .iter()
            .flat_map(|p| p.memtouch_addrs().collect::<Vec<_>>())
            .collect();
        let want: Vec<u64> = (0..34).map(|i| DATA_START + i * 3 * 4096).collect();
        assert_eq!(addrs, want);
        assert!(addrs.iter().all(|&a| a < RAM_START + mem));
    }
}
