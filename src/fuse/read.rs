//! The read path: a hit is a slice of the arena handed to the kernel (no copy, no allocation);
//! everything else goes to the engine, which replies when the bytes land.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::Sender;
use fuser::{Errno, FileAttr, FileHandle, ReplyData};
use nitro_ring::Waker;

use super::NitroFs;
use super::nodes::Node;
use crate::control::telemetry::Telemetry;
use crate::engine::{Copied, Msg, ReadReply, Shared, Source};
use crate::index::Key;

/// Per-open state: the version it opened, and the sequential-stream detector.
pub struct Handle {
    pub stream: Stream,
    pub src: Arc<Source>,
    pub node: Arc<Node>,
    /// The version's attributes as of the open (getattr with this handle answers with them).
    pub attr: FileAttr,
    /// Keep mode: this handle reads through the kernel's page cache.
    pub cached: bool,
    /// Passthrough or daemon-served (undone at release).
    pub route: super::passthrough::Route,
}

/// A handle's sequential-stream detector and prefetch window.
#[derive(Default)]
pub struct Stream {
    next_offset: AtomicU64,
    /// Prefetch has been requested up to this chunk (exclusive).
    prefetched_to: AtomicU64,
    /// How far ahead prefetch runs now (0: not started); grows to the reader's maximum.
    window_bytes: AtomicU64,
}

impl Handle {
    pub fn new(
        src: Arc<Source>,
        node: Arc<Node>,
        attr: FileAttr,
        cached: bool,
        route: super::passthrough::Route,
    ) -> Handle {
        Handle {
            stream: Stream::default(),
            src,
            node,
            attr,
            cached,
            route,
        }
    }
}

/// The engine completes misses through this: fuser's reply is the FUSE side of `ReadReply`, and
/// the miss's service time is recorded when it is answered.
struct MissReply {
    reply: ReplyData,
    start: Instant,
    telemetry: Arc<Telemetry>,
}

impl ReadReply for MissReply {
    fn data(self: Box<Self>, bytes: &[u8]) {
        self.reply.data(bytes);
        self.telemetry.miss(self.start, bytes.len());
    }

    fn error(self: Box<Self>, errno: i32) {
        self.reply.error(Errno::from_i32(errno));
        self.telemetry.miss(self.start, 0);
    }
}

thread_local! {
    /// Per-worker buffer for replies that span chunks; sized on first use, then reused.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl NitroFs {
    pub(super) fn serve_read(&self, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        if self.shared.dead.load(Ordering::Relaxed) {
            return reply.error(Errno::EIO); // the fill engine died (see `Engine::die`)
        }
        let Some(h) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        self.reader
            .serve(&h.src, &h.stream, fh.0, offset, size, reply);
    }
}

/// What the read path needs of the filesystem it serves (local or remote source).
pub struct Reader {
    pub shared: Arc<Shared>,
    pub tx: Sender<Msg>,
    pub waker: Waker,
    pub telemetry: Arc<Telemetry>,
    /// Sequential prefetch starts this far ahead of a reader (0: none)...
    pub readahead_bytes: u64,
    /// ...and doubles at each chunk crossed up to this (remote sources: hide the round trip).
    pub max_readahead_bytes: u64,
}

impl Reader {
    pub fn send(&self, msg: Msg) {
        if self.tx.send(msg).is_ok() {
            self.waker.wake();
        }
    }

    /// Serves one read of version `src` through a handle whose stream is `stream`.
    pub fn serve(
        &self,
        src: &Arc<Source>,
        stream: &Stream,
        fh: u64,
        offset: u64,
        size: u32,
        mut reply: ReplyData,
    ) {
        let start = Instant::now();
        if offset >= src.size || size == 0 {
            return reply.data(&[]);
        }
        let size = (u64::from(size)).min(src.size - offset) as u32;
        let end = offset + u64::from(size);
        let shared = &*self.shared;
        let first = shared.chunk_of(offset);
        let last = shared.chunk_of(end - 1);
        // Accesses count once per open handle (see `index::Slot::last_toucher`).
        let toucher = fh;
        self.maybe_prefetch(src, stream, fh, offset, end);
        if let Some(bytes) = src.store.get().and_then(|e| e.range(offset, size as usize)) {
            // A stored version: a slice of its tmpfs mapping, whatever chunks the range spans.
            shared.stats.hits.fetch_add(1, Ordering::Relaxed);
            reply.data(bytes);
            return self.telemetry.hit(start, bytes.len());
        }
        if first == last {
            let key = Key {
                file: src.file_id,
                chunk: first,
            };
            if let Some(pin) = shared.index.pin(key, toucher) {
                let at = (offset - first * shared.chunk_bytes) as usize;
                if let Some(bytes) = pin.raw_bytes(&shared.arena) {
                    shared.stats.hits.fetch_add(1, Ordering::Relaxed);
                    reply.data(&bytes[at..at + size as usize]);
                    return self.telemetry.hit(start, size as usize);
                }
                // Compressed: decoded below, through the same path as spanning reads.
            } else {
                return self.miss(src, fh, offset, size, reply, start);
            }
        } else if last == first + 1 {
            // A request spanning two chunks whose blocks happen to be neighbours in the arena (the
            // usual case: a file's chunks are filled in order into consecutive slabs) is still one
            // slice, so it is replied without a copy: fuser's reply takes a single slice.
            let k0 = Key {
                file: src.file_id,
                chunk: first,
            };
            let k1 = Key {
                file: src.file_id,
                chunk: last,
            };
            if let (Some(p0), Some(p1)) =
                (shared.index.pin(k0, toucher), shared.index.pin(k1, toucher))
            {
                let chunk = shared.chunk_bytes;
                if let Some(bytes) = p0.span_with(&p1, &shared.arena, chunk as usize) {
                    let at = (offset - first * chunk) as usize;
                    shared.stats.hits.fetch_add(1, Ordering::Relaxed);
                    reply.data(&bytes[at..at + size as usize]);
                    return self.telemetry.hit(start, size as usize);
                }
            }
        }
        // Everything else that is cached (compressed chunks, non-adjacent spans) is copied or
        // decoded into this worker's scratch buffer, sized once.
        {
            let mut pending = Some(reply);
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < size as usize {
                    s.resize(shared.max_request_bytes.max(size as usize), 0);
                }
                let out = &mut s[..size as usize];
                match shared.copy_cached(src, offset, out, toucher) {
                    Copied::Done => {
                        if let Some(reply) = pending.take() {
                            shared.stats.hits.fetch_add(1, Ordering::Relaxed);
                            reply.data(out);
                            self.telemetry.hit(start, out.len());
                        }
                    }
                    Copied::Corrupt(key) => {
                        shared.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                        self.send(Msg::DropCorrupt { key });
                    }
                    Copied::Missing => {}
                }
            });
            let Some(r) = pending else { return };
            reply = r;
        }
        self.miss(src, fh, offset, size, reply, start);
    }

    /// Hands a read the arena cannot serve to the ring thread, which replies when the bytes land.
    fn miss(
        &self,
        src: &Arc<Source>,
        fh: u64,
        offset: u64,
        size: u32,
        reply: ReplyData,
        start: Instant,
    ) {
        self.shared.stats.misses.fetch_add(1, Ordering::Relaxed);
        let reply = MissReply {
            reply,
            start,
            telemetry: self.telemetry.clone(),
        };
        self.send(Msg::Read {
            src: src.clone(),
            fh,
            offset,
            size,
            reply: Box::new(reply),
        });
    }

    /// Requests fills ahead of a sequential reader, once per chunk boundary it crosses.
    fn maybe_prefetch(&self, src: &Arc<Source>, h: &Stream, fh: u64, offset: u64, end: u64) {
        if self.readahead_bytes == 0 {
            return;
        }
        let sequential = h.next_offset.swap(end, Ordering::Relaxed) == offset;
        if !sequential || offset == 0 {
            return;
        }
        let chunk_bytes = self.shared.chunk_bytes;
        let from = end.div_ceil(chunk_bytes);
        let window = match h.window_bytes.load(Ordering::Relaxed) {
            0 => self.readahead_bytes,
            w => w,
        };
        let to = (end + window).div_ceil(chunk_bytes);
        let done = h.prefetched_to.load(Ordering::Relaxed);
        if to > done && to > from {
            h.prefetched_to.store(to, Ordering::Relaxed);
            let grown = window
                .saturating_mul(2)
                .min(self.max_readahead_bytes.max(window));
            h.window_bytes.store(grown, Ordering::Relaxed);
            self.send(Msg::Prefetch {
                src: src.clone(),
                fh,
                first: from.max(done),
                last: to - 1,
            });
        }
    }
}
