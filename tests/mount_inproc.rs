//! In-process mounts through the library API (`nitro_uring::mount::Mounted`): random reads from 8
//! threads under eviction pressure, hardlinks sharing one cache entry, and spawn/unmount.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nitro_uring::mount::{CacheMode, MountConfig, Mounted};

fn config(src: &Path, mnt: &Path, pool: u64, chunk: u64) -> MountConfig {
    let mut c = MountConfig::new(src, mnt, pool);
    c.chunk_bytes = chunk;
    c.cache_mode = CacheMode::Direct;
    c
}

/// 8 threads, 100 000 random reads (random file, offset and size) over ~64 MiB of data through a
/// pool of 1/8 of it, each compared with the source bytes.
#[test]
fn random_reads_from_8_threads_under_eviction() {
    const THREADS: usize = 8;
    const READS_PER_THREAD: usize = 12_500;
    let dirs = Dirs::new();
    // four files, ~64 MiB in all, unaligned sizes
    let sizes = [
        16 * MIB as usize + 1234,
        16 * MIB as usize - 777,
        24 * MIB as usize + 65_536,
        8 * MIB as usize + 1,
    ];
    let total: usize = sizes.iter().sum();
    let data: Arc<Vec<Vec<u8>>> = Arc::new(
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let d = pattern(1000 + i as u64, n);
                write_file(&dirs.src.join(format!("d{i}.bin")), &d);
                d
            })
            .collect(),
    );
    let pool = (total as u64 / 8) & !(64 * KIB - 1);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let _watchdog = Watchdog::arm(&dirs.mnt, Watchdog::default_limit(), None);
    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, pool, 64 * KIB)).expect("Mounted::spawn");
    let s0 = m.stats();
    assert_eq!(s0.pool_bytes, pool, "stats().pool_bytes");

    let deadline = Instant::now() + Duration::from_secs(75);
    let reaching_daemon = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let data = data.clone();
            let mnt = dirs.mnt.clone();
            let reaching_daemon = reaching_daemon.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let files: Vec<File> = (0..data.len())
                    .map(|i| File::open(mnt.join(format!("d{i}.bin"))).unwrap())
                    .collect();
                let mut rng = Rng::new(t as u64 * 7919 + 1);
                let mut buf = vec![0u8; 512 * 1024];
                for r in 0..READS_PER_THREAD {
                    if r % 256 == 0 && Instant::now() > deadline {
                        return Err(format!(
                            "thread {t}: only {r} reads done before the deadline"
                        ));
                    }
                    let fi = rng.below(data.len() as u64) as usize;
                    let want_all = &data[fi];
                    let len = match rng.below(100) {
                        0..=59 => 1 + rng.below(8192),
                        60..=94 => 1 + rng.below(128 * 1024),
                        _ => 1 + rng.below(512 * 1024),
                    } as usize;
                    let off = match rng.below(50) {
                        0 => {
                            want_all.len() as u64
                                - rng.below(len as u64 + 1).min(want_all.len() as u64)
                        } // near EOF
                        1 => rng.below(want_all.len() as u64 / (64 * KIB)) * 64 * KIB, // chunk aligned
                        _ => rng.below(want_all.len() as u64),
                    };
                    if off < want_all.len() as u64 {
                        reaching_daemon.fetch_add(1, Ordering::Relaxed);
                    }
                    let got = pread_full(&files[fi], &mut buf[..len], off).map_err(|e| {
                        format!("thread {t}: pread(d{fi}.bin, off={off}, len={len}): {e}")
                    })?;
                    let s = (off as usize).min(want_all.len());
                    let e = (off as usize + len).min(want_all.len());
                    if buf[..got] != want_all[s..e] {
                        return Err(format!(
                            "thread {t} read {r}: pread(d{fi}.bin, off={off}, len={len}): {}",
                            first_diff(&buf[..got], &want_all[s..e])
                        ));
                    }
                }
                Ok(READS_PER_THREAD)
            })
        })
        .collect();
    let mut errors = Vec::new();
    let mut done = 0;
    for h in handles {
        match h.join().expect("reader thread panicked") {
            Ok(n) => done += n,
            Err(e) => errors.push(e),
        }
    }
    let elapsed = t0.elapsed();
    let s = m.stats();
    eprintln!("{done} random reads from {THREADS} threads in {elapsed:?}; stats: {s:?}");
    assert!(
        errors.is_empty(),
        "{} reader thread(s) failed:\n{}",
        errors.len(),
        errors.join("\n")
    );
    assert!(done >= 100_000);
    assert!(
        s.evictions > 0,
        "no evictions with a pool of 1/8 of the data: {s:?}"
    );
    assert_eq!(s.fill_errors, 0, "fill errors: {s:?}");
    assert!(s.pool_used_bytes <= s.pool_bytes, "pool over budget: {s:?}");
    assert!(s.misses > 0 && s.hits > 0, "{s:?}");
    assert!(
        s.hits + s.misses >= reaching_daemon.load(Ordering::Relaxed),
        "hits + misses ({}) < reads that must have reached the daemon in direct mode ({}): {s:?}",
        s.hits + s.misses,
        reaching_daemon.load(Ordering::Relaxed)
    );
    m.unmount().expect("unmount");
    assert!(!is_mounted(&dirs.mnt), "still mounted after unmount()");
}

/// Two names of one source inode share one cache entry: after reading one name, reading the
/// other is served from the arena with no further fills.
#[test]
fn hardlinks_share_one_cache_entry() {
    let dirs = Dirs::new();
    let data = pattern(9, 2 * MIB as usize + 4321);
    write_file(&dirs.src.join("a.bin"), &data);
    fs::hard_link(dirs.src.join("a.bin"), dirs.src.join("b.bin")).unwrap();
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let _watchdog = Watchdog::arm(&dirs.mnt, Watchdog::default_limit(), None);
    // Versions younger than the racy window are private to one open: let the files settle.
    std::thread::sleep(nitro_uring::fuse::RACY_WINDOW + std::time::Duration::from_millis(100));
    let m =
        Mounted::spawn(config(&dirs.src, &dirs.mnt, 64 * MIB, 64 * KIB)).expect("Mounted::spawn");
    let a = fs::metadata(dirs.mnt.join("a.bin")).unwrap();
    let b = fs::metadata(dirs.mnt.join("b.bin")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hardlinks: st_ino through the mount");

    let read_all = |name: &str| {
        let f = File::open(dirs.mnt.join(name)).unwrap();
        let mut out = vec![0u8; data.len()];
        let mut buf = vec![0u8; 128 * 1024];
        let mut off = 0;
        while off < data.len() {
            let n = pread_full(&f, &mut buf, off as u64).unwrap();
            out[off..off + n].copy_from_slice(&buf[..n]);
            off += n;
            if n == 0 {
                break;
            }
        }
        out
    };
    assert_bytes_eq(&read_all("a.bin"), &data, "a.bin");
    // let prefetches (if any) settle, then read again so a.bin is fully resident
    std::thread::sleep(Duration::from_millis(200));
    assert_bytes_eq(&read_all("a.bin"), &data, "a.bin (2nd)");
    let s1 = m.stats();
    assert!(s1.fills > 0 && s1.fill_bytes >= data.len() as u64, "{s1:?}");
    assert_bytes_eq(&read_all("b.bin"), &data, "b.bin");
    let s2 = m.stats();
    eprintln!("after a.bin: {s1:?}\nafter b.bin: {s2:?}");
    assert_eq!(
        s2.fills, s1.fills,
        "reading the hardlink b.bin filled again (separate cache entries?)"
    );
    assert_eq!(s2.misses, s1.misses, "reading the hardlink b.bin missed");
    // Served from the cache: by the daemon (hits), or by the kernel from the stored file
    // (passthrough, which the daemon never sees).
    assert!(
        s2.hits > s1.hits || s2.passthrough_opens > s1.passthrough_opens,
        "reading b.bin was served neither by hits nor by passthrough"
    );
    assert_eq!(
        s2.pool_used_bytes, s1.pool_used_bytes,
        "pool usage grew while reading the hardlink"
    );
    m.unmount().expect("unmount");
}

/// `spawn` returns with the mount live and listed as documented; `unmount` removes it; dropping
/// a `Mounted` unmounts too.
#[test]
fn spawn_then_unmount_and_drop() {
    let dirs = Dirs::new();
    let data = pattern(5, 100_000);
    write_file(&dirs.src.join("x.bin"), &data);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let _watchdog = Watchdog::arm(&dirs.mnt, Watchdog::default_limit(), None);

    let m =
        Mounted::spawn(config(&dirs.src, &dirs.mnt, 16 * MIB, 64 * KIB)).expect("Mounted::spawn");
    let e = mounts_at(&dirs.mnt);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].fstype, "fuse.nitro-uring");
    assert_eq!(e[0].source, format!("nitro-uring:{}", dirs.src.display()));
    assert_bytes_eq(&fs::read(dirs.mnt.join("x.bin")).unwrap(), &data, "x.bin");
    m.unmount().expect("unmount");
    assert!(!is_mounted(&dirs.mnt), "still mounted after unmount()");

    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, 16 * MIB, 64 * KIB))
        .expect("Mounted::spawn again");
    assert_bytes_eq(
        &fs::read(dirs.mnt.join("x.bin")).unwrap(),
        &data,
        "x.bin (2nd mount)",
    );
    drop(m);
    assert!(
        !is_mounted(&dirs.mnt),
        "still mounted after dropping Mounted"
    );

    // an invalid config is refused and leaves nothing mounted
    let bad = config(&dirs.src, &dirs.mnt, 32 * KIB, 64 * KIB);
    assert!(
        Mounted::spawn(bad).is_err(),
        "spawn with pool < chunk should fail"
    );
    assert!(!is_mounted(&dirs.mnt));
}
