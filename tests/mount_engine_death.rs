//! A dead fill engine is loud: with the test hook `NITRO_URING_FAULT=engine-panic-on=NAME` the ring
//! thread panics when it starts a fill of NAME. The read that triggered it fails with EIO (it does
//! not hang), the daemon unmounts, prints why and exits non-zero, and nothing is left mounted.

mod common;

use std::fs;
use std::io;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn read_bounded(p: &Path, timeout: Duration) -> Option<io::Result<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = p.to_path_buf();
    thread::spawn(move || {
        let _ = tx.send(fs::read(p));
    });
    rx.recv_timeout(timeout).ok()
}

#[test]
fn engine_panic_fails_reads_unmounts_and_exits_non_zero() {
    let dirs = Dirs::new();
    let good = pattern(5, 300_000);
    write_file(&dirs.src.join("good.bin"), &good);
    write_file(&dirs.src.join("poison.bin"), &pattern(6, 300_000));
    let mut d = Daemon::try_start_env(
        &dirs.src,
        &dirs.mnt,
        &["--chunk", "64KiB", "--pool", "16M"],
        &[("NITRO_URING_FAULT", "engine-panic-on=poison.bin")],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let got = read_bounded(&dirs.mnt.join("good.bin"), Duration::from_secs(10))
        .expect("reading good.bin hung")
        .unwrap_or_else(|e| panic!("reading good.bin: {e}; stderr:\n{}", d.stderr()));
    assert_bytes_eq(&got, &good, "good.bin before the fault");

    let r =
        read_bounded(&dirs.mnt.join("poison.bin"), Duration::from_secs(10)).unwrap_or_else(|| {
            panic!(
                "reading poison.bin hung after the engine died; stderr:\n{}",
                d.stderr()
            )
        });
    let e = r.expect_err("reading poison.bin should fail once the engine died");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EIO),
        "reading poison.bin: {e}, expected EIO; stderr:\n{}",
        d.stderr()
    );

    let st = d.finish(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "the daemon did not exit within 10 s of its engine dying; stderr:\n{}",
            d.stderr()
        )
    });
    let stderr = d.stderr();
    eprintln!("daemon stderr:\n{stderr}");
    assert!(
        !st.success(),
        "the daemon exited with {st} after its engine died; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("nitro-uring: fill engine failed: ") && stderr.contains("fault injection"),
        "stderr does not say why the daemon exited:\n{stderr}"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_mounted(&dirs.mnt) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !is_mounted(&dirs.mnt),
        "still mounted after the daemon exited: {:?}",
        mounts_at(&dirs.mnt)
    );
    // the mountpoint is a plain, empty directory again
    assert_eq!(fs::read_dir(&dirs.mnt).unwrap().count(), 0);
}
