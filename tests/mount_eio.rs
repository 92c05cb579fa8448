//! Source read errors: the SOURCE is a FUSE filesystem served by this test process
//! (tests/support/faulty_fs.rs) whose bad.bin fails every read with EIO. Reading bad.bin through
//! nitro-uring must fail with EIO, and the daemon must go on serving the other files.

mod common;
#[path = "support/faulty_fs.rs"]
mod faulty_fs;

use std::fs::{self, File};
use std::sync::atomic::Ordering;

use common::*;
use faulty_fs::*;

#[test]
fn source_eio_reaches_the_reader_and_the_daemon_keeps_serving_direct_mode() {
    check_eio("direct");
}

#[test]
fn source_eio_reaches_the_reader_and_the_daemon_keeps_serving_keep_mode() {
    check_eio("keep");
}

fn check_eio(mode: &str) {
    let dirs = Dirs::new();
    let faulty = FaultyMount::mount(&dirs.src);
    let good = pattern(GOOD_SEED, GOOD_LEN);
    let mut d = Daemon::start(
        &dirs.src,
        &dirs.mnt,
        &["--chunk", "64KiB", "--pool", "16M", "--cache-mode", mode],
    );

    // the mirror lists the faulty source
    assert_eq!(
        fs::metadata(dirs.mnt.join("bad.bin")).unwrap().len(),
        BAD_LEN as u64
    );
    assert_bytes_eq(
        &fs::read(dirs.mnt.join("good.bin")).unwrap(),
        &good,
        "good.bin before",
    );

    for attempt in 0..3 {
        let e = fs::read(dirs.mnt.join("bad.bin"))
            .expect_err("reading bad.bin through the mount should fail");
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "attempt {attempt}: reading bad.bin: expected EIO, got {e} ({:?})",
            e.raw_os_error()
        );
        // a pread in the middle fails too
        let f = File::open(dirs.mnt.join("bad.bin")).unwrap();
        let mut buf = vec![0u8; 4096];
        let e = pread_full(&f, &mut buf, 100_000).expect_err("pread of bad.bin should fail");
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "attempt {attempt}: pread(bad.bin, 100000): {e}"
        );
    }
    assert!(
        faulty.failed_reads.load(Ordering::Relaxed) > 0,
        "the daemon never read bad.bin from the source"
    );

    assert!(
        d.is_alive(),
        "the daemon died after a source EIO; stderr:\n{}",
        d.stderr()
    );
    assert!(
        is_mounted(&dirs.mnt),
        "the mount went away after a source EIO"
    );
    assert_bytes_eq(
        &fs::read(dirs.mnt.join("good.bin")).unwrap(),
        &good,
        "good.bin after the EIO",
    );
    let f = File::open(dirs.mnt.join("good.bin")).unwrap();
    let mut buf = vec![0u8; 70_000];
    let n = pread_full(&f, &mut buf, 60_000).unwrap();
    assert_bytes_eq(
        &buf[..n],
        &good[60_000..130_000],
        "pread(good.bin, 60000, 70000) after the EIO",
    );
    assert!(d.is_alive(), "the daemon died; stderr:\n{}", d.stderr());
    drop(f);
    drop(d);
    drop(faulty);
}

/// An error in one part of a file fails only the reads that need that part: the first chunks of
/// partial.bin (all below PARTIAL_BAD_FROM) read fine, reads that touch the bad range fail with
/// EIO — with or without readahead into the bad range.
#[test]
fn source_eio_is_confined_to_the_failing_range() {
    let dirs = Dirs::new();
    let faulty = FaultyMount::mount(&dirs.src);
    let want = pattern(PARTIAL_SEED, PARTIAL_LEN);
    let mut d = Daemon::start(
        &dirs.src,
        &dirs.mnt,
        &[
            "--chunk",
            "64KiB",
            "--pool",
            "16M",
            "--cache-mode",
            "direct",
        ],
    );
    let f = File::open(dirs.mnt.join("partial.bin")).unwrap();
    let mut buf = vec![0u8; 64 * 1024];

    // bad range first
    let e = pread_full(&f, &mut buf, PARTIAL_BAD_FROM + 1000)
        .expect_err("read in the bad range should fail");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EIO),
        "pread in the bad range: {e}"
    );

    // good range: each chunk below PARTIAL_BAD_FROM, in order (readahead may reach the bad range)
    let mut off = 0u64;
    while off + buf.len() as u64 <= PARTIAL_BAD_FROM {
        let n = pread_full(&f, &mut buf, off).unwrap_or_else(|e| {
            panic!("pread(partial.bin, {off}, 64KiB), entirely below the bad range: {e}")
        });
        assert_bytes_eq(
            &buf[..n],
            &want[off as usize..off as usize + buf.len()],
            &format!("partial.bin at {off}"),
        );
        off += buf.len() as u64;
    }
    let e = pread_full(&f, &mut buf, PARTIAL_BAD_FROM - 10)
        .expect_err("read straddling into the bad range");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EIO),
        "pread straddling into the bad range: {e}"
    );
    assert!(d.is_alive(), "the daemon died; stderr:\n{}", d.stderr());
    drop(f);
    drop(d);
    drop(faulty);
}
