// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm probe`: what this host can do, checked by trying each thing once.

use std::fmt::Write as _;

use io_uring::IoUring;
use kvm_ioctls::Kvm;
use serde::Serialize;

use vmm::Backing;
use vmm::host::HostFacts;
use vmm::memory::GuestMemory;
use vmm::stage2::drain::{DrainPolicy, Drainer};
use vmm::sys;

/// One capability and whether it works.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// Needed only by some options (a "no" is not a failure of the host).
    pub optional: bool,
}

/// The probe's findings.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// The binary's git commit and whether its tree was dirty.
    pub build: vmm::provenance::Build,
    pub host: HostFacts,
    pub checks: Vec<Check>,
    pub memlock_limit: Option<u64>,
    pub cap_ipc_lock: bool,
    /// Whether `pinvmm run` can work here at all.
    pub can_run: bool,
    /// Whether a long-term pin can ever need a migration here (ZONE_MOVABLE or CMA present).
    pub pin_failures_possible: bool,
    pub notes: Vec<String>,
}

fn check(name: &'static str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
            optional: false,
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
            optional: false,
        },
    }
}

/// Runs every check.
pub fn probe() -> Probe {
    let host = HostFacts::probe();
    let mut checks = vec![check(
        "kvm",
        Kvm::new()
            .map_err(|e| format!("cannot open /dev/kvm: {e}"))
            .map(|k| {
                format!(
                    "/dev/kvm API version {}, backend: {}",
                    k.get_api_version(),
                    host.kvm_backend
                )
            }),
    )];
    checks.push(check(
        "userfaultfd",
        GuestMemory::new(Backing::Shmem, 0, 1 << 20)
            .map_err(|e| e.to_string())
            .and_then(|m| vmm::stage2::arm(&m).map(|_| ()).map_err(|e| e.to_string()))
            .map(|()| "kernel-mode faults, MISSING|MINOR on shmem".into()),
    ));
    checks.push(check(
        "io_uring pins",
        IoUring::new(2)
            .map_err(|e| format!("io_uring_setup: {e} (check kernel.io_uring_disabled)"))
            .and_then(|r| {
                r.submitter()
                    .register_buffers_sparse(1)
                    .map_err(|e| format!("sparse buffer table: {e}"))
            })
            .map(|()| "IORING_REGISTER_BUFFERS2 (sparse) + BUFFERS_UPDATE".into()),
    ));
    checks.push(check(
        "mlock2 onfault",
        GuestMemory::new(Backing::Shmem, 0, 1 << 20)
            .map(|_| "MLOCK_ONFAULT".into())
            .map_err(|e| e.to_string()),
    ));
    checks.push(check(
        "local drain",
        Drainer::new(DrainPolicy::MlockDrain)
            .and_then(|mut d| d.drain_local(sys::current_cpu().unwrap_or(0)))
            .map(|()| "madvise(MADV_COLD) on a scratch page".into())
            .map_err(|e| e.to_string()),
    ));
    checks.push(check(
        "all-CPU drain",
        Drainer::new(DrainPolicy::LruAddDrain)
            .and_then(|mut d| d.drain_all())
            .map(|()| "migrate_pages(2) on self".into())
            .map_err(|e| e.to_string()),
    ));
    checks.push(check(
        "hugetlb 2M",
        match vmm::host::hugepages::HugetlbPool::probe() {
            None => Err("--backing hugetlb: no 2 MiB hugetlb pool in this kernel".into()),
            Some(p) if p.available() == 0 => Err(format!(
                "--backing hugetlb: pool empty ({} pages, {} free, {} reserved): reserve with `sysctl vm.nr_hugepages=N` (N = guest MiB / 2)",
                p.total, p.free, p.reserved
            )),
            Some(p) => Ok(format!(
                "--backing hugetlb: {} pages available ({} MiB of guest memory)",
                p.available(),
                p.available() * 2
            )),
        },
    ));
    checks.push(check(
        "shmem THP 2M",
        match vmm::host::hugepages::shmem_thp_mode() {
            Err(e) => Err(format!("--backing shmem-thp: {e}")),
            Ok(m) if vmm::host::hugepages::shmem_thp_mode_allows_madvise(&m) => {
                Ok(format!("--backing shmem-thp: shmem_enabled {m}"))
            }
            Ok(m) => Err(format!(
                "--backing shmem-thp: shmem_enabled is {m}: `echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled` allows it"
            )),
        },
    ));
    checks.push(check(
        "seccomp",
        vmm::seccomp::self_test().and_then(|t| match t {
            t if t.denied_errno == libc::EPERM && t.allowed_ok => Ok(format!(
                "per-thread allow-lists ({}): a denied call (socket) fails with EPERM, allowed calls work",
                std::env::consts::ARCH
            )),
            t => Err(format!(
                "the vCPU filter did not behave: socket(2) gave errno {} (want EPERM), allowed calls {}",
                t.denied_errno,
                if t.allowed_ok { "worked" } else { "failed" }
            )),
        }),
    ));
    for c in checks.iter_mut().skip(6) {
        c.optional = true;
    }
    let can_run = checks.iter().take(4).all(|c| c.ok);
    let pin_failures_possible = host.has_unpinnable_memory();
    let mut notes = Vec::new();
    if !pin_failures_possible {
        notes.push(
            "no ZONE_MOVABLE or CMA memory: long-term pins never migrate here, so pin failures cannot occur naturally and every termination rate will be 0 (use --inject-pin-failure to test the path; boot with movablecore= or cma= to measure)"
                .into(),
        );
    }
    if host.kvm_backend.starts_with("pvm") {
        notes.push("KVM is the PVM backend: x86 payloads run in long mode at CPL3; stock Linux kernels cannot boot here in useful time".into());
    }
    Probe {
        build: vmm::provenance::BUILD,
        host,
        checks,
        memlock_limit: sys::memlock_limit(),
        cap_ipc_lock: sys::has_cap_ipc_lock(),
        can_run,
        pin_failures_possible,
        notes,
    }
}

impl Probe {
    pub fn human(&self) -> String {
        let h = &self.host;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "kernel         {} (version {}, upstream GUP fix: {:?} by version)",
            h.kernel_release, h.kernel_version, h.gup_fix
        );
        let _ = writeln!(
            s,
            "cpu            {} ({} usable CPUs)",
            h.cpu, h.online_cpus
        );
        let _ = writeln!(s, "kvm            {}", h.kvm_backend);
        let _ = writeln!(
            s,
            "movable        {} MiB ZONE_MOVABLE, {} MiB CMA",
            h.movable_bytes >> 20,
            h.cma_bytes >> 20
        );
        let lim = self
            .memlock_limit
            .map_or("unlimited".to_owned(), |l| format!("{} KiB", l >> 10));
        let _ = writeln!(
            s,
            "memlock        RLIMIT_MEMLOCK {lim}, CAP_IPC_LOCK {}",
            if self.cap_ipc_lock { "yes" } else { "no" }
        );
        for c in &self.checks {
            let _ = writeln!(
                s,
                "{:<15}{} {}",
                c.name,
                match (c.ok, c.optional) {
                    (true, _) => "ok  ",
                    (false, true) => "no  ",
                    (false, false) => "FAIL",
                },
                c.detail
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let _ = writeln!(
            s,
            "verdict: {}",
            if self.can_run {
                "pinvmm can run VMs here"
            } else {
                "pinvmm cannot run VMs here (see FAIL lines)"
            }
        );
        s
    }
}
