// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Everything a bench run measured, and the goals it is held to.

use serde::Serialize;
use vmm::Backing;
use vmm::host::HostFacts;

use super::drain::{DrainInVm, DrainMicro};
use super::jobs::JobsSection;
use super::launch::{LaunchRow, RssRow};
use super::qemu::QemuSection;
use super::touch::{TouchRow, loaded_name, paired, row_name};

/// A performance goal and where this run stands.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// Everything a bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub pinvmm_version: &'static str,
    /// The binary's git commit and whether its tree was dirty.
    pub build: vmm::provenance::Build,
    pub date_utc: String,
    pub command: String,
    pub host: HostFacts,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub mem_bytes: u64,
    pub reps: u32,
    /// Busy threads beside the loaded touch rows (0: none measured).
    pub load: usize,
    pub fault_cpu: usize,
    pub pin_cpu: usize,
    pub fault_ahead: Vec<u32>,
    pub touch: Vec<TouchRow>,
    pub drain_in_vm: Vec<DrainInVm>,
    pub drain_micro: Vec<DrainMicro>,
    pub launch: Vec<LaunchRow>,
    pub rss: Vec<RssRow>,
    pub qemu: Option<QemuSection>,
    pub jobs: Option<JobsSection>,
    pub goals: Vec<Goal>,
    /// Host settings the bench changed for the run (and restored), and rows it had to skip.
    pub host_changes: Vec<String>,
    pub skipped: Vec<String>,
    /// First-touch µs/page of the `--baseline` run, by row name.
    pub baseline: Vec<(String, f64)>,
    pub baseline_file: Option<String>,
    pub wall_s: f64,
}

pub(super) fn goals(r: &BenchReport) -> Vec<Goal> {
    let mut g = Vec::new();
    let row = |n: &str| r.touch.iter().find(|t| t.name == n);
    let vs = |g: &mut Vec<Goal>, a: &str, b: &str, what: &str, max: f64| {
        if let (Some(x), Some(y)) = (row(a), row(b)) {
            let r = paired(x, y, |a, b| a / b);
            g.push(Goal {
                goal: format!("{what}: {a} first touch vs {b}, paired by round"),
                target: format!("≤ {max}x"),
                measured: format!(
                    "{r:.2}x ({:.1} vs {:.1} µs/page)",
                    x.us_per_page, y.us_per_page
                ),
                met: r <= max,
            });
        }
    };
    vs(&mut g, "pin:none", "uffd", "quiet", 1.05);
    vs(
        &mut g,
        "pin:none,fault-in=pin",
        "uffd",
        "quiet, pKVM-exact",
        1.05,
    );
    let load = format!("loaded ({} busy threads)", r.load);
    let (none, uffd) = (loaded_name("pin:none"), loaded_name("uffd"));
    vs(&mut g, &none, &uffd, &load, 1.5);
    vs(&mut g, &loaded_name("pin:mlock-drain"), &none, &load, 1.05);
    let exact = loaded_name("pin:none,fault-in=pin");
    vs(&mut g, &exact, &uffd, &format!("{load}, pKVM-exact"), 1.5);
    vs(
        &mut g,
        &loaded_name("pin:mlock-drain,fault-in=pin"),
        &exact,
        &format!("{load}, pKVM-exact"),
        1.05,
    );
    let best_fa = r
        .touch
        .iter()
        .filter(|t| t.name.contains("fa="))
        .min_by(|a, b| a.us_per_page.total_cmp(&b.us_per_page));
    if let Some(fa) = best_fa {
        g.push(Goal {
            goal: format!("fault-ahead first touch ({}) vs kernel", fa.name),
            target: "≤ 3x".into(),
            measured: format!("{:.2}x", fa.ratio_to_kernel),
            met: fa.ratio_to_kernel <= 3.0,
        });
    }
    // 2 MiB granules: the goal is against --stage2 kernel (the 4 KiB floor); KVM's own
    // fault at the same granule is the stricter comparison, shown too.
    for b in [Backing::Hugetlb, Backing::ShmemThp] {
        if let Some(p) = row(&row_name(b, "pin:none")) {
            g.push(Goal {
                goal: format!("2 MiB granules: first touch ({}) vs kernel (4 KiB)", p.name),
                target: "≤ 3x".into(),
                measured: format!(
                    "{:.2}x ({:.2} vs {:.2} µs/page)",
                    p.ratio_to_kernel,
                    p.us_per_page,
                    p.us_per_page / p.ratio_to_kernel
                ),
                met: p.ratio_to_kernel <= 3.0,
            });
            if let Some(x) = p.ratio_to_backing_kernel {
                g.push(Goal {
                    goal: format!(
                        "2 MiB granules: first touch ({}) vs {} (KVM's own fault, same memory)",
                        p.name,
                        row_name(b, "kernel")
                    ),
                    target: "≤ 3x".into(),
                    measured: format!("{x:.2}x"),
                    met: x <= 3.0,
                });
            }
        }
    }
    if let (Some(none), Some(m)) = (row("pin:none"), row("pin:mlock-drain")) {
        let x = (paired(m, none, |a, b| a / b) - 1.0) * 100.0;
        g.push(Goal {
            goal: "mlock-drain over none (first touch, paired by round)".into(),
            target: "≤ 5%".into(),
            measured: format!("{x:+.1}%"),
            met: x <= 5.0,
        });
    }
    if let Some(l) = r
        .launch
        .iter()
        .find(|l| l.in_process && l.name.contains("pin"))
    {
        let f = l.first_exit_ms_p50.unwrap_or(f64::NAN);
        g.push(Goal {
            goal: "bare VM launch to first guest exit (hello, p50, in process)".into(),
            target: "≤ 5 ms".into(),
            measured: format!("{f:.2} ms"),
            met: f <= 5.0,
        });
    }
    if let Some(l) = r
        .launch
        .iter()
        .find(|l| !l.in_process && l.name.contains("pin"))
    {
        g.push(Goal {
            goal: "VMs/s back to back (hello, 16 MiB, one process per VM)".into(),
            target: "≥ 20".into(),
            measured: format!("{:.1}", l.vms_per_s),
            met: l.vms_per_s >= 20.0,
        });
    }
    if let Some(j) = &r.jobs {
        g.push(Goal {
            goal: format!(
                "campaign --jobs {} vs --jobs 1, VMs per minute ({} MiB memtouch, paired by round)",
                j.jobs,
                j.mem_bytes >> 20
            ),
            target: "≥ 1.6x".into(),
            measured: format!(
                "{:.2}x ({:.0} vs {:.0} VMs/min)",
                j.speedup, j.vms_per_min_jobs_n, j.vms_per_min_jobs1
            ),
            met: j.speedup >= 1.6,
        });
    }
    if let Some(x) = r.rss.iter().map(|x| x.vmm_rss_kb).max() {
        g.push(Goal {
            goal: "VMM RSS besides guest memory (max of the RSS rows)".into(),
            target: "≤ 8 MiB".into(),
            measured: format!("{:.1} MiB", x as f64 / 1024.0),
            met: x <= 8 << 10,
        });
    }
    g
}
