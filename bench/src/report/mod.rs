//! What a run produces: the rows (one per workload and target), the ratios, the table on stdout,
//! the JSON document and the SVG of the latency distributions. The types here are the JSON
//! document (`--json`), so their field names are a format that scripts read: add, do not rename.

mod svg;
mod table;

pub use svg::svg;
pub use table::table;

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
    /// Per file size of the resident rows: RAM of an mmap load, the store's fill, a restart.
    pub resident: Vec<crate::resident::Resident>,
    /// The S3 rows (`--only s3`): the server, the settings, per object size the ratios, the byte
    /// checks and the store's fill, and the sweep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<crate::s3::S3Report>,
    /// The repeat rows (a file larger than the pool, read again and again): per pass the device's
    /// and the daemon's bytes and the time against the formula, and the formula's rates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat: Option<crate::repeat::Repeat>,
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
