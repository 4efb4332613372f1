// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The launch and rss sections: bare VMs back to back (in process and one process per VM),
//! and the VMM's resident memory besides guest memory.

use std::process::Command;
use std::time::{Duration, Instant};

use guest::Payload;
use serde::Serialize;
use vmm::report::Report;
use vmm::stage2::drain::DrainPolicy;
use vmm::{Backing, FaultIn, HostLimits, Stage2, VmConfig};

use super::args::BenchArgs;
use super::common::pct;
use super::touch::{TouchSpec, run_vm, vm_config};

/// One launch configuration.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchRow {
    pub name: String,
    pub in_process: bool,
    pub vms: usize,
    pub first_exit_ms_p50: Option<f64>,
    pub first_exit_ms_p90: Option<f64>,
    pub guest_exit_ms_p50: Option<f64>,
    pub wall_ms_p50: f64,
    pub vms_per_s: f64,
}

/// The VMM's own resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct RssRow {
    pub name: String,
    pub guest_mem_mib: u64,
    pub rss_anon_kb: u64,
    pub rss_file_kb: u64,
    pub rss_shmem_kb: u64,
    /// RssAnon + RssFile: everything resident that is not guest memory.
    pub vmm_rss_kb: u64,
}

pub(super) struct LaunchSpec {
    name: &'static str,
    stage2: Stage2,
}

pub(super) const LAUNCH_SPECS: [LaunchSpec; 2] = [
    LaunchSpec {
        name: "hello, stage2 pin",
        stage2: Stage2::Pin,
    },
    LaunchSpec {
        name: "hello, stage2 kernel",
        stage2: Stage2::Kernel,
    },
];

pub(super) fn launch_section(
    a: &BenchArgs,
    host: &HostLimits,
    log: &dyn Fn(&str),
) -> Result<Vec<LaunchRow>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mem_arg = format!("{}K", a.launch_mem >> 10);
    let cfgs: Vec<VmConfig> = LAUNCH_SPECS
        .iter()
        .map(|l| {
            let spec = TouchSpec {
                name: l.name.into(),
                load: 0,
                backing: Backing::Shmem,
                stage2: l.stage2,
                policy: DrainPolicy::None,
                fault_in: FaultIn::Touch,
                fault_ahead: 0,
            };
            vm_config(Payload::Hello, a.launch_mem, host, &spec)
        })
        .collect::<Result<_, _>>()?;
    // [spec][in-process, process]: per-VM samples and total time.
    let n = LAUNCH_SPECS.len();
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); n];
    let mut inproc_total = vec![Duration::ZERO; n];
    let mut proc_wall: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut proc_total = vec![Duration::ZERO; n];
    for round in 0..a.reps {
        for i in 0..n {
            let t = Instant::now();
            for _ in 0..a.launches {
                reports[i].push(run_vm(&cfgs[i], LAUNCH_SPECS[i].name)?);
            }
            inproc_total[i] += t.elapsed();
            let t = Instant::now();
            for _ in 0..a.launches {
                let t1 = Instant::now();
                let st = Command::new(&exe)
                    .args(["run", "--quiet", "--guest", "hello", "--mem", &mem_arg])
                    .args(["--stage2", stage2_name(LAUNCH_SPECS[i].stage2)])
                    .status()
                    .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
                if !st.success() {
                    return Err(format!("pinvmm run (hello) failed: {st}"));
                }
                proc_wall[i].push(t1.elapsed().as_secs_f64() * 1e3);
            }
            proc_total[i] += t.elapsed();
        }
        log(&format!("launch: round {}/{} done", round + 1, a.reps));
    }
    let mut rows = Vec::new();
    for i in 0..n {
        let first: Vec<f64> = reports[i]
            .iter()
            .filter_map(|r| r.timing.first_exit_ms)
            .collect();
        let exit: Vec<f64> = reports[i].iter().map(|r| r.timing.guest_exit_ms).collect();
        let wall: Vec<f64> = reports[i].iter().map(|r| r.timing.wall_ms).collect();
        rows.push(LaunchRow {
            name: LAUNCH_SPECS[i].name.into(),
            in_process: true,
            vms: reports[i].len(),
            first_exit_ms_p50: Some(pct(&first, 0.5)),
            first_exit_ms_p90: Some(pct(&first, 0.9)),
            guest_exit_ms_p50: Some(pct(&exit, 0.5)),
            wall_ms_p50: pct(&wall, 0.5),
            vms_per_s: reports[i].len() as f64 / inproc_total[i].as_secs_f64(),
        });
        rows.push(LaunchRow {
            name: LAUNCH_SPECS[i].name.into(),
            in_process: false,
            vms: proc_wall[i].len(),
            first_exit_ms_p50: None,
            first_exit_ms_p90: None,
            guest_exit_ms_p50: None,
            wall_ms_p50: pct(&proc_wall[i], 0.5),
            vms_per_s: proc_wall[i].len() as f64 / proc_total[i].as_secs_f64(),
        });
    }
    Ok(rows)
}

pub(super) fn stage2_name(s: Stage2) -> &'static str {
    match s {
        Stage2::Pin => "pin",
        Stage2::Uffd => "uffd",
        Stage2::Kernel => "kernel",
        Stage2::Eager => "eager",
    }
}

pub(super) fn rss_section(a: &BenchArgs) -> Result<Vec<RssRow>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut rows = Vec::new();
    for (name, guest, mem) in [
        ("memtouch, stage2 pin", "memtouch", a.rss_mem),
        ("memtouch, stage2 pin", "memtouch", a.mem),
        ("hello, stage2 pin", "hello", a.launch_mem),
    ] {
        let out = Command::new(&exe)
            .args(["run", "--quiet", "--guest", guest, "--json", "-"])
            .args(["--mem", &format!("{}K", mem >> 10)])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if !out.status.success() {
            return Err(format!("pinvmm run ({name}) failed: {}", out.status));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("pinvmm run ({name}): bad JSON: {e}"))?;
        let kb = |k: &str| v["memory"][k].as_u64().unwrap_or(0);
        let (anon, file, shmem) = (
            kb("rss_anon_kb_running"),
            kb("rss_file_kb_running"),
            kb("rss_shmem_kb_running"),
        );
        rows.push(RssRow {
            name: name.into(),
            guest_mem_mib: mem >> 20,
            rss_anon_kb: anon,
            rss_file_kb: file,
            rss_shmem_kb: shmem,
            vmm_rss_kb: anon + file,
        });
    }
    Ok(rows)
}
