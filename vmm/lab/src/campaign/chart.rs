// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Horizontal, grouped charts as plain SVG: one row per cell, its label left of the plot in
//! full (never rotated, never overlapping), rows grouped under a bold group heading (one group
//! per campaign: kernel, board). Two kinds:
//!
//! - [`rate_chart`]: a bar per row (a rate in [0, 1]) with its 95% interval and `k/n`;
//! - [`dist_chart`]: a distribution per row on a log axis: a box (quartiles, median line),
//!   whiskers (10th–90th percentile), and single values as dots (e.g. each failed pin).
//!
//! Fixed fonts and sizes, so the text never depends on a renderer's font metrics.

use std::fmt::Write as _;

/// One row of a rate chart.
#[derive(Debug, Clone)]
pub struct RateRow {
    pub label: String,
    pub rate: f64,
    pub lo: f64,
    pub hi: f64,
    /// Shown right of the interval, e.g. `57/60`.
    pub note: String,
    /// Bar colour.
    pub color: &'static str,
}

/// One row of a distribution chart.
#[derive(Debug, Clone)]
pub struct DistRow {
    pub label: String,
    /// Values summarized by a box (empty: no box).
    pub values: Vec<f64>,
    /// Values drawn one by one as dots.
    pub points: Vec<f64>,
    pub color: &'static str,
    /// Shown right of the row, e.g. `n=57`.
    pub note: String,
}

/// A group of rows under a heading.
#[derive(Debug, Clone)]
pub struct Group<R> {
    pub label: String,
    pub rows: Vec<R>,
}

/// Colours by policy name, the same in every chart.
pub fn policy_color(policy: &str) -> &'static str {
    match policy {
        "none" => "#d62728",
        "mlock-drain" => "#2ca02c",
        "lru-add-drain" => "#1f77b4",
        "retry" => "#9467bd",
        _ => "#7f7f7f",
    }
}

const ROW: f64 = 20.0;
const FONT: f64 = 12.0;
/// Approximate width of one character at [`FONT`] (sans-serif), for the label column.
const CHAR_W: f64 = 6.6;
const TOP: f64 = 52.0;
const PLOT_W: f64 = 520.0;
const RIGHT: f64 = 120.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn label_width<R>(groups: &[Group<R>], label: impl Fn(&R) -> &str) -> f64 {
    let longest = groups
        .iter()
        .flat_map(|g| g.rows.iter().map(&label))
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(10);
    (longest as f64 * CHAR_W + 24.0).clamp(120.0, 560.0)
}

struct Frame {
    out: String,
    height: f64,
}

fn frame<R>(title: &str, subtitle: &str, groups: &[Group<R>], left: f64) -> Frame {
    let rows: usize = groups
        .iter()
        .filter(|g| !g.rows.is_empty())
        .map(|g| g.rows.len() + 1)
        .sum::<usize>()
        .max(1);
    let width = left + PLOT_W + RIGHT;
    let height = TOP + ROW * rows as f64 + 56.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Arial, sans-serif" font-size="{FONT}">
<rect width="100%" height="100%" fill="white"/>
<text x="{:.1}" y="20" text-anchor="middle" font-size="15">{}</text>
<text x="{:.1}" y="38" text-anchor="middle" fill="#555">{}</text>
"##,
        width / 2.0,
        esc(title),
        width / 2.0,
        esc(subtitle)
    );
    Frame { out, height }
}

/// A group's heading: bold, on a light band across the whole chart.
fn heading(out: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        out,
        r##"<rect x="0" y="{:.1}" width="100%" height="{:.1}" fill="#f0f0f0"/>
<text x="6" y="{:.1}" font-weight="bold">{}</text>"##,
        y + 1.0,
        ROW - 2.0,
        y + 14.0,
        esc(label)
    );
}

/// Bars of rates with their intervals, grouped.
pub fn rate_chart(title: &str, subtitle: &str, groups: &[Group<RateRow>]) -> String {
    let left = label_width(groups, |r| &r.label);
    let mut f = frame(title, subtitle, groups, left);
    let x = |v: f64| left + PLOT_W * v.clamp(0.0, 1.0);
    let bottom = f.height - 40.0;
    for t in 0..=10 {
        let v = t as f64 / 10.0;
        let _ = writeln!(
            f.out,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="{3}"/>"##,
            x(v),
            TOP - 6.0,
            bottom,
            if t % 5 == 0 { "#bbb" } else { "#e5e5e5" }
        );
        if t % 2 == 0 {
            let _ = writeln!(
                f.out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}%</text>"#,
                x(v),
                bottom + 16.0,
                t * 10
            );
        }
    }
    let _ = writeln!(
        f.out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">VMs terminated (bar), 95% Wilson interval (whisker), terminated/runs</text>"##,
        left + PLOT_W / 2.0,
        bottom + 32.0
    );
    let mut y = TOP;
    for g in groups {
        heading(&mut f.out, y, &g.label);
        y += ROW;
        for r in &g.rows {
            let mid = y + ROW / 2.0;
            let _ = writeln!(
                f.out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 8.0,
                y + 14.0,
                esc(&r.label)
            );
            let _ = writeln!(
                f.out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="0.8"/>"#,
                left,
                y + 4.0,
                (PLOT_W * r.rate.clamp(0.0, 1.0)).max(1.5),
                ROW - 8.0,
                r.color
            );
            let _ = writeln!(
                f.out,
                r#"<path d="M{lo:.1} {a:.1}V{b:.1}M{lo:.1} {mid:.1}H{hi:.1}M{hi:.1} {a:.1}V{b:.1}" stroke="black" fill="none"/>"#,
                lo = x(r.lo),
                hi = x(r.hi),
                a = y + 5.0,
                b = y + ROW - 5.0,
            );
            let _ = writeln!(
                f.out,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                x(r.hi) + 6.0,
                y + 14.0,
                esc(&r.note)
            );
            y += ROW;
        }
    }
    f.out.push_str("</svg>\n");
    f.out
}

/// The `q` quantile of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// A µs value as a short label: `10 µs`, `1 ms`, `1 s`.
fn us_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{} s", v / 1e6)
    } else if v >= 1e3 {
        format!("{} ms", v / 1e3)
    } else {
        format!("{v} µs")
    }
}

/// Distributions on a log axis (values in µs), grouped. `legend` explains the marks.
pub fn dist_chart(title: &str, subtitle: &str, legend: &str, groups: &[Group<DistRow>]) -> String {
    let left = label_width(groups, |r| &r.label);
    let mut f = frame(title, subtitle, groups, left);
    let all = groups
        .iter()
        .flat_map(|g| g.rows.iter())
        .flat_map(|r| r.values.iter().chain(&r.points))
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0);
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in all {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        (lo, hi) = (1.0, 1000.0);
    }
    let (d0, d1) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let x = |v: f64| {
        let l = v.max(10f64.powf(d0)).log10();
        left + PLOT_W * (l - d0) / (d1 - d0)
    };
    let bottom = f.height - 40.0;
    let mut d = d0;
    while d <= d1 + 1e-9 {
        let v = 10f64.powf(d);
        let _ = writeln!(
            f.out,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#bbb"/>"##,
            x(v),
            TOP - 6.0,
            bottom
        );
        let _ = writeln!(
            f.out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(v),
            bottom + 16.0,
            us_label(v)
        );
        for k in 2..10 {
            let m = v * k as f64;
            if m.log10() < d1 {
                let _ = writeln!(
                    f.out,
                    r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#eee"/>"##,
                    x(m),
                    TOP - 6.0,
                    bottom
                );
            }
        }
        d += 1.0;
    }
    let _ = writeln!(
        f.out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
        left + PLOT_W / 2.0,
        bottom + 32.0,
        esc(legend)
    );
    let mut y = TOP;
    if groups.iter().all(|g| g.rows.is_empty()) {
        let _ = writeln!(
            f.out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#a00">no values recorded</text>"##,
            left + PLOT_W / 2.0,
            y + 14.0
        );
    }
    for g in groups.iter().filter(|g| !g.rows.is_empty()) {
        heading(&mut f.out, y, &g.label);
        y += ROW;
        for r in &g.rows {
            let mid = y + ROW / 2.0;
            let _ = writeln!(
                f.out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 8.0,
                y + 14.0,
                esc(&r.label)
            );
            let mut v: Vec<f64> = r
                .values
                .iter()
                .copied()
                .filter(|v| v.is_finite() && *v > 0.0)
                .collect();
            v.sort_by(f64::total_cmp);
            let mut right = left;
            if !v.is_empty() {
                let (p10, p25, p50, p75, p90) = (
                    quantile(&v, 0.1),
                    quantile(&v, 0.25),
                    quantile(&v, 0.5),
                    quantile(&v, 0.75),
                    quantile(&v, 0.9),
                );
                let _ = writeln!(
                    f.out,
                    r#"<path d="M{:.1} {mid:.1}H{:.1}M{:.1} {mid:.1}H{:.1}" stroke="{c}"/>"#,
                    x(p10),
                    x(p25),
                    x(p75),
                    x(p90),
                    c = r.color
                );
                let _ = writeln!(
                    f.out,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{c}" fill-opacity="0.35" stroke="{c}"/>"#,
                    x(p25),
                    y + 4.0,
                    (x(p75) - x(p25)).max(1.5),
                    ROW - 8.0,
                    c = r.color
                );
                let _ = writeln!(
                    f.out,
                    r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="black" stroke-width="2"/>"#,
                    x(p50),
                    y + 3.0,
                    y + ROW - 3.0
                );
                right = right.max(x(p90));
            }
            for &p in r.points.iter().filter(|v| v.is_finite() && **v > 0.0) {
                let _ = writeln!(
                    f.out,
                    r#"<circle cx="{:.1}" cy="{mid:.1}" r="3" fill="{}" fill-opacity="0.6" stroke="black" stroke-width="0.5"/>"#,
                    x(p),
                    r.color
                );
                right = right.max(x(p) + 3.0);
            }
            let _ = writeln!(
                f.out,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                right + 6.0,
                y + 14.0,
                esc(&r.note)
            );
            y += ROW;
        }
    }
    f.out.push_str("</svg>\n");
    f.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_chart_has_every_label_once_and_escapes() {
        let g = vec![Group {
            label: "k6.12.43 <no fix>".into(),
            rows: vec![
                RateRow {
                    label: "none / shmem / touch".into(),
                    rate: 0.95,
                    lo: 0.86,
                    hi: 0.98,
                    note: "57/60".into(),
                    color: policy_color("none"),
                },
                RateRow {
                    label: "mlock-drain / shmem / touch".into(),
                    rate: 0.0,
                    lo: 0.0,
                    hi: 0.06,
                    note: "0/60".into(),
                    color: policy_color("mlock-drain"),
                },
            ],
        }];
        let s = rate_chart("t", "s", &g);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("none / shmem / touch").count(), 1);
        assert!(s.contains("k6.12.43 &lt;no fix&gt;"));
        assert!(s.contains("57/60") && s.contains("100%"));
    }

    #[test]
    fn dist_chart_uses_a_log_axis() {
        let g = vec![Group {
            label: "g".into(),
            rows: vec![DistRow {
                label: "ok".into(),
                values: vec![3.0, 30.0, 300.0],
                points: vec![5000.0],
                color: "#000",
                note: "n=3".into(),
            }],
        }];
        let s = dist_chart("t", "s", "legend", &g);
        for l in ["1 µs", "10 µs", "100 µs", "1 ms", "10 ms"] {
            assert!(s.contains(&format!(">{l}<")), "{l} missing");
        }
        assert!(s.contains("<circle"));
        // empty input still draws
        let s = dist_chart(
            "t",
            "s",
            "l",
            &[Group::<DistRow> {
                label: "x".into(),
                rows: vec![],
            }],
        );
        assert!(s.contains("</svg>"));
    }
}
