//! Eviction policies, one small module each (after foyer): the engine tells a policy about inserts
//! and out-of-band removals and asks it for victims; nothing else about caching lives here.
//!
//! A policy never touches the index's entries: `pick_victim` offers candidates to the engine, which
//! removes the entry itself (it fails while a reader holds a pin; the policy then keeps the slot
//! queued and looks further). The only index state a policy sees is the access counter readers bump
//! (once per handle), through `AccessCounts`.

pub mod s3fifo;

use crate::index::Index;

/// The per-slot access counters the index keeps for a policy (readers bump them on a hit).
pub trait AccessCounts {
    fn freq(&self, slot: u32) -> u8;
    fn set_freq(&self, slot: u32, freq: u8);
}

impl AccessCounts for Index {
    fn freq(&self, slot: u32) -> u8 {
        Index::freq(self, slot)
    }

    fn set_freq(&self, slot: u32, freq: u8) {
        Index::set_freq(self, slot, freq)
    }
}

/// A slot the engine took out of the index on the policy's offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub slot: u32,
    /// It left from the reused part of the policy (S3-FIFO: the main queue); a compressed tier
    /// may keep it.
    pub from_main: bool,
    /// The engine said it would compress (`Chunk::keeps`).
    pub keeps: bool,
}

/// What the engine tells a policy about a newly filled chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub key_hash: u64,
    /// Arena bytes it takes.
    pub bytes: u32,
    /// Evicted from the reused part, it would be kept compressed rather than lost (a raw chunk the
    /// compressed tier can shrink): displacing it costs no disk read later.
    pub keeps: bool,
    /// Its file is known to be read again and again in a loop of this many bytes (0: not known):
    /// it is admitted as if back from the ghost queue with that reuse distance.
    pub loop_bytes: u64,
}

/// An eviction policy over index slots, owned by the engine thread.
pub trait Policy: Send {
    /// A newly published slot enters the policy. The policy decides where (S3-FIFO: a recently
    /// evicted key that comes back is admitted to main only if that displaces nothing more useful;
    /// otherwise it waits in the small queue like a new chunk), so it may look at access counts.
    fn insert(&mut self, slot: u32, entry: Chunk, counts: &dyn AccessCounts);
    /// A slot re-published with proven reuse (after compression): straight to the reused part.
    fn insert_main(&mut self, slot: u32, key_hash: u64, bytes: u32);
    /// The engine removed the slot from the index itself (invalidation, corruption): forget it.
    fn remove(&mut self, slot: u32);
    fn is_queued(&self, slot: u32) -> bool;
    /// Returning chunks the policy kept out of its reused part so far (a counter, for stats).
    fn refused(&self) -> u64 {
        0
    }
    fn queued_bytes(&self) -> u64;
    /// Offers candidates to `take` in eviction order until it takes one (it returns true after it
    /// removed the slot from the index; false when the slot is pinned, which the policy keeps).
    /// The taken slot is forgotten. None when nothing could be taken.
    fn pick_victim(
        &mut self,
        counts: &dyn AccessCounts,
        take: &mut dyn FnMut(u32) -> bool,
    ) -> Option<Pick>;
}
