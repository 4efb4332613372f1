// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! KVM's binary statistics of a VM (`KVM_GET_STATS_FD`, Linux 5.14+): here, how many guest
//! pages KVM maps with 4 KiB and 2 MiB stage-2 (or shadow) entries — what a huge page backing
//! really buys. Hand-written: kvm-ioctls has no wrapper for the stats file.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl;

vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

/// `struct kvm_stats_header`: six u32.
const HEADER_LEN: usize = 24;
/// `struct kvm_stats_desc` without its name.
const DESC_LEN: usize = 16;

/// Leaf mappings KVM holds for the guest right now, by size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KvmPageSizes {
    pub pages_4k: u64,
    pub pages_2m: u64,
}

/// Named statistics of one VM, opened (an ioctl) once, read (pread) any time later — also
/// after the main thread's seccomp filter, which allows no ioctl, is in place.
#[derive(Debug)]
pub struct VmStats {
    file: File,
    /// File offset of each asked-for statistic's value (None: the kernel has none).
    offsets: Vec<Option<u64>>,
}

impl VmStats {
    /// Opens the VM's statistics and finds `names` among them.
    pub fn open(vm: &VmFd, names: &[&str]) -> io::Result<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
        let fd = unsafe { ioctl(vm, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by the kernel and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)?;
        let (name_size, num_desc) = (word(&header, 1) as usize, word(&header, 2) as usize);
        let (desc_offset, data_offset) = (u64::from(word(&header, 4)), u64::from(word(&header, 5)));
        let desc_size = DESC_LEN + name_size;
        let mut descs = vec![0u8; desc_size * num_desc];
        file.read_exact_at(&mut descs, desc_offset)?;
        let mut offsets = vec![None; names.len()];
        for d in descs.chunks_exact(desc_size) {
            let name_bytes = &d[DESC_LEN..];
            let len = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_size);
            let name = std::str::from_utf8(&name_bytes[..len]).unwrap_or("");
            if let Some(i) = names.iter().position(|n| *n == name) {
                // kvm_stats_desc: flags u32, exponent s16, size u16, offset u32, bucket u32.
                offsets[i] = Some(data_offset + u64::from(word(d, 2)));
            }
        }
        Ok(Self { file, offsets })
    }

    /// The current value of each statistic asked for at [`Self::open`].
    pub fn read(&self) -> io::Result<Vec<Option<u64>>> {
        self.offsets
            .iter()
            .map(|o| {
                o.map(|at| {
                    let mut v = [0u8; 8];
                    self.file.read_exact_at(&mut v, at)?;
                    Ok(u64::from_ne_bytes(v))
                })
                .transpose()
            })
            .collect()
    }
}

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// `pages_4k` and `pages_2m` of a VM (x86 KVM keeps them; arm64 does not).
#[derive(Debug)]
pub struct PageSizeStats(VmStats);

impl PageSizeStats {
    /// None where the kernel has no stats fd or no such statistics.
    pub fn open(vm: &VmFd) -> Option<Self> {
        let s = VmStats::open(vm, &["pages_4k", "pages_2m"]).ok()?;
        s.offsets.iter().all(Option::is_some).then_some(Self(s))
    }

    pub fn read(&self) -> Option<KvmPageSizes> {
        match self.0.read().ok()?[..] {
            [Some(pages_4k), Some(pages_2m)] => Some(KvmPageSizes { pages_4k, pages_2m }),
            _ => None,
        }
    }
}

// arm64 KVM keeps no page-size statistics.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::testing::Need;

    #[test]
    fn a_fresh_vm_maps_nothing() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                let why = format!("cannot open /dev/kvm: {e}");
                return crate::testing::skip("a_fresh_vm_maps_nothing", Need::Kvm, why);
            }
        };
        let vm = kvm.create_vm().unwrap();
        let s = VmStats::open(&vm, &["pages_4k", "no_such_stat"]).unwrap();
        assert_eq!(s.read().unwrap(), vec![Some(0), None]);
        let p = PageSizeStats::open(&vm).unwrap();
        assert_eq!(p.read(), Some(KvmPageSizes::default()));
    }
}
