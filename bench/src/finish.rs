//! From the rows to the report: the run's memory and CPU context, the rows in report order, the
//! ratios, and the outputs (table and summary on stdout, `--json`, `--plot`). The context is
//! measured here, after everything is unmounted, so that it covers the whole run; CPU time of
//! other processes is part of it because on a small shared machine it explains odd rows.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use nitro_uring::mount::{MAX_FILLS, StatsSnapshot};

use crate::cli::BenchArgs;
use crate::plan::Plan;
use crate::report::{self, Flags, Memory, PageCache, Report, Row};
use crate::rows::{LOAD_BLOCK, SEQ_BLOCK, WORKLOADS};
use crate::summary::summary;
use crate::sys::{self, Machine};
use crate::workload::human_bytes;

/// When the run started, by the wall clock (for the report) and by a monotonic one.
pub(crate) struct Started {
    pub(crate) at: Instant,
    pub(crate) unix: u64,
}

impl Started {
    pub(crate) fn now() -> Started {
        Started {
            at: Instant::now(),
            unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// The machine's busy CPU time and this process's user and system time at the start, to tell
/// other processes' CPU time from the run's own at the end.
pub(crate) struct CpuBaseline {
    busy: f64,
    own: (f64, f64),
}

impl CpuBaseline {
    pub(crate) fn now() -> CpuBaseline {
        CpuBaseline {
            busy: sys::machine_busy_seconds(),
            own: sys::cpu_seconds(),
        }
    }

    /// CPU seconds other processes used since the baseline.
    fn others(&self) -> f64 {
        let own = sys::cpu_seconds();
        (sys::machine_busy_seconds() - self.busy - (own.0 - self.own.0) - (own.1 - self.own.1))
            .max(0.0)
    }
}

/// What the rows left behind, once everything is unmounted.
pub(crate) struct Measured {
    pub(crate) rows: Vec<Row>,
    pub(crate) page_cache: PageCache,
    /// The mount's last counters.
    pub(crate) stats: Option<StatsSnapshot>,
    /// Peak RSS before the mmap rows (whose file mappings count in it).
    pub(crate) peak_before_mmap: u64,
    pub(crate) cpu: CpuBaseline,
    pub(crate) resident: Vec<crate::resident::Resident>,
    pub(crate) row_notes: Vec<String>,
    pub(crate) s3: Option<crate::s3::S3Report>,
    pub(crate) repeat: Option<crate::repeat::Repeat>,
}

/// The run's report. `workdir` is the temporary directory the run used.
pub(crate) fn report(
    args: &BenchArgs,
    plan: &Plan,
    workdir: &Path,
    machine: Machine,
    started: &Started,
    m: Measured,
) -> Report {
    let memory = memory(plan.pool, m.peak_before_mmap, m.stats);
    let rows = in_report_order(m.rows, plan.timing.threads);
    let ratios = report::ratios(&rows);
    let others = m.cpu.others();
    let wall = started.at.elapsed().as_secs_f64();
    let cores = machine.cores;
    Report {
        version: 1,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_unix: started.unix,
        total_seconds: started.at.elapsed().as_secs_f64(),
        machine,
        loadavg_at_end: sys::loadavg(),
        others_cpu_s_total: others,
        others_share_total: others / (wall * cores as f64).max(1e-9),
        source_fs: plan.source_fs.clone(),
        source_device: plan.source_device.clone(),
        flags: flags(args, plan, workdir),
        files: plan.files.clone(),
        total_bytes: plan.total_bytes,
        rows,
        ratios,
        memory,
        page_cache: m.page_cache,
        targets: targets(plan),
        resident: m.resident,
        s3: m.s3,
        repeat: m.repeat,
        notes: plan.notes.iter().chain(&m.row_notes).cloned().collect(),
    }
}

fn memory(pool: u64, peak_before_mmap: u64, stats: Option<StatsSnapshot>) -> Memory {
    let hwm_end = sys::proc_status_bytes("VmHWM").unwrap_or(0);
    Memory {
        peak_rss_bytes: peak_before_mmap.max(hwm_end),
        vm_hwm_end_bytes: hwm_end,
        rss_end_bytes: sys::proc_status_bytes("VmRSS").unwrap_or(0),
        pool_bytes: pool,
        pool_used_bytes: stats.map_or(0, |s| s.pool_used_bytes),
        index_overhead_bytes: stats.map_or(0, |s| s.index_overhead_bytes),
    }
}

/// Rows by workload, then target, in the order of `WORKLOADS` and `report::TARGETS`, their labels
/// saying how many threads "×N" was. Rows of one id in `WORKLOADS` with several workloads of their
/// own (`resident-1GiB-mmap`, `s3-1GiB-cold`) keep the order they ran in, each one's targets
/// together.
fn in_report_order(mut rows: Vec<Row>, threads: usize) -> Vec<Row> {
    let mut first_seen: Vec<&str> = Vec::new();
    for r in &rows {
        if !first_seen.contains(&r.workload.as_str()) {
            first_seen.push(&r.workload);
        }
    }
    let keys: Vec<(usize, usize, usize)> = rows
        .iter()
        .map(|r| {
            let id = WORKLOADS
                .iter()
                .position(|w| {
                    r.workload == w.0
                        || r.workload
                            .strip_prefix(w.0)
                            .is_some_and(|rest| rest.starts_with('-'))
                })
                .unwrap_or(99);
            let seen = first_seen
                .iter()
                .position(|w| *w == r.workload)
                .unwrap_or(0);
            let target = report::TARGETS
                .iter()
                .position(|t| *t == r.target)
                .unwrap_or(9);
            (id, seen, target)
        })
        .collect();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| keys[i]);
    let mut slots: Vec<Option<Row>> = rows.drain(..).map(Some).collect();
    rows = order.into_iter().filter_map(|i| slots[i].take()).collect();
    for r in &mut rows {
        r.label = r.label.replace("×N", &format!("×{threads}"));
    }
    rows
}

fn flags(args: &BenchArgs, plan: &Plan, workdir: &Path) -> Flags {
    Flags {
        quick: args.quick,
        generated: plan.generated,
        source: plan.source.display().to_string(),
        mountpoint: plan.mountpoint.display().to_string(),
        workdir: workdir.display().to_string(),
        pool_bytes: plan.pool,
        chunk_bytes: plan.chunk,
        source_qd_depth: plan.source_qd,
        engine_max_fills: MAX_FILLS,
        readahead_bytes: plan.readahead,
        fuse_threads: plan.timing.fuse_threads,
        reader_threads: plan.timing.threads,
        seconds_per_timed_row: plan.timing.seconds,
        rounds: plan.timing.rounds,
        seq_block_bytes: SEQ_BLOCK as u64,
        load_block_bytes: LOAD_BLOCK as u64,
        drop_caches: plan.drop_ok.is_ok(),
    }
}

/// What each target is, in words, for readers of the JSON.
fn targets(plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "source": "the source directory, read directly",
        "source-qd": format!(
            "cold sequential row only: the source read with O_DIRECT through io_uring, {} × {} reads in flight (the mount engine's queue depth, {}, unless --source-qd says otherwise, and its chunk size), into a registered anonymous mapping",
            plan.source_qd,
            human_bytes(plan.chunk),
            MAX_FILLS
        ),
        "mount": "nitro-uring mounted in-process over the source (engine, arena, io_uring fill)",
        "ceiling": "an in-process null FUSE filesystem, same fuser setup, replying zeros with no cache work",
    })
}

/// Prints the table and the summary, and writes `--json` and `--plot`.
pub(crate) fn publish(args: &BenchArgs, report: &Report) -> Result<()> {
    print!("{}", report::table(report));
    print!("{}", summary(report));
    if let Some(p) = &args.json {
        // Compact: the histograms make a pretty-printed file several times larger.
        let text = serde_json::to_string(report)?;
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("nitro-uring bench: wrote {}", p.display());
    }
    if let Some(p) = &args.plot {
        std::fs::write(p, report::svg(report))
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("nitro-uring bench: wrote {}", p.display());
    }
    Ok(())
}
