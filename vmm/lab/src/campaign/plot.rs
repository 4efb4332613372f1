// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm report`: tables, charts (SVG, horizontal and grouped: [`super::chart`]; PNG
//! through rsvg-convert) and CSV of campaigns.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;

use super::chart::{self, DistRow, Group, RateRow};
use super::journal::{self, RunRecord};
use super::summary::{self, CellSummary};
use vmm::exit_code::ExitCode;

/// Arguments of `pinvmm report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A campaign directory (with runs.jsonl), or a directory of campaign directories (one per
    /// host/kernel: gives a kernel × policy grid).
    pub dir: PathBuf,
    /// Write the termination-rate chart to FILE, and next to it FILE-latency.svg (each VM's
    /// median fault-resolution latency) and FILE-fault-to-pin.svg (fault-in → pin time of
    /// failed and of successful pins, per policy).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Same as --svg, converted to PNG with rsvg-convert (Debian: librsvg2-bin).
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// Write per-cell numbers as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

/// Per-cell numbers as CSV.
pub fn csv(cells: &[CellSummary]) -> String {
    let mut s = String::from(
        "cell,policy,backing,fault_in,runs,completed,terminated,terminated_injected,other,rate,rate_lo,rate_hi,pins_attempted,pins_failed,fault_p50_us,fault_p99_us,pin_p50_us,pin_p99_us,drains_local,drains_all,drain_ms,pgmigrate_fail,pgmigrate_success,failed_pins_explained,mlock_batch_failures,fault_to_pin_p50_us\n",
    );
    for c in cells {
        let v = |k: &str| c.vmstat_delta.get(k).copied().unwrap_or(0);
        let (explained, batch) = c.failures_explained();
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{},{},{:.2},{:.2},{:.2},{:.2},{},{},{:.3},{},{},{},{},{:.2}",
            c.cell,
            c.policy,
            c.backing,
            c.fault_in,
            c.runs,
            c.completed,
            c.terminated,
            c.terminated_injected,
            c.guest_failed + c.vmm_error + c.timeout + c.crashed + c.terminated_other,
            c.rate,
            c.rate_lo,
            c.rate_hi,
            c.pins_attempted,
            c.pins_failed,
            c.fault_p50_us,
            c.fault_p99_us,
            c.pin_p50_us,
            c.pin_p99_us,
            c.drains_local,
            c.drains_all,
            c.drain_ms,
            v("pgmigrate_fail"),
            v("pgmigrate_success"),
            explained,
            batch,
            c.fault_to_pin_p50_us
        );
    }
    s
}

type PlotResult = Result<(), String>;

fn write(path: &Path, svg: String) -> PlotResult {
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Row labels name only what varies between the charted cells (policy, backing, fault-in);
/// what is the same for all goes into the subtitle.
struct Labeller {
    backing: bool,
    fault_in: bool,
    constant: String,
}

impl Labeller {
    fn new<'a>(cells: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Self {
        let varies = |second: bool| {
            let mut it = cells
                .clone()
                .map(|(b, f)| if second { f } else { b }.to_owned());
            let first = it.next();
            (
                it.any(|v| Some(&v) != first.as_ref()),
                first.unwrap_or_default(),
            )
        };
        let (backing, b) = varies(false);
        let (fault_in, f) = varies(true);
        let mut constant = Vec::new();
        if !backing {
            constant.push(format!("backing {b}"));
        }
        if !fault_in {
            constant.push(format!("fault-in {f}"));
        }
        Self {
            backing,
            fault_in,
            constant: constant.join(", "),
        }
    }

    fn label(&self, policy: &str, backing: &str, fault_in: &str) -> String {
        let mut l = policy.to_owned();
        if self.backing {
            l.push_str(&format!(" / {backing}"));
        }
        if self.fault_in {
            l.push_str(&format!(" / fault-in {fault_in}"));
        }
        l
    }
}

/// Bars of termination rate per (campaign, cell) with 95% whiskers: one group per campaign.
pub fn rate_chart(path: &Path, groups: &[(String, Vec<CellSummary>)], title: &str) -> PlotResult {
    let lab = Labeller::new(
        groups
            .iter()
            .flat_map(|(_, cs)| cs.iter().map(|c| (c.backing.as_str(), c.fault_in.as_str()))),
    );
    let g: Vec<Group<RateRow>> = groups
        .iter()
        .map(|(name, cs)| Group {
            label: name.clone(),
            rows: cs
                .iter()
                .map(|c| RateRow {
                    label: lab.label(&c.policy, &c.backing, &c.fault_in),
                    rate: c.rate,
                    lo: c.rate_lo,
                    hi: c.rate_hi,
                    note: format!("{}/{}", c.terminated, c.runs),
                    color: chart::policy_color(&c.policy),
                })
                .collect(),
        })
        .collect();
    write(path, chart::rate_chart(title, &lab.constant, &g))
}

/// Records of one campaign, by cell in the summary's order.
fn by_cell<'a>(
    cells: &'a [CellSummary],
    recs: &'a [RunRecord],
) -> Vec<(&'a CellSummary, Vec<&'a RunRecord>)> {
    cells
        .iter()
        .map(|c| (c, recs.iter().filter(|r| r.cell == c.cell).collect()))
        .collect()
}

type Campaign = (String, Vec<CellSummary>, Vec<RunRecord>);

/// Each VM's median fault-resolution latency, a box per cell (VMs that resolved no fault, e.g.
/// terminated on their first pin, are left out and counted).
pub fn latency_chart(path: &Path, campaigns: &[Campaign]) -> PlotResult {
    let lab = Labeller::new(
        campaigns
            .iter()
            .flat_map(|(_, cs, _)| cs.iter().map(|c| (c.backing.as_str(), c.fault_in.as_str()))),
    );
    let g: Vec<Group<DistRow>> = campaigns
        .iter()
        .map(|(name, cells, recs)| Group {
            label: name.clone(),
            rows: by_cell(cells, recs)
                .into_iter()
                .map(|(c, rs)| {
                    let v: Vec<f64> = rs
                        .iter()
                        .filter(|r| r.faults > 0 && r.fault_p50_us > 0.0)
                        .map(|r| r.fault_p50_us)
                        .collect();
                    let left = rs.len() - v.len();
                    DistRow {
                        label: lab.label(&c.policy, &c.backing, &c.fault_in),
                        note: if left > 0 {
                            format!("{} VMs ({left} without a resolved fault)", v.len())
                        } else {
                            format!("{} VMs", v.len())
                        },
                        values: v,
                        points: Vec::new(),
                        color: chart::policy_color(&c.policy),
                    }
                })
                .collect(),
        })
        .collect();
    let sub = match lab.constant.as_str() {
        "" => "each VM's median".to_owned(),
        c => format!("each VM's median; {c}"),
    };
    write(
        path,
        chart::dist_chart(
            "Fault-resolution latency per VM",
            &sub,
            "box: middle half of the VMs, black line: median, whiskers: 10–90%",
            &g,
        ),
    )
}

/// Time from a page's fault-in to its pin, per cell: a box of each VM's median over its
/// successful pins, and one dot per failed pin (docs/FAILURES.md: a failed pin's folio waited
/// in the fault-in CPU's mlock batch for that long).
pub fn fault_to_pin_chart(path: &Path, campaigns: &[Campaign]) -> PlotResult {
    let lab = Labeller::new(
        campaigns
            .iter()
            .flat_map(|(_, cs, _)| cs.iter().map(|c| (c.backing.as_str(), c.fault_in.as_str()))),
    );
    let mut g = Vec::new();
    for (name, cells, recs) in campaigns {
        let mut rows = Vec::new();
        for (c, rs) in by_cell(cells, recs) {
            let ok: Vec<f64> = rs
                .iter()
                .map(|r| r.fault_to_pin_p50_us)
                .filter(|&v| v > 0.0)
                .collect();
            let failed: Vec<f64> = rs
                .iter()
                .flat_map(|r| &r.failures)
                .filter_map(|f| f.fault_to_pin_us)
                .collect();
            if ok.is_empty() && failed.is_empty() {
                continue;
            }
            let label = lab.label(&c.policy, &c.backing, &c.fault_in);
            if !ok.is_empty() {
                rows.push(DistRow {
                    label: format!("{label}: pins (VM medians)"),
                    note: format!("{} VMs", ok.len()),
                    values: ok,
                    points: Vec::new(),
                    color: chart::policy_color(&c.policy),
                });
            }
            if !failed.is_empty() {
                rows.push(DistRow {
                    label: format!("{label}: failed pins"),
                    note: format!("{} failed", failed.len()),
                    values: Vec::new(),
                    points: failed,
                    color: chart::policy_color(&c.policy),
                });
            }
        }
        if !rows.is_empty() {
            g.push(Group {
                label: name.clone(),
                rows,
            });
        }
    }
    let sub = match lab.constant.as_str() {
        "" => "from the fault-in through the mlocked view to the start of the pin".to_owned(),
        c => format!("from the fault-in through the mlocked view to the start of the pin; {c}"),
    };
    write(
        path,
        chart::dist_chart(
            "Fault-in to pin: failed and successful pins",
            &sub,
            "box: each VM's median over its pins (middle half, median, 10–90%); dot: one failed pin",
            &g,
        ),
    )
}

/// Campaigns found under `dir`: itself, or its subdirectories.
fn campaigns(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    if dir.join("runs.jsonl").exists() {
        return Ok(vec![(
            dir.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir.to_owned(),
        )]);
    }
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("runs.jsonl").exists())
        .map(|p| {
            (
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                p,
            )
        })
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(format!(
            "{} holds no campaign (no runs.jsonl in it or its subdirectories)",
            dir.display()
        ));
    }
    Ok(v)
}

fn svg_path_with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    p.with_file_name(format!("{stem}{suffix}.svg"))
}

fn to_png(svg: &Path, png: &Path) -> Result<(), String> {
    let st = std::process::Command::new("rsvg-convert")
        .arg("-o")
        .arg(png)
        .arg(svg)
        .status()
        .map_err(|e| format!("--png needs rsvg-convert (apt-get install librsvg2-bin): {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("rsvg-convert failed on {}", svg.display()))
    }
}

/// `pinvmm report`.
pub fn report_main(a: &ReportArgs) -> ExitCode {
    match report(a) {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!("pinvmm: {e}");
            ExitCode::BadInput
        }
    }
}

fn report(a: &ReportArgs) -> Result<(), String> {
    let found = campaigns(&a.dir)?;
    let mut all: Vec<Campaign> = Vec::new();
    for (name, dir) in &found {
        let recs = journal::load(dir).map_err(|e| e.to_string())?;
        let cells = summary::summarize(&recs);
        let label = recs
            .first()
            .map(|r| r.kernel.clone())
            .filter(|k| found.len() > 1 && !k.is_empty())
            .map_or(name.clone(), |k| format!("{name} ({k})"));
        println!("== {label}: {} VMs", recs.len());
        print!("{}", summary::table(&cells, &summary::compare(&cells)));
        print!("{}", summary::signature_table(&cells));
        all.push((label, cells, recs));
    }
    let all_cells: Vec<CellSummary> = all.iter().flat_map(|(_, c, _)| c.clone()).collect();
    if let Some(p) = &a.csv {
        std::fs::write(p, csv(&all_cells))
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    let svg = match (&a.svg, &a.png) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(p)) => Some(p.with_extension("svg")),
        _ => None,
    };
    if let Some(svg) = svg {
        let title = if all.len() > 1 {
            "VM termination rate: kernel × policy"
        } else {
            "VM termination rate per cell"
        };
        let groups: Vec<(String, Vec<CellSummary>)> =
            all.iter().map(|(l, c, _)| (l.clone(), c.clone())).collect();
        rate_chart(&svg, &groups, title)?;
        let lat = svg_path_with_suffix(&svg, "-latency");
        latency_chart(&lat, &all)?;
        let f2p = svg_path_with_suffix(&svg, "-fault-to-pin");
        fault_to_pin_chart(&f2p, &all)?;
        println!(
            "wrote {}, {} and {}",
            svg.display(),
            lat.display(),
            f2p.display()
        );
        if let Some(png) = &a.png {
            let stem = png
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            to_png(&svg, png)?;
            for (src, suffix) in [(&lat, "-latency"), (&f2p, "-fault-to-pin")] {
                to_png(src, &png.with_file_name(format!("{stem}{suffix}.png")))?;
            }
            println!(
                "wrote {} (and its -latency, -fault-to-pin PNGs)",
                png.display()
            );
        }
    }
    Ok(())
}
