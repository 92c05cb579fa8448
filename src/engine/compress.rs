//! The compressed tier's worker: reused chunks leaving the main queue are encoded on a thread of
//! their own, and the engine publishes the result.
//!
//! Why a worker: encoding costs ≈0.8 ms per MiB (byte planes + zstd), and a reuse-heavy load
//! evicts from main in storms (`alloc_block` may retire many victims for one fill); done inline,
//! every fill and every answer behind it waited for those encodes. The ring thread now only hands
//! the raw victim over and goes on filling.
//!
//! Why the engine still publishes: it alone allocates, inserts, evicts and frees (see `engine`),
//! so the worker gets a chunk that already left the index with no pins (`Detached`, which can only
//! be made from such a victim and is consumed when its block is freed), reads it, and hands back
//! encoded bytes in a buffer of its own. The raw block stays allocated until then, so it counts
//! against the pool; the engine frees it and allocates the pieces when it collects the result
//! (woken through the ring's eventfd).
//!
//! Why bounded, and waiting when full: at most `COMPRESS_JOBS` raw blocks wait for the worker.
//! Dropping the victims beyond that (as before issue 10) lost reused chunks in every eviction
//! storm, so a set that fits the pool only compressed kept missing; now an allocation that finds
//! the queue full waits for the worker instead (`alloc_block` fails, the request waits in the
//! backlog and is tried again when the worker wakes the ring; it is not counted as a lost round).
//! `compress_dropped` still counts a victim given back when the queue was full. A request for a chunk whose encode is in flight
//! waits for it (an encode takes about a millisecond, a disk read longer) and is then served from
//! the compressed chunk, or filled again if the encode did not pay.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender};
use nitro_ring::Waker;
use parking_lot::Mutex;

use super::evict::Victim;
use super::{CompressMode, Engine, Shared, Source};
use crate::arena::PAGE_BYTES;
use crate::codec::{self, Codec, DtypeHint, Scratch};
use crate::index::{Form, FxHasher, Key, PIECES, SlotView, pack_block};

/// Raw victims waiting for (or being encoded by) the worker, at most: 16 MiB at 1 MiB chunks. With
/// 3, `tests/compress_tier.rs` lost chunks in its eviction storms (30 of 140 victims dropped on
/// this 2-core machine) and never settled; with 16 it settles as with inline compression.
pub(super) const COMPRESS_JOBS: usize = 16;

/// A raw chunk that left the index with no pins: its block is read by whoever holds this and by
/// nobody else, and is freed only through `into_parts`, which consumes it. Not `Clone`.
pub(super) struct Detached {
    shared: Arc<Shared>,
    key: Key,
    slot: u32,
    view: SlotView,
    hint: DtypeHint,
}

impl Detached {
    /// # Safety
    /// `view` is raw and was returned by `Index::try_remove` for `slot` (no pins, not published
    /// any more), and its block is not freed or written until this value is consumed.
    unsafe fn new(shared: Arc<Shared>, key: Key, v: &Victim, hint: DtypeHint) -> Detached {
        debug_assert_eq!(v.view.form, Form::Raw);
        Detached {
            shared,
            key,
            slot: v.slot,
            view: v.view,
            hint,
        }
    }

    fn raw(&self) -> &[u8] {
        // SAFETY: see `new`: the block is nobody else's, and `shared` keeps the arena mapped.
        unsafe { self.shared.arena.bytes(self.view.block, self.view.len) }
    }

    /// Gives the block and slot back to the engine, which may free them: the proof is used up.
    fn into_parts(self) -> (Key, u32, SlotView) {
        (self.key, self.slot, self.view)
    }
}

struct Job {
    chunk: Detached,
    out: Vec<u8>,
}

/// An encoded chunk: `out` holds its pieces back to back, `spans` where (None: not worth it).
struct Done {
    chunk: Detached,
    codec: Codec,
    spans: Option<[(usize, usize); PIECES]>,
    out: Vec<u8>,
}

/// The engine's end of the worker.
pub(super) struct Compressor {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Output buffers not lent to a job (made at start-up, one per job place: `job_limit`).
    buffers: Vec<Vec<u8>>,
    pub(super) in_flight: usize,
    /// The keys being encoded, each with the requests parked on it (a list through
    /// `Waiter::next`, as on a fill).
    keys: HashMap<Key, Option<u32>, BuildHasherDefault<FxHasher>>,
    /// Held by the worker while it encodes; a test holds it to stall the worker.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) gate: Arc<Mutex<()>>,
}

/// Raw victims with the worker at most, for a pool of `slots` chunks: a sixteenth of the pool,
/// 2 to `COMPRESS_JOBS`. Why pool-relative: while a victim waits for the worker it is in no
/// queue, so a chunk coming back cannot be weighed against it; in a small pool 16 such chunks
/// (40% of a 38-chunk pool) left the policy choosing among too few and refusing returning chunks
/// (issue 10's BF16 loop: pass 3 refilled 6% of the set). Since a full queue makes fills wait
/// rather than drop victims, fewer places cost waiting, not misses.
fn job_limit(slots: usize) -> usize {
    (slots / 16).clamp(2, COMPRESS_JOBS)
}

impl Compressor {
    /// Starts the worker thread with every buffer it will use.
    pub(super) fn start(shared: &Arc<Shared>, waker: Waker) -> std::io::Result<Compressor> {
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(COMPRESS_JOBS);
        let (tx, done) = crossbeam_channel::bounded::<Done>(COMPRESS_JOBS);
        let gate = Arc::new(Mutex::new(()));
        let room = shared.chunk_bytes as usize + 64 * 1024;
        let (chunk_bytes, min_saving) = (shared.chunk_bytes as usize, shared.min_saving);
        let mode = shared.compress;
        let worker_gate = gate.clone();
        let thread = std::thread::Builder::new()
            .name("nitro-compress".into())
            .spawn(move || {
                let mut scratch = Scratch::new(codec::DEFAULT_FRAME_BYTES);
                let mut piece = Vec::with_capacity(room);
                for job in rx {
                    let _held = worker_gate.lock();
                    let enc = Encoder {
                        mode,
                        chunk_bytes,
                        min_saving,
                    };
                    let done = enc.encode(job, &mut scratch, &mut piece);
                    if tx.send(done).is_err() {
                        break;
                    }
                    waker.wake();
                }
            })?;
        Ok(Compressor {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            buffers: (0..job_limit(shared.index.slot_count() as usize))
                .map(|_| Vec::with_capacity(room))
                .collect(),
            in_flight: 0,
            keys: HashMap::with_capacity_and_hasher(COMPRESS_JOBS * 2, Default::default()),
            gate,
        })
    }
}

impl Drop for Compressor {
    /// Closes the queue and waits for the worker (it finishes what was queued; the results are
    /// dropped with their raw blocks, which only happens when the engine is going away).
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The encode itself, the same on the worker and (tests) inline.
struct Encoder {
    mode: CompressMode,
    chunk_bytes: usize,
    min_saving: f64,
}

impl Encoder {
    fn encode(&self, job: Job, scratch: &mut Scratch, piece: &mut Vec<u8>) -> Done {
        let Job { chunk, mut out } = job;
        let raw = chunk.raw();
        let codec = match self.mode {
            CompressMode::Auto => codec::choose(raw, chunk.hint),
            _ => Codec::Zstd,
        };
        let spans = (codec != Codec::Raw)
            .then(|| self.pieces(raw, codec, chunk.view, scratch, piece, &mut out))
            .flatten();
        Done {
            chunk,
            codec,
            spans,
            out,
        }
    }

    /// Encodes each piece into `out`; None when one does not save enough or the pieces would take
    /// as many pages as the raw block.
    fn pieces(
        &self,
        raw: &[u8],
        codec: Codec,
        view: SlotView,
        scratch: &mut Scratch,
        piece: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Option<[(usize, usize); PIECES]> {
        let piece_bytes = self.chunk_bytes / PIECES;
        let frame = codec::DEFAULT_FRAME_BYTES.min(piece_bytes);
        let mut spans = [(0usize, 0usize); PIECES];
        out.clear();
        for (i, part) in raw.chunks(piece_bytes).enumerate() {
            let n = codec::encode_chunk(part, codec, frame, self.min_saving, scratch, piece)?;
            spans[i] = (out.len(), n);
            out.extend_from_slice(&piece[..n]);
        }
        let used = view.logical_len.div_ceil(piece_bytes);
        let pages: usize = spans[..used]
            .iter()
            .map(|&(_, n)| n.div_ceil(PAGE_BYTES))
            .sum();
        (pages < view.block.pages as usize).then_some(spans)
    }
}

impl Engine {
    /// Whether a raw chunk just filled would be kept compressed if it left main (so displacing it
    /// loses nothing; see `policy::Entry::keeps`). A sample of the chunk, no encoding.
    pub(super) fn would_keep(&self, src: &Source, key: Key, view: SlotView) -> bool {
        if self.compressor.is_none() {
            return false;
        }
        let start = key.chunk * self.shared.chunk_bytes;
        let hint = src.hint_for(start, start + view.logical_len as u64);
        // SAFETY: a fill's block before it is published: only this thread uses it.
        let raw = unsafe { self.shared.arena.bytes(view.block, view.len) };
        match self.shared.compress {
            CompressMode::Auto => codec::choose(raw, hint) != Codec::Raw,
            CompressMode::Zstd => true,
            CompressMode::Off => false,
        }
    }

    /// Hands a raw victim from main to the worker. Gives it back when compression is off or the
    /// worker's queue is full (counted: such a victim is evicted, not compressed).
    pub(super) fn offer_compression(&mut self, v: Victim) -> Option<Victim> {
        let Some(c) = self.compressor.as_mut() else {
            return Some(v);
        };
        let Some(out) = c.buffers.pop() else {
            let s = &self.shared.stats;
            s.compress_dropped.fetch_add(1, Ordering::Relaxed);
            return Some(v);
        };
        let key = self.shared.index.key_of(v.slot);
        let start = key.chunk * self.shared.chunk_bytes;
        let hint = self
            .sources
            .get(&key.file)
            .and_then(std::sync::Weak::upgrade)
            .map_or(DtypeHint::Unknown, |s| {
                s.hint_for(start, start + v.view.logical_len as u64)
            });
        // SAFETY: a victim is out of the index with no pins (`take_victim`), raw (the caller
        // checked), and its block is freed only by `collect_compressed` after the job returns.
        let chunk = unsafe { Detached::new(self.shared.clone(), key, &v, hint) };
        let Some(jobs) = c.jobs.as_ref() else {
            c.buffers.push(out);
            return Some(v);
        };
        match jobs.try_send(Job { chunk, out }) {
            Ok(()) => {
                c.in_flight += 1;
                c.keys.insert(key, None);
                None
            }
            Err(e) => {
                // Cannot happen (one buffer per queue place), but never lose the block.
                let Job { chunk, out } = e.into_inner();
                c.buffers.push(out);
                let _ = chunk.into_parts();
                Some(v)
            }
        }
    }

    /// Publishes what the worker finished. Called after every wake-up of the ring.
    pub(super) fn collect_compressed(&mut self) {
        loop {
            let Some(c) = self.compressor.as_mut() else {
                return;
            };
            let Ok(done) = c.done.try_recv() else {
                return;
            };
            c.in_flight -= 1;
            let waiting = c.keys.remove(&done.chunk.key).flatten();
            self.publish_encoded(done);
            let mut next = waiting;
            while let Some(wi) = next {
                next = self.waiters[wi as usize]
                    .as_mut()
                    .and_then(|w| w.next.take());
                self.evaluate(wi);
            }
        }
    }

    /// Whether `key` is with the worker (out of the index, its raw block intact).
    pub(super) fn is_compressing(&self, key: Key) -> bool {
        self.compressor
            .as_ref()
            .is_some_and(|c| c.keys.contains_key(&key))
    }

    /// Parks request `wi` on a chunk the worker is encoding: it is evaluated again when the chunk
    /// is published (compressed) or given up (then it is filled again). False if not encoding.
    pub(super) fn park_on_compression(&mut self, key: Key, wi: u32) -> bool {
        let Some(head) = self.compressor.as_mut().and_then(|c| c.keys.get_mut(&key)) else {
            return false;
        };
        if let Some(w) = self.waiters[wi as usize].as_mut() {
            w.next = *head;
            *head = Some(wi);
        }
        true
    }

    /// Every job place is taken: room the worker will free comes back when it wakes the ring.
    pub(super) fn compressor_full(&self) -> bool {
        self.compressor
            .as_ref()
            .is_some_and(|c| c.buffers.is_empty())
    }

    /// Jobs not yet collected (the engine waits for them before it stops).
    pub(super) fn compressing(&self) -> usize {
        self.compressor.as_ref().map_or(0, |c| c.in_flight)
    }

    /// Replaces a finished victim's raw block by its encoded pieces, published again in its slot
    /// (straight to main: it was reused). Discarded when not worth it, or when the chunk was filled
    /// again or its version purged meanwhile.
    fn publish_encoded(&mut self, done: Done) {
        let Done {
            chunk,
            codec,
            spans,
            out,
        } = done;
        let (key, slot, raw) = chunk.into_parts();
        let stale = self.in_flight.contains_key(&key)
            || self.shared.index.contains(key)
            || !self.sources.contains_key(&key.file);
        // `place_pieces` frees the raw block itself; every other way it is freed here.
        let placed = match spans {
            Some(spans) if !stale => self.place_pieces(raw, &spans, &out),
            _ => {
                // SAFETY: the job came back (the proof is consumed): the raw block is ours alone.
                unsafe { self.shared.arena.free(raw.block) };
                None
            }
        };
        if let Some(c) = self.compressor.as_mut() {
            c.buffers.push(out);
        }
        let s = &self.shared.stats;
        let Some(view) = placed else {
            if stale {
                s.compress_discarded.fetch_add(1, Ordering::Relaxed);
            }
            self.free_slots.push(slot);
            s.evictions.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let stored = view.stored_bytes();
        self.shared.index.set(slot, key, view);
        self.shared.index.publish(slot, key, 0);
        if !self.is_pinned(key.file) {
            self.policy.insert_main(slot, key.hash64(), stored as u32);
        }
        self.file_slots.insert(key.file, slot);
        s.compressions.fetch_add(1, Ordering::Relaxed);
        s.encoded_logical_bytes
            .fetch_add(raw.logical_len as u64, Ordering::Relaxed);
        s.encoded_stored_bytes
            .fetch_add(stored as u64, Ordering::Relaxed);
        self.note_compressed(key, codec, raw.logical_len, stored);
    }

    /// Frees the raw block and copies the pieces into fresh blocks (they take fewer pages than it
    /// had, so its space alone holds them). None (nothing kept) if the arena refuses anyway.
    fn place_pieces(
        &mut self,
        raw: SlotView,
        spans: &[(usize, usize); PIECES],
        out: &[u8],
    ) -> Option<SlotView> {
        let arena = &self.shared.arena;
        // SAFETY: the raw block came back from the worker (its `Detached` is consumed) and is
        // out of the index: nothing reads it any more.
        unsafe { arena.free(raw.block) };
        let mut view = SlotView {
            block: raw.block,
            len: 0,
            logical_len: raw.logical_len,
            form: Form::Encoded,
            pieces: [0; PIECES],
        };
        let used = raw
            .logical_len
            .div_ceil(self.shared.chunk_bytes as usize / PIECES);
        for (i, &(at, n)) in spans[..used].iter().enumerate() {
            let Some(block) = arena.alloc(n) else {
                for b in view.blocks() {
                    // SAFETY: pieces allocated just above, never published.
                    unsafe { arena.free(b) };
                }
                tracing::warn!("compressed pieces did not fit where the raw chunk was");
                return None;
            };
            // SAFETY: a fresh block, not yet published: this thread is its only user.
            unsafe { arena.bytes_mut(block, n) }.copy_from_slice(&out[at..at + n]);
            view.pieces[i] = pack_block(block);
            view.len += n;
        }
        Some(view)
    }

    /// Per-file compressed gauges, and the COMPRESS line once per version.
    fn note_compressed(&self, key: Key, codec: Codec, logical: usize, stored: usize) {
        let Some(src) = self
            .sources
            .get(&key.file)
            .and_then(std::sync::Weak::upgrade)
        else {
            return;
        };
        let logical = src
            .compressed_logical_bytes
            .fetch_add(logical as u64, Ordering::Relaxed)
            + logical as u64;
        let stored = src
            .compressed_stored_bytes
            .fetch_add(stored as u64, Ordering::Relaxed)
            + stored as u64;
        if !src.compression_logged.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "COMPRESS {} [{} {:.2}x]",
                src.name,
                codec.name(),
                logical as f64 / stored.max(1) as f64
            );
        }
    }
}

#[cfg(test)]
impl Engine {
    /// Compresses a raw victim on this thread, as the worker would, and publishes it (tests that
    /// need a compressed chunk without a running engine).
    pub(super) fn compress_now(&mut self, v: Victim) -> bool {
        let key = self.shared.index.key_of(v.slot);
        // SAFETY: as in `offer_compression`; the caller took `v` out of the index.
        let chunk = unsafe { Detached::new(self.shared.clone(), key, &v, DtypeHint::Unknown) };
        let enc = Encoder {
            mode: self.shared.compress,
            chunk_bytes: self.shared.chunk_bytes as usize,
            min_saving: self.shared.min_saving,
        };
        let mut scratch = Scratch::new(codec::DEFAULT_FRAME_BYTES);
        let mut piece = Vec::new();
        let done = enc.encode(
            Job {
                chunk,
                out: Vec::new(),
            },
            &mut scratch,
            &mut piece,
        );
        let before = self.shared.stats.compressions.load(Ordering::Relaxed);
        self.publish_encoded(done);
        self.shared.stats.compressions.load(Ordering::Relaxed) > before
    }
}
