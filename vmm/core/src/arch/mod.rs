// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Architecture split, Firecracker-style: each arch module exports the same names, and callers
//! write `arch::configure_vcpu(..)` with no `cfg` of their own.

use guest::PayloadArgs;
use serde::Serialize;

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
    #[error("KVM lacks {cap} (needed for {why})")]
    MissingCap {
        cap: &'static str,
        why: &'static str,
    },
    #[cfg(target_arch = "aarch64")]
    #[error("{vcpus} vCPUs do not fit the GICv3 redistributor region (at most {max})")]
    TooManyVcpus { vcpus: usize, max: u64 },
    #[cfg(target_arch = "x86_64")]
    #[error("cannot build the MSR list: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
    #[cfg(target_arch = "x86_64")]
    #[error("KVM set {set} of {of} boot MSRs (MISC_ENABLE, MTRRdefType)")]
    MsrsSet { set: usize, of: usize },
    #[cfg(target_arch = "aarch64")]
    #[error("cannot set up the in-kernel GICv3 ({step}): {err}")]
    Gic {
        step: &'static str,
        err: kvm_ioctls::Error,
    },
}

/// Which input file of a Linux boot something is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootFile {
    Kernel,
    Initrd,
}

impl std::fmt::Display for BootFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootFile::Kernel => "kernel",
            BootFile::Initrd => "initrd",
        })
    }
}

/// A guest-physical range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpaRange {
    pub start: u64,
    pub len: u64,
}

impl GpaRange {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// What an arch's Linux loader placed, and where the boot vCPU starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinuxBoot {
    /// First instruction of the boot vCPU (arm64: the Image's load address; x86_64: the
    /// 64-bit entry of the protected-mode kernel).
    pub entry: u64,
    /// arm64: the device tree (x0 at entry); x86_64: boot_params (rsi at entry).
    pub boot_info: u64,
    /// The loaded kernel, including the memory its header says it needs beyond the file.
    pub kernel: GpaRange,
    pub initrd: Option<GpaRange>,
    /// The exact command line the guest was given.
    pub cmdline: String,
}

/// Why a kernel or initrd could not be loaded. The arch loaders do not know the paths:
/// `crate::linux` puts "kernel PATH: " or "initrd PATH: " in front, using [`Self::file`].
#[derive(Debug, thiserror::Error)]
pub enum LinuxLoadError {
    /// Not the kernel format this architecture boots.
    #[error("not {expected}: {found}")]
    NotAKernel {
        expected: &'static str,
        found: String,
    },
    /// Shorter than its own header (or the format) says.
    #[error("truncated: {len} bytes, but {need} bytes are needed ({why})")]
    Truncated {
        file: BootFile,
        len: u64,
        need: u64,
        why: String,
    },
    /// Damaged contents (bad compressed stream, bad archive).
    #[error("corrupt: {1}")]
    Corrupt(BootFile, String),
    /// A well-formed image this loader cannot boot.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Kernel, initrd and boot structures do not fit guest memory.
    #[error(
        "not enough guest memory for {what}: {need} bytes needed, {room} available: raise --mem"
    )]
    TooLarge {
        file: BootFile,
        what: String,
        need: u64,
        room: u64,
    },
    #[error("cannot read: {err}")]
    Read { file: BootFile, err: std::io::Error },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing guest memory or an arch boot structure (device tree, boot_params) failed:
    /// `what` says which.
    #[error("{what}: {err}")]
    Setup {
        what: &'static str,
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl LinuxLoadError {
    /// A failed step of the boot setup: `what` failed with `err`.
    pub fn setup<E>(what: &'static str) -> impl Fn(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |err| Self::Setup {
            what,
            err: Box::new(err),
        }
    }

    /// The file the error is about, if it is about one.
    pub fn file(&self) -> Option<BootFile> {
        match self {
            Self::NotAKernel { .. } | Self::Unsupported(_) => Some(BootFile::Kernel),
            Self::Truncated { file, .. }
            | Self::TooLarge { file, .. }
            | Self::Read { file, .. }
            | Self::Corrupt(file, _) => Some(*file),
            Self::Cmdline(_) | Self::Setup { .. } => None,
        }
    }
}

pub mod exceptions;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::{
    DATA_START, LINUX_CMDLINE_BASE, MAX_MEM, MIN_MEM, RAM_START, RESET_DEVICE, RTC_DEVICE, SERIAL,
    SERIAL_IRQ, TESTDEV, boot_segments, configure_vcpu, configure_vcpu_linux, far_unmapped_gpa,
    finish_vcpus, load_boot_image, load_linux, setup_linux_vm, setup_vm,
};

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::{
    DATA_START, LINUX_CMDLINE_BASE, MAX_MEM, MIN_MEM, RAM_START, RESET_DEVICE, RTC_DEVICE, SERIAL,
    SERIAL_IRQ, TESTDEV, boot_segments, configure_vcpu, configure_vcpu_linux, far_unmapped_gpa,
    finish_vcpus, load_boot_image, load_linux, setup_linux_vm, setup_vm,
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
                vcpu: v,
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
