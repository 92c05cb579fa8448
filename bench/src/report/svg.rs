//! The latency plot (`--plot`): latency by percentile, one panel per workload, one line per
//! target. Both axes are logarithmic because the tail is the point: a cache that is fast at the
//! median but stalls at p99.9 shows up only there. Plain SVG text, so it needs no plotting crate
//! and diffs in review.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::{Report, Row, fmt_ns};

/// Panel width and height, margins (left, right, top, bottom), panels per line, x decades.
const PW: f64 = 380.0;
const PH: f64 = 250.0;
const ML: f64 = 58.0;
const MR: f64 = 12.0;
const MT: f64 = 34.0;
const MB: f64 = 34.0;
const COLS: usize = 3;
const XDEC: f64 = 4.0;

const COLORS: [(&str, &str); 6] = [
    ("source", "#1f77b4"),
    ("source-ram", "#9467bd"),
    ("source-qd", "#2ca02c"),
    ("mount", "#d62728"),
    ("mount-arena", "#ff7f0e"),
    ("ceiling", "#7f7f7f"),
];

/// Latency by percentile, one panel per workload, one line per target; both axes logarithmic
/// (x: 0, 90, 99, 99.9, 99.99 %; y: latency in decades).
pub fn svg(report: &Report) -> String {
    let mut workloads: Vec<(&str, &str)> = Vec::new();
    for r in &report.rows {
        if r.hist.is_some() && !workloads.iter().any(|w| w.0 == r.workload) {
            workloads.push((&r.workload, &r.label));
        }
    }
    let rows_n = workloads.len().div_ceil(COLS).max(1);
    let (w, h) = (PW * COLS as f64, PH * rows_n as f64 + 60.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = title_and_legend(&mut s, report);
    for (i, (wid, label)) in workloads.iter().enumerate() {
        let _ = panel(&mut s, report, i, wid, label);
    }
    s.push_str("</svg>\n");
    s
}

fn title_and_legend(s: &mut String, report: &Report) -> std::fmt::Result {
    let data = match &report.s3 {
        Some(s3) if report.files.is_empty() => format!("S3 rows against {}", s3.endpoint),
        _ => format!(
            "{} in {} files",
            crate::workload::human_bytes(report.total_bytes),
            report.files.len()
        ),
    };
    let title = format!(
        "nitro-uring bench — latency by percentile ({} cores, {}, {data})",
        report.machine.cores, report.machine.kernel,
    );
    writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(&title)
    )?;
    let mut lx = 10.0;
    // The targets this report has lines for (a run of S3 rows has no ceiling, a main run no
    // mount-arena).
    let present = |t: &str| {
        report
            .rows
            .iter()
            .any(|r| r.target == t && r.hist.is_some())
    };
    for (name, color) in COLORS.into_iter().filter(|c| present(c.0)) {
        writeln!(
            s,
            r#"<line x1="{lx}" y1="38" x2="{}" y2="38" stroke="{color}" stroke-width="2"{}/><text x="{}" y="42">{}</text>"#,
            lx + 24.0,
            dash(name),
            lx + 28.0,
            match name {
                "ceiling" => "ceiling (null FUSE fs)",
                "source-qd" => "source, O_DIRECT at mount's depth",
                "mount-arena" => "mount, --store off",
                _ => name,
            }
        )?;
        lx += 170.0;
    }
    Ok(())
}

/// The ceiling's line is dashed.
fn dash(target: &str) -> &'static str {
    if target == "ceiling" {
        r#" stroke-dasharray="5,3""#
    } else {
        ""
    }
}

/// Where panel `i` is, and its latency range in decades (`y0..y1`).
struct Frame {
    ox: f64,
    oy: f64,
    pw: f64,
    ph: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn new(i: usize, series: &[(&Row, &Histogram<u64>)]) -> Frame {
        let lo = series
            .iter()
            .map(|(_, h)| h.min().max(1))
            .min()
            .unwrap_or(1) as f64;
        let hi = series
            .iter()
            .map(|(_, h)| h.max().max(1))
            .max()
            .unwrap_or(10) as f64;
        let (y0, mut y1) = (lo.log10().floor(), hi.log10().ceil());
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        Frame {
            ox: (i % COLS) as f64 * PW,
            oy: 60.0 + (i / COLS) as f64 * PH,
            pw: PW - ML - MR,
            ph: PH - MT - MB,
            y0,
            y1,
        }
    }

    /// x of a percentile given in decades (0 = 0%, 1 = 90%, 2 = 99%, ...).
    fn px(&self, x: f64) -> f64 {
        self.ox + ML + x / XDEC * self.pw
    }

    fn py(&self, ns: f64) -> f64 {
        self.oy + MT + self.ph - (ns.max(1.0).log10() - self.y0) / (self.y1 - self.y0) * self.ph
    }
}

/// Panel `i`: workload `wid`'s targets that have latencies.
fn panel(s: &mut String, report: &Report, i: usize, wid: &str, label: &str) -> std::fmt::Result {
    let series: Vec<(&Row, &Histogram<u64>)> = report
        .rows
        .iter()
        .filter(|r| r.workload == *wid)
        .filter_map(|r| r.hist.as_ref().filter(|h| !h.is_empty()).map(|h| (r, h)))
        .collect();
    let f = Frame::new(i, &series);
    let gbps: Vec<String> = series
        .iter()
        .map(|(r, _)| format!("{} {:.2}", r.target, r.gbps))
        .collect();
    writeln!(
        s,
        r##"<text x="{}" y="{}" font-weight="bold">{}</text><text x="{}" y="{}" fill="#555">GB/s: {}</text>"##,
        f.ox + ML,
        f.oy + 14.0,
        esc(label),
        f.ox + ML,
        f.oy + 27.0,
        esc(&gbps.join(", "))
    )?;
    writeln!(
        s,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        f.ox + ML,
        f.oy + MT,
        f.pw,
        f.ph
    )?;
    axes(s, &f)?;
    for (r, hist) in &series {
        curve(s, &f, r, hist)?;
    }
    Ok(())
}

/// Grid lines and labels: percentiles along x, latency decades along y.
fn axes(s: &mut String, f: &Frame) -> std::fmt::Result {
    let (ox, oy, pw, ph) = (f.ox, f.oy, f.pw, f.ph);
    for d in 0..=XDEC as usize {
        let x = f.px(d as f64);
        let lbl = ["0%", "90%", "99%", "99.9%", "99.99%"][d];
        let anchor = if d == XDEC as usize { "end" } else { "middle" };
        writeln!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="{anchor}" fill="#555">{lbl}</text>"##,
            oy + MT,
            oy + MT + ph,
            oy + MT + ph + 13.0
        )?;
    }
    let mut dec = f.y0;
    while dec <= f.y1 + 1e-9 {
        let y = f.py(10f64.powf(dec));
        writeln!(
            s,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end" fill="#555">{}</text>"##,
            ox + ML,
            ox + ML + pw,
            ox + ML - 4.0,
            y + 4.0,
            fmt_ns(10f64.powf(dec) as u64)
        )?;
        dec += 1.0;
    }
    writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">percentile</text>"##,
        ox + ML + pw / 2.0,
        oy + MT + ph + 27.0
    )
}

/// One target's latency by percentile, sampled at 121 points up to the histogram's count.
fn curve(s: &mut String, f: &Frame, r: &Row, hist: &Histogram<u64>) -> std::fmt::Result {
    let color = COLORS
        .iter()
        .find(|c| c.0 == r.target)
        .map_or("#000", |c| c.1);
    let n = hist.len().max(1) as f64;
    let xmax = n.log10().min(XDEC);
    let mut pts = String::new();
    let steps = 120;
    for k in 0..=steps {
        let x = xmax * k as f64 / steps as f64;
        let q = (1.0 - 10f64.powf(-x)).min(1.0);
        let v = hist.value_at_quantile(q) as f64;
        write!(pts, "{:.1},{:.1} ", f.px(x), f.py(v))?;
    }
    writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.6"{}/>"#,
        pts.trim_end(),
        dash(&r.target)
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
