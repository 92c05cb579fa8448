//! Source descriptors are held only while a file is open through the mount, and a file reopened
//! unchanged keeps its cached chunks (a directory of thousands of files must not exhaust fds, nor
//! lose its cache when a loader closes and reopens).

use nitro_uring::mount::{MountConfig, Mounted};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
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
