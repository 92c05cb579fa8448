//! Parked requests: a miss waits on the fill of the first chunk it lacks, then is evaluated again.
//!
//! Why the request is re-evaluated after every fill instead of being assembled piecewise: a read
//! can span two chunks; keeping the waiter's state as "the request" (not "the bytes gathered so far")
//! means no per-request buffer is needed, and a chunk evicted in between is simply filled again. A
//! request that keeps losing that race (a pool of a few chunks under heavy churn) is served by an
//! uncached read so it always finishes (`MAX_ROUNDS`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Copied, Engine, ReadReply, Source};
use crate::index::Key;

/// A request parked until a chunk it needs is filled.
pub(super) struct Waiter {
    pub(super) src: Arc<Source>,
    pub(super) fh: u64,
    pub(super) offset: u64,
    pub(super) size: u32,
    pub(super) reply: Box<dyn ReadReply>,
    /// How often it has been re-evaluated; bounded so it cannot starve.
    pub(super) rounds: u8,
    pub(super) next: Option<u32>,
}

pub(super) const MAX_ROUNDS: u8 = 6;

impl Engine {
    pub(super) fn park(&mut self, w: Waiter) -> u32 {
        match self.free_waiters.pop() {
            Some(i) => {
                self.waiters[i as usize] = Some(w);
                i
            }
            None => {
                // More concurrent misses than expected at start-up: grow (rare, amortized).
                self.waiters.push(Some(w));
                (self.waiters.len() - 1) as u32
            }
        }
    }

    pub(super) fn unpark(&mut self, i: u32) -> Waiter {
        let w = self.waiters[i as usize].take().expect("parked waiter");
        self.free_waiters.push(i);
        w
    }

    /// Serves the parked request if all its chunks are cached, else makes sure the first missing
    /// one is being filled and parks the request on it.
    pub(super) fn evaluate(&mut self, wi: u32) {
        let (src, fh, offset, size, rounds) = {
            let w = self.waiters[wi as usize].as_ref().expect("parked");
            (w.src.clone(), w.fh, w.offset, w.size, w.rounds)
        };
        let end = offset + u64::from(size);
        let first = self.shared.chunk_of(offset);
        let last = self.shared.chunk_of(end - 1);
        let mut missing = None;
        for chunk in first..=last {
            let key = Key {
                file: src.file_id,
                chunk,
            };
            let stored = src.store.get().is_some_and(|e| e.has(chunk));
            if !stored && !self.shared.index.contains(key) {
                if missing.is_none() {
                    missing = Some(key);
                } else if !self.in_flight.contains_key(&key) && !self.is_compressing(key) {
                    // Fill the other chunks of a spanning read in parallel.
                    let _ = self.start_fill(&src, key, fh);
                }
            }
        }
        let Some(key) = missing else {
            // Only this thread evicts, so what is present now stays present while we copy.
            let out = &mut self.scratch[..size as usize];
            match self.shared.copy_cached(&src, offset, out, 0) {
                Copied::Done => {
                    let w = self.unpark(wi);
                    w.reply.data(&self.scratch[..size as usize]);
                }
                Copied::Corrupt(key) => {
                    self.shared
                        .stats
                        .decode_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.drop_key(key);
                    self.evaluate(wi);
                }
                Copied::Missing => {
                    let w = self.unpark(wi);
                    self.serve_uncached(w);
                }
            }
            return;
        };
        if src.is_stale() {
            // This version is gone from the source: nothing more is read for it.
            let w = self.unpark(wi);
            w.reply.error(libc::EIO);
            return;
        }
        if rounds >= MAX_ROUNDS {
            let w = self.unpark(wi);
            self.serve_uncached(w);
            return;
        }
        if let Some(w) = self.waiters[wi as usize].as_mut() {
            w.rounds += 1;
        }
        if self.park_on_compression(key, wi) {
            return;
        }
        let fill = match self.in_flight.get(&key) {
            Some(&f) => Some(f),
            None => self.start_fill(&src, key, fh),
        };
        match fill {
            Some(f) => {
                let fill = self.fills[f as usize].as_mut().expect("fill in flight");
                let w = self.waiters[wi as usize].as_mut().expect("parked");
                w.next = fill.waiters;
                fill.waiters = Some(wi);
            }
            None if self.ring.in_flight() == 0 && self.compressing() == 0 => {
                // Nothing will complete to make room (every block pinned): do not wait for it.
                let w = self.unpark(wi);
                self.serve_uncached(w);
            }
            None => {
                if self.compressor_full()
                    && let Some(w) = self.waiters[wi as usize].as_mut()
                {
                    // Waiting for the worker's room is no lost race (see `compress`).
                    w.rounds -= 1;
                }
                self.backlog.push_back(wi);
            }
        }
    }

    pub(super) fn drain_backlog(&mut self) {
        let n = self.backlog.len();
        for _ in 0..n {
            if self.free_fills.is_empty() {
                break;
            }
            let Some(wi) = self.backlog.pop_front() else {
                break;
            };
            self.evaluate(wi);
        }
    }
}
