//! File bytes through a real mount of the `nitro-uring` binary: byte-exact equality with the
//! source at chunk boundaries and in a large sparse file, mmap(MAP_SHARED) reads, and no stale
//! bytes after the source changes (in place within the same second, or by rename).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const CHUNK: u64 = 64 * KIB;

fn sizes() -> Vec<(String, usize)> {
    let c = CHUNK as usize;
    [0, 1, 4095, 4096, c - 1, c, c + 1, 3 * c + 17, 2 * c]
        .into_iter()
        .map(|n| (format!("f_{n}.bin"), n))
        .collect()
}

/// Read a file with `read(2)` calls of `bufsize` bytes until EOF.
fn read_sequential(path: &Path, bufsize: usize) -> Vec<u8> {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut buf = vec![0u8; bufsize];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn check_boundary_files(mode: Option<&str>) {
    let dirs = Dirs::new();
    let files = sizes();
    for (i, (name, n)) in files.iter().enumerate() {
        write_file(&dirs.src.join(name), &pattern(100 + i as u64, *n));
    }
    let mut args = vec!["--chunk", "64KiB", "--pool", "64M"];
    if let Some(m) = mode {
        args.extend(["--cache-mode", m]);
    }
    let _d = Daemon::start(&dirs.src, &dirs.mnt, &args);

    for (i, (name, n)) in files.iter().enumerate() {
        let want = pattern(100 + i as u64, *n);
        let p = dirs.mnt.join(name);
        let md = fs::metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        assert_eq!(md.len(), *n as u64, "{name}: st_size through the mount");

        // whole-file reads with several buffer sizes (sequential read(2) calls)
        let got = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        assert_bytes_eq(&got, &want, &format!("{name}: fs::read"));
        for bs in [4096usize, 65536, 100_000, 1 << 20] {
            let got = read_sequential(&p, bs);
            assert_bytes_eq(&got, &want, &format!("{name}: sequential read({bs})"));
        }

        // preads around every chunk boundary and at EOF
        let f = File::open(&p).unwrap();
        let mut probes: Vec<(u64, usize)> = vec![(0, 1), (0, 4096), (0, *n + 10)];
        let mut k = 0;
        while k * CHUNK <= *n as u64 + CHUNK {
            let b = k * CHUNK;
            for (back, len) in [
                (1u64, 2usize),
                (100, 200),
                (4096, 8192),
                (0, CHUNK as usize),
                (1, CHUNK as usize + 2),
            ] {
                if b >= back {
                    probes.push((b - back, len));
                }
            }
            k += 1;
        }
        probes.push((*n as u64, 100)); // at EOF
        probes.push((*n as u64 + 1, 100)); // past EOF
        probes.push((*n as u64 + 10 * CHUNK, 100));
        let mut buf = vec![0u8; 4 * CHUNK as usize];
        for (off, len) in probes {
            let len = len.min(buf.len());
            let got = pread_full(&f, &mut buf[..len], off)
                .unwrap_or_else(|e| panic!("{name}: pread({off}, {len}): {e}"));
            let s = (off as usize).min(*n);
            let e = (off as usize + len).min(*n);
            assert_bytes_eq(
                &buf[..got],
                &want[s..e],
                &format!("{name}: pread(off={off}, len={len})"),
            );
        }
    }
}

#[test]
fn boundary_sizes_are_byte_exact_default_mode() {
    check_boundary_files(None);
}

#[test]
fn boundary_sizes_are_byte_exact_direct_mode() {
    check_boundary_files(Some("direct"));
}

#[test]
fn boundary_sizes_are_byte_exact_keep_mode() {
    check_boundary_files(Some("keep"));
}

/// A 5 GiB (apparent) sparse file: written regions at the start, across the 1 GiB, 2 GiB and
/// 4 GiB marks, and at the unaligned tail; holes in between. Offsets beyond 2^31 and 2^32 catch
/// 32-bit truncation.
#[test]
fn large_sparse_file_regions_holes_and_tail() {
    let dirs = Dirs::new();
    let size: u64 = 5 * GIB + 12_345;
    let path = dirs.src.join("sparse.bin");
    let f = File::create(&path).unwrap();
    f.set_len(size).unwrap();
    let regions: Vec<(u64, usize)> = vec![
        (0, 100_000),
        (GIB - 50_000, 100_000),
        (2 * GIB + 7, 200_000),
        (4 * GIB - 3, 70_000),
        (size - 70_000, 70_000),
    ];
    for (i, (off, len)) in regions.iter().enumerate() {
        f.write_all_at(&pattern(500 + i as u64, *len), *off)
            .unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let src = File::open(&path).unwrap();

    let d = Daemon::start(
        &dirs.src,
        &dirs.mnt,
        &[
            "--chunk",
            "64KiB",
            "--pool",
            "32MiB",
            "--cache-mode",
            "direct",
        ],
    );
    let mp = dirs.mnt.join("sparse.bin");
    assert_eq!(
        fs::metadata(&mp).unwrap().len(),
        size,
        "st_size of the sparse file"
    );
    let m = File::open(&mp).unwrap();

    let mut probes: Vec<(u64, usize)> = Vec::new();
    for (off, len) in &regions {
        // the region itself plus some hole on both sides
        probes.push((off.saturating_sub(3000), len + 6000));
        probes.push((*off, *len));
    }
    for hole in [
        200_000u64,
        GIB / 2,
        3 * GIB / 2 + 5,
        3 * GIB,
        4 * GIB + 100_000,
        5 * GIB - 1_000_000,
    ] {
        probes.push((hole, 128 * 1024));
    }
    probes.push((size - 1, 1));
    probes.push((size - 1_000_000, 1_000_000));
    probes.push((size, 4096));
    probes.push((size + 1_000_000, 4096));

    for (off, len) in probes {
        let mut want = vec![0u8; len];
        let wn = pread_full(&src, &mut want, off).unwrap();
        want.truncate(wn);
        let mut got = vec![0u8; len];
        let gn = pread_full(&m, &mut got, off).unwrap_or_else(|e| {
            panic!("pread(sparse.bin, off={off}, len={len}) through the mount: {e}")
        });
        got.truncate(gn);
        assert_bytes_eq(
            &got,
            &want,
            &format!("sparse.bin pread(off={off}, len={len})"),
        );
    }
    drop(m);
    drop(d);
}

/// mmap(MAP_SHARED, PROT_READ) of a multi-chunk file with an unaligned size, the way llama.cpp
/// maps GGUF files; pages are touched backwards and then compared in full.
fn check_mmap(mode: Option<&str>) {
    let dirs = Dirs::new();
    let size = 3 * MIB as usize + 777;
    let want = pattern(77, size);
    write_file(&dirs.src.join("model.gguf"), &want);
    let mut args = vec!["--chunk", "64KiB", "--pool", "16M"];
    if let Some(m) = mode {
        args.extend(["--cache-mode", m]);
    }
    let _d = Daemon::start(&dirs.src, &dirs.mnt, &args);
    let f = File::open(dirs.mnt.join("model.gguf")).unwrap();
    use std::os::fd::AsRawFd;
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap(MAP_SHARED) of a file in the mount (cache mode {mode:?}): {}",
        std::io::Error::last_os_error()
    );
    let map = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
    // touch the pages in reverse order first (not the kernel's readahead-friendly order)
    let mut pg = (size - 1) / 4096;
    loop {
        let off = pg * 4096;
        assert_eq!(
            map[off], want[off],
            "mmap byte at {off} (cache mode {mode:?})"
        );
        if pg == 0 {
            break;
        }
        pg -= 1;
    }
    let got = map.to_vec();
    unsafe { libc::munmap(p, size) };
    assert_bytes_eq(&got, &want, &format!("mmap contents (cache mode {mode:?})"));
}

#[test]
fn mmap_shared_equals_source_default_mode() {
    check_mmap(None);
}

#[test]
fn mmap_shared_equals_source_direct_mode() {
    check_mmap(Some("direct"));
}

#[test]
fn mmap_shared_equals_source_keep_mode() {
    check_mmap(Some("keep"));
}

/// A mapping of a file larger than the pool: pages of the mapping are filled while the arena
/// evicts behind them.
#[test]
fn mmap_shared_of_a_file_larger_than_the_pool() {
    let dirs = Dirs::new();
    let size = 12 * MIB as usize + 4097;
    let want = pattern(78, size);
    write_file(&dirs.src.join("big.gguf"), &want);
    let _d = Daemon::start(&dirs.src, &dirs.mnt, &["--chunk", "64KiB", "--pool", "4M"]);
    let f = File::open(dirs.mnt.join("big.gguf")).unwrap();
    use std::os::fd::AsRawFd;
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let map = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
    // strided first (every 7th page), then everything
    let pages = size.div_ceil(4096);
    for k in 0..pages {
        let off = ((k * 7) % pages) * 4096;
        assert_eq!(map[off], want[off], "mmap byte at {off}");
    }
    let got = map.to_vec();
    unsafe { libc::munmap(p, size) };
    assert_bytes_eq(&got, &want, "mmap of a file 3x the pool");
}

fn mtime(p: &Path) -> SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Sleep until 150 ms into the next full second, so a write and a rewrite land in the same one
/// (file timestamps are coarse and lag the clock by a few ms, hence not right at the boundary).
fn align_to_second_start() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = now.subsec_nanos() as u64;
    std::thread::sleep(Duration::from_nanos(1_000_000_000 - into + 150_000_000));
}

fn rewrite_in_place(p: &Path, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(data, 0).unwrap();
    f.sync_all().unwrap();
}

fn check_no_stale_bytes(mode: &str) {
    let dirs = Dirs::new();
    let len = 200_000; // several 64 KiB chunks, unaligned tail
    let a = pattern(1, len);
    let b = pattern(2, len);
    let c = pattern(3, len);
    let src = dirs.src.join("w.bin");
    let mnt = dirs.mnt.join("w.bin");
    write_file(&src, &a);
    let _d = Daemon::start(
        &dirs.src,
        &dirs.mnt,
        &["--chunk", "64KiB", "--pool", "16M", "--cache-mode", mode],
    );

    // 1. same size, in place, within the same second as the previous write
    let mut attempts = 0;
    loop {
        attempts += 1;
        align_to_second_start();
        rewrite_in_place(&src, &a);
        let t0 = mtime(&src);
        let got = read_or_panic(&mnt);
        assert_bytes_eq(&got, &a, &format!("[{mode}] w.bin before the rewrite"));
        // read it a second time so it is certainly cached (arena and, in keep mode, page cache)
        let got = read_or_panic(&mnt);
        assert_bytes_eq(
            &got,
            &a,
            &format!("[{mode}] w.bin before the rewrite (2nd read)"),
        );
        rewrite_in_place(&src, &b);
        let t1 = mtime(&src);
        if secs(t0) == secs(t1) {
            break;
        }
        assert!(
            attempts < 5,
            "could not rewrite within the same second in 5 attempts"
        );
        rewrite_in_place(&src, &a);
    }
    assert_eq!(fs::metadata(&src).unwrap().len(), len as u64);
    let got = read_or_panic(&mnt);
    assert_bytes_eq(
        &got,
        &b,
        &format!(
            "[{mode}] open+read after an in-place same-size rewrite within the same second (stale bytes?)"
        ),
    );
    // and by pread on a fresh fd, at a chunk boundary
    let f = File::open(&mnt).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = pread_full(&f, &mut buf, CHUNK - 2048).unwrap();
    assert_bytes_eq(
        &buf[..n],
        &b[CHUNK as usize - 2048..CHUNK as usize + 2048],
        &format!("[{mode}] pread after rewrite"),
    );
    drop(f);

    // 1b. many quick rewrites in place, each followed at once by open+read (same size; the
    // invalidation of the old bytes races with the new read)
    for i in 0..100u64 {
        let next = pattern(1000 + i, len);
        rewrite_in_place(&src, &next);
        let got = read_or_panic(&mnt);
        assert_bytes_eq(
            &got,
            &next,
            &format!("[{mode}] open+read right after quick in-place rewrite #{i}"),
        );
    }
    rewrite_in_place(&src, &b);

    // 2. replaced by rename (same size, a new inode)
    let got = read_or_panic(&mnt);
    assert_bytes_eq(&got, &b, &format!("[{mode}] w.bin before the rename"));
    let tmp = dirs.src.join(".w.bin.tmp");
    write_file(&tmp, &c);
    fs::rename(&tmp, &src).unwrap();
    let got = read_or_panic(&mnt);
    assert_bytes_eq(
        &got,
        &c,
        &format!("[{mode}] open+read after replacing the file by rename (stale bytes?)"),
    );

    // 3. replaced by rename with a different size
    let d2 = pattern(4, len + 70_000);
    write_file(&tmp, &d2);
    fs::rename(&tmp, &src).unwrap();
    let got = read_or_panic(&mnt);
    assert_bytes_eq(
        &got,
        &d2,
        &format!("[{mode}] open+read after rename to a larger file"),
    );

    // 4. rewritten in place with a different size (truncate + write, same inode), growing and
    // shrinking in turn, each read right after (80 times: the invalidation races the read)
    let sizes = (0..80).map(|i| {
        if i % 2 == 0 {
            len + 100_000 + i * 1000
        } else {
            len / 3 + i * 1000
        }
    });
    for (i, n) in sizes.enumerate() {
        let e = pattern(40 + i as u64, n);
        write_file(&src, &e);
        let got = read_or_panic(&mnt);
        assert_bytes_eq(
            &got,
            &e,
            &format!("[{mode}] open+read after an in-place rewrite to {n} bytes"),
        );
    }
}

/// The way llama.cpp maps a model: open, fstat for the size, mmap that many bytes. After the
/// source file is rewritten with a different size (in place, or replaced by rename), that fstat
/// (on the fd of the open that follows) must show the new size, and the mapping the new bytes.
fn check_open_fstat_mmap_after_size_change(mode: &str) {
    use std::os::fd::AsRawFd;
    let dirs = Dirs::new();
    let src = dirs.src.join("m.gguf");
    let mnt = dirs.mnt.join("m.gguf");
    write_file(&src, &pattern(1, 200_000));
    let _d = Daemon::start(
        &dirs.src,
        &dirs.mnt,
        &["--chunk", "64KiB", "--pool", "16M", "--cache-mode", mode],
    );
    assert_eq!(read_or_panic(&mnt).len(), 200_000);
    for i in 0..40u64 {
        let n = if i % 2 == 0 {
            300_000 + i as usize * 1000
        } else {
            70_000 + i as usize * 1000
        };
        let want = pattern(100 + i, n);
        // rounds 0,1 mod 4: in place (truncate + write); 2,3: a new file renamed over it
        let how = if i % 4 < 2 { "in place" } else { "by rename" };
        if how == "in place" {
            write_file(&src, &want);
        } else {
            let tmp = dirs.src.join(".m.gguf.tmp");
            write_file(&tmp, &want);
            fs::rename(&tmp, &src).unwrap();
        }
        let f = File::open(&mnt).unwrap_or_else(|e| panic!("open: {}", io_context(&e)));
        let size = f.metadata().unwrap().len();
        assert_eq!(
            size, n as u64,
            "[{mode}] rewrite #{i} ({how}): fstat after open shows st_size {size}, the source has {n}"
        );
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let got = unsafe { std::slice::from_raw_parts(p as *const u8, n) }.to_vec();
        unsafe { libc::munmap(p, n) };
        assert_bytes_eq(
            &got,
            &want,
            &format!("[{mode}] rewrite #{i} ({how}): mmap after open+fstat"),
        );
    }
}

#[test]
fn open_fstat_mmap_after_size_change_direct_mode() {
    check_open_fstat_mmap_after_size_change("direct");
}

#[test]
fn open_fstat_mmap_after_size_change_keep_mode() {
    check_open_fstat_mmap_after_size_change("keep");
}

#[test]
fn no_stale_bytes_direct_mode() {
    check_no_stale_bytes("direct");
}

#[test]
fn no_stale_bytes_keep_mode() {
    check_no_stale_bytes("keep");
}
