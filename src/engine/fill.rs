//! Chunk fills: one read (or a few, after a short read) of one chunk into an arena block or the
//! version's store file, published only when complete.
//!
//! Why publish only after an `fstat`: a fill whose bytes all landed is still not this version's if
//! the source changed while it was read (writers move mtime/ctime before the data); an unchanged
//! stamp after the read proves the bytes are. Anything else fails the fill and marks the version
//! stale, so no reply mixes two versions.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nitro_ring::Completion;

use super::uncached::UNCACHED_TAG;
use super::{Engine, FAULT_ENV, Source, errno_of};
use crate::arena::{Block, PAGE_BYTES};
use crate::index::{Key, SlotView};
use crate::policy::Chunk;
use crate::store::Entry;

/// Where a fill's bytes go.
pub(super) enum Dest {
    /// A block of the arena, published in the index under `slot` when complete.
    Arena { slot: u32, block: Block },
    /// The version's store file, at the chunk's own offset.
    Store(Arc<Entry>),
}

pub(super) struct Fill {
    pub(super) key: Key,
    pub(super) dest: Dest,
    pub(super) src: Arc<Source>,
    /// The handle whose read or prefetch started this fill.
    pub(super) filler: u64,
    /// Logical bytes of the chunk (short for the last chunk of a file).
    pub(super) want_bytes: u32,
    pub(super) done_bytes: u32,
    pub(super) direct: bool,
    pub(super) waiters: Option<u32>,
}

impl Engine {
    /// Starts filling `key` from `src`. None if the fill table is full or no space can be made.
    pub(super) fn start_fill(&mut self, src: &Arc<Source>, key: Key, filler: u64) -> Option<u32> {
        debug_assert!(!self.in_flight.contains_key(&key));
        let chunk_start = key.chunk * self.shared.chunk_bytes;
        if chunk_start >= src.size || src.is_stale() {
            return None;
        }
        if self.panic_on.as_deref() == Some(&*src.name) {
            panic!(
                "fault injection ({FAULT_ENV}): fill of {} started",
                src.name
            );
        }
        let want = (src.size - chunk_start).min(self.shared.chunk_bytes) as usize;
        let f = self.free_fills.pop()?;
        let dest = match src.store.get().filter(|e| !e.is_broken()) {
            Some(e) => Dest::Store(e.clone()),
            None => {
                let Some(slot) = self.alloc_slot() else {
                    self.free_fills.push(f);
                    return None;
                };
                let Some(block) = self.alloc_block(want) else {
                    self.free_slots.push(slot);
                    self.free_fills.push(f);
                    return None;
                };
                Dest::Arena { slot, block }
            }
        };
        Some(self.launch_fill(f, src, key, filler, want, dest))
    }

    /// Starts the read of fill slot `f` into `dest` (allocated by the caller).
    pub(super) fn launch_fill(
        &mut self,
        f: u32,
        src: &Arc<Source>,
        key: Key,
        filler: u64,
        want: usize,
        dest: Dest,
    ) -> u32 {
        let direct = src.direct();
        self.fills[f as usize] = Some(Fill {
            key,
            dest,
            src: src.clone(),
            filler,
            want_bytes: want as u32,
            done_bytes: 0,
            direct,
            waiters: None,
        });
        self.in_flight.insert(key, f);
        // A file reopened after all its handles closed gets a new `Source` with the same id.
        let known = self.sources.entry(src.file_id).or_default();
        if known.strong_count() == 0 {
            *known = Arc::downgrade(src);
        }
        self.submit(f);
        self.shared.stats.fills.fetch_add(1, Ordering::Relaxed);
        f
    }

    /// Submits the next read of a fill: the rest of its chunk, from `done_bytes` on.
    pub(super) fn submit(&mut self, f: u32) {
        let Some(fill) = self.fills[f as usize].as_mut() else {
            debug_assert!(false, "submit of a free fill {f}");
            return;
        };
        let done = fill.done_bytes as usize;
        let rest = fill.want_bytes as usize - done;
        let offset = fill.key.chunk * self.shared.chunk_bytes + done as u64;
        let (ptr, room) = match &fill.dest {
            Dest::Arena { block, .. } => (
                // SAFETY: `done` is within the block (it counts bytes that landed in it).
                unsafe { self.shared.arena.block_ptr(*block).add(done) },
                block.capacity_bytes().saturating_sub(done),
            ),
            Dest::Store(e) => e.fill_target(offset).unwrap_or((std::ptr::null_mut(), 0)),
        };
        if let Some(object) = fill.src.remote() {
            let (object, len) = (object.clone(), rest.min(room));
            debug_assert!(len > 0, "fill {f} has nothing left to fetch");
            // SAFETY: as for the ring read below: the destination is this fill's alone until its
            // completion, which the engine waits for before it frees or reuses it (even when it
            // stops: see `Drop for Engine`).
            unsafe { self.fetch(object, offset, ptr, len, u64::from(f)) };
            return;
        }
        // O_DIRECT needs page-aligned offsets; after a short read left `done` unaligned, the
        // buffered descriptor finishes the chunk.
        if fill.direct && !done.is_multiple_of(PAGE_BYTES) {
            fill.direct = false;
        }
        let fd = match (fill.direct, fill.src.local_fd()) {
            (true, Some(fd)) => Ok(fd.as_raw_fd()),
            _ => fill.src.buffered_fd().map(|fd| fd.as_raw_fd()),
        };
        let (fd, len) = match fd {
            // O_DIRECT wants page-aligned lengths; the block has room for the rounded length and
            // the kernel stops at end of file.
            Ok(fd) if fill.direct => (fd, rest.next_multiple_of(PAGE_BYTES)),
            Ok(fd) => (fd, rest),
            Err(e) => {
                // No descriptor to read with (EMFILE): fail the fill, not the engine.
                let errno = errno_of(&e);
                if let Some(fill) = self.fills[f as usize].take() {
                    self.free_fills.push(f);
                    self.in_flight.remove(&fill.key);
                    self.fail_fill(fill, errno);
                }
                return;
            }
        };
        // Never past the block (or the store file's last page), whatever the lengths above say.
        let len = len.min(room);
        debug_assert!(len > 0, "fill {f} has nothing left to read");
        // SAFETY: the destination (an arena block, or an unfilled chunk of a store mapping that the
        // fill's `Arc<Entry>` keeps mapped) belongs to this fill alone until `complete`, `len`
        // bytes fit there, and `fill.src` keeps the descriptor open until then.
        let pushed = unsafe {
            self.ring
                .push_read(fd, offset, ptr, len as u32, u64::from(f))
        };
        // The fill table is no larger than the ring, so there is always room.
        assert!(pushed, "ring full with {} fills", self.ring.in_flight());
    }

    pub(super) fn complete(&mut self, c: Completion) {
        if c.user_data & UNCACHED_TAG != 0 {
            return self.complete_uncached((c.user_data & !UNCACHED_TAG) as u32, c.result);
        }
        let f = c.user_data as u32;
        let fill = self.fills[f as usize]
            .as_mut()
            .expect("completion for a live fill");
        if c.result == -libc::EINVAL && fill.direct {
            // This file or filesystem refuses O_DIRECT after all: fall back to buffered reads.
            fill.direct = false;
            self.submit(f);
            return;
        }
        // What the source's answer says about this version: Ok(true) when the chunk is complete,
        // Ok(false) to read on, Err(errno) to fail the fill.
        let outcome = if c.result > 0 {
            // An O_DIRECT read of the last chunk asks for whole pages, so it may get more than
            // the version's size: bytes of a grown file, or (FUSE sources) the page-rounded count
            // of an unchanged one. The excess lands in the block's slack and is never served; the
            // `fstat` check below tells a grown file from an unchanged one.
            let rest = fill.want_bytes - fill.done_bytes;
            fill.done_bytes += (c.result as u32).min(rest);
            Ok(fill.done_bytes == fill.want_bytes)
        } else if c.result == -crate::remote::CHANGED_ERRNO && fill.src.remote().is_some() {
            fill.src
                .mark_stale("the object changed or went away in the bucket (ETag)");
            Err(libc::EIO)
        } else if c.result == 0 {
            // End of file before the size the version says: the file shrank.
            let at = fill.key.chunk * self.shared.chunk_bytes + u64::from(fill.done_bytes);
            fill.src.mark_stale(&format!(
                "end of file at {at} before its size {}",
                fill.src.size
            ));
            Err(libc::EIO)
        } else {
            Err(-c.result)
        };
        if matches!(outcome, Ok(false)) {
            self.submit(f);
            return;
        }
        let fill = self.fills[f as usize].take().expect("fill");
        self.free_fills.push(f);
        self.in_flight.remove(&fill.key);
        // Every byte landed: publish only if the file still is this version (see `Source`).
        let outcome = match outcome {
            Ok(_) if !fill.src.still_holds() => Err(libc::EIO),
            o => o,
        };
        if let Err(errno) = outcome {
            self.fail_fill(fill, errno);
            return;
        }
        self.set_fill_done(fill.key, Some(fill.want_bytes));
        if !fill.direct
            && let Ok(fd) = fill.src.buffered_fd()
        {
            // Buffered fallback: drop the source's page-cache copy, the arena holds the bytes now.
            let offset = fill.key.chunk * self.shared.chunk_bytes;
            let _ = rustix::fs::fadvise(
                fd,
                offset,
                std::num::NonZeroU64::new(u64::from(fill.want_bytes)),
                rustix::fs::Advice::DontNeed,
            );
        }
        match &fill.dest {
            Dest::Arena { slot, block } => {
                let view = SlotView::raw(*block, fill.want_bytes as usize);
                let entry = Chunk {
                    key_hash: fill.key.hash64(),
                    bytes: block.pages * PAGE_BYTES as u32,
                    keeps: self.would_keep(&fill.src, fill.key, view),
                    loop_bytes: fill.src.loop_bytes.load(Ordering::Relaxed),
                };
                self.shared.index.set(*slot, fill.key, view);
                self.shared.index.publish(*slot, fill.key, fill.filler);
                if !self.is_pinned(fill.key.file) {
                    self.policy.insert(*slot, entry, &self.shared.index);
                    let refused = self.policy.refused();
                    self.shared
                        .stats
                        .admissions_refused
                        .store(refused, Ordering::Relaxed);
                }
                self.file_slots.insert(fill.key.file, *slot);
            }
            Dest::Store(e) => {
                if e.mark_filled(fill.key.chunk) {
                    self.finish_store(&fill.src, e);
                }
            }
        }
        self.shared
            .stats
            .fill_bytes
            .fetch_add(u64::from(fill.want_bytes), Ordering::Relaxed);
        {
            let mut last = self.shared.last_fill.lock();
            if last
                .as_ref()
                .is_none_or(|n| !Arc::ptr_eq(n, &fill.src.name))
            {
                *last = Some(fill.src.name.clone());
            }
        }
        let mut next = fill.waiters;
        while let Some(wi) = next {
            next = self.waiters[wi as usize]
                .as_mut()
                .and_then(|w| w.next.take());
            self.evaluate(wi);
        }
    }

    /// Discards a fill that did not produce this version's bytes: block and slot freed, nothing
    /// published, every waiter gets `errno`.
    pub(super) fn fail_fill(&mut self, fill: Fill, errno: i32) {
        self.set_fill_done(fill.key, None);
        match &fill.dest {
            Dest::Arena { slot, block } => {
                // SAFETY: a failed fill's block was never published; only this fill used it, and
                // its read has completed.
                unsafe { self.shared.arena.free(*block) };
                self.free_slots.push(*slot);
            }
            Dest::Store(e)
                if !fill.src.is_stale()
                    && matches!(errno, libc::EFAULT | libc::ENOSPC | libc::ENOMEM) =>
            {
                // The store's tmpfs refused the pages (full): this version goes on in the arena.
                tracing::warn!(
                    "store: {} could not be filled ({}); serving it from the arena",
                    fill.src.name,
                    std::io::Error::from_raw_os_error(errno)
                );
                e.mark_broken();
                let mut next = fill.waiters;
                while let Some(wi) = next {
                    next = self.waiters[wi as usize]
                        .as_mut()
                        .and_then(|w| w.next.take());
                    self.evaluate(wi);
                }
                return;
            }
            Dest::Store(_) => {}
        }
        self.shared
            .stats
            .fill_errors
            .fetch_add(1, Ordering::Relaxed);
        if !fill.src.is_stale() {
            // A stale version was logged once when it went stale.
            tracing::warn!(
                "ERROR {} chunk {}: {}",
                fill.src.name,
                fill.key.chunk,
                std::io::Error::from_raw_os_error(errno)
            );
        }
        let mut next = fill.waiters;
        while let Some(wi) = next {
            let w = self.unpark(wi);
            next = w.next;
            w.reply.error(errno);
        }
    }
}
