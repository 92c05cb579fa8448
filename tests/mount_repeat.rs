//! Working sets larger than the pool, read again and again (issue 10), on a real mount with the
//! source on the real disk: a file 1.5× the pool keeps a stable resident subset, so from the third
//! pass on each pass reads about what does not fit; a BF16 set that fits the pool only compressed
//! ends up read (almost) entirely from the arena.
//!
//! Two witnesses per pass, page caches dropped before each: the daemon's `fill_bytes`, and the
//! source's block device (`/sys/dev/block/MAJ:MIN/stat`, sectors read), which also counts other
//! processes' reads on a shared machine, so it is held to a looser bound.

use std::io::Read;
use std::path::{Path, PathBuf};

use nitro_uring::mount::{MountConfig, Mounted, StoreMode};

#[path = "support/bf16.rs"]
mod bf16;
mod common;

const MIB: u64 = 1 << 20;

/// Sectors read counter of the block device holding `path`, if it is one (not a tmpfs).
fn device_stat(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let p = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    p.exists().then_some(p)
}

fn device_read_bytes(stat: &Path) -> u64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    text.split_whitespace()
        .nth(2)
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |sectors| sectors * 512)
}

fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// One pass: every file read whole in order (1 MiB reads), compared with its bytes. Returns
/// (bytes the daemon filled, bytes the device read) during the pass.
fn pass(m: &Mounted, stat: Option<&Path>, files: &[(PathBuf, Vec<u8>)]) -> (u64, u64) {
    drop_caches();
    let (f0, d0) = (m.stats().fill_bytes, stat.map_or(0, device_read_bytes));
    let mut buf = vec![0u8; MIB as usize];
    for (path, data) in files {
        let mut f = std::fs::File::open(path).expect("open through the mount");
        let mut at = 0;
        loop {
            let n = f.read(&mut buf).expect("read through the mount");
            if n == 0 {
                break;
            }
            if buf[..n] != data[at..at + n] {
                let zeros = buf[..n].iter().filter(|&&b| b == 0).count();
                panic!("{path:?}: the {n} bytes at {at} differ ({zeros} of them zero)");
            }
            at += n;
        }
        assert_eq!(at, data.len(), "{path:?}: short read");
    }
    (
        m.stats().fill_bytes - f0,
        stat.map_or(0, device_read_bytes) - d0,
    )
}

struct Setup {
    _serial: std::sync::MutexGuard<'static, ()>,
    _dir: tempfile::TempDir,
    src: PathBuf,
    mnt: PathBuf,
}

/// One test at a time: each drops the page cache and counts the block device's reads, which
/// another test's reads would inflate.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A source directory on the disk the tests run from (not /dev/shm: the device counter must see it).
fn setup() -> Setup {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let src = dir.path().join("src");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&src).expect("mkdir src");
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    Setup {
        _serial: serial,
        _dir: dir,
        src,
        mnt,
    }
}

fn settle() {
    // Versions younger than the racy window are private to one open: let the files settle.
    std::thread::sleep(nitro_uring::fuse::RACY_WINDOW + std::time::Duration::from_millis(100));
}

#[test]
fn a_file_larger_than_the_pool_keeps_a_stable_subset() {
    let s = setup();
    let (size, pool) = (384 * MIB, 256 * MIB);
    let data = common::pattern(7, size as usize);
    std::fs::write(s.src.join("big.bin"), &data).expect("write source");
    settle();
    let mut cfg = MountConfig::new(&s.src, &s.mnt, pool);
    cfg.store = StoreMode::Off;
    let m = Mounted::spawn(cfg).expect("mount");
    let stat = device_stat(&s.src);
    let files = [(s.mnt.join("big.bin"), data)];
    let passes: Vec<(u64, u64)> = (0..5).map(|_| pass(&m, stat.as_deref(), &files)).collect();
    let st = m.stats();
    eprintln!(
        "per pass (filled MiB, device MiB): {:?}\n{st:?}",
        passes
            .iter()
            .map(|&(f, d)| (f >> 20, d >> 20))
            .collect::<Vec<_>>()
    );
    // What does not fit, plus what cycles through the small queue (10% of the pool) and the
    // blocks of the fills in flight: 1.25 × (file − pool) at 3 GiB / 2 GiB, ≈1.3× at this size.
    let over = size - pool;
    for (p, &(filled, device)) in passes.iter().enumerate().skip(2) {
        assert!(
            filled * 10 <= over * 14,
            "pass {}: filled {} MiB, more than 1.4 × {} MiB",
            p + 1,
            filled >> 20,
            over >> 20
        );
        if stat.is_some() {
            assert!(
                device <= over * 2,
                "pass {}: the device read {} MiB",
                p + 1,
                device >> 20
            );
        }
    }
    assert!(st.admissions_refused > 0, "{st:?}");
    m.unmount().expect("unmount");
}

/// Files read again and again in a loop that the store cannot hold whole: before, each reused file
/// pushed out the least recently used stored one, so every pass refilled every file into the store
/// (measured: the BF16 set at 80% read 100% of itself from the disk on every pass). Now a reused
/// file only pushes out one idle for longer than its own reuse distance: once the loop's files are
/// known as reused, the store keeps the files it has, and nothing more is admitted.
#[test]
fn a_loop_of_files_larger_than_the_store_keeps_a_stable_subset_stored() {
    let s = setup();
    let files: Vec<(PathBuf, Vec<u8>)> = (0..4u64)
        .map(|i| {
            let data = common::pattern(40 + i, (8 * MIB) as usize);
            std::fs::write(s.src.join(format!("f{i}.bin")), &data).expect("write source");
            (s.mnt.join(format!("f{i}.bin")), data)
        })
        .collect();
    settle();
    // 20 MiB: the store may take 7/8 (17.5 MiB): two of the four 8 MiB files.
    let m = Mounted::spawn(MountConfig::new(&s.src, &s.mnt, 20 * MIB)).expect("mount");
    let mut admitted = Vec::new();
    for _ in 0..6 {
        pass(&m, None, &files);
        // Let the whole-file fills started by this pass's opens finish.
        let t = std::time::Instant::now();
        while m.stats().store_files != m.stats().store_complete_files
            && t.elapsed() < std::time::Duration::from_secs(30)
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        admitted.push(m.stats().store_admissions);
    }
    eprintln!("store admissions after each pass: {admitted:?}");
    // Measured here: [4, 6, 6, 6, 6, 6] (before: 4 more every pass). Passes 4-6 are checked, so
    // an admission decided while a fill still held an entry in pass 3 cannot fail the test.
    assert!(
        admitted[5] == admitted[3],
        "the store kept admitting files of the loop: {admitted:?}"
    );
    let st = m.stats();
    assert!(st.store_complete_files >= 1, "{st:?}");
    m.unmount().expect("unmount");
}

/// Four distinct BF16 shards (24 MiB each) under a pool of 80% of their size: they fit only
/// compressed (≈0.69×). From the third pass on, passes read less than 5% of the set (before the
/// stable subset and the worker, 18–41% per pass), with the default store and without one. Why
/// 24 MiB shards: the third pass still refills 2–3 chunks while the policy settles, 4–6% of a
/// 48 MiB set but 0.5% of the real 173 MiB set (`scripts/measure-repeat.sh bf16 80 6`).
fn bf16_set_that_fits_compressed(store: StoreMode) {
    let s = setup();
    let files: Vec<(PathBuf, Vec<u8>)> = (0..4u64)
        .map(|i| {
            let name = format!("shard-{i}.safetensors");
            let data = bf16::write_bf16_safetensors(&s.src.join(&name), 12, 1 << 20, 0x9e37 + i);
            (s.mnt.join(name), data)
        })
        .collect();
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    settle();
    let mut cfg = MountConfig::new(&s.src, &s.mnt, total * 8 / 10 / MIB * MIB);
    cfg.store = store;
    let m = Mounted::spawn(cfg).expect("mount");
    let stat = device_stat(&s.src);
    let passes: Vec<(u64, u64)> = (0..6).map(|_| pass(&m, stat.as_deref(), &files)).collect();
    let st = m.stats();
    eprintln!(
        "set {} MiB; per pass (filled MiB, device MiB): {:?}\n{st:?}",
        total >> 20,
        passes
            .iter()
            .map(|&(f, d)| (f >> 20, d >> 20))
            .collect::<Vec<_>>()
    );
    for (p, &(filled, device)) in passes.iter().enumerate().skip(2) {
        assert!(
            filled * 20 < total,
            "pass {}: filled {} MiB of a {} MiB set",
            p + 1,
            filled >> 20,
            total >> 20
        );
        if stat.is_some() {
            assert!(
                device * 5 < total,
                "pass {}: the device read {} MiB",
                p + 1,
                device >> 20
            );
        }
    }
    assert!(st.compressions > 0 && st.decode_errors == 0, "{st:?}");
    m.unmount().expect("unmount");
}

#[test]
fn a_bf16_set_that_fits_compressed_stays_with_the_store() {
    bf16_set_that_fits_compressed(StoreMode::Default);
}

#[test]
fn a_bf16_set_that_fits_compressed_stays_without_a_store() {
    bf16_set_that_fits_compressed(StoreMode::Off);
}
