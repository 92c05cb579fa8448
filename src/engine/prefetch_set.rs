//! Set prefetch, the engine's half: one member of a model set at a time, as the FUSE front's set
//! worker (`fuse/set_prefetch.rs`) sends them, in loader order.
//!
//! Why only free room: a set is prefetched on a guess (one member was opened), so it must never
//! cost what is known to be wanted. A member goes to the store through first-time admission (free
//! slabs, or idle store files opened at most once — never a reused one), else into the arena
//! through fills that take free slabs only and evict nothing; what does not fit is left out. The
//! chunks are published with the `PREFETCHED` filler, so the first real read of each does not
//! count as reuse and a set read once stays on probation like any file read once.
//!
//! Why set fills yield to readers: a loader reads its shards one after the other at the disk's
//! speed; filling the next shards at the same time does not make the disk faster, it splits it, and
//! the reader's own file then arrives later (measured: a cold 4-shard load fell from 1.67 to
//! 1.21 GB/s, with 0.4 s stalls, when set fills took the ring's readahead depth beside it). So while
//! a reader is active (a miss or a readahead request in the last `READER_QUIET`), set fills keep
//! only `BUSY_SET_FILLS` reads in flight; they take the full depth in the gaps (a loader parsing,
//! or one shard opened and the others not yet).
//!
//! Why a ticket per member: the worker keeps only a couple of members (and their descriptors) in
//! flight and needs to know when one is done; the engine reports through it without knowing who
//! waits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::Engine;
use super::fill::Dest;
use super::source::Source;
use crate::index::{Key, PREFETCHED};

/// Set fills in flight at most while a reader is active.
const BUSY_SET_FILLS: usize = 2;
/// A reader counts as active this long after its last miss or readahead request.
pub(super) const READER_QUIET: std::time::Duration = std::time::Duration::from_millis(20);

/// What the engine did with one member, for the set worker.
#[derive(Default)]
pub struct SetTicket {
    /// Nothing more will land for this member through the arena path.
    done: AtomicBool,
    /// Admitted to the store (or already there): its store fill does the work.
    stored: AtomicBool,
    /// Bytes the arena fills of this member landed.
    bytes: AtomicU64,
    /// Chunks were left out for want of free room.
    short: AtomicBool,
    /// Arena fills started and not yet finished (engine thread only writes).
    outstanding: AtomicU32,
    all_started: AtomicBool,
}

impl SetTicket {
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    pub fn is_stored(&self) -> bool {
        self.stored.load(Ordering::Acquire)
    }

    pub fn arena_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn was_short(&self) -> bool {
        self.short.load(Ordering::Relaxed)
    }

    fn started_all(&self) {
        self.all_started.store(true, Ordering::Relaxed);
        if self.outstanding.load(Ordering::Relaxed) == 0 {
            self.done.store(true, Ordering::Release);
        }
    }
}

/// A member being filled into the arena, with the next chunk to start.
pub(super) struct SetFill {
    src: Arc<Source>,
    next: u64,
    ticket: Arc<SetTicket>,
}

/// The engine's set state: members waiting for arena fills, and which fills belong to whom.
#[derive(Default)]
pub(super) struct Sets {
    line: VecDeque<SetFill>,
    pending: std::collections::HashMap<Key, Arc<SetTicket>>,
}

impl Engine {
    /// A member of a set: to the store if it is admitted there, else into the arena's free room.
    pub(super) fn set_member(&mut self, src: Arc<Source>, ticket: Arc<SetTicket>) {
        if src.is_stale() {
            return ticket.started_all();
        }
        if self.store_member(&src) {
            ticket.stored.store(true, Ordering::Release);
            return ticket.started_all();
        }
        self.sets.line.push_back(SetFill {
            src,
            next: 0,
            ticket,
        });
    }

    /// First-time admission for a member (no use counted: it was not opened); true when the
    /// store holds or fills it now.
    fn store_member(&mut self, src: &Arc<Source>) -> bool {
        let shared = self.shared.clone();
        let Some(store) = shared.store.as_ref() else {
            return false;
        };
        if src.size < store.min_bytes() {
            return false;
        }
        if src.store.get().is_none() {
            match store.peek(&src.stamp) {
                Some(e) => {
                    let complete = e.is_complete();
                    let _ = src.store.set(e);
                    if !complete {
                        self.store_jobs.push_back((src.clone(), 0));
                    }
                }
                None => {
                    self.admit(src.clone(), false);
                    if let Some(e) = src.store.get() {
                        e.clear_uses();
                    }
                }
            }
        }
        src.store.get().is_some_and(|e| !e.is_broken())
    }

    /// Starts arena fills of waiting members, in order, while the ring has room beyond what
    /// readers need; a member whose next chunk finds no free room is cut there.
    pub(super) fn pump_sets(&mut self) {
        if self.sets.line.is_empty() {
            return;
        }
        let chunk_bytes = self.shared.chunk_bytes;
        let busy = self.reader_seen.is_some_and(|t| t.elapsed() < READER_QUIET);
        let cap = if busy {
            BUSY_SET_FILLS
        } else {
            self.readahead_fills
        };
        while self.in_flight.len() < self.readahead_fills
            && self.sets.pending.len() < cap
            && !self.free_fills.is_empty()
        {
            let Some(job) = self.sets.line.front_mut() else {
                break;
            };
            let chunks = job.src.size.div_ceil(chunk_bytes);
            if job.src.is_stale() || job.src.store.get().is_some() || job.next >= chunks {
                if job.src.store.get().is_some() {
                    // A real open admitted it to the store meanwhile; the store fill goes on.
                    job.ticket.stored.store(true, Ordering::Release);
                }
                if let Some(job) = self.sets.line.pop_front() {
                    job.ticket.started_all();
                }
                continue;
            }
            let key = Key {
                file: job.src.file_id,
                chunk: job.next,
            };
            job.next += 1;
            if self.in_flight.contains_key(&key) || self.shared.index.contains(key) {
                continue;
            }
            let (src, ticket) = (job.src.clone(), job.ticket.clone());
            if self.start_free_fill(&src, key).is_some() {
                ticket.outstanding.fetch_add(1, Ordering::Relaxed);
                self.sets.pending.insert(key, ticket);
            } else {
                ticket.short.store(true, Ordering::Relaxed);
                if let Some(job) = self.sets.line.pop_front() {
                    job.ticket.started_all();
                }
                break;
            }
        }
    }

    /// A fill into free room only: a free slot and an arena block that needs no eviction.
    fn start_free_fill(&mut self, src: &Arc<Source>, key: Key) -> Option<u32> {
        let chunk_start = key.chunk * self.shared.chunk_bytes;
        if chunk_start >= src.size || self.free_slots.is_empty() || self.free_fills.is_empty() {
            return None;
        }
        let want = (src.size - chunk_start).min(self.shared.chunk_bytes) as usize;
        let block = self.shared.arena.alloc(want)?;
        let (Some(slot), Some(f)) = (self.free_slots.pop(), self.free_fills.pop()) else {
            // SAFETY: the block was allocated just now and never published or read.
            unsafe { self.shared.arena.free(block) };
            return None;
        };
        Some(self.launch_fill(f, src, key, PREFETCHED, want, Dest::Arena { slot, block }))
    }

    /// A fill ended (`landed`: its bytes, or None when it failed); counts it for its set member.
    pub(super) fn set_fill_done(&mut self, key: Key, landed: Option<u32>) {
        if self.sets.pending.is_empty() {
            return;
        }
        let Some(t) = self.sets.pending.remove(&key) else {
            return;
        };
        if let Some(b) = landed {
            t.bytes.fetch_add(u64::from(b), Ordering::Relaxed);
        }
        let left = t
            .outstanding
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        if left == 0 && t.all_started.load(Ordering::Relaxed) {
            t.done.store(true, Ordering::Release);
        }
    }

    /// At shutdown: every member still waiting is done (nothing more will land).
    pub(super) fn drop_sets(&mut self) {
        for job in self.sets.line.drain(..) {
            job.ticket.done.store(true, Ordering::Release);
        }
        for (_, t) in self.sets.pending.drain() {
            t.done.store(true, Ordering::Release);
        }
    }
}
