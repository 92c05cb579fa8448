//! The index: which arena block holds (file, chunk).
//!
//! Why sharded read-write locks and pins: FUSE worker threads look chunks up concurrently and must
//! not queue behind one lock, so the map is split into shards and a lookup takes only a shard's read
//! lock. A reader pins the slot while it still holds that read lock; an evictor removes an entry only
//! under the shard's write lock and only when the pin count is zero. The two locks exclude each other,
//! so a block is never reused under a reader, without epochs or hazard pointers.
//!
//! Why slots live outside the maps: slot metadata (block, length, hit bits) is preallocated at
//! start-up and addressed by a small integer, so the eviction queues and the in-flight table refer to
//! a `u32`, and a hit touches no allocator. Only the thread that owns the eviction policy (the ring
//! thread) inserts and removes entries.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::arena::{Arena, Block};

/// A cache key: an internal file id (new for every version of a source file) and a chunk number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub file: u64,
    pub chunk: u64,
}

impl Key {
    /// A well-mixed 64-bit hash, used for shard choice and the ghost queue.
    pub fn hash64(self) -> u64 {
        let mut h = FxHasher::default();
        h.write_u64(self.file);
        h.write_u64(self.chunk);
        h.finish()
    }
}

/// A multiply-rotate hasher (the rustc Fx hash) finished with a mix; keys are two integers, SipHash's
/// DoS resistance buys nothing here and costs a visible share of a 4 KiB hit.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.hash = (self.hash.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        let mut x = self.hash;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

type Shard = RwLock<HashMap<Key, u32, BuildHasherDefault<FxHasher>>>;

/// What a stored block contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The chunk's bytes as in the source.
    Raw,
    /// An encoded block (see `codec`); `len` is the encoded length.
    Encoded,
}

/// Per-slot metadata. Written by the owner thread before the slot is published in a shard and read
/// by readers after they pin it under the shard lock, so relaxed atomics are enough: the lock orders
/// them.
pub struct Slot {
    pins: AtomicU32,
    /// Saturating access count for S3-FIFO (0..=3).
    freq: AtomicU8,
    /// The open file handle that last counted an access (starting with the one whose read or
    /// prefetch filled the chunk). Accesses count once per handle: a 1 MiB chunk read in eight
    /// requests, possibly out of order, by one `cat` is one use, and the filler's own reads of a
    /// chunk it prefetched are no reuse. A second open reading it is.
    last_toucher: AtomicU64,
    form: AtomicU8,
    block_offset: AtomicU64,
    block_pages: AtomicU32,
    /// Bytes valid in the block (raw: chunk length; encoded: encoded length).
    len: AtomicU32,
    /// Logical (decoded) length of the chunk.
    logical_len: AtomicU32,
    key_file: AtomicU64,
    key_chunk: AtomicU64,
    pieces: [AtomicU64; PIECES],
}

/// A compressed chunk is stored as this many independently encoded pieces (each covering
/// `chunk / PIECES` logical bytes). Why: a whole compressed chunk of ratio 0.69 is 69% of a slab
/// and two never share one, so storing it contiguously would save nothing; pieces of ~9% of a slab
/// pack into the holes of packed slabs.
pub const PIECES: usize = 8;

/// The filler of a chunk read in ahead of any reader (a set prefetch): handle ids never reach it.
pub const PREFETCHED: u64 = u64::MAX;

/// A slot as seen by a pinned reader.
#[derive(Clone, Copy, Debug)]
pub struct SlotView {
    /// Raw: the chunk's block. Encoded: unused (see `pieces`).
    pub block: Block,
    pub len: usize,
    pub logical_len: usize,
    pub form: Form,
    /// Encoded only: piece blocks, packed by `pack_block`; 0 = none.
    pub pieces: [u64; PIECES],
}

impl SlotView {
    pub fn raw(block: Block, len: usize) -> SlotView {
        SlotView {
            block,
            len,
            logical_len: len,
            form: Form::Raw,
            pieces: [0; PIECES],
        }
    }

    pub fn piece(&self, i: usize) -> Option<Block> {
        unpack_block(self.pieces[i])
    }

    /// Every block this slot holds (one for raw, the pieces for encoded).
    pub fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        let raw = (self.form == Form::Raw).then_some(self.block);
        raw.into_iter().chain((0..PIECES).filter_map(move |i| {
            if self.form == Form::Encoded {
                self.piece(i)
            } else {
                None
            }
        }))
    }

    /// Arena bytes this slot takes.
    pub fn stored_bytes(&self) -> usize {
        self.blocks().map(Block::capacity_bytes).sum()
    }
}

pub fn pack_block(b: Block) -> u64 {
    assert!(b.pages > 0 && b.pages < 1 << 16);
    (b.offset / crate::arena::PAGE_BYTES as u64) << 16 | u64::from(b.pages)
}

fn unpack_block(v: u64) -> Option<Block> {
    (v != 0).then(|| Block {
        offset: (v >> 16) * crate::arena::PAGE_BYTES as u64,
        pages: (v & 0xffff) as u32,
    })
}

pub struct Index {
    shards: Box<[Shard]>,
    slots: Box<[Slot]>,
    shard_mask: u64,
}

/// A pin on a slot: its block stays valid until this is dropped.
pub struct Pin<'a> {
    index: &'a Index,
    slot: u32,
    view: SlotView,
}

impl<'a> Pin<'a> {
    pub fn view(&self) -> SlotView {
        self.view
    }

    /// The bytes of a raw chunk, borrowed from this pin (None for a compressed chunk): the only
    /// safe way to read a cached block, so no slice can outlive the pin that keeps it valid.
    pub fn raw_bytes<'p>(&'p self, arena: &'p Arena) -> Option<&'p [u8]> {
        if self.view.form != Form::Raw {
            return None;
        }
        // SAFETY: the pin keeps the block published and unwritten; the slice borrows the pin.
        Some(unsafe { arena.bytes(self.view.block, self.view.len) })
    }

    /// The stored bytes of piece `i` of a compressed chunk, borrowed from this pin.
    pub fn piece_bytes<'p>(&'p self, arena: &'p Arena, i: usize) -> Option<&'p [u8]> {
        if self.view.form != Form::Encoded {
            return None;
        }
        let block = self.view.piece(i)?;
        // SAFETY: as for `raw_bytes`.
        Some(unsafe { arena.bytes(block, block.capacity_bytes()) })
    }

    /// Two pinned raw chunks whose blocks are neighbours in the arena (`self` a whole chunk of
    /// `chunk_bytes`), as one slice borrowed from both pins.
    pub fn span_with<'p>(
        &'p self,
        next: &'p Pin<'a>,
        arena: &'p Arena,
        chunk_bytes: usize,
    ) -> Option<&'p [u8]> {
        let (v0, v1) = (self.view, next.view);
        let adjacent = v0.form == Form::Raw
            && v1.form == Form::Raw
            && v0.len == chunk_bytes
            && v0.block.offset + chunk_bytes as u64 == v1.block.offset;
        if !adjacent {
            return None;
        }
        // SAFETY: both blocks are pinned, published and adjacent, so the range is one valid,
        // unwritten piece of the arena for as long as both pins (which the slice borrows) live.
        Some(unsafe { arena.span(v0.block.offset, chunk_bytes + v1.len) })
    }
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let before = self.index.slots[self.slot as usize]
            .pins
            .fetch_sub(1, Ordering::Release);
        debug_assert!(before > 0);
    }
}

impl Index {
    pub fn new(slot_count: u32, shard_count: usize) -> Index {
        assert!(shard_count.is_power_of_two());
        let per_shard = (slot_count as usize / shard_count).max(16) * 2;
        let shards = (0..shard_count)
            .map(|_| {
                RwLock::new(HashMap::with_capacity_and_hasher(
                    per_shard,
                    Default::default(),
                ))
            })
            .collect();
        let slots = (0..slot_count)
            .map(|_| Slot {
                pins: AtomicU32::new(0),
                freq: AtomicU8::new(0),
                last_toucher: AtomicU64::new(0),
                form: AtomicU8::new(0),
                block_offset: AtomicU64::new(0),
                block_pages: AtomicU32::new(0),
                len: AtomicU32::new(0),
                logical_len: AtomicU32::new(0),
                key_file: AtomicU64::new(0),
                key_chunk: AtomicU64::new(0),
                pieces: Default::default(),
            })
            .collect();
        Index {
            shards,
            slots,
            shard_mask: shard_count as u64 - 1,
        }
    }

    pub fn slot_count(&self) -> u32 {
        self.slots.len() as u32
    }

    fn shard(&self, key: Key) -> &Shard {
        &self.shards[(key.hash64() & self.shard_mask) as usize]
    }

    /// Pins the chunk if cached. `toucher` (an open handle id, 0 for none) counts the access for
    /// eviction, once per handle.
    pub fn pin(&self, key: Key, toucher: u64) -> Option<Pin<'_>> {
        let shard = self.shard(key).read();
        let slot = *shard.get(&key)?;
        let s = &self.slots[slot as usize];
        s.pins.fetch_add(1, Ordering::Acquire);
        drop(shard);
        let last = s.last_toucher.load(Ordering::Relaxed);
        if toucher != 0 && last != toucher {
            s.last_toucher.store(toucher, Ordering::Relaxed);
            let f = s.freq.load(Ordering::Relaxed);
            // A prefetched chunk's first reader is its first access, not a reuse.
            if f < 3 && last != PREFETCHED {
                // A lost race only loses one count; it is a hint.
                s.freq.store(f + 1, Ordering::Relaxed);
            }
        }
        Some(Pin {
            index: self,
            slot,
            view: self.view(slot),
        })
    }

    /// Whether the chunk is cached, without pinning.
    pub fn contains(&self, key: Key) -> bool {
        self.shard(key).read().contains_key(&key)
    }

    /// Logical bytes cached per file id, and of those the bytes held compressed (reports; walks
    /// every shard under its read lock, so it costs a pass over the index).
    pub fn resident_by_file(&self) -> HashMap<u64, (u64, u64), BuildHasherDefault<FxHasher>> {
        let mut out: HashMap<u64, (u64, u64), BuildHasherDefault<FxHasher>> = HashMap::default();
        for shard in self.shards.iter() {
            let shard = shard.read();
            for (key, &slot) in shard.iter() {
                let view = self.view(slot);
                let e = out.entry(key.file).or_default();
                e.0 += view.logical_len as u64;
                if view.form == Form::Encoded {
                    e.1 += view.logical_len as u64;
                }
            }
        }
        out
    }

    /// What a slot holds now (owner: the engine reads it between its own updates).
    pub fn view_of(&self, slot: u32) -> SlotView {
        self.view(slot)
    }

    fn view(&self, slot: u32) -> SlotView {
        let s = &self.slots[slot as usize];
        let form = if s.form.load(Ordering::Relaxed) == 0 {
            Form::Raw
        } else {
            Form::Encoded
        };
        let mut pieces = [0u64; PIECES];
        if form == Form::Encoded {
            for (p, a) in pieces.iter_mut().zip(&s.pieces) {
                *p = a.load(Ordering::Relaxed);
            }
        }
        SlotView {
            block: Block {
                offset: s.block_offset.load(Ordering::Relaxed),
                pages: s.block_pages.load(Ordering::Relaxed),
            },
            len: s.len.load(Ordering::Relaxed) as usize,
            logical_len: s.logical_len.load(Ordering::Relaxed) as usize,
            form,
            pieces,
        }
    }

    /// Owner only: fills a free slot's metadata (before `publish`, or to swap the block of a slot the
    /// owner has just unpublished).
    pub fn set(&self, slot: u32, key: Key, view: SlotView) {
        let s = &self.slots[slot as usize];
        s.block_offset.store(view.block.offset, Ordering::Relaxed);
        s.block_pages.store(view.block.pages, Ordering::Relaxed);
        s.len.store(view.len as u32, Ordering::Relaxed);
        s.logical_len
            .store(view.logical_len as u32, Ordering::Relaxed);
        s.form
            .store(u8::from(view.form == Form::Encoded), Ordering::Relaxed);
        s.key_file.store(key.file, Ordering::Relaxed);
        s.key_chunk.store(key.chunk, Ordering::Relaxed);
        for (a, p) in s.pieces.iter().zip(view.pieces) {
            a.store(p, Ordering::Relaxed);
        }
    }

    /// Owner only: makes a filled slot visible to readers. `filler`: the handle whose read or
    /// prefetch brought the chunk in (its own accesses do not count as reuse).
    /// `filler` is the handle that read the chunk in (its own accesses are not reuse), 0 for none,
    /// or `PREFETCHED` (filled ahead of any reader: the next handle's first access is not reuse).
    pub fn publish(&self, slot: u32, key: Key, filler: u64) {
        let s = &self.slots[slot as usize];
        s.freq.store(0, Ordering::Relaxed);
        s.last_toucher.store(filler, Ordering::Relaxed);
        let old = self.shard(key).write().insert(key, slot);
        assert!(old.is_none(), "key {key:?} published twice");
    }

    /// Owner only: removes the slot's entry if nobody holds a pin. Returns its view when removed;
    /// the caller then owns the block and the slot.
    pub fn try_remove(&self, slot: u32) -> Option<SlotView> {
        let key = self.key_of(slot);
        let mut shard = self.shard(key).write();
        if self.slots[slot as usize].pins.load(Ordering::Acquire) != 0 {
            return None;
        }
        let removed = shard.remove(&key);
        assert_eq!(removed, Some(slot), "slot {slot} not indexed under its key");
        Some(self.view(slot))
    }

    pub fn key_of(&self, slot: u32) -> Key {
        let s = &self.slots[slot as usize];
        Key {
            file: s.key_file.load(Ordering::Relaxed),
            chunk: s.key_chunk.load(Ordering::Relaxed),
        }
    }

    pub fn freq(&self, slot: u32) -> u8 {
        self.slots[slot as usize].freq.load(Ordering::Relaxed)
    }

    pub fn set_freq(&self, slot: u32, freq: u8) {
        self.slots[slot as usize]
            .freq
            .store(freq, Ordering::Relaxed);
    }

    /// Number of entries (sums the shards; for reports).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of metadata this index holds (slots plus map capacity), reported apart from the pool.
    pub fn overhead_bytes(&self) -> usize {
        let map: usize = self
            .shards
            .iter()
            .map(|s| s.read().capacity() * (std::mem::size_of::<(Key, u32)>() + 1))
            .sum();
        self.slots.len() * std::mem::size_of::<Slot>() + map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(offset: u64) -> SlotView {
        SlotView::raw(Block { offset, pages: 1 }, 10)
    }

    #[test]
    fn a_prefetched_chunks_first_reader_is_no_reuse() {
        let index = Index::new(8, 4);
        let key = Key { file: 1, chunk: 0 };
        index.set(2, key, view(0));
        index.publish(2, key, PREFETCHED);
        drop(index.pin(key, 5));
        drop(index.pin(key, 5));
        assert_eq!(index.freq(2), 0, "the first reader after a prefetch");
        drop(index.pin(key, 6));
        assert_eq!(index.freq(2), 1, "a second handle is a reuse");
    }

    #[test]
    fn pinned_slot_is_not_removed() {
        let index = Index::new(8, 4);
        let key = Key { file: 1, chunk: 2 };
        index.set(3, key, view(4096));
        index.publish(3, key, 7);
        let pin = index.pin(key, 7).expect("cached");
        assert_eq!(pin.view().block.offset, 4096);
        assert_eq!(index.freq(3), 0, "the filler's own access is no reuse");
        drop(index.pin(key, 8));
        drop(index.pin(key, 8));
        assert_eq!(index.freq(3), 1, "another handle's access counts, once");
        assert!(index.try_remove(3).is_none(), "pinned");
        drop(pin);
        assert!(index.try_remove(3).is_some());
        assert!(index.pin(key, 0).is_none());
    }

    #[test]
    fn pins_from_many_threads_balance() {
        let index = std::sync::Arc::new(Index::new(64, 8));
        for slot in 0..64u32 {
            let key = Key {
                file: 7,
                chunk: u64::from(slot),
            };
            index.set(slot, key, view(u64::from(slot) * 4096));
            index.publish(slot, key, 0);
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let index = index.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let key = Key {
                            file: 7,
                            chunk: (i * 7 + t) % 64,
                        };
                        let pin = index.pin(key, 0).expect("cached");
                        assert_eq!(pin.view().block.offset, key.chunk * 4096);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        for slot in 0..64 {
            assert!(index.try_remove(slot).is_some(), "pin leaked on {slot}");
        }
        assert!(index.is_empty());
    }
}
