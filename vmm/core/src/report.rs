// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The run report: a [`RunResult`] judged (the outcome, the exit code, a summary line), as JSON
//! for programs and a few lines for people; and the report of a VM that could not be built.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use guest::Payload;
use serde::Serialize;

use crate::builder::BuildError;
use crate::config::VmConfig;
use crate::control::{HostFailure, Termination, VcpuOutcome};
use crate::exit_code::ExitCode;
use crate::host::HostFacts;
use crate::host::trace::KernelTrace;
use crate::inject::InjectionReport;
use crate::linux::LinuxReport;
use crate::loader::LoaderReport;
use crate::provenance::{BUILD, Build};
use crate::stage2::explain::FailedPin;
use crate::stage2::protected::{ProtectedReport, VmType};
use crate::stage2::{ResolverReport, Stage2};
use crate::vm::{GranuleFacts, MemAccounting, RunResult, Timing, VcpuResult};

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

    /// The verdict on a run, first match wins: a failed pin, a VMM error (a failed host call
    /// or KVM_RUN), the timeout; then the guest's own result (a Linux guest's result line;
    /// a payload's status, checksum and errors, the host's page check, `hello`'s line).
    pub fn judge(r: &RunResult) -> Outcome {
        let run_failed = |v: &VcpuResult| {
            matches!(
                v.outcome,
                VcpuOutcome::RunFailed { .. } | VcpuOutcome::Unhandled { .. }
            )
        };
        if r.termination.is_some() {
            Outcome::Terminated
        } else if r.error.is_some() {
            Outcome::VmmError
        } else if r.timed_out {
            Outcome::Timeout
        } else if r.vcpus.iter().any(run_failed) {
            Outcome::VmmError
        } else if let Some(l) = &r.linux {
            if l.failure.is_some() {
                Outcome::GuestFailed
            } else {
                Outcome::Completed
            }
        } else if payload_failed(r) {
            Outcome::GuestFailed
        } else {
            Outcome::Completed
        }
    }
}

/// Whether a bare payload's run shows a failure: a vCPU that did not exit with status 0, a
/// wrong checksum, errors, a page the host found wrong, or `hello`'s console other than its
/// line, exactly once (only vCPU 0 prints, whatever the number of vCPUs).
fn payload_failed(r: &RunResult) -> bool {
    let ok = |v: &VcpuResult| v.outcome == VcpuOutcome::Exited { status: 0 };
    !r.vcpus.iter().all(ok)
        || r.vcpus
            .iter()
            .any(|v| v.expected.is_some_and(|e| e != v.result) || v.errors > 0)
        || r.host_check_bad_pages > 0
        || (r.config.payload == Payload::Hello && r.console != guest::HELLO_LINE)
}

/// Everything about one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pinvmm_version: &'static str,
    /// The binary's git commit and whether its tree was dirty.
    pub build: Build,
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
    pub linux: Option<LinuxReport>,
    /// `--vm-type protected`: the loader thread, its drain, EFAULTs and retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected: Option<ProtectedReport>,
    /// What the loader wrote before boot: through which mapping (mlocked = pKVM-exact), on
    /// which CPU, and the state of the last pages it wrote.
    pub loader: LoaderReport,
    /// The model the run's numbers come from: `pKVM-exact` or a named stress model
    /// (docs/DESIGN.md, vocabulary).
    pub model: String,
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
    /// Every failed long-term pin, explained: the folio's PFN, zone and flags, the page's
    /// fault-in → pin path, the verdict and its evidence, the kernel's event (`--trace`).
    /// docs/FAILURES.md.
    pub failed_pins: Vec<FailedPin>,
    /// `--trace`: the kernel's `migrate:` events of the VM's own threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_trace: Option<KernelTrace>,
    /// What the failure explanation could not see on this host (not root, no tracefs).
    pub explain_notes: Vec<String>,
    /// What this run could not measure or may misread for lack of a privilege (an
    /// unprivileged user: no CAP_SYS_ADMIN for page frames, no CAP_IPC_LOCK for pins).
    pub notes: Vec<String>,
}

/// The privilege notes of a run ([`Report::notes`]).
fn privilege_notes(r: &RunResult) -> Vec<String> {
    let mut n = Vec::new();
    if r.granule.granule_bytes > crate::sys::PAGE_SIZE as u64
        && r.granule.huge_folio_granules.is_none()
        && !crate::sys::has_cap_sys_admin()
    {
        n.push("which granules sat in 2 MiB folios is not measured: /proc/kpageflags and page frame numbers need CAP_SYS_ADMIN".into());
    }
    if let (Some(t), Some(limit), false) = (
        &r.termination,
        crate::sys::memlock_limit(),
        crate::sys::has_cap_ipc_lock(),
    ) && t.errno == libc::ENOMEM
    {
        n.push(format!(
            "this process lacks CAP_IPC_LOCK: its long-term pins are charged to RLIMIT_MEMLOCK ({} KiB) across all of this user's processes, so this ENOMEM may be that limit rather than a failed migration",
            limit >> 10
        ));
    }
    n
}

impl From<RunResult> for Report {
    /// Judges the run ([`Outcome::judge`]) and says so in one line.
    fn from(r: RunResult) -> Self {
        let outcome = Outcome::judge(&r);
        let model = r.config.model();
        let touched: u64 = r.vcpus.iter().map(|v| v.touched_pages).sum();
        let console_truncated = r.console_bytes > r.console_keep as u64;
        let summary = summarize(outcome, &r, touched)
            + &hostile_notes(&r.vcpus, r.console_bytes, console_truncated, r.console_keep);
        let notes = privilege_notes(&r);
        Report {
            pinvmm_version: env!("CARGO_PKG_VERSION"),
            build: BUILD,
            outcome,
            exit_code: outcome.exit_code() as u8,
            summary,
            guest_pages: r.config.pages(),
            config: r.config,
            host: r.host,
            vcpus: r.vcpus,
            host_check_bad_pages: r.host_check_bad_pages,
            host_check_pages: r.host_check_pages,
            termination: r.termination,
            host_failure: r.host_failure,
            injections: r.injections,
            resolver: r.resolver,
            linux: r.linux,
            protected: r.protected,
            model,
            loader: r.loader,
            eager_pins: r.eager_pins,
            prefilled_pages: r.prefilled_pages,
            vmstat_delta: r.vmstat_delta,
            memory: r.memory,
            granule: r.granule,
            timing: r.timing,
            console: r.console,
            console_bytes: r.console_bytes,
            console_truncated,
            error: r.error,
            failed_pins: r.failed_pins,
            kernel_trace: r.kernel_trace,
            explain_notes: r.explain_notes,
            notes,
        }
    }
}

/// The report's summary line.
fn summarize(outcome: Outcome, r: &RunResult, touched: u64) -> String {
    let cfg = &r.config;
    match outcome {
        Outcome::Completed | Outcome::GuestFailed if r.linux.is_some() => r
            .linux
            .as_ref()
            .map(LinuxReport::summary)
            .unwrap_or_default(),
        Outcome::Completed if cfg.payload == Payload::Memtouch => {
            format!("memtouch checksum verified on {touched} pages")
        }
        Outcome::Completed => format!("{} finished with status 0", cfg.payload.name()),
        Outcome::Terminated if cfg.vm_type == VmType::Protected => {
            let t = r
                .termination
                .as_ref()
                .expect("terminated has a termination");
            format!("{}; protected VM terminated, as crosvm does", t.message)
        }
        Outcome::Terminated => {
            let t = r
                .termination
                .as_ref()
                .expect("terminated has a termination");
            format!(
                "long-term pin of GPA {:#x} failed ({}): VM terminated as pKVM would",
                t.gpa, t.errno_name
            )
        }
        Outcome::Timeout => format!(
            "guest did not finish within {:.0} s",
            cfg.timeout.as_secs_f64()
        ),
        Outcome::VmmError => r.error.clone().unwrap_or_else(|| {
            let v = r
                .vcpus
                .iter()
                .find(|v| matches!(v.outcome, VcpuOutcome::RunFailed { .. }));
            format!("KVM_RUN failed: {:?}", v.map(|v| &v.outcome))
        }),
        Outcome::GuestFailed => {
            let bad: Vec<String> = r
                .vcpus
                .iter()
                .filter(|v| {
                    v.outcome != (VcpuOutcome::Exited { status: 0 })
                        || v.expected.is_some_and(|e| e != v.result)
                })
                .map(|v| format!("vCPU {} {:?}", v.id, v.outcome))
                .collect();
            if bad.is_empty() {
                "guest result did not verify".into()
            } else {
                bad.join("; ")
            }
        }
    }
}

/// What a guest did to the VMM's devices, when it did more than a well-behaved guest does.
fn hostile_notes(vcpus: &[VcpuResult], console_bytes: u64, truncated: bool, keep: usize) -> String {
    let mut s = String::new();
    let unmapped: u64 = vcpus.iter().map(|v| v.exits.unmapped).sum();
    if unmapped > 0 {
        let first = vcpus.iter().find_map(|v| v.exits.first_unmapped);
        s += &format!(
            "; {unmapped} accesses to addresses no device answers (first: {}; reads return all ones, writes are dropped)",
            first.map_or_else(|| "?".into(), |a| a.to_string())
        );
    }
    let bad: u64 = vcpus.iter().map(|v| v.bad_device_writes).sum();
    if bad > 0 {
        s += &format!("; {bad} writes to undefined test-device registers (ignored)");
    }
    if truncated {
        s += &format!(
            "; console: {console_bytes} bytes written, the first and last {} kept (truncated)",
            keep / 2
        );
    }
    s
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
            "  model {} | guest {} | {} {} MiB {} | stage2 {} | policy {} | fault-in {} | {} | vCPUs {}",
            self.model,
            if c.linux.is_some() {
                "linux"
            } else {
                c.payload.name()
            },
            c.vm_type,
            c.mem_size >> 20,
            c.backing,
            c.stage2,
            c.policy.name(),
            c.fault_in,
            if c.cpus.free {
                "CPUs free".to_owned()
            } else {
                format!(
                    "fault CPU {} / pin CPU {}",
                    c.cpus.fault_cpu, c.cpus.pin_cpu
                )
            },
            c.vcpus
        );
        if c.fault_ahead > 0 && c.stage2 == Stage2::Pin {
            let _ = writeln!(
                s,
                "  fault-ahead {}: each fault also pins and maps up to {} pages the guest has not touched yet (pKVM pins only the faulting page): not pKVM-exact",
                c.fault_ahead, c.fault_ahead
            );
        }
        let l = &self.loader;
        let opt = |v: Option<usize>| v.map_or_else(|| "?".to_owned(), |c| c.to_string());
        let _ = writeln!(
            s,
            "  loader: {} pages through the {} view{} on CPU {} -> {} in {:.1} ms ({} prefilled){}",
            l.pages,
            l.via.map_or("?", |v| v.name()),
            if l.placed_cpu.is_some() {
                " (placed)"
            } else {
                ""
            },
            opt(l.cpu_start),
            opt(l.cpu_end),
            l.ms,
            l.prefilled_pages,
            l.tail.as_ref().map_or_else(String::new, |t| format!(
                " | last {} pages: {} pending in an mlock batch on the LRU, {} off the LRU, {} processed",
                t.pages.len(),
                t.pending_on_lru,
                t.off_lru,
                t.processed
            ))
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
                p.vcpu_cpu
                    .map_or_else(|| "any (free)".to_owned(), |c| c.to_string()),
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
        if let Some(t) = self
            .termination
            .as_ref()
            .filter(|t| t.gpa == 0 && self.protected.is_some())
        {
            let _ = writeln!(
                s,
                "  TERMINATED: KVM_RUN failed with {} and named no IPA (pKVM's failed pin; WHY below names the page where it can)",
                t.errno_name
            );
        } else if let Some(t) = &self.termination {
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
        human_failed_pins(&mut s, self);
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
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
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
    pub build: Build,
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
    pub fn new(config: &VmConfig, err: &BuildError) -> Self {
        let (outcome, code) = if err.is_bad_input() {
            ("bad-input", ExitCode::BadInput)
        } else if err.is_host_unsupported() {
            ("host-unsupported", ExitCode::HostUnsupported)
        } else {
            ("vmm-error", ExitCode::VmmError)
        };
        Self {
            pinvmm_version: env!("CARGO_PKG_VERSION"),
            build: BUILD,
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

/// Failed pins shown in the human report (all are in the JSON).
const HUMAN_FAILED_PINS: usize = 3;

/// Why the pins failed (docs/FAILURES.md), what the kernel recorded, what could not be seen.
fn human_failed_pins(s: &mut String, r: &Report) {
    for f in r.failed_pins.iter().take(HUMAN_FAILED_PINS) {
        let _ = writeln!(s, "  WHY: {}", f.describe().replace('\n', "\n  "));
    }
    if r.failed_pins.len() > HUMAN_FAILED_PINS {
        let _ = writeln!(
            s,
            "  ... {} more failed pins in the JSON report (failed_pins)",
            r.failed_pins.len() - HUMAN_FAILED_PINS
        );
    }
    if let Some(k) = &r.kernel_trace {
        let _ = writeln!(
            s,
            "  kernel trace ({}, threads {:?}): {} long-term-pin migrations, {} folios migrated, {} failed{}",
            k.instance,
            k.tids,
            k.pin_migrations,
            k.pin_migrated,
            k.pin_failed,
            if k.lost_events > 0 {
                format!(" ({} events lost)", k.lost_events)
            } else {
                String::new()
            }
        );
    }
    for n in &r.explain_notes {
        let _ = writeln!(s, "  note: {n}");
    }
}

fn human_linux(s: &mut String, l: &LinuxReport) {
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
