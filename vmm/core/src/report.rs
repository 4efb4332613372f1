// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The run report: JSON for programs, a short summary for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::config::VmConfig;
use crate::control::VcpuOutcome;
use crate::control::{HostFailure, Termination};
use crate::exit_code::ExitCode;
use crate::host::{self, GupFix};
use crate::inject::InjectionReport;
use crate::stage2::ResolverReport;
use crate::vcpu::ExitCounts;

/// How the VM ended, from the user's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Completed,
    GuestFailed,
    Terminated,
    Timeout,
    VmmError,
}

impl Outcome {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Completed => ExitCode::Ok,
            Outcome::GuestFailed => ExitCode::GuestFailed,
            Outcome::Terminated => ExitCode::PinTerminated,
            Outcome::Timeout => ExitCode::Timeout,
            Outcome::VmmError => ExitCode::VmmError,
        }
    }
}

/// Facts about the host the VM ran on.
#[derive(Debug, Clone, Serialize)]
pub struct HostFacts {
    pub kernel_release: String,
    pub kernel_version: String,
    pub gup_fix: GupFix,
    pub cpu: String,
    pub online_cpus: usize,
    pub kvm_backend: String,
    pub movable_bytes: u64,
    pub cma_bytes: u64,
}

impl HostFacts {
    pub fn probe() -> Self {
        let version = host::kernel_version();
        Self {
            kernel_release: host::kernel_release(),
            gup_fix: host::gup_fix_status(&version),
            kernel_version: version,
            cpu: host::cpu_model(),
            online_cpus: crate::sys::allowed_cpus().len(),
            kvm_backend: host::kvm_backend(),
            movable_bytes: host::movable_pages() * crate::sys::PAGE_SIZE as u64,
            cma_bytes: host::cma_total_bytes().unwrap_or(0),
        }
    }

    /// Whether a pin can need a migration at all here.
    pub fn has_unpinnable_memory(&self) -> bool {
        self.movable_bytes > 0 || self.cma_bytes > 0
    }
}

/// One vCPU's result.
#[derive(Debug, Clone, Serialize)]
pub struct VcpuResult {
    pub id: u8,
    pub outcome: VcpuOutcome,
    pub result: u64,
    /// What a correct guest reports (memtouch checksum); None when there is nothing to check.
    pub expected: Option<u64>,
    pub errors: u64,
    pub touched_pages: u64,
    pub exits: ExitCounts,
    pub bad_device_writes: u64,
    /// memtouch: time of the first write pass (MARK 1 to MARK 2), when every page is touched
    /// for the first time.
    pub first_touch_ms: Option<f64>,
}

/// /proc/self/status values (KiB) around the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemAccounting {
    pub vm_pin_kb_before: u64,
    pub vm_pin_kb_running: u64,
    pub vm_pin_kb_after: u64,
    pub vm_lck_kb_before: u64,
    pub vm_lck_kb_running: u64,
    pub vm_lck_kb_after: u64,
    pub open_fds_before: usize,
    pub open_fds_after: usize,
    /// The process's resident memory by kind while the VM ran (its guest memory is shmem for
    /// the shmem backing: RssShmem counts it once per mapped view).
    pub rss_anon_kb_running: u64,
    pub rss_file_kb_running: u64,
    pub rss_shmem_kb_running: u64,
}

/// The granule guest memory was resolved in, and what the host really used while the VM ran
/// (a huge page backing asks for 2 MiB; whether the pin and KVM got 2 MiB is measured).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GranuleFacts {
    /// Bytes faulted in, pinned (one io_uring buffer) and mapped (one UFFDIO_CONTINUE) per
    /// resolved fault: 4096, or 2 MiB for the hugetlb and shmem-thp backings.
    pub granule_bytes: u64,
    /// Resident granules of the pin view, and how many sat in a 2 MiB folio (hugetlb page or
    /// THP), from /proc/kpageflags; None where PFNs are not readable (not root).
    pub resident_granules: Option<u64>,
    pub huge_folio_granules: Option<u64>,
    /// KVM's leaf mappings of guest memory while the VM ran (VM stats fd; None where KVM
    /// keeps no such statistic, e.g. arm64).
    pub kvm_pages_4k: Option<u64>,
    pub kvm_pages_2m: Option<u64>,
}

/// Timings in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    pub setup_ms: f64,
    pub guest_ms: f64,
    pub teardown_ms: f64,
    pub wall_ms: f64,
    /// Guest time divided by the pages the guest touched (µs).
    pub guest_us_per_touched_page: f64,
    /// From the start of the launch to the first guest exit of any vCPU (the earliest point at
    /// which guest code is seen running).
    pub first_exit_ms: Option<f64>,
    /// From the start of the launch to the last vCPU's exit (or the VM's end).
    pub guest_exit_ms: f64,
    /// memtouch: the first write pass (slowest vCPU), every page's first touch.
    pub first_touch_ms: Option<f64>,
    /// `first_touch_ms` per touched page (µs): the first-touch cost the guest sees.
    pub first_touch_us_per_page: Option<f64>,
}

/// Everything about one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pinvmm_version: &'static str,
    pub outcome: Outcome,
    pub exit_code: u8,
    pub summary: String,
    pub config: VmConfig,
    pub host: HostFacts,
    pub vcpus: Vec<VcpuResult>,
    /// Pages whose final value the host found wrong, reading guest memory itself.
    pub host_check_bad_pages: u64,
    pub host_check_pages: u64,
    pub termination: Option<Termination>,
    /// The host call whose failure ended the VM as a VMM error (site, call, errno, GPA).
    pub host_failure: Option<HostFailure>,
    /// Each `--inject` and whether it fired.
    pub injections: Vec<InjectionReport>,
    pub resolver: Option<ResolverReport>,
    /// `--kernel`: what was booted, how it ended, its result line and the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linux: Option<crate::linux::LinuxReport>,
    /// `--vm-type protected`: the loader thread, its drain, EFAULTs and retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected: Option<crate::stage2::protected::ProtectedReport>,
    /// Pins taken before boot (`--stage2 eager`).
    pub eager_pins: u64,
    pub prefilled_pages: u64,
    pub guest_pages: u64,
    pub vmstat_delta: BTreeMap<String, i64>,
    pub memory: MemAccounting,
    pub granule: GranuleFacts,
    pub timing: Timing,
    /// The first `vm::CONSOLE_KEEP_BYTES` bytes the guest wrote to its console.
    pub console: String,
    /// Every byte the guest wrote to its console.
    pub console_bytes: u64,
    /// Whether the guest wrote more than was kept.
    pub console_truncated: bool,
    pub error: Option<String>,
}

impl Report {
    /// A few lines for a terminal.
    pub fn human(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pinvmm: {} — {}",
            outcome_word(self.outcome),
            self.summary
        );
        let _ = writeln!(
            s,
            "  guest {} | {} MiB {} | stage2 {:?} | policy {} | fault-in {:?} | fault CPU {} / pin CPU {} | vCPUs {}",
            if c.linux.is_some() {
                "linux"
            } else {
                c.payload.name()
            },
            c.mem_size >> 20,
            c.backing,
            c.stage2,
            c.policy.name(),
            c.fault_in,
            c.cpus.fault_cpu,
            c.cpus.pin_cpu,
            c.vcpus
        );
        if let Some(l) = &self.linux {
            human_linux(&mut s, l);
        }
        for v in self.vcpus.iter().filter(|_| self.linux.is_none()) {
            let finished = matches!(v.outcome, VcpuOutcome::Exited { .. });
            let check = match v.expected {
                _ if !finished => "(not checked: the vCPU did not finish)".to_owned(),
                Some(e) if e == v.result => "verified".to_owned(),
                Some(e) => format!("WRONG (expected {e:#x})"),
                None => "-".to_owned(),
            };
            let _ = writeln!(
                s,
                "  vCPU {}: {:?}, result {:#x} {check}, {} pages touched, {} errors",
                v.id, v.outcome, v.result, v.touched_pages, v.errors
            );
        }
        if let Some(p) = &self.protected {
            let _ = writeln!(
                s,
                "  protected VM: loader on CPU {} wrote {} pages ({} prefilled) through the mlocked view in {:.1} ms | drains local {} all {} | vCPU on CPU {} | KVM_RUN EFAULTs {} retries {}",
                p.loader_cpu
                    .map_or_else(|| "?".to_owned(), |c| c.to_string()),
                p.loader_pages,
                p.prefilled_pages,
                p.loader_ms,
                p.drain.local_drains,
                p.drain.all_drains,
                p.vcpu_cpu,
                p.efaults,
                p.retries
            );
        }
        if let Some(r) = &self.resolver {
            let _ = writeln!(
                s,
                "  faults {} (minor {}, missing {}) | pins ok {} failed {} retried {} | fault p50 {:.1} µs p99 {:.1} µs | pin p50 {:.1} µs p99 {:.1} µs",
                r.faults,
                r.minor_faults,
                r.missing_faults,
                r.pins.ok,
                r.pins.failed,
                r.retried_pins,
                r.fault_latency.p50_us,
                r.fault_latency.p99_us,
                r.pin_latency.p50_us,
                r.pin_latency.p99_us
            );
            let _ = writeln!(
                s,
                "  drains: local {} all {} ({:.1} ms total) | noise pages {}",
                r.drain.local_drains,
                r.drain.all_drains,
                r.drain.total_ns as f64 / 1e6,
                r.noise_pages_written
            );
        }
        if self.granule.granule_bytes > crate::sys::PAGE_SIZE as u64 {
            let g = &self.granule;
            let opt = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |x| x.to_string());
            let _ = writeln!(
                s,
                "  granule {} KiB: {} of {} resident granules in 2 MiB folios | KVM mappings: {} x 4 KiB, {} x 2 MiB",
                g.granule_bytes >> 10,
                opt(g.huge_folio_granules),
                opt(g.resident_granules),
                opt(g.kvm_pages_4k),
                opt(g.kvm_pages_2m)
            );
        }
        if let Some(t) = &self.termination {
            let _ = writeln!(
                s,
                "  TERMINATED: pin of GPA {:#x} (host {:#x}) failed with {} after {} successful pins{}",
                t.gpa,
                t.hva,
                t.errno_name,
                t.pins_ok_before,
                if t.injected { " [injected]" } else { "" }
            );
        }
        if let Some(f) = &self.host_failure {
            let _ = writeln!(s, "  HOST CALL FAILED: {}", f.describe());
        }
        for i in self.injections.iter().filter(|i| !i.fired) {
            let _ = writeln!(
                s,
                "  note: --inject {} never fired: the VM made {} call(s) at {} (is the site on this configuration's path?)",
                i.spec, i.site_calls, i.site
            );
        }
        let mig: Vec<String> = self
            .vmstat_delta
            .iter()
            .filter(|(k, v)| **v != 0 && k.contains("migrat"))
            .map(|(k, v)| format!("{k} {v:+}"))
            .collect();
        let _ = writeln!(
            s,
            "  vmstat: {} | VmPin {} kB while running | setup {:.1} ms, guest {:.1} ms ({:.2} µs/page), teardown {:.1} ms",
            if mig.is_empty() {
                "no migrations".to_owned()
            } else {
                mig.join(", ")
            },
            self.memory.vm_pin_kb_running,
            self.timing.setup_ms,
            self.timing.guest_ms,
            self.timing.guest_us_per_touched_page,
            self.timing.teardown_ms
        );
        if !self.host.has_unpinnable_memory() {
            let _ = writeln!(
                s,
                "  note: no ZONE_MOVABLE or CMA on this host: pins never need to migrate, so natural pin failures cannot happen here"
            );
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "  error: {e}");
        }
        s
    }
}

/// The report of a VM that could not be built: `pinvmm run --json` writes it instead of a
/// [`Report`], so a failed setup (say, an `--inject mlock`) still names what failed.
#[derive(Debug, Clone, Serialize)]
pub struct SetupFailureReport {
    pub pinvmm_version: &'static str,
    /// `vmm-error` (exit 1), `bad-input` (exit 2: a bad kernel or initrd) or
    /// `host-unsupported` (exit 3).
    pub outcome: &'static str,
    pub exit_code: u8,
    pub summary: String,
    pub config: VmConfig,
    pub host: HostFacts,
    pub host_failure: Option<HostFailure>,
    pub error: String,
}

impl SetupFailureReport {
    pub fn new(config: &VmConfig, err: &crate::vm::VmError) -> Self {
        let (outcome, code) = if err.is_bad_input() {
            ("bad-input", ExitCode::BadInput)
        } else if err.is_host_unsupported() {
            ("host-unsupported", ExitCode::HostUnsupported)
        } else {
            ("vmm-error", ExitCode::VmmError)
        };
        Self {
            pinvmm_version: env!("CARGO_PKG_VERSION"),
            outcome,
            exit_code: code as u8,
            summary: format!("the VM could not be built: {err}"),
            config: config.clone(),
            host: HostFacts::probe(),
            host_failure: err.host_failure(),
            error: err.to_string(),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        if self.exit_code == ExitCode::HostUnsupported as u8 {
            ExitCode::HostUnsupported
        } else if self.exit_code == ExitCode::BadInput as u8 {
            ExitCode::BadInput
        } else {
            ExitCode::VmmError
        }
    }
}

fn human_linux(s: &mut String, l: &crate::linux::LinuxReport) {
    let secs = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |ms| format!("{:.2} s", ms / 1e3));
    let _ = writeln!(
        s,
        "  kernel {} ({} MiB at {:#x}){} | cmdline: {}",
        l.kernel.display(),
        l.boot.kernel.len >> 20,
        l.boot.kernel.start,
        match (&l.initrd, l.boot.initrd) {
            (Some(p), Some(r)) => format!(
                " | initrd {} ({} KiB at {:#x})",
                p.display(),
                r.len >> 10,
                r.start
            ),
            _ => String::new(),
        },
        l.boot.cmdline
    );
    let _ = writeln!(
        s,
        "  boot: first console output {} | result line {} (after launch) | ended by {}",
        secs(l.first_console_ms),
        secs(l.result_line_ms),
        l.end
    );
    match (&l.result, &l.expected_checksum) {
        (Some(r), Some(want)) => {
            let _ = writeln!(
                s,
                "  workload: status {} | filled {} MiB seed {} | checksum {:#018x} {} | tmpfs {} MiB | forks {} | errors {} | {} ms in the guest",
                r.status,
                r.fill_bytes >> 20,
                r.seed,
                r.checksum,
                if l.checksum_verified {
                    "verified".to_owned()
                } else {
                    format!("WRONG (expected {want})")
                },
                r.tmpfs_bytes >> 20,
                r.forks,
                r.errors,
                r.elapsed_ms
            );
        }
        _ => {
            let _ = writeln!(s, "  workload: no result line");
        }
    }
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Completed => "OK",
        Outcome::GuestFailed => "GUEST FAILED",
        Outcome::Terminated => "VM TERMINATED",
        Outcome::Timeout => "TIMEOUT",
        Outcome::VmmError => "VMM ERROR",
    }
}
