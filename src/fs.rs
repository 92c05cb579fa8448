//! The FUSE front: a read-only mirror of the source tree whose `read` is served from the arena.
//!
//! Why inode numbers come from (st_dev, st_ino): hardlinks must share one cache entry and a replaced
//! file must not inherit the old one's identity; the source's own identity gives both for free.
//!
//! Why every open re-stats the source: the cache is only correct if a rewritten or replaced file is
//! noticed before its first read. Comparing (dev, ino, size, mtime, ctime) on open costs one `stat`
//! per open, never one per read, and a change gives the file a fresh `Source` (fresh cache id), so
//! old chunks become unreachable at once and are purged in the background.
//!
//! The hit path (`read` with every chunk cached) takes a shard read lock per chunk, copies nothing
//! when the request lies in one chunk (the reply's iovec points into the arena) and otherwise copies
//! into a per-thread buffer sized once; it never allocates.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use nitro_ring::Waker;
use parking_lot::{Mutex, RwLock};

use crate::codec::DtypeHint;
use crate::codec::formats::{self, Layout, Parsed};
use crate::engine::{Copied, Msg, Shared, Source, Stamp, errno_of, pread_full};
use crate::index::Key;

/// How the kernel's page cache is used for file data (see README, "Kernel cooperation").
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum CacheMode {
    /// FOPEN_DIRECT_IO: every read comes to the arena; no second copy in the page cache.
    Direct,
    /// FOPEN_KEEP_CACHE: the page cache keeps what was read; repeats never reach the daemon.
    Keep,
}

fn stamp(m: &std::fs::Metadata) -> Stamp {
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    )
}

struct Node {
    path: Mutex<PathBuf>,
    /// The current version: its stamp, its cache id, and its `Source` while some open holds it.
    /// Weak, so a closed file's descriptors are closed; a later open of the unchanged file makes
    /// a new `Source` with the same cache id, and its cached chunks stay valid.
    current: Mutex<Option<(Stamp, u64, std::sync::Weak<Source>)>>,
}

/// Per-open state: the version it opened, and the sequential-stream detector.
struct Handle {
    src: Arc<Source>,
    next_offset: AtomicU64,
    /// Prefetch has been requested up to this chunk (exclusive).
    prefetched_to: AtomicU64,
}

const HANDLE_SHARDS: usize = 16;

type HandleShard = RwLock<HashMap<u64, Arc<Handle>>>;

pub struct Options {
    pub cache_mode: CacheMode,
    pub readahead_bytes: u64,
    pub attr_ttl: Duration,
}

pub struct NitroFs {
    root: PathBuf,
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    waker: Waker,
    opts: Options,
    nodes: RwLock<HashMap<u64, Arc<Node>>>,
    by_identity: Mutex<HashMap<(u64, u64), u64>>,
    next_ino: AtomicU64,
    root_identity: (u64, u64),
    handles: Box<[HandleShard]>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirItem>>>>,
    next_fh: AtomicU64,
    next_file_id: AtomicU64,
    /// Set once the session exists; used to drop the kernel's cached attributes of a changed file.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

struct DirItem {
    name: OsString,
    ino: u64,
    kind: FileType,
}

thread_local! {
    /// Per-worker buffer for replies that span chunks; sized on first use, then reused.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl NitroFs {
    pub fn new(
        root: PathBuf,
        shared: Arc<Shared>,
        tx: Sender<Msg>,
        waker: Waker,
        opts: Options,
        notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    ) -> std::io::Result<NitroFs> {
        let meta = std::fs::metadata(&root)?;
        let root_identity = (meta.dev(), meta.ino());
        let mut nodes = HashMap::new();
        nodes.insert(
            INodeNo::ROOT.0,
            Arc::new(Node {
                path: Mutex::new(root.clone()),
                current: Mutex::new(None),
            }),
        );
        let mut by_identity = HashMap::new();
        by_identity.insert(root_identity, INodeNo::ROOT.0);
        Ok(NitroFs {
            root,
            shared,
            tx,
            waker,
            opts,
            nodes: RwLock::new(nodes),
            by_identity: Mutex::new(by_identity),
            next_ino: AtomicU64::new(2),
            root_identity,
            handles: (0..HANDLE_SHARDS)
                .map(|_| RwLock::new(HashMap::new()))
                .collect(),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            next_file_id: AtomicU64::new(1),
            notifier,
        })
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<Node>, Errno> {
        self.nodes.read().get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        Ok(self.node(ino)?.path.lock().clone())
    }

    /// The fuse inode for a source object, created on first sight; the path is refreshed so a
    /// renamed or hardlinked object stays reachable.
    fn ino_for(&self, meta: &std::fs::Metadata, path: &Path) -> u64 {
        let identity = (meta.dev(), meta.ino());
        if identity == self.root_identity {
            return INodeNo::ROOT.0;
        }
        let mut ids = self.by_identity.lock();
        if let Some(&ino) = ids.get(&identity) {
            if let Some(node) = self.nodes.read().get(&ino) {
                let mut p = node.path.lock();
                if p.as_path() != path {
                    *p = path.to_path_buf();
                }
            }
            return ino;
        }
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        ids.insert(identity, ino);
        self.nodes.write().insert(
            ino,
            Arc::new(Node {
                path: Mutex::new(path.to_path_buf()),
                current: Mutex::new(None),
            }),
        );
        ino
    }

    fn attr(&self, ino: u64, m: &std::fs::Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of(m.file_type()),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        self.handles[fh.0 as usize % HANDLE_SHARDS]
            .read()
            .get(&fh.0)
            .cloned()
    }

    /// The `Source` for the file's current version: reused when the stamp is unchanged, else opened
    /// afresh (and the old version's chunks purged). Returns whether the version changed.
    fn source_for(&self, ino: INodeNo) -> Result<(Arc<Source>, bool), Errno> {
        let node = self.node(ino)?;
        let path = node.path.lock().clone();
        let meta = std::fs::metadata(&path).map_err(|e| errno_of(&e))?;
        if !meta.is_file() {
            return Err(Errno::EISDIR);
        }
        let now = stamp(&meta);
        let mut current = node.current.lock();
        let same = current.as_ref().filter(|(s, _, _)| *s == now);
        if let Some((_, _, weak)) = same
            && let Some(src) = weak.upgrade()
        {
            return Ok((src, false));
        }
        let reuse_id = same.map(|(_, id, _)| *id);
        let fd = open_source(&path, false).map_err(|e| errno_of(&e))?;
        let direct_fd = open_source(&path, true).ok();
        let (layout, default_hint) = read_layout(&fd, &path, meta.size());
        let name: Arc<str> = path
            .file_name()
            .map(|n| n.to_string_lossy().into())
            .unwrap_or_else(|| "?".into());
        let src = Arc::new(Source {
            file_id: reuse_id.unwrap_or_else(|| self.next_file_id.fetch_add(1, Ordering::Relaxed)),
            fd,
            direct_fd,
            size: meta.size(),
            name,
            fuse_ino: ino.0,
            layout,
            default_hint,
            compressed_logical_bytes: AtomicU64::new(0),
            compressed_stored_bytes: AtomicU64::new(0),
            compression_logged: std::sync::atomic::AtomicBool::new(false),
            stamp: now,
            stale: std::sync::atomic::AtomicBool::new(false),
        });
        let old = current.replace((now, src.file_id, Arc::downgrade(&src)));
        let changed = match old {
            Some((_, old_id, _)) if old_id != src.file_id => {
                self.shared
                    .stats
                    .invalidations
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!("INVALIDATE {} (source changed)", src.name);
                self.send(Msg::Purge { file_id: old_id });
                true
            }
            Some(_) => false,
            None => {
                tracing::info!("OPEN {} ({} MiB)", src.name, src.size >> 20);
                false
            }
        };
        Ok((src, changed))
    }

    fn send(&self, msg: Msg) {
        if self.tx.send(msg).is_ok() {
            self.waker.wake();
        }
    }

    fn list_dir(&self, ino: INodeNo) -> Result<Vec<DirItem>, Errno> {
        let path = self.path_of(ino)?;
        let mut items = vec![
            DirItem {
                name: ".".into(),
                ino: ino.0,
                kind: FileType::Directory,
            },
            DirItem {
                name: "..".into(),
                ino: INodeNo::ROOT.0,
                kind: FileType::Directory,
            },
        ];
        for entry in std::fs::read_dir(&path).map_err(|e| errno_of(&e))? {
            let entry = entry.map_err(|e| errno_of(&e))?;
            let child = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&child) else {
                continue; // vanished between readdir and stat
            };
            debug_assert_eq!(meta.ino(), entry.ino());
            items.push(DirItem {
                name: entry.file_name(),
                ino: self.ino_for(&meta, &child),
                kind: kind_of(meta.file_type()),
            });
        }
        Ok(items)
    }

    /// Hands a read the arena cannot serve to the ring thread, which replies when the bytes land.
    fn miss(&self, src: &Arc<Source>, fh: u64, offset: u64, size: u32, reply: ReplyData) {
        self.shared.stats.misses.fetch_add(1, Ordering::Relaxed);
        self.send(Msg::Read {
            src: src.clone(),
            fh,
            offset,
            size,
            reply,
        });
    }

    /// Requests fills ahead of a sequential reader, once per chunk boundary it crosses.
    fn maybe_prefetch(&self, h: &Handle, fh: u64, offset: u64, end: u64) {
        if self.opts.readahead_bytes == 0 {
            return;
        }
        let sequential = h.next_offset.swap(end, Ordering::Relaxed) == offset;
        if !sequential || offset == 0 {
            return;
        }
        let chunk_bytes = self.shared.chunk_bytes;
        let from = end.div_ceil(chunk_bytes);
        let to = (end + self.opts.readahead_bytes).div_ceil(chunk_bytes);
        let done = h.prefetched_to.load(Ordering::Relaxed);
        if to > done && to > from {
            h.prefetched_to.store(to, Ordering::Relaxed);
            self.send(Msg::Prefetch {
                src: h.src.clone(),
                fh,
                first: from.max(done),
                last: to - 1,
            });
        }
    }
}

fn time(secs: i64, nsec: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn kind_of(t: std::fs::FileType) -> FileType {
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

fn open_source(path: &Path, direct: bool) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOATIME;
    if direct {
        flags |= libc::O_DIRECT;
    }
    // SAFETY: `c` is a valid NUL-terminated path; the result is checked.
    let mut fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        // O_NOATIME needs ownership of the file; retry without it.
        // SAFETY: as above.
        fd = unsafe { libc::open(c.as_ptr(), flags & !libc::O_NOATIME) };
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads a weight file's header (safetensors, GGUF) so the compressor knows each tensor's dtype.
/// Costs one or two small reads per new file version; any failure just means "no layout".
fn read_layout(fd: &OwnedFd, path: &Path, size: u64) -> (Option<Layout>, DtypeHint) {
    const MAX_HEADER_BYTES: usize = 64 << 20;
    let mut want = 64 * 1024usize;
    let mut head = Vec::new();
    let mut layout = None;
    for _ in 0..8 {
        let len = want.min(size as usize).min(MAX_HEADER_BYTES);
        head.resize(len, 0);
        let Ok(n) = pread_full(fd, &mut head, 0) else {
            break;
        };
        head.truncate(n);
        match Layout::parse(&head, size) {
            Ok(Some(Parsed::Layout(l))) => {
                layout = Some(l);
                break;
            }
            Ok(Some(Parsed::NeedMore(more))) if more > head.len() && more <= MAX_HEADER_BYTES => {
                want = more;
            }
            _ => break,
        }
    }
    let default_hint = if layout.is_some() {
        DtypeHint::Unknown
    } else if formats::hint_from_name(path) == Some(DtypeHint::Text) || formats::sniff_text(&head) {
        DtypeHint::Text
    } else {
        DtypeHint::Unknown
    };
    (layout, default_hint)
}

fn xattr_reply(result: std::io::Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match result {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(Errno::ERANGE),
        Err(e) => reply.error(errno_of(&e)),
    }
}

/// l{get,list}xattr into a Vec, sized by a first call.
fn read_xattr(path: &Path, name: Option<&OsStr>) -> std::io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = match name {
        Some(n) => Some(CString::new(n.as_bytes())?),
        None => None,
    };
    let call = |buf: *mut libc::c_void, len: usize| -> isize {
        // SAFETY: valid C strings; `buf` is null with len 0 or points to `len` writable bytes.
        unsafe {
            match &n {
                Some(n) => libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf, len),
                None => libc::llistxattr(p.as_ptr(), buf.cast(), len),
            }
        }
    };
    loop {
        let want = call(std::ptr::null_mut(), 0);
        if want < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut v = vec![0u8; want as usize];
        let got = call(v.as_mut_ptr().cast(), v.len());
        if got >= 0 {
            v.truncate(got as usize);
            return Ok(v);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

impl Filesystem for NitroFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        // Keep mode: refresh attributes on reads and drop pages whose mtime/size changed.
        let wanted = if self.opts.cache_mode == CacheMode::Keep {
            wanted | InitFlags::FUSE_AUTO_INVAL_DATA
        } else {
            wanted
        };
        let supported = config.capabilities() & wanted;
        let _ = config.add_capabilities(supported);
        if !supported.contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            && self.opts.cache_mode == CacheMode::Direct
        {
            tracing::warn!(
                "kernel lacks FUSE_DIRECT_IO_ALLOW_MMAP: mmap of files will fail in direct mode"
            );
        }
        // One request never needs more than the chunk, so a hit is a single arena slice.
        let request = (self.shared.max_request_bytes as u32).max(4096);
        let _ = config.set_max_write(request);
        if let Err(max) = config.set_max_readahead(request) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = match self.path_of(parent) {
            Ok(p) => p.join(name),
            Err(e) => return reply.error(e),
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                let ino = self.ino_for(&meta, &path);
                reply.entry(&self.opts.attr_ttl, &self.attr(ino, &meta), Generation(0));
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => reply.attr(&self.opts.attr_ttl, &self.attr(ino.0, &meta)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.path_of(ino).map(std::fs::read_link) {
            Ok(Ok(target)) => reply.data(target.as_os_str().as_bytes()),
            Ok(Err(e)) => reply.error(errno_of(&e)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.shared.dead.load(Ordering::Relaxed) {
            return reply.error(Errno::EIO); // the fill engine died (see `Engine::die`)
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let (src, changed) = match self.source_for(ino) {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles[fh as usize % HANDLE_SHARDS].write().insert(
            fh,
            Arc::new(Handle {
                src,
                next_offset: AtomicU64::new(0),
                prefetched_to: AtomicU64::new(0),
            }),
        );
        if changed && let Some(n) = self.notifier.get() {
            // Attributes only (offset < 0): the kernel takes no page or inode lock for that, so it
            // is safe inside a request. Without it, fstat after this open (llama.cpp's
            // open/fstat/mmap) would report the old size until the attr TTL runs out.
            let _ = n.inval_inode(ino, -1, 0);
        }
        let open_flags = match self.opts.cache_mode {
            CacheMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
            // Without KEEP_CACHE the kernel drops the inode's pages on open: exactly what a changed
            // source needs, and only then.
            CacheMode::Keep if changed => FopenFlags::empty(),
            CacheMode::Keep => FopenFlags::FOPEN_KEEP_CACHE,
        };
        reply.opened(FileHandle(fh), open_flags);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        mut reply: ReplyData,
    ) {
        if self.shared.dead.load(Ordering::Relaxed) {
            return reply.error(Errno::EIO); // the fill engine died (see `Engine::die`)
        }
        let Some(h) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let src = &h.src;
        if offset >= src.size || size == 0 {
            return reply.data(&[]);
        }
        let size = (u64::from(size)).min(src.size - offset) as u32;
        let end = offset + u64::from(size);
        let shared = &*self.shared;
        let first = shared.chunk_of(offset);
        let last = shared.chunk_of(end - 1);
        // Accesses count once per open handle (see `index::Slot::last_toucher`).
        let toucher = fh.0;
        self.maybe_prefetch(&h, fh.0, offset, end);
        if first == last {
            let key = Key {
                file: src.file_id,
                chunk: first,
            };
            if let Some(pin) = shared.index.pin(key, toucher) {
                let view = pin.view();
                let start = (offset - first * shared.chunk_bytes) as usize;
                if view.form == crate::index::Form::Raw {
                    // SAFETY: pinned; the block is published and not written while pinned.
                    let bytes = unsafe { shared.arena.bytes(view.block, view.len) };
                    shared.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return reply.data(&bytes[start..start + size as usize]);
                }
                // Compressed: decoded below, through the same path as spanning reads.
            } else {
                return self.miss(src, fh.0, offset, size, reply);
            }
        } else if last == first + 1 {
            // A request spanning two chunks whose blocks happen to be neighbours in the arena (the
            // usual case: a file's chunks are filled in order into consecutive slabs) is still one
            // slice, so it is replied without a copy: fuser's reply takes a single slice.
            let k0 = Key {
                file: src.file_id,
                chunk: first,
            };
            let k1 = Key {
                file: src.file_id,
                chunk: last,
            };
            if let (Some(p0), Some(p1)) =
                (shared.index.pin(k0, toucher), shared.index.pin(k1, toucher))
            {
                let (v0, v1) = (p0.view(), p1.view());
                let chunk = shared.chunk_bytes;
                if v0.form == crate::index::Form::Raw
                    && v1.form == crate::index::Form::Raw
                    && v0.len as u64 == chunk
                    && v0.block.offset + chunk == v1.block.offset
                {
                    let start = (offset - first * chunk) as usize;
                    // SAFETY: both blocks are pinned, published and adjacent, so the span is
                    // one valid, unwritten range of the arena.
                    let bytes =
                        unsafe { shared.arena.span(v0.block.offset, chunk as usize + v1.len) };
                    shared.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return reply.data(&bytes[start..start + size as usize]);
                }
            }
        }
        // Everything else that is cached (compressed chunks, non-adjacent spans) is copied or
        // decoded into this worker's scratch buffer, sized once.
        {
            let mut pending = Some(reply);
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < size as usize {
                    s.resize(shared.max_request_bytes.max(size as usize), 0);
                }
                let out = &mut s[..size as usize];
                match shared.copy_cached(src, offset, out, toucher) {
                    Copied::Done => {
                        if let Some(reply) = pending.take() {
                            shared.stats.hits.fetch_add(1, Ordering::Relaxed);
                            reply.data(out);
                        }
                    }
                    Copied::Corrupt(key) => {
                        shared.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                        self.send(Msg::DropCorrupt { key });
                    }
                    Copied::Missing => {}
                }
            });
            let Some(r) = pending else { return };
            reply = r;
        }
        self.miss(src, fh.0, offset, size, reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles[fh.0 as usize % HANDLE_SHARDS]
            .write()
            .remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.list_dir(ino) {
            Ok(items) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs.lock().insert(fh, Arc::new(items));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(items) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(item.ino), (i + 1) as u64, item.kind, &item.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(items) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let Ok(dir) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let path = match item.name.as_bytes() {
                b"." => dir.clone(),
                b".." => dir
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| dir.clone()),
                _ => dir.join(&item.name),
            };
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let attr = self.attr(item.ino, &meta);
            if reply.add(
                INodeNo(item.ino),
                (i + 1) as u64,
                &item.name,
                &self.opts.attr_ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let c = match CString::new(self.root.as_os_str().as_bytes()) {
            Ok(c) => c,
            Err(_) => return reply.error(Errno::EINVAL),
        };
        // SAFETY: statvfs writes into an owned, zeroed struct; the path is a valid C string.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return reply.error(errno_of(&std::io::Error::last_os_error()));
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.path_of(ino) {
            Ok(p) => xattr_reply(read_xattr(&p, Some(name)), size, reply),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.path_of(ino) {
            Ok(p) => xattr_reply(read_xattr(&p, None), size, reply),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.path_of(ino).map(std::fs::symlink_metadata) {
            Ok(Ok(_)) => reply.ok(),
            Ok(Err(e)) => reply.error(errno_of(&e)),
            Err(e) => reply.error(e),
        }
    }

    // Everything that would change the tree is refused: this is a read-only mirror.
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }
    fn mknod(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _d: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }
    fn mkdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn unlink(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn rmdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn symlink(&self, _r: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn rename(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
    fn link(&self, _r: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn write(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _d: &[u8],
        _wf: fuser::WriteFlags,
        _f: OpenFlags,
        _l: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
    fn create(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }
    fn setxattr(
        &self,
        _r: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
    fn removexattr(&self, _r: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn fallocate(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _l: u64,
        _m: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
    fn ioctl(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _f: fuser::IoctlFlags,
        _cmd: u32,
        _in: &[u8],
        _out: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }
    fn flush(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _l: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
    fn fsync(&self, _r: &Request, _i: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        reply.ok();
    }
}
