//! The cold source read the way the mount's engine reads it: O_DIRECT through io_uring, one chunk
//! per read, many in flight, into a registered buffer. Without it the cold ratio would compare the
//! mount's queue depth with the kernel's readahead, not the cache with no cache.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use nitro_ring::{Completion, Ring};

use super::{Clock, Ctx, FileRef, Measurement, Progress, elapsed_ns, human_bytes, new_hist, open};
use crate::sys::{AnonMap, PAGE};

/// The cold-source baseline at the mount's own queue depth: reads every file front to back, one
/// file after the other, in `chunk`-sized O_DIRECT reads through an io_uring ([`nitro_ring::Ring`],
/// as the mount's engine reads), keeping up to `depth` reads in flight, into an anonymous mapping
/// made as the engine's arena is (huge pages advised, registered with the ring for `READ_FIXED`).
/// Reads are page-rounded at the end of a file (the kernel stops at EOF), as the engine's are.
/// Latency is per read, from submission to completion, so it includes the queueing behind the
/// other reads in flight.
pub fn ring_seq_read(
    files: &[FileRef],
    chunk: usize,
    depth: usize,
    ctx: &Ctx<'_>,
) -> Result<Measurement> {
    let chunk = chunk.max(PAGE).next_multiple_of(PAGE);
    let depth = depth.max(1);
    let total: u64 = files.iter().map(|f| f.size).sum();
    let buf = AnonMap::new(chunk * depth).context("mapping the read buffers")?;
    let mut ring =
        Ring::new((depth as u32 + 2).next_power_of_two()).context("io_uring unavailable")?;
    // SAFETY: `buf` outlives `ring` (dropped after it: `ring` is declared later) and is never
    // remapped; reads are drained below before either goes.
    let registered = unsafe { ring.register_region(buf.as_ptr(), buf.len()) }.is_ok();
    let progress = Progress::start(ctx, Some(total), None);
    let mut reads = Reads {
        ring: &mut ring,
        buf: &buf,
        chunk,
        depth,
        progress: &progress,
        hist: new_hist(),
        bytes: 0,
        ops: 0,
    };
    let mut all_direct = true;
    let clock = Clock::start();
    let result: Result<()> = files.iter().try_for_each(|f| {
        all_direct &= reads.file(f, ctx)?;
        Ok(())
    });
    // Never leave reads in flight into memory about to be unmapped (error or Ctrl+C above).
    reads.drain();
    result?;
    let access = format!(
        "{}, io_uring{}, {} × {} reads in flight",
        if all_direct {
            "O_DIRECT"
        } else {
            "buffered (O_DIRECT refused)"
        },
        if registered { " READ_FIXED" } else { "" },
        depth,
        human_bytes(chunk as u64)
    );
    Ok(clock.finish(reads.bytes, reads.ops, reads.hist, access))
}

/// The ring, its buffer of `depth` slots of `chunk` bytes, and what the reads so far measured.
struct Reads<'a> {
    ring: &'a mut Ring,
    buf: &'a AnonMap,
    chunk: usize,
    depth: usize,
    progress: &'a Progress,
    hist: Histogram<u64>,
    bytes: u64,
    ops: u64,
}

/// One file being read: its descriptor, the read in flight in each slot (and when it was
/// submitted), the free slots, and where the next read starts.
struct FileReads<'f> {
    f: &'f FileRef,
    fd: RawFd,
    direct: bool,
    slots: Vec<Option<(RingRead, Instant)>>,
    free: Vec<usize>,
    next: u64,
}

/// One read: `want` bytes at `off` of the file into buffer slot `slot`, `skip` bytes into the
/// slot (after a short read).
struct RingRead {
    slot: usize,
    off: u64,
    want: u64,
    skip: usize,
}

impl Reads<'_> {
    /// Reads `f` front to back; returns whether it was opened with O_DIRECT.
    fn file(&mut self, f: &FileRef, ctx: &Ctx<'_>) -> Result<bool> {
        let (file, direct) = open(&f.path, true)?;
        let mut st = FileReads {
            f,
            fd: file.as_raw_fd(),
            direct,
            slots: (0..self.depth).map(|_| None).collect(),
            free: (0..self.depth).rev().collect(),
            next: 0,
        };
        let mut done = Vec::with_capacity(self.depth);
        loop {
            ctx.check()?;
            self.fill(&mut st);
            if self.ring.in_flight() == 0 {
                break;
            }
            done.clear();
            self.ring
                .wait(true, &mut done)
                .with_context(|| format!("io_uring wait reading {}", f.path.display()))?;
            for c in &done {
                self.complete(&mut st, c)?;
            }
        }
        // `file` is closed here, after its last read completed.
        Ok(direct)
    }

    /// Queues reads into the free slots until the file is covered or the ring is full.
    fn fill(&mut self, st: &mut FileReads<'_>) {
        while st.next < st.f.size {
            let Some(slot) = st.free.pop() else { break };
            let want = (st.f.size - st.next).min(self.chunk as u64);
            let r = RingRead {
                slot,
                off: st.next,
                want,
                skip: 0,
            };
            if !self.submit(st, &r) {
                st.free.push(slot);
                break;
            }
            st.slots[slot] = Some((r, Instant::now()));
            st.next += want;
        }
    }

    /// Accounts one completion; a short read before the end is continued in the same slot.
    fn complete(&mut self, st: &mut FileReads<'_>, c: &Completion) -> Result<()> {
        let path = st.f.path.display();
        let Some((r, t)) = st
            .slots
            .get_mut(c.user_data as usize)
            .and_then(Option::take)
        else {
            bail!("completion for an unknown read ({})", c.user_data);
        };
        if c.result < 0 {
            return Err(std::io::Error::from_raw_os_error(-c.result))
                .with_context(|| format!("read {path} at {}", r.off));
        }
        let n = (c.result as u64).min(r.want);
        if n == 0 {
            bail!("{path} ended at {}, before its size {}", r.off, st.f.size);
        }
        self.hist.saturating_record(elapsed_ns(t));
        self.ops += 1;
        self.bytes += n;
        self.progress.bytes.fetch_add(n, Ordering::Relaxed);
        if n == r.want {
            st.free.push(r.slot);
            return Ok(());
        }
        let rest = RingRead {
            slot: r.slot,
            off: r.off + n,
            want: r.want - n,
            skip: r.skip + n as usize,
        };
        if st.direct && !rest.skip.is_multiple_of(PAGE) {
            bail!(
                "{path}: short O_DIRECT read ended unaligned at {}",
                rest.off
            );
        }
        if !self.submit(st, &rest) {
            bail!("io_uring submission queue full");
        }
        let slot = rest.slot;
        st.slots[slot] = Some((rest, Instant::now()));
        Ok(())
    }

    /// Queues `r`; false when the submission queue is full.
    fn submit(&mut self, st: &FileReads<'_>, r: &RingRead) -> bool {
        let room = self.chunk - r.skip;
        let len = if st.direct {
            (r.want as usize).next_multiple_of(PAGE)
        } else {
            r.want as usize
        }
        .min(room);
        // SAFETY: slot * chunk + skip + len <= depth * chunk = the mapping's usable length; the
        // slot is this read's alone until its completion is reaped, and `file` keeps `fd` open and
        // the caller keeps the mapping alive until every read is reaped.
        unsafe {
            let ptr = self.buf.as_ptr().add(r.slot * self.chunk + r.skip);
            self.ring
                .push_read(st.fd, r.off, ptr, len as u32, r.slot as u64)
        }
    }

    /// Waits for every read in flight.
    fn drain(&mut self) {
        let mut sink = Vec::new();
        while self.ring.in_flight() > 0 {
            sink.clear();
            if self.ring.wait(true, &mut sink).is_err() {
                break;
            }
        }
    }
}
