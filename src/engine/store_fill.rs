//! Whole-file fills into the store: admission against the one budget, then chunk fills in file order.
//!
//! Why admission is asymmetric: a first-time file may take only free room or idle store files
//! opened once, while a reused file may push out arena chunks and idle reused store files — so a
//! one-pass scan goes through the arena's S3-FIFO and cannot flush what was reused.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Engine;
use super::source::Source;
use crate::index::Key;
use crate::store::Entry;

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
        // A reused file may push out reused store files idle longer than its own reuse distance
        // (unknown: none); a first-time file only files opened once (see `Store::evict_one`).
        let distance = store.note_open(&src.stamp).unwrap_or(u64::MAX);
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
        match store.create(src.stamp, slabs) {
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
