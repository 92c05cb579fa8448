//! The hit path allocates nothing: with a counting global allocator, an in-process mount
//! (`Mounted::spawn`, cache mode Direct) serves repeated reads of warm ranges — including ranges
//! that cross a chunk boundary — without a single heap allocation in any thread of the process.
//!
//! If an allocation does happen in the measured window, the test fails with the backtraces
//! (and thread names) of the first few, so the allocating code can be found.
//!
//! This binary holds exactly one test: the allocator counts every thread of the process.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::fs::File;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use nitro_uring::mount::{CacheMode, MountConfig, Mounted};

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
const MAX_TRACES: usize = 6;
static TRACES: Mutex<Vec<(String, Backtrace)>> = Mutex::new(Vec::new());
static TRACES_TAKEN: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

fn on_alloc() {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    // Allocations made while recording a backtrace are the test's own, not counted.
    let Ok(inside) = IN_HOOK.try_with(|f| f.replace(true)) else {
        return;
    };
    if inside {
        return;
    }
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    if TRACES_TAKEN.fetch_add(1, Ordering::Relaxed) < MAX_TRACES as u64 {
        let bt = Backtrace::force_capture();
        let name = std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_string();
        if let Ok(mut v) = TRACES.lock() {
            v.push((name, bt));
        }
    }
    let _ = IN_HOOK.try_with(|f| f.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        on_alloc();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        on_alloc();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        on_alloc();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CHUNK: u64 = 64 * KIB;

#[test]
fn hot_reads_allocate_nothing() {
    let dirs = Dirs::new();
    let len = 8 * CHUNK as usize + 999;
    let data = pattern(31, len);
    write_file(&dirs.src.join("hot.bin"), &data);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let _watchdog = Watchdog::arm(&dirs.mnt, Watchdog::default_limit(), None);
    let mut cfg = MountConfig::new(&dirs.src, &dirs.mnt, 16 * MIB);
    cfg.chunk_bytes = CHUNK;
    cfg.cache_mode = CacheMode::Direct;
    let m = Mounted::spawn(cfg).expect("Mounted::spawn");

    let c = CHUNK;
    // (offset, len): inside a chunk, a whole chunk, across one boundary, across two, the tail
    let ranges: [(u64, usize); 7] = [
        (0, 4096),
        (c + 100, 1000),
        (2 * c, c as usize),
        (3 * c - 2048, 4096),
        (4 * c - 10, c as usize + 20),
        (5 * c + 12_345, 100_000),
        (len as u64 - 999 - 500, 1499),
    ];
    let f = File::open(dirs.mnt.join("hot.bin")).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let check = |buf: &[u8], off: u64, n: usize, what: &str| {
        let s = off as usize;
        assert_bytes_eq(&buf[..n], &data[s..(s + n).min(len)], what);
    };

    // warm: the whole file, then every range; then a pass to let any per-thread lazy state of
    // the FUSE worker threads come into being outside the measured window
    let whole = std::fs::read(dirs.mnt.join("hot.bin")).unwrap();
    assert_bytes_eq(&whole, &data, "hot.bin");
    std::thread::sleep(std::time::Duration::from_millis(300));
    for round in 0..300 {
        for &(off, l) in &ranges {
            let n = pread_full(&f, &mut buf[..l], off).unwrap();
            if round == 0 {
                assert_eq!(n, l.min(len - off as usize));
                check(&buf, off, n, &format!("warm read at {off}"));
            }
        }
    }
    let before = m.stats();

    // the counter itself works: an allocation while armed is counted (and traced)
    ARMED.store(true, Ordering::SeqCst);
    let probe = std::hint::black_box(Box::new(std::hint::black_box(7u64)));
    ARMED.store(false, Ordering::SeqCst);
    drop(probe);
    assert!(
        ALLOCS.load(Ordering::SeqCst) >= 1,
        "the counting allocator did not count"
    );
    assert!(
        !TRACES.lock().unwrap().is_empty(),
        "the counting allocator took no backtrace"
    );
    TRACES.lock().unwrap().clear();
    TRACES_TAKEN.store(0, Ordering::SeqCst);

    // the measured window
    // At least 1400 reads and at least 2.5 s, so that anything the process does periodically
    // (a once-a-second stats thread, say) falls inside the window every time, not by chance.
    const MIN_READS: u64 = 1400;
    const MIN_WINDOW: std::time::Duration = std::time::Duration::from_millis(2500);
    let mut short = 0usize;
    let mut reads = 0u64;
    ALLOCS.store(0, Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    ARMED.store(true, Ordering::SeqCst);
    while reads < MIN_READS || t0.elapsed() < MIN_WINDOW {
        for &(off, l) in &ranges {
            match pread_full(&f, &mut buf[..l], off) {
                Ok(n) if n == l.min(len - off as usize) => {}
                _ => short += 1,
            }
            reads += 1;
        }
    }
    ARMED.store(false, Ordering::SeqCst);
    let window = t0.elapsed();
    let allocs = ALLOCS.load(Ordering::SeqCst);
    let after = m.stats();

    // the data is still right
    for &(off, l) in &ranges {
        let n = pread_full(&f, &mut buf[..l], off).unwrap();
        check(&buf, off, n, &format!("hot read at {off}"));
    }
    assert_eq!(
        short, 0,
        "{short} hot reads returned an error or a short count"
    );
    eprintln!(
        "{reads} hot reads in {window:?}: {allocs} allocations; stats before {before:?}\nafter {after:?}"
    );
    assert!(
        after.hits - before.hits >= reads,
        "hits rose by {} over {reads} hot reads (expected at least one FUSE read each in direct mode)",
        after.hits - before.hits
    );
    assert_eq!(after.misses, before.misses, "hot reads missed the arena");
    if allocs != 0 {
        let traces = TRACES.lock().unwrap();
        let mut msg = format!(
            "{allocs} heap allocations during {reads} hot reads ({window:?}); the first {}:\n",
            traces.len()
        );
        for (i, (thread, bt)) in traces.iter().enumerate() {
            msg.push_str(&format!(
                "--- allocation {} on thread '{thread}':\n{bt}\n",
                i + 1
            ));
        }
        panic!("{msg}");
    }
    drop(f);
    m.unmount().expect("unmount");
}
