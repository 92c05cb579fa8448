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
}

/// An eviction policy over index slots, owned by the engine thread.
pub trait Policy: Send {
    /// A newly published slot enters the policy.
    fn insert(&mut self, slot: u32, key_hash: u64, bytes: u32);
    /// A slot re-published with proven reuse (after compression): straight to the reused part.
    fn insert_main(&mut self, slot: u32, key_hash: u64, bytes: u32);
    /// The engine removed the slot from the index itself (invalidation, corruption): forget it.
    fn remove(&mut self, slot: u32);
    fn is_queued(&self, slot: u32) -> bool;
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
