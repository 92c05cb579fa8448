//! The store and FUSE passthrough (issue 9), on real mounts: a file filled whole into the store
//! is opened with passthrough (its reads and maps never reach the daemon), byte-exact; the
//! per-inode rules keep every open working while daemon-served handles are open; eviction never
//! takes a file a passthrough handle holds; store + arena stay within the pool; a restart adopts
//! unchanged files and rejects changed ones; a held mapping keeps its version.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nitro_uring::fuse::RACY_WINDOW;
use nitro_uring::mount::{MountConfig, Mounted, StatsSnapshot, StoreMode};

const WAIT: Duration = Duration::from_secs(60);

/// A store directory of its own on a tmpfs (/dev/shm), removed at the end.
fn store_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nitro-store-test-")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm")
}

fn config(src: &Path, mnt: &Path, pool: u64, store: &Path) -> MountConfig {
    let mut c = MountConfig::new(src, mnt, pool);
    c.store = StoreMode::Dir(store.to_path_buf());
    c
}

/// Writes the files, then waits until they are old enough to be stored (see `RACY_WINDOW`).
fn make_files(dir: &Path, files: &[(&str, u64, usize)]) -> Vec<Vec<u8>> {
    let data: Vec<Vec<u8>> = files
        .iter()
        .map(|&(name, seed, len)| {
            let d = pattern(seed, len);
            write_file(&dir.join(name), &d);
            d
        })
        .collect();
    thread::sleep(RACY_WINDOW + Duration::from_millis(200));
    data
}

#[track_caller]
fn wait_for(m: &Mounted, what: &str, ok: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = m.stats();
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {WAIT:?}: {s:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn read_all(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {}", p.display(), io_context(&e)))
}

fn map_all(f: &File) -> memmap2::Mmap {
    // SAFETY: a read-only private mapping of a read-only mount; nobody truncates it under us in
    // these tests (the source is replaced by rename, not rewritten).
    unsafe { memmap2::Mmap::map(f) }.expect("mmap through the mount")
}

#[test]
fn a_stored_file_is_opened_with_passthrough_reads_and_maps_exact() {
    let dirs = Dirs::new();
    let store = store_dir();
    let len = 24 * MIB as usize + 4321;
    let data = make_files(&dirs.src, &[("w.gguf", 901, len)]);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, 256 * MIB, store.path())).expect("mount");
    let path = dirs.mnt.join("w.gguf");
    assert_bytes_eq(&read_all(&path), &data[0], "first read (filling the store)");
    let s = wait_for(&m, "file stored", |s| s.store_complete_files == 1);
    assert_eq!(s.passthrough_opens, 0, "first open cannot be passthrough");
    assert!(s.store_bytes >= len as u64, "store bytes {s:?}");

    let before = m.stats();
    assert_bytes_eq(&read_all(&path), &data[0], "read through passthrough");
    let f = File::open(&path).expect("open");
    let map = map_all(&f);
    assert_bytes_eq(&map, &data[0], "mmap through passthrough");
    let after = m.stats();
    assert_eq!(
        after.passthrough_opens,
        before.passthrough_opens + 2,
        "{after:?}"
    );
    assert_eq!(
        (after.hits, after.misses),
        (before.hits, before.misses),
        "passthrough reads must not reach the daemon"
    );
    assert_eq!(f.metadata().expect("fstat").len(), len as u64);
    // The store file holds the bytes at the source's offsets.
    let stored: Vec<PathBuf> = fs::read_dir(store.path())
        .expect("store dir")
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != "source"))
        .collect();
    assert_eq!(stored.len(), 1, "store files: {stored:?}");
    let meta = fs::metadata(&stored[0]).expect("store file");
    assert_eq!(meta.len(), len as u64);
    assert_eq!(meta.mode() & 0o777, 0o600, "store file mode");
}

#[test]
fn store_off_serves_every_read_through_the_daemon() {
    let dirs = Dirs::new();
    let data = make_files(&dirs.src, &[("a.bin", 902, 8 * MIB as usize + 5)]);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let mut c = MountConfig::new(&dirs.src, &dirs.mnt, 64 * MIB);
    c.store = StoreMode::Off;
    let m = Mounted::spawn(c).expect("mount");
    let path = dirs.mnt.join("a.bin");
    for round in 0..3 {
        assert_bytes_eq(&read_all(&path), &data[0], &format!("round {round}"));
    }
    let s = m.stats();
    assert_eq!((s.passthrough_opens, s.store_files), (0, 0), "{s:?}");
    assert!(s.hits > 0, "repeat reads are arena hits: {s:?}");
}

/// The kernel fails a passthrough open while a daemon-served handle of the inode is open (and a
/// daemon-served open while a passthrough one is): every open must still succeed, byte-exact.
#[test]
fn opens_never_fail_while_daemon_and_passthrough_handles_mix() {
    let dirs = Dirs::new();
    let store = store_dir();
    let len = 12 * MIB as usize + 77;
    let data = make_files(&dirs.src, &[("m.bin", 903, len)]);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, 128 * MIB, store.path())).expect("mount");
    let path = dirs.mnt.join("m.bin");
    // A daemon-served handle, mapped, held across the store completing.
    let held = File::open(&path).expect("first open");
    let held_map = map_all(&held);
    assert_bytes_eq(&held_map, &data[0], "mapped daemon-served handle");
    wait_for(&m, "file stored", |s| s.store_complete_files == 1);
    let second = File::open(&path).expect("open while a daemon-served handle is open");
    let mut buf = vec![0u8; len];
    pread_full(&second, &mut buf, 0).expect("read");
    assert_bytes_eq(&buf, &data[0], "second handle");
    assert_eq!(
        m.stats().passthrough_opens,
        0,
        "no passthrough beside a mapped handle"
    );
    drop(held_map);
    drop(held);
    drop(second);
    // Now passthrough; and while it is open, more opens (threads) keep working.
    let pt = File::open(&path).expect("passthrough open");
    assert_eq!(m.stats().passthrough_opens, 1);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            let want = data[0].clone();
            thread::spawn(move || {
                for i in 0..20 {
                    let f = File::open(&path).unwrap_or_else(|e| panic!("open {t}/{i}: {e}"));
                    let off = ((t * 7919 + i * 104_729) % (len - 4096)) as u64;
                    let mut b = vec![0u8; 4096];
                    f.read_exact_at(&mut b, off).expect("read");
                    assert_bytes_eq(&b, &want[off as usize..][..4096], "concurrent open");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("reader thread");
    }
    let mut b = vec![0u8; 1 << 20];
    pt.read_exact_at(&mut b, 0).expect("read");
    assert_bytes_eq(&b, &data[0][..1 << 20], "held passthrough handle");
}

/// Readers during the whole-file fill get exact bytes (the fill and their misses share chunks).
#[test]
fn concurrent_readers_during_the_fill_read_exact_bytes() {
    let dirs = Dirs::new();
    let store = store_dir();
    let len = 48 * MIB as usize + 999;
    let data = Arc::new(make_files(&dirs.src, &[("big.bin", 904, len)]).remove(0));
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, 256 * MIB, store.path())).expect("mount");
    let path = dirs.mnt.join("big.bin");
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let path = path.clone();
            let data = data.clone();
            thread::spawn(move || {
                let f = File::open(&path).expect("open");
                let mut rng = Rng::new(t + 1);
                for _ in 0..300 {
                    let size = 1 + rng.below(300_000) as usize;
                    let off = rng.below((len - size) as u64) as usize;
                    let mut b = vec![0u8; size];
                    f.read_exact_at(&mut b, off as u64).expect("read");
                    assert_bytes_eq(&b, &data[off..off + size], "reader during fill");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader");
    }
    wait_for(&m, "file stored", |s| s.store_complete_files == 1);
    assert_bytes_eq(&read_all(&path), &data, "after the fill");
}

/// A working set 3× the pool, read again and again: store + arena never exceed the pool, a file
/// held open through passthrough is never evicted, and every byte is right.
#[test]
fn store_and_arena_stay_within_the_pool_and_spare_held_files() {
    let dirs = Dirs::new();
    let store = store_dir();
    let pool = 64 * MIB;
    let files: Vec<(String, u64, usize)> = (0..8)
        .map(|i| {
            (
                format!("f{i}.bin"),
                910 + i,
                24 * MIB as usize + i as usize * 4096,
            )
        })
        .collect();
    let spec: Vec<(&str, u64, usize)> =
        files.iter().map(|(n, s, l)| (n.as_str(), *s, *l)).collect();
    let data = make_files(&dirs.src, &spec);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, pool, store.path())).expect("mount");
    let held_path = dirs.mnt.join("f0.bin");
    assert_bytes_eq(&read_all(&held_path), &data[0], "f0 first read");
    wait_for(&m, "f0 stored", |s| s.store_complete_files >= 1);
    let held = File::open(&held_path).expect("open f0");
    assert!(
        m.stats().passthrough_opens >= 1,
        "f0 is held through passthrough"
    );
    for round in 0..3 {
        for (i, (name, _, _)) in files.iter().enumerate().skip(1) {
            let got = read_all(&dirs.mnt.join(name));
            assert_bytes_eq(&got, &data[i], &format!("round {round} {name}"));
            let s = m.stats();
            assert!(
                s.pool_used_bytes <= s.pool_bytes,
                "round {round} {name}: store + arena over the pool: {s:?}"
            );
        }
        let mut b = vec![0u8; data[0].len()];
        pread_full(&held, &mut b, 0).expect("read held f0");
        assert_bytes_eq(
            &b,
            &data[0],
            &format!("round {round}: held passthrough file"),
        );
    }
}

/// After an unmount (or a crash), a new mount adopts the stored files whose source is unchanged —
/// reading them takes nothing from the source — and never one whose source changed meanwhile.
#[test]
fn a_restart_adopts_unchanged_files_and_rejects_changed_ones() {
    let dirs = Dirs::new();
    let store = store_dir();
    let len = 16 * MIB as usize + 3;
    let data = make_files(&dirs.src, &[("keep.bin", 920, len), ("edit.bin", 921, len)]);
    {
        let _guard = UnmountOnDrop(dirs.mnt.clone());
        let m =
            Mounted::spawn(config(&dirs.src, &dirs.mnt, 256 * MIB, store.path())).expect("mount");
        for (i, n) in ["keep.bin", "edit.bin"].iter().enumerate() {
            assert_bytes_eq(&read_all(&dirs.mnt.join(n)), &data[i], n);
        }
        wait_for(&m, "both stored", |s| s.store_complete_files == 2);
    }
    // Changed while no daemon runs: same size, other bytes, written in place.
    let new = pattern(922, len);
    fs::OpenOptions::new()
        .write(true)
        .open(dirs.src.join("edit.bin"))
        .and_then(|f| f.write_all_at(&new, 0))
        .expect("rewrite edit.bin");
    thread::sleep(RACY_WINDOW + Duration::from_millis(200));

    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, 256 * MIB, store.path())).expect("remount");
    assert_eq!(m.stats().store_complete_files, 2, "both files adopted");
    assert_bytes_eq(
        &read_all(&dirs.mnt.join("keep.bin")),
        &data[0],
        "adopted file",
    );
    let s = m.stats();
    assert_eq!(
        s.fill_bytes, 0,
        "an adopted file is read from the store only: {s:?}"
    );
    assert_bytes_eq(&read_all(&dirs.mnt.join("edit.bin")), &new, "changed file");
    assert!(
        m.stats().fill_bytes >= len as u64,
        "the changed file came from the source"
    );
}

/// SIGKILL, then a new daemon on the same store: the warm file is adopted and exact.
#[test]
fn a_killed_daemon_leaves_a_store_the_next_one_adopts() {
    let dirs = Dirs::new();
    let store = store_dir();
    let len = 8 * MIB as usize + 11;
    let data = make_files(&dirs.src, &[("k.bin", 930, len)]);
    let store_arg = store.path().to_str().expect("utf-8 path").to_owned();
    let args = ["--pool", "128M", "--store", store_arg.as_str(), "-v"];
    let mut a = Daemon::start(&dirs.src, &dirs.mnt, &args);
    assert_bytes_eq(&read_all(&dirs.mnt.join("k.bin")), &data[0], "first daemon");
    let deadline = Instant::now() + WAIT;
    while !a.stderr().contains("STORED k.bin") {
        assert!(Instant::now() < deadline, "never stored: {}", a.stderr());
        thread::sleep(Duration::from_millis(20));
    }
    a.signal(libc::SIGKILL);
    assert!(
        a.wait_exit(Duration::from_secs(10)).is_some(),
        "killed daemon did not die"
    );
    let mut b = Daemon::start(&dirs.src, &dirs.mnt, &args);
    assert_bytes_eq(
        &read_all(&dirs.mnt.join("k.bin")),
        &data[0],
        "second daemon",
    );
    let err = b.stderr();
    assert!(err.contains("adopted 1 file(s)"), "stderr:\n{err}");
    b.signal(libc::SIGTERM);
    assert!(
        b.finish(Duration::from_secs(30)).is_some(),
        "daemon did not exit"
    );
}

/// A mapping through a passthrough handle keeps its version's bytes after the source is replaced;
/// a new open sees the new version (size through fstat, and bytes).
#[test]
fn a_held_mapping_keeps_its_version_and_a_new_open_sees_the_new_one() {
    let dirs = Dirs::new();
    let store = store_dir();
    let old_len = 6 * MIB as usize + 1;
    let data = make_files(&dirs.src, &[("r.bin", 940, old_len)]);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, 128 * MIB, store.path())).expect("mount");
    let path = dirs.mnt.join("r.bin");
    assert_bytes_eq(&read_all(&path), &data[0], "fill");
    wait_for(&m, "stored", |s| s.store_complete_files == 1);
    let f = File::open(&path).expect("open");
    assert_eq!(m.stats().passthrough_opens, 1);
    let map = map_all(&f);
    let new_len = 9 * MIB as usize + 17;
    let new = pattern(941, new_len);
    write_file(&dirs.src.join("r.bin.tmp"), &new);
    fs::rename(dirs.src.join("r.bin.tmp"), dirs.src.join("r.bin")).expect("rename over");
    thread::sleep(Duration::from_millis(1100)); // past the attribute TTL
    let g = File::open(&path).expect("open the new version");
    assert_eq!(
        g.metadata().expect("fstat").len(),
        new_len as u64,
        "fstat new"
    );
    let mut b = vec![0u8; new_len];
    pread_full(&g, &mut b, 0).expect("read new");
    assert_bytes_eq(&b, &new, "new open");
    assert_bytes_eq(&map, &data[0], "held mapping");
    assert_eq!(
        f.metadata().expect("fstat").len(),
        old_len as u64,
        "held handle's fstat"
    );
}
