//! The compressed tier on a real mount: a BF16 safetensors working set larger than the pool but
//! smaller than its compressed size is served, once warm, with no misses and no evictions.

use std::path::{Path, PathBuf};

use nitro_uring::mount::{CompressMode, MountConfig, Mounted};

#[path = "support/bf16.rs"]
mod bf16;
mod common;

const MIB: u64 = 1 << 20;

fn write_bf16_safetensors(path: &Path, tensors: usize, elems: usize) -> Vec<u8> {
    bf16::write_bf16_safetensors(path, tensors, elems, 0x2545_f491_4f6c_dd1d)
}

fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read through the mount")
}

/// 48 MiB of BF16 (plus header) under a 40 MiB pool: it fits only compressed (≈0.7×).
fn mount_bf16(compress: CompressMode) -> (tempfile::TempDir, Mounted, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&src).expect("mkdir src");
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    let data = write_bf16_safetensors(&src.join("model.safetensors"), 12, 2 << 20);
    let mut cfg = MountConfig::new(&src, &mnt, 40 * MIB);
    cfg.compress = compress;
    // Versions younger than the racy window are private to one open: let the files settle.
    std::thread::sleep(nitro_uring::fuse::RACY_WINDOW + std::time::Duration::from_millis(100));
    let m = Mounted::spawn(cfg).expect("mount");
    (dir, m, mnt.join("model.safetensors"), data)
}

#[test]
fn bf16_working_set_larger_than_pool_is_served_without_evictions_once_warm() {
    let (_dir, m, file, data) = mount_bf16(CompressMode::Auto);
    for pass in 0..6 {
        assert!(
            read_all(&file) == data,
            "pass {pass}: bytes differ from the source"
        );
    }
    let warm = m.stats();
    for pass in 0..3 {
        assert!(read_all(&file) == data, "warm pass {pass}: bytes differ");
    }
    let after = m.stats();
    eprintln!("warm: {warm:?}\nafter: {after:?}");
    assert!(after.compressions > 0, "nothing was compressed");
    assert_eq!(after.misses, warm.misses, "misses once warm");
    assert_eq!(after.evictions, warm.evictions, "evictions once warm");
    assert!(after.hits > warm.hits);
    assert!(
        after.logical_cached_bytes > after.pool_bytes,
        "the pool holds more logical bytes than its size: {} vs {}",
        after.logical_cached_bytes,
        after.pool_bytes
    );
    assert_eq!(after.decode_errors, 0);
    m.unmount().expect("unmount");
}

#[test]
fn compress_off_evicts_instead() {
    let (_dir, m, file, data) = mount_bf16(CompressMode::Off);
    for _ in 0..4 {
        assert!(read_all(&file) == data);
    }
    let s = m.stats();
    assert_eq!(s.compressions, 0);
    assert!(
        s.evictions > 0,
        "a working set larger than the pool must evict: {s:?}"
    );
    m.unmount().expect("unmount");
}

/// The COMPRESS log line names a file version once, however often the file is reopened (it used to
/// repeat on every reopen, each of which made a new `Source`).
#[test]
fn compress_line_is_logged_once_per_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&src).expect("mkdir src");
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    let data = write_bf16_safetensors(&src.join("model.safetensors"), 12, 2 << 20);
    std::thread::sleep(nitro_uring::fuse::RACY_WINDOW + std::time::Duration::from_millis(100));
    let mut d = common::Daemon::start(&src, &mnt, &["--pool", "40M"]);
    for pass in 0..8 {
        assert!(
            read_all(&mnt.join("model.safetensors")) == data,
            "pass {pass}: bytes differ from the source"
        );
    }
    d.signal(libc::SIGTERM);
    let status = d.finish(std::time::Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon exit: {status:?}"
    );
    let log = d.stderr();
    let lines = log
        .lines()
        .filter(|l| l.contains("COMPRESS model.safetensors"))
        .count();
    assert_eq!(lines, 1, "COMPRESS lines for one version:\n{log}");
}
