//! The table on stdout. It is what most readers see of a run, so each line carries the spread of
//! the runs and how disturbed the row was next to the median, and the legend under it says what
//! every column means.

use std::fmt::Write as _;

use super::{Latency, Report, Row, fmt_ns};

/// The stdout table: one line per workload and target, ratios on the mount line.
pub fn table(report: &Report) -> String {
    let mut s = String::new();
    // As wide as the longest label (the resident and S3 rows have long ones), at least 26.
    let w = report
        .rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0)
        .max(26);
    let _ = header(&mut s, w);
    let mut last = String::new();
    for r in &report.rows {
        let name = if r.workload != last {
            r.label.clone()
        } else {
            String::new()
        };
        last.clone_from(&r.workload);
        let _ = row(&mut s, report, r, &name, w);
    }
    let _ = writeln!(
        s,
        "(GB/s: median of the runs, min–max: slowest and fastest run; mode: how the source was read, or the FUSE cache mode; \
         source-qd: the source read with O_DIRECT through io_uring at the mount engine's queue depth and chunk size; \
         mnt/src, mnt/srcQ, mnt/ceil: the mount's median over the source's, source-qd's, ceiling's; \
         S3 rows: source is a plain object_store client's ranged GETs (cold) or a local copy in the page cache (warm), mount-arena the mount with --store off; CPU s: this process, daemon included; \
         other: CPU time outside this process during the row — other processes, kernel threads — as a share of the machine, from 10 ms ticks, shown for rows of 1 s or more)"
    );
    s.lines().map(|l| l.trim_end().to_string() + "\n").collect()
}

fn header(s: &mut String, w: usize) -> std::fmt::Result {
    writeln!(
        s,
        "{:<w$} {:<11} {:<13} {:>7} {:>13} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}  {:>7} {:>8} {:>8}",
        "workload",
        "target",
        "mode",
        "GB/s",
        "min–max",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "CPU s",
        "other",
        "mnt/src",
        "mnt/srcQ",
        "mnt/ceil"
    )
}

/// One row's line (labels `w` wide); `name` is the workload's label on its first line, empty on the others.
fn row(s: &mut String, report: &Report, r: &Row, name: &str, w: usize) -> std::fmt::Result {
    let mode = if r.target.starts_with("source") {
        short_access(&r.access)
    } else {
        r.cache_mode.clone()
    };
    if let Some(why) = &r.skipped {
        return writeln!(s, "{:<w$} {:<11} skipped: {why}", name, r.target);
    }
    let l = r.latency_ns.as_ref();
    let lat = |f: fn(&Latency) -> u64| l.map_or_else(|| "-".into(), |l| fmt_ns(f(l)));
    let (rs, rq, rc) = ratios(report, r);
    let spread = r.runs.as_ref().map_or_else(
        || "-".into(),
        |x| format!("{:.2}–{:.2}", x.min_gbps, x.max_gbps),
    );
    writeln!(
        s,
        "{:<w$} {:<11} {:<13} {:>7.2} {:>13} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6.2} {:>6}  {:>7} {:>8} {:>8}",
        name,
        r.target,
        mode,
        r.median_gbps(),
        spread,
        lat(|l| l.p50),
        lat(|l| l.p90),
        lat(|l| l.p99),
        lat(|l| l.p999),
        lat(|l| l.max),
        r.cpu_s,
        // /proc/stat counts 10 ms ticks: too coarse for a share of a short row.
        if r.seconds >= 1.0 {
            format!("{:.0}%", r.others_share * 100.0)
        } else {
            "-".into()
        },
        rs,
        rq,
        rc
    )
}

/// The mount line's ratios (over source, source-qd, ceiling); empty on the other lines. A second
/// mount of the same workload (`mount-arena`, S3 rows) gets its own ratio over the source.
fn ratios(report: &Report, r: &Row) -> (String, String, String) {
    if r.target.starts_with("mount-") {
        let source = report
            .rows
            .iter()
            .find(|x| {
                x.workload == r.workload
                    && x.target == "source"
                    && x.skipped.is_none()
                    && x.gbps > 0.0
            })
            .map(Row::median_gbps);
        return (
            fmt_ratio(source.map(|s| r.median_gbps() / s)),
            String::new(),
            String::new(),
        );
    }
    if r.target != "mount" {
        return (String::new(), String::new(), String::new());
    }
    let ratio = report.ratios.iter().find(|x| x.workload == r.workload);
    (
        fmt_ratio(ratio.and_then(|x| x.mount_over_source)),
        fmt_ratio(ratio.and_then(|x| x.mount_over_source_same_depth)),
        fmt_ratio(ratio.and_then(|x| x.mount_over_ceiling)),
    )
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}×"))
}

fn short_access(a: &str) -> String {
    if a.starts_with("O_DIRECT, io_uring") {
        // "O_DIRECT, io_uring READ_FIXED, 64 × 1.0 MiB reads in flight" → "O_DIRECT qd64"
        let depth = a.split(", ").nth(2).and_then(|p| p.split(' ').next());
        depth.map_or_else(|| "O_DIRECT".into(), |d| format!("O_DIRECT qd{d}"))
    } else if a.starts_with("object_store") {
        // "object_store ranged GETs, 32 × 1.0 MiB in flight" → "GET qd32"
        let depth = a.split(", ").nth(1).and_then(|p| p.split(' ').next());
        depth.map_or_else(|| "GET".into(), |d| format!("GET qd{d}"))
    } else if a.starts_with("O_DIRECT") {
        "O_DIRECT".into()
    } else if a.starts_with("mmap") {
        "mmap".into()
    } else if a.starts_with("buffered (") {
        "buffered*".into()
    } else {
        a.into()
    }
}
