//! What FUSE workers and the engine thread share, and the one copy path both use.
//!
//! Why one copy path: a worker's hit and the engine's answer to a parked request must agree on
//! what a chunk holds (store mapping, raw block or compressed pieces); two copies of that logic
//! could serve different bytes for the same offset.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::Mutex;

use super::{CompressMode, Source};
use crate::arena::Arena;
use crate::codec::{self, Scratch};
use crate::index::{Index, Key, PIECES, Pin};
use crate::store::Store;
use std::sync::Arc;

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
    /// Victims from main evicted uncompressed because the compression worker's queue was full.
    pub compress_dropped: AtomicU64,
    /// Encoded chunks thrown away because the chunk was filled again (or its version purged)
    /// while the worker encoded it.
    pub compress_discarded: AtomicU64,
    /// Chunks back from the ghost queue that the policy kept out of main (a loop larger than the
    /// pool keeps its resident subset; see `policy::s3fifo`).
    pub admissions_refused: AtomicU64,
    /// Resident compressed chunks: logical bytes they stand for and arena bytes they take (gauges).
    pub encoded_logical_bytes: AtomicU64,
    pub encoded_stored_bytes: AtomicU64,
    /// Compressed frames that failed their checksum (served from the source instead).
    pub decode_errors: AtomicU64,
    /// Opens answered with passthrough to a store file (their reads never reach the daemon).
    pub passthrough_opens: AtomicU64,
    /// Versions admitted to the store (each a whole-file fill).
    pub store_admissions: AtomicU64,
    /// Model sets found on an open, members queued for prefetch, and bytes their prefetch put
    /// in the cache (see `fuse::set_prefetch`).
    pub sets_found: AtomicU64,
    pub set_members_queued: AtomicU64,
    pub set_prefetch_bytes: AtomicU64,
    /// Set prefetches finished (every queued member done or given up), and their wall time
    /// summed, from the open that found the set to the last member done.
    pub sets_done: AtomicU64,
    pub set_prefetch_ms: AtomicU64,
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
