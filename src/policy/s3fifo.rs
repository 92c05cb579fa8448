//! S3-FIFO (Yang et al., SOSP'23): a small probationary FIFO, a main FIFO and a ghost FIFO of keys.
//!
//! Why this policy: model loads are long sequential scans, often larger than the pool. LRU lets one
//! `cat` of a 40 GB shard flush everything; S3-FIFO admits new chunks to a small queue (10% of the
//! bytes) and promotes only those touched again while there, so a one-pass scan cycles through the
//! small queue and the hot set in main survives. The ghost queue remembers recently evicted keys so a
//! chunk that comes back soon goes straight to main. FIFO queues also mean a hit is one relaxed
//! store of a counter, with no list surgery under a lock.
//!
//! Why an admission rule on top (issue 10): a working set larger than the pool read again and again
//! (a loop) sends every chunk to the ghost queue and back, so plain S3-FIFO admits each returning
//! chunk to main by evicting another one that will be read just as soon: everything cycles and a
//! pass hits only by chance. For a loop the best a cache can do is keep a fixed subset. So a chunk
//! that comes back from the ghost queue while main is full is admitted only if main's next victim
//! is worth less: one that leaving main would merely be compressed (`Chunk::keeps`: nothing is
//! lost), or one that has gone unused for longer than the candidate's own reuse distance (the
//! Belady intuition behind LIRS). Otherwise it waits in the small queue like a new chunk and
//! leaves from there, and the resident subset stays. Distances are measured on a clock of bytes
//! inserted (misses), the only events this thread sees; a main chunk's last use is its insertion,
//! refreshed whenever the hand finds it was hit since. A working set that changes still gets in:
//! the old chunks stop being hit, their unused time grows past the newcomers' reuse distance.
//!
//! Why main gives up compressed chunks last (issue 10, a loop that fits the pool only compressed):
//! a raw chunk that compresses (`Chunk::keeps`) leaving main is only shrunk, a compressed one is
//! lost. So while main holds raw chunks that compress, its hand passes over compressed ones (as if
//! they had been hit), and a returning chunk is always admitted: the room it takes is made by
//! compressing, not by dropping. A set that fits compressed thus ends up whole in the arena after
//! the pass that brought it all back, instead of losing a compressed chunk per miss and missing it
//! on the next pass.
//!
//! The access counter lives in the index slot (readers bump it); the queues live here and are owned
//! by the one thread that inserts and evicts. Entries carry a generation so a slot removed out of
//! band (invalidation) and reused later is not evicted through a stale queue entry.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use super::{AccessCounts, Chunk, Pick, Policy};
use crate::index::FxHasher;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    None,
    Small,
    Main,
}

pub struct S3Fifo {
    small: VecDeque<(u32, u32)>,
    main: VecDeque<(u32, u32)>,
    queue: Vec<Queue>,
    generation: Vec<u32>,
    bytes: Vec<u32>,
    /// Each queued slot's key hash, for the ghost queue when it leaves.
    hashes: Vec<u64>,
    /// Per slot: `clock` at its last known use (insertion, or the hand finding it hit since).
    last_use: Vec<u64>,
    /// Per slot: `Chunk::keeps`.
    keeps: Vec<bool>,
    /// Bytes inserted so far: the time base of reuse distances.
    clock: u64,
    refused: u64,
    /// Main has evicted since its share was last below `ROOM_PERCENT`.
    main_full: bool,
    small_bytes: u64,
    main_bytes: u64,
    /// Bytes of main's raw chunks that would be compressed on leaving it (`keeps`).
    main_keeps: u64,
    ghost: VecDeque<u64>,
    /// Per ghost key: how many queue entries it has, and `clock` at its last use.
    ghost_counts: HashMap<u64, (u32, u64), BuildHasherDefault<FxHasher>>,
    ghost_capacity: usize,
    /// Share of queued bytes the small queue may hold before it is preferred for eviction, in percent.
    small_percent: u64,
}

impl S3Fifo {
    pub fn new(slot_count: u32) -> S3Fifo {
        let n = slot_count as usize;
        S3Fifo {
            small: VecDeque::with_capacity(n),
            main: VecDeque::with_capacity(n),
            queue: vec![Queue::None; n],
            generation: vec![0; n],
            bytes: vec![0; n],
            hashes: vec![0; n],
            last_use: vec![0; n],
            keeps: vec![false; n],
            clock: 0,
            refused: 0,
            main_full: false,
            small_bytes: 0,
            main_bytes: 0,
            main_keeps: 0,
            ghost: VecDeque::with_capacity(n),
            ghost_counts: HashMap::with_capacity_and_hasher(n, Default::default()),
            ghost_capacity: n,
            small_percent: 10,
        }
    }

    /// The clock at the key's last use if it is in the ghost queue (taking it out).
    fn ghost_take(&mut self, key_hash: u64) -> Option<u64> {
        match self.ghost_counts.get_mut(&key_hash) {
            Some((n, last)) if *n > 0 => {
                // Leave the queue entry; it ages out and decrements a zero-count key harmlessly.
                *n -= 1;
                Some(*last)
            }
            _ => None,
        }
    }

    fn ghost_put(&mut self, key_hash: u64, last_use: u64) {
        if self.ghost.len() == self.ghost_capacity
            && let Some(old) = self.ghost.pop_front()
            && let Some((n, _)) = self.ghost_counts.get_mut(&old)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.ghost_counts.remove(&old);
            }
        }
        self.ghost.push_back(key_hash);
        let e = self.ghost_counts.entry(key_hash).or_insert((0, 0));
        e.0 += 1;
        e.1 = last_use;
    }

    /// Whether a chunk back from the ghost queue, last used at `last_use`, may enter main: main has
    /// room for it, or main's next victim is worth less (see the module doc). Looks at a few
    /// entries at main's head, giving those hit since the hand last passed their second chance
    /// as eviction would.
    fn admits(&mut self, last_use: u64, counts: &dyn AccessCounts) -> bool {
        let total = self.small_bytes + self.main_bytes;
        // Room: main is below its share and has not been full since it was last well below it
        // (the queued total moves with the fills in flight, so a plain share test would let a
        // full main take a chunk now and then, and evict one that is about to be hit).
        if self.main_bytes * 100 < total * ROOM_PERCENT {
            self.main_full = false;
        }
        if !self.main_full && self.main_bytes * 100 < total * (100 - self.small_percent) {
            return true;
        }
        if self.main_keeps > 0 {
            // Room is made by compressing one of main's raw chunks: nothing is lost.
            return true;
        }
        let reuse = self.clock - last_use;
        for _ in 0..PROBES {
            let Some(&entry) = self.main.front() else {
                return true;
            };
            if !self.live(entry, Queue::Main) {
                self.main.pop_front();
                continue;
            }
            let s = entry.0 as usize;
            match counts.freq(entry.0) {
                0 => return self.clock - self.last_use[s] > reuse,
                f => {
                    counts.set_freq(entry.0, f - 1);
                    self.last_use[s] = self.clock;
                    self.main.pop_front();
                    self.main.push_back(entry);
                }
            }
        }
        false
    }

    /// Counts `slot`'s bytes into main (its queue is set by the caller).
    fn enter_main(&mut self, slot: u32) {
        let s = slot as usize;
        let bytes = u64::from(self.bytes[s]);
        self.main_bytes += bytes;
        if self.keeps[s] {
            self.main_keeps += bytes;
        }
    }

    /// Counts `slot`'s bytes out of main.
    fn leave_main(&mut self, slot: u32) {
        let s = slot as usize;
        let bytes = u64::from(self.bytes[s]);
        self.main_bytes -= bytes;
        if self.keeps[s] {
            self.main_keeps -= bytes;
        }
    }

    fn live(&self, entry: (u32, u32), q: Queue) -> bool {
        let s = entry.0 as usize;
        self.queue[s] == q && self.generation[s] == entry.1
    }

    /// The slot left its queue (taken by the engine): it is no longer queued.
    fn dequeued(&mut self, slot: u32) {
        let s = slot as usize;
        self.queue[s] = Queue::None;
        self.generation[s] = self.generation[s].wrapping_add(1);
    }
}

/// Main entries an admission looks at, at most (each one hit since gets its second chance).
const PROBES: usize = 8;
/// Main's share of the queued bytes (percent) below which it takes returning chunks freely again.
const ROOM_PERCENT: u64 = 70;

impl Policy for S3Fifo {
    fn insert(&mut self, slot: u32, e: Chunk, counts: &dyn AccessCounts) {
        let s = slot as usize;
        assert_eq!(self.queue[s], Queue::None, "slot {slot} inserted twice");
        let (key_hash, bytes) = (e.key_hash, e.bytes);
        self.clock += u64::from(bytes);
        self.bytes[s] = bytes;
        self.hashes[s] = key_hash;
        self.keeps[s] = e.keeps;
        self.last_use[s] = self.clock;
        let entry = (slot, self.generation[s]);
        let known = (e.loop_bytes > 0).then(|| self.clock.saturating_sub(e.loop_bytes));
        let admitted = match self.ghost_take(key_hash).or(known) {
            Some(last) if self.admits(last, counts) => true,
            Some(_) => {
                self.refused += 1;
                false
            }
            None => false,
        };
        if admitted {
            self.queue[s] = Queue::Main;
            self.main.push_back(entry);
            self.enter_main(slot);
        } else {
            self.queue[s] = Queue::Small;
            self.small.push_back(entry);
            self.small_bytes += u64::from(bytes);
        }
    }

    fn insert_main(&mut self, slot: u32, key_hash: u64, bytes: u32) {
        let s = slot as usize;
        assert_eq!(self.queue[s], Queue::None, "slot {slot} inserted twice");
        self.bytes[s] = bytes;
        self.hashes[s] = key_hash;
        // Compressed: leaving main again loses it. Its last use stays what it was.
        self.keeps[s] = false;
        self.queue[s] = Queue::Main;
        self.main.push_back((slot, self.generation[s]));
        self.enter_main(slot);
    }

    fn remove(&mut self, slot: u32) {
        let s = slot as usize;
        match self.queue[s] {
            Queue::Small => self.small_bytes -= u64::from(self.bytes[s]),
            Queue::Main => self.leave_main(slot),
            Queue::None => return,
        }
        self.dequeued(slot);
    }

    fn is_queued(&self, slot: u32) -> bool {
        self.queue[slot as usize] != Queue::None
    }

    fn queued_bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    fn refused(&self) -> u64 {
        self.refused
    }

    fn pick_victim(
        &mut self,
        counts: &dyn AccessCounts,
        take: &mut dyn FnMut(u32) -> bool,
    ) -> Option<Pick> {
        // Each queued entry can be looked at a bounded number of times: freq ≤ 3 re-queues in main,
        // one promotion from small, plus one pinned skip.
        let mut budget = 7 * (self.small.len() + self.main.len()) + 16;
        // Compressed chunks passed over while main holds raw ones that compress: once round main
        // at most (those raw chunks may all be pinned).
        let mut spared = 0;
        while budget > 0 {
            budget -= 1;
            let total = self.small_bytes + self.main_bytes;
            let prefer_small = !self.small.is_empty()
                && (self.small_bytes * 100 >= total * self.small_percent || self.main.is_empty());
            if prefer_small {
                let Some(entry) = self.small.pop_front() else {
                    continue;
                };
                if !self.live(entry, Queue::Small) {
                    continue;
                }
                let slot = entry.0;
                let bytes = u64::from(self.bytes[slot as usize]);
                if counts.freq(slot) > 0 {
                    counts.set_freq(slot, 0);
                    self.small_bytes -= bytes;
                    self.enter_main(slot);
                    self.queue[slot as usize] = Queue::Main;
                    self.last_use[slot as usize] = self.clock;
                    self.main.push_back(entry);
                    continue;
                }
                if take(slot) {
                    self.small_bytes -= bytes;
                    self.dequeued(slot);
                    let s = slot as usize;
                    self.ghost_put(self.hashes[s], self.last_use[s]);
                    return Some(Pick {
                        slot,
                        from_main: false,
                        keeps: self.keeps[s],
                    });
                }
                self.small.push_back(entry);
            } else {
                let Some(entry) = self.main.pop_front() else {
                    continue;
                };
                if !self.live(entry, Queue::Main) {
                    continue;
                }
                let slot = entry.0;
                let f = counts.freq(slot);
                if f > 0 {
                    counts.set_freq(slot, f - 1);
                    self.last_use[slot as usize] = self.clock;
                    self.main.push_back(entry);
                    continue;
                }
                if !self.keeps[slot as usize] && self.main_keeps > 0 && spared < self.main.len() {
                    // Leaving main would lose it; a raw chunk behind it would only shrink.
                    spared += 1;
                    self.main.push_back(entry);
                    continue;
                }
                if take(slot) {
                    self.leave_main(slot);
                    self.main_full = true;
                    self.dequeued(slot);
                    return Some(Pick {
                        slot,
                        from_main: true,
                        keeps: self.keeps[slot as usize],
                    });
                }
                self.main.push_back(entry);
            }
        }
        None
    }
}

#[cfg(test)]
#[path = "s3fifo_tests.rs"]
mod tests;
