//! Uncached reads: the slow path of last resort, straight from the source into a buffer of its own.
//!
//! Why it exists: a pool of a few chunks under heavy churn, or one whose blocks are all pinned,
//! cannot always hold a request's chunks at once; this path keeps progress guaranteed. Why through
//! the ring: a synchronous `pread` here would stall every other fill behind one slow read.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use super::request::Waiter;
use super::{Engine, errno_of};

/// Uncached reads in flight at most (each has a buffer of the largest request, made at start-up).
pub(super) const UNCACHED_SLOTS: usize = 4;
/// Marks an uncached read's completion (fills are tagged with their index alone).
pub(super) const UNCACHED_TAG: u64 = 1 << 62;

/// A buffer for an uncached read, and the read using it: (request, bytes wanted, bytes landed).
pub(super) struct Uncached {
    pub(super) buf: Box<[u8]>,
    pub(super) job: Option<(Waiter, usize, usize)>,
}

impl Engine {
    /// Reads the request straight from the source into a buffer of its own, bypassing the arena:
    /// the slow path of last resort, which keeps progress guaranteed when the arena cannot hold
    /// the request. Through the ring like every other read, so the engine never blocks on it; at
    /// most `UNCACHED_SLOTS` at once (their buffers are made at start-up), the rest wait in line.
    pub(super) fn serve_uncached(&mut self, w: Waiter) {
        self.shared
            .stats
            .uncached_reads
            .fetch_add(1, Ordering::Relaxed);
        if w.src.is_stale() {
            return w.reply.error(libc::EIO);
        }
        let want = u64::from(w.size).min(w.src.size.saturating_sub(w.offset)) as usize;
        if want == 0 {
            return w.reply.data(&[]);
        }
        let Some(i) = self.free_uncached.pop() else {
            self.uncached_line.push_back(w);
            return;
        };
        self.uncached[i as usize].job = Some((w, want, 0));
        self.submit_uncached(i);
    }

    /// Queues the rest of an uncached read (buffered descriptor: any offset and length).
    pub(super) fn submit_uncached(&mut self, i: u32) {
        let slot = &mut self.uncached[i as usize];
        let Some((w, want, done)) = slot.job.as_ref() else {
            return;
        };
        let (want, done) = (*want, *done);
        if let Some(object) = w.src.remote() {
            let (object, offset) = (object.clone(), w.offset + done as u64);
            let ptr = slot.buf[done..].as_mut_ptr();
            // SAFETY: as for the ring read below; the engine waits for every fetch before its
            // buffers go (`Drop for Engine`).
            unsafe {
                self.fetch(
                    object,
                    offset,
                    ptr,
                    want - done,
                    UNCACHED_TAG | u64::from(i),
                )
            };
            return;
        }
        let fd = match w.src.buffered_fd() {
            Ok(fd) => fd.as_raw_fd(),
            Err(e) => return self.finish_uncached(i, Err(errno_of(&e))),
        };
        let offset = w.offset + done as u64;
        let ptr = slot.buf[done..].as_mut_ptr();
        // SAFETY: the slot's buffer is this read's alone until its completion (the job stays in
        // the slot until then) and has `want - done` bytes from `ptr`; the waiter's `src` keeps
        // the descriptor open.
        let pushed = unsafe {
            self.ring.push_read(
                fd,
                offset,
                ptr,
                (want - done) as u32,
                UNCACHED_TAG | u64::from(i),
            )
        };
        assert!(pushed, "ring full with {} reads", self.ring.in_flight());
    }

    pub(super) fn complete_uncached(&mut self, i: u32, result: i32) {
        let Some((w, want, done)) = self.uncached[i as usize].job.as_mut() else {
            debug_assert!(false, "completion for a free uncached slot {i}");
            return;
        };
        if result == -crate::remote::CHANGED_ERRNO && w.src.remote().is_some() {
            w.src
                .mark_stale("the object changed or went away in the bucket (ETag)");
            return self.finish_uncached(i, Err(libc::EIO));
        }
        if result < 0 {
            return self.finish_uncached(i, Err(-result));
        }
        if result == 0 {
            w.src.mark_stale(&format!(
                "end of file at {} before its size {}",
                w.offset + *done as u64,
                w.src.size
            ));
            return self.finish_uncached(i, Err(libc::EIO));
        }
        *done = (*done + result as usize).min(*want);
        if *done < *want {
            return self.submit_uncached(i);
        }
        // Served only if the file still is this version after the read (see `Source`).
        let outcome = if w.src.still_holds() {
            Ok(())
        } else {
            Err(libc::EIO)
        };
        self.finish_uncached(i, outcome);
    }

    pub(super) fn finish_uncached(&mut self, i: u32, outcome: Result<(), i32>) {
        let slot = &mut self.uncached[i as usize];
        if let Some((w, want, _)) = slot.job.take() {
            match outcome {
                Ok(()) => w.reply.data(&slot.buf[..want]),
                Err(errno) => w.reply.error(errno),
            }
        }
        self.free_uncached.push(i);
        if let Some(next) = self.uncached_line.pop_front() {
            self.serve_uncached(next);
        }
    }
}
