//! The workloads: what each row reads, on which target, from which state. Each row states the
//! state it needs (cold: dropped caches and a fresh mount; warm: an arena holding the source) and
//! writes that state into the row, so a number is never read without knowing what it measured.

use std::time::Duration;

use anyhow::Result;
use nitro_uring::mount::CacheMode;

use crate::cli::BenchArgs;
use crate::harness::{Bench, Target, drop_list};
use crate::report::{self, RowSpec};
use crate::rounds::Runner;
use crate::sys;
use crate::workload::{self, Ctx};

/// Workload ids and labels, in report order.
pub const WORKLOADS: [(&str, &str); 14] = [
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
    // One row per file size and read shape (`resident.rs`); this id selects them all.
    ("resident", "resident re-open (store + passthrough)"),
    // One file larger than the pool read again and again (`repeat.rs`): a row per pass and the
    // rates of the time formula; this id selects them all.
    ("repeat", "repeated load larger than the pool"),
    // An S3 source, only when asked by name (`s3/`): cold and warm rows per object size.
    ("s3", "S3 source (ranged GETs against the mount)"),
];

pub(crate) const SEQ_BLOCK: usize = 1 << 20;
pub(crate) const LOAD_BLOCK: usize = 16 << 20;

/// Whether row `id` runs: every row when `--only` is not given, except those only run on request
/// (`ON_REQUEST`: they need a server, and minutes).
pub(crate) fn selected(args: &BenchArgs, id: &str) -> bool {
    let named = args.only.iter().any(|o| o == id);
    named || (args.only.is_empty() && !ON_REQUEST.contains(&id))
}

/// Rows that run only when `--only` names them.
pub(crate) const ON_REQUEST: [&str; 1] = ["s3"];

/// Rows that make their own files (or object) instead of reading the source directory.
const OWN_DATA: [&str; 3] = ["resident", "repeat", "s3"];

/// Whether any row that reads the local source (the generated or `--source` directory) runs.
pub(crate) fn local_rows(args: &BenchArgs) -> bool {
    WORKLOADS
        .iter()
        .any(|w| !OWN_DATA.contains(&w.0) && selected(args, w.0))
}

pub(crate) fn label_of(id: &str) -> &'static str {
    WORKLOADS.iter().find(|w| w.0 == id).map_or("?", |w| w.1)
}

impl Bench<'_> {
    /// Cold sequential reads of every file: the source read buffered (as `cat` or `dd bs=1M`,
    /// at the kernel's readahead), the source read with O_DIRECT through io_uring at the mount
    /// engine's queue depth and chunk size (like with like: the mount's fills are such reads), the
    /// mount (fresh, empty arena) and the ceiling.
    fn cold_seq(&mut self) -> Result<()> {
        let id = "cold-seq";
        if let Err(why) = self.plan.drop_ok.clone() {
            self.skip(
                id,
                &report::TARGETS,
                &format!("cold reads need dropped page caches: {why}"),
            );
            return Ok(());
        }
        self.null_mount(CacheMode::Direct)?;
        let chunk = self.plan.chunk as usize;
        let depth = self.plan.source_qd;
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
        let per_round = self.plan.timing.seconds / self.plan.timing.rounds as f64;
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
        let budget =
            Duration::from_secs_f64(self.plan.timing.seconds / self.plan.timing.rounds as f64);
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
        let per_round = self.plan.timing.seconds / self.plan.timing.rounds as f64;
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
        if let Err(why) = self.plan.drop_ok.clone() {
            self.skip(
                id,
                &["source", "mount", "ceiling"],
                &format!("cold reads need dropped page caches: {why}"),
            );
            return Ok(());
        }
        self.null_mount(CacheMode::Direct)?;
        let entries = self.load_entries(id, None);
        self.cold_rounds(entries)
    }

    fn load_warm(&mut self, id: &'static str) -> Result<()> {
        self.warm_mount()?;
        self.null_mount(CacheMode::Direct)?;
        let per_round = self.plan.timing.seconds / self.plan.timing.rounds as f64;
        let entries = self.load_entries(id, Some(per_round));
        self.interleave(entries)
    }

    /// The model-load rows of every target: one load each run (cold), or loads repeated for
    /// `warm_seconds` with the page cache dropped before each.
    fn load_entries(
        &self,
        id: &'static str,
        warm_seconds: Option<f64>,
    ) -> Vec<(RowSpec<'static>, Runner)> {
        let mut entries: Vec<(RowSpec<'static>, Runner)> = Vec::new();
        for t in [Target::Source, Target::Mount, Target::Ceiling] {
            let state = match (t, warm_seconds.is_some()) {
                (Target::Source, false) | (Target::Ceiling, false) => "all page caches dropped",
                (Target::Mount, false) => "all page caches dropped, fresh mount (empty arena)",
                (Target::Source, true) => {
                    "source's page cache dropped before each pass (reads the disk)"
                }
                (Target::Mount, true) => "arena holds the source; mount's page cache dropped",
                (Target::Ceiling, true) => "-",
            };
            let files = self.load_order(t);
            let run: Runner = match warm_seconds {
                None => Box::new(move |c: &Ctx<'_>, _| workload::model_load(&files, LOAD_BLOCK, c)),
                Some(secs) => Box::new(move |c: &Ctx<'_>, _| {
                    workload::repeat(
                        secs,
                        c,
                        || drop_list(&files),
                        |c| workload::model_load(&files, LOAD_BLOCK, c),
                    )
                }),
            };
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
                run,
            ));
        }
        entries
    }

    fn pagecache_seq(&mut self) -> Result<()> {
        let id = "pagecache-seq";
        // Keep mode for the mount and the ceiling: in direct mode a FUSE read never touches the
        // page cache, so "second read" would just be an arena hit again.
        self.fresh_mount(CacheMode::Keep)?;
        self.null_mount(CacheMode::Keep)?;
        let per_round = self.plan.timing.seconds / self.plan.timing.rounds as f64;
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

/// Runs the selected rows in an order that needs the fewest remounts. Returns the peak RSS seen
/// before the mmap rows (whose own file mappings would count in it).
pub(crate) fn run_rows(b: &mut Bench<'_>) -> Result<u64> {
    let args = b.args;
    if selected(args, "cold-seq") {
        b.cold_seq()?;
    }
    if selected(args, "arena-seq") {
        b.arena_seq()?;
    }
    let n = b.plan.timing.threads;
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
    // Rows with mounts and files of their own. The memory report is the main mount's: their
    // mounts and mappings (gigabytes of file pages in VmHWM) stay out of it; they report their
    // RAM themselves.
    type OwnRows = fn(&mut Bench<'_>) -> Result<()>;
    let own: [(&str, OwnRows); 3] = [
        ("resident", |b| b.resident()),
        ("repeat", |b| b.repeat()),
        ("s3", |b| b.s3()),
    ];
    for (id, run) in own {
        if selected(args, id) {
            b.unmount()?;
            let main_stats = b.last_stats;
            run(b)?;
            b.last_stats = main_stats;
            sys::reset_peak_rss();
        }
    }
    b.check()?;
    Ok(peak_before_mmap)
}
