//! The store: whole source-file versions kept in tmpfs files, at the file's own offsets.
//!
//! Why files on tmpfs and not more arena: a FUSE open can be answered with *passthrough* to a
//! backing file, after which the kernel reads (and maps) that file itself — no daemon round trip
//! per read, and an mmap of the mount is the store's own pages, not a second copy in the page
//! cache. The bytes must therefore live in a file the kernel can read at the source's offsets.
//! tmpfs keeps them in RAM; a tmpfs mounted with huge pages doubles an mmap load against 4 KiB
//! pages. Files also outlive the daemon: a restart (or a SIGKILL) adopts them by name.
//!
//! Why a file is named by its version's stamp (dev, ino, size, mtime, ctime): a new daemon must
//! know, without trusting anything it reads from the store, which source version a file holds. A
//! source changed while no daemon ran has a new stamp, so its old store file is never matched (it
//! is evicted first, being unused). A file is only given its final name once every byte landed
//! and the source still held the version afterwards; anything else (`.part`) is discarded.
//!
//! Who may do what: the engine thread creates entries and fills them (io_uring reads straight into
//! the shared mapping) and evicts them; FUSE workers look entries up and read filled chunks. An
//! entry is evicted only when the store's own reference is the last one (no open version, no
//! passthrough handle, no fill holds it), checked under the store's lock, through which alone a new
//! reference can be made — so no reader can see an evicted mapping, and a file with a passthrough
//! handle open stays whole.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::MmapOptions;
use parking_lot::Mutex;
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::engine::Stamp;

mod entry;
mod place;

pub use entry::Entry;
pub use place::StoreMode;
pub(crate) use place::own_dir;
use place::{SOURCE_RECORD, collect_orphans, default_dir, name_of, parse_name};

const TMPFS_MAGIC: i64 = 0x0102_1994;
const PAGE_BYTES: u64 = 4096;
/// Where the store lives unless `--store` says otherwise: a tmpfs the daemon mounts with huge pages.
pub const DEFAULT_DIR: &str = "/run/nitro-uring/store";
/// Where it goes when that tmpfs cannot be mounted (not root): shared memory, 4 KiB pages.
const FALLBACK_DIR: &str = "/dev/shm/nitro-uring";

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Gauges for stats and the heartbeat.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StoreUsage {
    pub files: u64,
    pub complete_files: u64,
    /// Bytes of filled chunks (RAM the store holds).
    pub resident_bytes: u64,
    /// Budget held, in bytes of slabs.
    pub reserved_bytes: u64,
}

struct State {
    entries: HashMap<Stamp, Arc<Entry>>,
    /// The store's clock: one tick per open of a file big enough to be stored.
    tick: u64,
    /// When versions that are not stored (now) were last opened, by tick: a reused file's reuse
    /// distance, which decides whom it may push out (`evict_one`). Bounded by `SEEN_LIMIT`.
    seen: HashMap<Stamp, u64>,
}

/// Versions whose last open the store remembers at most (cleared when full: forgetting only makes
/// admission more conservative).
const SEEN_LIMIT: usize = 4096;

pub struct Store {
    dir: OwnedFd,
    pub path: PathBuf,
    /// Files are linked under their names (kept across restarts); else O_TMPFILE, never named.
    persist: bool,
    chunk_bytes: u64,
    slab_bytes: u64,
    /// The store may hold this many slabs at most (the rest of the pool stays the arena's).
    pub cap_slabs: u32,
    state: Mutex<State>,
}

impl Store {
    /// Opens (or makes) the store for one source tree. `root_id` is the source root's (dev, ino):
    /// each source gets its own subdirectory, locked while a daemon uses it, so two daemons never
    /// evict each other's files. Err: no store (the caller logs why and serves from the arena).
    pub fn open(
        mode: &StoreMode,
        source: &Path,
        root_id: (u64, u64),
        chunk_bytes: u64,
        slab_bytes: u64,
        cap_slabs: u32,
    ) -> io::Result<Store> {
        let base = match mode {
            StoreMode::Off => return Err(io::Error::other("store off")),
            StoreMode::Default | StoreMode::Ephemeral => default_dir()?,
            StoreMode::Dir(p) => p.clone(),
        };
        let persist = *mode != StoreMode::Ephemeral;
        let base_fd = own_dir(&base)?;
        let fs = rustix::fs::fstatfs(&base_fd).map_err(io_err)?;
        if fs.f_type as i64 != TMPFS_MAGIC {
            return Err(io::Error::other(format!(
                "{} is not on a tmpfs",
                base.display()
            )));
        }
        let sub = if persist {
            format!("src-{:x}-{:x}", root_id.0, root_id.1)
        } else {
            format!("tmp-{}", std::process::id())
        };
        let path = base.join(&sub);
        let dir = own_dir(&path)?;
        if persist {
            rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
                |_| io::Error::other(format!("{} is in use by another daemon", path.display())),
            )?;
            collect_orphans(&base_fd, &sub);
            // Which source this directory caches, so a later daemon can tell when it is gone.
            let mut record = source.as_os_str().as_encoded_bytes().to_vec();
            record.push(b'\n');
            let fd = rustix::fs::openat(
                &dir,
                SOURCE_RECORD,
                OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::TRUNC
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )
            .map_err(io_err)?;
            rustix::io::write(&fd, &record).map_err(io_err)?;
        } else {
            // Nothing named is ever made here; the directory itself goes at once.
            let _ = rustix::fs::unlinkat(&base_fd, sub.as_str(), AtFlags::REMOVEDIR);
        }
        Ok(Store {
            dir,
            path,
            persist,
            chunk_bytes,
            slab_bytes,
            cap_slabs,
            state: Mutex::new(State {
                entries: HashMap::new(),
                tick: 0,
                seen: HashMap::new(),
            }),
        })
    }

    /// A descriptor of an entry's file, for a passthrough backing registration.
    pub fn backing_fd(&self, e: &Entry) -> io::Result<OwnedFd> {
        match &e.file {
            Some(f) => f.as_fd().try_clone_to_owned(),
            None => rustix::fs::openat(
                &self.dir,
                e.name.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_err),
        }
    }

    /// Files smaller than this stay in the arena: packed there by the page, they would waste most
    /// of a slab of store budget each, and a small file gains little from passthrough.
    pub fn min_bytes(&self) -> u64 {
        4 * self.chunk_bytes
    }

    pub fn slabs_for(&self, size: u64) -> u32 {
        u32::try_from(size.div_ceil(self.slab_bytes)).unwrap_or(u32::MAX)
    }

    /// Adopts the complete files a previous daemon left, as long as `lend(slabs)` grants their
    /// budget; discards partial ones and those that do not fit. Returns (adopted, bytes).
    pub fn adopt(&self, lend: &mut dyn FnMut(u32) -> bool) -> (usize, u64) {
        if !self.persist {
            return (0, 0);
        }
        let mut found = Vec::new();
        let Ok(dir) = rustix::fs::Dir::read_from(&self.dir) else {
            return (0, 0);
        };
        for ent in dir.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." || name == SOURCE_RECORD {
                continue;
            }
            match self.adoptable(&name) {
                Some((stamp, file, mtime)) => found.push((mtime, name, stamp, file)),
                None => {
                    tracing::debug!("store: discarding {name}");
                    let _ = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty());
                }
            }
        }
        // Most recently written first: those are the likeliest to be wanted again.
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        let (mut n, mut bytes) = (0, 0);
        let mut st = self.state.lock();
        for (_, name, stamp, file) in found {
            let slabs = self.slabs_for(stamp.2);
            let used: u32 = st.entries.values().map(|e| e.slabs).sum();
            let entry = (used.saturating_add(slabs) <= self.cap_slabs && lend(slabs))
                .then(|| self.entry(stamp, name.clone(), file, slabs, true))
                .and_then(Result::ok);
            match entry {
                Some(e) => {
                    n += 1;
                    bytes += stamp.2;
                    st.entries.insert(stamp, Arc::new(e));
                }
                None => {
                    let _ = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty());
                }
            }
        }
        (n, bytes)
    }

    /// A store file that is complete by its name and whose size and allocation agree with it.
    fn adoptable(&self, name: &str) -> Option<(Stamp, OwnedFd, i64)> {
        let stamp = parse_name(name)?;
        let fd = rustix::fs::openat(
            &self.dir,
            name,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        let regular = rustix::fs::FileType::from_raw_mode(st.st_mode).is_file();
        let populated = (st.st_blocks as u64) * 512 >= (stamp.2 / PAGE_BYTES) * PAGE_BYTES;
        let ours = st.st_uid == rustix::process::geteuid().as_raw() && st.st_nlink == 1;
        (regular && ours && populated && st.st_size as u64 == stamp.2 && stamp.2 > 0).then_some((
            stamp,
            fd,
            st.st_mtime,
        ))
    }

    fn entry(
        &self,
        stamp: Stamp,
        name: String,
        file: OwnedFd,
        slabs: u32,
        complete: bool,
    ) -> io::Result<Entry> {
        let size = stamp.2;
        let map = MmapOptions::new()
            .len(size.next_multiple_of(PAGE_BYTES) as usize)
            .map_raw(&file)?;
        let file = (!self.persist).then_some(file);
        let chunks = size.div_ceil(self.chunk_bytes);
        let words = chunks.div_ceil(64) as usize;
        let full = if complete { u64::MAX } else { 0 };
        Ok(Entry {
            stamp,
            name,
            file,
            map,
            chunk_bytes: self.chunk_bytes,
            chunks,
            filled: (0..words).map(|_| AtomicU64::new(full)).collect(),
            filled_count: AtomicU64::new(if complete { chunks } else { 0 }),
            complete: AtomicBool::new(complete),
            broken: AtomicBool::new(false),
            slabs,
            uses: AtomicU64::new(0),
            last_use: AtomicU64::new(0),
        })
    }

    /// The entry of a version, if stored (complete or being filled); counts a use.
    pub fn lookup(&self, stamp: &Stamp) -> Option<Arc<Entry>> {
        let mut st = self.state.lock();
        st.tick += 1;
        let tick = st.tick;
        let e = st.entries.get(stamp)?.clone();
        e.last_use.store(tick, Ordering::Relaxed);
        e.uses.fetch_add(1, Ordering::Relaxed);
        Some(e)
    }

    /// Counts an open of a version that is not stored on the store's clock; returns how many ticks
    /// ago it was last opened (its reuse distance), if the store remembers.
    pub fn note_open(&self, stamp: &Stamp) -> Option<u64> {
        let mut st = self.state.lock();
        st.tick += 1;
        let now = st.tick;
        if st.seen.len() >= SEEN_LIMIT {
            st.seen.clear();
        }
        st.seen.insert(*stamp, now).map(|prev| now - prev)
    }

    /// The entry of a version, if stored, without counting a use (reports, a set prefetch looking).
    pub fn peek(&self, stamp: &Stamp) -> Option<Arc<Entry>> {
        self.state.lock().entries.get(stamp).cloned()
    }

    /// Every entry: (stamp, bytes filled, complete), for reports.
    pub fn list(&self) -> Vec<(Stamp, u64, bool)> {
        let st = self.state.lock();
        st.entries
            .values()
            .map(|e| (e.stamp, e.filled_bytes(), e.is_complete()))
            .collect()
    }

    /// Bytes of the idle entries opened at most `max_uses` times: what a first-time admission may
    /// take from the store besides free room.
    pub fn reclaimable_bytes(&self, max_uses: u64) -> u64 {
        let st = self.state.lock();
        st.entries
            .values()
            .filter(|e| Arc::strong_count(e) == 1 && e.uses() <= max_uses)
            .map(|e| u64::from(e.slabs) * self.slab_bytes)
            .sum()
    }

    /// Slabs the entries hold now.
    pub fn held_slabs(&self) -> u32 {
        self.state.lock().entries.values().map(|e| e.slabs).sum()
    }

    /// Makes a new, empty entry for `stamp` (the caller has the budget). Engine thread only.
    pub fn create(&self, stamp: Stamp, slabs: u32) -> io::Result<Arc<Entry>> {
        let name = name_of(&stamp);
        let file = if self.persist {
            let part = format!("{name}.part");
            let _ = rustix::fs::unlinkat(&self.dir, part.as_str(), AtFlags::empty());
            rustix::fs::openat(
                &self.dir,
                part.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )
        } else {
            rustix::fs::openat(
                &self.dir,
                ".",
                OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )
        }
        .map_err(io_err)?;
        rustix::fs::ftruncate(&file, stamp.2).map_err(io_err)?;
        let e = Arc::new(self.entry(stamp, name, file, slabs, false)?);
        let st = self.state.lock();
        // The open that admitted it was counted on the clock already (`note_open`).
        e.last_use.store(st.tick, Ordering::Relaxed);
        e.uses.store(1, Ordering::Relaxed);
        let mut st = st;
        st.entries.insert(stamp, e.clone());
        Ok(e)
    }

    /// Marks an entry complete and gives its file its final name (adoptable after a restart).
    pub fn finish(&self, e: &Entry) {
        if self.persist {
            let part = format!("{}.part", e.name);
            if let Err(err) =
                rustix::fs::renameat(&self.dir, part.as_str(), &self.dir, e.name.as_str())
            {
                tracing::warn!("store: could not name {}: {}", e.name, io_err(err));
            }
        }
        e.complete.store(true, Ordering::Release);
    }

    /// Drops an entry nobody else holds: the least recently used one, among those opened at most
    /// `max_uses` times; one opened more than once only if it has not been opened for more than
    /// `reused_idle_over` ticks. Returns the slabs it held. Engine thread only.
    ///
    /// Why the idle bound: files read again and again in a loop larger than the store would
    /// otherwise push each other out in turn (LRU on a loop misses every time); a newcomer may only
    /// push out a reused file that has gone unused for longer than the newcomer's own reuse
    /// distance, so a loop keeps a stable subset stored and the rest goes through the arena.
    pub fn evict_one(&self, max_uses: u64, reused_idle_over: u64) -> Option<u32> {
        let mut st = self.state.lock();
        let now = st.tick;
        let stamp = st
            .entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(e) == 1 && e.uses() <= max_uses)
            .filter(|(_, e)| {
                e.uses() <= 1
                    || now.saturating_sub(e.last_use.load(Ordering::Relaxed)) > reused_idle_over
            })
            .min_by_key(|(_, e)| e.last_use.load(Ordering::Relaxed))
            .map(|(s, _)| *s)?;
        let e = st.entries.remove(&stamp)?;
        // Its last open, should it come back (its reuse distance then).
        let last = e.last_use.load(Ordering::Relaxed);
        if st.seen.len() < SEEN_LIMIT {
            st.seen.insert(stamp, last);
        }
        drop(st);
        self.unlink(&e);
        tracing::debug!("store: evicted {} ({} MiB)", e.name, e.size() >> 20);
        Some(e.slabs)
    }

    /// Drops the entry of `stamp` if nobody else holds it (a version that went stale, or whose
    /// fill broke). Returns the slabs it held.
    pub fn remove_if_idle(&self, stamp: &Stamp) -> Option<u32> {
        let mut st = self.state.lock();
        if st
            .entries
            .get(stamp)
            .is_none_or(|e| Arc::strong_count(e) > 1)
        {
            return None;
        }
        let e = st.entries.remove(stamp)?;
        drop(st);
        self.unlink(&e);
        Some(e.slabs)
    }

    fn unlink(&self, e: &Entry) {
        if self.persist {
            let name = if e.is_complete() {
                e.name.clone()
            } else {
                format!("{}.part", e.name)
            };
            let _ = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty());
        }
    }

    pub fn usage(&self) -> StoreUsage {
        let st = self.state.lock();
        let mut u = StoreUsage::default();
        for e in st.entries.values() {
            u.files += 1;
            u.complete_files += u64::from(e.is_complete());
            u.resident_bytes += e.filled_bytes();
            u.reserved_bytes += u64::from(e.slabs) * self.slab_bytes;
        }
        u
    }

    /// Idle entries that never completed (their fill broke or their source changed) go now.
    pub fn sweep_incomplete(&self) -> u32 {
        let mut st = self.state.lock();
        let dead: Vec<Stamp> = st
            .entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(e) == 1 && !e.is_complete())
            .map(|(s, _)| *s)
            .collect();
        let mut slabs = 0;
        for s in dead {
            if let Some(e) = st.entries.remove(&s) {
                self.unlink(&e);
                slabs += e.slabs;
            }
        }
        slabs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_stamps() {
        let s: Stamp = (0x803, 12345, 1 << 30, -5, 1_700_000_000_123_456_789);
        assert_eq!(parse_name(&name_of(&s)), Some(s));
        assert_eq!(parse_name("zz-1-2-3-4"), None);
        assert_eq!(parse_name("1-2-3-4"), None);
        assert_eq!(parse_name("1-2-3-4-5.part"), None);
        assert_eq!(parse_name("1-2-3-4-5-6"), None);
    }
}
