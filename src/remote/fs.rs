//! The FUSE front of a remote source: the bucket's tree, opens that revalidate with HEAD, and the
//! local source's read path, store and passthrough.
//!
//! Why open sends a HEAD: close-to-open consistency — an object overwritten in the bucket is read
//! as its new version by the next open, as a rewritten local file is. Why an open falls back to the
//! version it knew when the endpoint does not answer: the bytes in RAM are still that version's
//! (every GET carried its ETag), so cached objects keep being served while the network is down,
//! and only reads that need the network fail.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, InitFlags,
    KernelConfig, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use nitro_ring::Waker;
use parking_lot::Mutex;

use super::tree::{Entry, Inode, Kind, Listing, Tree};
use super::{Client, Object};
use crate::codec::DtypeHint;
use crate::codec::formats::Layout;
use crate::engine::{Msg, Origin, Shared, Source};
use crate::fuse::passthrough::{self, Choice, Route};
use crate::fuse::read::{Reader, Stream};
use crate::fuse::{CacheMode, versions};
use object_store::ObjectStore;

use crate::fuse::kernel::{self, GENERATION};

/// Versions remembered after their handles close, at most (then those no handle holds go).
const REGISTRY_LIMIT: usize = 65_536;

/// What the mount line asked of the front.
pub struct Options {
    pub cache_mode: CacheMode,
    pub readahead_bytes: u64,
    pub max_readahead_bytes: u64,
    /// Opening a member of a model set prefetches the others (`fuse/set_prefetch.rs`).
    pub prefetch_sets: bool,
}

/// The version of a key last opened, kept after its handles close so that reopening an unchanged
/// object finds its cached chunks (same cache id) and its parsed header.
struct Current {
    object: Object,
    file_id: u64,
    source: std::sync::Weak<Source>,
    header: (Option<Arc<Layout>>, DtypeHint),
    compress_logged: Arc<AtomicBool>,
    /// Made by a set prefetch and not opened since: the next open is its first, not a reuse.
    prefetched: bool,
}

struct Handle {
    src: Arc<Source>,
    node: Arc<Inode>,
    attr: FileAttr,
    cached: bool,
    route: Route,
    stream: Stream,
}

/// What the FUSE front and the control channel's catalog share: the bucket, its tree, and the
/// versions opened so far.
pub struct Core {
    pub(super) client: Arc<Client>,
    pub(super) tree: Tree,
    pub(super) shared: Arc<Shared>,
    pub(super) reader: Reader,
    registry: Mutex<std::collections::HashMap<String, Current>>,
    next_file_id: AtomicU64,
}

pub struct RemoteFs {
    core: Arc<Core>,
    client: Arc<Client>,
    shared: Arc<Shared>,
    opts: Options,
    handles: parking_lot::RwLock<std::collections::HashMap<u64, Arc<Handle>>>,
    /// Open directories: (path, the listing taken at opendir).
    dirs: Mutex<std::collections::HashMap<u64, (String, Listing)>>,
    next_fh: AtomicU64,
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Prefetch of model sets (None: `--prefetch-sets off`).
    sets: Option<crate::fuse::set_prefetch::SetPrefetch>,
    passthrough: AtomicBool,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

impl RemoteFs {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Arc<Client>,
        shared: Arc<Shared>,
        tx: Sender<Msg>,
        waker: Waker,
        opts: Options,
        notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
        telemetry: Arc<crate::control::telemetry::Telemetry>,
    ) -> std::io::Result<RemoteFs> {
        use crate::fuse::set_prefetch::{Deps, SetPrefetch, SetSource};
        let set_deps = opts
            .prefetch_sets
            .then(|| (shared.clone(), tx.clone(), waker.clone()));
        // The prefetch window is capped at the parts that can be fetched at once. Wider, it only queues
        // fills behind `--s3-concurrency`; and once the engine's fills are all taken, the far end
        // of a prefetch is dropped for good (the stream counts it as requested), so the reader
        // later misses there, each miss a GET queued behind the whole window: a cold read through
        // the arena ran at a third of the GETs' speed (`nitro-uring bench --only s3`).
        let fills = super::max_fills(&client.opts, shared.chunk_bytes) as u64 / 2;
        let parts = client.opts.concurrency.max(1) as u64 * client.opts.part_bytes as u64;
        let cap = parts.min(fills * shared.chunk_bytes);
        let readahead_bytes = opts.readahead_bytes.min(cap);
        let reader = Reader {
            shared: shared.clone(),
            tx,
            waker,
            telemetry,
            readahead_bytes,
            max_readahead_bytes: opts.max_readahead_bytes.min(cap).max(readahead_bytes),
        };
        let core = Arc::new(Core {
            client: client.clone(),
            tree: Tree::new(),
            shared: shared.clone(),
            reader,
            registry: Mutex::new(std::collections::HashMap::new()),
            next_file_id: AtomicU64::new(1),
        });
        let sets = match set_deps {
            Some((shared, tx, waker)) => Some(SetPrefetch::start(Deps {
                shared,
                tx,
                waker,
                source: SetSource::Remote(core.clone()),
            })?),
            None => None,
        };
        Ok(RemoteFs {
            sets,
            core,
            client,
            shared,
            opts,
            handles: parking_lot::RwLock::new(std::collections::HashMap::new()),
            dirs: Mutex::new(std::collections::HashMap::new()),
            next_fh: AtomicU64::new(1),
            notifier,
            passthrough: AtomicBool::new(false),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            mounted_at: SystemTime::now(),
        })
    }

    /// What lets the control channel find objects and open versions as an open does.
    pub fn catalog(&self) -> crate::fuse::catalog::Catalog {
        crate::fuse::catalog::Catalog::Remote(self.core.clone())
    }

    fn attr(&self, node: &Inode) -> FileAttr {
        let (size, mtime) = match &*node.object.lock() {
            Some(o) => (o.size, time_of(o.mtime_ns)),
            // A prefix has no time of its own: the mount's.
            None => (0, self.mounted_at),
        };
        let dir = node.kind == Kind::Dir;
        FileAttr {
            ino: INodeNo(node.ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn ttl(&self) -> Duration {
        self.client.opts.list_ttl
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<Inode>, Errno> {
        self.core.tree.get(ino.0).ok_or(Errno::ENOENT)
    }

    fn add_plus(
        &self,
        rel: &str,
        entries: &[Entry],
        i: usize,
        reply: &mut ReplyDirectoryPlus,
    ) -> bool {
        let node = self.core.tree.node_for(rel, &entries[i], 1);
        let full = reply.add(
            INodeNo(node.ino),
            (i + 3) as u64,
            &entries[i].name,
            &self.ttl(),
            &self.attr(&node),
            GENERATION,
        );
        if full {
            self.core.tree.forget(node.ino, 1);
        }
        full
    }
}

impl Core {
    /// Marks the current version of `rel` as made by a set prefetch (see `Current::prefetched`).
    pub(super) fn mark_prefetched(&self, rel: &str, file_id: u64) {
        if let Some(c) = self.registry.lock().get_mut(rel)
            && c.file_id == file_id
            && c.source.strong_count() <= 1
        {
            c.prefetched = true;
        }
    }

    /// Every version opened so far: (cache id, stamp, path).
    pub(super) fn known(&self) -> Vec<(u64, crate::engine::Stamp, Arc<str>)> {
        self.registry
            .lock()
            .iter()
            .map(|(rel, c)| {
                (
                    c.file_id,
                    c.object.stamp(self.client.id.0),
                    rel.as_str().into(),
                )
            })
            .collect()
    }

    /// The version an open reads: HEAD now; the last known one when the endpoint does not answer.
    pub(super) fn current_object(&self, rel: &str) -> Result<Object, Errno> {
        let key = self.client.file_key(rel);
        match self.client.head(&key) {
            Ok(o) => Ok(o),
            Err(object_store::Error::NotFound { .. }) => {
                if let Some((parent, _)) = rel.rsplit_once('/') {
                    self.tree.drop_listing(parent);
                } else {
                    self.tree.drop_listing("");
                }
                Err(Errno::ENOENT)
            }
            Err(e) => {
                let known = self.registry.lock().get(rel).map(|c| c.object.clone());
                match known {
                    Some(o) => {
                        tracing::warn!(
                            "HEAD {} failed ({}); serving the version cached here",
                            rel,
                            super::short(&e.to_string())
                        );
                        Ok(o)
                    }
                    None => {
                        tracing::warn!("HEAD {}: {}", rel, super::short(&e.to_string()));
                        Err(Errno::EIO)
                    }
                }
            }
        }
    }

    /// The header of a version, unless the store holds it whole from an earlier run: then it is
    /// served by passthrough and never compressed, and a restart costs no GET at all.
    fn header_for(&self, object: &Object, name: &str) -> (Option<Arc<Layout>>, DtypeHint) {
        let stamp = object.stamp(self.client.id.0);
        let stored = self
            .shared
            .store
            .as_ref()
            .and_then(|s| s.peek(&stamp))
            .is_some_and(|e| e.is_complete());
        if stored {
            (None, DtypeHint::Unknown)
        } else {
            self.header_of(object, name)
        }
    }

    /// The weight header of a new version (one or two small GETs), for the compressor's hints.
    pub(super) fn header_of(
        &self,
        object: &Object,
        name: &str,
    ) -> (Option<Arc<Layout>>, DtypeHint) {
        let client = &self.client;
        let read_at = |buf: &mut [u8], at: u64| -> std::io::Result<usize> {
            if buf.is_empty() || at >= object.size {
                return Ok(0);
            }
            let end = (at + buf.len() as u64).min(object.size);
            let opts = object_store::GetOptions {
                range: Some(object_store::GetRange::Bounded(at..end)),
                if_match: object.etag.clone(),
                ..Default::default()
            };
            let bytes = client
                .block_on(async {
                    let r = client.store.get_opts(&object.key, opts).await?;
                    let same = object.same_version(&r.meta);
                    r.bytes().await.map(|b| (same, b))
                })
                .ok()
                .and_then(|(same, b)| same.then_some(b))
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EIO))?;
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            Ok(n)
        };
        let (l, hint) = crate::fuse::layout_from(read_at, name, object.size);
        (l.map(Arc::new), hint)
    }

    /// The `Source` of `object` (at `rel`) for an open: the live one if some handle holds it,
    /// else a new one (same cache id if the version is unchanged). Also whether it was opened
    /// before (a reuse) and whether the object changed since the last open. `node`: the kernel's
    /// inode that opened it (None: the control channel).
    pub(super) fn version(
        &self,
        rel: &str,
        node: Option<&Inode>,
        object: Object,
    ) -> (Arc<Source>, bool, bool) {
        let name: Arc<str> = rel.rsplit('/').next().unwrap_or(rel).into();
        let known = self.registry.lock().get_mut(rel).and_then(|c| {
            (c.object == object).then(|| {
                // The first real open of a set-prefetched version is not a reuse.
                let first = node.is_some() && std::mem::take(&mut c.prefetched);
                (
                    c.source.upgrade(),
                    c.file_id,
                    c.header.clone(),
                    c.compress_logged.clone(),
                    first,
                )
            })
        });
        if let Some((Some(src), .., first)) = &known {
            return (src.clone(), !first, false);
        }
        let (file_id, header, logged, reused) = match known {
            Some((_, id, header, logged, first)) => (id, header, logged, !first),
            None => (
                self.next_file_id.fetch_add(1, Ordering::Relaxed),
                self.header_for(&object, &name),
                Arc::new(AtomicBool::new(false)),
                false,
            ),
        };
        let src = Arc::new(Source {
            file_id,
            origin: Origin::Remote(Arc::new(object.clone())),
            size: object.size,
            name,
            fuse_ino: node.map_or(0, |n| n.ino),
            layout: header.0.clone(),
            default_hint: header.1,
            compressed_logical_bytes: AtomicU64::new(0),
            compressed_stored_bytes: AtomicU64::new(0),
            loop_bytes: AtomicU64::new(0),
            compression_logged: logged.clone(),
            stamp: object.stamp(self.client.id.0),
            stale: AtomicBool::new(false),
            store: std::sync::OnceLock::new(),
        });
        let mut reg = self.registry.lock();
        // Another open may have made the same version meanwhile: share it.
        if let Some(c) = reg.get(rel)
            && c.object == object
            && let Some(live) = c.source.upgrade()
        {
            return (live, true, false);
        }
        if reg.len() >= REGISTRY_LIMIT && !reg.contains_key(rel) {
            // Objects no handle holds are forgotten; their chunks leave by eviction, their store
            // files are still found by stamp.
            reg.retain(|_, c| c.source.strong_count() > 0);
        }
        let old = reg.insert(
            rel.to_string(),
            Current {
                object: object.clone(),
                file_id,
                source: Arc::downgrade(&src),
                header,
                compress_logged: logged,
                prefetched: false,
            },
        );
        drop(reg);
        let changed = match old {
            Some(o) if o.file_id != file_id => {
                tracing::info!("INVALIDATE {rel} (new ETag in the bucket)");
                self.shared
                    .stats
                    .invalidations
                    .fetch_add(1, Ordering::Relaxed);
                // Handles of the old version keep reading what is cached of it (their misses fail
                // with EIO: its GETs ask for the old ETag); the last one to close purges it.
                if o.source.strong_count() == 0 {
                    self.reader.send(Msg::Purge { file_id: o.file_id });
                }
                true
            }
            Some(_) => false,
            None => {
                tracing::info!("OPEN {rel} ({} MiB)", object.size >> 20);
                false
            }
        };
        if let Some(n) = node {
            *n.object.lock() = Some(object);
        }
        (src, reused, changed)
    }

    /// Binds a version to its store file, or asks the engine to fetch it whole into one.
    pub(super) fn attach_store(&self, src: &Arc<Source>, reused: bool) {
        let Some(store) = self.shared.store.as_ref() else {
            return;
        };
        if src.store.get().is_some() || src.size < store.min_bytes() {
            return;
        }
        match store.lookup(&src.stamp, src.expected_stored_bytes()) {
            Some(e) => {
                let _ = src.store.set(e);
            }
            None => self.reader.send(Msg::Store {
                src: src.clone(),
                reused,
            }),
        }
    }
}

impl Filesystem for RemoteFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        let passthrough = kernel::init(config, &self.shared, wanted);
        self.passthrough.store(passthrough, Ordering::Relaxed);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = match self.node(parent) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.core.tree.lookup(&self.client, &parent, name) {
            Ok(n) => reply.entry(&self.ttl(), &self.attr(&n), GENERATION),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.tree.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(h) = fh.and_then(|fh| self.handles.read().get(&fh.0).cloned()) {
            return reply.attr(&Duration::ZERO, &h.attr);
        }
        match self.node(ino) {
            Ok(n) => reply.attr(&self.ttl(), &self.attr(&n)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.shared.dead.load(Ordering::Relaxed) {
            return reply.error(Errno::EIO);
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let node = match self.node(ino) {
            Ok(n) if n.kind == Kind::File => n,
            Ok(_) => return reply.error(Errno::EISDIR),
            Err(e) => return reply.error(e),
        };
        let object = match self.core.current_object(&node.rel) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        let (src, reused, changed) = self.core.version(&node.rel, Some(&node), object);
        if changed && let Some(n) = self.notifier.get() {
            // Attributes only: fstat after this open must see the new size (see `fuse::open`).
            let _ = n.inval_inode(ino, -1, 0);
        }
        self.core.attach_store(&src, reused);
        if let Some(sets) = &self.sets {
            let (dir, name) = node.rel.rsplit_once('/').unwrap_or(("", &node.rel));
            sets.opened_remote(dir, &Arc::from(name), &src);
        }
        let choice = passthrough::choose(&node.versions, &src, &self.passthrough, |e| {
            let store = self
                .shared
                .store
                .as_ref()
                .ok_or(std::io::ErrorKind::NotFound)?;
            reply.open_backing(store.backing_fd(e)?)
        });
        let (route, open_flags, cached) = match &choice {
            Choice::Busy => return reply.error(Errno::EBUSY),
            Choice::Passthrough(_) => {
                self.shared
                    .stats
                    .passthrough_opens
                    .fetch_add(1, Ordering::Relaxed);
                (Route::Passthrough, FopenFlags::empty(), false)
            }
            Choice::Daemon => {
                let (f, cached) =
                    versions::open_flags(&node.versions, self.opts.cache_mode, src.file_id);
                (Route::Daemon, f, cached)
            }
        };
        let mut attr = self.attr(&node);
        attr.size = src.size;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(
            fh,
            Arc::new(Handle {
                src,
                node,
                attr,
                cached,
                route,
                stream: Stream::default(),
            }),
        );
        match choice {
            Choice::Passthrough(id) => reply.opened_passthrough(FileHandle(fh), open_flags, &id),
            _ => reply.opened(FileHandle(fh), open_flags),
        }
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
        reply: ReplyData,
    ) {
        if self.shared.dead.load(Ordering::Relaxed) {
            return reply.error(Errno::EIO);
        }
        let Some(h) = self.handles.read().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        self.core
            .reader
            .serve(&h.src, &h.stream, fh.0, offset, size, reply);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(h) = self.handles.write().remove(&fh.0) {
            let superseded = self
                .core
                .registry
                .lock()
                .get(&h.node.rel)
                .is_none_or(|c| c.file_id != h.src.file_id);
            if superseded && Arc::strong_count(&h.src) == 1 {
                // The last handle of a version the bucket replaced: nothing can read it again.
                self.core.reader.send(Msg::Purge {
                    file_id: h.src.file_id,
                });
            }
            passthrough::release_open(
                &h.node.versions,
                &h.src,
                h.route,
                h.cached,
                self.opts.cache_mode,
                self.notifier.get(),
                ino,
            );
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let node = match self.node(ino) {
            Ok(n) if n.kind == Kind::Dir => n,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        match self.core.tree.list(&self.client, &node.rel) {
            Ok(l) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs.lock().insert(fh, (node.rel.clone(), l));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some((rel, list)) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let Some(first) = kernel::dots(ino, offset, &mut reply) else {
            return reply.ok();
        };
        for (i, e) in list.iter().enumerate().skip(first) {
            let kind = match e.kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            let ino = self.core.tree.listed_ino(&rel, &e.name);
            if reply.add(INodeNo(ino), (i + 3) as u64, kind, &e.name) {
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
        let Some((rel, list)) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let mut first = offset.saturating_sub(2) as usize;
        if offset < 2 {
            let Ok(node) = self.node(ino) else {
                return reply.error(Errno::ENOENT);
            };
            let attr = self.attr(&node);
            match kernel::dots_plus(ino, offset, &attr, &self.ttl(), &mut reply) {
                Some(i) => first = i,
                None => return reply.ok(),
            }
        }
        for i in first..list.len() {
            if self.add_plus(&rel, &list, i, &mut reply) {
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
        // A bucket has no size limit to report: the pool is what this mount holds.
        let blocks = self.shared.arena.usable_bytes() as u64 / 4096;
        reply.statfs(blocks, 0, 0, 0, 0, 4096, 1024, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.node(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
