// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What a VM is asked to be: plain data, validated once before anything is built.

use std::time::Duration;

use guest::Payload;
use serde::Serialize;

use crate::applies::{self, GuestKind, Mode, Opt};
use crate::arch;
use crate::host::hugepages::{self, HUGE_PAGE_SIZE};
use crate::host::{CpuPlacement, HostLimits};
use crate::inject::InjectSpec;
use crate::linux::LinuxConfig;
use crate::memory::{Backing, LoadVia};
use crate::seccomp::SeccompMode;
use crate::stage2::drain::DrainPolicy;
use crate::stage2::protected::VmType;
use crate::stage2::{FaultIn, Stage2};
use crate::sys::PAGE_SIZE;

/// Parses sizes like `64M`, `1G`, `4096`, `16K` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("'{s}': unknown unit '{c}' (use K, M or G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 64M, 1G, 65536)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parameters of the memtouch payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TouchParams {
    /// Touch every `stride_pages`-th page.
    pub stride_pages: u64,
    /// Write passes.
    pub passes: u64,
    /// Seed mixed into every value.
    pub seed: u64,
}

impl Default for TouchParams {
    fn default() -> Self {
        Self {
            stride_pages: 1,
            passes: 1,
            seed: 0x005e_ed0f_9a6e,
        }
    }
}

/// Everything needed to build and run one VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmConfig {
    pub payload: Payload,
    pub mem_size: u64,
    pub vcpus: u8,
    pub backing: Backing,
    pub policy: DrainPolicy,
    pub fault_in: FaultIn,
    pub stage2: Stage2,
    pub cpus: CpuPlacement,
    /// Fresh not-mlocked shmem pages written on the fault CPU between fault-in and pin.
    pub noise_pages: u32,
    /// Percent of guest memory written through the loader view before boot.
    pub prefill_pct: u8,
    /// Pages after a faulting page (same guest region) resolved and pinned on the same event;
    /// 0 (default) = exactly one pin per faulting page, the pKVM behaviour.
    pub fault_ahead: u32,
    pub touch: TouchParams,
    #[serde(serialize_with = "ser_secs")]
    pub timeout: Duration,
    /// Host calls made to fail (`--inject`, `--inject-pin-failure`).
    pub inject: Vec<InjectSpec>,
    /// Ordinary VM, or a pKVM protected VM whose pins KVM takes itself (`protected.rs`).
    pub vm_type: VmType,
    /// Boot this Linux kernel (and initrd) instead of `payload` (`linux.rs`).
    pub linux: Option<LinuxConfig>,
    /// Echo the guest's console to stderr as it arrives.
    #[serde(skip)]
    pub echo_console: bool,
    /// Which threads get a seccomp filter (`seccomp.rs`).
    pub seccomp: SeccompMode,
    /// `--trace`: record the kernel's `migrate:` trace events of the VM's own threads
    /// (host::trace) and read every folio's state just before its pin, to explain failed pins.
    pub trace: bool,
    /// How the resolver's threads wait for each other and what they ask of the scheduler.
    pub sched: SchedTuning,
}

/// How the VM's threads wait for each other and what they ask of the scheduler
/// (`stage2::resolver`, `sched.rs`, docs/PERFORMANCE.md).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SchedTuning {
    /// The longest a resolver thread polls for a hand-off from the other CPU before it sleeps,
    /// µs (0: never poll). It polls only while nothing else wants its CPU.
    pub spin_us: u32,
    /// vCPU and resolver threads ask the scheduler for short slices (0.1 ms; EEVDF, Linux
    /// 6.12+), so that their wake-ups preempt a busy CPU's running task.
    pub short_slice: bool,
}

impl Default for SchedTuning {
    fn default() -> Self {
        Self {
            spin_us: crate::stage2::DEFAULT_SPIN.as_micros() as u32,
            short_slice: true,
        }
    }
}

impl SchedTuning {
    pub fn spin(&self) -> Duration {
        Duration::from_micros(u64::from(self.spin_us))
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Invalid configurations, each naming the bad value and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "guest memory size {0} bytes is not a multiple of the {PAGE_SIZE}-byte page; round it (e.g. 64M)"
    )]
    MemNotPageAligned(u64),
    #[error(
        "guest memory size {size} bytes is too small: this architecture needs at least {min} bytes"
    )]
    MemTooSmall { size: u64, min: u64 },
    #[error(
        "guest memory size {size} bytes is above what pinvmm maps on this architecture ({max} bytes)"
    )]
    MemTooLarge { size: u64, max: u64 },
    #[error(
        "guest memory size {size} bytes is not a multiple of the {backing} backing's {granule}-byte granule: round it (e.g. {rounded} bytes = {rounded_mib} MiB)",
        rounded = size.next_multiple_of(*granule),
        rounded_mib = size.next_multiple_of(*granule) >> 20
    )]
    MemNotGranuleAligned {
        size: u64,
        backing: Backing,
        granule: u64,
    },
    #[error(
        "the hugetlb backing needs {needed} free 2 MiB pages, {available} are available ({total} in the pool): reserve them with `sysctl vm.nr_hugepages={want}` (or echo {want} > /proc/sys/vm/nr_hugepages) as root"
    )]
    HugePagesShort {
        needed: u64,
        available: u64,
        total: u64,
        want: u64,
    },
    #[error(
        "the hugetlb backing needs 2 MiB hugetlb pages, which this kernel does not offer (no /sys/kernel/mm/hugepages/hugepages-2048kB)"
    )]
    NoHugetlb,
    #[error(
        "the shmem-thp backing needs shmem THP to honour MADV_HUGEPAGE, but shmem_enabled is '{0}' here: `echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled` as root (or use --backing hugetlb)"
    )]
    ShmemThpDisabled(String),
    #[error("guest memory size {size} bytes is more than this host's RAM ({ram} bytes)")]
    MemAboveRam { size: u64, ram: u64 },
    #[error(
        "guest memory size {size} bytes{} needs {need} bytes of locked memory (the mlocked view, and the long-term pins charged to the same limit), above RLIMIT_MEMLOCK ({limit} bytes), and the process lacks CAP_IPC_LOCK: raise the limit (`ulimit -l`, memlock in /etc/security/limits.conf) or grant CAP_IPC_LOCK (`setcap cap_ipc_lock+ep pinvmm`), or run as root",
        if *vms > 1 { format!(" x {vms} VMs at a time") } else { String::new() }
    )]
    MemAboveMemlock {
        size: u64,
        vms: u64,
        need: u64,
        limit: u64,
    },
    #[error("vCPU count {0} is out of range: use 1 to {max}", max = MAX_VCPUS)]
    VcpuCount(u64),
    #[error("prefill {0}% is out of range: use 0 to 100")]
    Prefill(u64),
    #[error(
        "memtouch stride {0} pages is out of range: use 1 or more, smaller than the data range"
    )]
    Stride(u64),
    #[error("memtouch passes {0} is out of range: use 1 to 1000")]
    Passes(u64),
    #[error("CPU {cpu} is not one this process may run on (allowed: {allowed:?})")]
    Cpu { cpu: usize, allowed: Vec<usize> },
    #[error("timeout must be more than 0 seconds")]
    Timeout,
    #[error(
        "the anon backing has a single mapping: --stage2 {0} is not meaningful with it (use shmem)"
    )]
    AnonStage2(String),
    #[error(
        "protected VMs (--vm-type protected) exist only on arm64 hosts with kvm-arm.mode=protected (Linux 7.x); this pinvmm is built for {0}"
    )]
    ProtectedArch(&'static str),
    #[error(
        "{0} cannot be combined with --vm-type protected: userfaultfd cannot be combined with protected VMs (KVM_RUN fails with EFAULT), and KVM takes the long-term pins itself"
    )]
    ProtectedConflict(&'static str),
    /// An option that would be silently ignored in this mode (`crate::applies`).
    #[error("{option} cannot apply with {mode}: {why}; leave it out")]
    NotApplicable {
        option: String,
        mode: String,
        why: &'static str,
    },
}

/// Locked memory a VM needs beyond its guest memory (io_uring's own pages, measured at 8 KiB on
/// 6.18, and the drains' scratch pages), with room to spare.
pub const MEMLOCK_HEADROOM: u64 = 256 << 10;

/// Whether `vms` VMs of `size` bytes at a time fit RLIMIT_MEMLOCK without CAP_IPC_LOCK. Both
/// the mlock of each pin view (per process) and the io_uring long-term pins (per user, across
/// all of its processes) are charged to that limit; a pin refused for it fails with ENOMEM,
/// which would look like the failed pin pinvmm studies.
pub fn check_memlock(host: &HostLimits, size: u64, vms: u64) -> Result<(), ConfigError> {
    let need = (size + MEMLOCK_HEADROOM).saturating_mul(vms);
    match (host.memlock, host.cap_ipc_lock) {
        (Some(limit), false) if need > limit => Err(ConfigError::MemAboveMemlock {
            size,
            vms,
            need,
            limit,
        }),
        _ => Ok(()),
    }
}

/// Largest vCPU count accepted.
pub const MAX_VCPUS: u64 = 64;

impl VmConfig {
    /// A default memtouch VM of `mem_size` bytes; callers adjust fields, then [`Self::validate`].
    pub fn new(payload: Payload, mem_size: u64, cpus: CpuPlacement) -> Self {
        Self {
            payload,
            mem_size,
            vcpus: 1,
            backing: Backing::Shmem,
            policy: DrainPolicy::None,
            fault_in: FaultIn::Pin,
            stage2: Stage2::Pin,
            cpus,
            noise_pages: 0,
            prefill_pct: 0,
            fault_ahead: 0,
            touch: TouchParams::default(),
            timeout: Duration::from_secs(60),
            inject: Vec::new(),
            vm_type: VmType::Normal,
            linux: None,
            echo_console: false,
            seccomp: SeccompMode::Threads,
            trace: false,
            sched: SchedTuning::default(),
        }
    }

    /// Checks every field against the architecture and the host.
    pub fn validate(&self, host: &HostLimits) -> Result<(), ConfigError> {
        let size = self.mem_size;
        if !size.is_multiple_of(PAGE_SIZE as u64) {
            return Err(ConfigError::MemNotPageAligned(size));
        }
        let (min, max) = (arch::MIN_MEM, arch::MAX_MEM);
        if size < min {
            return Err(ConfigError::MemTooSmall { size, min });
        }
        if size > max {
            return Err(ConfigError::MemTooLarge { size, max });
        }
        let granule = self.backing.granule();
        if !size.is_multiple_of(granule) {
            return Err(ConfigError::MemNotGranuleAligned {
                size,
                backing: self.backing,
                granule,
            });
        }
        self.validate_huge_pages(host)?;
        if size > host.ram {
            return Err(ConfigError::MemAboveRam {
                size,
                ram: host.ram,
            });
        }
        check_memlock(host, size, 1)?;
        if self.vcpus == 0 || u64::from(self.vcpus) > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(self.vcpus.into()));
        }
        if self.prefill_pct > 100 {
            return Err(ConfigError::Prefill(self.prefill_pct.into()));
        }
        let data_pages = arch::data_pages(size);
        if self.touch.stride_pages == 0 || self.touch.stride_pages >= data_pages.max(2) {
            return Err(ConfigError::Stride(self.touch.stride_pages));
        }
        if self.touch.passes == 0 || self.touch.passes > 1000 {
            return Err(ConfigError::Passes(self.touch.passes));
        }
        for cpu in [self.cpus.fault_cpu, self.cpus.pin_cpu] {
            if !host.allowed_cpus.contains(&cpu) {
                return Err(ConfigError::Cpu {
                    cpu,
                    allowed: host.allowed_cpus.clone(),
                });
            }
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        if self.backing == Backing::Anon && self.stage2 == Stage2::Uffd {
            return Err(ConfigError::AnonStage2("uffd".into()));
        }
        if self.vm_type == VmType::Protected {
            self.validate_protected()?;
        }
        self.check_applies(&[])
    }

    /// The mode `crate::applies` judges options against.
    pub fn mode(&self) -> Mode {
        Mode {
            stage2: self.stage2,
            vm_type: self.vm_type,
            guest: match (&self.linux, self.payload) {
                (Some(_), _) => GuestKind::Linux,
                (None, Payload::Memtouch) => GuestKind::Memtouch,
                (None, _) => GuestKind::OtherPayload,
            },
            backing: self.backing,
            fault_in: self.fault_in,
            policy: self.policy,
        }
    }

    /// Refuses every option with a value other than its default, and each of `also` (options
    /// the caller knows were given, such as `--fault-cpu`), that cannot apply to this mode.
    pub fn check_applies(&self, also: &[Opt]) -> Result<(), ConfigError> {
        let d = TouchParams::default();
        let t = self.touch;
        let mut opts = applies::given(
            self.policy,
            self.fault_in,
            self.trace,
            self.noise_pages,
            self.prefill_pct,
            self.fault_ahead,
            [
                t.stride_pages != d.stride_pages,
                t.passes != d.passes,
                t.seed != d.seed,
            ],
            self.inject.iter().map(|i| i.site),
        );
        opts.extend_from_slice(also);
        match applies::first_refused(&opts, &self.mode()) {
            Some((option, mode, why)) => Err(ConfigError::NotApplicable { option, mode, why }),
            None => Ok(()),
        }
    }

    /// The huge page backings need the host's pool or THP setting (checked again, with the
    /// same advice, when the memory is mapped: the pool may shrink in between).
    fn validate_huge_pages(&self, host: &HostLimits) -> Result<(), ConfigError> {
        match self.backing {
            Backing::Hugetlb => {
                let pool = host.hugetlb.ok_or(ConfigError::NoHugetlb)?;
                let needed = self.mem_size / HUGE_PAGE_SIZE;
                if pool.available() < needed {
                    return Err(ConfigError::HugePagesShort {
                        needed,
                        available: pool.available(),
                        total: pool.total,
                        want: pool.total_for(needed),
                    });
                }
            }
            Backing::ShmemThp => {
                let mode = host.shmem_thp_mode.as_deref().unwrap_or("never");
                if !hugepages::shmem_thp_mode_allows_madvise(mode) {
                    return Err(ConfigError::ShmemThpDisabled(mode.into()));
                }
            }
            Backing::Shmem | Backing::Anon => {}
        }
        Ok(())
    }

    /// A protected VM has no userfaultfd resolver: only the options that apply to KVM's own
    /// pins are accepted.
    fn validate_protected(&self) -> Result<(), ConfigError> {
        if !cfg!(target_arch = "aarch64") {
            return Err(ConfigError::ProtectedArch(std::env::consts::ARCH));
        }
        let conflict = [
            (
                self.stage2 != Stage2::Pin,
                "--stage2 (other than the default)",
            ),
            (
                self.backing != Backing::Shmem,
                "--backing (other than shmem)",
            ),
            (
                self.fault_in != FaultIn::Pin,
                "--fault-in touch (KVM's pin faults the page in itself)",
            ),
            (self.noise_pages > 0, "--noise"),
            (self.fault_ahead > 0, "--fault-ahead"),
            (!self.inject.is_empty(), "--inject"),
        ];
        match conflict.iter().find(|(bad, _)| *bad) {
            Some((_, what)) => Err(ConfigError::ProtectedConflict(what)),
            None => Ok(()),
        }
    }

    /// Through which mapping the VMM loads the guest: the mlocked pin view on a loader
    /// thread when the run is pKVM-exact (a protected VM; a normal VM whose pins fault pages
    /// in themselves, on a memfd backing), else the page cache (`crate::loader`).
    pub fn load_via(&self) -> LoadVia {
        let exact = self.vm_type == VmType::Protected
            || (self.stage2 == Stage2::Pin
                && self.fault_in == FaultIn::Pin
                && self.backing.is_memfd());
        if exact {
            LoadVia::Mlocked
        } else {
            LoadVia::PageCache
        }
    }

    /// The model this run's numbers come from (docs/DESIGN.md, vocabulary): `pkvm-exact`, a
    /// `stress:` model, or a `baseline:` without long-term pins per fault. With fault-ahead
    /// the pKVM-exact placement is `pkvm-placement+fault-aheadK`, not `pkvm-exact`: it pins
    /// pages the guest has not touched yet, which pKVM never does.
    pub fn model(&self) -> String {
        let mut m = match (self.vm_type, self.stage2, self.fault_in) {
            (VmType::Protected, _, _) => "pkvm-exact".to_owned(),
            (_, Stage2::Pin, FaultIn::Pin) if self.fault_ahead > 0 => "pkvm-placement".to_owned(),
            (_, Stage2::Pin, FaultIn::Pin) => "pkvm-exact".to_owned(),
            (_, Stage2::Pin, f) => format!("stress:{f}"),
            (_, s, _) => format!("baseline:stage2-{s}"),
        };
        if self.noise_pages > 0 {
            m = format!(
                "stress:{}+noise{}",
                m.trim_start_matches("stress:"),
                self.noise_pages
            );
        }
        if self.fault_ahead > 0 {
            m += &format!("+fault-ahead{}", self.fault_ahead);
        }
        m
    }

    /// Number of guest pages.
    pub fn pages(&self) -> u64 {
        self.mem_size / PAGE_SIZE as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostLimits {
        HostLimits {
            ram: 8 << 30,
            memlock: Some(64 << 10),
            cap_ipc_lock: false,
            allowed_cpus: vec![0, 1],
            hugetlb: Some(hugepages::HugetlbPool {
                total: 8,
                free: 8,
                reserved: 0,
            }),
            shmem_thp_mode: Some("never".into()),
        }
    }

    fn cfg(size: u64) -> VmConfig {
        VmConfig::new(
            Payload::Memtouch,
            size,
            CpuPlacement {
                fault_cpu: 0,
                pin_cpu: 1,
                free: false,
            },
        )
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").unwrap_err().contains("unknown unit"));
        assert!(parse_size("lots").is_err());
        assert!(
            parse_size("99999999999G")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn validation_names_the_bad_value() {
        let mut h = host();
        h.cap_ipc_lock = true;
        assert_eq!(cfg(64 << 20).validate(&h), Ok(()));
        assert_eq!(
            cfg((64 << 20) + 1).validate(&h),
            Err(ConfigError::MemNotPageAligned((64 << 20) + 1))
        );
        assert!(matches!(
            cfg(4096).validate(&h),
            Err(ConfigError::MemTooSmall { .. })
        ));
        assert!(matches!(
            cfg(16 << 30).validate(&h),
            Err(ConfigError::MemAboveRam { .. }) | Err(ConfigError::MemTooLarge { .. })
        ));
        assert!(matches!(
            cfg(64 << 20).validate(&host()),
            Err(ConfigError::MemAboveMemlock { .. })
        ));
        let mut c = cfg(64 << 20);
        c.vcpus = 0;
        assert_eq!(c.validate(&h), Err(ConfigError::VcpuCount(0)));
        let mut c = cfg(64 << 20);
        c.cpus.pin_cpu = 7;
        assert!(c.validate(&h).unwrap_err().to_string().contains("CPU 7"));
        let mut c = cfg(64 << 20);
        c.prefill_pct = 101;
        assert_eq!(c.validate(&h), Err(ConfigError::Prefill(101)));
    }

    #[test]
    fn huge_page_backings_check_size_and_host() {
        let mut h = host();
        h.cap_ipc_lock = true;
        let mut c = cfg(16 << 20);
        c.backing = Backing::Hugetlb;
        assert_eq!(c.validate(&h), Ok(()));
        c.mem_size = (16 << 20) + 4096;
        let e = c.validate(&h).unwrap_err();
        assert!(
            matches!(e, ConfigError::MemNotGranuleAligned { granule, .. } if granule == 2 << 20)
        );
        assert!(e.to_string().contains("18 MiB"), "{e}");
        c.mem_size = 32 << 20;
        let e = c.validate(&h).unwrap_err();
        assert_eq!(
            e,
            ConfigError::HugePagesShort {
                needed: 16,
                available: 8,
                total: 8,
                want: 16
            }
        );
        assert!(e.to_string().contains("vm.nr_hugepages=16"), "{e}");
        h.hugetlb = None;
        assert_eq!(c.validate(&h), Err(ConfigError::NoHugetlb));
        c.backing = Backing::ShmemThp;
        let e = c.validate(&h).unwrap_err().to_string();
        assert!(e.contains("'never'") && e.contains("shmem_enabled"), "{e}");
        h.shmem_thp_mode = Some("advise".into());
        assert_eq!(c.validate(&h), Ok(()));
        assert_eq!(Backing::ShmemThp.granule(), 2 << 20);
        assert_eq!(Backing::Anon.granule(), 4096);
    }

    #[test]
    fn protected_vms_reject_userfaultfd_options() {
        let mut h = host();
        h.cap_ipc_lock = true;
        let mut c = cfg(64 << 20);
        c.vm_type = VmType::Protected;
        if !cfg!(target_arch = "aarch64") {
            let e = c.validate(&h).unwrap_err().to_string();
            assert!(e.contains("arm64"), "{e}");
            return;
        }
        assert_eq!(c.validate(&h), Ok(()));
        c.stage2 = Stage2::Uffd;
        let e = c.validate(&h).unwrap_err().to_string();
        assert!(e.contains("--stage2") && e.contains("userfaultfd"), "{e}");
        c.stage2 = Stage2::Pin;
        c.fault_in = FaultIn::Touch;
        assert!(
            c.validate(&h)
                .unwrap_err()
                .to_string()
                .contains("--fault-in")
        );
    }

    #[test]
    fn the_default_run_is_pkvm_exact_and_stress_models_say_so() {
        let mut c = cfg(64 << 20);
        assert_eq!(
            (c.model().as_str(), c.load_via()),
            ("pkvm-exact", LoadVia::Mlocked)
        );
        c.fault_in = FaultIn::Touch;
        assert_eq!(
            (c.model().as_str(), c.load_via()),
            ("stress:touch", LoadVia::PageCache)
        );
        c.fault_in = FaultIn::Touch;
        c.noise_pages = 31;
        assert_eq!(c.model(), "stress:touch+noise31");
        c.fault_in = FaultIn::Pin;
        c.noise_pages = 0;
        c.stage2 = Stage2::Kernel;
        assert_eq!(
            (c.model().as_str(), c.load_via()),
            ("baseline:stage2-kernel", LoadVia::PageCache)
        );
        c.stage2 = Stage2::Pin;
        c.backing = Backing::Anon;
        assert_eq!(c.load_via(), LoadVia::PageCache, "anon stages its pages");
    }

    /// Fault-ahead pins pages the guest has not touched yet (pKVM pins only the faulting
    /// page): with the pKVM-exact placement it is named for what it is, never `pkvm-exact`.
    #[test]
    fn fault_ahead_is_never_called_pkvm_exact() {
        let mut c = cfg(64 << 20);
        c.fault_ahead = 15;
        assert_eq!(
            (c.model().as_str(), c.load_via()),
            ("pkvm-placement+fault-ahead15", LoadVia::Mlocked)
        );
        assert!(!c.model().starts_with("pkvm-exact"));
        c.fault_in = FaultIn::Touch;
        assert_eq!(c.model(), "stress:touch+fault-ahead15");
        c.fault_in = FaultIn::Pin;
        c.stage2 = Stage2::Uffd;
        assert_eq!(c.model(), "baseline:stage2-uffd+fault-ahead15");
        c.stage2 = Stage2::Pin;
        c.fault_ahead = 0;
        assert_eq!(c.model(), "pkvm-exact");
    }

    /// Every option against every mode (stage 2, VM type, guest vs kernel, backing, fault-in,
    /// policy): `validate` accepts the option exactly where `applies::refusal` says it applies,
    /// and otherwise refuses it with one line naming the option and the mode.
    #[test]
    fn every_option_against_every_mode() {
        use crate::inject::InjectSpec;
        let mut h = host();
        h.cap_ipc_lock = true;
        h.shmem_thp_mode = Some("advise".into());
        h.hugetlb = Some(hugepages::HugetlbPool {
            total: 64,
            free: 64,
            reserved: 0,
        });
        let (mut checked, mut refused) = (0, 0);
        let vm_types: &[VmType] = if cfg!(target_arch = "aarch64") {
            &VmType::ALL
        } else {
            &[VmType::Normal]
        };
        for &vm_type in vm_types {
            for stage2 in Stage2::ALL {
                for backing in Backing::ALL {
                    for fault_in in FaultIn::ALL {
                        for policy in DrainPolicy::ALL {
                            for guest in [Payload::Memtouch, Payload::Hello, Payload::Spin] {
                                for linux in [false, true] {
                                    let mut c = cfg(64 << 20);
                                    (c.vm_type, c.stage2, c.backing) = (vm_type, stage2, backing);
                                    (c.fault_in, c.policy, c.payload) = (fault_in, policy, guest);
                                    if linux {
                                        c.linux = Some(LinuxConfig {
                                            kernel: "Image".into(),
                                            initrd: None,
                                            cmdline: String::new(),
                                        });
                                    }
                                    // Only modes that are valid on their own.
                                    if c.validate(&h).is_err() {
                                        continue;
                                    }
                                    for opt in Opt::all() {
                                        if (opt == Opt::Policy && policy != DrainPolicy::None)
                                            || (opt == Opt::FaultInTouch
                                                && fault_in == FaultIn::Touch)
                                        {
                                            continue;
                                        }
                                        let mut d = c.clone();
                                        let mut also = vec![];
                                        match opt {
                                            Opt::Policy => d.policy = DrainPolicy::MlockDrain,
                                            Opt::FaultInTouch => d.fault_in = FaultIn::Touch,
                                            Opt::Noise => d.noise_pages = 16,
                                            Opt::Prefill => d.prefill_pct = 50,
                                            Opt::FaultAhead => d.fault_ahead = 15,
                                            Opt::Stride => d.touch.stride_pages = 2,
                                            Opt::Passes => d.touch.passes = 2,
                                            Opt::Seed => d.touch.seed = 7,
                                            Opt::Trace => d.trace = true,
                                            Opt::FaultCpu | Opt::PinCpu => also.push(opt),
                                            Opt::Inject(site) => {
                                                d.inject = vec![InjectSpec::new(site, 1, libc::EIO)]
                                            }
                                        }
                                        let got =
                                            d.validate(&h).and_then(|()| d.check_applies(&also));
                                        let want = applies::refusal(opt, &d.mode());
                                        // Protected VMs refuse their resolver options before
                                        // the table, with a message of their own.
                                        let protected_conflict =
                                            matches!(got, Err(ConfigError::ProtectedConflict(_)));
                                        checked += 1;
                                        match (want, &got) {
                                            (None, Ok(())) => {}
                                            (Some(_), Err(_)) if protected_conflict => refused += 1,
                                            (Some(why), Err(e)) => {
                                                refused += 1;
                                                let m = e.to_string();
                                                assert!(
                                                    m.contains(&opt.flag())
                                                        && m.contains(why)
                                                        && m.contains(&d.mode().describe(opt))
                                                        && !m.contains('\n'),
                                                    "{opt:?}: {m}"
                                                );
                                            }
                                            _ => panic!(
                                                "{opt:?} in {:?}: table says {want:?}, validate {got:?}",
                                                d.mode()
                                            ),
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            checked > 5000 && refused > 1000,
            "{checked} checked, {refused} refused"
        );
    }
}
