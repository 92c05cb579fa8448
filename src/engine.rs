//! The fill engine: one thread that owns the io_uring, the eviction policy and every allocation in
//! the arena.
//!
//! Why one owner thread: inserts, evictions and frees then need no coordination among themselves;
//! FUSE workers only ever pin and read published blocks (see `index`). A miss costs one channel send
//! and one eventfd write; the worker thread is free again at once and the reply is completed here,
//! from whichever thread the bytes land on (fuser replies are `Send`).
//!
//! Why the request is re-evaluated after every fill instead of being assembled piecewise: a read
//! can span two chunks; keeping the waiter's state as "the request" (not "the bytes gathered so far")
//! means no per-request buffer is needed, and a chunk evicted in between is simply filled again. A
//! request that keeps losing that race (a pool of a few chunks under heavy churn) is served by an
//! uncached read so it always finishes.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, TryRecvError};
use fuser::{Errno, ReplyData};
use nitro_ring::{Completion, Ring, Waker};
use parking_lot::Mutex;

use crate::arena::{Arena, Block, PAGE_BYTES};
use crate::index::{Form, FxHasher, Index, Key, SlotView};
use crate::policy::s3fifo::S3Fifo;

/// One version of one source file. A rewrite or replacement of the source gets a new `Source` with a
/// new `file_id`, so chunks of the old version can never be served for the new one.
pub struct Source {
    pub file_id: u64,
    /// Buffered descriptor: always present; used when O_DIRECT is refused.
    pub fd: OwnedFd,
    /// O_DIRECT descriptor, when the source filesystem allows it (keeps the source out of the page
    /// cache, so the bytes are cached once, in the arena).
    pub direct_fd: Option<OwnedFd>,
    pub size: u64,
    /// File name for log lines.
    pub name: Arc<str>,
    /// Kernel inode number of the mount, for page-cache invalidation.
    pub fuse_ino: u64,
}

/// Messages from FUSE workers to the engine. Sent over a bounded channel: no allocation per send.
pub enum Msg {
    Read {
        src: Arc<Source>,
        offset: u64,
        size: u32,
        reply: ReplyData,
    },
    /// Fill chunks `first..=last` ahead of a sequential reader.
    Prefetch {
        src: Arc<Source>,
        first: u64,
        last: u64,
    },
    /// A source file changed: drop the chunks of its old version and the kernel's pages.
    Purge {
        file_id: u64,
        fuse_ino: u64,
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
}

impl Shared {
    pub fn chunk_of(&self, offset: u64) -> u64 {
        offset / self.chunk_bytes
    }

    /// Copies `[offset, offset+out.len())` of `src` from pinned chunks into `out`, or returns false
    /// if any chunk is missing. Used by both the FUSE hit path and the engine.
    pub fn copy_cached(&self, src: &Source, offset: u64, out: &mut [u8], touch: bool) -> bool {
        let end = offset + out.len() as u64;
        let mut pos = offset;
        while pos < end {
            let chunk = self.chunk_of(pos);
            let key = Key {
                file: src.file_id,
                chunk,
            };
            let Some(pin) = self.index.pin(key, touch) else {
                return false;
            };
            let view = pin.view();
            let in_chunk = (pos - chunk * self.chunk_bytes) as usize;
            let take = ((end - pos) as usize).min(view.logical_len.saturating_sub(in_chunk));
            if take == 0 || view.form != Form::Raw {
                return false;
            }
            let dst = &mut out[(pos - offset) as usize..][..take];
            // SAFETY: the pin keeps the block published and unwritten while we copy.
            dst.copy_from_slice(
                &unsafe { self.arena.bytes(view.block, view.len) }[in_chunk..][..take],
            );
            pos += take as u64;
        }
        true
    }
}

/// A request parked until a chunk it needs is filled.
struct Waiter {
    src: Arc<Source>,
    offset: u64,
    size: u32,
    reply: ReplyData,
    /// How often it has been re-evaluated; bounded so it cannot starve.
    rounds: u8,
    next: Option<u32>,
}

struct Fill {
    key: Key,
    slot: u32,
    block: Block,
    src: Arc<Source>,
    /// Logical bytes of the chunk (short for the last chunk of a file).
    want_bytes: u32,
    done_bytes: u32,
    direct: bool,
    waiters: Option<u32>,
}

const MAX_ROUNDS: u8 = 6;

pub struct Engine {
    shared: Arc<Shared>,
    ring: Ring,
    rx: Receiver<Msg>,
    notifier: Option<fuser::Notifier>,
    policy: S3Fifo,
    free_slots: Vec<u32>,
    fills: Vec<Option<Fill>>,
    free_fills: Vec<u32>,
    in_flight: HashMap<Key, u32, BuildHasherDefault<FxHasher>>,
    waiters: Vec<Option<Waiter>>,
    free_waiters: Vec<u32>,
    /// Requests that could not start a fill (fill table full, or no block could be freed).
    backlog: VecDeque<u32>,
    completions: Vec<Completion>,
    scratch: Vec<u8>,
    readahead_fills: usize,
}

impl Engine {
    pub fn new(
        shared: Arc<Shared>,
        rx: Receiver<Msg>,
        max_fills: usize,
    ) -> std::io::Result<(Engine, Waker)> {
        assert!(max_fills >= 2);
        let mut ring = Ring::new((max_fills as u32 + 2).next_power_of_two())?;
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
            policy: S3Fifo::new(slot_count),
            free_slots: (0..slot_count).rev().collect(),
            fills: (0..max_fills).map(|_| None).collect(),
            free_fills: (0..max_fills as u32).rev().collect(),
            in_flight: HashMap::with_capacity_and_hasher(max_fills * 2, Default::default()),
            waiters: (0..waiter_capacity).map(|_| None).collect(),
            free_waiters: (0..waiter_capacity as u32).rev().collect(),
            backlog: VecDeque::with_capacity(waiter_capacity),
            completions: Vec::with_capacity(max_fills + 2),
            scratch: vec![0; shared.max_request_bytes.max(shared.chunk_bytes as usize)],
            readahead_fills: max_fills.saturating_sub(max_fills / 4).max(1),
            shared,
            ring,
            rx,
            notifier: None,
        };
        Ok((engine, waker))
    }

    /// Lets purges drop the kernel's cached pages too (the notifier exists once mounted).
    pub fn with_notifier(mut self, notifier: fuser::Notifier) -> Engine {
        self.notifier = Some(notifier);
        self
    }

    /// Runs until `Msg::Shutdown` (or every sender is gone) and all reads in flight are done.
    pub fn run(mut self) {
        let mut open = true;
        loop {
            while open {
                match self.rx.try_recv() {
                    Ok(Msg::Shutdown) | Err(TryRecvError::Disconnected) => open = false,
                    Ok(msg) => self.handle(msg),
                    Err(TryRecvError::Empty) => break,
                }
            }
            self.drain_backlog();
            if !open && self.ring.in_flight() == 0 {
                break;
            }
            let mut done = std::mem::take(&mut self.completions);
            if let Err(e) = self.ring.wait(true, &mut done) {
                tracing::error!("io_uring wait failed: {e}");
                break;
            }
            for c in done.drain(..) {
                self.complete(c);
            }
            self.completions = done;
        }
        // Whatever is still parked gets an error rather than hanging the reader.
        for w in self.waiters.iter_mut() {
            if let Some(w) = w.take() {
                w.reply.error(Errno::EIO);
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Read {
                src,
                offset,
                size,
                reply,
            } => {
                let w = self.park(Waiter {
                    src,
                    offset,
                    size,
                    reply,
                    rounds: 0,
                    next: None,
                });
                self.evaluate(w);
            }
            Msg::Prefetch { src, first, last } => {
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
                        if self.start_fill(&src, key).is_none() {
                            break;
                        }
                        self.shared
                            .stats
                            .prefetch_fills
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Msg::Purge { file_id, fuse_ino } => self.purge(file_id, fuse_ino),
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
        let (src, offset, size, rounds) = {
            let w = self.waiters[wi as usize].as_ref().expect("parked");
            (w.src.clone(), w.offset, w.size, w.rounds)
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
            if !self.shared.index.contains(key) {
                if missing.is_none() {
                    missing = Some(key);
                } else if !self.in_flight.contains_key(&key) {
                    // Fill the other chunks of a spanning read in parallel.
                    let _ = self.start_fill(&src, key);
                }
            }
        }
        let Some(key) = missing else {
            // Only this thread evicts, so what is present now stays present while we copy.
            let out = &mut self.scratch[..size as usize];
            let ok = self.shared.copy_cached(&src, offset, out, false);
            let w = self.unpark(wi);
            if ok {
                w.reply.data(&self.scratch[..size as usize]);
            } else {
                self.serve_uncached(w);
            }
            return;
        };
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
            None => self.start_fill(&src, key),
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

    /// Reads the request straight from the source into scratch, bypassing the arena. The slow path
    /// of last resort; it keeps progress guaranteed when the arena cannot hold the request.
    fn serve_uncached(&mut self, w: Waiter) {
        self.shared
            .stats
            .uncached_reads
            .fetch_add(1, Ordering::Relaxed);
        let buf = &mut self.scratch[..w.size as usize];
        match pread_full(&w.src.fd, buf, w.offset) {
            Ok(n) => w.reply.data(&self.scratch[..n]),
            Err(e) => w.reply.error(errno_of(&e)),
        }
    }

    fn alloc_slot(&mut self) -> Option<u32> {
        if let Some(s) = self.free_slots.pop() {
            return Some(s);
        }
        let v = self.policy.evict(&self.shared.index)?;
        self.shared.arena.free(v.view.block);
        self.shared.stats.evictions.fetch_add(1, Ordering::Relaxed);
        Some(v.slot)
    }

    fn alloc_block(&mut self, bytes: usize) -> Option<Block> {
        // Bounded: each round frees one block; a pool full of pinned or packed blocks gives up.
        for _ in 0..4096 {
            if let Some(b) = self.shared.arena.alloc(bytes) {
                return Some(b);
            }
            let v = self.policy.evict(&self.shared.index)?;
            self.shared.arena.free(v.view.block);
            self.free_slots.push(v.slot);
            self.shared.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// Starts filling `key` from `src`. None if the fill table is full or no space can be made.
    fn start_fill(&mut self, src: &Arc<Source>, key: Key) -> Option<u32> {
        debug_assert!(!self.in_flight.contains_key(&key));
        let chunk_start = key.chunk * self.shared.chunk_bytes;
        if chunk_start >= src.size {
            return None;
        }
        let want = (src.size - chunk_start).min(self.shared.chunk_bytes) as usize;
        let f = self.free_fills.pop()?;
        let Some(slot) = self.alloc_slot() else {
            self.free_fills.push(f);
            return None;
        };
        let Some(block) = self.alloc_block(want) else {
            self.free_slots.push(slot);
            self.free_fills.push(f);
            return None;
        };
        let direct = src.direct_fd.is_some();
        self.fills[f as usize] = Some(Fill {
            key,
            slot,
            block,
            src: src.clone(),
            want_bytes: want as u32,
            done_bytes: 0,
            direct,
            waiters: None,
        });
        self.in_flight.insert(key, f);
        self.submit(f);
        self.shared.stats.fills.fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    fn submit(&mut self, f: u32) {
        let fill = self.fills[f as usize].as_ref().expect("fill");
        let done = fill.done_bytes as usize;
        let (fd, len) = match (&fill.src.direct_fd, fill.direct) {
            // O_DIRECT wants page-aligned lengths; the block has room for the rounded length and the
            // kernel stops at end of file.
            (Some(d), true) => (
                d.as_raw_fd(),
                (fill.want_bytes as usize - done).next_multiple_of(PAGE_BYTES),
            ),
            _ => (fill.src.fd.as_raw_fd(), fill.want_bytes as usize - done),
        };
        assert!(done + len <= fill.block.capacity_bytes());
        let offset = fill.key.chunk * self.shared.chunk_bytes + done as u64;
        // SAFETY: the block belongs to this fill alone until it is published or freed in
        // `complete`, and `fill.src` keeps the descriptor open until then.
        let ptr = unsafe { self.shared.arena.block_ptr(fill.block).add(done) };
        // SAFETY: as above.
        let pushed = unsafe {
            self.ring
                .push_read(fd, offset, ptr, len as u32, u64::from(f))
        };
        // The fill table is no larger than the ring, so there is always room.
        assert!(pushed, "ring full with {} fills", self.ring.in_flight());
    }

    fn complete(&mut self, c: Completion) {
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
        if c.result > 0 {
            fill.done_bytes = (fill.done_bytes + c.result as u32).min(fill.want_bytes);
            if fill.done_bytes < fill.want_bytes {
                self.submit(f);
                return;
            }
        }
        let fill = self.fills[f as usize].take().expect("fill");
        self.free_fills.push(f);
        self.in_flight.remove(&fill.key);
        if c.result <= 0 {
            // A source error, or end of file before the size we saw at open (file shrank).
            let errno = if c.result < 0 {
                Errno::from_i32(-c.result)
            } else {
                Errno::EIO
            };
            self.shared.arena.free(fill.block);
            self.free_slots.push(fill.slot);
            self.shared
                .stats
                .fill_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "ERROR {} chunk {}: {}",
                fill.src.name,
                fill.key.chunk,
                std::io::Error::from_raw_os_error(errno.code())
            );
            let mut next = fill.waiters;
            while let Some(wi) = next {
                let w = self.unpark(wi);
                next = w.next;
                w.reply.error(errno);
            }
            return;
        }
        if !fill.direct {
            // Buffered fallback: drop the source's page-cache copy, the arena holds the bytes now.
            let offset = fill.key.chunk * self.shared.chunk_bytes;
            // SAFETY: advisory call on a descriptor we hold open; no memory is passed.
            unsafe {
                libc::posix_fadvise(
                    fill.src.fd.as_raw_fd(),
                    offset as i64,
                    i64::from(fill.want_bytes),
                    libc::POSIX_FADV_DONTNEED,
                );
            }
        }
        let view = SlotView {
            block: fill.block,
            len: fill.want_bytes as usize,
            logical_len: fill.want_bytes as usize,
            form: Form::Raw,
        };
        self.shared.index.set(fill.slot, fill.key, view);
        self.shared.index.publish(fill.slot, fill.key);
        self.policy.insert(
            fill.slot,
            fill.key.hash64(),
            fill.block.pages * PAGE_BYTES as u32,
        );
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

    fn purge(&mut self, file_id: u64, fuse_ino: u64) {
        let index = &self.shared.index;
        let mut dropped = 0u64;
        for slot in 0..index.slot_count() {
            if !self.policy.is_queued(slot) || index.key_of(slot).file != file_id {
                continue;
            }
            // A pinned chunk stays until eviction; its key can no longer be looked up by new opens.
            if let Some(view) = index.try_remove(slot) {
                self.policy.remove(slot);
                self.shared.arena.free(view.block);
                self.free_slots.push(slot);
                dropped += 1;
            }
        }
        if let Some(n) = &self.notifier {
            // Outside any request handler, so this cannot deadlock against the kernel's inode lock.
            let _ = n.inval_inode(fuser::INodeNo(fuse_ino), 0, 0);
        }
        tracing::debug!("purged {dropped} chunks of file id {file_id}");
    }
}

/// `pread` until `buf` is full or end of file; returns bytes read.
pub fn pread_full(fd: &OwnedFd, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    // Borrow the descriptor as a File without taking ownership.
    let file = std::mem::ManuallyDrop::new(
        // SAFETY: the fd is valid for the duration of this call and ManuallyDrop never closes it.
        unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd.as_raw_fd()) },
    );
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

pub fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}
