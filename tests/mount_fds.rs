//! Source read descriptors are held only while a file is open through the mount, and a file
//! reopened unchanged keeps its cached chunks (a directory of thousands of files must not exhaust
//! fds, nor lose its cache when a loader closes and reopens). Each inode the kernel holds keeps one
//! `O_PATH` descriptor (its identity), released when the kernel forgets the inode.

use nitro_uring::mount::{MountConfig, Mounted};

/// Descriptors open for I/O (`O_PATH` ones, which only name an object, are not counted).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fdinfo")
        .expect("list fds")
        .filter_map(Result::ok)
        .filter(|e| {
            let info = std::fs::read_to_string(e.path()).unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            flags & libc::O_PATH as u32 == 0
        })
        .count()
}

#[test]
fn closed_files_release_source_fds_and_keep_their_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let files = 600;
    for i in 0..files {
        std::fs::write(src.join(format!("f{i}")), vec![i as u8; 10_000 + i]).expect("write");
    }
    // Versions younger than the racy window are not shared between opens (see README).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let m = Mounted::spawn(MountConfig::new(&src, &mnt, 64 << 20)).expect("mount");
    let before = open_fds();
    for i in 0..files {
        let got = std::fs::read(mnt.join(format!("f{i}"))).expect("read");
        assert!(got == vec![i as u8; 10_000 + i], "f{i} differs");
    }
    let after = open_fds();
    assert!(
        after < before + 16,
        "source descriptors leak: {before} open before reading {files} files, {after} after"
    );
    let warm = m.stats();
    for i in 0..files {
        let got = std::fs::read(mnt.join(format!("f{i}"))).expect("read");
        assert!(got == vec![i as u8; 10_000 + i], "f{i} differs on reopen");
    }
    let again = m.stats();
    assert_eq!(
        again.misses, warm.misses,
        "reopening unchanged files lost their cache"
    );
    assert_eq!(again.invalidations, 0);
    m.unmount().expect("unmount");
}
