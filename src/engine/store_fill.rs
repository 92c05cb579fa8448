//! Whole-file fills into the store: admission against the one budget, then chunk fills in file order.
//!
//! Why admission is asymmetric: a first-time file may take only free room or idle store files
//! opened once, while a reused file may push out arena chunks and idle reused store files — so a
//! one-pass scan goes through the arena's S3-FIFO and cannot flush what was reused.
//!
//! Why a reused file may be kept out (issue 10): a loop of files read again and again that does
//! not fit the pool raw but fits it in the arena's compressed tier is cached whole only if enough
//! of its files that compress are held compressed. Raw store copies of them (passthrough is
//! faster per read) can leave too little of the pool for the rest even compressed, and every pass
//! then reads a third to a half of the loop from the disk. So when a reused file that compresses
//! comes back after such a loop (its reuse distance in bytes, raw and expected compressed, from
//! the store's clock), the loop is weighed as the store would hold it: its stored files raw, the
//! rest compressed. If the newcomer fits raw on top of that, it is stored as before; if not, it
//! stays in the arena, and if even that is too much, the loop's idle store files that compress
//! are dropped (those that save most first) until the loop fits: they are read once more, into
//! the arena, and the whole loop stays from then on. Files of a loop that fits raw are still
//! stored, and a loop that does not fit even compressed keeps a stable subset stored as before.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Engine;
use super::source::Source;
use crate::index::Key;
use crate::store::{Entry, Reuse, compresses};

/// Share of the pool (in 16ths) a loop may take compressed and still count as fitting: the rest
/// is slack for the pieces' page rounding and the raw chunks in flight.
const FIT_SIXTEENTHS: u64 = 15;

impl Engine {
    /// Admits a version to the store if its budget can be found: free arena slabs first; then
    /// idle store files opened only once; a reused version (opened before) may also evict arena
    /// chunks and idle reused store files. A first-time file never pushes out what was reused, so
    /// a one-pass scan cannot flush the store (it goes through the arena's S3-FIFO instead).
    pub(super) fn admit(&mut self, src: Arc<Source>, reused: bool) {
        let shared = self.shared.clone();
        let Some(store) = shared.store.as_ref() else {
            return;
        };
        if src.store.get().is_some() || src.is_stale() || src.size < store.min_bytes() {
            return;
        }
        let packed = src.expected_stored_bytes();
        if let Some(e) = store.lookup(&src.stamp, packed) {
            let complete = e.is_complete();
            let _ = src.store.set(e);
            if !complete {
                self.store_jobs.push_back((src, 0));
            }
            return;
        }
        let reuse = store.note_open(&src.stamp, packed);
        let slabs = store.slabs_for(src.size);
        if slabs > store.cap_slabs {
            tracing::debug!("store: {} does not fit ({} slabs)", src.name, slabs);
            return;
        }
        if let Some(r) = reuse.filter(|_| reused)
            && self.keeps_loop_compressed(&src, packed, r)
        {
            return;
        }
        let arena = &shared.arena;
        arena.give_back(store.sweep_incomplete());
        // A reused file may push out reused store files idle longer than its own reuse distance
        // (unknown: none); a first-time file only files opened once (see `Store::evict_one`).
        let distance = reuse.map_or(u64::MAX, |r| r.opens);
        let (max_uses, idle_over) = if reused {
            (u64::MAX, distance)
        } else {
            (1, u64::MAX)
        };
        let mut granted = false;
        for _ in 0..=arena.slab_count() {
            if store.held_slabs().saturating_add(slabs) > store.cap_slabs {
                match store.evict_one(max_uses, idle_over) {
                    Some(n) => arena.give_back(n),
                    None => break,
                }
                continue;
            }
            if arena.lend(slabs) {
                granted = true;
                break;
            }
            if let Some(n) = store.evict_one(1, u64::MAX) {
                arena.give_back(n);
            } else if !reused {
                break;
            } else if let Some(v) = self.take_victim() {
                self.forget_block(v.view);
                self.free_slots.push(v.slot);
                self.shared.stats.evictions.fetch_add(1, Ordering::Relaxed);
            } else if let Some(n) = store.evict_one(u64::MAX, idle_over) {
                arena.give_back(n);
            } else {
                break;
            }
        }
        if !granted {
            tracing::debug!("store: no room for {} now", src.name);
            return;
        }
        match store.create(src.stamp, slabs, packed) {
            Ok(e) => {
                tracing::info!(
                    "STORE {} ({} MiB): filling it whole",
                    src.name,
                    src.size >> 20
                );
                if reused {
                    e.mark_reused();
                }
                self.shared
                    .stats
                    .store_admissions
                    .fetch_add(1, Ordering::Relaxed);
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

    /// For `src` (expected to take `packed` bytes compressed), back after a loop `r` that does
    /// not fit the pool raw but fits it compressed: true when it stays in the arena, after the
    /// loop's store files that keep the rest from fitting were dropped (see the module doc).
    /// False (admit as usual) for any other loop, or when it fits raw too.
    fn keeps_loop_compressed(&self, src: &Source, packed: u64, r: Reuse) -> bool {
        let Some(store) = self.shared.store.as_ref() else {
            return false;
        };
        let fit = self.shared.arena.pool_bytes() as u64 / 16 * FIT_SIXTEENTHS;
        let min_saving = self.shared.min_saving;
        if !compresses(src.size, packed, min_saving) || r.bytes <= fit || r.packed > fit {
            return false;
        }
        // The loop as the store holds it: its stored files raw, the rest compressed.
        let held = r.packed.saturating_add(store.raw_premium(r.opens));
        if held.saturating_add(src.size.saturating_sub(packed)) <= fit {
            return false;
        }
        let (files, bytes, slabs) =
            store.evict_compressible(r.opens, min_saving, held.saturating_sub(fit));
        self.shared.arena.give_back(slabs);
        if files > 0 {
            tracing::info!(
                "UNSTORE {files} file(s), {} MiB: a loop of {} MiB fits the pool only compressed \
                 (≈{} MiB), so it is kept in the arena",
                bytes >> 20,
                r.bytes >> 20,
                r.packed >> 20
            );
        }
        // Its chunks come back to the arena with no ghost history: tell the policy they are reused.
        src.loop_bytes.store(r.bytes, Ordering::Relaxed);
        tracing::debug!(
            "store: {} stays in the arena (its loop: {} MiB, ≈{} MiB compressed)",
            src.name,
            r.bytes >> 20,
            r.packed >> 20
        );
        true
    }

    /// Starts store fills, in file order, while the ring has room beyond what readers need.
    pub(super) fn pump_store(&mut self) {
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
    pub(super) fn finish_store(&mut self, src: &Arc<Source>, e: &Arc<Entry>) {
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
}
