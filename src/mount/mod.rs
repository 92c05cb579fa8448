//! Mount lifecycle: check every input before touching anything, recover a dead mount, start the
//! engine and the FUSE session, tune the kernel, and take it all down again.
//!
//! Why validation is a separate, complete pass: a bad argument must leave nothing mounted and print
//! one line. Checking everything before the first mount(2) means no error path has to undo one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use fuser::{Config, MountOption, SessionACL, SessionUnmounter};
use nitro_ring::Waker;

use crate::arena::{Arena, PAGE_BYTES};
pub use crate::engine::CompressMode;
use crate::engine::{Engine, Msg, Shared, Stats};
pub use crate::fuse::CacheMode;
use crate::fuse::{NitroFs, Options};
use crate::index::Index;
use crate::store::Store;
pub use crate::store::StoreMode;

mod kernel;
mod mounts;
mod stats;

use kernel::{max_pages_limit, raise_max_pages, tune_bdi};
pub use kernel::{wanted_max_pages, wanted_read_ahead_kb};
use mounts::is_mounted;
pub use mounts::{mount_entry, recover_stale, umount, umount_nitro};
pub use stats::{StatsSnapshot, snapshot};

pub const FSTYPE: &str = "fuse.nitro-uring";

/// Chunk fills the engine keeps in flight at most (its io_uring queue depth for reads); `bench`
/// reads the source at the same depth for its like-for-like cold baseline.
pub const MAX_FILLS: usize = 64;

#[derive(Clone, Debug)]
pub struct MountConfig {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub pool_bytes: u64,
    pub chunk_bytes: u64,
    pub threads: usize,
    pub readahead_bytes: u64,
    pub allow_other: bool,
    pub lock: bool,
    pub cache_mode: CacheMode,
    pub compress: CompressMode,
    /// Where whole files are kept for passthrough and across restarts (`--store`).
    pub store: StoreMode,
    /// Serve Prometheus metrics on this address (`--metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve the control socket (warm, pin, evict, stats).
    pub control: bool,
    /// Opening one member of a model set prefetches the others (`--prefetch-sets`).
    pub prefetch_sets: bool,
    /// An `s3://` source (then `source` is only its text), with the `--s3-*` options.
    pub remote: Option<(crate::remote::Location, crate::remote::RemoteOptions)>,
}

impl MountConfig {
    pub fn new(
        source: impl Into<PathBuf>,
        mountpoint: impl Into<PathBuf>,
        pool_bytes: u64,
    ) -> Self {
        MountConfig {
            source: source.into(),
            mountpoint: mountpoint.into(),
            pool_bytes,
            chunk_bytes: 1 << 20,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            readahead_bytes: 16 << 20,
            allow_other: false,
            lock: false,
            cache_mode: CacheMode::Direct,
            compress: CompressMode::Auto,
            store: StoreMode::Default,
            metrics: None,
            control: true,
            prefetch_sets: true,
            remote: None,
        }
    }
}

/// A live mount. Dropping it unmounts.
pub struct Mounted {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    unmounter: Option<SessionUnmounter>,
    session: Option<JoinHandle<std::io::Result<()>>>,
    engine: Option<JoinHandle<()>>,
    tx: crossbeam_channel::Sender<Msg>,
    waker: Waker,
    heartbeat: Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>,
    reaper: Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>,
    /// The mount's device ("0:39"): names its connection under /sys/fs/fuse/connections.
    conn_dev: Option<String>,
    /// The control socket and metrics endpoint; stopped first at teardown.
    control: Option<crate::control::Control>,
}

/// Checks every input; the error text is the one line the user sees.
pub fn validate(cfg: &MountConfig) -> Result<()> {
    let src = &cfg.source;
    let local = cfg.remote.is_none();
    if local {
        let meta = std::fs::metadata(src)
            .map_err(|e| anyhow!("source {}: {}", src.display(), plain(&e)))?;
        if !meta.is_dir() {
            bail!("source {} is not a directory", src.display());
        }
        std::fs::read_dir(src)
            .map_err(|e| anyhow!("source {} is not readable: {}", src.display(), plain(&e)))?;
    }
    let mp = &cfg.mountpoint;
    let mmeta = match std::fs::metadata(mp) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            // Checked again (and recovered) by `recover_stale`, which runs first in `spawn`.
            bail!("mountpoint {} is a dead FUSE mount", mp.display())
        }
        Err(e) => bail!("mountpoint {}: {}", mp.display(), plain(&e)),
    };
    if !mmeta.is_dir() {
        bail!("mountpoint {} is not a directory", mp.display());
    }
    cfg.store.validate().map_err(|e| anyhow!(e))?;
    if is_mounted(mp) {
        bail!("mountpoint {} is already a mount point", mp.display());
    }
    if std::fs::read_dir(mp)
        .with_context(|| format!("mountpoint {} is not readable", mp.display()))?
        .next()
        .is_some()
    {
        bail!("mountpoint {} is not empty", mp.display());
    }
    if local {
        same_tree_check(src, mp)?;
    }
    validate_sizes(cfg)
}

/// A source and a mountpoint that contain each other would recurse.
fn same_tree_check(src: &Path, mp: &Path) -> Result<()> {
    let s = std::fs::canonicalize(src)?;
    let m = std::fs::canonicalize(mp)?;
    if s == m {
        bail!(
            "source and mountpoint are the same directory ({})",
            s.display()
        );
    }
    if m.starts_with(&s) {
        bail!(
            "mountpoint {} is inside the source {}",
            m.display(),
            s.display()
        );
    }
    if s.starts_with(&m) {
        bail!(
            "source {} is inside the mountpoint {}",
            s.display(),
            m.display()
        );
    }
    Ok(())
}

fn validate_sizes(cfg: &MountConfig) -> Result<()> {
    if cfg.chunk_bytes < 64 * 1024
        || !cfg.chunk_bytes.is_power_of_two()
        || cfg.chunk_bytes > 64 << 20
    {
        bail!(
            "--chunk must be a power of two between 64KiB and 64MiB (got {} bytes)",
            cfg.chunk_bytes
        );
    }
    if cfg.pool_bytes < cfg.chunk_bytes {
        bail!(
            "--pool ({} bytes) is smaller than one chunk ({} bytes)",
            cfg.pool_bytes,
            cfg.chunk_bytes
        );
    }
    if let Some(avail) = mem_available_bytes()
        && cfg.pool_bytes > avail
    {
        bail!(
            "--pool ({:.2} GiB) is larger than available memory ({:.2} GiB)",
            cfg.pool_bytes as f64 / (1u64 << 30) as f64,
            avail as f64 / (1u64 << 30) as f64
        );
    }
    if cfg.threads == 0 || cfg.threads > 256 {
        bail!("--threads must be between 1 and 256");
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: load the fuse module (modprobe fuse)");
    }
    Ok(())
}

fn plain(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

pub fn mem_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The message of a panic payload (`panic!` with a literal or a format string).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Opens the store for this source and adopts what an earlier daemon left in it. None (logged):
/// `--store off`, or no usable directory; the arena then serves everything, without passthrough.
fn open_store(
    cfg: &MountConfig,
    source: &Path,
    remote_id: Option<(u64, u64)>,
    arena: &Arena,
) -> Option<Store> {
    if cfg.store == StoreMode::Off {
        return None;
    }
    use std::os::unix::fs::MetadataExt;
    let root_id = match remote_id {
        Some(id) => id,
        None => std::fs::metadata(source).map(|m| (m.dev(), m.ino())).ok()?,
    };
    let slabs = arena.slab_count();
    // The arena keeps an eighth of the pool whatever the store holds: files that do not fit the
    // store, and compressed chunks, need somewhere to go.
    let cap = slabs - (slabs / 8).max(1).min(slabs);
    match Store::open(
        &cfg.store,
        source,
        root_id,
        cfg.chunk_bytes,
        cfg.chunk_bytes,
        cap,
    ) {
        Ok(store) => {
            let (n, bytes) = store.adopt(&mut |s| arena.lend(s));
            tracing::info!(
                "store {}: adopted {n} file(s), {} MiB, from an earlier run",
                store.path.display(),
                bytes >> 20
            );
            Some(store)
        }
        Err(e) => {
            tracing::warn!("no store ({e}): files are served through the daemon only");
            None
        }
    }
}

/// Every few seconds, tells the kernel about remembered inodes whose source object was deleted
/// (see `fuse::Reaper`). Dropping the returned sender stops it.
fn spawn_reaper(
    reaper: crate::fuse::Reaper,
    notifier: fuser::Notifier,
) -> Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)> {
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let handle = std::thread::Builder::new()
        .name("nitro-reaper".into())
        .spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stop_rx.recv_timeout(Duration::from_secs(5))
            {
                let n = reaper.sweep(&notifier);
                if n > 0 {
                    tracing::debug!("told the kernel of {n} deleted source objects");
                }
            }
        })
        .ok()?;
    Some((stop_tx, handle))
}

/// Runs a FUSE session to completion on the thread that calls it.
type SessionRun = Box<dyn FnOnce() -> std::io::Result<()> + Send>;

/// Mounts `fs` at `mountpoint`; the session runs when the returned closure is called.
fn session_of<FS: fuser::Filesystem + Send + 'static>(
    fs: FS,
    mountpoint: &Path,
    config: &Config,
) -> Result<(SessionUnmounter, fuser::Notifier, SessionRun)> {
    let mut session = fuser::Session::new(fs, mountpoint, config).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            anyhow!("no permission to mount at {}: {e}", mountpoint.display())
        } else {
            anyhow!("mount at {} failed: {e}", mountpoint.display())
        }
    })?;
    let notifier = session.notifier();
    let unmounter = session.unmount_callable();
    Ok((unmounter, notifier, Box::new(move || session.run())))
}

impl Mounted {
    /// Validates, mounts, and returns once the mount is live.
    pub fn spawn(cfg: MountConfig) -> Result<Mounted> {
        recover_stale(&cfg.mountpoint)?;
        validate(&cfg)?;
        // Bound before mounting: a bad or busy address leaves nothing mounted.
        let metrics = match cfg.metrics {
            Some(addr) => Some(crate::control::prom::bind(addr).map_err(|e| anyhow!(e))?),
            None => None,
        };
        raise_max_pages(cfg.chunk_bytes);
        let max_request_bytes =
            (max_pages_limit() * PAGE_BYTES as u64).min(cfg.chunk_bytes) as usize;
        // A bucket is checked (one LIST) before anything is allocated or mounted.
        let client = match &cfg.remote {
            Some((loc, o)) => Some(Arc::new(crate::remote::Client::connect(
                loc.clone(),
                o.clone(),
            )?)),
            None => None,
        };
        let source = match &client {
            Some(c) => PathBuf::from(c.loc.display()),
            None => std::fs::canonicalize(&cfg.source)?,
        };
        // As the mount table shows it: the control client matches it there.
        let mountpoint_abs = std::fs::canonicalize(&cfg.mountpoint)?;
        let arena = Arena::new(cfg.pool_bytes as usize, cfg.chunk_bytes as usize, cfg.lock)
            .map_err(|e| anyhow!("cannot allocate a pool of {} bytes: {e}", cfg.pool_bytes))?;
        let slabs = (cfg.pool_bytes / cfg.chunk_bytes) as u32;
        // Whole chunks take one slot each; tails of small files and compressed chunks take more
        // slots than slabs. One slot per 64 KiB of pool (≈120 B each: 0.2% of the pool) covers a
        // directory of small files; when slots run out the policy evicts, nothing breaks.
        let slot_count =
            u32::try_from((cfg.pool_bytes / (64 << 10)).max(u64::from(slabs) * 4) + 256)
                .map_err(|_| anyhow!("pool too large"))?;
        let store = open_store(&cfg, &source, client.as_ref().map(|c| c.id), &arena);
        let shared = Arc::new(Shared {
            store,
            arena,
            index: Index::new(slot_count, 64),
            stats: Stats::default(),
            chunk_bytes: cfg.chunk_bytes,
            max_request_bytes,
            last_fill: parking_lot::Mutex::new(None),
            compress: cfg.compress,
            min_saving: crate::codec::DEFAULT_MIN_SAVING,
            dead: std::sync::atomic::AtomicBool::new(false),
            death: parking_lot::Mutex::new(None),
        });
        let (tx, rx) = crossbeam_channel::bounded(4096);
        // The engine needs the session's notifier, which exists only once mounted; the ring (and its
        // waker) must exist before the filesystem. Create the engine after mounting and hand the
        // filesystem a waker through a ring built here.
        let fs_opts = Options {
            cache_mode: cfg.cache_mode,
            // New chunks wait in S3-FIFO's small queue (10% of the pool); prefetch deeper than
            // that would evict what it fetched before the reader gets there, and the refill would
            // look like reuse to the policy. Only matters for tiny pools.
            readahead_bytes: cfg.readahead_bytes.min(cfg.pool_bytes / 16),
            attr_ttl: Duration::from_secs(1),
            prefetch_sets: cfg.prefetch_sets,
        };
        let mut options = vec![
            MountOption::FSName(format!("nitro-uring:{}", source.display())),
            // fuser hands Subtype only to fusermount; the kernel takes it as a data option.
            MountOption::CUSTOM("subtype=nitro-uring".into()),
            MountOption::RO,
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        options.push(MountOption::NoAtime);
        let mut config = Config::default();
        config.mount_options = options;
        config.acl = if cfg.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(cfg.threads);
        config.clone_fd = true;

        let max_fills = client.as_ref().map_or(MAX_FILLS, |c| {
            crate::remote::max_fills(&c.opts, cfg.chunk_bytes)
        });
        let (engine, waker) = Engine::new(shared.clone(), rx, max_fills, client.clone())
            .map_err(|e| anyhow!("io_uring unavailable: {e}"))?;
        let notifier_slot = Arc::new(std::sync::OnceLock::new());
        let telemetry = Arc::new(crate::control::telemetry::Telemetry::default());
        let (unmounter, run_session, reaper, catalog) = match &client {
            Some(client) => {
                let opts = crate::remote::fs::Options {
                    cache_mode: fs_opts.cache_mode,
                    readahead_bytes: fs_opts.readahead_bytes,
                    // A round trip per chunk is hidden only by a deeper window: it doubles up to
                    // an eighth of the pool (mountpoint-s3 grows its window the same way).
                    max_readahead_bytes: (cfg.pool_bytes / 8).max(fs_opts.readahead_bytes),
                    prefetch_sets: fs_opts.prefetch_sets,
                };
                let fs = crate::remote::RemoteFs::new(
                    client.clone(),
                    shared.clone(),
                    tx.clone(),
                    waker.clone(),
                    opts,
                    notifier_slot.clone(),
                    telemetry.clone(),
                )?;
                let catalog = fs.catalog();
                let (unmounter, notifier, run) = session_of(fs, &cfg.mountpoint, &config)?;
                let _ = notifier_slot.set(notifier);
                (unmounter, run, None, Some(catalog))
            }
            None => {
                let fs = NitroFs::new(
                    &source,
                    shared.clone(),
                    tx.clone(),
                    waker.clone(),
                    fs_opts,
                    notifier_slot.clone(),
                    telemetry.clone(),
                )?;
                let reaper = fs.reaper();
                let catalog = fs.catalog()?;
                let (unmounter, notifier, run) = session_of(fs, &cfg.mountpoint, &config)?;
                let _ = notifier_slot.set(notifier.clone());
                let reaper = spawn_reaper(reaper, notifier);
                (unmounter, run, reaper, Some(catalog))
            }
        };
        let engine = std::thread::Builder::new()
            .name("nitro-ring".into())
            .spawn(move || {
                let mut engine = engine;
                // A dead engine must be loud, not a mount whose misses hang or fail in silence:
                // record why, fail what is parked and what still comes, and let the owner of the
                // mount (`engine_failure`) unmount.
                let reason =
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run())) {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e,
                        Err(payload) => format!("ring thread panicked: {}", panic_text(&*payload)),
                    };
                engine.die(reason);
            })?;
        let session = std::thread::Builder::new()
            .name("nitro-fuse".into())
            .spawn(run_session)?;
        tune_bdi(&cfg.mountpoint, cfg.readahead_bytes.max(cfg.chunk_bytes));
        let conn_dev = mount_entry(&cfg.mountpoint).map(|(dev, _)| dev);
        let heartbeat = crate::heartbeat::spawn(shared.clone());
        let control = match (&conn_dev, cfg.control || metrics.is_some()) {
            (Some(dev), true) => {
                let ctx = crate::control::Ctx::new(
                    shared.clone(),
                    telemetry,
                    catalog,
                    (tx.clone(), waker.clone()),
                    source.clone(),
                    mountpoint_abs,
                );
                let dev = if cfg.control {
                    Some(dev.as_str())
                } else {
                    None
                };
                Some(crate::control::Control::spawn(ctx, dev, metrics))
            }
            _ => None,
        };
        tracing::info!(
            "MOUNT {} -> {} pool {} MiB chunk {} KiB readahead {} KiB mode {:?} threads {}",
            source.display(),
            cfg.mountpoint.display(),
            cfg.pool_bytes >> 20,
            cfg.chunk_bytes >> 10,
            cfg.readahead_bytes >> 10,
            cfg.cache_mode,
            cfg.threads
        );
        Ok(Mounted {
            shared,
            mountpoint: cfg.mountpoint,
            unmounter: Some(unmounter),
            session: Some(session),
            engine: Some(engine),
            tx,
            waker,
            heartbeat,
            reaper,
            conn_dev,
            control,
        })
    }

    pub fn stats(&self) -> StatsSnapshot {
        snapshot(&self.shared)
    }

    /// The directory of this mount's store files (None: no store).
    pub fn store_dir(&self) -> Option<PathBuf> {
        self.shared.store.as_ref().map(|s| s.path.clone())
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Why the fill engine died, if it did; the mount then answers every read with EIO and
    /// should be unmounted.
    pub fn engine_failure(&self) -> Option<String> {
        if let Some(reason) = self.shared.death.lock().clone() {
            return Some(reason);
        }
        if self.engine.as_ref().is_some_and(|e| e.is_finished()) {
            return Some("the ring thread exited".into());
        }
        None
    }

    /// Whether the session has ended (unmounted from outside).
    pub fn finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.is_finished())
    }

    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    /// The control socket's path, if it serves one.
    pub fn control_socket(&self) -> Option<&Path> {
        self.control.as_ref().and_then(|c| c.socket.as_deref())
    }

    fn teardown(&mut self) -> Result<()> {
        // No more warms or scrapes: they would queue work for an engine about to stop.
        drop(self.control.take());
        let mut result = Ok(());
        if let Some(mut u) = self.unmounter.take()
            && let Err(e) = u.unmount()
            && !self.finished()
        {
            // Busy (a process has a file open): detach, then end the connection, so the daemon
            // exits as asked; the holder of the open file gets ENOTCONN from then on.
            tracing::warn!("unmount failed ({e}); detaching");
            if let Err(e) = umount(&self.mountpoint, true) {
                result = Err(e);
            }
            if let Some(dev) = &self.conn_dev
                && let Some(minor) = dev.split(':').nth(1)
            {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
            }
        }
        if let Some(s) = self.session.take() {
            for _ in 0..50 {
                if s.is_finished() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !s.is_finished() {
                tracing::warn!("FUSE session still busy after unmount; leaving it to process exit");
                return result;
            }
            match s.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("session ended: {e}"),
                Err(_) => result = Err(anyhow!("FUSE session thread panicked")),
            }
        }
        let _ = self.tx.send(Msg::Shutdown);
        self.waker.wake();
        if let Some(e) = self.engine.take()
            && e.join().is_err()
        {
            result = Err(anyhow!("engine thread panicked"));
        }
        for (stop, h) in [self.heartbeat.take(), self.reaper.take()]
            .into_iter()
            .flatten()
        {
            drop(stop);
            let _ = h.join();
        }
        let s = snapshot(&self.shared);
        tracing::info!(
            "UNMOUNT hits {} misses {} fills {} ({} MiB) evictions {} errors {} compressed {} ({} MiB in {} MiB) logical/pool {:.2}",
            s.hits,
            s.misses,
            s.fills,
            s.fill_bytes >> 20,
            s.evictions,
            s.fill_errors,
            s.compressions,
            s.encoded_logical_bytes >> 20,
            s.encoded_stored_bytes >> 20,
            s.logical_cached_bytes as f64 / s.pool_bytes.max(1) as f64
        );
        result
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = self.teardown();
        }
    }
}
