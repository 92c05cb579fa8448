//! S3-FIFO (Yang et al., SOSP'23): a small probationary FIFO, a main FIFO and a ghost FIFO of keys.
//!
//! Why this policy: model loads are long sequential scans, often larger than the pool. LRU lets one
//! `cat` of a 40 GB shard flush everything; S3-FIFO admits new chunks to a small queue (10% of the
//! bytes) and promotes only those touched again while there, so a one-pass scan cycles through the
//! small queue and the hot set in main survives. The ghost queue remembers recently evicted keys so a
//! chunk that comes back soon goes straight to main. FIFO queues also mean a hit is one relaxed
//! store of a counter, with no list surgery under a lock.
//!
//! The access counter lives in the index slot (readers bump it); the queues live here and are owned
//! by the one thread that inserts and evicts. Entries carry a generation so a slot removed out of
//! band (invalidation) and reused later is not evicted through a stale queue entry.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use super::{AccessCounts, Pick, Policy};
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
    small_bytes: u64,
    main_bytes: u64,
    ghost: VecDeque<u64>,
    ghost_counts: HashMap<u64, u32, BuildHasherDefault<FxHasher>>,
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
            small_bytes: 0,
            main_bytes: 0,
            ghost: VecDeque::with_capacity(n),
            ghost_counts: HashMap::with_capacity_and_hasher(n, Default::default()),
            ghost_capacity: n,
            small_percent: 10,
        }
    }

    fn ghost_take(&mut self, key_hash: u64) -> bool {
        match self.ghost_counts.get_mut(&key_hash) {
            Some(n) if *n > 0 => {
                // Leave the queue entry; it ages out and decrements a zero-count key harmlessly.
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    fn ghost_put(&mut self, key_hash: u64) {
        if self.ghost.len() == self.ghost_capacity
            && let Some(old) = self.ghost.pop_front()
            && let Some(n) = self.ghost_counts.get_mut(&old)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.ghost_counts.remove(&old);
            }
        }
        self.ghost.push_back(key_hash);
        *self.ghost_counts.entry(key_hash).or_insert(0) += 1;
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

impl Policy for S3Fifo {
    fn insert(&mut self, slot: u32, key_hash: u64, bytes: u32) {
        let s = slot as usize;
        assert_eq!(self.queue[s], Queue::None, "slot {slot} inserted twice");
        self.bytes[s] = bytes;
        self.hashes[s] = key_hash;
        let entry = (slot, self.generation[s]);
        if self.ghost_take(key_hash) {
            self.queue[s] = Queue::Main;
            self.main.push_back(entry);
            self.main_bytes += u64::from(bytes);
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
        self.queue[s] = Queue::Main;
        self.main.push_back((slot, self.generation[s]));
        self.main_bytes += u64::from(bytes);
    }

    fn remove(&mut self, slot: u32) {
        let s = slot as usize;
        match self.queue[s] {
            Queue::Small => self.small_bytes -= u64::from(self.bytes[s]),
            Queue::Main => self.main_bytes -= u64::from(self.bytes[s]),
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

    fn pick_victim(
        &mut self,
        counts: &dyn AccessCounts,
        take: &mut dyn FnMut(u32) -> bool,
    ) -> Option<Pick> {
        // Each queued entry can be looked at a bounded number of times: freq ≤ 3 re-queues in main,
        // one promotion from small, plus one pinned skip.
        let mut budget = 6 * (self.small.len() + self.main.len()) + 16;
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
                    self.main_bytes += bytes;
                    self.queue[slot as usize] = Queue::Main;
                    self.main.push_back(entry);
                    continue;
                }
                if take(slot) {
                    self.small_bytes -= bytes;
                    self.dequeued(slot);
                    self.ghost_put(self.hashes[slot as usize]);
                    return Some(Pick {
                        slot,
                        from_main: false,
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
                    self.main.push_back(entry);
                    continue;
                }
                if take(slot) {
                    self.main_bytes -= u64::from(self.bytes[slot as usize]);
                    self.dequeued(slot);
                    return Some(Pick {
                        slot,
                        from_main: true,
                    });
                }
                self.main.push_back(entry);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Block;
    use crate::index::{Index, Key, SlotView};

    /// What the engine does with an offer: take the slot out of the index unless it is pinned.
    fn evict(policy: &mut S3Fifo, index: &Index) -> Option<Pick> {
        policy.pick_victim(index, &mut |slot| index.try_remove(slot).is_some())
    }

    fn fill(index: &Index, policy: &mut S3Fifo, slot: u32, key: Key) {
        index.set(
            slot,
            key,
            SlotView::raw(
                Block {
                    offset: u64::from(slot) * 4096,
                    pages: 1,
                },
                1,
            ),
        );
        index.publish(slot, key, 0);
        policy.insert(slot, key.hash64(), 1);
    }

    /// A scan of twice the capacity must not flush a hot set that is being reused.
    #[test]
    fn one_pass_scan_does_not_flush_the_hot_set() {
        let capacity = 100u32;
        let index = Index::new(capacity, 8);
        let mut policy = S3Fifo::new(capacity);
        let mut free: Vec<u32> = (0..capacity).rev().collect();
        let hot: Vec<Key> = (0..50).map(|c| Key { file: 1, chunk: c }).collect();
        let toucher = std::cell::Cell::new(1u64);
        let get = |key: Key, policy: &mut S3Fifo, free: &mut Vec<u32>| {
            toucher.set(toucher.get() + 1);
            if index.pin(key, toucher.get()).is_some() {
                return true;
            }
            let slot = match free.pop() {
                Some(s) => s,
                None => evict(policy, &index).expect("victim").slot,
            };
            fill(&index, policy, slot, key);
            false
        };
        // Warm the hot set and touch it again so it is promoted.
        for _ in 0..3 {
            for &k in &hot {
                get(k, &mut policy, &mut free);
            }
        }
        // Scan 200 distinct chunks, touching the hot set in between.
        for c in 0..200u64 {
            get(Key { file: 2, chunk: c }, &mut policy, &mut free);
            if c % 4 == 0 {
                for &k in &hot[..10] {
                    get(k, &mut policy, &mut free);
                }
            }
        }
        let surviving = hot.iter().filter(|&&k| index.contains(k)).count();
        assert!(surviving >= 45, "hot set flushed: {surviving}/50 survive");
    }

    #[test]
    fn pinned_slots_are_skipped_and_removed_slots_forgotten() {
        let index = Index::new(4, 4);
        let mut policy = S3Fifo::new(4);
        for s in 0..3u32 {
            fill(
                &index,
                &mut policy,
                s,
                Key {
                    file: 9,
                    chunk: u64::from(s),
                },
            );
        }
        let pin = index.pin(Key { file: 9, chunk: 0 }, 0).expect("cached");
        assert_eq!(index.try_remove(1).map(|v| v.block.offset), Some(4096));
        policy.remove(1);
        let v = evict(&mut policy, &index).expect("victim");
        assert_eq!(v.slot, 2, "slot 0 pinned, slot 1 removed out of band");
        assert!(
            evict(&mut policy, &index).is_none(),
            "only a pinned slot left"
        );
        drop(pin);
        assert_eq!(evict(&mut policy, &index).map(|v| v.slot), Some(0));
        assert_eq!(policy.queued_bytes(), 0);
    }
}
