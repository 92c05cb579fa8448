//! What a run will do, settled before anything is mounted: the data (generated or the user's), the
//! mount's sizes, the timing of the rows, whether cold rows can run. Every argument is checked
//! here, so a bad one fails in a second, not after minutes of generating data; and every choice
//! made for the user (a pool too small for the source, a tmpfs source, no cache dropping) becomes
//! a note printed under the table, since each changes what a row means.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use nitro_uring::mount::{MAX_FILLS, MountConfig};

use crate::cli::BenchArgs;
use crate::dataset::{self, DataFile};
use crate::rows::WORKLOADS;
use crate::sys::{self, Machine};
use crate::workload::{Ctx, human_bytes};
use crate::workspace::Workspace;

/// Threads and timing of the rows, from the arguments and the core count.
pub(crate) struct Timing {
    pub(crate) threads: usize,
    pub(crate) fuse_threads: usize,
    pub(crate) seconds: f64,
    pub(crate) rounds: usize,
}

impl Timing {
    /// Checks `--only` and `--seconds` and fills in the defaults.
    pub(crate) fn from_args(args: &BenchArgs, cores: usize) -> Result<Timing> {
        for o in &args.only {
            if !WORKLOADS.iter().any(|w| w.0 == o) {
                bail!(
                    "unknown workload '{o}' in --only (known: {})",
                    WORKLOADS.iter().map(|w| w.0).collect::<Vec<_>>().join(", ")
                );
            }
        }
        let threads = args.threads.unwrap_or((2 * cores).max(4)).max(1);
        let fuse_threads = args.fuse_threads.unwrap_or(cores).max(1);
        let seconds = args.seconds.unwrap_or(if args.quick { 0.25 } else { 2.0 });
        if !(seconds.is_finite() && seconds > 0.0) {
            bail!("--seconds must be a positive number");
        }
        // Three runs at least: each row reports min / median / max over them.
        let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 4 }).max(3);
        Ok(Timing {
            threads,
            fuse_threads,
            seconds,
            rounds,
        })
    }
}

/// Everything a run needs to know before its first row.
pub(crate) struct Plan {
    pub(crate) timing: Timing,
    pub(crate) source: PathBuf,
    pub(crate) generated: bool,
    pub(crate) files: Vec<DataFile>,
    pub(crate) total_bytes: u64,
    pub(crate) source_fs: String,
    pub(crate) source_device: String,
    pub(crate) mountpoint: PathBuf,
    pub(crate) pool: u64,
    pub(crate) chunk: u64,
    /// Reads in flight of the `source-qd` cold baseline.
    pub(crate) source_qd: usize,
    pub(crate) readahead: u64,
    /// `Err(why)` when the page cache cannot be dropped (the cold rows are then skipped).
    pub(crate) drop_ok: Result<(), String>,
    pub(crate) notes: Vec<String>,
}

impl Plan {
    /// Finds or generates the data (generating writes it, which takes a while), then sizes the
    /// mount for it.
    pub(crate) fn new(
        args: &BenchArgs,
        timing: Timing,
        ws: &Workspace,
        machine: &Machine,
        ctx: &Ctx<'_>,
    ) -> Result<Plan> {
        let mut notes = Vec::new();
        let (source, generated, files) = data(args, ws, machine, ctx)?;
        let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
        let (source_fs, source_device) = sys::fs_of(&source);
        if source_fs == "tmpfs" {
            notes.push(
                "the source is on tmpfs: there is no disk under it, cold rows read RAM".into(),
            );
        }
        let chunk: u64 = 1 << 20;
        let pool = pool_bytes(args, &files, chunk, machine, &mut notes);
        let mountpoint = match &args.mount {
            Some(m) => m.clone(),
            None => {
                let m = ws.root.join("mnt");
                std::fs::create_dir(&m)?;
                m
            }
        };
        let drop_ok = drop_caches(args, &mut notes);
        notes.push(
            "CPU seconds are the whole process's user+sys time over the row; the mount and the null \
             filesystem run in-process, so their rows include the daemon's work"
                .into(),
        );
        Ok(Plan {
            timing,
            source,
            generated,
            files,
            total_bytes,
            source_fs,
            source_device,
            mountpoint,
            pool,
            chunk,
            source_qd: args.source_qd.unwrap_or(MAX_FILLS).max(1),
            readahead: MountConfig::new("/", "/", chunk).readahead_bytes,
            drop_ok,
            notes,
        })
    }

    /// The one line that says what is about to be measured.
    pub(crate) fn announce(&self) {
        let t = &self.timing;
        if self.files.is_empty() {
            return;
        }
        eprintln!(
            "nitro-uring bench: {} in {} files; pool {}, {} FUSE threads, {} reader threads for ×N rows, {:.2}s per timed row",
            human_bytes(self.total_bytes),
            self.files.len(),
            human_bytes(self.pool),
            t.fuse_threads,
            t.threads,
            t.seconds
        );
    }
}

/// The source directory, whether it was generated, and its files.
fn data(
    args: &BenchArgs,
    ws: &Workspace,
    machine: &Machine,
    ctx: &Ctx<'_>,
) -> Result<(PathBuf, bool, Vec<DataFile>)> {
    if let Some(s) = &args.source {
        let source = std::fs::canonicalize(s).with_context(|| format!("source {}", s.display()))?;
        let files = dataset::scan(&source)?;
        return Ok((source, false, files));
    }
    let source = ws.root.join("src");
    std::fs::create_dir(&source)?;
    if !crate::rows::local_rows(args) {
        // Only rows with data of their own (`--only s3`, `resident`, `repeat`): no model
        // directory to generate.
        return Ok((source, false, Vec::new()));
    }
    let shards = 4u64;
    let (disk_free, _) = sys::statfs(&ws.root).unwrap_or((u64::MAX, 0));
    let shard = match args.size {
        Some(total) => (total / shards).max(1 << 20) / 4096 * 4096,
        None => {
            dataset::default_shard_bytes(shards, args.quick, machine.mem_available_bytes, disk_free)
        }
    };
    eprintln!(
        "nitro-uring bench: generating {} shards of {} in {}",
        shards,
        human_bytes(shard),
        source.display()
    );
    let files = dataset::generate(&source, shards as usize, shard, ctx)?;
    // The mount does not share a version younger than this between opens (a write may still
    // be running): without the wait, warm rows of the last shard would be misses.
    std::thread::sleep(nitro_uring::fuse::RACY_WINDOW);
    Ok((source, true, files))
}

/// `--pool`, or enough to hold every file in whole chunks when that fits in 60% of the available
/// memory. A pool that cannot hold the source is noted: its "warm" rows are partly misses.
fn pool_bytes(
    args: &BenchArgs,
    files: &[DataFile],
    chunk: u64,
    machine: &Machine,
    notes: &mut Vec<String>,
) -> u64 {
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
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
                    human_bytes(total_bytes),
                    human_bytes(cap)
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
            human_bytes(pool),
            human_bytes(needed)
        ));
    }
    pool
}

/// Whether the cold rows can drop the page cache, noted when they cannot.
fn drop_caches(args: &BenchArgs, notes: &mut Vec<String>) -> Result<(), String> {
    let drop_ok = if args.no_drop_caches {
        Err("--no-drop-caches".to_string())
    } else {
        sys::can_drop_caches()
    };
    if let Err(why) = &drop_ok {
        notes.push(format!("cold rows skipped: {why}"));
    }
    drop_ok
}
