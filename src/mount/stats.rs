//! One reading of every counter and gauge, for the heartbeat, `stats`, `/metrics` and the bench.
//!
//! Why a plain copy: readers on other threads (the control socket, the bench) get numbers that do
//! not move while they format them; each field is one relaxed load.

use std::sync::atomic::Ordering;

use crate::engine::{Shared, Stats};
use crate::store::Store;

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StatsSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub fills: u64,
    pub fill_bytes: u64,
    pub prefetch_fills: u64,
    pub evictions: u64,
    pub fill_errors: u64,
    pub invalidations: u64,
    pub uncached_reads: u64,
    pub compressions: u64,
    /// Victims from main evicted uncompressed (compression queue full), encodes thrown away (the
    /// chunk was read again meanwhile), chunks the policy kept out of main (see `engine::Stats`).
    pub compress_dropped: u64,
    pub compress_discarded: u64,
    pub admissions_refused: u64,
    pub decode_errors: u64,
    /// Logical bytes the resident compressed chunks stand for, and the arena bytes they take.
    pub encoded_logical_bytes: u64,
    pub encoded_stored_bytes: u64,
    /// Logical bytes cached (raw + decoded size of compressed) per pool byte used.
    pub logical_cached_bytes: u64,
    pub pool_used_bytes: u64,
    pub pool_bytes: u64,
    pub index_overhead_bytes: u64,
    /// Whole files in the store (tmpfs), how many are complete (passthrough-ready), the bytes
    /// they hold (part of `pool_used_bytes`), and opens answered with passthrough.
    pub store_files: u64,
    pub store_complete_files: u64,
    pub store_bytes: u64,
    pub passthrough_opens: u64,
    pub store_admissions: u64,
    /// Model sets found, members queued, bytes prefetched, set prefetches finished.
    pub sets_found: u64,
    pub set_members_queued: u64,
    pub set_prefetch_bytes: u64,
    pub sets_done: u64,
    pub set_prefetch_ms: u64,
}

pub fn snapshot(shared: &Shared) -> StatsSnapshot {
    let s: &Stats = &shared.stats;
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let store = shared.store.as_ref().map(Store::usage).unwrap_or_default();
    let arena_used = shared.arena.usage().used_bytes;
    let used = arena_used + store.resident_bytes;
    StatsSnapshot {
        store_files: store.files,
        store_complete_files: store.complete_files,
        store_bytes: store.resident_bytes,
        passthrough_opens: r(&s.passthrough_opens),
        store_admissions: r(&s.store_admissions),
        sets_found: r(&s.sets_found),
        set_members_queued: r(&s.set_members_queued),
        set_prefetch_bytes: r(&s.set_prefetch_bytes),
        sets_done: r(&s.sets_done),
        set_prefetch_ms: r(&s.set_prefetch_ms),
        hits: r(&s.hits),
        misses: r(&s.misses),
        fills: r(&s.fills),
        fill_bytes: r(&s.fill_bytes),
        prefetch_fills: r(&s.prefetch_fills),
        evictions: r(&s.evictions),
        fill_errors: r(&s.fill_errors),
        invalidations: r(&s.invalidations),
        uncached_reads: r(&s.uncached_reads),
        compressions: r(&s.compressions),
        compress_dropped: r(&s.compress_dropped),
        compress_discarded: r(&s.compress_discarded),
        admissions_refused: r(&s.admissions_refused),
        decode_errors: r(&s.decode_errors),
        encoded_logical_bytes: r(&s.encoded_logical_bytes),
        encoded_stored_bytes: r(&s.encoded_stored_bytes),
        logical_cached_bytes: used - r(&s.encoded_stored_bytes).min(arena_used)
            + r(&s.encoded_logical_bytes),
        pool_used_bytes: used,
        pool_bytes: shared.arena.pool_bytes() as u64,
        index_overhead_bytes: shared.index.overhead_bytes() as u64,
    }
}
