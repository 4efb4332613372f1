// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm report`: plots (SVG via plotters; PNG through rsvg-convert) and CSV of campaigns.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use plotters::prelude::*;

use super::journal::{self, RunRecord};
use super::summary::{self, CellSummary};
use vmm::exit_code::ExitCode;

/// Arguments of `pinvmm report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A campaign directory (with runs.jsonl), or a directory of campaign directories (one per
    /// host/kernel: gives a kernel × policy grid).
    pub dir: PathBuf,
    /// Write the termination-rate chart to FILE (and FILE-latency.svg: fault latency CDF).
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
        "cell,policy,backing,fault_in,runs,completed,terminated,terminated_injected,other,rate,rate_lo,rate_hi,pins_attempted,pins_failed,fault_p50_us,fault_p99_us,pin_p50_us,pin_p99_us,drains_local,drains_all,drain_ms,pgmigrate_fail,pgmigrate_success\n",
    );
    for c in cells {
        let v = |k: &str| c.vmstat_delta.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{},{},{:.2},{:.2},{:.2},{:.2},{},{},{:.3},{},{}",
            c.cell,
            c.policy,
            c.backing,
            c.fault_in,
            c.runs,
            c.completed,
            c.terminated,
            c.terminated_injected,
            c.guest_failed + c.vmm_error + c.timeout + c.crashed,
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
            v("pgmigrate_success")
        );
    }
    s
}

type PlotResult = Result<(), String>;

fn perr<E: std::fmt::Debug>(e: E) -> String {
    format!("plotting failed: {e:?}")
}

/// Bars of termination rate per (group, cell) with 95% whiskers. One group = one campaign.
pub fn rate_chart(path: &Path, groups: &[(String, Vec<CellSummary>)], title: &str) -> PlotResult {
    let bars: Vec<(String, &CellSummary)> = groups
        .iter()
        .flat_map(|(g, cs)| {
            cs.iter().map(move |c| {
                (
                    if groups.len() > 1 {
                        format!("{g}: {}", c.cell)
                    } else {
                        c.cell.clone()
                    },
                    c,
                )
            })
        })
        .collect();
    let n = bars.len().max(1);
    let width = (120 + 130 * n).clamp(640, 3200) as u32;
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(perr)?;
    let ymax = bars
        .iter()
        .map(|(_, c)| c.rate_hi)
        .fold(0.05f64, f64::max)
        .min(1.0)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n as i32).into_segmented(), 0f64..ymax)
        .map_err(perr)?;
    let labels: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 11))
        .y_desc("VM termination rate (95% Wilson CI)")
        .draw()
        .map_err(perr)?;
    let colour = |policy: &str| match policy {
        "none" => RED,
        "mlock-drain" => GREEN,
        "lru-add-drain" => BLUE,
        _ => MAGENTA,
    };
    for (i, (_, c)) in bars.iter().enumerate() {
        let bar = Histogram::vertical(&chart)
            .margin(12)
            .style(colour(&c.policy).mix(0.6).filled())
            .data([(i as i32, c.rate)]);
        chart.draw_series(bar).map_err(perr)?;
    }
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, c))| {
            let x = SegmentValue::CenterOf(i as i32);
            ErrorBar::new_vertical(x, c.rate_lo, c.rate, c.rate_hi, BLACK.filled(), 12)
        }))
        .map_err(perr)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, c))| {
            let at = (
                SegmentValue::CenterOf(i as i32),
                (c.rate_hi + ymax * 0.04).min(ymax * 0.97),
            );
            Text::new(
                format!("{}/{}", c.terminated, c.runs),
                at,
                ("sans-serif", 12),
            )
        }))
        .map_err(perr)?;
    root.present().map_err(perr)
}

/// CDF over runs of each run's median fault-resolution latency, one line per cell.
pub fn latency_cdf(path: &Path, records: &[RunRecord], title: &str) -> PlotResult {
    let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.faults > 0) {
        by.entry(&r.cell).or_default().push(r.fault_p50_us);
    }
    let xmax = by.values().flatten().copied().fold(1.0f64, f64::max) * 1.05;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(perr)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, 0f64..1f64)
        .map_err(perr)?;
    chart
        .configure_mesh()
        .x_desc("median fault-resolution latency of a VM (µs)")
        .y_desc("fraction of VMs")
        .draw()
        .map_err(perr)?;
    for (i, (cell, mut xs)) in by.into_iter().enumerate() {
        xs.sort_by(|a, b| a.total_cmp(b));
        let n = xs.len() as f64;
        let c = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = xs
            .iter()
            .enumerate()
            .map(|(k, &x)| (x, (k + 1) as f64 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(perr)?
            .label(cell.to_owned())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(perr)?;
    root.present().map_err(perr)
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
    let mut groups = Vec::new();
    let mut all_records = Vec::new();
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
        all_records.extend(recs);
        groups.push((label, cells));
    }
    let all_cells: Vec<CellSummary> = groups.iter().flat_map(|(_, c)| c.clone()).collect();
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
        let title = if groups.len() > 1 {
            "VM termination rate: kernel × policy"
        } else {
            "VM termination rate per cell"
        };
        rate_chart(&svg, &groups, title)?;
        let lat = svg_path_with_suffix(&svg, "-latency");
        latency_cdf(&lat, &all_records, "fault-resolution latency per VM")?;
        println!("wrote {} and {}", svg.display(), lat.display());
        if let Some(png) = &a.png {
            to_png(&svg, png)?;
            to_png(
                &lat,
                &png.with_file_name(format!(
                    "{}-latency.png",
                    png.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default()
                )),
            )?;
            println!("wrote {}", png.display());
        }
    }
    Ok(())
}
