//! `nitro-uring bench`: side-by-side throughput and latency of the mount, its source and the FUSE
//! ceiling (a null filesystem with the same fuser setup), on the user's directory or on a generated
//! model directory, with everything mounted in-process and taken down again, also on Ctrl+C.
//!
//! Every workload runs on three targets in the same run: the source read directly, the mount, and
//! the null filesystem. The state before each row (what is in the page cache, what is in the arena)
//! is part of the row, and is written next to it in the JSON.

pub mod codec;
pub mod dataset;
pub mod nullfs;
pub mod report;
pub mod sys;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use dataset::DataFile;
use nitro_uring::mount::{CacheMode, MAX_FILLS, MountConfig, Mounted, StatsSnapshot};
use nitro_uring::size::parse_size;
use nullfs::{NullFile, NullMount};
use report::{Flags, Memory, PageCache, Report, Row, RowSpec, Runs};
use workload::{Ctx, FileRef, Interrupted, Measurement};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub cmd: Option<BenchCmd>,
    /// Source directory to benchmark (default: a generated model directory)
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Where to mount (default: a temporary directory)
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// Write every number as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG of the latency distributions here
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Small sizes, for CI and a first look
    #[arg(long)]
    pub quick: bool,
    /// RAM pool of the mount (default: enough to hold the whole source)
    #[arg(long, value_parser = parse_size)]
    pub pool: Option<u64>,
    /// Total size of the generated model directory (default: 4 shards sized to free memory and disk, at most 1 GiB; --quick: 64MiB)
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Reader threads of the multi-threaded random rows (default: 2 × cores, at least 4)
    #[arg(long)]
    pub threads: Option<usize>,
    /// FUSE worker threads of the mount and of the null filesystem (default: cores)
    #[arg(long)]
    pub fuse_threads: Option<usize>,
    /// Seconds each timed row (random reads, mmap random) runs per target (default 2; --quick 0.25)
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Runs of every row, the targets taking turns: timed rows split their seconds into this many
    /// rounds, cold rows run this many times from dropped caches; each row reports min / median /
    /// max over them (default 4; --quick 3; at least 3)
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Folder for the temporary directory (default: $TMPDIR, or /var/tmp when /tmp is a tmpfs)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run only these workloads (comma-separated ids, e.g. arena-seq,rand-4k-1t)
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Reads in flight of the cold source baseline (`source-qd`: the source read with O_DIRECT
    /// through io_uring in chunk-sized reads); default: the mount engine's own depth, 64, so that
    /// it compares like with like. Other depths show how the disk scales.
    #[arg(long)]
    pub source_qd: Option<usize>,
    /// Never drop the system's page cache (the cold rows are then skipped)
    #[arg(long)]
    pub no_drop_caches: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Compression ratio and speed per codec on real files
    Codec {
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also report a BF16 version derived from F32 safetensors files
        #[arg(long, default_value_t = true)]
        derive_bf16: bool,
    },
}

pub fn run(args: BenchArgs) -> Result<()> {
    match &args.cmd {
        Some(BenchCmd::Codec {
            paths,
            json,
            derive_bf16,
        }) => crate::codec::run(paths, json.as_deref(), *derive_bf16),
        None => run_main(&args),
    }
}

/// Workload ids and labels, in report order.
pub const WORKLOADS: [(&str, &str); 11] = [
    ("cold-seq", "cold seq read 1 MiB"),
    ("arena-seq", "warm arena seq 1 MiB"),
    ("pagecache-seq", "page-cache hit seq 1 MiB"),
    ("rand-4k-1t", "random 4 KiB ×1"),
    ("rand-4k-nt", "random 4 KiB ×N"),
    ("rand-1m-1t", "random 1 MiB ×1"),
    ("rand-1m-nt", "random 1 MiB ×N"),
    ("mmap-seq", "mmap seq (llama.cpp)"),
    ("mmap-rand", "mmap random 4 KiB"),
    ("load-cold", "model load, cold"),
    ("load-warm", "model load, warm arena"),
];

const SEQ_BLOCK: usize = 1 << 20;
const LOAD_BLOCK: usize = 16 << 20;

/// The temporary directory; removed on drop, after detaching anything still mounted below it.
struct Workspace {
    root: PathBuf,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        for mp in sys::mounts_under(&self.root) {
            let _ = nitro_uring::mount::umount(Path::new(&mp), true);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!(
                "nitro-uring bench: could not remove {}: {e}",
                self.root.display()
            );
        }
    }
}

fn pick_base_dir(args: &BenchArgs) -> PathBuf {
    if let Some(d) = &args.dir {
        return d.clone();
    }
    let tmp = std::env::temp_dir();
    if sys::statfs(&tmp).is_some_and(|(_, t)| t == sys::TMPFS_MAGIC)
        && sys::statfs(Path::new("/var/tmp")).is_some_and(|(_, t)| t != sys::TMPFS_MAGIC)
    {
        // A tmpfs source has no disk under it: "cold" would mean nothing and O_DIRECT is refused.
        return PathBuf::from("/var/tmp");
    }
    tmp
}

fn make_workspace(base: &Path) -> Result<Workspace> {
    std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let root = base.join(format!("nitro-bench-{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(Workspace { root })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Source,
    Mount,
    Ceiling,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Source => "source",
            Target::Mount => "mount",
            Target::Ceiling => "ceiling",
        }
    }
}

struct Bench<'a> {
    args: &'a BenchArgs,
    stop: &'a AtomicBool,
    show_progress: bool,
    source: PathBuf,
    mountpoint: PathBuf,
    work: PathBuf,
    files: Vec<DataFile>,
    pool: u64,
    chunk: u64,
    /// Reads in flight of the `source-qd` cold baseline.
    source_qd: usize,
    readahead: u64,
    fuse_threads: usize,
    threads: usize,
    seconds: f64,
    rounds: usize,
    drop_ok: Result<(), String>,
    rows: Vec<Row>,
    notes: Vec<String>,
    page_cache: PageCache,
    /// The mount in use and its cache mode; `warm` once the arena holds the source.
    mount: Option<(Mounted, CacheMode)>,
    warm: bool,
    null: Option<(NullMount, CacheMode)>,
    last_stats: Option<StatsSnapshot>,
}

/// Drops the page-cache pages of these files (between passes of a warm row).
fn drop_list(files: &[FileRef]) {
    for f in files {
        let _ = sys::drop_file_cache(&f.path);
    }
}

/// One target's run of a workload: called once per round with the round number.
type Runner = Box<dyn FnMut(&Ctx<'_>, usize) -> Result<Measurement>>;

/// One run's throughput in GB/s (10⁹ bytes per second).
fn run_gbps(m: &Measurement) -> f64 {
    m.bytes as f64 / m.seconds.max(1e-9) / 1e9
}

fn selected(args: &BenchArgs, id: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|o| o == id)
}

fn label_of(id: &str) -> &'static str {
    WORKLOADS.iter().find(|w| w.0 == id).map_or("?", |w| w.1)
}

fn stats_delta(a: &StatsSnapshot, b: &StatsSnapshot) -> serde_json::Value {
    serde_json::json!({
        "hits": b.hits - a.hits,
        "misses": b.misses - a.misses,
        "fills": b.fills - a.fills,
        "fill_bytes": b.fill_bytes - a.fill_bytes,
        "prefetch_fills": b.prefetch_fills - a.prefetch_fills,
        "evictions": b.evictions - a.evictions,
        "uncached_reads": b.uncached_reads - a.uncached_reads,
        "fill_errors": b.fill_errors - a.fill_errors,
        "pool_used_bytes": b.pool_used_bytes,
        "after": serde_json::to_value(b).unwrap_or(serde_json::Value::Null),
    })
}

impl Bench<'_> {
    fn ctx(&self, label: String) -> Ctx<'_> {
        Ctx {
            stop: self.stop,
            label,
            show_progress: self.show_progress,
        }
    }

    fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            bail!(Interrupted);
        }
        Ok(())
    }

    fn files_of(&self, t: Target) -> Vec<FileRef> {
        let base = match t {
            Target::Source => &self.source,
            Target::Mount => &self.mountpoint,
            Target::Ceiling => &self.work.join("null"),
        };
        self.files
            .iter()
            .map(|f| FileRef {
                path: base.join(&f.name),
                size: f.bytes,
            })
            .collect()
    }

    /// The order a loader opens files in: small metadata (config, index) first, then the rest by name.
    fn load_order(&self, t: Target) -> Vec<FileRef> {
        let mut v = self.files_of(t);
        v.sort_by_key(|f| (f.size >= 1 << 20, f.path.clone()));
        v
    }

    fn mount_config(&self, mode: CacheMode) -> MountConfig {
        let mut c = MountConfig::new(&self.source, &self.mountpoint, self.pool);
        c.chunk_bytes = self.chunk;
        c.readahead_bytes = self.readahead;
        c.threads = self.fuse_threads;
        c.cache_mode = mode;
        c
    }

    fn unmount(&mut self) -> Result<()> {
        if let Some((m, _)) = self.mount.take() {
            self.last_stats = Some(m.stats());
            m.unmount()?;
        }
        self.warm = false;
        Ok(())
    }

    /// A fresh mount (empty arena) in `mode`.
    fn fresh_mount(&mut self, mode: CacheMode) -> Result<()> {
        self.unmount()?;
        let m = Mounted::spawn(self.mount_config(mode)).context("mounting the source")?;
        self.mount = Some((m, mode));
        Ok(())
    }

    /// A direct-mode mount whose arena holds the whole source (filled by an unmeasured read if the
    /// cold row did not run).
    fn warm_mount(&mut self) -> Result<()> {
        if self.warm
            && self
                .mount
                .as_ref()
                .is_some_and(|m| m.1 == CacheMode::Direct)
        {
            return Ok(());
        }
        self.fresh_mount(CacheMode::Direct)?;
        let files = self.files_of(Target::Mount);
        workload::seq_read(&files, SEQ_BLOCK, &self.ctx("filling the arena".into()))?;
        self.warm = true;
        Ok(())
    }

    fn null_mount(&mut self, mode: CacheMode) -> Result<()> {
        if self.null.as_ref().is_some_and(|n| n.1 == mode) {
            return Ok(());
        }
        if let Some((n, _)) = self.null.take() {
            n.unmount()?;
        }
        let dir = self.work.join("null");
        std::fs::create_dir_all(&dir)?;
        let files = self
            .files
            .iter()
            .map(|f| NullFile {
                name: f.name.clone(),
                size: f.bytes,
            })
            .collect();
        let n = NullMount::spawn(
            &dir,
            files,
            mode,
            self.fuse_threads,
            self.chunk,
            self.readahead,
        )?;
        self.null = Some((n, mode));
        Ok(())
    }

    /// Turns a measurement into a row (with the mount's counters since `before` for mount rows),
    /// with the GB/s of each run and their spread, prints its one-line summary and keeps it.
    fn record(
        &mut self,
        spec: &RowSpec<'_>,
        m: Measurement,
        before: Option<StatsSnapshot>,
        runs: &[f64],
    ) {
        let label = format!(
            "{} · {}",
            spec.label.replace("×N", &format!("×{}", self.threads)),
            spec.target
        );
        let mut row = Row::measured(spec, m);
        row.runs = Runs::of(runs);
        if let (Some(b), Some((mnt, _))) = (before, self.mount.as_ref()) {
            let mut st = stats_delta(&b, &mnt.stats());
            // Huge pages under the arena make the kernel's copy out of it cheaper; a pool that got
            // 4 KiB pages (fragmented memory) is measurably slower, so every mount row says which.
            st["anon_huge_pages_bytes"] =
                sys::smaps_rollup_bytes("AnonHugePages").unwrap_or(0).into();
            row.mount_stats = Some(st);
        }
        let spread = row.runs.as_ref().map_or_else(String::new, |r| {
            format!("({:.2}–{:.2}, {} runs)", r.min_gbps, r.max_gbps, r.n)
        });
        eprintln!(
            "  {label:<44} {:>7.2} GB/s {spread:<22} p50 {:>8}  p99 {:>8}  {}",
            row.median_gbps(),
            row.latency_ns
                .as_ref()
                .map_or("-".into(), |l| report::fmt_ns(l.p50)),
            row.latency_ns
                .as_ref()
                .map_or("-".into(), |l| report::fmt_ns(l.p99)),
            row.access
        );
        self.rows.push(row);
    }

    /// Runs the targets of one workload in interleaved rounds (source, mount, ceiling, source,
    /// mount, ...), each round getting 1/rounds of the time, and merges each target's rounds. On a
    /// small shared machine throughput drifts over seconds; interleaving makes the drift hit all
    /// targets alike, so the ratios hold still even when the absolute numbers move.
    fn interleave(&mut self, mut entries: Vec<(RowSpec<'static>, Runner)>) -> Result<()> {
        let rounds = self.rounds;
        let before = self.mount.as_ref().map(|m| m.0.stats());
        let mut acc: Vec<Option<Measurement>> = entries.iter().map(|_| None).collect();
        let mut gbps: Vec<Vec<f64>> = entries.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for (i, (spec, run)) in entries.iter_mut().enumerate() {
                self.check()?;
                let label = self.round_label(spec, round);
                let m = run(&self.ctx(label), round)?;
                add_run(&mut acc[i], &mut gbps[i], m);
            }
        }
        self.record_runs(&entries, acc, gbps, before);
        Ok(())
    }

    fn round_label(&self, spec: &RowSpec<'_>, round: usize) -> String {
        format!(
            "{} · {} {}/{}",
            spec.label.replace("×N", &format!("×{}", self.threads)),
            spec.target,
            round + 1,
            self.rounds
        )
    }

    /// Records each row from its runs (a mount row with the mount's counters from `before`).
    fn record_runs(
        &mut self,
        entries: &[(RowSpec<'static>, Runner)],
        acc: Vec<Option<Measurement>>,
        gbps: Vec<Vec<f64>>,
        before: Option<StatsSnapshot>,
    ) {
        for (((spec, _), m), g) in entries.iter().zip(acc).zip(gbps) {
            let Some(m) = m else { continue };
            let before = if spec.target == "mount" { before } else { None };
            self.record(spec, m, before, &g);
        }
    }

    /// The cold rows: `rounds` runs per target, the targets taking turns, every run after all page
    /// caches were dropped, and every run of the mount on a fresh mount (empty arena). A mount row's
    /// counters are those of its last run (each run has a mount of its own).
    fn cold_rounds(&mut self, mut entries: Vec<(RowSpec<'static>, Runner)>) -> Result<()> {
        let rounds = self.rounds;
        let mut acc: Vec<Option<Measurement>> = entries.iter().map(|_| None).collect();
        let mut gbps: Vec<Vec<f64>> = entries.iter().map(|_| Vec::new()).collect();
        let mut before = None;
        for round in 0..rounds {
            for (i, (spec, run)) in entries.iter_mut().enumerate() {
                self.check()?;
                let mount = spec.target == "mount";
                if mount {
                    self.fresh_mount(CacheMode::Direct)?;
                }
                self.drop_all()?;
                if mount {
                    before = self.mount.as_ref().map(|m| m.0.stats());
                }
                let label = self.round_label(spec, round);
                let m = run(&self.ctx(label), round)?;
                if mount {
                    self.warm = true;
                }
                if spec.workload == "cold-seq" {
                    // What each cold read left in the page cache (the last run's).
                    let resident = sys::resident_fraction(&self.files_of(Target::Source)).ok();
                    match spec.target {
                        "source" => self.page_cache.source_after_source_cold_read = resident,
                        "mount" => self.page_cache.source_after_mount_cold_read = resident,
                        _ => {}
                    }
                }
                add_run(&mut acc[i], &mut gbps[i], m);
            }
        }
        self.record_runs(&entries, acc, gbps, before);
        Ok(())
    }

    fn skip(&mut self, id: &str, targets: &[&'static str], why: &str) {
        for &t in targets {
            self.rows.push(Row::skipped(
                &RowSpec {
                    workload: id,
                    label: label_of(id),
                    target: t,
                    cache_mode: if t.starts_with("source") {
                        "-"
                    } else {
                        "direct"
                    },
                    state: "",
                    threads: 1,
                    block_bytes: 0,
                },
                why,
            ));
        }
        eprintln!("  {:<44} skipped: {why}", label_of(id));
    }

    fn drop_all(&self) -> Result<()> {
        sys::drop_all_caches().map_err(|e| anyhow!("dropping caches: {e}"))
    }

    // ----------------------------------------------------------------------------------------
    // The rows

    /// Cold sequential reads of every file: the source read buffered (as `cat` or `dd bs=1M`,
    /// at the kernel's readahead), the source read with O_DIRECT through io_uring at the mount
    /// engine's queue depth and chunk size (like with like: the mount's fills are such reads), the
    /// mount (fresh, empty arena) and the ceiling.
    fn cold_seq(&mut self) -> Result<()> {
        let id = "cold-seq";
        if let Err(why) = self.drop_ok.clone() {
            self.skip(
                id,
                &report::TARGETS,
                &format!("cold reads need dropped page caches: {why}"),
            );
            return Ok(());
        }
        self.null_mount(CacheMode::Direct)?;
        let chunk = self.chunk as usize;
        let depth = self.source_qd;
        let spec = |target, mode, state, block| RowSpec {
            workload: id,
            label: label_of(id),
            target,
            cache_mode: mode,
            state,
            threads: 1,
            block_bytes: block as u64,
        };
        let src = self.files_of(Target::Source);
        let src_qd = src.clone();
        let mnt = self.files_of(Target::Mount);
        let null = self.files_of(Target::Ceiling);
        let entries: Vec<(RowSpec<'static>, Runner)> = vec![
            (
                spec("source", "-", "all page caches dropped", SEQ_BLOCK),
                Box::new(move |c: &Ctx<'_>, _| workload::seq_read(&src, SEQ_BLOCK, c)),
            ),
            (
                spec(
                    "source-qd",
                    "-",
                    "all page caches dropped; O_DIRECT through io_uring at the mount engine's queue depth and chunk size",
                    chunk,
                ),
                Box::new(move |c: &Ctx<'_>, _| workload::ring_seq_read(&src_qd, chunk, depth, c)),
            ),
            (
                spec(
                    "mount",
                    "direct",
                    "all page caches dropped, fresh mount (empty arena)",
                    SEQ_BLOCK,
                ),
                Box::new(move |c: &Ctx<'_>, _| workload::seq_read(&mnt, SEQ_BLOCK, c)),
            ),
            (
                spec("ceiling", "direct", "all page caches dropped", SEQ_BLOCK),
                Box::new(move |c: &Ctx<'_>, _| workload::seq_read(&null, SEQ_BLOCK, c)),
            ),
        ];
        self.cold_rounds(entries)
    }

    fn arena_seq(&mut self) -> Result<()> {
        let id = "arena-seq";
        self.warm_mount()?;
        self.null_mount(CacheMode::Direct)?;
        let per_round = self.seconds / self.rounds as f64;
        let mut entries: Vec<(RowSpec<'static>, Runner)> = Vec::new();
        for t in [Target::Source, Target::Mount, Target::Ceiling] {
            let (mode, state) = match t {
                Target::Source => (
                    "-",
                    "source's page cache dropped before each pass (reads the disk)",
                ),
                Target::Mount => (
                    "direct",
                    "arena holds the source; mount's page cache dropped",
                ),
                Target::Ceiling => ("direct", "-"),
            };
            let files = self.files_of(t);
            entries.push((
                RowSpec {
                    workload: id,
                    label: label_of(id),
                    target: t.name(),
                    cache_mode: mode,
                    state,
                    threads: 1,
                    block_bytes: SEQ_BLOCK as u64,
                },
                Box::new(move |c: &Ctx<'_>, _round: usize| {
                    workload::repeat(
                        per_round,
                        c,
                        || drop_list(&files),
                        |c| workload::seq_read(&files, SEQ_BLOCK, c),
                    )
                }),
            ));
        }
        self.interleave(entries)
    }

    fn random(&mut self, id: &'static str, block: usize, threads: usize) -> Result<()> {
        self.warm_mount()?;
        self.null_mount(CacheMode::Direct)?;
        let budget = Duration::from_secs_f64(self.seconds / self.rounds as f64);
        let seed = id.len() as u64 * 31 + block as u64;
        let mut entries: Vec<(RowSpec<'static>, Runner)> = Vec::new();
        for t in [Target::Source, Target::Mount, Target::Ceiling] {
            let files = self.files_of(t);
            let (mode, state) = match t {
                Target::Source => ("-", "O_DIRECT: every read goes to the disk"),
                Target::Mount => ("direct", "arena holds the source"),
                Target::Ceiling => ("direct", "-"),
            };
            entries.push((
                RowSpec {
                    workload: id,
                    label: label_of(id),
                    target: t.name(),
                    cache_mode: mode,
                    state,
                    threads,
                    block_bytes: block as u64,
                },
                Box::new(move |c: &Ctx<'_>, round: usize| {
                    let rs = workload::RandomSpec {
                        block,
                        threads,
                        budget,
                        max_ops: u64::MAX,
                        direct: true,
                        seed: seed + round as u64 * 1_000_003,
                    };
                    workload::random_read(&files, &rs, c)
                }),
            ));
        }
        self.interleave(entries)
    }

    fn mmap(&mut self, id: &'static str) -> Result<()> {
        self.warm_mount()?;
        self.null_mount(CacheMode::Direct)?;
        let per_round = self.seconds / self.rounds as f64;
        let seq = id == "mmap-seq";
        let mut entries: Vec<(RowSpec<'static>, Runner)> = Vec::new();
        for t in [Target::Source, Target::Mount, Target::Ceiling] {
            let files = self.files_of(t);
            let (mode, state) = match t {
                Target::Source => (
                    "-",
                    "source's page cache dropped before each pass (faults read the disk)",
                ),
                Target::Mount => (
                    "direct",
                    "arena holds the source; mount's page cache dropped before each pass",
                ),
                Target::Ceiling => ("direct", "page cache dropped before each pass"),
            };
            entries.push((
                RowSpec {
                    workload: id,
                    label: label_of(id),
                    target: t.name(),
                    cache_mode: mode,
                    state,
                    threads: 1,
                    block_bytes: if seq {
                        SEQ_BLOCK as u64
                    } else {
                        sys::PAGE as u64
                    },
                },
                Box::new(move |c: &Ctx<'_>, round: usize| {
                    if seq {
                        workload::repeat(
                            per_round,
                            c,
                            || drop_list(&files),
                            |c| workload::mmap_seq(&files, SEQ_BLOCK, c),
                        )
                    } else {
                        drop_list(&files);
                        let budget = Duration::from_secs_f64(per_round);
                        let m = workload::mmap_rand(&files, budget, 7 + round as u64, c);
                        drop_list(&files);
                        m
                    }
                }),
            ));
        }
        self.interleave(entries)
    }

    fn load(&mut self, id: &'static str) -> Result<()> {
        let cold = id == "load-cold";
        if !cold {
            return self.load_warm(id);
        }
        if let Err(why) = self.drop_ok.clone() {
            self.skip(
                id,
                &["source", "mount", "ceiling"],
                &format!("cold reads need dropped page caches: {why}"),
            );
            return Ok(());
        }
        self.null_mount(CacheMode::Direct)?;
        let mut entries: Vec<(RowSpec<'static>, Runner)> = Vec::new();
        for t in [Target::Source, Target::Mount, Target::Ceiling] {
            let state = match t {
                Target::Source => "all page caches dropped",
                Target::Mount => "all page caches dropped, fresh mount (empty arena)",
                Target::Ceiling => "all page caches dropped",
            };
            let files = self.load_order(t);
            entries.push((
                RowSpec {
                    workload: id,
                    label: label_of(id),
                    target: t.name(),
                    cache_mode: if t == Target::Source { "-" } else { "direct" },
                    state,
                    threads: 1,
                    block_bytes: LOAD_BLOCK as u64,
                },
                Box::new(move |c: &Ctx<'_>, _| workload::model_load(&files, LOAD_BLOCK, c)),
            ));
        }
        self.cold_rounds(entries)
    }

    fn load_warm(&mut self, id: &'static str) -> Result<()> {
        self.warm_mount()?;
        self.null_mount(CacheMode::Direct)?;
        let per_round = self.seconds / self.rounds as f64;
        let mut entries: Vec<(RowSpec<'static>, Runner)> = Vec::new();
        for t in [Target::Source, Target::Mount, Target::Ceiling] {
            let state = match t {
                Target::Source => "source's page cache dropped before each pass (reads the disk)",
                Target::Mount => "arena holds the source; mount's page cache dropped",
                Target::Ceiling => "-",
            };
            let files = self.load_order(t);
            entries.push((
                RowSpec {
                    workload: id,
                    label: label_of(id),
                    target: t.name(),
                    cache_mode: if t == Target::Source { "-" } else { "direct" },
                    state,
                    threads: 1,
                    block_bytes: LOAD_BLOCK as u64,
                },
                Box::new(move |c: &Ctx<'_>, _round: usize| {
                    workload::repeat(
                        per_round,
                        c,
                        || drop_list(&files),
                        |c| workload::model_load(&files, LOAD_BLOCK, c),
                    )
                }),
            ));
        }
        self.interleave(entries)
    }

    fn pagecache_seq(&mut self) -> Result<()> {
        let id = "pagecache-seq";
        // Keep mode for the mount and the ceiling: in direct mode a FUSE read never touches the
        // page cache, so "second read" would just be an arena hit again.
        self.fresh_mount(CacheMode::Keep)?;
        self.null_mount(CacheMode::Keep)?;
        let per_round = self.seconds / self.rounds as f64;
        let mut entries: Vec<(RowSpec<'static>, Runner)> = Vec::new();
        for t in [Target::Source, Target::Mount, Target::Ceiling] {
            let files = self.files_of(t);
            // The first read fills the page cache (and, for the mount, the arena); not measured.
            let first = format!("first read · {}", t.name());
            workload::seq_read(&files, SEQ_BLOCK, &self.ctx(first))?;
            let (mode, state) = match t {
                Target::Source => ("-", "second read: source in the page cache"),
                Target::Mount => (
                    "keep",
                    "second read, keep mode: mount's page cache and arena hold it",
                ),
                Target::Ceiling => ("keep", "second read, keep mode: page cache holds it"),
            };
            entries.push((
                RowSpec {
                    workload: id,
                    label: label_of(id),
                    target: t.name(),
                    cache_mode: mode,
                    state,
                    threads: 1,
                    block_bytes: SEQ_BLOCK as u64,
                },
                Box::new(move |c: &Ctx<'_>, _round: usize| {
                    workload::repeat(
                        per_round,
                        c,
                        || {},
                        |c| workload::seq_read(&files, SEQ_BLOCK, c),
                    )
                }),
            ));
        }
        self.interleave(entries)?;
        self.page_cache.mount_after_keep_mode_reads =
            sys::resident_fraction(&self.files_of(Target::Mount)).ok();
        self.unmount()
    }
}

fn run_main(args: &BenchArgs) -> Result<()> {
    let t_start = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Ctrl+C and SIGTERM only raise this flag; every loop checks it, and the guards below unmount
    // and remove the temporary directory on the way out.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing the signal handler")?;
    }
    let machine = sys::machine();
    let show_progress = std::io::IsTerminal::is_terminal(&std::io::stderr());

    let base = pick_base_dir(args);
    let ws = make_workspace(&base)?;
    let result = run_in(
        args,
        &stop,
        &ws,
        machine,
        show_progress,
        started_unix,
        t_start,
    );
    let interrupted = stop.load(Ordering::Relaxed)
        || result
            .as_ref()
            .err()
            .is_some_and(|e| e.downcast_ref::<Interrupted>().is_some());
    let root = ws.root.clone();
    drop(ws);
    let left = sys::mounts_under(&root);
    if !left.is_empty() {
        eprintln!(
            "nitro-uring bench: still mounted after cleanup: {}",
            left.join(", ")
        );
    }
    if interrupted {
        eprintln!(
            "nitro-uring bench: interrupted; everything unmounted and {} removed",
            root.display()
        );
        bail!("interrupted");
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    args: &BenchArgs,
    stop: &AtomicBool,
    ws: &Workspace,
    machine: sys::Machine,
    show_progress: bool,
    started_unix: u64,
    t_start: Instant,
) -> Result<()> {
    for o in &args.only {
        if !WORKLOADS.iter().any(|w| w.0 == o) {
            bail!(
                "unknown workload '{o}' in --only (known: {})",
                WORKLOADS.iter().map(|w| w.0).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let cores = machine.cores;
    let threads = args.threads.unwrap_or((2 * cores).max(4)).max(1);
    let fuse_threads = args.fuse_threads.unwrap_or(cores).max(1);
    let seconds = args.seconds.unwrap_or(if args.quick { 0.25 } else { 2.0 });
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("--seconds must be a positive number");
    }
    // Three runs at least: each row reports min / median / max over them.
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 4 }).max(3);
    let mut notes = Vec::new();
    let busy0 = sys::machine_busy_seconds();
    let cpu0 = sys::cpu_seconds();
    let ctx = Ctx {
        stop,
        label: "generating model directory".into(),
        show_progress,
    };

    // The data.
    let (source, generated) = match &args.source {
        Some(s) => (
            std::fs::canonicalize(s).with_context(|| format!("source {}", s.display()))?,
            false,
        ),
        None => {
            let s = ws.root.join("src");
            std::fs::create_dir(&s)?;
            (s, true)
        }
    };
    let files = if generated {
        let shards = 4u64;
        let (disk_free, _) = sys::statfs(&ws.root).unwrap_or((u64::MAX, 0));
        let shard = match args.size {
            Some(total) => (total / shards).max(1 << 20) / 4096 * 4096,
            None => dataset::default_shard_bytes(
                shards,
                args.quick,
                machine.mem_available_bytes,
                disk_free,
            ),
        };
        eprintln!(
            "nitro-uring bench: generating {} shards of {} in {}",
            shards,
            workload::human_bytes(shard),
            source.display()
        );
        let files = dataset::generate(&source, shards as usize, shard, &ctx)?;
        // The mount does not share a version younger than this between opens (a write may still
        // be running): without the wait, warm rows of the last shard would be misses.
        std::thread::sleep(nitro_uring::fuse::RACY_WINDOW);
        files
    } else {
        dataset::scan(&source)?
    };
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let (source_fs, source_device) = sys::fs_of(&source);
    if source_fs == "tmpfs" {
        notes.push("the source is on tmpfs: there is no disk under it, cold rows read RAM".into());
    }

    // The mount's sizes.
    let chunk: u64 = 1 << 20;
    let source_qd = args.source_qd.unwrap_or(MAX_FILLS).max(1);
    let readahead: u64 = MountConfig::new("/", "/", chunk).readahead_bytes;
    let needed: u64 = files
        .iter()
        .map(|f| f.bytes.div_ceil(chunk) * chunk)
        .sum::<u64>()
        + 16 * chunk;
    let pool = match args.pool {
        Some(p) => p,
        None => {
            let cap = (machine.mem_available_bytes as f64 * 0.6) as u64 / chunk * chunk;
            if needed > cap {
                notes.push(format!(
                    "the source ({}) does not fit the default pool ({}): warm rows include misses",
                    workload::human_bytes(total_bytes),
                    workload::human_bytes(cap)
                ));
                cap.max(64 * chunk)
            } else {
                needed
            }
        }
    };
    if pool < needed {
        notes.push(format!(
            "pool {} < source {} rounded to chunks: 'warm arena' rows are partly misses",
            workload::human_bytes(pool),
            workload::human_bytes(needed)
        ));
    }

    let mountpoint = match &args.mount {
        Some(m) => m.clone(),
        None => {
            let m = ws.root.join("mnt");
            std::fs::create_dir(&m)?;
            m
        }
    };
    let drop_ok = if args.no_drop_caches {
        Err("--no-drop-caches".to_string())
    } else {
        sys::can_drop_caches()
    };
    if let Err(why) = &drop_ok {
        notes.push(format!("cold rows skipped: {why}"));
    }
    notes.push(
        "CPU seconds are the whole process's user+sys time over the row; the mount and the null \
         filesystem run in-process, so their rows include the daemon's work"
            .into(),
    );

    sys::reset_peak_rss();
    let mut b = Bench {
        args,
        stop,
        show_progress,
        source: source.clone(),
        mountpoint: mountpoint.clone(),
        work: ws.root.clone(),
        files: files.clone(),
        pool,
        chunk,
        source_qd,
        readahead,
        fuse_threads,
        threads,
        seconds,
        rounds,
        drop_ok: drop_ok.clone(),
        rows: Vec::new(),
        notes: Vec::new(),
        page_cache: PageCache::default(),
        mount: None,
        warm: false,
        null: None,
        last_stats: None,
    };
    eprintln!(
        "nitro-uring bench: {} in {} files; pool {}, {} FUSE threads, {} reader threads for ×N rows, {:.2}s per timed row",
        workload::human_bytes(total_bytes),
        files.len(),
        workload::human_bytes(pool),
        fuse_threads,
        threads,
        seconds
    );
    let outcome = run_rows(&mut b);
    // Take everything down before reporting (and before the workspace goes), whatever happened.
    let stats = b.mount.as_ref().map(|m| m.0.stats()).or(b.last_stats);
    let down = b.unmount();
    if let Some((n, _)) = b.null.take() {
        let _ = n.unmount();
    }
    let (peak_a, mut extra_notes) = outcome?;
    down?;
    notes.append(&mut b.notes);
    notes.append(&mut extra_notes);
    let hwm_end = sys::proc_status_bytes("VmHWM").unwrap_or(0);
    let memory = Memory {
        peak_rss_bytes: peak_a.max(hwm_end),
        vm_hwm_end_bytes: hwm_end,
        rss_end_bytes: sys::proc_status_bytes("VmRSS").unwrap_or(0),
        pool_bytes: pool,
        pool_used_bytes: stats.map_or(0, |s| s.pool_used_bytes),
        index_overhead_bytes: stats.map_or(0, |s| s.index_overhead_bytes),
    };

    let mut rows = std::mem::take(&mut b.rows);
    let order = |r: &Row| {
        (
            WORKLOADS
                .iter()
                .position(|w| w.0 == r.workload)
                .unwrap_or(99),
            report::TARGETS
                .iter()
                .position(|t| *t == r.target)
                .unwrap_or(9),
        )
    };
    rows.sort_by_key(order);
    for r in &mut rows {
        r.label = r.label.replace("×N", &format!("×{threads}"));
    }
    let ratios = report::ratios(&rows);
    let own = sys::cpu_seconds();
    let others =
        (sys::machine_busy_seconds() - busy0 - (own.0 - cpu0.0) - (own.1 - cpu0.1)).max(0.0);
    let wall = t_start.elapsed().as_secs_f64();
    let report = Report {
        version: 1,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_unix,
        total_seconds: t_start.elapsed().as_secs_f64(),
        machine,
        loadavg_at_end: sys::loadavg(),
        others_cpu_s_total: others,
        others_share_total: others / (wall * cores as f64).max(1e-9),
        source_fs,
        source_device,
        flags: Flags {
            quick: args.quick,
            generated,
            source: source.display().to_string(),
            mountpoint: mountpoint.display().to_string(),
            workdir: ws.root.display().to_string(),
            pool_bytes: pool,
            chunk_bytes: chunk,
            source_qd_depth: source_qd,
            engine_max_fills: MAX_FILLS,
            readahead_bytes: readahead,
            fuse_threads,
            reader_threads: threads,
            seconds_per_timed_row: seconds,
            rounds,
            seq_block_bytes: SEQ_BLOCK as u64,
            load_block_bytes: LOAD_BLOCK as u64,
            drop_caches: drop_ok.is_ok(),
        },
        files,
        total_bytes,
        rows,
        ratios,
        memory,
        page_cache: std::mem::take(&mut b.page_cache),
        targets: serde_json::json!({
            "source": "the source directory, read directly",
            "source-qd": format!(
                "cold sequential row only: the source read with O_DIRECT through io_uring, {} × {} reads in flight (the mount engine's queue depth, {}, unless --source-qd says otherwise, and its chunk size), into a registered anonymous mapping",
                source_qd,
                workload::human_bytes(chunk),
                MAX_FILLS
            ),
            "mount": "nitro-uring mounted in-process over the source (engine, arena, io_uring fill)",
            "ceiling": "an in-process null FUSE filesystem, same fuser setup, replying zeros with no cache work",
        }),
        notes,
    };
    print!("{}", report::table(&report));
    print!("{}", summary(&report));
    if let Some(p) = &args.json {
        // Compact: the histograms make a pretty-printed file several times larger.
        let text = serde_json::to_string(&report)?;
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("nitro-uring bench: wrote {}", p.display());
    }
    if let Some(p) = &args.plot {
        std::fs::write(p, report::svg(&report))
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("nitro-uring bench: wrote {}", p.display());
    }
    Ok(())
}

/// Runs the selected rows in an order that needs the fewest remounts. Returns the peak RSS seen
/// before the mmap rows (whose own file mappings would count in it) and notes.
fn run_rows(b: &mut Bench<'_>) -> Result<(u64, Vec<String>)> {
    let args = b.args;
    let notes = Vec::new();
    if selected(args, "cold-seq") {
        b.cold_seq()?;
    }
    if selected(args, "arena-seq") {
        b.arena_seq()?;
    }
    let n = b.threads;
    for (id, block, threads) in [
        ("rand-4k-1t", 4096, 1),
        ("rand-4k-nt", 4096, n),
        ("rand-1m-1t", 1 << 20, 1),
        ("rand-1m-nt", 1 << 20, n),
    ] {
        if selected(args, id) {
            b.random(id, block, threads)?;
        }
    }
    if selected(args, "load-warm") {
        b.load("load-warm")?;
    }
    let peak_before_mmap = sys::proc_status_bytes("VmHWM").unwrap_or(0);
    for id in ["mmap-seq", "mmap-rand"] {
        if selected(args, id) {
            b.mmap(id)?;
        }
    }
    // The mmap rows' file pages counted in VmHWM; start the peak afresh from here.
    sys::reset_peak_rss();
    if selected(args, "load-cold") {
        b.unmount()?;
        b.load("load-cold")?;
    }
    if selected(args, "pagecache-seq") {
        b.pagecache_seq()?;
    }
    b.check()?;
    Ok((peak_before_mmap, notes))
}

fn summary(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let ratio = |id: &str| r.ratios.iter().find(|x| x.workload == id);
    let f = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}×"));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "machine: {} cores, {}, kernel {}, load {} → {}; data: {} in {} files on {} ({})",
        r.machine.cores,
        r.machine.cpu_model,
        r.machine.kernel,
        r.machine.loadavg_at_start,
        r.loadavg_at_end,
        workload::human_bytes(r.total_bytes),
        r.files.len(),
        r.source_fs,
        r.source_device
    );
    let _ = writeln!(
        s,
        "CPU time outside this process during the run: {:.1} s ({:.0}% of the machine); rows with a high 'other' share were disturbed",
        r.others_cpu_s_total,
        r.others_share_total * 100.0
    );
    let verdict = |v: Option<f64>, target: f64| match v {
        Some(v) if v >= target => "meets",
        Some(_) => "MISSES",
        None => "n/a",
    };
    let arena = ratio("arena-seq").and_then(|x| x.mount_over_ceiling);
    let cold = ratio("cold-seq").and_then(|x| x.mount_over_source);
    let cold_qd = ratio("cold-seq").and_then(|x| x.mount_over_source_same_depth);
    let _ = writeln!(
        s,
        "arena hit (warm arena seq 1 MiB): mount/ceiling {} ({} the ≥ 0.85× target)",
        f(arena),
        verdict(arena, 0.85)
    );
    let _ = writeln!(
        s,
        "cold seq read: mount/source buffered {} ({} the ≥ 1.0× target); mount/source O_DIRECT at \
         the engine's queue depth {} (like with like: the reads the mount's fills make)",
        f(cold),
        verdict(cold, 1.0),
        f(cold_qd)
    );
    let _ = writeln!(
        s,
        "model load: mount/source cold {}, warm arena {}",
        f(ratio("load-cold").and_then(|x| x.mount_over_source)),
        f(ratio("load-warm").and_then(|x| x.mount_over_source))
    );
    let _ = writeln!(
        s,
        "memory: peak RSS {} with an arena (pool) of {} ({} used), index {}",
        workload::human_bytes(r.memory.peak_rss_bytes),
        workload::human_bytes(r.memory.pool_bytes),
        workload::human_bytes(r.memory.pool_used_bytes),
        workload::human_bytes(r.memory.index_overhead_bytes)
    );
    let pct =
        |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{:.0}%", v * 100.0));
    let _ = writeln!(
        s,
        "page cache: source resident after its own cold read {}, after the cold read through the mount {}; \
         mount pages resident after keep-mode reads {} (held twice: arena + page cache)",
        pct(r.page_cache.source_after_source_cold_read),
        pct(r.page_cache.source_after_mount_cold_read),
        pct(r.page_cache.mount_after_keep_mode_reads)
    );
    // A "warm" mount row that still missed is not measuring what its label says: say so.
    for row in r
        .rows
        .iter()
        .filter(|x| x.target == "mount" && x.state.starts_with("arena holds"))
    {
        let misses = row
            .mount_stats
            .as_ref()
            .and_then(|m| m["misses"].as_u64())
            .unwrap_or(0);
        if misses > 0 {
            let _ = writeln!(
                s,
                "warning: {} ran with {misses} arena misses (pool too small?)",
                row.label
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

/// Adds one run to a row's accumulated measurement and its per-run rates.
fn add_run(acc: &mut Option<Measurement>, gbps: &mut Vec<f64>, m: Measurement) {
    gbps.push(run_gbps(&m));
    *acc = Some(match acc.take() {
        None => m,
        Some(a) => a.merge(m),
    });
}
