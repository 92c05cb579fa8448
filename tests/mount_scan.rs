//! Scan resistance on a real mount: one pass over a file three times the pool must not flush a
//! hot file that was read before it (S3-FIFO's small queue absorbs the scan).

use nitro_uring::mount::{MountConfig, Mounted};

const MIB: usize = 1 << 20;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

#[test]
fn one_pass_over_a_file_larger_than_the_pool_keeps_the_hot_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let hot = pattern(1, 8 * MIB);
    let big = pattern(2, 96 * MIB);
    std::fs::write(src.join("hot.bin"), &hot).expect("write hot");
    std::fs::write(src.join("big.bin"), &big).expect("write big");
    // Versions younger than the racy window are private to one open: let the files settle.
    std::thread::sleep(nitro_uring::fuse::RACY_WINDOW + std::time::Duration::from_millis(100));
    let m = Mounted::spawn(MountConfig::new(&src, &mnt, 32 * MIB as u64)).expect("mount");
    for _ in 0..3 {
        assert!(std::fs::read(mnt.join("hot.bin")).expect("read hot") == hot);
    }
    assert!(std::fs::read(mnt.join("big.bin")).expect("read big") == big);
    let before = m.stats();
    assert!(std::fs::read(mnt.join("hot.bin")).expect("read hot") == hot);
    let after = m.stats();
    eprintln!("before: {before:?}\nafter: {after:?}");
    assert!(before.evictions > 0, "the scan must have evicted something");
    assert_eq!(
        after.misses, before.misses,
        "the hot file was flushed by a one-pass scan"
    );
    assert_eq!(
        after.compressions, 0,
        "a one-pass scan must cost no compression"
    );
    m.unmount().expect("unmount");
}
