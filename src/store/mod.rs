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

use std::collections::{HashMap, VecDeque};
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

pub use entry::{Entry, compresses};
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
    /// Raw and expected compressed-tier bytes opened so far, at each of the last `HISTORY` ticks
    /// (the back is `tick`): reuse distances in bytes, for `Reuse`.
    history: VecDeque<(u64, u64)>,
    /// When versions that are not stored (now) were last opened, by tick: a reused file's reuse
    /// distance, which decides whom it may push out (`evict_one`). Bounded by `SEEN_LIMIT`.
    seen: HashMap<Stamp, u64>,
}

/// Versions whose last open the store remembers at most (cleared when full: forgetting only makes
/// admission more conservative).
const SEEN_LIMIT: usize = 4096;
/// Ticks whose byte totals the store remembers (16 bytes each): a reuse distance longer than this
/// has unknown bytes, taken as too large to fit anywhere.
const HISTORY: usize = 4096;

/// What was opened since a version's previous open, that open included: the loop it is part of,
/// if it is read again and again. Bytes are `u64::MAX` when the store no longer remembers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reuse {
    /// Opens (ticks of the store's clock).
    pub opens: u64,
    /// Their sizes.
    pub bytes: u64,
    /// What they would take in the arena's compressed tier (`Source::expected_stored_bytes`).
    pub packed: u64,
}

impl State {
    /// Counts one open of `bytes` bytes (`packed` compressed) on the clock; returns the new tick.
    fn advance(&mut self, bytes: u64, packed: u64) -> u64 {
        self.tick += 1;
        let (raw, pk) = self.history.back().copied().unwrap_or((0, 0));
        self.history
            .push_back((raw.saturating_add(bytes), pk.saturating_add(packed)));
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.tick
    }

    /// What was opened after tick `prev`, up to now.
    fn since(&self, prev: u64) -> Reuse {
        let opens = self.tick.saturating_sub(prev);
        let back = |ago: u64| {
            usize::try_from(ago)
                .ok()
                .and_then(|ago| self.history.len().checked_sub(ago + 1))
                .and_then(|i| self.history.get(i).copied())
        };
        match (back(0), back(opens)) {
            (Some(now), Some(then)) => Reuse {
                opens,
                bytes: now.0 - then.0,
                packed: now.1 - then.1,
            },
            _ => Reuse {
                opens,
                bytes: u64::MAX,
                packed: u64::MAX,
            },
        }
    }

    /// Takes `stamp`'s entry out, remembering its last open (its reuse distance, should it come
    /// back). The caller checked that nobody else holds it.
    fn remove(&mut self, stamp: &Stamp) -> Option<Arc<Entry>> {
        let e = self.entries.remove(stamp)?;
        if self.seen.len() < SEEN_LIMIT {
            self.seen.insert(*stamp, e.last_use.load(Ordering::Relaxed));
        }
        Some(e)
    }
}

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
                history: VecDeque::new(),
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
                .then(|| self.entry(stamp, name.clone(), file, slabs, stamp.2, true))
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
        packed: u64,
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
            packed: AtomicU64::new(packed),
        })
    }

    /// The entry of a version, if stored (complete or being filled); counts a use, and the open
    /// on the store's clock (`packed`: `Source::expected_stored_bytes`). An open of a version
    /// that is not stored is counted by `note_open` instead.
    pub fn lookup(&self, stamp: &Stamp, packed: u64) -> Option<Arc<Entry>> {
        let mut st = self.state.lock();
        let e = st.entries.get(stamp)?.clone();
        let tick = st.advance(stamp.2, packed);
        e.last_use.store(tick, Ordering::Relaxed);
        e.uses.fetch_add(1, Ordering::Relaxed);
        e.packed.store(packed, Ordering::Relaxed);
        Some(e)
    }

    /// Counts an open of a version that is not stored on the store's clock; returns what was
    /// opened since its previous open (its reuse distance), if the store remembers that open.
    pub fn note_open(&self, stamp: &Stamp, packed: u64) -> Option<Reuse> {
        let mut st = self.state.lock();
        let now = st.advance(stamp.2, packed);
        if st.seen.len() >= SEEN_LIMIT {
            st.seen.clear();
        }
        let prev = st.seen.insert(*stamp, now)?;
        Some(st.since(prev))
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
    pub fn create(&self, stamp: Stamp, slabs: u32, packed: u64) -> io::Result<Arc<Entry>> {
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
        let e = Arc::new(self.entry(stamp, name, file, slabs, packed, false)?);
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
        let e = st.remove(&stamp)?;
        drop(st);
        self.unlink(&e);
        tracing::debug!("store: evicted {} ({} MiB)", e.name, e.size() >> 20);
        Some(e.slabs)
    }

    /// What the entries opened within the last `opens` ticks take raw beyond what they would take
    /// in the compressed tier: the cost of keeping a loop's files stored (`engine::store_fill`).
    pub fn raw_premium(&self, opens: u64) -> u64 {
        let st = self.state.lock();
        let since = st.tick.saturating_sub(opens);
        st.entries
            .values()
            .filter(|e| e.last_use.load(Ordering::Relaxed) > since)
            .map(|e| e.size().saturating_sub(e.packed.load(Ordering::Relaxed)))
            .sum()
    }

    /// Drops idle entries opened within the last `opens` ticks that compress (save at least
    /// `min_saving`), those that save most first, until their savings reach `excess`: the raw
    /// copies that keep a loop from fitting the pool compressed (see `engine::store_fill`).
    /// Returns (files, bytes, slabs) dropped. Engine thread only.
    pub fn evict_compressible(
        &self,
        opens: u64,
        min_saving: f64,
        excess: u64,
    ) -> (usize, u64, u32) {
        let mut st = self.state.lock();
        let since = st.tick.saturating_sub(opens);
        let mut candidates: Vec<(u64, Stamp)> = st
            .entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(e) == 1 && e.compresses(min_saving))
            .filter(|(_, e)| e.last_use.load(Ordering::Relaxed) > since)
            .map(|(s, e)| {
                (
                    e.size().saturating_sub(e.packed.load(Ordering::Relaxed)),
                    *s,
                )
            })
            .collect();
        candidates.sort_by_key(|&(saving, _)| std::cmp::Reverse(saving));
        let mut saved = 0;
        let mut gone = Vec::new();
        for (saving, stamp) in candidates {
            if saved >= excess {
                break;
            }
            if let Some(e) = st.remove(&stamp) {
                saved += saving;
                gone.push(e);
            }
        }
        drop(st);
        let (mut bytes, mut slabs) = (0, 0);
        for e in &gone {
            self.unlink(e);
            bytes += e.size();
            slabs += e.slabs;
        }
        (gone.len(), bytes, slabs)
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

    /// Reuse distances count every open since the previous one, stored or not, in opens, bytes
    /// and expected compressed bytes; the first open of a version has none.
    #[test]
    fn reuse_distances_sum_the_opens_since() {
        let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm");
        let mode = StoreMode::Dir(dir.path().to_path_buf());
        let store = Store::open(&mode, dir.path(), (1, 2), 1 << 20, 1 << 20, 64).expect("store");
        let stamp = |ino: u64, size: u64| (1, ino, size, 0, 0);
        let (a, b, c) = (stamp(1, 10 << 20), stamp(2, 20 << 20), stamp(3, 40 << 20));
        assert_eq!(store.note_open(&a, 7 << 20), None);
        assert_eq!(store.note_open(&b, 20 << 20), None);
        let e = store.create(c, 40, 30 << 20).expect("an entry");
        drop(e);
        // An open of a stored version counts on the clock too; a version not stored is no hit.
        assert!(store.lookup(&c, 30 << 20).is_some());
        assert!(store.lookup(&a, 7 << 20).is_none());
        assert_eq!(
            store.note_open(&a, 7 << 20),
            Some(Reuse {
                opens: 3,
                bytes: 70 << 20,
                packed: 57 << 20
            })
        );
        assert_eq!(
            store.raw_premium(3),
            10 << 20,
            "c, stored raw, takes 10 MiB more"
        );
        assert_eq!(
            store.evict_compressible(3, 0.1, 0),
            (0, 0, 0),
            "nothing in excess"
        );
        let (files, bytes, slabs) = store.evict_compressible(3, 0.1, 1);
        assert_eq!(
            (files, bytes, slabs),
            (1, 40 << 20, 40),
            "c compresses (0.75)"
        );
        assert_eq!(store.raw_premium(3), 0);
    }
}
