//! Versions: which bytes an open file may be served.
//!
//! A version is one state of one source object, named by its stamp (dev, ino, size, mtime,
//! ctime) and given a cache id. Every open stats the object it holds; an unchanged stamp shares the
//! version (and its cached chunks), a changed one makes a new version, and the old one's chunks are
//! purged. A handle keeps the version it opened for its whole life (see README, "What a held handle
//! sees").
//!
//! Why fresh stamps are not trusted (git's "racy clean" problem): a `write()` moves mtime and ctime
//! when it starts, not when it ends. An open during a long write records the final stamp while the
//! data is still changing, and chunks read then would be served as that version forever. So a
//! version whose mtime or ctime is younger than `RACY_WINDOW` when it is opened is private to that
//! open: later opens do not reuse its chunks, and the first open after the file has been quiet for
//! the window starts a version that is.
//!
//! Why keep mode tracks whose bytes are in the page cache: the kernel keeps one page cache per
//! inode, shared by every open handle. A handle of an old version that reads through the page cache
//! fills it with old bytes, which a later open of the new version would be served. So in keep mode
//! the page cache belongs to one version at a time: an open of another version while handles of
//! the owner are open goes direct (no page cache), and the first open after they closed drops the
//! pages (no FOPEN_KEEP_CACHE) and takes the cache over.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FopenFlags};
use rustix::fs::Statx;

use super::CacheMode;
use super::nodes::Node;
use super::sys::{self, Reopener};
use crate::codec::DtypeHint;
use crate::codec::formats::Layout;
use crate::engine::{Origin, Source, Stamp};

/// A version whose timestamps are younger than this may still be being written.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Per kernel inode (node): what keep mode needs, and the last version opened through it.
#[derive(Default)]
pub struct Versions {
    last: Weak<Source>,
    /// Keep mode: the version whose bytes the kernel's page cache of this inode may hold.
    page_cache_owner: Option<u64>,
    /// Keep mode: open handles that read through the page cache, per version.
    cached_handles: Vec<(u64, u32)>,
    /// The backing file of the open passthrough handles (see `passthrough`).
    pub backing: Option<super::passthrough::Backing>,
    /// Open handles the daemon serves (no passthrough while there are any).
    pub daemon_handles: u32,
}

struct Current {
    stamp: Stamp,
    file_id: u64,
    /// Reusable by later opens (see `RACY_WINDOW`).
    stable: bool,
    source: Weak<Source>,
    compress_logged: Arc<AtomicBool>,
    /// The parsed weight header of this version (safetensors, GGUF), and the default hint.
    header: (Option<Arc<Layout>>, DtypeHint),
    /// The name it was opened by (for the control channel's top list).
    name: Arc<str>,
    /// Made by a set prefetch and not opened since: the next open is its first (not a reuse).
    prefetched: bool,
}

impl Versions {
    /// The last version opened through this node, while an open file holds it.
    pub fn live_source(&self) -> Option<Arc<Source>> {
        self.last.upgrade()
    }
}

/// The current version of every source file opened so far, by (dev, ino). It outlives the nodes:
/// the kernel forgets inodes (memory pressure, `drop_caches`), and a file looked up again must
/// find its cached chunks. A reused inode number cannot inherit them: the whole stamp must match.
pub struct Registry {
    map: parking_lot::Mutex<std::collections::HashMap<(u64, u64), Current>>,
    /// Past this many entries, those of closed files are dropped (their chunks leave by eviction).
    limit: usize,
}

impl Registry {
    /// The weight header already parsed for this stable version, if any (parsed once per version).
    fn known_header(&self, stamp: Stamp) -> Option<(Option<Arc<Layout>>, DtypeHint)> {
        self.map
            .lock()
            .get(&(stamp.0, stamp.1))
            .filter(|c| c.stable && c.stamp == stamp)
            .map(|c| c.header.clone())
    }

    /// The open version with this stamp, if it is stable and some handle still holds it, and
    /// whether this open is its first (it was made by a set prefetch).
    fn shared(&self, stamp: Stamp) -> Option<(Arc<Source>, bool)> {
        let mut map = self.map.lock();
        let src = Self::live(&map, stamp)?;
        Some((src, Self::take_prefetched(&mut map, stamp)))
    }

    fn take_prefetched(
        map: &mut std::collections::HashMap<(u64, u64), Current>,
        stamp: Stamp,
    ) -> bool {
        map.get_mut(&(stamp.0, stamp.1))
            .is_some_and(|c| std::mem::take(&mut c.prefetched))
    }

    fn live(
        map: &std::collections::HashMap<(u64, u64), Current>,
        stamp: Stamp,
    ) -> Option<Arc<Source>> {
        let cur = map.get(&(stamp.0, stamp.1))?;
        if !cur.stable || cur.stamp != stamp {
            return None;
        }
        cur.source
            .upgrade()
            .filter(|s| !s.stale.load(Ordering::Relaxed))
    }

    /// The cache id of the version with this stamp, if one was opened and may be shared (its
    /// chunks are cached under that id).
    pub fn file_id_of(&self, stamp: Stamp) -> Option<u64> {
        let map = self.map.lock();
        let cur = map.get(&(stamp.0, stamp.1))?;
        (cur.stable && cur.stamp == stamp).then_some(cur.file_id)
    }

    /// Every known version: (cache id, stamp, name).
    pub fn list(&self) -> Vec<(u64, Stamp, Arc<str>)> {
        let map = self.map.lock();
        map.values()
            .map(|c| (c.file_id, c.stamp, c.name.clone()))
            .collect()
    }

    pub fn new(limit: usize) -> Registry {
        Registry {
            map: parking_lot::Mutex::new(std::collections::HashMap::new()),
            limit: limit.max(1024),
        }
    }
}

/// The result of opening a file: the version to read, and what the kernel must be told.
pub struct Opened {
    pub src: Arc<Source>,
    /// The attributes of that version, as of the open.
    pub st: Statx,
    /// The object's stamp differs from the last version this node served: its cached attributes
    /// (size!) must be dropped before the open returns.
    pub changed: bool,
    /// This version was opened before (shared with open handles, or unchanged since the last
    /// open): a reuse, which may claim store room from other files.
    pub reused: bool,
    /// Quiet long enough to be shared and kept (see `RACY_WINDOW`).
    pub stable: bool,
}

fn is_stable(st: &Statx, now: SystemTime) -> bool {
    let now_ns = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let newest = sys::ns(&st.stx_mtime).max(sys::ns(&st.stx_ctime));
    let window = RACY_WINDOW.as_nanos() as i64;
    // A timestamp in the future (clock skew, a `touch -d`) is not proof of quiet either.
    now_ns.saturating_sub(newest) >= window
}

/// Everything `open_version` needs from the filesystem.
pub struct Ctx<'a> {
    pub reopener: &'a Reopener,
    pub registry: &'a Registry,
    pub next_file_id: &'a AtomicU64,
    pub fuse_ino: u64,
}

/// The version an open of `node` reads: the current one if unchanged and stable, else a new one.
/// Returns the version and the old cache ids to purge (a superseded version).
pub fn open_version(node: &Node, ctx: &Ctx<'_>) -> Result<(Opened, Vec<u64>), Errno> {
    let errno = |e: std::io::Error| Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO));
    let st = node
        .path_fd()
        .and_then(|fd| sys::statx(fd.as_fd()))
        .map_err(errno)?;
    if let Some((src, first)) = ctx.registry.shared(sys::stamp(&st)) {
        return Ok(share(node, src, st, !first));
    }
    // A new `Source`: open the object for reading (one descriptor, O_DIRECT where the filesystem
    // takes it) and take the stamp of what was opened.
    let (fd, direct) = match node.open_read(ctx.reopener, true) {
        Ok(fd) => (fd, true),
        Err(_) => (node.open_read(ctx.reopener, false).map_err(errno)?, false),
    };
    let st = sys::statx(fd.as_fd()).map_err(errno)?;
    if !sys::is_reg(&st) {
        return Err(Errno::EINVAL);
    }
    let stamp = sys::stamp(&st);
    let stable = is_stable(&st, SystemTime::now());
    // The weight header: parsed once per version. A new version's is read through a buffered
    // descriptor held only for this, with no lock held (it can be a large read).
    let (layout, default_hint) = match ctx.registry.known_header(stamp) {
        Some(h) => h,
        None => {
            let (l, hint) = if direct {
                match node.open_read(ctx.reopener, false) {
                    Ok(b) => super::read_layout(&b, &node.name, st.stx_size),
                    Err(_) => (None, DtypeHint::Unknown),
                }
            } else {
                super::read_layout(&fd, &node.name, st.stx_size)
            };
            (l.map(Arc::new), hint)
        }
    };
    let identity = (stamp.0, stamp.1);
    let mut map = ctx.registry.map.lock();
    // Another open of the same version may have won the race while we read the header.
    if let Some(src) = Registry::live(&map, stamp) {
        let first = Registry::take_prefetched(&mut map, stamp);
        drop(map);
        return Ok(share(node, src, st, !first));
    }
    let same = map.get(&identity).filter(|c| c.stable && c.stamp == stamp);
    let reused = same.is_some_and(|c| !c.prefetched);
    // An unchanged, stable version whose handles all closed keeps its cache id and chunks.
    let (file_id, compress_logged) = match same {
        Some(c) => (c.file_id, c.compress_logged.clone()),
        None => (
            ctx.next_file_id.fetch_add(1, Ordering::Relaxed),
            Arc::new(AtomicBool::new(false)),
        ),
    };
    let src = Arc::new(Source {
        file_id,
        origin: Origin::local(fd, direct),
        size: st.stx_size,
        name: node.name.clone(),
        fuse_ino: ctx.fuse_ino,
        layout: layout.clone(),
        default_hint,
        compressed_logical_bytes: AtomicU64::new(0),
        compressed_stored_bytes: AtomicU64::new(0),
        loop_bytes: AtomicU64::new(0),
        compression_logged: compress_logged.clone(),
        stamp,
        stale: AtomicBool::new(false),
        store: std::sync::OnceLock::new(),
    });
    node.versions.lock().last = Arc::downgrade(&src);
    let mut purge = Vec::new();
    if map.len() >= ctx.registry.limit && !map.contains_key(&identity) {
        // Files no handle holds open are forgotten. Their chunks are not purged one by one (a
        // purge walks the index on the ring thread); unreachable now, they leave by eviction.
        map.retain(|_, c| c.source.strong_count() > 0);
    }
    let old = map.insert(
        identity,
        Current {
            stamp,
            file_id,
            stable,
            source: Arc::downgrade(&src),
            compress_logged,
            header: (layout, default_hint),
            name: node.name.clone(),
            prefetched: false,
        },
    );
    drop(map);
    let changed = match old {
        None => {
            tracing::info!("OPEN {} ({} MiB)", src.name, src.size >> 20);
            false
        }
        Some(o) if o.file_id == file_id => false,
        Some(o) => {
            if o.stamp != stamp {
                tracing::info!("INVALIDATE {} (source changed)", src.name);
            } else {
                tracing::debug!(
                    "new version of {} (changed too recently to share)",
                    src.name
                );
            }
            purge.push(o.file_id);
            o.stamp != stamp
        }
    };
    Ok((
        Opened {
            src,
            st,
            changed,
            reused,
            stable,
        },
        purge,
    ))
}

/// An open that shares a live version: nothing to purge, nothing changed.
fn share(node: &Node, src: Arc<Source>, st: Statx, reused: bool) -> (Opened, Vec<u64>) {
    node.versions.lock().last = Arc::downgrade(&src);
    let opened = Opened {
        src,
        st,
        changed: false,
        reused,
        stable: true,
    };
    (opened, Vec::new())
}

/// How the kernel may cache a new handle of version `file_id` (see the module docs), and whether
/// the handle reads through the page cache (to be counted out again by `release_cached`).
pub fn open_flags(
    versions: &parking_lot::Mutex<Versions>,
    mode: CacheMode,
    file_id: u64,
) -> (FopenFlags, bool) {
    if mode == CacheMode::Direct {
        return (FopenFlags::FOPEN_DIRECT_IO, false);
    }
    let mut v = versions.lock();
    let others_open = v
        .cached_handles
        .iter()
        .any(|&(id, n)| id != file_id && n > 0);
    if others_open {
        return (FopenFlags::FOPEN_DIRECT_IO, false);
    }
    let flags = if v.page_cache_owner == Some(file_id) {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        // Without KEEP_CACHE the kernel drops the inode's pages at this open.
        v.page_cache_owner = Some(file_id);
        FopenFlags::empty()
    };
    match v.cached_handles.iter_mut().find(|(id, _)| *id == file_id) {
        Some((_, n)) => *n += 1,
        None => v.cached_handles.push((file_id, 1)),
    }
    (flags, true)
}

pub fn release_cached(versions: &parking_lot::Mutex<Versions>, file_id: u64) {
    let mut v = versions.lock();
    if let Some(i) = v.cached_handles.iter().position(|(id, _)| *id == file_id) {
        v.cached_handles[i].1 -= 1;
        if v.cached_handles[i].1 == 0 {
            v.cached_handles.swap_remove(i);
        }
    }
}

/// Why a set member got no version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberSkip {
    /// Not a regular file, or it could not be opened.
    Unreadable,
    /// Changed in the last `RACY_WINDOW`: it may still be being written.
    Changing,
    /// A different version than the one the registry knows: its next open sorts that out.
    Changed,
}

/// The version a set prefetch fills for a member the kernel has not opened: the live one if an
/// open holds it, else a new `Source` registered as the open would make it (same cache id for an
/// unchanged version), so the member's first real open shares or finds its cached chunks.
/// `path_fd` is the member's `O_PATH` descriptor (checked by the caller), `want` its stamp then.
pub fn open_member(
    path_fd: std::os::fd::BorrowedFd<'_>,
    name: &Arc<str>,
    want: Stamp,
    ctx: &Ctx<'_>,
) -> Result<Arc<Source>, MemberSkip> {
    let live = Registry::live(&ctx.registry.map.lock(), want);
    if let Some(src) = live {
        return Ok(src);
    }
    let (fd, direct) = match ctx.reopener.open_read(path_fd, true) {
        Ok(fd) => (fd, true),
        Err(_) => (
            ctx.reopener
                .open_read(path_fd, false)
                .map_err(|_| MemberSkip::Unreadable)?,
            false,
        ),
    };
    let st = sys::statx(fd.as_fd()).map_err(|_| MemberSkip::Unreadable)?;
    if !sys::is_reg(&st) || sys::stamp(&st) != want {
        return Err(MemberSkip::Unreadable);
    }
    if !is_stable(&st, SystemTime::now()) {
        return Err(MemberSkip::Changing);
    }
    let (layout, default_hint) = match ctx.registry.known_header(want) {
        Some(h) => h,
        None => {
            let (l, hint) = match ctx.reopener.open_read(path_fd, false) {
                Ok(b) => super::read_layout(&b, name, st.stx_size),
                Err(_) => (None, DtypeHint::Unknown),
            };
            (l.map(Arc::new), hint)
        }
    };
    let mut map = ctx.registry.map.lock();
    if let Some(src) = Registry::live(&map, want) {
        return Ok(src);
    }
    let (file_id, compress_logged, prefetched) = match map.get(&(want.0, want.1)) {
        Some(c) if c.stable && c.stamp == want => {
            (c.file_id, c.compress_logged.clone(), c.prefetched)
        }
        Some(_) => return Err(MemberSkip::Changed),
        None => (
            ctx.next_file_id.fetch_add(1, Ordering::Relaxed),
            Arc::new(AtomicBool::new(false)),
            true,
        ),
    };
    let src = Arc::new(Source {
        file_id,
        origin: Origin::local(fd, direct),
        size: st.stx_size,
        name: name.clone(),
        // No kernel inode yet: nothing of the kernel's is invalidated for a member.
        fuse_ino: 0,
        layout: layout.clone(),
        default_hint,
        compressed_logical_bytes: AtomicU64::new(0),
        compressed_stored_bytes: AtomicU64::new(0),
        loop_bytes: AtomicU64::new(0),
        compression_logged: compress_logged.clone(),
        stamp: want,
        stale: AtomicBool::new(false),
        store: std::sync::OnceLock::new(),
    });
    if map.len() >= ctx.registry.limit && !map.contains_key(&(want.0, want.1)) {
        map.retain(|_, c| c.source.strong_count() > 0);
    }
    map.insert(
        (want.0, want.1),
        Current {
            stamp: want,
            file_id,
            stable: true,
            source: Arc::downgrade(&src),
            compress_logged,
            header: (layout, default_hint),
            name: name.clone(),
            prefetched,
        },
    );
    Ok(src)
}
