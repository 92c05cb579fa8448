//! The fill engine: one thread that owns the io_uring, the eviction policy and every allocation in
//! the arena.
//!
//! Why one owner thread: inserts, evictions and frees then need no coordination among themselves;
//! FUSE workers only ever pin and read published blocks (see `index`). A miss costs one channel send
//! and one eventfd write; the worker thread is free again at once and the reply is completed here,
//! from whichever thread the bytes land on, through the request's `ReadReply` (plain bytes or an
//! errno: the engine knows no FUSE type; `fuse::read` adapts fuser's reply to it).
//!
//! The contract with the front: a `Msg::Read` is a miss already clamped to the version's size; its
//! `ReadReply` is completed exactly once, on this thread, with the bytes or an errno (EIO for a
//! stale version or a dead engine). `tests.rs` drives this state machine without a mount.
//!
//! A read is followed in three files: `fuse/read.rs` (hit or send), `request.rs` (park, evaluate,
//! answer) and `fill.rs` (read the chunk, publish, wake the waiters); `evict.rs` makes room,
//! `uncached.rs` is the path of last resort, `store_fill.rs` fills whole files into the store.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crossbeam_channel::{Receiver, TryRecvError};
use nitro_ring::{Completion, Ring, Waker};

use crate::index::{FxHasher, Key};
use crate::policy::Policy;
use crate::policy::s3fifo::S3Fifo;

mod compress;
mod control;
mod evict;
mod fill;
mod prefetch_set;
mod request;
mod shared;
mod source;
mod store_fill;
mod uncached;

pub use control::{Admitted, Control, Evicted};
pub use prefetch_set::SetTicket;
pub use shared::{Copied, Shared, Stats, decode_into};
pub use source::{Origin, Source, Stamp, fd_stamp};

use evict::FileSlots;
use fill::Fill;
use request::Waiter;
use uncached::{UNCACHED_SLOTS, Uncached};

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
    /// From the control channel (warm, pin, evict): see `control.rs`.
    Control(Control),
    /// A member of a model set, prefetched into free room only (see `prefetch_set`); the ticket
    /// says when the engine is done with it.
    SetMember {
        src: Arc<Source>,
        ticket: Arc<SetTicket>,
    },
    Shutdown,
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
    /// The compression worker (None: `--compress off`).
    compressor: Option<compress::Compressor>,
    readahead_fills: usize,
    /// Versions being filled whole into the store, with the next chunk to start.
    store_jobs: VecDeque<(Arc<Source>, u64)>,
    /// Set members waiting for arena fills, and the fills that are theirs.
    sets: prefetch_set::Sets,
    /// When a reader last asked for something not cached (a miss or readahead): set prefetch
    /// yields to it (see `prefetch_set`).
    reader_seen: Option<std::time::Instant>,
    uncached: Vec<Uncached>,
    free_uncached: Vec<u32>,
    /// Uncached reads waiting for a slot.
    uncached_line: VecDeque<Waiter>,
    /// Test hook, see `FAULT_ENV`.
    panic_on: Option<String>,
    /// Cache ids pinned through the control channel: their chunks are kept out of the policy.
    pinned: std::collections::HashSet<u64, BuildHasherDefault<FxHasher>>,
    /// Ranged GETs of remote sources (None: the source is local), the channel their completions
    /// come back on, and how many are out (see `fetch`).
    fetcher: Option<crate::remote::Fetcher>,
    fetch_done: crossbeam_channel::Sender<Completion>,
    fetched: Receiver<Completion>,
    fetching: usize,
}

/// Fault injection for tests, read once when the engine starts:
/// `NITRO_URING_FAULT=engine-panic-on=NAME` makes the engine thread panic when it starts a fill for
/// a source file named NAME (tests/mount_engine_death.rs checks that a dead engine is loud).
pub const FAULT_ENV: &str = "NITRO_URING_FAULT";

impl Engine {
    /// `remote`: the bucket a remote source reads from (None: a local directory).
    pub fn new(
        shared: Arc<Shared>,
        rx: Receiver<Msg>,
        max_fills: usize,
        remote: Option<Arc<crate::remote::Client>>,
    ) -> std::io::Result<(Engine, Waker)> {
        assert!(max_fills >= 2);
        // Room for every fill and uncached read queued between two waits, and the wake poll.
        let mut ring = Ring::new(((max_fills + UNCACHED_SLOTS) as u32 + 2).next_power_of_two())?;
        // Why the arena is registered only without a store: registering pins its pages for the
        // ring's life, and a store borrows arena slabs, whose pages must go back to the kernel
        // (MADV_DONTNEED) for store + arena to stay within `--pool`. Pinned pages cannot go back:
        // MADV_DONTNEED would only unmap them here, so RAM would not be freed, and a slab given
        // back by the store would fault in fresh pages while fixed reads still wrote the pinned
        // ones — the arena served zeros. Registered buffers come in at most 16384 pieces, too few
        // to register slab by slab (a 1 MiB slab each), so with a store the ring reads unregistered.
        if shared.store.is_none() {
            // SAFETY: the arena lives in `shared`, which the engine holds for its whole life, and
            // the mapping is never moved or unmapped while the ring exists.
            match unsafe {
                ring.register_region(shared.arena.base_ptr(), shared.arena.usable_bytes())
            } {
                Ok(n) => {
                    shared.arena.set_ring_pinned();
                    tracing::debug!("registered arena with io_uring in {n} piece(s)");
                }
                Err(e) => {
                    tracing::info!("io_uring buffer registration refused ({e}); using plain reads")
                }
            }
        }
        let waker = ring.waker();
        let (fetch_done, fetched) = crossbeam_channel::unbounded();
        let fetcher =
            remote.map(|c| crate::remote::Fetcher::new(c, fetch_done.clone(), waker.clone()));
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
            compressor: match shared.compress {
                CompressMode::Off => None,
                _ => Some(compress::Compressor::start(&shared, waker.clone())?),
            },
            readahead_fills: max_fills.saturating_sub(max_fills / 4).max(1),
            store_jobs: VecDeque::new(),
            sets: prefetch_set::Sets::default(),
            reader_seen: None,
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
            pinned: Default::default(),
            fetcher,
            fetch_done,
            fetched,
            fetching: 0,
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
                self.pump_sets();
            }
            if !open && self.ring.in_flight() == 0 && self.compressing() == 0 && self.fetching == 0
            {
                break;
            }
            // GETs gathered into parts since the last wait go out now (see `remote::fetch`).
            if let Some(f) = self.fetcher.as_mut() {
                f.flush();
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
            while let Ok(c) = self.fetched.try_recv() {
                self.fetching -= 1;
                self.complete(c);
            }
            self.collect_compressed();
        }
        // Whatever is still parked gets an error rather than hanging the reader.
        self.fail_parked();
        self.drop_sets();
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
        self.drop_sets();
        loop {
            match self.rx.recv() {
                Ok(Msg::Read { reply, .. }) => reply.error(libc::EIO),
                Ok(Msg::Shutdown) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        if matches!(msg, Msg::Read { .. } | Msg::Prefetch { .. }) {
            self.reader_seen = Some(std::time::Instant::now());
        }
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
                    if !self.in_flight.contains_key(&key)
                        && !self.shared.index.contains(key)
                        && !self.is_compressing(key)
                    {
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
            Msg::Control(c) => self.control(c),
            Msg::SetMember { src, ticket } => self.set_member(src, ticket),
            Msg::DropCorrupt { key } => self.drop_key(key),
            Msg::Shutdown => {}
        }
    }
}

impl Engine {
    /// Starts a ranged GET into `ptr` whose completion comes back as `user_data`, like a ring
    /// read's.
    ///
    /// # Safety
    /// As for a ring read: `ptr..ptr + len` is writable and this request's alone until its
    /// completion is handled.
    unsafe fn fetch(
        &mut self,
        object: Arc<crate::remote::Object>,
        offset: u64,
        ptr: *mut u8,
        len: usize,
        user_data: u64,
    ) {
        self.fetching += 1;
        match self.fetcher.as_mut() {
            // SAFETY: passed on from the caller.
            Some(f) => unsafe { f.submit(object, offset, ptr, len, user_data) },
            None => {
                // A remote version on an engine with no bucket: fails like a read error.
                let _ = self.fetch_done.send(Completion {
                    user_data,
                    result: -libc::EIO,
                });
                self.ring.waker().wake();
            }
        }
    }
}

impl Drop for Engine {
    /// A GET still out writes into a fill's block or an uncached buffer: wait for each (every
    /// one completes, bounded by the request timeout and retries) before those can go.
    fn drop(&mut self) {
        if let Some(f) = self.fetcher.as_mut() {
            f.flush();
        }
        while self.fetching > 0 && self.fetched.recv().is_ok() {
            self.fetching -= 1;
        }
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
mod tests;
