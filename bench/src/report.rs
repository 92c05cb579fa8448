//! What a run produces: the rows (one per workload and target), the ratios, the table on stdout,
//! the JSON document and the SVG of the latency distributions.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::dataset::DataFile;
use crate::sys::Machine;
use crate::workload::Measurement;

/// Report order of the targets. `source-qd` (the source read with O_DIRECT through io_uring at the
/// mount engine's queue depth and chunk size) runs in the cold sequential row only.
pub const TARGETS: [&str; 4] = ["source", "source-qd", "mount", "ceiling"];

/// Throughput of each run (each round of a timed row, each cold run from dropped caches) and its
/// spread: the row's `gbps` is all runs' bytes over all runs' time, these are per run.
#[derive(Serialize, Clone, Debug)]
pub struct Runs {
    pub n: usize,
    pub gbps: Vec<f64>,
    pub min_gbps: f64,
    pub median_gbps: f64,
    pub max_gbps: f64,
}

impl Runs {
    /// None for no runs; the median of an even count is the mean of the middle two.
    pub fn of(gbps: &[f64]) -> Option<Runs> {
        if gbps.is_empty() {
            return None;
        }
        let mut v = gbps.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Runs {
            n,
            gbps: gbps.to_vec(),
            min_gbps: v[0],
            median_gbps: median,
            max_gbps: v[n - 1],
        })
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Latency {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Serialize)]
pub struct Row {
    /// Stable id, e.g. `rand-4k-nt`.
    pub workload: String,
    /// Human label, e.g. `random 4 KiB ×4 threads`.
    pub label: String,
    /// `source`, `source-qd`, `mount` or `ceiling`.
    pub target: String,
    /// The kernel cache mode of the FUSE target (`direct`, `keep`), `-` for the source.
    pub cache_mode: String,
    /// How files were opened/read (`buffered`, `O_DIRECT`, `mmap ...`).
    pub access: String,
    /// What was cached before the run (page cache, arena).
    pub state: String,
    pub threads: usize,
    pub block_bytes: u64,
    /// Why there are no numbers, when the row was skipped.
    pub skipped: Option<String>,
    pub bytes: u64,
    pub ops: u64,
    pub seconds: f64,
    pub gbps: f64,
    pub ops_per_sec: f64,
    /// GB/s of every run and their min / median / max (the table shows the median).
    pub runs: Option<Runs>,
    /// Process CPU time during the run: readers plus, in-process, the FUSE workers and ring thread.
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    pub cpu_s: f64,
    /// CPU seconds used outside this process during the row (other processes, kernel threads):
    /// the machine's busy time minus ours.
    pub others_cpu_s: f64,
    /// The same as a share of the machine (cores × wall time): how disturbed the row was.
    pub others_share: f64,
    pub latency_ns: Option<Latency>,
    /// Every recorded latency bucket: [value_ns, count], value = highest value equivalent to the bucket.
    pub histogram_ns: Vec<[u64; 2]>,
    /// Mount counters over this run (mount rows only): hits, misses, fills, fill_bytes, ...
    pub mount_stats: Option<serde_json::Value>,
    #[serde(skip)]
    pub hist: Option<Histogram<u64>>,
}

pub struct RowSpec<'a> {
    pub workload: &'a str,
    pub label: &'a str,
    pub target: &'a str,
    pub cache_mode: &'a str,
    pub state: &'a str,
    pub threads: usize,
    pub block_bytes: u64,
}

impl Row {
    pub fn measured(spec: &RowSpec<'_>, m: Measurement) -> Row {
        let h = &m.hist;
        let latency = (!h.is_empty()).then(|| Latency {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        });
        let histogram_ns = h
            .iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_at_value()])
            .collect();
        let secs = m.seconds.max(1e-9);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Row {
            workload: spec.workload.into(),
            label: spec.label.into(),
            target: spec.target.into(),
            cache_mode: spec.cache_mode.into(),
            access: m.access.clone(),
            state: spec.state.into(),
            threads: spec.threads,
            block_bytes: spec.block_bytes,
            skipped: None,
            bytes: m.bytes,
            ops: m.ops,
            seconds: m.seconds,
            gbps: m.bytes as f64 / secs / 1e9,
            ops_per_sec: m.ops as f64 / secs,
            runs: None,
            cpu_user_s: m.cpu_user,
            cpu_sys_s: m.cpu_sys,
            cpu_s: m.cpu_user + m.cpu_sys,
            others_cpu_s: m.others_cpu,
            others_share: m.others_cpu / (secs * cores),
            latency_ns: latency,
            histogram_ns,
            mount_stats: None,
            hist: Some(m.hist),
        }
    }

    pub fn skipped(spec: &RowSpec<'_>, why: &str) -> Row {
        Row {
            workload: spec.workload.into(),
            label: spec.label.into(),
            target: spec.target.into(),
            cache_mode: spec.cache_mode.into(),
            access: String::new(),
            state: spec.state.into(),
            threads: spec.threads,
            block_bytes: spec.block_bytes,
            skipped: Some(why.into()),
            bytes: 0,
            ops: 0,
            seconds: 0.0,
            gbps: 0.0,
            ops_per_sec: 0.0,
            runs: None,
            cpu_user_s: 0.0,
            cpu_sys_s: 0.0,
            cpu_s: 0.0,
            others_cpu_s: 0.0,
            others_share: 0.0,
            latency_ns: None,
            histogram_ns: Vec::new(),
            mount_stats: None,
            hist: None,
        }
    }

    /// The median run's GB/s, or the whole row's when it has no runs.
    pub fn median_gbps(&self) -> f64 {
        self.runs.as_ref().map_or(self.gbps, |r| r.median_gbps)
    }
}

#[derive(Serialize)]
pub struct Ratio {
    pub workload: String,
    pub label: String,
    /// Median throughput of the mount over the source's (same workload); None when either is
    /// missing. Ratios are of the rows' median runs.
    pub mount_over_source: Option<f64>,
    /// Median throughput of the mount over the source read with O_DIRECT at the mount engine's
    /// queue depth and chunk size (`source-qd`, cold sequential row only): like with like.
    pub mount_over_source_same_depth: Option<f64>,
    /// Throughput of the mount over the null filesystem's (the FUSE ceiling).
    pub mount_over_ceiling: Option<f64>,
}

pub fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut out: Vec<Ratio> = Vec::new();
    for r in rows {
        if out.iter().any(|x| x.workload == r.workload) {
            continue;
        }
        let get = |t: &str| {
            rows.iter()
                .find(|x| {
                    x.workload == r.workload && x.target == t && x.skipped.is_none() && x.gbps > 0.0
                })
                .map(Row::median_gbps)
        };
        let (s, q, m, c) = (
            get("source"),
            get("source-qd"),
            get("mount"),
            get("ceiling"),
        );
        out.push(Ratio {
            workload: r.workload.clone(),
            label: r.label.clone(),
            mount_over_source: m.zip(s).map(|(m, s)| m / s),
            mount_over_source_same_depth: m.zip(q).map(|(m, q)| m / q),
            mount_over_ceiling: m.zip(c).map(|(m, c)| m / c),
        });
    }
    out
}

#[derive(Serialize)]
pub struct Memory {
    /// Peak RSS of this process (the daemon runs in-process), excluding the file pages the mmap rows
    /// map themselves (VmHWM read before them, and reset after them).
    pub peak_rss_bytes: u64,
    /// VmHWM as the kernel reports it at the end, mmap rows' file pages included.
    pub vm_hwm_end_bytes: u64,
    pub rss_end_bytes: u64,
    /// The arena: exactly the pool, made at mount.
    pub pool_bytes: u64,
    /// Pool bytes in use when the warm rows ended.
    pub pool_used_bytes: u64,
    pub index_overhead_bytes: u64,
}

#[derive(Serialize, Default)]
pub struct PageCache {
    /// Share of the source's pages in the page cache right after the source's own cold read.
    pub source_after_source_cold_read: Option<f64>,
    /// Share of the source's pages in the page cache right after the cold read through the mount
    /// (caches dropped before): what the mount adds to the page cache besides its arena.
    pub source_after_mount_cold_read: Option<f64>,
    /// Share of the mount's own pages in the page cache after two reads in keep mode (the arena
    /// holds the same bytes, so this is the double caching that keep mode buys its speed with).
    pub mount_after_keep_mode_reads: Option<f64>,
}

#[derive(Serialize)]
pub struct Flags {
    pub quick: bool,
    pub generated: bool,
    pub source: String,
    pub mountpoint: String,
    pub workdir: String,
    pub pool_bytes: u64,
    pub chunk_bytes: u64,
    /// Reads in flight of the `source-qd` cold baseline (default: `engine_max_fills`).
    pub source_qd_depth: usize,
    /// The mount engine's most chunk fills in flight (its io_uring queue depth).
    pub engine_max_fills: usize,
    pub readahead_bytes: u64,
    pub fuse_threads: usize,
    pub reader_threads: usize,
    /// Seconds each warm or timed row runs per target, split into `rounds` interleaved turns.
    pub seconds_per_timed_row: f64,
    pub rounds: usize,
    pub seq_block_bytes: u64,
    pub load_block_bytes: u64,
    pub drop_caches: bool,
}

#[derive(Serialize)]
pub struct Report {
    pub version: u32,
    pub command: String,
    pub started_unix: u64,
    pub total_seconds: f64,
    pub machine: Machine,
    pub loadavg_at_end: String,
    /// CPU seconds other processes used over the whole run, and as a share of cores × wall time.
    pub others_cpu_s_total: f64,
    pub others_share_total: f64,
    pub source_fs: String,
    pub source_device: String,
    pub flags: Flags,
    pub files: Vec<DataFile>,
    pub total_bytes: u64,
    pub rows: Vec<Row>,
    pub ratios: Vec<Ratio>,
    pub memory: Memory,
    pub page_cache: PageCache,
    pub targets: serde_json::Value,
    pub notes: Vec<String>,
}

pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    if v < 1e3 {
        format!("{ns}ns")
    } else if v < 1e4 {
        format!("{:.2}µs", v / 1e3)
    } else if v < 1e6 {
        format!("{:.1}µs", v / 1e3)
    } else if v < 1e7 {
        format!("{:.2}ms", v / 1e6)
    } else if v < 1e9 {
        format!("{:.1}ms", v / 1e6)
    } else {
        format!("{:.2}s", v / 1e9)
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}×"))
}

/// The stdout table: one line per workload and target, ratios on the mount line.
pub fn table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<26} {:<9} {:<13} {:>7} {:>13} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}  {:>7} {:>8} {:>8}",
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
    );
    let mut last = String::new();
    for r in &report.rows {
        let name = if r.workload != last {
            r.label.clone()
        } else {
            String::new()
        };
        last.clone_from(&r.workload);
        let mode = if r.target.starts_with("source") {
            short_access(&r.access)
        } else {
            r.cache_mode.clone()
        };
        if let Some(why) = &r.skipped {
            let _ = writeln!(s, "{:<26} {:<9} skipped: {why}", name, r.target);
            continue;
        }
        let l = r.latency_ns.as_ref();
        let lat = |f: fn(&Latency) -> u64| l.map_or_else(|| "-".into(), |l| fmt_ns(f(l)));
        let (rs, rq, rc) = if r.target == "mount" {
            let ratio = report.ratios.iter().find(|x| x.workload == r.workload);
            (
                fmt_ratio(ratio.and_then(|x| x.mount_over_source)),
                fmt_ratio(ratio.and_then(|x| x.mount_over_source_same_depth)),
                fmt_ratio(ratio.and_then(|x| x.mount_over_ceiling)),
            )
        } else {
            (String::new(), String::new(), String::new())
        };
        let spread = r.runs.as_ref().map_or_else(
            || "-".into(),
            |x| format!("{:.2}–{:.2}", x.min_gbps, x.max_gbps),
        );
        let _ = writeln!(
            s,
            "{:<26} {:<9} {:<13} {:>7.2} {:>13} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6.2} {:>6}  {:>7} {:>8} {:>8}",
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
        );
    }
    let _ = writeln!(
        s,
        "(GB/s: median of the runs, min–max: slowest and fastest run; mode: how the source was read, or the FUSE cache mode; \
         source-qd: the source read with O_DIRECT through io_uring at the mount engine's queue depth and chunk size; \
         mnt/src, mnt/srcQ, mnt/ceil: the mount's median over the source's, source-qd's, ceiling's; CPU s: this process, daemon included; \
         other: CPU time outside this process during the row — other processes, kernel threads — as a share of the machine, from 10 ms ticks, shown for rows of 1 s or more)"
    );
    s.lines().map(|l| l.trim_end().to_string() + "\n").collect()
}

fn short_access(a: &str) -> String {
    if a.starts_with("O_DIRECT, io_uring") {
        // "O_DIRECT, io_uring READ_FIXED, 64 × 1.0 MiB reads in flight" → "O_DIRECT qd64"
        let depth = a.split(", ").nth(2).and_then(|p| p.split(' ').next());
        depth.map_or_else(|| "O_DIRECT".into(), |d| format!("O_DIRECT qd{d}"))
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const COLORS: [(&str, &str); 4] = [
    ("source", "#1f77b4"),
    ("source-qd", "#2ca02c"),
    ("mount", "#d62728"),
    ("ceiling", "#7f7f7f"),
];

/// Latency by percentile, one panel per workload, one line per target; both axes logarithmic
/// (x: 0, 90, 99, 99.9, 99.99 %; y: latency in decades).
pub fn svg(report: &Report) -> String {
    const PW: f64 = 380.0;
    const PH: f64 = 250.0;
    const ML: f64 = 58.0;
    const MR: f64 = 12.0;
    const MT: f64 = 34.0;
    const MB: f64 = 34.0;
    const COLS: usize = 3;
    const XDEC: f64 = 4.0;
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
    let title = format!(
        "nitro-uring bench — latency by percentile ({} cores, {}, {} in {} files)",
        report.machine.cores,
        report.machine.kernel,
        crate::workload::human_bytes(report.total_bytes),
        report.files.len()
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(&title)
    );
    let mut lx = 10.0;
    for (name, color) in COLORS {
        let dash = if name == "ceiling" {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="38" x2="{}" y2="38" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="42">{}</text>"#,
            lx + 24.0,
            lx + 28.0,
            match name {
                "ceiling" => "ceiling (null FUSE fs)",
                "source-qd" => "source, O_DIRECT at mount's depth",
                _ => name,
            }
        );
        lx += 170.0;
    }
    for (i, (wid, label)) in workloads.iter().enumerate() {
        let ox = (i % COLS) as f64 * PW;
        let oy = 60.0 + (i / COLS) as f64 * PH;
        let (pw, ph) = (PW - ML - MR, PH - MT - MB);
        let series: Vec<(&Row, &Histogram<u64>)> = report
            .rows
            .iter()
            .filter(|r| r.workload == *wid)
            .filter_map(|r| r.hist.as_ref().filter(|h| !h.is_empty()).map(|h| (r, h)))
            .collect();
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
        let px = |x: f64| ox + ML + x / XDEC * pw;
        let py = |ns: f64| oy + MT + ph - (ns.max(1.0).log10() - y0) / (y1 - y0) * ph;
        let gbps: Vec<String> = series
            .iter()
            .map(|(r, _)| format!("{} {:.2}", r.target, r.gbps))
            .collect();
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-weight="bold">{}</text><text x="{}" y="{}" fill="#555">GB/s: {}</text>"##,
            ox + ML,
            oy + 14.0,
            esc(label),
            ox + ML,
            oy + 27.0,
            esc(&gbps.join(", "))
        );
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##,
            ox + ML,
            oy + MT
        );
        for d in 0..=XDEC as usize {
            let x = px(d as f64);
            let lbl = ["0%", "90%", "99%", "99.9%", "99.99%"][d];
            let anchor = if d == XDEC as usize { "end" } else { "middle" };
            let _ = writeln!(
                s,
                r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="{anchor}" fill="#555">{lbl}</text>"##,
                oy + MT,
                oy + MT + ph,
                oy + MT + ph + 13.0
            );
        }
        let mut dec = y0;
        while dec <= y1 + 1e-9 {
            let y = py(10f64.powf(dec));
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end" fill="#555">{}</text>"##,
                ox + ML,
                ox + ML + pw,
                ox + ML - 4.0,
                y + 4.0,
                fmt_ns(10f64.powf(dec) as u64)
            );
            dec += 1.0;
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">percentile</text>"##,
            ox + ML + pw / 2.0,
            oy + MT + ph + 27.0
        );
        for (r, hist) in &series {
            let color = COLORS
                .iter()
                .find(|c| c.0 == r.target)
                .map_or("#000", |c| c.1);
            let dash = if r.target == "ceiling" {
                r#" stroke-dasharray="5,3""#
            } else {
                ""
            };
            let n = hist.len().max(1) as f64;
            let xmax = n.log10().min(XDEC);
            let mut pts = String::new();
            let steps = 120;
            for k in 0..=steps {
                let x = xmax * k as f64 / steps as f64;
                let q = (1.0 - 10f64.powf(-x)).min(1.0);
                let v = hist.value_at_quantile(q) as f64;
                let _ = write!(pts, "{:.1},{:.1} ", px(x), py(v));
            }
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>"#,
                pts.trim_end()
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
