//! The fill engine: one thread that owns the io_uring, the eviction policy and every allocation in
//! the arena.
//!
//! Why one owner thread: inserts, evictions and frees then need no coordination among themselves;
//! FUSE workers only ever pin and read published blocks (see `index`). A miss costs one channel send
//! and one eventfd write; the worker thread is free again at once and the reply is completed here,
//! from whichever thread the bytes land on, through the request's `ReadReply` (plain bytes or an
//! errno: the engine knows no FUSE type; `fuse::read` adapts fuser's reply to it).
//!
//! Why the request is re-evaluated after every fill instead of being assembled piecewise: a read
//! can span two chunks; keeping the waiter's state as "the request" (not "the bytes gathered so far")
//! means no per-request buffer is needed, and a chunk evicted in between is simply filled again. A
//! request that keeps losing that race (a pool of a few chunks under heavy churn) is served by an
//! uncached read so it always finishes.
//!
//! The contract with the front: a `Msg::Read` is a miss already clamped to the version's size; its
//! `ReadReply` is completed exactly once, on this thread, with the bytes or an errno (EIO for a
//! stale version or a dead engine). `engine_tests.rs` drives this state machine without a mount.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crossbeam_channel::{Receiver, TryRecvError};
use nitro_ring::{Completion, Ring, Waker};
use parking_lot::Mutex;

use crate::arena::{Arena, Block, PAGE_BYTES};
use crate::codec::{self, Codec, DtypeHint, Scratch, formats::Layout};
use crate::index::{Form, FxHasher, Index, Key, PIECES, Pin, SlotView, pack_block};
use crate::policy::Policy;
use crate::policy::s3fifo::S3Fifo;
use crate::store::{Entry, Store};

/// (dev, ino, size, mtime ns, ctime ns): what must not change for cached bytes to stay a version's.
pub type Stamp = (u64, u64, u64, i64, i64);

/// The stamp of an open descriptor.
pub fn fd_stamp(fd: &OwnedFd) -> std::io::Result<Stamp> {
    fd_stat(fd).map(|(stamp, _)| stamp)
}

/// The stamp and link count of an open descriptor (`statx`, so every field has one fixed type).
fn fd_stat(fd: &OwnedFd) -> std::io::Result<(Stamp, u64)> {
    use rustix::fs::{AtFlags, StatxFlags};
    let st = rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
        .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))?;
    let ns = |t: &rustix::fs::StatxTimestamp| {
        t.tv_sec
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.tv_nsec))
    };
    Ok((
        (
            rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            st.stx_ino,
            st.stx_size,
            ns(&st.stx_mtime),
            ns(&st.stx_ctime),
        ),
        u64::from(st.stx_nlink),
    ))
}

/// One version of one source file. A rewrite or replacement of the source gets a new `Source` with a
/// new `file_id`, so chunks of the old version can never be served for the new one.
///
/// The source can still change under a `Source` that open handles hold (truncated, extended,
/// rewritten in place). The engine never trusts it: a fill is published only when every byte landed
/// and `fstat` afterwards still shows `stamp` (writers update mtime/ctime before the data, so an
/// unchanged stamp after the read means the bytes are this version's). Anything else marks the
/// version `stale`: its misses fail with EIO from then on; its chunks already cached stay
/// servable (they are this version's bytes), and the next open gets a new version.
pub struct Source {
    pub file_id: u64,
    /// The descriptor the version was opened with: O_DIRECT when `direct` (keeps the source out of
    /// the page cache, so the bytes are cached once, in the arena), else buffered. One per open
    /// version: with a descriptor limit the daemon cannot raise, an open file costs just this.
    pub fd: OwnedFd,
    pub direct: bool,
    /// A buffered descriptor, opened on first need (reads O_DIRECT can't do) when `direct`.
    pub buffered: std::sync::OnceLock<OwnedFd>,
    pub size: u64,
    /// File name for log lines.
    pub name: Arc<str>,
    /// Kernel inode number of the mount, for page-cache invalidation.
    pub fuse_ino: u64,
    /// Tensor dtypes by byte range, from a safetensors or GGUF header: picks the codec per chunk.
    /// Shared by every `Source` of one version, so a reopen does not read the header again.
    pub layout: Option<Arc<Layout>>,
    /// Hint for chunks the layout does not cover (text files, or Unknown).
    pub default_hint: DtypeHint,
    /// Logical and stored bytes of this file's chunks compressed so far (for reports).
    pub compressed_logical_bytes: AtomicU64,
    pub compressed_stored_bytes: AtomicU64,
    /// Shared by every `Source` of one version, so the COMPRESS line is logged once per version.
    pub compression_logged: Arc<AtomicBool>,
    /// The stamp this version was opened with.
    pub stamp: Stamp,
    /// The source no longer holds this version: misses fail with EIO, nothing more is read.
    pub stale: AtomicBool,
    /// This version's store file, once admitted (see `store`): its chunks are filled there, not
    /// in the arena, and a complete one is read by the kernel through passthrough.
    pub store: std::sync::OnceLock<Arc<Entry>>,
}

impl Source {
    /// A buffered descriptor of this version: `fd` itself, or a second one opened through
    /// `/proc/self/fd` (the same open object, no name resolved) the first time it is needed.
    pub fn buffered_fd(&self) -> std::io::Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        if !self.direct {
            return Ok(self.fd.as_fd());
        }
        if self.buffered.get().is_none() {
            let mut name = itoa::Buffer::new();
            let path = format!("/proc/self/fd/{}", name.format(self.fd.as_raw_fd()));
            let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC;
            let fd = rustix::fs::open(path.as_str(), flags, rustix::fs::Mode::empty())
                .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))?;
            let _ = self.buffered.set(fd);
        }
        Ok(self.buffered.get().map_or(self.fd.as_fd(), AsFd::as_fd))
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Marks this version stale; logs once per version.
    pub fn mark_stale(&self, why: &str) {
        if !self.stale.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "source changed under open handles: {} ({why}); misses now fail with EIO until reopened",
                self.name
            );
        }
    }

    /// Whether the source file still is this version (by `fstat` of its descriptor); marks it
    /// stale when not.
    pub fn still_holds(&self) -> bool {
        if self.is_stale() {
            return false;
        }
        match fd_stat(&self.fd) {
            Ok((now, _)) if now == self.stamp => true,
            // Deleted, or replaced by a rename over it (how model files are updated): the unlink
            // moved ctime, but size and mtime say the data did not change, and no path leads to
            // the inode any more. Open handles keep reading the version they opened.
            Ok(((dev, ino, size, mtime, _), 0))
                if (dev, ino, size, mtime)
                    == (self.stamp.0, self.stamp.1, self.stamp.2, self.stamp.3) =>
            {
                true
            }
            Ok((now, _)) if now.2 != self.stamp.2 => {
                self.mark_stale(&format!("size {} -> {}", self.stamp.2, now.2));
                false
            }
            Ok(_) => {
                self.mark_stale("modified");
                false
            }
            Err(e) => {
                self.mark_stale(&format!("fstat failed: {e}"));
                false
            }
        }
    }

    pub fn hint_for(&self, start: u64, end: u64) -> DtypeHint {
        match &self.layout {
            Some(l) => match l.hint_for(start, end) {
                DtypeHint::Unknown => self.default_hint,
                h => h,
            },
            None => self.default_hint,
        }
    }
}

/// Whether chunks leaving the hot set are compressed into the arena instead of dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum CompressMode {
    /// Per chunk, from the file's format and a sample: byte planes + zstd for floats, plain zstd
    /// for text, raw (dropped) for what does not pay.
    Auto,
    /// Plain zstd (the text codec) for every chunk that saves enough. `lz4` is still accepted:
    /// it named this mode when the text codec was LZ4.
    #[value(alias = "lz4")]
    Zstd,
    Off,
}

/// Where the engine completes a read it was sent: exactly once, with the bytes or an errno
/// (`libc::EIO`, ...). The engine knows no FUSE types; the FUSE front implements this for its
/// reply, tests for a channel. Called on the engine thread, so it must not block.
pub trait ReadReply: Send + 'static {
    fn data(self: Box<Self>, bytes: &[u8]);
    fn error(self: Box<Self>, errno: i32);
}

/// Messages from FUSE workers to the engine. Sent over a bounded channel; only a miss allocates
/// (its boxed reply), and hits never reach the engine.
pub enum Msg {
    Read {
        src: Arc<Source>,
        /// The open handle asking (for access counting); 0 for none.
        fh: u64,
        /// The request must lie within `src.size` (the front clamps it) and be no larger than
        /// `Shared::max_request_bytes`.
        offset: u64,
        size: u32,
        reply: Box<dyn ReadReply>,
    },
    /// Fill chunks `first..=last` ahead of a sequential reader.
    Prefetch {
        src: Arc<Source>,
        fh: u64,
        first: u64,
        last: u64,
    },
    /// A compressed chunk failed its checksum: drop it (the read that found it follows).
    DropCorrupt {
        key: Key,
    },
    /// A source file changed: drop the chunks of its old version.
    Purge {
        file_id: u64,
    },
    /// Keep this version whole in the store and fill it at full depth, if the budget allows
    /// (`Source::store` is set when admitted).
    Store {
        src: Arc<Source>,
        /// Opened before (a reuse): may push out other idle store files, not only take free room.
        reused: bool,
    },
    Shutdown,
}

/// Counters shared by all threads; relaxed atomics, read by the heartbeat and `stats()`.
#[derive(Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fills: AtomicU64,
    pub fill_bytes: AtomicU64,
    pub prefetch_fills: AtomicU64,
    pub evictions: AtomicU64,
    pub fill_errors: AtomicU64,
    pub invalidations: AtomicU64,
    pub uncached_reads: AtomicU64,
    /// Chunks compressed instead of evicted (a counter).
    pub compressions: AtomicU64,
    /// Resident compressed chunks: logical bytes they stand for and arena bytes they take (gauges).
    pub encoded_logical_bytes: AtomicU64,
    pub encoded_stored_bytes: AtomicU64,
    /// Compressed frames that failed their checksum (served from the source instead).
    pub decode_errors: AtomicU64,
    /// Opens answered with passthrough to a store file (their reads never reach the daemon).
    pub passthrough_opens: AtomicU64,
}

/// What the FUSE front and the engine share.
pub struct Shared {
    pub arena: Arena,
    pub index: Index,
    pub stats: Stats,
    pub chunk_bytes: u64,
    /// Largest read the kernel sends (max_pages), so scratch buffers are sized once.
    pub max_request_bytes: usize,
    /// Name of the file most recently filled, for the heartbeat line.
    pub last_fill: Mutex<Option<Arc<str>>>,
    pub compress: CompressMode,
    /// A compressed chunk must save at least this share of its raw size, else it is evicted.
    pub min_saving: f64,
    /// The engine thread died (panic, or io_uring failed): every read must fail with EIO at once.
    /// `death` holds the reason and is set before `dead`.
    pub dead: AtomicBool,
    pub death: Mutex<Option<String>>,
    /// Whole versions in tmpfs files (None: `--store off`, or it could not be opened).
    pub store: Option<Store>,
}

/// Result of copying a range out of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    Done,
    Missing,
    /// A compressed chunk failed to decode: never served, to be dropped and re-read.
    Corrupt(Key),
}

thread_local! {
    /// Per-thread decode buffers, made on a thread's first compressed hit and reused after.
    static DECODE: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Decodes logical `[offset, offset+out.len())` of an encoded block into `out`.
pub fn decode_into(block: &[u8], offset: usize, out: &mut [u8]) -> Result<(), codec::CodecError> {
    DECODE.with(|d| {
        let mut d = d.borrow_mut();
        let scratch = d.get_or_insert_with(|| Scratch::new(codec::DEFAULT_FRAME_BYTES));
        codec::decode_range(block, offset, out, scratch)
    })
}

impl Shared {
    pub fn chunk_of(&self, offset: u64) -> u64 {
        offset / self.chunk_bytes
    }

    /// Decodes logical bytes `[offset, offset+out.len())` of a pinned encoded chunk; false when a
    /// piece is missing or fails its checksum (the caller must not serve `out` then).
    pub fn decode_pieces(&self, pin: &Pin<'_>, offset: usize, out: &mut [u8]) -> bool {
        let piece_bytes = self.chunk_bytes as usize / PIECES;
        let mut pos = offset;
        let mut done = 0;
        while done < out.len() {
            let i = pos / piece_bytes;
            let Some(bytes) = pin.piece_bytes(&self.arena, i) else {
                return false;
            };
            let in_piece = pos - i * piece_bytes;
            let take = (out.len() - done).min(piece_bytes - in_piece);
            if decode_into(bytes, in_piece, &mut out[done..done + take]).is_err() {
                return false;
            }
            pos += take;
            done += take;
        }
        true
    }

    /// Copies `[offset, offset+out.len())` of `src` from pinned chunks into `out` (decoding
    /// compressed ones). Used by both the FUSE hit path and the engine.
    pub fn copy_cached(&self, src: &Source, offset: u64, out: &mut [u8], toucher: u64) -> Copied {
        let end = offset + out.len() as u64;
        let mut pos = offset;
        while pos < end {
            let chunk = self.chunk_of(pos);
            if let Some(e) = src.store.get()
                && e.has(chunk)
            {
                let take = (end - pos).min((chunk + 1) * self.chunk_bytes - pos) as usize;
                match e.range(pos, take) {
                    Some(bytes) => out[(pos - offset) as usize..][..take].copy_from_slice(bytes),
                    None => return Copied::Missing,
                }
                pos += take as u64;
                continue;
            }
            let key = Key {
                file: src.file_id,
                chunk,
            };
            let Some(pin) = self.index.pin(key, toucher) else {
                return Copied::Missing;
            };
            let view = pin.view();
            let in_chunk = (pos - chunk * self.chunk_bytes) as usize;
            let take = ((end - pos) as usize).min(view.logical_len.saturating_sub(in_chunk));
            if take == 0 {
                return Copied::Missing;
            }
            let dst = &mut out[(pos - offset) as usize..][..take];
            match pin.raw_bytes(&self.arena) {
                Some(bytes) => dst.copy_from_slice(&bytes[in_chunk..][..take]),
                None => {
                    if !self.decode_pieces(&pin, in_chunk, dst) {
                        return Copied::Corrupt(key);
                    }
                }
            }
            pos += take as u64;
        }
        Copied::Done
    }
}

/// A request parked until a chunk it needs is filled.
struct Waiter {
    src: Arc<Source>,
    fh: u64,
    offset: u64,
    size: u32,
    reply: Box<dyn ReadReply>,
    /// How often it has been re-evaluated; bounded so it cannot starve.
    rounds: u8,
    next: Option<u32>,
}

/// Where a fill's bytes go.
enum Dest {
    /// A block of the arena, published in the index under `slot` when complete.
    Arena { slot: u32, block: Block },
    /// The version's store file, at the chunk's own offset.
    Store(Arc<Entry>),
}

struct Fill {
    key: Key,
    dest: Dest,
    src: Arc<Source>,
    /// The handle whose read or prefetch started this fill.
    filler: u64,
    /// Logical bytes of the chunk (short for the last chunk of a file).
    want_bytes: u32,
    done_bytes: u32,
    direct: bool,
    waiters: Option<u32>,
}

const MAX_ROUNDS: u8 = 6;

/// Uncached reads in flight at most (each has a buffer of the largest request, made at start-up).
const UNCACHED_SLOTS: usize = 4;
/// Marks an uncached read's completion (fills are tagged with their index alone).
const UNCACHED_TAG: u64 = 1 << 62;

/// A buffer for an uncached read, and the read using it: (request, bytes wanted, bytes landed).
struct Uncached {
    buf: Box<[u8]>,
    job: Option<(Waiter, usize, usize)>,
}

pub struct Engine {
    /// Declared before `shared`: fields drop in order, so the ring (with the arena registered in
    /// it) is gone before this engine's hold on the arena.
    ring: Ring,
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    /// Orders slots for eviction; the engine alone removes index entries (see `take_victim`).
    policy: Box<dyn Policy>,
    free_slots: Vec<u32>,
    /// The resident (indexed and queued) slots of each file id, for `purge`.
    file_slots: FileSlots,
    fills: Vec<Option<Fill>>,
    free_fills: Vec<u32>,
    in_flight: HashMap<Key, u32, BuildHasherDefault<FxHasher>>,
    waiters: Vec<Option<Waiter>>,
    free_waiters: Vec<u32>,
    /// Requests that could not start a fill (fill table full, or no block could be freed).
    backlog: VecDeque<u32>,
    completions: Vec<Completion>,
    scratch: Vec<u8>,
    /// Which `Source` a file id belongs to, for the compressor's hints (weak: closing files must
    /// still release their descriptors).
    sources: HashMap<u64, Weak<Source>, BuildHasherDefault<FxHasher>>,
    encode_scratch: Scratch,
    encoded: Vec<u8>,
    piece_buf: Vec<u8>,
    readahead_fills: usize,
    /// Versions being filled whole into the store, with the next chunk to start.
    store_jobs: VecDeque<(Arc<Source>, u64)>,
    uncached: Vec<Uncached>,
    free_uncached: Vec<u32>,
    /// Uncached reads waiting for a slot.
    uncached_line: VecDeque<Waiter>,
    /// Test hook, see `FAULT_ENV`.
    panic_on: Option<String>,
}

/// A slot the engine took out of the index on the policy's offer, with what it held (the engine
/// frees the block or compresses it).
struct Victim {
    slot: u32,
    view: SlotView,
    /// It left the policy's main queue (it had been reused); a compressed tier may keep it.
    from_main: bool,
}

/// The resident slots of each file id, so that a purge visits that file's slots only. One entry per
/// resident slot: a slot is listed from its publication until it leaves the index, under the file
/// of its key; lists are swap-removed and dropped when empty.
struct FileSlots {
    lists: HashMap<u64, Vec<u32>, BuildHasherDefault<FxHasher>>,
    /// Per slot: the file id it is listed under and its place in that list (`UNLISTED` if none).
    file: Vec<u64>,
    at: Vec<u32>,
}

const UNLISTED: u32 = u32::MAX;

impl FileSlots {
    fn new(slot_count: u32) -> FileSlots {
        FileSlots {
            lists: HashMap::default(),
            file: vec![0; slot_count as usize],
            at: vec![UNLISTED; slot_count as usize],
        }
    }

    fn insert(&mut self, file: u64, slot: u32) {
        let s = slot as usize;
        debug_assert_eq!(self.at[s], UNLISTED, "slot {slot} listed twice");
        let list = self.lists.entry(file).or_default();
        self.file[s] = file;
        self.at[s] = list.len() as u32;
        list.push(slot);
    }

    fn remove(&mut self, slot: u32) {
        let s = slot as usize;
        let at = std::mem::replace(&mut self.at[s], UNLISTED);
        if at == UNLISTED {
            return;
        }
        let file = self.file[s];
        let list = self.lists.get_mut(&file).expect("a listed slot's file");
        list.swap_remove(at as usize);
        if let Some(&moved) = list.get(at as usize) {
            self.at[moved as usize] = at;
        } else if list.is_empty() {
            self.lists.remove(&file);
        }
    }

    /// Unlists and returns every slot of `file`.
    fn take(&mut self, file: u64) -> Vec<u32> {
        let list = self.lists.remove(&file).unwrap_or_default();
        for &slot in &list {
            self.at[slot as usize] = UNLISTED;
        }
        list
    }

    #[cfg(test)]
    fn listed(&self, file: u64) -> usize {
        self.lists.get(&file).map_or(0, Vec::len)
    }
}

/// Fault injection for tests, read once when the engine starts:
/// `NITRO_URING_FAULT=engine-panic-on=NAME` makes the engine thread panic when it starts a fill for
/// a source file named NAME (tests/mount_engine_death.rs checks that a dead engine is loud).
pub const FAULT_ENV: &str = "NITRO_URING_FAULT";

impl Engine {
    pub fn new(
        shared: Arc<Shared>,
        rx: Receiver<Msg>,
        max_fills: usize,
    ) -> std::io::Result<(Engine, Waker)> {
        assert!(max_fills >= 2);
        // Room for every fill and uncached read queued between two waits, and the wake poll.
        let mut ring = Ring::new(((max_fills + UNCACHED_SLOTS) as u32 + 2).next_power_of_two())?;
        // SAFETY: the arena lives in `shared`, which the engine holds for its whole life, and the
        // mapping is never moved or unmapped while the ring exists.
        match unsafe { ring.register_region(shared.arena.base_ptr(), shared.arena.usable_bytes()) }
        {
            Ok(n) => tracing::debug!("registered arena with io_uring in {n} piece(s)"),
            Err(e) => {
                tracing::info!("io_uring buffer registration refused ({e}); using plain reads")
            }
        }
        let waker = ring.waker();
        let slot_count = shared.index.slot_count();
        let waiter_capacity = 1024;
        let engine = Engine {
            policy: Box::new(S3Fifo::new(slot_count)),
            free_slots: (0..slot_count).rev().collect(),
            file_slots: FileSlots::new(slot_count),
            fills: (0..max_fills).map(|_| None).collect(),
            free_fills: (0..max_fills as u32).rev().collect(),
            in_flight: HashMap::with_capacity_and_hasher(max_fills * 2, Default::default()),
            waiters: (0..waiter_capacity).map(|_| None).collect(),
            free_waiters: (0..waiter_capacity as u32).rev().collect(),
            backlog: VecDeque::with_capacity(waiter_capacity),
            completions: Vec::with_capacity(max_fills + 2),
            scratch: vec![0; shared.max_request_bytes.max(shared.chunk_bytes as usize)],
            sources: HashMap::with_capacity_and_hasher(1024, Default::default()),
            encode_scratch: Scratch::new(codec::DEFAULT_FRAME_BYTES),
            encoded: Vec::with_capacity(shared.chunk_bytes as usize + 64 * 1024),
            piece_buf: Vec::with_capacity(shared.chunk_bytes as usize + 64 * 1024),
            readahead_fills: max_fills.saturating_sub(max_fills / 4).max(1),
            store_jobs: VecDeque::new(),
            uncached: (0..UNCACHED_SLOTS)
                .map(|_| Uncached {
                    buf: vec![0; shared.max_request_bytes.max(4096)].into_boxed_slice(),
                    job: None,
                })
                .collect(),
            free_uncached: (0..UNCACHED_SLOTS as u32).rev().collect(),
            uncached_line: VecDeque::new(),
            panic_on: std::env::var(FAULT_ENV)
                .ok()
                .and_then(|v| v.strip_prefix("engine-panic-on=").map(str::to_owned)),
            shared,
            ring,
            rx,
        };
        Ok((engine, waker))
    }

    /// Runs until `Msg::Shutdown` (or every sender is gone) and all reads in flight are done.
    /// Err: the ring failed and the engine cannot go on (the caller then calls `die`).
    pub fn run(&mut self) -> Result<(), String> {
        let mut open = true;
        loop {
            // Back-pressure: a new request needs a waiter slot; while all are taken, FUSE
            // workers block on the bounded channel instead of this table growing.
            while open && !self.free_waiters.is_empty() {
                match self.rx.try_recv() {
                    Ok(Msg::Shutdown) | Err(TryRecvError::Disconnected) => open = false,
                    Ok(msg) => self.handle(msg),
                    Err(TryRecvError::Empty) => break,
                }
            }
            self.drain_backlog();
            if open {
                self.pump_store();
            }
            if !open && self.ring.in_flight() == 0 {
                break;
            }
            let mut done = std::mem::take(&mut self.completions);
            if let Err(e) = self.ring.wait(true, &mut done) {
                self.completions = done;
                return Err(format!("io_uring wait failed: {e}"));
            }
            for c in done.drain(..) {
                self.complete(c);
            }
            self.completions = done;
        }
        // Whatever is still parked gets an error rather than hanging the reader.
        self.fail_parked();
        Ok(())
    }

    fn fail_parked(&mut self) {
        for w in self.waiters.iter_mut() {
            if let Some(w) = w.take() {
                w.reply.error(libc::EIO);
            }
        }
        self.backlog.clear();
        for w in self.uncached_line.drain(..) {
            w.reply.error(libc::EIO);
        }
        // (Only after the ring failed can these still be here; their buffers outlive the ring.)
        for slot in &mut self.uncached {
            if let Some((w, _, _)) = slot.job.take() {
                w.reply.error(libc::EIO);
            }
        }
    }

    /// After the engine failed (`run` returned Err or panicked): records why, fails every parked
    /// read with EIO, and answers every read still sent (those that raced with `dead`) with EIO
    /// until shutdown. Nothing else is done: the engine's state is not trusted any more.
    pub fn die(&mut self, reason: String) {
        tracing::error!("fill engine failed: {reason}; reads now fail with EIO");
        *self.shared.death.lock() = Some(reason);
        self.shared.dead.store(true, Ordering::SeqCst);
        self.fail_parked();
        loop {
            match self.rx.recv() {
                Ok(Msg::Read { reply, .. }) => reply.error(libc::EIO),
                Ok(Msg::Shutdown) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Read {
                src,
                fh,
                offset,
                size,
                reply,
            } => {
                let w = self.park(Waiter {
                    src,
                    fh,
                    offset,
                    size,
                    reply,
                    rounds: 0,
                    next: None,
                });
                self.evaluate(w);
            }
            Msg::Prefetch {
                src,
                fh,
                first,
                last,
            } => {
                if src.is_stale() || src.store.get().is_some() {
                    return; // a stored version is being filled whole already
                }
                let last_chunk = src.size.saturating_sub(1) / self.shared.chunk_bytes;
                for chunk in first..=last.min(last_chunk) {
                    if self.in_flight.len() >= self.readahead_fills {
                        break;
                    }
                    let key = Key {
                        file: src.file_id,
                        chunk,
                    };
                    if !self.in_flight.contains_key(&key) && !self.shared.index.contains(key) {
                        if self.start_fill(&src, key, fh).is_none() {
                            break;
                        }
                        self.shared
                            .stats
                            .prefetch_fills
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Msg::Purge { file_id } => self.purge(file_id),
            Msg::Store { src, reused } => self.admit(src, reused),
            Msg::DropCorrupt { key } => self.drop_key(key),
            Msg::Shutdown => {}
        }
    }

    fn park(&mut self, w: Waiter) -> u32 {
        match self.free_waiters.pop() {
            Some(i) => {
                self.waiters[i as usize] = Some(w);
                i
            }
            None => {
                // More concurrent misses than expected at start-up: grow (rare, amortized).
                self.waiters.push(Some(w));
                (self.waiters.len() - 1) as u32
            }
        }
    }

    fn unpark(&mut self, i: u32) -> Waiter {
        let w = self.waiters[i as usize].take().expect("parked waiter");
        self.free_waiters.push(i);
        w
    }

    /// Serves the parked request if all its chunks are cached, else makes sure the first missing
    /// one is being filled and parks the request on it.
    fn evaluate(&mut self, wi: u32) {
        let (src, fh, offset, size, rounds) = {
            let w = self.waiters[wi as usize].as_ref().expect("parked");
            (w.src.clone(), w.fh, w.offset, w.size, w.rounds)
        };
        let end = offset + u64::from(size);
        let first = self.shared.chunk_of(offset);
        let last = self.shared.chunk_of(end - 1);
        let mut missing = None;
        for chunk in first..=last {
            let key = Key {
                file: src.file_id,
                chunk,
            };
            let stored = src.store.get().is_some_and(|e| e.has(chunk));
            if !stored && !self.shared.index.contains(key) {
                if missing.is_none() {
                    missing = Some(key);
                } else if !self.in_flight.contains_key(&key) {
                    // Fill the other chunks of a spanning read in parallel.
                    let _ = self.start_fill(&src, key, fh);
                }
            }
        }
        let Some(key) = missing else {
            // Only this thread evicts, so what is present now stays present while we copy.
            let out = &mut self.scratch[..size as usize];
            match self.shared.copy_cached(&src, offset, out, 0) {
                Copied::Done => {
                    let w = self.unpark(wi);
                    w.reply.data(&self.scratch[..size as usize]);
                }
                Copied::Corrupt(key) => {
                    self.shared
                        .stats
                        .decode_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.drop_key(key);
                    self.evaluate(wi);
                }
                Copied::Missing => {
                    let w = self.unpark(wi);
                    self.serve_uncached(w);
                }
            }
            return;
        };
        if src.is_stale() {
            // This version is gone from the source: nothing more is read for it.
            let w = self.unpark(wi);
            w.reply.error(libc::EIO);
            return;
        }
        if rounds >= MAX_ROUNDS {
            let w = self.unpark(wi);
            self.serve_uncached(w);
            return;
        }
        if let Some(w) = self.waiters[wi as usize].as_mut() {
            w.rounds += 1;
        }
        let fill = match self.in_flight.get(&key) {
            Some(&f) => Some(f),
            None => self.start_fill(&src, key, fh),
        };
        match fill {
            Some(f) => {
                let fill = self.fills[f as usize].as_mut().expect("fill in flight");
                let w = self.waiters[wi as usize].as_mut().expect("parked");
                w.next = fill.waiters;
                fill.waiters = Some(wi);
            }
            None if self.ring.in_flight() == 0 => {
                // Nothing will complete to make room (every block pinned): do not wait for it.
                let w = self.unpark(wi);
                self.serve_uncached(w);
            }
            None => self.backlog.push_back(wi),
        }
    }

    fn drain_backlog(&mut self) {
        let n = self.backlog.len();
        for _ in 0..n {
            if self.free_fills.is_empty() {
                break;
            }
            let Some(wi) = self.backlog.pop_front() else {
                break;
            };
            self.evaluate(wi);
        }
    }

    /// Reads the request straight from the source into a buffer of its own, bypassing the arena:
    /// the slow path of last resort, which keeps progress guaranteed when the arena cannot hold
    /// the request. Through the ring like every other read, so the engine never blocks on it; at
    /// most `UNCACHED_SLOTS` at once (their buffers are made at start-up), the rest wait in line.
    fn serve_uncached(&mut self, w: Waiter) {
        self.shared
            .stats
            .uncached_reads
            .fetch_add(1, Ordering::Relaxed);
        if w.src.is_stale() {
            return w.reply.error(libc::EIO);
        }
        let want = u64::from(w.size).min(w.src.size.saturating_sub(w.offset)) as usize;
        if want == 0 {
            return w.reply.data(&[]);
        }
        let Some(i) = self.free_uncached.pop() else {
            self.uncached_line.push_back(w);
            return;
        };
        self.uncached[i as usize].job = Some((w, want, 0));
        self.submit_uncached(i);
    }

    /// Queues the rest of an uncached read (buffered descriptor: any offset and length).
    fn submit_uncached(&mut self, i: u32) {
        let slot = &mut self.uncached[i as usize];
        let Some((w, want, done)) = slot.job.as_ref() else {
            return;
        };
        let (want, done) = (*want, *done);
        let fd = match w.src.buffered_fd() {
            Ok(fd) => fd.as_raw_fd(),
            Err(e) => return self.finish_uncached(i, Err(errno_of(&e))),
        };
        let offset = w.offset + done as u64;
        let ptr = slot.buf[done..].as_mut_ptr();
        // SAFETY: the slot's buffer is this read's alone until its completion (the job stays in
        // the slot until then) and has `want - done` bytes from `ptr`; the waiter's `src` keeps
        // the descriptor open.
        let pushed = unsafe {
            self.ring.push_read(
                fd,
                offset,
                ptr,
                (want - done) as u32,
                UNCACHED_TAG | u64::from(i),
            )
        };
        assert!(pushed, "ring full with {} reads", self.ring.in_flight());
    }

    fn complete_uncached(&mut self, i: u32, result: i32) {
        let Some((w, want, done)) = self.uncached[i as usize].job.as_mut() else {
            debug_assert!(false, "completion for a free uncached slot {i}");
            return;
        };
        if result < 0 {
            return self.finish_uncached(i, Err(-result));
        }
        if result == 0 {
            w.src.mark_stale(&format!(
                "end of file at {} before its size {}",
                w.offset + *done as u64,
                w.src.size
            ));
            return self.finish_uncached(i, Err(libc::EIO));
        }
        *done = (*done + result as usize).min(*want);
        if *done < *want {
            return self.submit_uncached(i);
        }
        // Served only if the file still is this version after the read (see `Source`).
        let outcome = if w.src.still_holds() {
            Ok(())
        } else {
            Err(libc::EIO)
        };
        self.finish_uncached(i, outcome);
    }

    fn finish_uncached(&mut self, i: u32, outcome: Result<(), i32>) {
        let slot = &mut self.uncached[i as usize];
        if let Some((w, want, _)) = slot.job.take() {
            match outcome {
                Ok(()) => w.reply.data(&slot.buf[..want]),
                Err(errno) => w.reply.error(errno),
            }
        }
        self.free_uncached.push(i);
        if let Some(next) = self.uncached_line.pop_front() {
            self.serve_uncached(next);
        }
    }

    fn alloc_slot(&mut self) -> Option<u32> {
        if let Some(s) = self.free_slots.pop() {
            return Some(s);
        }
        let v = self.take_victim()?;
        self.forget_block(v.view);
        self.shared.stats.evictions.fetch_add(1, Ordering::Relaxed);
        Some(v.slot)
    }

    /// Asks the policy for a victim and takes it out of the index (a pinned slot is refused and
    /// the policy looks further). None when every queued slot is pinned.
    fn take_victim(&mut self) -> Option<Victim> {
        let index = &self.shared.index;
        let mut view = None;
        let pick = self.policy.pick_victim(index, &mut |slot| {
            view = index.try_remove(slot);
            view.is_some()
        })?;
        self.file_slots.remove(pick.slot);
        Some(Victim {
            slot: pick.slot,
            view: view.expect("the taken slot's view"),
            from_main: pick.from_main,
        })
    }

    /// Frees a block that left the index, keeping the compressed-bytes gauges right.
    fn forget_block(&mut self, view: SlotView) {
        if view.form == Form::Encoded {
            let s = &self.shared.stats;
            s.encoded_logical_bytes
                .fetch_sub(view.logical_len as u64, Ordering::Relaxed);
            s.encoded_stored_bytes
                .fetch_sub(view.stored_bytes() as u64, Ordering::Relaxed);
        }
        for b in view.blocks() {
            // SAFETY: the caller took this view out of the index with no pins (or never
            // published it); nothing reads the blocks any more.
            unsafe { self.shared.arena.free(b) };
        }
    }

    /// A victim of the policy: compressed back into the arena (main queue, freq 0) when it came
    /// from main (it was reused: a ghost hit or a second touch) and compression pays, else
    /// dropped. One-pass scans leave from the small queue and cost no compression work; a
    /// compressed victim is dropped, so each chunk is compressed at most once per residency.
    fn retire(&mut self, v: Victim) {
        if v.from_main && v.view.form == Form::Raw && self.compress(&v) {
            return;
        }
        self.forget_block(v.view);
        self.free_slots.push(v.slot);
        self.shared.stats.evictions.fetch_add(1, Ordering::Relaxed);
    }

    /// Compresses a raw victim in place of evicting it. The victim is already out of the index and
    /// unpinned, so its block is ours to read and free.
    fn compress(&mut self, v: &Victim) -> bool {
        if self.shared.compress == CompressMode::Off {
            return false;
        }
        let key = self.shared.index.key_of(v.slot);
        let src = self.sources.get(&key.file).and_then(Weak::upgrade);
        let start = key.chunk * self.shared.chunk_bytes;
        let hint = src.as_ref().map_or(DtypeHint::Unknown, |s| {
            s.hint_for(start, start + v.view.logical_len as u64)
        });
        // SAFETY: the victim left the index with no pins; nobody else reads or writes the block.
        let raw = unsafe { self.shared.arena.bytes(v.view.block, v.view.len) };
        let codec = match self.shared.compress {
            CompressMode::Auto => codec::choose(raw, hint),
            _ => Codec::Zstd,
        };
        if codec == Codec::Raw {
            return false;
        }
        // Encode every piece first (the raw block must stay intact until all are done).
        let piece_bytes = self.shared.chunk_bytes as usize / PIECES;
        let mut spans = [(0usize, 0usize); PIECES];
        self.encoded.clear();
        let mut piece_buf = std::mem::take(&mut self.piece_buf);
        for (i, part) in raw.chunks(piece_bytes).enumerate() {
            let Some(n) = codec::encode_chunk(
                part,
                codec,
                codec::DEFAULT_FRAME_BYTES.min(piece_bytes),
                self.shared.min_saving,
                &mut self.encode_scratch,
                &mut piece_buf,
            ) else {
                self.piece_buf = piece_buf;
                return false;
            };
            spans[i] = (self.encoded.len(), n);
            self.encoded.extend_from_slice(&piece_buf[..n]);
        }
        self.piece_buf = piece_buf;
        let pieces_used = v.view.logical_len.div_ceil(piece_bytes);
        let pages: usize = spans[..pieces_used]
            .iter()
            .map(|&(_, n)| n.div_ceil(PAGE_BYTES))
            .sum();
        if pages >= v.view.block.pages as usize {
            return false;
        }
        // SAFETY: the victim left the index unpinned, and the encoded pieces were copied out of
        // it above; nothing reads it any more.
        unsafe { self.shared.arena.free(v.view.block) };
        let mut view = SlotView {
            block: v.view.block,
            len: 0,
            logical_len: v.view.logical_len,
            form: Form::Encoded,
            pieces: [0; PIECES],
        };
        for (i, &(at, n)) in spans[..pieces_used].iter().enumerate() {
            // The raw block just went back and the pieces take fewer pages than it had, so the
            // freed slab alone can hold them all: this cannot fail.
            let block = self
                .shared
                .arena
                .alloc(n)
                .expect("space freed by the raw block");
            // SAFETY: a fresh block, not yet published: this thread is its only user.
            unsafe { self.shared.arena.bytes_mut(block, n) }
                .copy_from_slice(&self.encoded[at..at + n]);
            view.pieces[i] = pack_block(block);
            view.len += n;
        }
        let stored = view.stored_bytes();
        self.shared.index.set(v.slot, key, view);
        self.shared.index.publish(v.slot, key, 0);
        self.policy.insert_main(v.slot, key.hash64(), stored as u32);
        self.file_slots.insert(key.file, v.slot);
        let s = &self.shared.stats;
        s.compressions.fetch_add(1, Ordering::Relaxed);
        s.encoded_logical_bytes
            .fetch_add(v.view.logical_len as u64, Ordering::Relaxed);
        s.encoded_stored_bytes
            .fetch_add(stored as u64, Ordering::Relaxed);
        if let Some(src) = src {
            let logical = src
                .compressed_logical_bytes
                .fetch_add(v.view.logical_len as u64, Ordering::Relaxed)
                + v.view.logical_len as u64;
            let stored = src
                .compressed_stored_bytes
                .fetch_add(stored as u64, Ordering::Relaxed)
                + stored as u64;
            if !src.compression_logged.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    "COMPRESS {} [{hint:?} {} {:.2}x]",
                    src.name,
                    codec.name(),
                    logical as f64 / stored.max(1) as f64
                );
            }
        }
        true
    }

    /// Drops one chunk from the cache (a corrupt compressed chunk), if nobody holds it.
    fn drop_key(&mut self, key: Key) {
        let slot = match self.shared.index.pin(key, 0) {
            Some(pin) => pin.slot(),
            None => return,
        };
        if let Some(view) = self.shared.index.try_remove(slot) {
            self.policy.remove(slot);
            self.file_slots.remove(slot);
            self.forget_block(view);
            self.free_slots.push(slot);
            tracing::warn!("DROP corrupt chunk {} of file id {}", key.chunk, key.file);
        }
    }

    fn alloc_block(&mut self, bytes: usize) -> Option<Block> {
        // Bounded: each round frees one block; a pool full of pinned or packed blocks gives up.
        for _ in 0..4096 {
            if let Some(b) = self.shared.arena.alloc(bytes) {
                return Some(b);
            }
            let v = self.take_victim()?;
            self.retire(v);
        }
        None
    }

    /// Starts filling `key` from `src`. None if the fill table is full or no space can be made.
    fn start_fill(&mut self, src: &Arc<Source>, key: Key, filler: u64) -> Option<u32> {
        debug_assert!(!self.in_flight.contains_key(&key));
        let chunk_start = key.chunk * self.shared.chunk_bytes;
        if chunk_start >= src.size || src.is_stale() {
            return None;
        }
        if self.panic_on.as_deref() == Some(&*src.name) {
            panic!(
                "fault injection ({FAULT_ENV}): fill of {} started",
                src.name
            );
        }
        let want = (src.size - chunk_start).min(self.shared.chunk_bytes) as usize;
        let f = self.free_fills.pop()?;
        let dest = match src.store.get().filter(|e| !e.is_broken()) {
            Some(e) => Dest::Store(e.clone()),
            None => {
                let Some(slot) = self.alloc_slot() else {
                    self.free_fills.push(f);
                    return None;
                };
                let Some(block) = self.alloc_block(want) else {
                    self.free_slots.push(slot);
                    self.free_fills.push(f);
                    return None;
                };
                Dest::Arena { slot, block }
            }
        };
        let direct = src.direct;
        self.fills[f as usize] = Some(Fill {
            key,
            dest,
            src: src.clone(),
            filler,
            want_bytes: want as u32,
            done_bytes: 0,
            direct,
            waiters: None,
        });
        self.in_flight.insert(key, f);
        // A file reopened after all its handles closed gets a new `Source` with the same id.
        let known = self.sources.entry(src.file_id).or_default();
        if known.strong_count() == 0 {
            *known = Arc::downgrade(src);
        }
        self.submit(f);
        self.shared.stats.fills.fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    /// Submits the next read of a fill: the rest of its chunk, from `done_bytes` on.
    fn submit(&mut self, f: u32) {
        let Some(fill) = self.fills[f as usize].as_mut() else {
            debug_assert!(false, "submit of a free fill {f}");
            return;
        };
        let done = fill.done_bytes as usize;
        let rest = fill.want_bytes as usize - done;
        // O_DIRECT needs page-aligned offsets; after a short read left `done` unaligned, the
        // buffered descriptor finishes the chunk.
        if fill.direct && !done.is_multiple_of(PAGE_BYTES) {
            fill.direct = false;
        }
        let (fd, len) = if fill.direct {
            // O_DIRECT wants page-aligned lengths; the block has room for the rounded length and
            // the kernel stops at end of file.
            (fill.src.fd.as_raw_fd(), rest.next_multiple_of(PAGE_BYTES))
        } else {
            match fill.src.buffered_fd() {
                Ok(fd) => (fd.as_raw_fd(), rest),
                Err(e) => {
                    // No descriptor to read with (EMFILE): fail the fill, not the engine.
                    let errno = errno_of(&e);
                    if let Some(fill) = self.fills[f as usize].take() {
                        self.free_fills.push(f);
                        self.in_flight.remove(&fill.key);
                        self.fail_fill(fill, errno);
                    }
                    return;
                }
            }
        };
        let offset = fill.key.chunk * self.shared.chunk_bytes + done as u64;
        let (ptr, room) = match &fill.dest {
            Dest::Arena { block, .. } => (
                // SAFETY: `done` is within the block (it counts bytes that landed in it).
                unsafe { self.shared.arena.block_ptr(*block).add(done) },
                block.capacity_bytes().saturating_sub(done),
            ),
            Dest::Store(e) => e.fill_target(offset).unwrap_or((std::ptr::null_mut(), 0)),
        };
        // Never past the block (or the store file's last page), whatever the lengths above say.
        let len = len.min(room);
        debug_assert!(len > 0, "fill {f} has nothing left to read");
        // SAFETY: the destination (an arena block, or an unfilled chunk of a store mapping that the
        // fill's `Arc<Entry>` keeps mapped) belongs to this fill alone until `complete`, `len`
        // bytes fit there, and `fill.src` keeps the descriptor open until then.
        let pushed = unsafe {
            self.ring
                .push_read(fd, offset, ptr, len as u32, u64::from(f))
        };
        // The fill table is no larger than the ring, so there is always room.
        assert!(pushed, "ring full with {} fills", self.ring.in_flight());
    }

    fn complete(&mut self, c: Completion) {
        if c.user_data & UNCACHED_TAG != 0 {
            return self.complete_uncached((c.user_data & !UNCACHED_TAG) as u32, c.result);
        }
        let f = c.user_data as u32;
        let fill = self.fills[f as usize]
            .as_mut()
            .expect("completion for a live fill");
        if c.result == -libc::EINVAL && fill.direct {
            // This file or filesystem refuses O_DIRECT after all: fall back to buffered reads.
            fill.direct = false;
            self.submit(f);
            return;
        }
        // What the source's answer says about this version: Ok(true) when the chunk is complete,
        // Ok(false) to read on, Err(errno) to fail the fill.
        let outcome = if c.result > 0 {
            // An O_DIRECT read of the last chunk asks for whole pages, so it may get more than
            // the version's size: bytes of a grown file, or (FUSE sources) the page-rounded count
            // of an unchanged one. The excess lands in the block's slack and is never served; the
            // `fstat` check below tells a grown file from an unchanged one.
            let rest = fill.want_bytes - fill.done_bytes;
            fill.done_bytes += (c.result as u32).min(rest);
            Ok(fill.done_bytes == fill.want_bytes)
        } else if c.result == 0 {
            // End of file before the size the version says: the file shrank.
            let at = fill.key.chunk * self.shared.chunk_bytes + u64::from(fill.done_bytes);
            fill.src.mark_stale(&format!(
                "end of file at {at} before its size {}",
                fill.src.size
            ));
            Err(libc::EIO)
        } else {
            Err(-c.result)
        };
        if matches!(outcome, Ok(false)) {
            self.submit(f);
            return;
        }
        let fill = self.fills[f as usize].take().expect("fill");
        self.free_fills.push(f);
        self.in_flight.remove(&fill.key);
        // Every byte landed: publish only if the file still is this version (see `Source`).
        let outcome = match outcome {
            Ok(_) if !fill.src.still_holds() => Err(libc::EIO),
            o => o,
        };
        if let Err(errno) = outcome {
            self.fail_fill(fill, errno);
            return;
        }
        if !fill.direct
            && let Ok(fd) = fill.src.buffered_fd()
        {
            // Buffered fallback: drop the source's page-cache copy, the arena holds the bytes now.
            let offset = fill.key.chunk * self.shared.chunk_bytes;
            let _ = rustix::fs::fadvise(
                fd,
                offset,
                std::num::NonZeroU64::new(u64::from(fill.want_bytes)),
                rustix::fs::Advice::DontNeed,
            );
        }
        match &fill.dest {
            Dest::Arena { slot, block } => {
                let view = SlotView::raw(*block, fill.want_bytes as usize);
                self.shared.index.set(*slot, fill.key, view);
                self.shared.index.publish(*slot, fill.key, fill.filler);
                self.policy
                    .insert(*slot, fill.key.hash64(), block.pages * PAGE_BYTES as u32);
                self.file_slots.insert(fill.key.file, *slot);
            }
            Dest::Store(e) => {
                if e.mark_filled(fill.key.chunk) {
                    self.finish_store(&fill.src, e);
                }
            }
        }
        self.shared
            .stats
            .fill_bytes
            .fetch_add(u64::from(fill.want_bytes), Ordering::Relaxed);
        {
            let mut last = self.shared.last_fill.lock();
            if last
                .as_ref()
                .is_none_or(|n| !Arc::ptr_eq(n, &fill.src.name))
            {
                *last = Some(fill.src.name.clone());
            }
        }
        let mut next = fill.waiters;
        while let Some(wi) = next {
            next = self.waiters[wi as usize]
                .as_mut()
                .and_then(|w| w.next.take());
            self.evaluate(wi);
        }
    }

    /// Discards a fill that did not produce this version's bytes: block and slot freed, nothing
    /// published, every waiter gets `errno`.
    fn fail_fill(&mut self, fill: Fill, errno: i32) {
        match &fill.dest {
            Dest::Arena { slot, block } => {
                // SAFETY: a failed fill's block was never published; only this fill used it, and
                // its read has completed.
                unsafe { self.shared.arena.free(*block) };
                self.free_slots.push(*slot);
            }
            Dest::Store(e)
                if !fill.src.is_stale()
                    && matches!(errno, libc::EFAULT | libc::ENOSPC | libc::ENOMEM) =>
            {
                // The store's tmpfs refused the pages (full): this version goes on in the arena.
                tracing::warn!(
                    "store: {} could not be filled ({}); serving it from the arena",
                    fill.src.name,
                    std::io::Error::from_raw_os_error(errno)
                );
                e.mark_broken();
                let mut next = fill.waiters;
                while let Some(wi) = next {
                    next = self.waiters[wi as usize]
                        .as_mut()
                        .and_then(|w| w.next.take());
                    self.evaluate(wi);
                }
                return;
            }
            Dest::Store(_) => {}
        }
        self.shared
            .stats
            .fill_errors
            .fetch_add(1, Ordering::Relaxed);
        if !fill.src.is_stale() {
            // A stale version was logged once when it went stale.
            tracing::warn!(
                "ERROR {} chunk {}: {}",
                fill.src.name,
                fill.key.chunk,
                std::io::Error::from_raw_os_error(errno)
            );
        }
        let mut next = fill.waiters;
        while let Some(wi) = next {
            let w = self.unpark(wi);
            next = w.next;
            w.reply.error(errno);
        }
    }

    /// Admits a version to the store if its budget can be found: free arena slabs first; then
    /// idle store files opened only once; a reused version (opened before) may also evict arena
    /// chunks and idle reused store files. A first-time file never pushes out what was reused, so
    /// a one-pass scan cannot flush the store (it goes through the arena's S3-FIFO instead).
    fn admit(&mut self, src: Arc<Source>, reused: bool) {
        let shared = self.shared.clone();
        let Some(store) = shared.store.as_ref() else {
            return;
        };
        if src.store.get().is_some() || src.is_stale() || src.size < store.min_bytes() {
            return;
        }
        if let Some(e) = store.lookup(&src.stamp) {
            let complete = e.is_complete();
            let _ = src.store.set(e);
            if !complete {
                self.store_jobs.push_back((src, 0));
            }
            return;
        }
        let slabs = store.slabs_for(src.size);
        if slabs > store.cap_slabs {
            tracing::debug!("store: {} does not fit ({} slabs)", src.name, slabs);
            return;
        }
        let arena = &shared.arena;
        arena.give_back(store.sweep_incomplete());
        let max_uses = if reused { u64::MAX } else { 1 };
        let mut granted = false;
        for _ in 0..=arena.slab_count() {
            if store.held_slabs().saturating_add(slabs) > store.cap_slabs {
                match store.evict_one(max_uses) {
                    Some(n) => arena.give_back(n),
                    None => break,
                }
                continue;
            }
            if arena.lend(slabs) {
                granted = true;
                break;
            }
            if let Some(n) = store.evict_one(1) {
                arena.give_back(n);
            } else if !reused {
                break;
            } else if let Some(v) = self.take_victim() {
                self.forget_block(v.view);
                self.free_slots.push(v.slot);
                self.shared.stats.evictions.fetch_add(1, Ordering::Relaxed);
            } else if let Some(n) = store.evict_one(u64::MAX) {
                arena.give_back(n);
            } else {
                break;
            }
        }
        if !granted {
            tracing::debug!("store: no room for {} now", src.name);
            return;
        }
        match store.create(src.stamp, slabs) {
            Ok(e) => {
                tracing::info!(
                    "STORE {} ({} MiB): filling it whole",
                    src.name,
                    src.size >> 20
                );
                let _ = src.store.set(e);
                // Its chunks in the arena would be a second copy.
                self.purge(src.file_id);
                self.store_jobs.push_back((src, 0));
            }
            Err(e) => {
                arena.give_back(slabs);
                tracing::warn!("store: cannot create a file for {}: {e}", src.name);
            }
        }
    }

    /// Starts store fills, in file order, while the ring has room beyond what readers need.
    fn pump_store(&mut self) {
        while self.in_flight.len() < self.readahead_fills && !self.free_fills.is_empty() {
            let Some((src, next)) = self.store_jobs.front_mut() else {
                break;
            };
            let Some(e) = src.store.get() else {
                self.store_jobs.pop_front();
                continue;
            };
            if src.is_stale() || e.is_broken() || *next >= e.chunk_count() {
                self.store_jobs.pop_front();
                continue;
            }
            let chunk = *next;
            *next += 1;
            let key = Key {
                file: src.file_id,
                chunk,
            };
            if e.has(chunk) || self.in_flight.contains_key(&key) {
                continue;
            }
            let src = src.clone();
            if self.start_fill(&src, key, 0).is_none() {
                break;
            }
        }
    }

    /// The last chunk of a stored version landed (each checked against the source's stamp).
    fn finish_store(&mut self, src: &Arc<Source>, e: &Arc<Entry>) {
        if let Some(store) = self.shared.store.as_ref() {
            store.finish(e);
        }
        tracing::info!(
            "STORED {} ({} MiB): next opens are passthrough",
            src.name,
            src.size >> 20
        );
        self.purge(src.file_id);
    }

    /// Drops the chunks of a file version that changed. The kernel's side needs nothing from here:
    /// the open that noticed the change invalidated the inode's attributes and, by not setting
    /// FOPEN_KEEP_CACHE, its pages. (An asynchronous page invalidation from here raced with
    /// mmap faults of the new version and was removed.)
    fn purge(&mut self, file_id: u64) {
        let shared = self.shared.clone();
        let index = &shared.index;
        let mut dropped = 0u64;
        for slot in self.file_slots.take(file_id) {
            debug_assert!(self.policy.is_queued(slot) && index.key_of(slot).file == file_id);
            // A pinned chunk stays until eviction; its key can no longer be looked up by new opens.
            if let Some(view) = index.try_remove(slot) {
                self.policy.remove(slot);
                self.forget_block(view);
                self.free_slots.push(slot);
                dropped += 1;
            } else {
                self.file_slots.insert(file_id, slot);
            }
        }
        self.sources.remove(&file_id);
        tracing::debug!("purged {dropped} chunks of file id {file_id}");
    }
}

/// `pread` until `buf` is full or end of file; returns bytes read.
pub fn pread_full(
    fd: impl std::os::fd::AsFd,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(&fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(std::io::Error::from_raw_os_error(e.raw_os_error())),
        }
    }
    Ok(done)
}

/// The errno of an I/O error; EIO when it carries none.
pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod engine_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn source_of(path: &std::path::Path) -> Arc<Source> {
        super::engine_tests::source_at(path, 1, "t", None)
    }

    #[test]
    fn fd_stamp_matches_the_path_metadata() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").expect("write");
        let m = std::fs::metadata(&p).expect("stat");
        let src = source_of(&p);
        assert_eq!(
            src.stamp,
            (
                m.dev(),
                m.ino(),
                5,
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            )
        );
    }

    #[test]
    fn an_unchanged_file_still_holds_its_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10_000]).expect("write");
        let src = source_of(&p);
        assert!(src.still_holds());
        assert!(src.still_holds());
        assert!(!src.is_stale());
    }

    #[test]
    fn truncation_makes_the_version_stale_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10_000]).expect("write");
        let src = source_of(&p);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(100))
            .expect("truncate");
        assert!(!src.still_holds());
        assert!(src.is_stale());
        // Growing back to the old size does not make it this version again.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(10_000))
            .expect("extend");
        assert!(!src.still_holds());
    }

    #[test]
    fn an_in_place_write_of_the_same_size_makes_the_version_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10_000]).expect("write");
        let src = source_of(&p);
        // Same size: only mtime/ctime tell. Wait out coarse timestamp granularity first.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open for write");
        f.write_all(&[9u8; 100]).expect("write");
        drop(f);
        assert_eq!(std::fs::metadata(&p).expect("stat").len(), 10_000);
        assert!(!src.still_holds());
        assert!(src.is_stale());
    }

    #[test]
    fn a_file_replaced_by_rename_keeps_the_version_of_open_handles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10_000]).expect("write");
        let src = source_of(&p);
        // Rename over it: the path now names another inode; the held fd still reads the old one,
        // whose data did not change (only its ctime, by the unlink).
        let q = dir.path().join("g");
        std::fs::write(&q, vec![8u8; 10_000]).expect("write");
        std::fs::rename(&q, &p).expect("rename");
        assert!(
            src.still_holds(),
            "the held descriptor still reads the old inode"
        );
        std::fs::remove_file(&p).expect("unlink");
        assert!(
            src.still_holds(),
            "deleted: the held descriptor still reads the old inode"
        );
    }

    #[test]
    fn mark_stale_is_sticky() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").expect("write");
        let src = source_of(&p);
        src.mark_stale("test");
        src.mark_stale("again");
        assert!(src.is_stale());
        assert!(!src.still_holds());
    }
}
