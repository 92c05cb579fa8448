//! Making room: victims from the policy, compression of reused chunks, purges of changed files.
//!
//! Why the engine, not the policy, removes index entries: only the engine thread frees arena
//! blocks, and it may free a block only once the index entry is gone with no pin on it
//! (`Index::try_remove`); the policy just names candidates and the engine skips pinned ones.
//! Why compress at retirement: a chunk leaving the main queue was reused, so keeping it compressed
//! is likely to pay, while a one-pass scan leaves from the small queue and costs no encode work.
//! The encode runs on the compression worker (`compress.rs`), never on this thread.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::Ordering;

use super::Engine;
use crate::arena::Block;
use crate::index::{Form, FxHasher, Key, SlotView};

/// A slot the engine took out of the index on the policy's offer, with what it held (the engine
/// frees the block or compresses it).
pub(super) struct Victim {
    pub(super) slot: u32,
    pub(super) view: SlotView,
    /// It left the policy's main queue (it had been reused); a compressed tier may keep it.
    pub(super) from_main: bool,
    /// Its sample said it compresses (`would_keep` when it was filled).
    pub(super) keeps: bool,
}

/// The resident slots of each file id, so that a purge visits that file's slots only. One entry per
/// resident slot: a slot is listed from its publication until it leaves the index, under the file
/// of its key; lists are swap-removed and dropped when empty.
pub(super) struct FileSlots {
    pub(super) lists: HashMap<u64, Vec<u32>, BuildHasherDefault<FxHasher>>,
    /// Per slot: the file id it is listed under and its place in that list (`UNLISTED` if none).
    pub(super) file: Vec<u64>,
    pub(super) at: Vec<u32>,
}

pub(super) const UNLISTED: u32 = u32::MAX;

impl FileSlots {
    pub(super) fn new(slot_count: u32) -> FileSlots {
        FileSlots {
            lists: HashMap::default(),
            file: vec![0; slot_count as usize],
            at: vec![UNLISTED; slot_count as usize],
        }
    }

    pub(super) fn insert(&mut self, file: u64, slot: u32) {
        let s = slot as usize;
        debug_assert_eq!(self.at[s], UNLISTED, "slot {slot} listed twice");
        let list = self.lists.entry(file).or_default();
        self.file[s] = file;
        self.at[s] = list.len() as u32;
        list.push(slot);
    }

    pub(super) fn remove(&mut self, slot: u32) {
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
    pub(super) fn take(&mut self, file: u64) -> Vec<u32> {
        let list = self.lists.remove(&file).unwrap_or_default();
        for &slot in &list {
            self.at[slot as usize] = UNLISTED;
        }
        list
    }

    /// The slots listed under `file`.
    pub(super) fn of(&self, file: u64) -> &[u32] {
        self.lists.get(&file).map_or(&[], Vec::as_slice)
    }

    #[cfg(test)]
    pub(super) fn listed(&self, file: u64) -> usize {
        self.lists.get(&file).map_or(0, Vec::len)
    }
}

impl Engine {
    pub(super) fn alloc_slot(&mut self) -> Option<u32> {
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
    pub(super) fn take_victim(&mut self) -> Option<Victim> {
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
            keeps: pick.keeps,
        })
    }

    /// Frees a block that left the index, keeping the compressed-bytes gauges right.
    pub(super) fn forget_block(&mut self, view: SlotView) {
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

    /// A victim of the policy: handed to the compression worker when it came from main (it was
    /// reused: a ghost hit or a second touch), is raw and its sample said it compresses, else
    /// dropped. One-pass scans leave from
    /// the small queue and cost no compression work; a compressed victim is dropped, so each chunk
    /// is compressed at most once per residency. The worker's raw blocks stay allocated (they
    /// count against the pool) until `collect_compressed` publishes or frees them.
    pub(super) fn retire(&mut self, v: Victim) {
        let v = if v.from_main && v.keeps && v.view.form == Form::Raw {
            match self.offer_compression(v) {
                Some(v) => v,
                None => return,
            }
        } else {
            v
        };
        self.forget_block(v.view);
        self.free_slots.push(v.slot);
        self.shared.stats.evictions.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops one chunk from the cache (a corrupt compressed chunk), if nobody holds it.
    pub(super) fn drop_key(&mut self, key: Key) {
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

    pub(super) fn alloc_block(&mut self, bytes: usize) -> Option<Block> {
        // Bounded: each round frees one block (or hands one to the compression worker); a pool
        // full of pinned or packed blocks gives up. With the worker's queue full, the allocation
        // waits for it (None: the caller retries when the worker wakes the ring) rather than
        // dropping the next victim, which may be a reused chunk that was about to be compressed:
        // an encode takes about a millisecond, the chunk's next disk read longer (issue 10).
        for _ in 0..4096 {
            if let Some(b) = self.shared.arena.alloc(bytes) {
                return Some(b);
            }
            if self.compressor_full() {
                return None;
            }
            let v = self.take_victim()?;
            self.retire(v);
        }
        None
    }

    /// Drops the chunks of a file version that changed. The kernel's side needs nothing from here:
    /// the open that noticed the change invalidated the inode's attributes and, by not setting
    /// FOPEN_KEEP_CACHE, its pages. (An asynchronous page invalidation from here raced with
    /// mmap faults of the new version and was removed.)
    pub(super) fn purge(&mut self, file_id: u64) {
        let shared = self.shared.clone();
        let index = &shared.index;
        let mut dropped = 0u64;
        for slot in self.file_slots.take(file_id) {
            debug_assert!(
                (self.policy.is_queued(slot) || self.is_pinned(file_id))
                    && index.key_of(slot).file == file_id
            );
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
