//! The state a run carries from row to row: which mounts are up (the mount, in which cache mode,
//! with a warm arena or not; the null filesystem), the rows so far and what the page cache held.
//! Rows ask for the state they need (`warm_mount`, `fresh_mount`, `null_mount`) and get it with
//! the fewest remounts, since a remount empties the arena and a refill costs a full read.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use nitro_uring::mount::{CacheMode, MountConfig, Mounted, StatsSnapshot};

use crate::cli::BenchArgs;
use crate::nullfs::{NullFile, NullMount};
use crate::plan::Plan;
use crate::report::{PageCache, Row};
use crate::rows::SEQ_BLOCK;
use crate::sys;
use crate::workload::{self, Ctx, FileRef, Interrupted};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Source,
    Mount,
    Ceiling,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Source => "source",
            Target::Mount => "mount",
            Target::Ceiling => "ceiling",
        }
    }
}

/// One run's state; the rows are its methods (`rows.rs`), run in interleaved rounds (`rounds.rs`).
pub(crate) struct Bench<'a> {
    pub(crate) args: &'a BenchArgs,
    pub(crate) plan: &'a Plan,
    pub(crate) stop: &'a AtomicBool,
    pub(crate) show_progress: bool,
    pub(crate) work: PathBuf,
    pub(crate) rows: Vec<Row>,
    pub(crate) page_cache: PageCache,
    /// The mount in use and its cache mode; `warm` once the arena holds the source.
    pub(crate) mount: Option<(Mounted, CacheMode)>,
    pub(crate) warm: bool,
    pub(crate) null: Option<(NullMount, CacheMode)>,
    pub(crate) last_stats: Option<StatsSnapshot>,
    /// What the resident rows found beside their throughput (see `resident`).
    pub(crate) resident_runs: Vec<crate::resident::Resident>,
    pub(crate) row_notes: Vec<String>,
    /// What the S3 rows found beside their throughput (see `s3`).
    pub(crate) s3: Option<crate::s3::S3Report>,
    /// What the repeat rows found per pass (see `repeat`).
    pub(crate) repeat: Option<crate::repeat::Repeat>,
}

/// Drops the page-cache pages of these files (between passes of a warm row).
pub(crate) fn drop_list(files: &[FileRef]) {
    for f in files {
        let _ = sys::drop_file_cache(&f.path);
    }
}

impl<'a> Bench<'a> {
    pub(crate) fn new(
        args: &'a BenchArgs,
        plan: &'a Plan,
        stop: &'a AtomicBool,
        show_progress: bool,
        work: PathBuf,
    ) -> Bench<'a> {
        Bench {
            args,
            plan,
            stop,
            show_progress,
            work,
            rows: Vec::new(),
            page_cache: PageCache::default(),
            mount: None,
            warm: false,
            null: None,
            last_stats: None,
            resident_runs: Vec::new(),
            row_notes: Vec::new(),
            s3: None,
            repeat: None,
        }
    }
}

impl Bench<'_> {
    pub(crate) fn ctx(&self, label: String) -> Ctx<'_> {
        Ctx {
            stop: self.stop,
            label,
            show_progress: self.show_progress,
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            bail!(Interrupted);
        }
        Ok(())
    }

    pub(crate) fn files_of(&self, t: Target) -> Vec<FileRef> {
        let base = match t {
            Target::Source => &self.plan.source,
            Target::Mount => &self.plan.mountpoint,
            Target::Ceiling => &self.work.join("null"),
        };
        self.plan
            .files
            .iter()
            .map(|f| FileRef {
                path: base.join(&f.name),
                size: f.bytes,
            })
            .collect()
    }

    /// The order a loader opens files in: small metadata (config, index) first, then the rest by name.
    pub(crate) fn load_order(&self, t: Target) -> Vec<FileRef> {
        let mut v = self.files_of(t);
        v.sort_by_key(|f| (f.size >= 1 << 20, f.path.clone()));
        v
    }

    pub(crate) fn mount_config(&self, mode: CacheMode) -> MountConfig {
        let mut c = MountConfig::new(&self.plan.source, &self.plan.mountpoint, self.plan.pool);
        c.chunk_bytes = self.plan.chunk;
        c.readahead_bytes = self.plan.readahead;
        c.threads = self.plan.timing.fuse_threads;
        c.cache_mode = mode;
        // The main rows measure the daemon's own path (arena hits, fills); the store and its
        // passthrough have rows of their own (`resident.rs`).
        c.store = nitro_uring::store::StoreMode::Off;
        c.prefetch_sets = self.args.prefetch_sets == "on";
        c
    }

    pub(crate) fn unmount(&mut self) -> Result<()> {
        if let Some((m, _)) = self.mount.take() {
            self.last_stats = Some(m.stats());
            m.unmount()?;
        }
        self.warm = false;
        Ok(())
    }

    /// A fresh mount (empty arena) in `mode`.
    pub(crate) fn fresh_mount(&mut self, mode: CacheMode) -> Result<()> {
        self.unmount()?;
        let m = Mounted::spawn(self.mount_config(mode)).context("mounting the source")?;
        self.mount = Some((m, mode));
        Ok(())
    }

    /// A direct-mode mount whose arena holds the whole source (filled by an unmeasured read if the
    /// cold row did not run).
    pub(crate) fn warm_mount(&mut self) -> Result<()> {
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

    pub(crate) fn null_mount(&mut self, mode: CacheMode) -> Result<()> {
        if self.null.as_ref().is_some_and(|n| n.1 == mode) {
            return Ok(());
        }
        if let Some((n, _)) = self.null.take() {
            n.unmount()?;
        }
        let dir = self.work.join("null");
        std::fs::create_dir_all(&dir)?;
        let files = self
            .plan
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
            self.plan.timing.fuse_threads,
            self.plan.chunk,
            self.plan.readahead,
        )?;
        self.null = Some((n, mode));
        Ok(())
    }

    pub(crate) fn drop_all(&self) -> Result<()> {
        sys::drop_all_caches().map_err(|e| anyhow!("dropping caches: {e}"))
    }

    /// Unmounts everything, whatever happened before; returns the mount's last counters and how
    /// the mount's unmount went.
    pub(crate) fn take_down(&mut self) -> (Option<StatsSnapshot>, Result<()>) {
        let stats = self.mount.as_ref().map(|m| m.0.stats()).or(self.last_stats);
        let down = self.unmount();
        if let Some((n, _)) = self.null.take() {
            let _ = n.unmount();
        }
        (stats, down)
    }
}
