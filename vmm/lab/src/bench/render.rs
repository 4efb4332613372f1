// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! How a bench run is shown: the tables (Markdown) and the first-touch chart (SVG).

use std::fmt::Write as _;

use vmm::host::hugepages::HUGE_PAGE_SIZE;
use vmm::stage2::drain::DrainPolicy;
use vmm::sys::PAGE_SIZE;
use vmm::{Backing, Stage2};

use super::common::us;
use super::report::BenchReport;
use super::touch::TouchRow;

pub(super) fn f(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

pub(super) fn granule_name(bytes: u64) -> &'static str {
    if bytes >= HUGE_PAGE_SIZE {
        "2 MiB"
    } else {
        "4 KiB"
    }
}

impl BenchReport {
    fn baseline_of(&self, name: &str) -> Option<f64> {
        self.baseline
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Markdown tables for people (and docs/PERFORMANCE.md).
    pub fn human(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        if !self.touch.is_empty() {
            let _ = writeln!(
                w,
                "First touch: memtouch's first write pass over a {} MiB guest, µs per 4 KiB page (2 MiB granules: per 4 KiB page equivalent; median of {} interleaved runs)\n",
                self.mem_bytes >> 20,
                self.reps
            );
            let base = !self.baseline.is_empty();
            let _ = writeln!(
                w,
                "| path | granule | µs/page | min–max | GiB/s | × kernel | × kernel, same memory | × uffd | resolve p50 µs | fault p50 µs | fault p99 µs | pin p50 µs | drain µs/pin | pins/fault |{}",
                if base {
                    " baseline µs/page | speed-up |"
                } else {
                    ""
                }
            );
            let _ = writeln!(
                w,
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|{}",
                if base { "---|---|" } else { "" }
            );
            for r in self.touch.iter().filter(|r| r.load == 0) {
                let b = self.baseline_of(&r.name);
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {}–{} | {:.3} | {:.2}x | {} | {:.2}x | {} | {} | {} | {} | {} | {} |{}",
                    r.name,
                    granule_name(r.granule_bytes),
                    us(r.us_per_page),
                    us(r.us_per_page_min),
                    us(r.us_per_page_max),
                    r.gib_per_s,
                    r.ratio_to_kernel,
                    r.ratio_to_backing_kernel
                        .map_or("-".into(), |x| format!("{x:.2}x")),
                    r.ratio_to_uffd,
                    f(r.resolve_p50_us),
                    f(r.fault_p50_us),
                    f(r.fault_p99_us),
                    r.pin_p50_us.map_or("-".into(), |x| format!("{x:.2}")),
                    r.drain_us_per_pin.map_or("-".into(), |x| format!("{x:.2}")),
                    r.pins_per_fault.map_or("-".into(), |x| format!("{x:.2}")),
                    match (base, b) {
                        (false, _) => String::new(),
                        (true, Some(b)) => format!(" {b:.2} | {:.2}x |", b / r.us_per_page),
                        (true, None) => " - | - |".into(),
                    }
                );
            }
            if let Some(f) = &self.baseline_file {
                let _ = writeln!(w, "\nBaseline: {f}.");
            }
            let _ = writeln!(w);
            self.loaded_table(w);
            let facts: Vec<&TouchRow> = self
                .touch
                .iter()
                .filter(|r| r.kvm_2m_share.is_some() || r.huge_folio_share.is_some())
                .filter(|r| {
                    r.backing != Backing::Shmem || r.name == "kernel" || r.name == "pin:none"
                })
                .collect();
            if !facts.is_empty() {
                let _ = writeln!(
                    w,
                    "What the pin and KVM really got (medians over the runs; read while each VM ran)\n"
                );
                let _ = writeln!(
                    w,
                    "| path | granule asked | guest memory KVM mapped with 2 MiB entries | resident granules in 2 MiB folios |"
                );
                let _ = writeln!(w, "|---|---|---|---|");
                let pct = |v: Option<f64>| v.map_or("-".into(), |x| format!("{:.0}%", x * 100.0));
                for r in facts {
                    let _ = writeln!(
                        w,
                        "| {} | {} | {} | {} |",
                        r.name,
                        granule_name(r.granule_bytes),
                        pct(r.kvm_2m_share),
                        pct(r.huge_folio_share)
                    );
                }
                let _ = writeln!(w);
            }
        }
        if !self.drain_in_vm.is_empty() {
            let _ = writeln!(
                w,
                "Drain policies in the VM (from the rows above; over none: median over rounds of the same round's difference)\n"
            );
            let _ = writeln!(
                w,
                "| memory | policy | drain µs/pin (resolver) | guest µs/page over none | over none |"
            );
            let _ = writeln!(w, "|---|---|---|---|---|");
            for d in &self.drain_in_vm {
                let _ = writeln!(
                    w,
                    "| {} | {} | {:.2} | {:+.3} | {:+.1}% |",
                    d.backing,
                    d.policy,
                    d.drain_us_per_pin,
                    d.over_none_us_per_page,
                    d.over_none_pct
                );
            }
            let _ = writeln!(w);
        }
        if !self.drain_micro.is_empty() {
            let _ = writeln!(w, "Drains and pins alone (no VM)\n");
            let _ = writeln!(w, "| call | CPUs with a pending batch | p50 µs | p90 µs |");
            let _ = writeln!(w, "|---|---|---|---|");
            for d in &self.drain_micro {
                let _ = writeln!(
                    w,
                    "| {} | {} | {:.2} | {:.2} |",
                    d.name,
                    d.cpus_with_pending.map_or("-".into(), |c| c.to_string()),
                    d.p50_us,
                    d.p90_us
                );
            }
            let _ = writeln!(w);
        }
        if !self.launch.is_empty() {
            let _ = writeln!(w, "Launch: bare hello VM, back to back\n");
            let _ = writeln!(
                w,
                "| VM | how | VMs | first exit p50 ms | first exit p90 ms | guest exit p50 ms | wall p50 ms | VMs/s |"
            );
            let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
            for l in &self.launch {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {} | {:.2} | {:.1} |",
                    l.name,
                    if l.in_process {
                        "in process"
                    } else {
                        "process per VM"
                    },
                    l.vms,
                    l.first_exit_ms_p50
                        .map_or("-".into(), |x| format!("{x:.2}")),
                    l.first_exit_ms_p90
                        .map_or("-".into(), |x| format!("{x:.2}")),
                    l.guest_exit_ms_p50
                        .map_or("-".into(), |x| format!("{x:.2}")),
                    l.wall_ms_p50,
                    l.vms_per_s
                );
            }
            let _ = writeln!(w);
        }
        if !self.rss.is_empty() {
            let _ = writeln!(w, "VMM resident memory while the VM runs\n");
            let _ = writeln!(
                w,
                "| VM | guest MiB | RssAnon KiB | RssFile KiB | RssShmem KiB (guest) | VMM RSS besides guest MiB |"
            );
            let _ = writeln!(w, "|---|---|---|---|---|---|");
            for r in &self.rss {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {:.1} |",
                    r.name,
                    r.guest_mem_mib,
                    r.rss_anon_kb,
                    r.rss_file_kb,
                    r.rss_shmem_kb,
                    r.vmm_rss_kb as f64 / 1024.0
                );
            }
            let _ = writeln!(w);
        }
        if let Some(q) = &self.qemu {
            q.human(w);
        }
        if let Some(j) = &self.jobs {
            let _ = writeln!(
                w,
                "Campaign throughput: `pinvmm campaign --jobs N` against `--jobs 1`, {} memtouch VMs of {} MiB per campaign ({}), {} rounds, the order flipped each round\n",
                j.vms_per_campaign,
                j.mem_bytes >> 20,
                j.policies.join(", "),
                self.reps
            );
            let _ = writeln!(
                w,
                "| --jobs | VMs/min (median) | wall s per campaign (each round) |"
            );
            let _ = writeln!(w, "|---|---|---|");
            for (n, v) in [(1, j.vms_per_min_jobs1), (j.jobs, j.vms_per_min_jobs_n)] {
                let walls: Vec<String> = j
                    .samples
                    .iter()
                    .filter(|x| x.jobs == n)
                    .map(|x| format!("{:.2}", x.wall_s))
                    .collect();
                let _ = writeln!(w, "| {n} | {v:.1} | {} |", walls.join(", "));
            }
            let _ = writeln!(
                w,
                "\n--jobs {} over --jobs 1: {:.2}x (median of the per-round ratios)\n",
                j.jobs, j.speedup
            );
        }
        if !self.goals.is_empty() {
            let _ = writeln!(w, "Goals\n");
            let _ = writeln!(w, "| goal | target | measured | met |");
            let _ = writeln!(w, "|---|---|---|---|");
            for g in &self.goals {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} |",
                    g.goal,
                    g.target,
                    g.measured,
                    if g.met { "yes" } else { "**no**" }
                );
            }
            let _ = writeln!(w);
        }
        for c in &self.host_changes {
            let _ = writeln!(w, "Host setting changed for the run: {c}.");
        }
        for x in &self.skipped {
            let _ = writeln!(w, "**Not measured**: {x}.");
        }
        if !self.host_changes.is_empty() || !self.skipped.is_empty() {
            let _ = writeln!(w);
        }
        let h = &self.host;
        let _ = writeln!(
            w,
            "`{}` — host: kernel {}, CPU {} ({} CPUs), KVM {}; fault CPU {}, pin CPU {}; load average {} before, {} after; {} UTC; {:.0} s.",
            self.command,
            h.kernel_release,
            h.cpu,
            h.online_cpus,
            h.kvm_backend.split(" (").next().unwrap_or(""),
            self.fault_cpu,
            self.pin_cpu,
            self.loadavg_before,
            self.loadavg_after,
            self.date_utc,
            self.wall_s
        );
        s
    }
}

impl BenchReport {
    /// The loaded rows next to their quiet rows.
    fn loaded_table(&self, w: &mut String) {
        let loaded: Vec<&TouchRow> = self.touch.iter().filter(|r| r.load > 0).collect();
        if loaded.is_empty() {
            return;
        }
        let _ = writeln!(
            w,
            "First touch under load: {} busy threads (CPU-bound, in the bench's process, thread i on CPU i mod CPUs) beside each VM, on {} CPUs; the same guest, µs per 4 KiB page (median of {} interleaved runs; loaded/quiet: median of the per-round ratios)\n",
            self.load, self.host.online_cpus, self.reps
        );
        let _ = writeln!(
            w,
            "| path | quiet µs/page | loaded µs/page | min–max | loaded/quiet | × loaded uffd | × loaded kernel | run-queue wait µs/fault | resolve p50 µs | waits that slept at once |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
        for r in loaded {
            let base = r.name.strip_prefix("loaded:").unwrap_or(&r.name);
            let quiet = self
                .touch
                .iter()
                .find(|q| q.load == 0 && q.name == base)
                .map(|q| us(q.us_per_page));
            let wait: Vec<f64> = r
                .samples
                .iter()
                .filter_map(|x| x.runq_wait_us_per_fault)
                .collect();
            let crowded: u64 = r.samples.iter().map(|x| x.crowded_waits).sum();
            let _ = writeln!(
                w,
                "| {base} | {} | {} | {}–{} | {} | {:.2}x | {:.2}x | {} | {} | {} |",
                quiet.unwrap_or_else(|| "-".into()),
                us(r.us_per_page),
                us(r.us_per_page_min),
                us(r.us_per_page_max),
                r.ratio_to_quiet.map_or("-".into(), |x| format!("{x:.2}x")),
                r.ratio_to_uffd,
                r.ratio_to_kernel,
                if wait.is_empty() {
                    "-".into()
                } else {
                    format!("{:.1}", vmm::stats::median(&wait))
                },
                f(r.resolve_p50_us),
                if r.stage2 == Stage2::Kernel {
                    "-".into()
                } else {
                    crowded.to_string()
                },
            );
        }
        let _ = writeln!(w);
    }
}

/// One bar of the chart.
pub(super) struct Bar {
    label: String,
    median: f64,
    min: f64,
    max: f64,
    colour: plotters::style::RGBColor,
    baseline: Option<f64>,
}

/// The chart's bars: every touch row (2 MiB rows in lighter colours), then QEMU's rows.
pub(super) fn chart_bars(r: &BenchReport) -> Vec<Bar> {
    use plotters::style::RGBColor;
    let policy_colour = |t: &TouchRow| match (t.stage2, t.policy) {
        (Stage2::Kernel | Stage2::Eager, _) => RGBColor(60, 60, 60),
        (Stage2::Uffd, _) => RGBColor(0, 170, 190),
        (_, DrainPolicy::None) => RGBColor(215, 40, 40),
        (_, DrainPolicy::MlockDrain) => RGBColor(30, 150, 50),
        (_, DrainPolicy::LruAddDrain) => RGBColor(40, 70, 210),
        (_, DrainPolicy::Retry) => RGBColor(180, 40, 180),
    };
    let lighten = |c: RGBColor| RGBColor(c.0 / 2 + 120, c.1 / 2 + 120, c.2 / 2 + 120);
    let mut bars: Vec<Bar> = r
        .touch
        .iter()
        .map(|t| {
            let c = policy_colour(t);
            Bar {
                label: t.name.clone(),
                median: t.us_per_page,
                min: t.us_per_page_min,
                max: t.us_per_page_max,
                colour: if t.granule_bytes > PAGE_SIZE as u64 {
                    lighten(c)
                } else {
                    c
                },
                baseline: r.baseline_of(&t.name),
            }
        })
        .collect();
    if let Some(q) = &r.qemu {
        bars.extend(q.rows.iter().filter(|x| x.vmm == "qemu").filter_map(|x| {
            Some(Bar {
                label: format!("QEMU, {}", x.memory.split(" (").next().unwrap_or("")),
                median: x.first_touch_us_per_page?,
                min: x.first_touch_min?,
                max: x.first_touch_max?,
                colour: RGBColor(230, 130, 0),
                baseline: None,
            })
        }));
    }
    bars
}

/// Horizontal bars of first-touch µs per 4 KiB page per row (log scale), with the
/// fastest–slowest repetition as a whisker: 4 KiB rows, 2 MiB rows (lighter) and QEMU
/// (orange); the baseline's bar (grey, above) next to each row when given.
pub fn touch_chart(path: &std::path::Path, r: &BenchReport) -> Result<(), String> {
    use plotters::prelude::*;
    let perr = |e: &dyn std::fmt::Debug| format!("plotting {} failed: {e:?}", path.display());
    let bars = chart_bars(r);
    let n = bars.len().max(1) as i32;
    let xmax = bars
        .iter()
        .map(|b| b.max.max(b.baseline.unwrap_or(0.0)))
        .fold(10.0f64, f64::max)
        * 4.0;
    let xmin = bars
        .iter()
        .map(|b| b.min)
        .filter(|x| *x > 0.0)
        .fold(1.0f64, f64::min)
        / 2.0;
    let height = (90 + 28 * n) as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(&e))?;
    let mut title = format!(
        "First touch, {} MiB guest: µs per 4 KiB page (median; whisker: min–max of {}); lighter: 2 MiB granules; orange: QEMU",
        r.mem_bytes >> 20,
        r.reps
    );
    if !r.baseline.is_empty() {
        title.push_str("; grey: baseline");
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(200)
        .build_cartesian_2d((xmin..xmax).log_scale(), (0..n - 1).into_segmented())
        .map_err(|e| perr(&e))?;
    // Row 0 (kernel) at the top.
    let y = |i: usize| n - 1 - i as i32;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n as usize)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels
                .get((n - 1 - *i) as usize)
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_style(("sans-serif", 12))
        .x_desc("µs per 4 KiB page (log scale)")
        .draw()
        .map_err(|e| perr(&e))?;
    let has_base = !r.baseline.is_empty();
    for (i, b) in bars.iter().enumerate() {
        let (lo, hi) = (SegmentValue::Exact(y(i)), SegmentValue::Exact(y(i) + 1));
        let mut bar = Rectangle::new([(xmin, lo), (b.median, hi)], b.colour.mix(0.8).filled());
        // Pixel margins: top, bottom, left, right (the baseline takes the top half).
        bar.set_margin(if has_base { 14 } else { 5 }, 3, 0, 0);
        chart.draw_series([bar]).map_err(|e| perr(&e))?;
        if let Some(base) = b.baseline {
            let (lo, hi) = (SegmentValue::Exact(y(i)), SegmentValue::Exact(y(i) + 1));
            let mut bb = Rectangle::new([(xmin, lo), (base, hi)], RGBColor(175, 175, 175).filled());
            bb.set_margin(3, 15, 0, 0);
            chart.draw_series([bb]).map_err(|e| perr(&e))?;
        }
    }
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            ErrorBar::new_horizontal(
                SegmentValue::CenterOf(y(i)),
                b.min,
                b.median,
                b.max,
                BLACK.filled(),
                6,
            )
        }))
        .map_err(|e| perr(&e))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let mut s = us(b.median);
            if let Some(base) = b.baseline {
                s.push_str(&format!(" (was {})", us(base)));
            }
            Text::new(
                s,
                (b.max * 1.08, SegmentValue::CenterOf(y(i))),
                ("sans-serif", 11),
            )
        }))
        .map_err(|e| perr(&e))?;
    root.present().map_err(|e| perr(&e))
}
