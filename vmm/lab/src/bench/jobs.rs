// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The jobs section: how many VMs per minute `pinvmm campaign --jobs N` gets through against
//! `--jobs 1` on the same cells (memtouch guests under `none` and `mlock-drain`, the default
//! placement): what a campaign, `stress` or a CI farm gains from running VMs side by side on
//! shared CPUs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;
use vmm::stats::median;

use super::args::BenchArgs;

/// One campaign run.
#[derive(Debug, Clone, Serialize)]
pub struct JobsSample {
    pub jobs: usize,
    pub vms: u32,
    pub wall_s: f64,
    pub vms_per_min: f64,
    /// The campaign's exit code (0: every VM as expected).
    pub exit_code: Option<i32>,
}

/// The section's result.
#[derive(Debug, Clone, Serialize)]
pub struct JobsSection {
    pub jobs: usize,
    pub mem_bytes: u64,
    pub vms_per_campaign: u32,
    pub policies: Vec<String>,
    pub samples: Vec<JobsSample>,
    /// Medians over the repetitions.
    pub vms_per_min_jobs1: f64,
    pub vms_per_min_jobs_n: f64,
    /// `--jobs N` over `--jobs 1`, median of the per-round ratios.
    pub speedup: f64,
}

const POLICIES: [&str; 2] = ["none", "mlock-drain"];

/// One `pinvmm campaign` child process into a fresh directory; its wall time.
fn campaign(exe: &Path, dir: &Path, a: &BenchArgs, jobs: usize) -> Result<JobsSample, String> {
    let _ = std::fs::remove_dir_all(dir);
    let t = Instant::now();
    let st = Command::new(exe)
        .args([
            "campaign",
            "--quiet",
            "--guest",
            "memtouch",
            "--policies",
            &POLICIES.join(","),
            "--runs",
            &a.jobs_runs.to_string(),
            "--mem",
            &a.jobs_mem.to_string(),
            "--jobs",
            &jobs.to_string(),
            "--out",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("jobs: cannot start {} campaign: {e}", exe.display()))?;
    let wall_s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(dir);
    let vms = a.jobs_runs * POLICIES.len() as u32;
    Ok(JobsSample {
        jobs,
        vms,
        wall_s,
        vms_per_min: f64::from(vms) / wall_s * 60.0,
        exit_code: st.code(),
    })
}

/// Runs `campaign --jobs 1` and `--jobs N` alternately, `reps` times each (the order flips each
/// round).
pub(super) fn jobs_section(a: &BenchArgs, log: &dyn Fn(&str)) -> Result<JobsSection, String> {
    let exe = std::env::current_exe().map_err(|e| format!("jobs: {e}"))?;
    let dir = std::env::temp_dir().join(format!("pinvmm-bench-jobs-{}", std::process::id()));
    let n = a.jobs();
    let mut samples = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..a.reps {
        let order = if round % 2 == 0 { [1, n] } else { [n, 1] };
        let mut pair = [0.0; 2];
        for j in order {
            let s = campaign(&exe, &dir, a, j)?;
            pair[usize::from(j != 1)] = s.vms_per_min;
            samples.push(s);
        }
        ratios.push(pair[1] / pair[0]);
        log(&format!("jobs: round {}/{} done", round + 1, a.reps));
    }
    let med = |jobs: usize| {
        median(
            &samples
                .iter()
                .filter(|s| s.jobs == jobs)
                .map(|s| s.vms_per_min)
                .collect::<Vec<_>>(),
        )
    };
    Ok(JobsSection {
        jobs: n,
        mem_bytes: a.jobs_mem,
        vms_per_campaign: a.jobs_runs * POLICIES.len() as u32,
        policies: POLICIES.iter().map(|p| (*p).to_owned()).collect(),
        vms_per_min_jobs1: med(1),
        vms_per_min_jobs_n: med(n),
        speedup: median(&ratios),
        samples,
    })
}
