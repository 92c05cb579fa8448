//! The FUSE front: a read-only mirror of the source tree whose `read` is served from the arena.
//!
//! Why every source object is reached through a held descriptor (`nodes`, `sys`): the daemon runs
//! as root for other users, so it must act on exactly the object the kernel checked permissions
//! on, never on whatever a path names by the time we use it.
//!
//! Why every open stats the object: the cache is only correct if a rewritten file is noticed
//! before its first read. One `statx` per open, never one per read; a change gives the file a new
//! version (fresh cache id), so old chunks can never be served to a new open (`versions`).
//!
//! The hit path (`read`) lives in `read.rs`; it never allocates.

pub mod catalog;
pub(crate) mod kernel;
mod nodes;
pub(crate) mod passthrough;
pub(crate) mod read;
pub(crate) mod set_members;
pub(crate) mod set_prefetch;
pub mod sys;
pub(crate) mod versions;

pub use kernel::{LOCAL_INIT_FLAGS, negotiate};
pub use versions::RACY_WINDOW;

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
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
use rustix::fs::Statx;

use crate::codec::DtypeHint;
use crate::codec::formats::{self, Layout, Parsed};
use crate::engine::{Msg, Shared, pread_full};
use nodes::{Node, Nodes};
use read::Handle;
use sys::Reopener;

/// How the kernel's page cache is used for file data (see README, "Kernel cooperation").
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum CacheMode {
    /// FOPEN_DIRECT_IO: every read comes to the arena; no second copy in the page cache.
    Direct,
    /// FOPEN_KEEP_CACHE: the page cache keeps what was read; repeats never reach the daemon.
    Keep,
}

const HANDLE_SHARDS: usize = 16;

type HandleShard = RwLock<std::collections::HashMap<u64, Arc<Handle>>>;

pub struct Options {
    pub cache_mode: CacheMode,
    pub readahead_bytes: u64,
    pub attr_ttl: Duration,
    /// Opening a member of a model set prefetches the others (`set_prefetch`).
    pub prefetch_sets: bool,
}

/// A directory listing taken at opendir: (name, source inode, type).
struct DirList {
    ino: u64,
    /// The directory, open while listed: readdirplus looks its entries up below it.
    fd: OwnedFd,
    entries: Vec<(std::ffi::OsString, u64, FileType)>,
    dev: u64,
}

pub struct NitroFs {
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    waker: Waker,
    opts: Options,
    nodes: Arc<Nodes>,
    reopener: Reopener,
    registry: Arc<versions::Registry>,
    handles: Box<[HandleShard]>,
    dirs: Mutex<std::collections::HashMap<u64, Arc<DirList>>>,
    next_fh: AtomicU64,
    next_file_id: Arc<AtomicU64>,
    /// Prefetch of model sets (None: `--prefetch-sets off`).
    sets: Option<set_prefetch::SetPrefetch>,
    /// Set once the session exists; used to drop the kernel's cached attributes of a changed file.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// The kernel took FUSE_PASSTHROUGH and backing files are accepted (see `passthrough`).
    passthrough: std::sync::atomic::AtomicBool,
    /// The read path, with the telemetry of service times and bytes served.
    reader: read::Reader,
}

/// An I/O error as the errno fuser replies with.
fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_i32(crate::engine::errno_of(e))
}

impl NitroFs {
    pub fn new(
        root: &Path,
        shared: Arc<Shared>,
        tx: Sender<Msg>,
        waker: Waker,
        opts: Options,
        notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
        telemetry: Arc<crate::control::telemetry::Telemetry>,
    ) -> std::io::Result<NitroFs> {
        // More versions than slots can never all have chunks cached.
        let registry = Arc::new(versions::Registry::new(
            shared.index.slot_count() as usize * 2,
        ));
        let limit = sys::raise_nofile_limit();
        tracing::debug!("descriptor limit {limit}");
        let nodes = Arc::new(Nodes::new(root)?);
        let next_file_id = Arc::new(AtomicU64::new(1));
        let sets = if opts.prefetch_sets {
            Some(set_prefetch::SetPrefetch::start(set_prefetch::Deps {
                shared: shared.clone(),
                tx: tx.clone(),
                waker: waker.clone(),
                source: set_prefetch::SetSource::Local {
                    nodes: nodes.clone(),
                    registry: registry.clone(),
                    next_file_id: next_file_id.clone(),
                },
            })?)
        } else {
            None
        };
        let reader = read::Reader {
            shared: shared.clone(),
            tx: tx.clone(),
            waker: waker.clone(),
            telemetry,
            readahead_bytes: opts.readahead_bytes,
            max_readahead_bytes: opts.readahead_bytes,
        };
        Ok(NitroFs {
            reader,
            shared,
            tx,
            waker,
            opts,
            nodes,
            reopener: Reopener::new()?,
            registry,
            sets,
            handles: (0..HANDLE_SHARDS)
                .map(|_| RwLock::new(std::collections::HashMap::new()))
                .collect(),
            dirs: Mutex::new(std::collections::HashMap::new()),
            next_fh: AtomicU64::new(1),
            next_file_id,
            notifier,
            passthrough: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// What lets the control channel find files and open versions as an open does.
    pub fn catalog(&self) -> std::io::Result<catalog::Catalog> {
        catalog::Local::catalog(
            self.nodes.clone(),
            self.registry.clone(),
            self.next_file_id.clone(),
        )
    }

    /// What lets another thread tell the kernel about deleted source objects (see `Reaper`).
    pub fn reaper(&self) -> Reaper {
        Reaper {
            nodes: self.nodes.clone(),
        }
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<Node>, Errno> {
        self.nodes.get(ino).ok_or(Errno::ENOENT)
    }

    /// The attributes of a source object, under mount inode `ino`.
    fn attr(&self, ino: u64, st: &Statx) -> FileAttr {
        let mode = u32::from(st.stx_mode);
        FileAttr {
            ino: INodeNo(ino),
            size: st.stx_size,
            blocks: st.stx_blocks,
            atime: time(&st.stx_atime),
            mtime: time(&st.stx_mtime),
            ctime: time(&st.stx_ctime),
            crtime: UNIX_EPOCH,
            kind: kind_of_mode(mode),
            perm: (mode & 0o7777) as u16,
            nlink: st.stx_nlink,
            uid: st.stx_uid,
            gid: st.stx_gid,
            rdev: (st.stx_rdev_major << 8) | (st.stx_rdev_minor & 0xff),
            blksize: st.stx_blksize,
            flags: 0,
        }
    }

    /// How long the kernel may trust a name (an entry). Directories: `attr_ttl`. Files and
    /// symlinks: not at all, so every open looks the name up again and a file replaced by rename
    /// is seen at the next open (close-to-open), not up to a TTL later; the lookup is one `openat`
    /// + `statx` here.
    fn ttl(&self, st: &Statx) -> Duration {
        if u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR {
            self.opts.attr_ttl
        } else {
            Duration::ZERO
        }
    }

    /// Binds an opened version to its store file, or asks the engine to make one.
    fn attach_store(&self, opened: &versions::Opened) {
        let Some(store) = self.shared.store.as_ref() else {
            return;
        };
        let src = &opened.src;
        if src.store.get().is_some() || !opened.stable || src.size < store.min_bytes() {
            return;
        }
        match store.lookup(&src.stamp, src.expected_stored_bytes()) {
            Some(e) => {
                let _ = src.store.set(e);
            }
            None => self.send(Msg::Store {
                src: src.clone(),
                reused: opened.reused,
            }),
        }
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        self.handles[fh.0 as usize % HANDLE_SHARDS]
            .read()
            .get(&fh.0)
            .cloned()
    }

    fn send(&self, msg: Msg) {
        if self.tx.send(msg).is_ok() {
            self.waker.wake();
        }
    }

    /// One readdirplus entry: looks the child up (counting a kernel reference) and adds it; the
    /// reference is given back if the reply buffer is full. Returns true when full.
    fn add_plus(&self, list: &DirList, index: usize, reply: &mut ReplyDirectoryPlus) -> bool {
        let (name, _, _) = &list.entries[index];
        let Ok((ino, generation, st)) = self.nodes.lookup_in(list.ino, list.fd.as_fd(), name)
        else {
            return false; // vanished since opendir: skip it
        };
        let full = reply.add(
            INodeNo(ino),
            (index + 3) as u64,
            name,
            &self.ttl(&st),
            &self.attr(ino, &st),
            Generation(generation),
        );
        if full {
            self.nodes.forget(INodeNo(ino), 1);
        }
        full
    }
}

/// Tells the kernel which inodes it remembers were deleted from the source, so it forgets them and
/// their descriptors close: a deleted model file's disk space is freed at the next sweep, not at
/// the next memory pressure.
pub struct Reaper {
    nodes: Arc<Nodes>,
}

impl Reaper {
    /// One sweep (a `statx` per remembered inode); returns how many the kernel was told of.
    pub fn sweep(&self, notifier: &fuser::Notifier) -> usize {
        let mut told = 0;
        for (parent, child, name) in self.nodes.deleted() {
            // Outside any request, so the kernel may take the locks it needs. An error means the
            // kernel no longer has that entry: nothing to do.
            if notifier
                .delete(INodeNo(parent), INodeNo(child), &name)
                .is_ok()
            {
                told += 1;
            }
        }
        told
    }
}

fn time(t: &rustix::fs::StatxTimestamp) -> SystemTime {
    let nsec = t.tv_nsec.min(999_999_999);
    if t.tv_sec >= 0 {
        UNIX_EPOCH + Duration::new(t.tv_sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.tv_sec.unsigned_abs())
            + Duration::from_nanos(nsec.into())
    }
}

fn kind_of_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn kind_of_dirent(t: rustix::fs::FileType) -> FileType {
    use rustix::fs::FileType as T;
    match t {
        T::Directory => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::BlockDevice => FileType::BlockDevice,
        T::CharacterDevice => FileType::CharDevice,
        T::Fifo => FileType::NamedPipe,
        T::Socket => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// Reads a weight file's header (safetensors, GGUF) so the compressor knows each tensor's dtype.
/// Costs one or two small reads per new file version; any failure just means "no layout".
fn read_layout(fd: &OwnedFd, name: &str, size: u64) -> (Option<Layout>, DtypeHint) {
    layout_from(|buf, at| pread_full(fd, buf, at), name, size)
}

/// `read_layout` over any reader of the version's bytes (`read_at(buf, offset)`: bytes read).
pub(crate) fn layout_from(
    mut read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<usize>,
    name: &str,
    size: u64,
) -> (Option<Layout>, DtypeHint) {
    const MAX_HEADER_BYTES: usize = 64 << 20;
    let mut want = 64 * 1024usize;
    let mut head = Vec::new();
    let mut layout = None;
    for _ in 0..8 {
        let len = want.min(size as usize).min(MAX_HEADER_BYTES);
        head.resize(len, 0);
        let Ok(n) = read_at(&mut head, 0) else {
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
    } else if formats::hint_from_name(Path::new(name)) == Some(DtypeHint::Text)
        || formats::sniff_text(&head)
    {
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

impl Filesystem for NitroFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = kernel::LOCAL_INIT_FLAGS;
        // No FUSE_AUTO_INVAL_DATA in keep mode: it would drop pages a held handle of an older
        // version still reads; `versions` decides at each open whose bytes the page cache holds.
        if !config
            .capabilities()
            .contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            && self.opts.cache_mode == CacheMode::Direct
        {
            tracing::warn!(
                "kernel lacks FUSE_DIRECT_IO_ALLOW_MMAP: mmap of files will fail in direct mode"
            );
        }
        let passthrough = kernel::init(config, &self.shared, wanted);
        self.passthrough.store(passthrough, Ordering::Relaxed);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent_node = match self.node(parent) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.nodes.lookup(parent.0, &parent_node, name) {
            Ok((ino, generation, st)) => {
                // Attributes may be kept for `attr_ttl` (a version change at open drops them),
                // but a file's name is looked up again at every path walk.
                reply.entry_with_ttls(
                    &self.opts.attr_ttl,
                    &self.ttl(&st),
                    &self.attr(ino, &st),
                    Generation(generation),
                )
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    // fuser's default `batch_forget` calls this once per inode.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.forget(ino, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // With a handle, the version that handle reads (its size and times as of its open).
        if let Some(h) = fh.and_then(|fh| self.handle(fh)) {
            return reply.attr(&Duration::ZERO, &h.attr);
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match node.path_fd().and_then(|fd| sys::statx(fd.as_fd())) {
            Ok(st) => reply.attr(&self.opts.attr_ttl, &self.attr(ino.0, &st)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .node(ino)
            .map(|n| n.path_fd().and_then(|fd| sys::readlink(fd.as_fd())))
        {
            Ok(Ok(target)) => reply.data(&target),
            Ok(Err(e)) => reply.error(errno_of(&e)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.shared.dead.load(Ordering::Relaxed) {
            return reply.error(Errno::EIO); // the fill engine died (see `Engine::die`)
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let node = match self.node(ino) {
            Ok(n) if n.is_file => n,
            Ok(n) if n.is_dir => return reply.error(Errno::EISDIR),
            Ok(_) => return reply.error(Errno::EINVAL),
            Err(e) => return reply.error(e),
        };
        let ctx = versions::Ctx {
            reopener: &self.reopener,
            registry: &self.registry,
            next_file_id: &self.next_file_id,
            fuse_ino: ino.0,
        };
        let (opened, purge) = match versions::open_version(&node, &ctx) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        for file_id in purge {
            self.shared
                .stats
                .invalidations
                .fetch_add(1, Ordering::Relaxed);
            self.send(Msg::Purge { file_id });
        }
        if opened.changed
            && let Some(n) = self.notifier.get()
        {
            // Attributes only (offset < 0): the kernel takes no page or inode lock for that, so it
            // is safe inside a request. Without it, fstat after this open (llama.cpp's
            // open/fstat/mmap) would report the old size until the attr TTL runs out.
            let _ = n.inval_inode(ino, -1, 0);
        }
        self.attach_store(&opened);
        if let Some(sets) = &self.sets {
            let who = set_members::Opener {
                uid: req.uid(),
                gid: req.gid(),
            };
            sets.opened(&self.nodes, ino.0, &node.name, who, &opened.src);
        }
        let choice = passthrough::choose(&node.versions, &opened.src, &self.passthrough, |e| {
            let store = self
                .shared
                .store
                .as_ref()
                .ok_or(std::io::ErrorKind::NotFound)?;
            reply.open_backing(store.backing_fd(e)?)
        });
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let attr = self.attr(ino.0, &opened.st);
        let (route, open_flags, cached) = match &choice {
            passthrough::Choice::Busy => {
                tracing::warn!(
                    "OPEN {} refused: passthrough handles of an older version are still open",
                    node.name
                );
                return reply.error(Errno::EBUSY);
            }
            passthrough::Choice::Passthrough(_) => {
                self.shared
                    .stats
                    .passthrough_opens
                    .fetch_add(1, Ordering::Relaxed);
                (passthrough::Route::Passthrough, FopenFlags::empty(), false)
            }
            passthrough::Choice::Daemon => {
                let (flags, cached) =
                    versions::open_flags(&node.versions, self.opts.cache_mode, opened.src.file_id);
                (passthrough::Route::Daemon, flags, cached)
            }
        };
        let handle = Handle::new(opened.src, node, attr, cached, route);
        self.handles[fh as usize % HANDLE_SHARDS]
            .write()
            .insert(fh, Arc::new(handle));
        match choice {
            passthrough::Choice::Passthrough(id) => {
                reply.opened_passthrough(FileHandle(fh), open_flags, &id)
            }
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
        self.serve_read(fh, offset, size, reply);
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
        let h = self.handles[fh.0 as usize % HANDLE_SHARDS]
            .write()
            .remove(&fh.0);
        if let Some(h) = h {
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
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let listed = node.path_fd().and_then(|fd| {
            let st = sys::statx(fd.as_fd())?;
            let entries = self.reopener.list(fd.as_fd())?;
            let dir = self.reopener.open(
                fd.as_fd(),
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            )?;
            Ok((st, entries, dir))
        });
        match listed {
            Ok((st, entries, dir)) => {
                let list = DirList {
                    ino: ino.0,
                    fd: dir,
                    entries: entries
                        .into_iter()
                        .map(|(n, i, t)| (n, i, kind_of_dirent(t)))
                        .collect(),
                    dev: sys::dev_of(&st),
                };
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs.lock().insert(fh, Arc::new(list));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno_of(&e)),
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
        let Some(list) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let Some(first) = kernel::dots(ino, offset, &mut reply) else {
            return reply.ok();
        };
        for (i, (name, src_ino, kind)) in list.entries.iter().enumerate().skip(first) {
            // No lookup happens here, so no node is made.
            let ino = self.nodes.listed_ino((list.dev, *src_ino));
            if reply.add(INodeNo(ino), (i + 3) as u64, *kind, name) {
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
        let Some(list) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let mut first = offset.saturating_sub(2) as usize;
        if offset < 2 {
            let Ok(st) = sys::statx(list.fd.as_fd()) else {
                return reply.error(Errno::ENOENT);
            };
            let attr = self.attr(ino.0, &st);
            match kernel::dots_plus(ino, offset, &attr, &self.opts.attr_ttl, &mut reply) {
                Some(i) => first = i,
                None => return reply.ok(),
            }
        }
        for i in first..list.entries.len() {
            if self.add_plus(&list, i, &mut reply) {
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

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let node = self
            .nodes
            .get(ino)
            .or_else(|| self.nodes.get(INodeNo::ROOT));
        let Some(node) = node else {
            return reply.error(Errno::ENOENT);
        };
        match node.path_fd().and_then(|fd| sys::statvfs(fd.as_fd())) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                u32::try_from(s.f_bsize).unwrap_or(4096),
                u32::try_from(s.f_namemax).unwrap_or(255),
                u32::try_from(s.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.node(ino) {
            Ok(n) if n.is_file || n.is_dir => {
                let v = n
                    .path_fd()
                    .and_then(|fd| sys::xattr(fd.as_fd(), Some(name)));
                xattr_reply(v, size, reply)
            }
            Ok(_) => reply.error(Errno::NO_XATTR),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.node(ino) {
            Ok(n) if n.is_file || n.is_dir => {
                let v = n.path_fd().and_then(|fd| sys::xattr(fd.as_fd(), None));
                xattr_reply(v, size, reply)
            }
            Ok(_) => xattr_reply(Ok(Vec::new()), size, reply),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions); this only answers for
        // writes and for objects that are gone.
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.node(ino) {
            Ok(_) => reply.ok(),
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
