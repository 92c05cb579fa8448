//! The compressed tier on a real mount: a BF16 safetensors working set larger than the pool but
//! smaller than its compressed size is served, once warm, with no misses and no evictions.

use std::io::Write;
use std::path::{Path, PathBuf};

use nitro_uring::mount::{CompressMode, MountConfig, Mounted};

mod common;

const MIB: u64 = 1 << 20;

/// A BF16 safetensors file of normally distributed weights (like a real checkpoint: exponents
/// cluster, mantissas are noise), `tensors` tensors of `elems` elements each.
fn write_bf16_safetensors(path: &Path, tensors: usize, elems: usize) -> Vec<u8> {
    let mut header = String::from("{");
    for t in 0..tensors {
        let b = t * elems * 2;
        header += &format!(
            "\"w{t}\":{{\"dtype\":\"BF16\",\"shape\":[{elems}],\"data_offsets\":[{b},{}]}},",
            b + elems * 2
        );
    }
    header.pop();
    header += "}";
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..tensors * elems / 2 {
        // Box-Muller: two normals, scaled like a weight matrix (std 0.02).
        let (u1, u2) = (uniform().max(1e-12), uniform());
        let r = (-2.0 * u1.ln()).sqrt() * 0.02;
        for z in [
            r * (2.0 * std::f64::consts::PI * u2).cos(),
            r * (2.0 * std::f64::consts::PI * u2).sin(),
        ] {
            let bits = (z as f32).to_bits();
            let bf16 = ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
            out.extend_from_slice(&bf16.to_le_bytes());
        }
    }
    let mut f = std::fs::File::create(path).expect("create source file");
    f.write_all(&out).expect("write source file");
    f.sync_all().expect("sync source file");
    out
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
