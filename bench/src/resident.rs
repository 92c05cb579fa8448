//! Resident rows: a file the store holds whole, re-opened and read through the mount, against the
//! same reads of the source file in the page cache — what users compare a RAM cache with (a second
//! `cat`, `vmtouch -t`). On the mount the re-open is answered with passthrough to the store's tmpfs
//! file, so the kernel reads it without the daemon; these rows show whether that holds up at
//! page-cache speed for each read shape a loader uses (dd 1 MiB, dd 128 KiB, an mmap load), and
//! for a file size that fits a workstation's pool easily and one that does not fit a CPU cache.
//!
//! Beside the throughput each size records what an mmap load of the resident file costs in RAM
//! (MemFree while mapped and touched: passthrough maps the store's own pages, no second copy) and
//! what a restart costs: a clean unmount, a new mount, one full read — bytes from the block device
//! (the store survives in tmpfs, so a warm cache stays warm) and whether they are byte-exact.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use nitro_uring::mount::{CacheMode, MountConfig, Mounted};
use nitro_uring::store::StoreMode;
use serde::Serialize;

use crate::harness::Bench;
use crate::report::RowSpec;
use crate::rounds::Runner;
use crate::sys;
use crate::workload::{self, Ctx, FileRef, Rng, human_bytes};

/// Read shapes: id suffix, label, request bytes.
pub(crate) const SHAPES: [(&str, &str, usize); 3] = [
    ("seq-1m", "re-open, dd 1 MiB", 1 << 20),
    ("seq-128k", "re-open, dd 128 KiB", 128 << 10),
    (
        "mmap",
        "re-open, mmap load (MADV_WILLNEED, 1 MiB copies)",
        1 << 20,
    ),
];

/// What one file size's rows found beside the throughput.
#[derive(Serialize, Clone, Debug)]
pub struct Resident {
    pub size_bytes: u64,
    pub pool_bytes: u64,
    /// From the first open through the mount until the store held the file whole.
    pub store_fill_seconds: f64,
    /// Opens answered with passthrough while the rows ran (each mount pass re-opens the file).
    pub passthrough_opens: u64,
    /// MemFree before minus while an mmap of the resident file is mapped and every page touched.
    pub mmap_memfree_drop_bytes: i64,
    pub restart: Option<Restart>,
    /// Why a part was not measured.
    pub notes: Vec<String>,
}

/// A clean unmount and a new mount of the same source, then one full read.
#[derive(Serialize, Clone, Debug)]
pub struct Restart {
    pub device: String,
    /// Bytes the block device read during that full read (every process; page caches dropped
    /// before it).
    pub device_read_bytes: u64,
    /// Bytes the new daemon filled from the source.
    pub fill_bytes: u64,
    pub adopted: bool,
    pub byte_exact: bool,
}

/// The sizes to run: `--resident-sizes`, else 1 GiB and 4 GiB (`--quick`: 32 MiB), each only when
/// the machine has the memory for the source's page cache, the store and the arena at once.
pub(crate) fn sizes(args: &crate::cli::BenchArgs, mem_available: u64) -> (Vec<u64>, Vec<String>) {
    let wanted = match &args.resident_sizes {
        Some(v) => v.clone(),
        None if args.quick => vec![32 << 20],
        None => vec![1 << 30, 4 << 30],
    };
    let mut notes = Vec::new();
    let sizes = wanted
        .into_iter()
        .filter(|&s| s > 0)
        .filter(|&s| {
            let need = s * 3 + s / 2 + (1 << 30);
            let fits = need <= mem_available;
            if !fits {
                notes.push(format!(
                    "resident rows for a {} file skipped: they need about {} of available memory (source page cache + store + arena), {} available",
                    human_bytes(s),
                    human_bytes(need),
                    human_bytes(mem_available)
                ));
            }
            fits
        })
        .collect();
    (sizes, notes)
}

impl Bench<'_> {
    /// The resident rows for every size, then the restart measurement for each.
    pub(crate) fn resident(&mut self) -> Result<()> {
        let mem = sys::proc_meminfo_bytes("MemAvailable").unwrap_or(0);
        let (sizes, notes) = sizes(self.args, mem);
        for n in notes {
            eprintln!("  {n}");
            self.row_notes.push(n);
        }
        for size in sizes {
            self.unmount()?;
            let dir = self.work.join(format!("resident-{}", size >> 20));
            let r = self.resident_size(&dir, size);
            let _ = self.unmount();
            let _ = std::fs::remove_dir_all(&dir);
            self.resident_runs.push(r?);
        }
        Ok(())
    }

    fn resident_size(&mut self, dir: &Path, size: u64) -> Result<Resident> {
        let src_dir = dir.join("src");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&src_dir)?;
        std::fs::create_dir_all(&mnt)?;
        let file = src_dir.join("weights.bin");
        let ctx = self.ctx(format!("writing a {} file", human_bytes(size)));
        write_random(&file, size, &ctx)?;
        // Versions younger than the racy window are never stored (see fuse/versions.rs).
        std::thread::sleep(nitro_uring::fuse::RACY_WINDOW + Duration::from_millis(300));
        let src = vec![FileRef {
            path: file.clone(),
            size,
        }];
        let via = vec![FileRef {
            path: mnt.join("weights.bin"),
            size,
        }];
        let pool = size + size / 4 + (256 << 20);
        let mut out = Resident {
            size_bytes: size,
            pool_bytes: pool,
            store_fill_seconds: 0.0,
            passthrough_opens: 0,
            mmap_memfree_drop_bytes: 0,
            restart: None,
            notes: Vec::new(),
        };
        let label = format!("source into the page cache · {}", human_bytes(size));
        workload::seq_read(&src, 1 << 20, &self.ctx(label))?;
        let want = hash_file(&file)?;
        self.resident_mount(&src_dir, &mnt, pool, StoreMode::Ephemeral)?;
        let started = Instant::now();
        let label = format!("first load through the mount · {}", human_bytes(size));
        workload::seq_read(&via, 1 << 20, &self.ctx(label))?;
        if !self.wait_stored(1) {
            out.notes
                .push("the store did not finish filling the file: rows measure the daemon".into());
        }
        out.store_fill_seconds = started.elapsed().as_secs_f64();
        let opens_before = self.mount_stats().map_or(0, |s| s.passthrough_opens);
        let tag = size_tag(size);
        self.shape_rows(
            &format!("resident-{tag}"),
            &format!("resident {tag} file"),
            (&src, "the source file in the page cache (read once before)"),
            (
                &via,
                "the store holds the file whole; every pass re-opens it (passthrough)",
            ),
        )?;
        out.passthrough_opens = self
            .mount_stats()
            .map_or(0, |s| s.passthrough_opens - opens_before);
        out.mmap_memfree_drop_bytes = workload::mmap_memfree_drop(&via[0])?;
        self.unmount()?;
        match self.restart(&src_dir, &mnt, pool, &via, want) {
            Ok(r) => out.restart = Some(r),
            Err(e) => out.notes.push(format!("restart not measured: {e:#}")),
        }
        Ok(out)
    }

    pub(crate) fn resident_mount(
        &mut self,
        src: &Path,
        mnt: &Path,
        pool: u64,
        store: StoreMode,
    ) -> Result<()> {
        self.unmount()?;
        let mut c = MountConfig::new(src, mnt, pool);
        c.chunk_bytes = self.plan.chunk;
        c.readahead_bytes = self.plan.readahead;
        c.threads = self.plan.timing.fuse_threads;
        c.store = store;
        let m = Mounted::spawn(c).context("mounting the resident rows' source")?;
        self.mount = Some((m, CacheMode::Direct));
        Ok(())
    }

    pub(crate) fn mount_stats(&self) -> Option<nitro_uring::mount::StatsSnapshot> {
        self.mount.as_ref().map(|m| m.0.stats())
    }

    /// Waits (at most 5 minutes) until the store holds `files` files whole.
    pub(crate) fn wait_stored(&self, files: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            match self.mount_stats() {
                Some(s) if s.store_complete_files >= files => return true,
                None => return false,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        false
    }

    /// One row per read shape (workload `{id}-{shape}`, label `{label}: {what}`), source and
    /// mount taking turns; each side is its files and the state they are in.
    pub(crate) fn shape_rows(
        &mut self,
        id: &str,
        label: &str,
        src: (&[FileRef], &'static str),
        via: (&[FileRef], &'static str),
    ) -> Result<()> {
        let per_round = self.plan.timing.seconds / self.plan.timing.rounds as f64;
        let mut entries: Vec<(RowSpec<'static>, Runner)> = Vec::new();
        for (shape, what, block) in SHAPES {
            let workload: &'static str = leak(format!("{id}-{shape}"));
            let label: &'static str = leak(format!("{label}: {what}"));
            for (target, files, state) in [
                ("source", src.0.to_vec(), src.1),
                ("mount", via.0.to_vec(), via.1),
            ] {
                let spec = RowSpec {
                    workload,
                    label,
                    target,
                    cache_mode: if target == "mount" { "direct" } else { "-" },
                    state,
                    threads: 1,
                    block_bytes: block as u64,
                };
                let run: Runner = Box::new(move |c: &Ctx<'_>, _| {
                    workload::repeat(
                        per_round,
                        c,
                        || {},
                        |c| match shape {
                            "mmap" => workload::mmap_seq(&files, block, c),
                            _ => workload::seq_read(&files, block, c),
                        },
                    )
                });
                entries.push((spec, run));
            }
        }
        self.interleave(entries)
    }

    /// Fills a persistent store, unmounts cleanly, mounts again and reads the file whole once.
    fn restart(
        &mut self,
        src: &Path,
        mnt: &Path,
        pool: u64,
        via: &[FileRef],
        want: u64,
    ) -> Result<Restart> {
        self.plan.drop_ok.clone().map_err(|why| anyhow!(why))?;
        let (_, device) = sys::fs_of(src);
        let sectors = || sys::device_sectors_read(&device);
        sectors().ok_or_else(|| anyhow!("no block device counter for {device}"))?;
        self.resident_mount(src, mnt, pool, StoreMode::Default)?;
        let store_dir = self.mount.as_ref().and_then(|m| m.0.store_dir());
        let result = (|| {
            workload::seq_read(via, 1 << 20, &self.ctx("filling the store".into()))?;
            if !self.wait_stored(1) {
                return Err(anyhow!("the store did not fill the file"));
            }
            self.unmount()?;
            self.drop_all()?;
            let before = sectors().unwrap_or(0);
            self.resident_mount(src, mnt, pool, StoreMode::Default)?;
            let got = hash_file(&via[0].path)?;
            let after = sectors().unwrap_or(0);
            let s = self.mount_stats().unwrap_or_default();
            Ok(Restart {
                device: device.clone(),
                device_read_bytes: after.saturating_sub(before) * 512,
                fill_bytes: s.fill_bytes,
                adopted: s.store_complete_files >= 1,
                byte_exact: got == want,
            })
        })();
        let _ = self.unmount();
        // The store outlives the daemon on purpose; the bench's file must not.
        if let Some(d) = store_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        result
    }
}

/// "1GiB", "32MiB": the size in a row id.
pub(crate) fn size_tag(size: u64) -> String {
    if size >= 1 << 30 && size.is_multiple_of(1 << 30) {
        format!("{}GiB", size >> 30)
    } else {
        format!("{}MiB", size >> 20)
    }
}

pub(crate) fn leak(s: String) -> &'static str {
    // A handful of labels per run, kept for the report's lifetime (the process's).
    Box::leak(s.into_boxed_str())
}

/// Writes `size` incompressible bytes and syncs them to the disk.
pub(crate) fn write_random(path: &Path, size: u64, ctx: &Ctx<'_>) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut rng = Rng::new(size);
    let mut buf = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        ctx.check()?;
        for w in buf.chunks_exact_mut(8) {
            w.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// xxh3 of a whole file, read in 16 MiB pieces.
pub(crate) fn hash_file(path: &PathBuf) -> Result<u64> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 16 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.digest());
        }
        h.update(&buf[..n]);
    }
}
