//! One stored version: its file's shared mapping and which of its chunks are filled.
//!
//! Why a bit per chunk with Release/Acquire: readers (FUSE workers) serve a chunk from the mapping
//! as soon as its bit is set, while the engine thread is still filling other chunks; the bit is
//! the only synchronisation, so it must publish the bytes it stands for.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::MmapRaw;

use crate::engine::Stamp;

/// One stored version.
pub struct Entry {
    pub stamp: Stamp,
    pub(super) name: String,
    /// The file itself, only for unnamed (`--store none`) files; a named one is reopened by name
    /// when needed, so thousands of stored files do not hold thousands of descriptors.
    pub(super) file: Option<OwnedFd>,
    pub(super) map: MmapRaw,
    pub(super) chunk_bytes: u64,
    pub(super) chunks: u64,
    /// One bit per chunk: set once the chunk's bytes are in the file, never cleared while the
    /// entry lives (Release on set, Acquire on test: the bytes are visible to whoever sees the bit).
    pub(super) filled: Box<[AtomicU64]>,
    pub(super) filled_count: AtomicU64,
    pub(super) complete: AtomicBool,
    /// A fill failed for a reason other than the source (tmpfs full): no more store fills.
    pub(super) broken: AtomicBool,
    /// Budget it holds, in arena slabs.
    pub slabs: u32,
    /// Opens of this version seen (1 = probation: a first-time file may not push out reused ones).
    pub(super) uses: AtomicU64,
    pub(super) last_use: AtomicU64,
    /// Bytes it would take in the arena's compressed tier (its size until an open says better;
    /// `Source::expected_stored_bytes`).
    pub(super) packed: AtomicU64,
}

impl Entry {
    pub fn size(&self) -> u64 {
        self.stamp.2
    }

    pub fn chunk_count(&self) -> u64 {
        self.chunks
    }

    pub fn has(&self, chunk: u64) -> bool {
        chunk < self.chunks
            && self.filled[(chunk / 64) as usize].load(Ordering::Acquire) & (1 << (chunk % 64)) != 0
    }

    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    pub fn filled_bytes(&self) -> u64 {
        (self.filled_count.load(Ordering::Relaxed) * self.chunk_bytes).min(self.size())
    }

    /// `len` bytes from `offset` if every chunk they touch is filled. The slice borrows the entry,
    /// whose mapping lives as long as it does; filled chunks are never written again.
    pub fn range(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len as u64)?;
        if len == 0 || end > self.size() {
            return None;
        }
        let (first, last) = (offset / self.chunk_bytes, (end - 1) / self.chunk_bytes);
        if !self.is_complete() && !(first..=last).all(|c| self.has(c)) {
            return None;
        }
        // SAFETY: in bounds (end <= size <= mapping length); every chunk of the range is filled
        // (checked with Acquire above), and a filled chunk is never written again nor unmapped
        // while `self` is borrowed.
        Some(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(offset as usize), len) })
    }

    /// Where a fill of bytes from `offset` writes, and how many bytes it may write there (to the
    /// end of the mapping's last page).
    pub fn fill_target(&self, offset: u64) -> Option<(*mut u8, usize)> {
        let cap = self.map.len() as u64;
        if offset >= cap {
            return None;
        }
        // SAFETY: offset < mapping length.
        Some((
            unsafe { self.map.as_mut_ptr().add(offset as usize) },
            (cap - offset) as usize,
        ))
    }

    /// Records a filled chunk; true when it was the last one.
    pub fn mark_filled(&self, chunk: u64) -> bool {
        let bit = 1u64 << (chunk % 64);
        let was = self.filled[(chunk / 64) as usize].fetch_or(bit, Ordering::Release);
        if was & bit != 0 {
            return false;
        }
        self.filled_count.fetch_add(1, Ordering::Relaxed) + 1 == self.chunks
    }

    /// Whether it would take at most `1 - min_saving` of its size in the compressed tier.
    pub fn compresses(&self, min_saving: f64) -> bool {
        compresses(self.size(), self.packed.load(Ordering::Relaxed), min_saving)
    }

    pub fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }

    /// Made by a set prefetch, not an open: the first real open is its first use, so a set
    /// loaded once stays on probation like any file read once.
    pub fn clear_uses(&self) {
        self.uses.store(0, Ordering::Relaxed);
    }

    /// The version was opened before this entry was made (it had been stored and evicted, or
    /// served from the arena): it counts as reused from the start, not as a probationary file.
    pub fn mark_reused(&self) {
        self.uses.fetch_max(2, Ordering::Relaxed);
    }
}

/// Whether `size` bytes expected to take `packed` in the compressed tier save at least `min_saving`.
pub fn compresses(size: u64, packed: u64, min_saving: f64) -> bool {
    (packed as f64) <= size as f64 * (1.0 - min_saving)
}
