//! The arena: every cached byte lives in one anonymous mapping of exactly `pool_bytes`, made at
//! start-up. The pool is a hard budget, so nothing about caching may allocate elsewhere.
//!
//! Why slabs of pages: most blocks are whole chunks (a raw 1 MiB chunk), and those take a whole slab
//! with one pop from a free list. But blocks can also be smaller — a file's last chunk, a small file,
//! a compressed chunk — and those must not waste a whole slab. A slab can therefore switch to
//! "packed" mode, where it hands out runs of 4 KiB pages found by first fit in a per-slab bitmap. A
//! packed slab that empties goes back to the free list, so the two modes trade space freely.
//!
//! Only the threads that fill and evict allocate (the ring thread, the compression worker); readers
//! never touch the allocator, they only read memory of blocks they have pinned in the index. The
//! allocator state therefore sits behind one mutex that readers never take.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{MmapMut, MmapOptions};
use parking_lot::Mutex;

/// Allocation granule, and the alignment O_DIRECT reads need.
pub const PAGE_BYTES: usize = 4096;

/// A block of the arena: `pages` contiguous pages starting at byte `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub offset: u64,
    pub pages: u32,
}

impl Block {
    pub fn capacity_bytes(self) -> usize {
        self.pages as usize * PAGE_BYTES
    }
}

/// What a slab is used for right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlabMode {
    Free,
    /// One block covering the whole slab.
    Whole,
    /// Page runs handed out by first fit; `used_pages` of the slab are taken.
    Packed {
        used_pages: u32,
    },
    /// Lent to the store (`lend`): its pages were given back to the kernel, and the store's tmpfs
    /// pages stand in for them in the pool's budget.
    Lent,
}

struct Alloc {
    modes: Vec<SlabMode>,
    free_slabs: Vec<u32>,
    /// Packed slabs that still have free pages, in no particular order.
    packed: Vec<u32>,
    /// One bit per page of every slab, `words_per_slab` words each; set = taken.
    bitmap: Vec<u64>,
    used_pages: u64,
}

/// Counters for reports; a snapshot, not a live view.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArenaUsage {
    pub pool_bytes: u64,
    pub usable_bytes: u64,
    pub used_bytes: u64,
    pub whole_slabs: u32,
    pub packed_slabs: u32,
    pub free_slabs: u32,
    /// Slabs lent to the store (their bytes are the store's, not the arena's).
    pub lent_slabs: u32,
}

pub struct Arena {
    _map: MmapMut,
    base: NonNull<u8>,
    pool_bytes: usize,
    slab_bytes: usize,
    slab_count: u32,
    pages_per_slab: u32,
    words_per_slab: usize,
    alloc: Mutex<Alloc>,
    /// An io_uring has the mapping registered (fixed reads write into the pages it pinned then):
    /// lent slabs must keep those pages (see `lend`).
    ring_pinned: AtomicBool,
}

// SAFETY: the mapping is plain memory; who may write which block is governed by the index (a block
// is written only by its filler before it is published, and read only while pinned). The raw base
// pointer is valid for the lifetime of `_map`, which the Arena owns.
unsafe impl Send for Arena {}
// SAFETY: see `Send`; allocator state is behind a mutex.
unsafe impl Sync for Arena {}

impl Arena {
    /// Maps `pool_bytes` of anonymous memory, carved into slabs of `slab_bytes`.
    /// `lock` pins the pool in RAM (mlock) so it is never swapped.
    pub fn new(pool_bytes: usize, slab_bytes: usize, lock: bool) -> io::Result<Arena> {
        assert!(slab_bytes >= PAGE_BYTES && slab_bytes.is_multiple_of(PAGE_BYTES));
        assert!(pool_bytes >= slab_bytes, "pool must hold one slab");
        let slab_count = u32::try_from(pool_bytes / slab_bytes)
            .map_err(|_| io::Error::other("pool has more than 2^32 slabs"))?;
        let pages_per_slab = (slab_bytes / PAGE_BYTES) as u32;
        let words_per_slab = (pages_per_slab as usize).div_ceil(64);
        let mut map = MmapOptions::new().len(pool_bytes).map_anon()?;
        // Huge pages cut TLB misses on the copy out; a hint only, failure is fine.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        if lock {
            map.lock()?;
        }
        let base = NonNull::new(map.as_mut_ptr()).ok_or_else(|| io::Error::other("null map"))?;
        let alloc = Alloc {
            modes: vec![SlabMode::Free; slab_count as usize],
            // Pop from the end: hand out low slabs first, which keeps a small working set compact.
            free_slabs: (0..slab_count).rev().collect(),
            packed: Vec::with_capacity(slab_count as usize),
            bitmap: vec![0; words_per_slab * slab_count as usize],
            used_pages: 0,
        };
        Ok(Arena {
            _map: map,
            base,
            pool_bytes,
            slab_bytes,
            slab_count,
            pages_per_slab,
            words_per_slab,
            alloc: Mutex::new(alloc),
            ring_pinned: AtomicBool::new(false),
        })
    }

    pub fn base_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub fn pool_bytes(&self) -> usize {
        self.pool_bytes
    }

    pub fn slab_bytes(&self) -> usize {
        self.slab_bytes
    }

    /// Bytes the slabs cover (the pool rounded down to whole slabs).
    pub fn usable_bytes(&self) -> usize {
        self.slab_count as usize * self.slab_bytes
    }

    /// Allocates a block of at least `bytes` (rounded up to pages). None when no space is free:
    /// the caller evicts and tries again.
    pub fn alloc(&self, bytes: usize) -> Option<Block> {
        assert!(bytes > 0 && bytes <= self.slab_bytes, "block size {bytes}");
        let pages = bytes.div_ceil(PAGE_BYTES) as u32;
        let mut a = self.alloc.lock();
        let block = if pages == self.pages_per_slab {
            let slab = a.free_slabs.pop()?;
            a.modes[slab as usize] = SlabMode::Whole;
            Block {
                offset: slab as u64 * self.slab_bytes as u64,
                pages,
            }
        } else {
            self.alloc_packed(&mut a, pages)?
        };
        a.used_pages += u64::from(pages);
        Some(block)
    }

    fn alloc_packed(&self, a: &mut Alloc, pages: u32) -> Option<Block> {
        // First fit over slabs already packed, newest first: they are the likeliest to have room.
        for i in (0..a.packed.len()).rev() {
            let slab = a.packed[i];
            if let Some(first) = self.find_run(a, slab, pages) {
                return Some(self.take_run(a, slab, first, pages));
            }
        }
        let slab = a.free_slabs.pop()?;
        a.modes[slab as usize] = SlabMode::Packed { used_pages: 0 };
        a.packed.push(slab);
        Some(self.take_run(a, slab, 0, pages))
    }

    fn find_run(&self, a: &Alloc, slab: u32, pages: u32) -> Option<u32> {
        let SlabMode::Packed { used_pages } = a.modes[slab as usize] else {
            unreachable!("packed list holds a non-packed slab");
        };
        if self.pages_per_slab - used_pages < pages {
            return None;
        }
        let words = &a.bitmap[slab as usize * self.words_per_slab..][..self.words_per_slab];
        let mut run_start = 0u32;
        let mut run_len = 0u32;
        for page in 0..self.pages_per_slab {
            let taken = words[(page / 64) as usize] >> (page % 64) & 1 == 1;
            if taken {
                run_len = 0;
                run_start = page + 1;
            } else {
                run_len += 1;
                if run_len == pages {
                    return Some(run_start);
                }
            }
        }
        None
    }

    fn take_run(&self, a: &mut Alloc, slab: u32, first: u32, pages: u32) -> Block {
        let words = &mut a.bitmap[slab as usize * self.words_per_slab..][..self.words_per_slab];
        for page in first..first + pages {
            let bit = 1u64 << (page % 64);
            debug_assert_eq!(words[(page / 64) as usize] & bit, 0);
            words[(page / 64) as usize] |= bit;
        }
        let SlabMode::Packed { used_pages } = &mut a.modes[slab as usize] else {
            unreachable!();
        };
        *used_pages += pages;
        if *used_pages == self.pages_per_slab {
            a.packed.retain(|&s| s != slab);
        }
        Block {
            offset: slab as u64 * self.slab_bytes as u64 + u64::from(first) * PAGE_BYTES as u64,
            pages,
        }
    }

    /// Returns a block.
    ///
    /// # Safety
    /// No reader may still see it: it is unpublished (out of the index) and unpinned, and no
    /// read is in flight into it. A block freed under a reader is handed out again and rewritten.
    pub unsafe fn free(&self, block: Block) {
        let slab = (block.offset / self.slab_bytes as u64) as u32;
        let first = ((block.offset % self.slab_bytes as u64) / PAGE_BYTES as u64) as u32;
        assert!(slab < self.slab_count);
        let mut a = self.alloc.lock();
        a.used_pages -= u64::from(block.pages);
        match a.modes[slab as usize] {
            SlabMode::Whole => {
                assert_eq!(block.pages, self.pages_per_slab);
                a.modes[slab as usize] = SlabMode::Free;
                a.free_slabs.push(slab);
            }
            SlabMode::Packed { used_pages } => {
                let words =
                    &mut a.bitmap[slab as usize * self.words_per_slab..][..self.words_per_slab];
                for page in first..first + block.pages {
                    let bit = 1u64 << (page % 64);
                    assert_ne!(words[(page / 64) as usize] & bit, 0, "double free");
                    words[(page / 64) as usize] &= !bit;
                }
                let was_full = used_pages == self.pages_per_slab;
                let left = used_pages - block.pages;
                if left == 0 {
                    a.modes[slab as usize] = SlabMode::Free;
                    a.packed.retain(|&s| s != slab);
                    a.free_slabs.push(slab);
                } else {
                    a.modes[slab as usize] = SlabMode::Packed { used_pages: left };
                    if was_full {
                        a.packed.push(slab);
                    }
                }
            }
            SlabMode::Free | SlabMode::Lent => panic!("free of a block in a free or lent slab"),
        }
    }

    /// Takes `slabs` free slabs out of the arena for the store and returns their pages to the
    /// kernel (unless a ring pinned them: see below), so the pool's RAM budget covers store +
    /// arena. All or nothing: false (nothing lent) when fewer are free; the caller evicts and
    /// tries again.
    ///
    /// Why lend slabs instead of splitting the pool at start-up: which tier deserves the RAM
    /// depends on the files opened (a model that fits whole goes to the store and can be
    /// passed through; a larger one is chunk-cached here), so the split follows the load.
    ///
    /// Why the pages stay once a ring has the mapping registered (`set_ring_pinned`): io_uring
    /// pins the registered pages, and its fixed reads write into those pages. MADV_DONTNEED then
    /// only unmapped them from this process: a slab given back later was faulted in as fresh zero
    /// pages while the ring's fills still landed in the pinned ones, so the arena served zeros
    /// (issue 10: store files dropped, their slabs filled by the arena). The pinned pages were
    /// never returned to the kernel either. The engine therefore registers the arena only when
    /// there is no store (nothing is ever lent then); this is the safety net if that changes.
    pub fn lend(&self, slabs: u32) -> bool {
        let release = !self.ring_pinned.load(Ordering::Acquire);
        let mut a = self.alloc.lock();
        if (a.free_slabs.len() as u64) < u64::from(slabs) {
            return false;
        }
        for _ in 0..slabs {
            let Some(slab) = a.free_slabs.pop() else {
                break;
            };
            a.modes[slab as usize] = SlabMode::Lent;
            if !release {
                continue;
            }
            let offset = slab as usize * self.slab_bytes;
            // SAFETY: the slab is free (no block, so no reader or read in flight) and inside the
            // mapping; MADV_DONTNEED on private anonymous memory only drops its pages (it reads
            // as zeros if touched again).
            let _ = unsafe {
                rustix::mm::madvise(
                    self.base.as_ptr().add(offset).cast(),
                    self.slab_bytes,
                    rustix::mm::Advice::LinuxDontNeed,
                )
            };
        }
        true
    }

    /// An io_uring registered the mapping (its fixed reads write into the pages pinned now):
    /// from here on `lend` leaves lent slabs' pages in place.
    pub fn set_ring_pinned(&self) {
        self.ring_pinned.store(true, Ordering::Release);
    }

    /// Returns `slabs` lent slabs to the free list (the store released that many slabs' bytes).
    pub fn give_back(&self, slabs: u32) {
        let mut a = self.alloc.lock();
        let mut left = slabs;
        for slab in 0..self.slab_count {
            if left == 0 {
                break;
            }
            if a.modes[slab as usize] == SlabMode::Lent {
                a.modes[slab as usize] = SlabMode::Free;
                a.free_slabs.push(slab);
                left -= 1;
            }
        }
        debug_assert_eq!(left, 0, "gave back more slabs than were lent");
    }

    /// Slabs free now (what `lend` can take without evicting).
    pub fn free_slab_count(&self) -> u32 {
        self.alloc.lock().free_slabs.len() as u32
    }

    pub fn slab_count(&self) -> u32 {
        self.slab_count
    }

    pub fn usage(&self) -> ArenaUsage {
        let a = self.alloc.lock();
        let mut u = ArenaUsage {
            pool_bytes: self.pool_bytes as u64,
            usable_bytes: self.usable_bytes() as u64,
            used_bytes: a.used_pages * PAGE_BYTES as u64,
            ..ArenaUsage::default()
        };
        for m in &a.modes {
            match m {
                SlabMode::Free => u.free_slabs += 1,
                SlabMode::Whole => u.whole_slabs += 1,
                SlabMode::Packed { .. } => u.packed_slabs += 1,
                SlabMode::Lent => u.lent_slabs += 1,
            }
        }
        u
    }

    /// Raw pointer to the start of a block, for the filler (the ring writes through it).
    pub fn block_ptr(&self, block: Block) -> *mut u8 {
        assert!(block.offset as usize + block.capacity_bytes() <= self.usable_bytes());
        // SAFETY: the assert keeps the offset inside the mapping.
        unsafe { self.base.as_ptr().add(block.offset as usize) }
    }

    /// The first `len` bytes of a block.
    ///
    /// # Safety
    /// The block must be allocated, fully written for `len` bytes, and not written again while the
    /// returned slice lives (i.e. the caller holds a pin or is the block's only owner).
    pub unsafe fn bytes(&self, block: Block, len: usize) -> &[u8] {
        assert!(len <= block.capacity_bytes());
        // SAFETY: in bounds by the asserts here and in block_ptr; exclusivity is the caller's.
        unsafe { std::slice::from_raw_parts(self.block_ptr(block), len) }
    }

    /// `len` bytes of the arena from byte `offset`, across neighbouring blocks.
    ///
    /// # Safety
    /// Every block the range touches must be allocated, written, and pinned (as for `bytes`).
    pub unsafe fn span(&self, offset: u64, len: usize) -> &[u8] {
        assert!(offset as usize + len <= self.usable_bytes());
        // SAFETY: in bounds by the assert; the caller guarantees the blocks are pinned.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset as usize), len) }
    }

    /// The first `len` bytes of a block, for writing.
    ///
    /// # Safety
    /// The caller must be the block's only user (allocated, not yet published in the index).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, block: Block, len: usize) -> &mut [u8] {
        assert!(len <= block.capacity_bytes());
        // SAFETY: in bounds; exclusivity is the caller's.
        unsafe { std::slice::from_raw_parts_mut(self.block_ptr(block), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_packed_blocks_share_the_pool() {
        let slab = 64 * 1024;
        let arena = Arena::new(4 * slab, slab, false).expect("map");
        let w1 = arena.alloc(slab).expect("whole");
        let p1 = arena.alloc(5000).expect("packed 2 pages");
        let p2 = arena.alloc(PAGE_BYTES).expect("packed 1 page");
        assert_eq!(p1.pages, 2);
        assert_eq!(
            p2.offset,
            p1.offset + 2 * PAGE_BYTES as u64,
            "first fit packs"
        );
        let w2 = arena.alloc(slab).expect("whole");
        let w3 = arena.alloc(slab).expect("whole");
        assert!(arena.alloc(slab).is_none(), "pool exhausted");
        // 13 more pages fit in the packed slab, then it is full.
        let rest = arena.alloc(13 * PAGE_BYTES).expect("rest of packed slab");
        assert!(arena.alloc(PAGE_BYTES).is_none());
        // SAFETY: test blocks are never published; nothing reads them.
        unsafe { arena.free(p1) };
        // SAFETY: test blocks are never published; nothing reads them.
        unsafe { arena.free(p2) };
        // SAFETY: test blocks are never published; nothing reads them.
        unsafe { arena.free(rest) };
        assert_eq!(arena.usage().free_slabs, 1, "emptied packed slab returns");
        assert!(arena.alloc(slab).is_some());
        for b in [w1, w2, w3] {
            // SAFETY: test blocks are never published; nothing reads them.
            unsafe { arena.free(b) };
        }
        assert_eq!(arena.usage().used_bytes, slab as u64);
    }

    #[test]
    fn blocks_never_overlap_under_random_churn() {
        let slab = 16 * PAGE_BYTES;
        let arena = Arena::new(8 * slab, slab, false).expect("map");
        let mut live: Vec<Block> = Vec::new();
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if seed.is_multiple_of(3) && !live.is_empty() {
                let b = live.swap_remove((seed >> 8) as usize % live.len());
                // SAFETY: test blocks are never published; nothing reads them.
                unsafe { arena.free(b) };
            } else {
                let bytes = 1 + (seed >> 20) as usize % slab;
                if let Some(b) = arena.alloc(bytes) {
                    live.push(b);
                }
            }
            let mut spans: Vec<(u64, u64)> = live
                .iter()
                .map(|b| (b.offset, b.offset + b.capacity_bytes() as u64))
                .collect();
            spans.sort_unstable();
            for w in spans.windows(2) {
                assert!(w[0].1 <= w[1].0, "overlap {w:?}");
            }
            let used: u64 = live.iter().map(|b| b.capacity_bytes() as u64).sum();
            assert_eq!(arena.usage().used_bytes, used);
        }
    }
}
