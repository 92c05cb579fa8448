//! Engine unit tests: the fill state machine driven without a mount. A `Rig` builds the shared
//! arena and index, runs the engine on a thread as `mount.rs` does, and stands in for the FUSE front
//! (a hit is copied out of the index; a miss is a `Msg::Read` whose `ReadReply` answers over a
//! channel). Sources are real temp files, changed between requests; reads go through a real ring.

use super::evict::Victim;
use super::*;
use crate::arena::Arena;
use crate::codec::{self, DtypeHint};
use crate::index::{Index, SlotView};
use crate::store::Store;
use parking_lot::Mutex;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHUNK: u64 = 64 << 10;
const TIMEOUT: Duration = Duration::from_secs(20);

type Answer = Result<Vec<u8>, i32>;

/// The test's side of a miss: the engine's answer, sent on.
struct ChanReply(mpsc::Sender<Answer>);

impl ReadReply for ChanReply {
    fn data(self: Box<Self>, bytes: &[u8]) {
        let _ = self.0.send(Ok(bytes.to_vec()));
    }

    fn error(self: Box<Self>, errno: i32) {
        let _ = self.0.send(Err(errno));
    }
}

fn n(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Bytes that differ at every offset (so a misplaced copy shows), varied by `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

/// Compressible bytes.
fn text(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while v.len() < len {
        v.extend_from_slice(format!("line {i:08} of a model card, mostly alike\n").as_bytes());
        i += 1;
    }
    v.truncate(len);
    v
}

pub(super) fn source_at(path: &Path, file_id: u64, name: &str, size: Option<u64>) -> Arc<Source> {
    source_hinted(path, file_id, name, size, DtypeHint::Unknown)
}

/// As `source_at`, for a file whose format says its bytes are `hint` (`Source::default_hint`).
pub(super) fn source_hinted(
    path: &Path,
    file_id: u64,
    name: &str,
    size: Option<u64>,
    hint: DtypeHint,
) -> Arc<Source> {
    let file = std::fs::File::open(path).expect("open test source");
    let fd = OwnedFd::from(file);
    let stamp = fd_stamp(&fd).expect("fstat test source");
    Arc::new(Source {
        file_id,
        origin: super::source::Origin::local(fd, false),
        size: size.unwrap_or(stamp.2),
        name: name.into(),
        fuse_ino: file_id + 1,
        layout: None,
        default_hint: hint,
        compressed_logical_bytes: AtomicU64::new(0),
        compressed_stored_bytes: AtomicU64::new(0),
        loop_bytes: AtomicU64::new(0),
        compression_logged: Arc::new(AtomicBool::new(false)),
        stamp,
        stale: AtomicBool::new(false),
        store: std::sync::OnceLock::new(),
    })
}

struct Rig {
    shared: Arc<Shared>,
    tx: crossbeam_channel::Sender<Msg>,
    waker: Waker,
    /// The engine while it is not running.
    engine: Option<Engine>,
    thread: Option<std::thread::JoinHandle<Engine>>,
    dir: tempfile::TempDir,
    next_id: AtomicU64,
}

impl Rig {
    /// A stopped engine over a pool of `pool_chunks` chunks with `max_fills` fill slots.
    fn new(pool_chunks: u64, max_fills: usize, compress: CompressMode) -> Rig {
        Rig::build(pool_chunks, max_fills, compress, None)
    }

    /// A running engine with a store of `cap_chunks` chunks in its own directory on /dev/shm.
    fn with_store(pool_chunks: u64, cap_chunks: u32, store_dir: &Path) -> Rig {
        let mode = crate::store::StoreMode::Dir(store_dir.to_path_buf());
        let store = Store::open(&mode, store_dir, (1, 2), CHUNK, CHUNK, cap_chunks).expect("store");
        let mut rig = Rig::build(pool_chunks, 8, CompressMode::Off, Some(store));
        rig.start();
        rig
    }

    fn build(
        pool_chunks: u64,
        max_fills: usize,
        compress: CompressMode,
        store: Option<Store>,
    ) -> Rig {
        let pool = pool_chunks * CHUNK;
        let arena = Arena::new(pool as usize, CHUNK as usize, false).expect("arena");
        let shared = Arc::new(Shared {
            arena,
            index: Index::new((pool_chunks * 4 + 256) as u32, 4),
            stats: Stats::default(),
            chunk_bytes: CHUNK,
            max_request_bytes: CHUNK as usize,
            last_fill: Mutex::new(None),
            compress,
            min_saving: codec::DEFAULT_MIN_SAVING,
            dead: AtomicBool::new(false),
            death: Mutex::new(None),
            store,
        });
        let (tx, rx) = crossbeam_channel::bounded(4096);
        let (engine, waker) = Engine::new(shared.clone(), rx, max_fills, None).expect("io_uring");
        Rig {
            shared,
            tx,
            waker,
            engine: Some(engine),
            thread: None,
            dir: tempfile::tempdir().expect("tempdir"),
            next_id: AtomicU64::new(1),
        }
    }

    fn started(pool_chunks: u64, max_fills: usize) -> Rig {
        let mut rig = Rig::new(pool_chunks, max_fills, CompressMode::Off);
        rig.start();
        rig
    }

    /// Runs the engine on its own thread, as the mount does: a failed or panicking `run` dies.
    fn start(&mut self) {
        let mut engine = self.engine.take().expect("engine not running");
        let thread = std::thread::spawn(move || {
            let reason =
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run())) {
                    Ok(Ok(())) => return engine,
                    Ok(Err(e)) => e,
                    Err(_) => "ring thread panicked: fault injection".to_owned(),
                };
            engine.die(reason);
            engine
        });
        self.thread = Some(thread);
    }

    /// Shuts the engine down (it finishes the reads in flight) and takes it back.
    fn stop(&mut self) {
        let thread = self.thread.take().expect("engine running");
        self.send(Msg::Shutdown);
        self.engine = Some(thread.join().expect("engine thread"));
    }

    fn send(&self, msg: Msg) {
        self.tx.send(msg).expect("engine channel open");
        self.waker.wake();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a source file and opens a version of it.
    fn file(&self, name: &str, bytes: &[u8]) -> Arc<Source> {
        std::fs::write(self.path(name), bytes).expect("write source");
        self.open(name)
    }

    /// Opens a new version (a new file id) of the file `name` as it is now.
    fn open(&self, name: &str) -> Arc<Source> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        source_at(&self.path(name), id, name, None)
    }

    /// A miss as the front sends it; the answer comes on the returned channel.
    fn miss(&self, src: &Arc<Source>, offset: u64, size: u32) -> mpsc::Receiver<Answer> {
        let (tx, rx) = mpsc::channel();
        self.shared.stats.misses.fetch_add(1, Ordering::Relaxed);
        self.send(Msg::Read {
            src: src.clone(),
            fh: 7,
            offset,
            size,
            reply: Box::new(ChanReply(tx)),
        });
        rx
    }

    /// A read as the FUSE front does it: clamped to the version's size, a hit copied out of the
    /// index, anything else a miss answered by the engine.
    fn read(&self, src: &Arc<Source>, offset: u64, size: u32) -> Answer {
        if offset >= src.size || size == 0 {
            return Ok(Vec::new());
        }
        let size = u64::from(size).min(src.size - offset) as u32;
        let mut out = vec![0u8; size as usize];
        match self.shared.copy_cached(src, offset, &mut out, 7) {
            Copied::Done => {
                self.shared.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(out);
            }
            Copied::Corrupt(key) => {
                self.shared
                    .stats
                    .decode_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.send(Msg::DropCorrupt { key });
            }
            Copied::Missing => {}
        }
        answer(&self.miss(src, offset, size))
    }

    fn cached(&self, src: &Source, chunk: u64) -> bool {
        self.shared.index.contains(Key {
            file: src.file_id,
            chunk,
        })
    }

    fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.tx.send(Msg::Shutdown);
            self.waker.wake();
            // The engine (and its ring) goes before the arena it reads into.
            let _ = thread.join();
        }
    }
}

fn answer(rx: &mpsc::Receiver<Answer>) -> Answer {
    rx.recv_timeout(TIMEOUT)
        .expect("the engine answered the read")
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn slice(data: &[u8], offset: u64, size: u32) -> Answer {
    Ok(data[offset as usize..offset as usize + size as usize].to_vec())
}

#[test]
fn a_miss_fills_its_chunk_and_the_next_read_hits() {
    let rig = Rig::started(8, 4);
    let data = pattern(3 * CHUNK as usize, 1);
    let src = rig.file("f", &data);
    assert_eq!(rig.read(&src, 100, 4000), slice(&data, 100, 4000));
    let s = rig.stats();
    assert_eq!((n(&s.misses), n(&s.fills), n(&s.hits)), (1, 1, 0));
    assert_eq!(n(&s.fill_bytes), CHUNK);
    assert!(rig.cached(&src, 0) && !rig.cached(&src, 1));
    assert_eq!(rig.read(&src, 5000, 9000), slice(&data, 5000, 9000));
    assert_eq!((n(&s.misses), n(&s.fills), n(&s.hits)), (1, 1, 1));
    assert_eq!(n(&s.fill_errors) + n(&s.uncached_reads), 0);
}

#[test]
fn the_short_last_chunk_is_filled_to_the_file_size() {
    let rig = Rig::started(8, 4);
    let data = pattern(CHUNK as usize + 1000, 2);
    let src = rig.file("f", &data);
    assert_eq!(
        rig.read(&src, CHUNK + 10, 990),
        slice(&data, CHUNK + 10, 990)
    );
    // Asked past the end: clamped to the file, as the front does.
    assert_eq!(
        rig.read(&src, CHUNK + 500, 4096),
        slice(&data, CHUNK + 500, 500)
    );
    let s = rig.stats();
    assert_eq!((n(&s.fills), n(&s.fill_bytes), n(&s.hits)), (1, 1000, 1));
}

#[test]
fn a_read_spanning_two_chunks_fills_both() {
    let rig = Rig::started(8, 4);
    let data = pattern(3 * CHUNK as usize, 3);
    let src = rig.file("f", &data);
    assert_eq!(
        rig.read(&src, CHUNK - 100, 300),
        slice(&data, CHUNK - 100, 300)
    );
    let s = rig.stats();
    assert_eq!((n(&s.misses), n(&s.fills)), (1, 2));
    assert!(rig.cached(&src, 0) && rig.cached(&src, 1));
    assert_eq!(
        rig.read(&src, CHUNK - 4000, 8000),
        slice(&data, CHUNK - 4000, 8000)
    );
    assert_eq!((n(&s.hits), n(&s.fills), n(&s.uncached_reads)), (1, 2, 0));
}

#[test]
fn concurrent_misses_on_one_chunk_make_one_read() {
    // Queued before the engine runs, so all eight are parked while the one fill is in flight.
    let mut rig = Rig::new(8, 4, CompressMode::Off);
    let data = pattern(2 * CHUNK as usize, 4);
    let src = rig.file("f", &data);
    let asks: Vec<(u64, u32)> = (0..8).map(|i| (CHUNK + i * 7000, 3000)).collect();
    let rxs: Vec<_> = asks.iter().map(|&(o, s)| rig.miss(&src, o, s)).collect();
    rig.start();
    for (&(o, s), rx) in asks.iter().zip(&rxs) {
        assert_eq!(answer(rx), slice(&data, o, s));
    }
    let s = rig.stats();
    assert_eq!((n(&s.misses), n(&s.fills), n(&s.fill_bytes)), (8, 1, CHUNK));
    assert_eq!(n(&s.uncached_reads), 0);
}

#[test]
fn more_misses_than_fill_slots_wait_in_the_backlog_and_all_complete() {
    let mut rig = Rig::new(16, 2, CompressMode::Off);
    let data = pattern(8 * CHUNK as usize, 5);
    let src = rig.file("f", &data);
    let rxs: Vec<_> = (0..8).map(|c| rig.miss(&src, c * CHUNK + 1, 777)).collect();
    rig.start();
    for (c, rx) in rxs.iter().enumerate() {
        assert_eq!(answer(rx), slice(&data, c as u64 * CHUNK + 1, 777));
    }
    let s = rig.stats();
    assert_eq!((n(&s.fills), n(&s.fill_bytes)), (8, 8 * CHUNK));
    assert_eq!(
        n(&s.uncached_reads) + n(&s.fill_errors) + n(&s.evictions),
        0
    );
    assert_eq!(rig.shared.index.len(), 8);
}

#[test]
fn prefetch_fills_ahead_so_the_reader_hits() {
    let rig = Rig::started(16, 8);
    let data = pattern(4 * CHUNK as usize, 6);
    let src = rig.file("f", &data);
    // Past the last chunk is clamped to it.
    rig.send(Msg::Prefetch {
        src: src.clone(),
        fh: 7,
        first: 1,
        last: 10,
    });
    wait_until("prefetched chunks", || (1..4).all(|c| rig.cached(&src, c)));
    let s = rig.stats();
    assert_eq!((n(&s.prefetch_fills), n(&s.fills)), (3, 3));
    assert!(!rig.cached(&src, 0));
    assert_eq!(
        rig.read(&src, 2 * CHUNK + 9, 5000),
        slice(&data, 2 * CHUNK + 9, 5000)
    );
    assert_eq!((n(&s.hits), n(&s.misses), n(&s.fills)), (1, 0, 3));
    // Prefetching what is cached or being filled starts nothing.
    rig.send(Msg::Prefetch {
        src: src.clone(),
        fh: 7,
        first: 0,
        last: 3,
    });
    assert_eq!(rig.read(&src, 10, 10), slice(&data, 10, 10));
    assert_eq!((n(&s.prefetch_fills), n(&s.fills)), (4, 4));
}

#[test]
fn prefetch_of_a_stale_version_reads_nothing() {
    let rig = Rig::started(8, 4);
    let src = rig.file("f", &pattern(4 * CHUNK as usize, 7));
    src.mark_stale("test");
    rig.send(Msg::Prefetch {
        src: src.clone(),
        fh: 7,
        first: 0,
        last: 3,
    });
    // Messages are handled in order: once this miss is answered the prefetch was handled.
    assert_eq!(rig.read(&src, 0, 10), Err(libc::EIO));
    let s = rig.stats();
    assert_eq!((n(&s.fills), n(&s.prefetch_fills)), (0, 0));
}

#[test]
fn a_short_read_then_end_of_file_fails_the_miss_with_eio() {
    let rig = Rig::started(8, 4);
    let src = rig.file("f", &pattern(2 * CHUNK as usize, 8));
    // Shrunk under the open version to the middle of chunk 1: its read comes back short, the
    // rest is read on and finds end of file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(rig.path("f"))
        .and_then(|f| f.set_len(CHUNK + CHUNK / 2))
        .expect("truncate");
    assert_eq!(rig.read(&src, CHUNK + 10, 100), Err(libc::EIO));
    assert!(src.is_stale());
    let s = rig.stats();
    assert_eq!(
        (n(&s.fills), n(&s.fill_errors), n(&s.fill_bytes)),
        (1, 1, 0)
    );
    assert!(!rig.cached(&src, 1));
    assert_eq!(rig.shared.arena.usage().used_bytes, 0, "block freed");
}

#[test]
fn end_of_file_moved_before_the_chunk_fails_this_and_later_misses() {
    let rig = Rig::started(8, 4);
    let src = rig.file("f", &pattern(2 * CHUNK as usize, 9));
    std::fs::OpenOptions::new()
        .write(true)
        .open(rig.path("f"))
        .and_then(|f| f.set_len(CHUNK / 2))
        .expect("truncate");
    assert_eq!(rig.read(&src, CHUNK + 10, 100), Err(libc::EIO));
    assert!(src.is_stale());
    // Stale: nothing more is read for this version, even where the bytes still are.
    assert_eq!(rig.read(&src, 0, 100), Err(libc::EIO));
    let s = rig.stats();
    assert_eq!((n(&s.fills), n(&s.fill_errors), n(&s.misses)), (1, 1, 2));
}

#[test]
fn a_file_grown_under_its_version_is_not_published() {
    let rig = Rig::started(8, 4);
    let data = pattern(2 * CHUNK as usize, 10);
    let src = rig.file("f", &data);
    let mut longer = data.clone();
    longer.extend_from_slice(&pattern(5000, 11));
    std::fs::write(rig.path("f"), &longer).expect("extend");
    // Every byte of chunk 0 lands, but the stamp check afterwards sees the new size.
    assert_eq!(rig.read(&src, 0, 100), Err(libc::EIO));
    assert!(src.is_stale());
    assert!(!rig.cached(&src, 0));
    let s = rig.stats();
    assert_eq!((n(&s.fills), n(&s.fill_errors)), (1, 1));
    // A new version sees the new bytes.
    let v2 = rig.open("f");
    assert_eq!(
        rig.read(&v2, 2 * CHUNK, 5000),
        slice(&longer, 2 * CHUNK, 5000)
    );
    assert_eq!((n(&s.fills), n(&s.fill_errors)), (2, 1));
}

#[test]
fn a_stale_version_keeps_its_cached_chunks_but_fails_misses() {
    let rig = Rig::started(8, 4);
    let data = pattern(3 * CHUNK as usize, 12);
    let src = rig.file("f", &data);
    assert_eq!(rig.read(&src, 0, 100), slice(&data, 0, 100));
    // Rewritten in place, same size: only mtime/ctime tell (wait out coarse timestamps).
    std::thread::sleep(Duration::from_millis(20));
    let mut changed = data.clone();
    changed[CHUNK as usize..2 * CHUNK as usize].fill(0xee);
    std::fs::write(rig.path("f"), &changed).expect("rewrite");
    assert_eq!(rig.read(&src, CHUNK, 100), Err(libc::EIO));
    assert!(src.is_stale());
    let s = rig.stats();
    assert_eq!((n(&s.fills), n(&s.fill_errors)), (2, 1));
    // Cached bytes are this version's: still served. Misses fail without reading.
    assert_eq!(rig.read(&src, 50, 100), slice(&data, 50, 100));
    assert_eq!(rig.read(&src, 2 * CHUNK, 100), Err(libc::EIO));
    assert_eq!((n(&s.fills), n(&s.hits), n(&s.misses)), (2, 1, 3));
    // The reopened version reads the new bytes.
    let v2 = rig.open("f");
    assert_eq!(rig.read(&v2, CHUNK, 100), slice(&changed, CHUNK, 100));
}

#[test]
fn a_source_read_error_reaches_the_reader_and_is_tried_again() {
    let rig = Rig::started(8, 4);
    // A directory: fstat works, every read fails with EISDIR.
    std::fs::create_dir(rig.path("d")).expect("mkdir");
    let src = source_at(&rig.path("d"), 99, "d", Some(2 * CHUNK));
    assert_eq!(rig.read(&src, 0, 100), Err(libc::EISDIR));
    assert!(!src.is_stale(), "an error is not a change of version");
    // Chunk 0 is read again (nothing was cached), and chunk 1 of the span in parallel.
    assert_eq!(rig.read(&src, CHUNK - 50, 100), Err(libc::EISDIR));
    let s = rig.stats();
    // The waiter is answered when chunk 0 fails; chunk 1's fill may still be in flight.
    wait_until("both fills failed", || n(&s.fill_errors) == 3);
    assert_eq!(n(&s.fills), 3);
    assert_eq!(rig.shared.index.len(), 0);
    assert_eq!(rig.shared.arena.usage().used_bytes, 0, "blocks freed");
}

#[test]
fn a_corrupt_compressed_chunk_is_dropped_and_read_again() {
    let mut rig = Rig::new(8, 4, CompressMode::Zstd);
    let data = text(2 * CHUNK as usize);
    let src = rig.file("f", &data);
    let key = Key {
        file: src.file_id,
        chunk: 0,
    };
    // Put chunk 0 in the cache compressed, as the engine does with a victim from main.
    {
        let engine = rig.engine.as_mut().expect("stopped");
        engine.sources.insert(src.file_id, Arc::downgrade(&src));
        let slot = engine.alloc_slot().expect("a free slot");
        let block = rig.shared.arena.alloc(CHUNK as usize).expect("a block");
        // SAFETY: a fresh block, not published: this thread is its only user.
        unsafe { rig.shared.arena.bytes_mut(block, CHUNK as usize) }
            .copy_from_slice(&data[..CHUNK as usize]);
        let view = SlotView::raw(block, CHUNK as usize);
        rig.shared.index.set(slot, key, view);
        let victim = Victim {
            slot,
            view,
            from_main: true,
            keeps: true,
        };
        assert!(engine.compress_now(victim), "text compresses");
    }
    let shared = rig.shared.clone();
    let s = &shared.stats;
    assert_eq!(n(&s.compressions), 1);
    assert!(n(&s.encoded_stored_bytes) < n(&s.encoded_logical_bytes));
    // Served decoded while intact.
    assert_eq!(rig.read(&src, 10, 3000), slice(&data, 10, 3000));
    assert_eq!(n(&s.hits), 1);
    // Flip bytes of the first piece.
    {
        let pin = rig.shared.index.pin(key, 0).expect("cached");
        let piece = pin.view().piece(0).expect("piece 0");
        // SAFETY: the engine is not running; nobody else reads or writes the block.
        let bytes = unsafe { rig.shared.arena.bytes_mut(piece, piece.capacity_bytes()) };
        for b in &mut bytes[24..40] {
            *b ^= 0x5a;
        }
    }
    // The engine finds it corrupt, drops it, fills the chunk raw and answers.
    rig.start();
    let rx = rig.miss(&src, 10, 3000);
    assert_eq!(answer(&rx), slice(&data, 10, 3000));
    assert_eq!((n(&s.decode_errors), n(&s.fills)), (1, 1));
    assert_eq!(
        (n(&s.encoded_logical_bytes), n(&s.encoded_stored_bytes)),
        (0, 0)
    );
    assert_eq!(rig.read(&src, 5, 100), slice(&data, 5, 100));
    assert_eq!((n(&s.hits), n(&s.fills)), (2, 1));
}

#[test]
fn a_pool_too_small_for_the_request_serves_it_uncached() {
    // One chunk of pool; a read spanning two chunks can never have both cached.
    let rig = Rig::started(1, 4);
    let data = pattern(2 * CHUNK as usize, 13);
    let src = rig.file("f", &data);
    assert_eq!(
        rig.read(&src, CHUNK - 100, 300),
        slice(&data, CHUNK - 100, 300)
    );
    let s = rig.stats();
    assert_eq!(n(&s.uncached_reads), 1);
    assert!(n(&s.evictions) >= 1, "chunks evicted each other");
    assert_eq!(n(&s.fill_errors), 0);
    // A read that fits still is cached.
    assert_eq!(rig.read(&src, 10, 100), slice(&data, 10, 100));
    assert_eq!(rig.read(&src, 20, 100), slice(&data, 20, 100));
    assert!(n(&s.hits) >= 1);
}

#[test]
fn a_small_pool_evicts_to_make_room() {
    let rig = Rig::started(2, 4);
    let data = pattern(4 * CHUNK as usize, 14);
    let src = rig.file("f", &data);
    for c in 0..4 {
        assert_eq!(rig.read(&src, c * CHUNK, 500), slice(&data, c * CHUNK, 500));
    }
    let s = rig.stats();
    assert_eq!((n(&s.fills), n(&s.evictions)), (4, 2));
    assert!(!rig.cached(&src, 0) && rig.cached(&src, 3));
    assert_eq!(rig.read(&src, 1, 500), slice(&data, 1, 500));
    assert_eq!(
        (n(&s.fills), n(&s.evictions), n(&s.uncached_reads)),
        (5, 3, 0)
    );
}

#[test]
fn purge_during_a_fill_drops_the_old_chunks_and_answers_the_read() {
    let mut rig = Rig::started(8, 4);
    let data = pattern(3 * CHUNK as usize, 15);
    let src = rig.file("f", &data);
    assert_eq!(rig.read(&src, 0, 10), slice(&data, 0, 10));
    assert_eq!(rig.read(&src, CHUNK, 10), slice(&data, CHUNK, 10));
    rig.stop();
    // Handled in one batch: the fill of chunk 2 starts, then the purge runs while it is in flight.
    let rx = rig.miss(&src, 2 * CHUNK + 5, 100);
    rig.send(Msg::Purge {
        file_id: src.file_id,
    });
    rig.start();
    assert_eq!(answer(&rx), slice(&data, 2 * CHUNK + 5, 100));
    assert!(!rig.cached(&src, 0) && !rig.cached(&src, 1));
    // The fill in flight completed after the purge; a later purge takes it too.
    wait_until("chunk 2 published", || rig.cached(&src, 2));
    assert_eq!(rig.shared.arena.usage().used_bytes, CHUNK);
    rig.send(Msg::Purge {
        file_id: src.file_id,
    });
    wait_until("chunk 2 purged", || !rig.cached(&src, 2));
    let s = rig.stats();
    assert_eq!((n(&s.fills), n(&s.fill_errors), n(&s.evictions)), (3, 0, 0));
    // The version reads again from the source.
    assert_eq!(rig.read(&src, 1, 10), slice(&data, 1, 10));
    assert_eq!(n(&s.fills), 4);
}

#[test]
fn purge_drops_exactly_that_files_chunks_and_leaves_the_others() {
    let mut rig = Rig::started(16, 4);
    let a_data = pattern(4 * CHUNK as usize, 18);
    let b_data = pattern(3 * CHUNK as usize, 19);
    let a = rig.file("a", &a_data);
    let b = rig.file("b", &b_data);
    for c in 0..4 {
        assert_eq!(rig.read(&a, c * CHUNK, 10), slice(&a_data, c * CHUNK, 10));
        if c < 3 {
            assert_eq!(rig.read(&b, c * CHUNK, 10), slice(&b_data, c * CHUNK, 10));
        }
    }
    assert_eq!(rig.shared.index.len(), 7);
    // A reader holds chunk 1 of `a`: the purge leaves it (and keeps it listed for a later one).
    let key = Key {
        file: a.file_id,
        chunk: 1,
    };
    let pin = rig.shared.index.pin(key, 0).expect("cached");
    rig.send(Msg::Purge { file_id: a.file_id });
    wait_until("a purged", || !rig.cached(&a, 0) && !rig.cached(&a, 3));
    assert!(!rig.cached(&a, 2) && rig.cached(&a, 1));
    assert!((0..3).all(|c| rig.cached(&b, c)), "b's chunks stay");
    assert_eq!(rig.shared.arena.usage().used_bytes, 4 * CHUNK);
    drop(pin);
    rig.send(Msg::Purge { file_id: a.file_id });
    wait_until("a's pinned chunk purged", || !rig.cached(&a, 1));
    assert_eq!(rig.shared.index.len(), 3);
    assert_eq!(rig.shared.arena.usage().used_bytes, 3 * CHUNK);
    let s = rig.stats();
    assert_eq!((n(&s.fills), n(&s.evictions)), (7, 0));
    for c in 0..3 {
        assert_eq!(rig.read(&b, c * CHUNK, 10), slice(&b_data, c * CHUNK, 10));
    }
    assert_eq!((n(&s.fills), n(&s.hits)), (7, 3));
    rig.stop();
    let engine = rig.engine.as_ref().expect("engine stopped");
    assert_eq!(
        (
            engine.file_slots.listed(a.file_id),
            engine.file_slots.listed(b.file_id)
        ),
        (0, 3)
    );
    // Purging `b` then leaves nothing listed or indexed.
    rig.start();
    rig.send(Msg::Purge { file_id: b.file_id });
    wait_until("b purged", || rig.shared.index.is_empty());
    rig.stop();
    let engine = rig.engine.as_ref().expect("engine stopped");
    assert!(engine.file_slots.lists.is_empty());
    assert_eq!(rig.shared.arena.usage().used_bytes, 0);
}

#[test]
fn a_reopened_version_never_sees_the_old_versions_chunks() {
    let rig = Rig::started(8, 4);
    let old = pattern(2 * CHUNK as usize, 16);
    let v1 = rig.file("f", &old);
    assert_eq!(rig.read(&v1, 0, 1000), slice(&old, 0, 1000));
    let new = pattern(2 * CHUNK as usize, 17);
    std::fs::write(rig.path("f.tmp"), &new).expect("write");
    std::fs::rename(rig.path("f.tmp"), rig.path("f")).expect("rename");
    let v2 = rig.open("f");
    assert_eq!(rig.read(&v2, 0, 1000), slice(&new, 0, 1000));
    // The old handle keeps reading the old inode, cached or not.
    assert_eq!(rig.read(&v1, 0, 1000), slice(&old, 0, 1000));
    assert_eq!(rig.read(&v1, CHUNK, 1000), slice(&old, CHUNK, 1000));
    let s = rig.stats();
    assert_eq!((n(&s.fills), n(&s.hits), n(&s.fill_errors)), (3, 1, 0));
}

#[test]
fn engine_death_fails_parked_reads_and_every_later_read() {
    let mut rig = Rig::new(8, 4, CompressMode::Off);
    if let Some(engine) = rig.engine.as_mut() {
        engine.panic_on = Some("doomed".into());
    }
    let good = rig.file("good", &pattern(2 * CHUNK as usize, 18));
    let doomed = rig.file("doomed", &pattern(CHUNK as usize, 19));
    // Both queued: the good read is parked on its fill when the doomed one kills the engine.
    let parked = rig.miss(&good, 0, 100);
    let killer = rig.miss(&doomed, 0, 100);
    rig.start();
    assert_eq!(answer(&parked), Err(libc::EIO));
    assert_eq!(answer(&killer), Err(libc::EIO));
    assert!(rig.shared.dead.load(Ordering::SeqCst));
    let why = rig.shared.death.lock().clone().unwrap_or_default();
    assert!(why.contains("panicked"), "death reason: {why}");
    // Reads that still reach the dead engine fail at once.
    assert_eq!(answer(&rig.miss(&good, CHUNK, 100)), Err(libc::EIO));
    assert_eq!(rig.shared.index.len(), 0);
}

#[test]
fn shutdown_finishes_reads_in_flight() {
    let mut rig = Rig::new(8, 4, CompressMode::Off);
    let data = pattern(2 * CHUNK as usize, 20);
    let src = rig.file("f", &data);
    let rx = rig.miss(&src, CHUNK, 100);
    rig.send(Msg::Shutdown);
    rig.start();
    assert_eq!(answer(&rx), slice(&data, CHUNK, 100));
    let thread = rig.thread.take().expect("running");
    rig.engine = Some(thread.join().expect("engine returned"));
    assert_eq!(n(&rig.stats().fills), 1);
}

fn store_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nitro-engine-store-")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm")
}

fn stored(src: &Source) -> bool {
    src.store.get().is_some_and(|e| e.is_complete())
}

#[test]
fn an_admitted_version_is_filled_whole_into_its_store_file() {
    let dir = store_dir();
    let rig = Rig::with_store(32, 28, dir.path());
    let data = pattern(10 * CHUNK as usize + 123, 31);
    let src = rig.file("w.bin", &data);
    rig.send(Msg::Store {
        src: src.clone(),
        reused: false,
    });
    wait_until("the store file complete", || stored(&src));
    let e = src.store.get().expect("entry");
    assert_eq!(e.range(0, data.len()), Some(&data[..]), "store file bytes");
    // The bytes are in the store only: none in the arena, whose slabs were lent for them.
    let u = rig.shared.arena.usage();
    assert_eq!((u.used_bytes, u.lent_slabs), (0, 11), "{u:?}");
    assert_eq!(
        rig.read(&src, 5 * CHUNK - 7, 100),
        slice(&data, 5 * CHUNK - 7, 100)
    );
}

#[test]
fn reads_during_a_store_fill_get_exact_bytes() {
    let dir = store_dir();
    let rig = Rig::with_store(64, 56, dir.path());
    let data = pattern(40 * CHUNK as usize + 9, 32);
    let src = rig.file("r.bin", &data);
    rig.send(Msg::Store {
        src: src.clone(),
        reused: false,
    });
    let offsets = [39 * CHUNK, 0, 17 * CHUNK + 5, 40 * CHUNK - 3, 2 * CHUNK];
    let pending: Vec<_> = offsets
        .iter()
        .map(|&o| (o, rig.miss(&src, o, 9000)))
        .collect();
    for (o, rx) in pending {
        let want = slice(&data, o, (9000u64).min(data.len() as u64 - o) as u32);
        assert_eq!(answer(&rx), want, "read at {o}");
    }
    wait_until("the store file complete", || stored(&src));
}

#[test]
fn a_first_time_file_never_pushes_out_a_reused_one() {
    let dir = store_dir();
    // 16 chunks: 14 for the store; two 8-chunk files cannot both be stored.
    let rig = Rig::with_store(16, 14, dir.path());
    let a_data = pattern(8 * CHUNK as usize, 33);
    let a = rig.file("a.bin", &a_data);
    rig.send(Msg::Store {
        src: a.clone(),
        reused: false,
    });
    wait_until("a stored", || stored(&a));
    let stamp = a.stamp;
    drop(a);
    // Opened again: a reuse (the front looks the entry up at open).
    let store = rig.shared.store.as_ref().expect("store");
    drop(store.lookup(&stamp, stamp.2).expect("a's entry"));
    let b = rig.file("b.bin", &pattern(8 * CHUNK as usize, 34));
    rig.send(Msg::Store {
        src: b.clone(),
        reused: false,
    });
    // A round trip through the engine: the admission above has been decided.
    assert_eq!(rig.read(&b, 0, 10).map(|v| v.len()), Ok(10));
    assert!(
        b.store.get().is_none(),
        "a first-time file took a reused file's room"
    );
    assert!(
        store.peek(&stamp).is_some(),
        "the reused file is still stored"
    );
    // a and b taking turns (a loop larger than the store): b, a reuse now, may not push out a,
    // which was opened more recently than b's own last open.
    drop(store.lookup(&stamp, stamp.2).expect("a's entry"));
    let b2 = rig.open("b.bin");
    rig.send(Msg::Store {
        src: b2.clone(),
        reused: true,
    });
    assert_eq!(rig.read(&b2, 0, 10).map(|v| v.len()), Ok(10));
    assert!(
        b2.store.get().is_none() && store.peek(&stamp).is_some(),
        "a loop's files pushed each other out"
    );
    // b opened again at once: a has now been idle longer than b's reuse distance, so it goes.
    drop(b2);
    let b3 = rig.open("b.bin");
    rig.send(Msg::Store {
        src: b3.clone(),
        reused: true,
    });
    wait_until("b stored", || stored(&b3));
    assert!(store.peek(&stamp).is_none(), "a was evicted for b");
    let u = rig.shared.arena.usage();
    assert!(u.lent_slabs <= 14, "store over its cap: {u:?}");
}

/// Issue 10: four BF16 files of 5 chunks read in a loop under a pool of 16 (cap 14): 20 chunks
/// raw do not fit, ≈14 compressed do. Pass 1 stores what it can (first-time files take free
/// room); when the first file comes back after the loop, it is not stored and the loop's raw
/// store copies go, so the whole loop can be held compressed in the arena.
#[test]
fn a_loop_that_fits_only_compressed_is_kept_out_of_the_store() {
    let dir = store_dir();
    let rig = Rig::with_store(16, 14, dir.path());
    let names = ["a.bin", "b.bin", "c.bin", "d.bin"];
    for (i, name) in names.iter().enumerate() {
        std::fs::write(rig.path(name), pattern(5 * CHUNK as usize, 40 + i as u8)).expect("write");
    }
    let bf16 =
        |name: &str, id: u64| source_hinted(&rig.path(name), 100 + id, name, None, DtypeHint::Bf16);
    for (i, name) in names.iter().enumerate() {
        let src = bf16(name, i as u64);
        rig.send(Msg::Store {
            src: src.clone(),
            reused: false,
        });
        wait_until("stored", || stored(&src));
    }
    let store = rig.shared.store.as_ref().expect("store");
    assert!(store.usage().files >= 2, "{:?}", store.usage());
    let a = bf16("a.bin", 10);
    rig.send(Msg::Store {
        src: a.clone(),
        reused: true,
    });
    assert_eq!(rig.read(&a, 0, 10).map(|v| v.len()), Ok(10));
    assert!(a.store.get().is_none(), "a raw store copy of a's loop");
    assert_eq!(
        a.loop_bytes.load(Ordering::Relaxed),
        20 * CHUNK,
        "the loop, for the policy"
    );
    assert_eq!(store.usage().files, 0, "{:?}", store.usage());
    assert_eq!(rig.shared.arena.usage().lent_slabs, 0);
    // Read into the arena, in the slabs the store gave back: the bytes are the file's (they
    // were zeros while lending dropped the pages the ring had registered).
    let data = std::fs::read(rig.path("a.bin")).expect("read source");
    for c in 0..5 {
        let got = rig.read(&a, c * CHUNK, CHUNK as u32);
        assert!(
            got == slice(&data, c * CHUNK, CHUNK as u32),
            "chunk {c} differs ({} zero bytes)",
            got.map_or(0, |v| v.iter().filter(|&&b| b == 0).count())
        );
    }
}

/// The same loop of files that do not compress keeps a stable subset stored (issue 10's rule
/// for loops larger than the store), and so does a BF16 loop too large even compressed.
#[test]
fn a_loop_that_does_not_fit_compressed_keeps_its_store_files() {
    for (chunks, hint) in [(5usize, DtypeHint::Unknown), (6, DtypeHint::Bf16)] {
        let dir = store_dir();
        let rig = Rig::with_store(16, 14, dir.path());
        let names = ["a.bin", "b.bin", "c.bin", "d.bin"];
        for (i, name) in names.iter().enumerate() {
            std::fs::write(
                rig.path(name),
                pattern(chunks * CHUNK as usize, 50 + i as u8),
            )
            .expect("write");
        }
        let open = |name: &str, id: u64| source_hinted(&rig.path(name), 100 + id, name, None, hint);
        for (i, name) in names.iter().enumerate() {
            let src = open(name, i as u64);
            rig.send(Msg::Store {
                src: src.clone(),
                reused: false,
            });
            wait_until("stored", || stored(&src));
        }
        let store = rig.shared.store.as_ref().expect("store");
        let before = store.usage().files;
        let a = open("a.bin", 10);
        rig.send(Msg::Store {
            src: a.clone(),
            reused: true,
        });
        assert_eq!(rig.read(&a, 0, 10).map(|v| v.len()), Ok(10));
        assert_eq!(store.usage().files, before, "{hint:?}: {:?}", store.usage());
    }
}

#[path = "compress_tests.rs"]
mod compress_tests;
