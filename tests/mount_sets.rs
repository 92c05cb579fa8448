//! Model sets on real mounts: opening one numbered shard prefetches the others, so reading them
//! afterwards takes (almost) nothing from the disk — measured with the source's block device read
//! counter, caches dropped before the reads — through the store and, with `--store off`, through
//! free arena room; a set larger than the pool leaves a hot file resident; members the opener
//! cannot read and symlinked members are skipped; safetensors indexes and ollama manifests are
//! sets too; `--prefetch-sets off` turns it off.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nitro_uring::fuse::RACY_WINDOW;
use nitro_uring::mount::{MountConfig, Mounted, StatsSnapshot, StoreMode};

const WAIT: Duration = Duration::from_secs(120);

/// The tests here take turns: they read and drop caches, and the device counter must see one
/// test's reads at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn store_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nitro-sets-test-")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm")
}

fn config(src: &Path, mnt: &Path, pool: u64, store: Option<&Path>) -> MountConfig {
    let mut c = MountConfig::new(src, mnt, pool);
    c.store = store.map_or(StoreMode::Off, |p| StoreMode::Dir(p.to_path_buf()));
    c
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

fn shard(k: u32, n: u32) -> String {
    format!("x-{k:05}-of-{n:05}.gguf")
}

/// Writes `n` shards of `len` bytes and lets them settle (flushed, older than the racy window).
fn make_shards(dir: &Path, n: u32, len: usize) {
    for k in 1..=n {
        write_file(&dir.join(shard(k, n)), &pattern(u64::from(k), len));
    }
    settle();
}

fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    thread::sleep(RACY_WINDOW + Duration::from_millis(200));
}

/// Reads 1 MiB of a file through the mount (the loader's first look at shard 1).
fn peek(p: &Path) {
    use std::io::Read;
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut b = vec![0u8; 1 << 20];
    f.read_exact(&mut b).expect("read 1 MiB");
}

/// The block device (`/sys/dev/block/MAJ:MIN`) under `path`'s filesystem, if it has one.
fn block_dev(path: &Path) -> Option<PathBuf> {
    let path = path.canonicalize().ok()?;
    let e = mountinfo()
        .into_iter()
        .filter(|e| path.starts_with(&e.mount_point))
        .max_by_key(|e| e.mount_point.as_os_str().len())?;
    let stat = PathBuf::from(format!("/sys/dev/block/{}:{}/stat", e.dev.0, e.dev.1));
    (e.dev.0 != 0 && stat.exists()).then_some(stat)
}

/// Bytes read from the device so far (sectors read, field 3, × 512).
fn device_read_bytes(stat: &Path) -> u64 {
    let text = fs::read_to_string(stat).expect("device stat");
    let sectors: u64 = text
        .split_whitespace()
        .nth(2)
        .and_then(|f| f.parse().ok())
        .expect("sectors read");
    sectors * 512
}

/// Bytes this process (test and in-process daemon) made the kernel read from storage.
fn own_read_bytes() -> u64 {
    let text = fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    text.lines()
        .find_map(|l| l.strip_prefix("read_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("read_bytes")
}

fn drop_caches() {
    // SAFETY: as above.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches (needs root)");
}

/// Drops caches, reads `files` whole through the mount (checking their bytes) and returns the
/// bytes read from the source's block device (None: no block device) and by this process.
fn cold_pass(files: &[(PathBuf, u64)], len: usize, dev: Option<&Path>) -> (Option<u64>, u64) {
    drop_caches();
    // Every process on the machine faults its pages back in right after the drop; let that
    // pass (it is not ours: the shards' source pages stay dropped, nobody else reads them).
    thread::sleep(Duration::from_secs(1));
    let dev0 = dev.map(device_read_bytes);
    let own0 = own_read_bytes();
    for (p, seed) in files {
        let got =
            fs::read(p).unwrap_or_else(|e| panic!("read {}: {}", p.display(), io_context(&e)));
        assert_bytes_eq(&got, &pattern(*seed, len), &p.display().to_string());
    }
    let own = own_read_bytes() - own0;
    (dev.map(|d| device_read_bytes(d) - dev0.unwrap_or(0)), own)
}

/// The done-means scenario at CI size: open shard 1, read 1 MiB, wait for the set prefetch, then
/// read shards 2..n whole from dropped caches: under 5% of their bytes may come from the disk.
fn shards_come_from_ram(store: Option<&Path>, n: u32, len: usize, pool: u64) {
    let _turn = serial();
    let dirs = Dirs::new();
    make_shards(&dirs.src, n, len);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, pool, store)).expect("mount");
    peek(&dirs.mnt.join(shard(1, n)));
    let s = wait_for(&m, "set prefetch done", |s| s.sets_done >= 1);
    let rest = (n as u64 - 1) * len as u64;
    assert_eq!(
        (s.sets_found, s.set_members_queued),
        (1, u64::from(n) - 1),
        "{s:?}"
    );
    assert!(s.set_prefetch_bytes >= rest, "prefetched {s:?}");
    let files: Vec<(PathBuf, u64)> = (2..=n)
        .map(|k| (dirs.mnt.join(shard(k, n)), u64::from(k)))
        .collect();
    let dev = block_dev(&dirs.src);
    let limit = rest / 20;
    let before = m.stats();
    // Other processes on this machine read the disk too: a pass is taken if the device counter
    // stays under the limit; this process's own reads must stay under it every time.
    let mut passes = Vec::new();
    for _ in 0..5 {
        let (device, own) = cold_pass(&files, len, dev.as_deref());
        passes.push((device, own));
        assert!(
            own < limit,
            "this process read {own} bytes from storage (limit {limit})"
        );
        if device.is_none_or(|d| d < limit) {
            break;
        }
    }
    let after = m.stats();
    eprintln!(
        "shards 2..{n} ({} MiB): (device, own) bytes read per pass {passes:?}; daemon fills {} bytes",
        rest >> 20,
        after.fill_bytes - before.fill_bytes
    );
    match dev {
        Some(_) => assert!(
            passes.iter().any(|(d, _)| d.is_some_and(|d| d < limit)),
            "every pass read >= 5% of the shards from the device: {passes:?}"
        ),
        // tmpfs or overlay: no block device to count; the daemon's own fills must stay small.
        None => eprintln!("no block device under the source: counted the daemon's fills instead"),
    }
    assert!(
        after.fill_bytes - before.fill_bytes < limit,
        "the daemon read shards again: {before:?} -> {after:?}"
    );
    m.unmount().expect("unmount");
}

#[test]
fn opening_one_shard_prefetches_the_rest_into_the_store() {
    let store = store_dir();
    shards_come_from_ram(Some(store.path()), 4, 64 << 20, 512 << 20);
}

#[test]
fn with_store_off_the_rest_is_prefetched_into_free_arena_room() {
    shards_come_from_ram(None, 4, 64 << 20, 512 << 20);
}

/// A set three times the pool, read whole once, after a hot file was read three times: the set
/// prefetch takes only free room and the hot file is still served from RAM afterwards.
fn hot_file_survives_a_set_larger_than_the_pool(store: Option<&Path>) {
    let _turn = serial();
    let dirs = Dirs::new();
    let (n, len, pool) = (12u32, 16usize << 20, 64u64 << 20);
    let hot = pattern(99, 8 << 20);
    write_file(&dirs.src.join("hot.bin"), &hot);
    make_shards(&dirs.src, n, len);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, pool, store)).expect("mount");
    for _ in 0..3 {
        assert_bytes_eq(&read_or_panic(&dirs.mnt.join("hot.bin")), &hot, "hot file");
    }
    if store.is_some() {
        wait_for(&m, "hot file stored", |s| s.store_complete_files >= 1);
    }
    peek(&dirs.mnt.join(shard(1, n)));
    let s = wait_for(&m, "set prefetch done", |s| s.sets_done >= 1);
    assert!(
        s.set_members_queued < u64::from(n) - 1,
        "a set 3x the pool must be cut to the free room: {s:?}"
    );
    for k in 1..=n {
        let got = read_or_panic(&dirs.mnt.join(shard(k, n)));
        assert_bytes_eq(&got, &pattern(u64::from(k), len), &shard(k, n));
    }
    let before = m.stats();
    assert_bytes_eq(
        &read_or_panic(&dirs.mnt.join("hot.bin")),
        &hot,
        "hot file after",
    );
    let after = m.stats();
    eprintln!("before: {before:?}\nafter: {after:?}");
    assert_eq!(
        (after.misses, after.fill_bytes),
        (before.misses, before.fill_bytes),
        "the hot file was pushed out by a set prefetch and scan"
    );
    m.unmount().expect("unmount");
}

#[test]
fn a_set_larger_than_the_pool_leaves_the_hot_file_in_the_arena() {
    hot_file_survives_a_set_larger_than_the_pool(None);
}

#[test]
fn a_set_larger_than_the_pool_leaves_the_hot_file_in_the_store() {
    let store = store_dir();
    hot_file_survives_a_set_larger_than_the_pool(Some(store.path()));
}

/// Opened by an unprivileged user: a member that user cannot read and a symlinked member are not
/// prefetched; the readable one is.
#[test]
fn unreadable_and_symlinked_members_are_skipped() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let _turn = serial();
    let dirs = Dirs::new();
    let len = 8usize << 20;
    let outside = dirs.root.path().join("outside.bin");
    write_file(&outside, &pattern(7, len));
    for k in [1, 2, 3] {
        write_file(&dirs.src.join(shard(k, 4)), &pattern(u64::from(k), len));
    }
    std::os::unix::fs::symlink(&outside, dirs.src.join(shard(4, 4))).expect("symlink");
    fs::set_permissions(
        dirs.src.join(shard(3, 4)),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    for p in [dirs.root.path(), &dirs.src, &dirs.mnt] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
    settle();
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let mut c = config(&dirs.src, &dirs.mnt, 256 << 20, None);
    c.allow_other = true;
    let m = Mounted::spawn(c).expect("mount");
    let status = std::process::Command::new("head")
        .args(["-c", "1048576"])
        .arg(dirs.mnt.join(shard(1, 4)))
        .stdout(std::process::Stdio::null())
        .uid(65534)
        .gid(65534)
        .status()
        .expect("run head as nobody");
    assert!(status.success(), "nobody reads shard 1: {status}");
    let s = wait_for(&m, "set prefetch done", |s| s.sets_done >= 1);
    assert_eq!(
        s.set_members_queued, 1,
        "only shard 2 is readable by nobody: {s:?}"
    );
    assert!(s.set_prefetch_bytes >= len as u64, "{s:?}");
    m.unmount().expect("unmount");
}

/// A safetensors index naming unnumbered files, and an ollama manifest listing blobs.
#[test]
fn safetensors_indexes_and_ollama_manifests_are_sets() {
    let _turn = serial();
    let dirs = Dirs::new();
    let len = 6usize << 20;
    let st = dirs.src.join("st");
    fs::create_dir(&st).expect("mkdir");
    write_file(&st.join("text.safetensors"), &pattern(1, len));
    write_file(&st.join("vision.safetensors"), &pattern(2, len));
    write_file(
        &st.join("model.safetensors.index.json"),
        br#"{"metadata":{},"weight_map":{"a":"text.safetensors","b":"vision.safetensors","c":"../escape.safetensors"}}"#,
    );
    let models = dirs.src.join("models");
    let manifest_dir = models.join("manifests/registry.ollama.ai/library/tiny");
    fs::create_dir_all(&manifest_dir).expect("mkdir manifests");
    fs::create_dir_all(models.join("blobs")).expect("mkdir blobs");
    let digest = |c: char| c.to_string().repeat(64);
    let blob = |c: char| models.join("blobs").join(format!("sha256-{}", digest(c)));
    write_file(&blob('c'), br#"{"model_format":"gguf"}"#);
    write_file(&blob('a'), &pattern(3, len));
    write_file(&blob('b'), b"{{ .Prompt }}");
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{}","size":1}},"layers":[
        {{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{}","size":1}},
        {{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:{}","size":1}}]}}"#,
        digest('c'),
        digest('a'),
        digest('b')
    );
    write_file(&manifest_dir.join("latest"), manifest.as_bytes());
    settle();
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let m = Mounted::spawn(config(&dirs.src, &dirs.mnt, 256 << 20, None)).expect("mount");
    peek(&dirs.mnt.join("st/text.safetensors"));
    let s = wait_for(&m, "safetensors set", |s| s.sets_done >= 1);
    assert_eq!((s.sets_found, s.set_members_queued), (1, 1), "{s:?}");
    assert!(s.set_prefetch_bytes >= len as u64, "{s:?}");
    // ollama opens the config blob first; the model layer and the template follow.
    read_or_panic(
        &dirs
            .mnt
            .join(format!("models/blobs/sha256-{}", digest('c'))),
    );
    let s = wait_for(&m, "ollama set", |s| s.sets_done >= 2);
    assert_eq!((s.sets_found, s.set_members_queued), (2, 3), "{s:?}");
    assert!(s.set_prefetch_bytes >= 2 * len as u64, "{s:?}");
    m.unmount().expect("unmount");
}

#[test]
fn prefetch_sets_off_prefetches_nothing() {
    let _turn = serial();
    let dirs = Dirs::new();
    make_shards(&dirs.src, 3, 4 << 20);
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let mut c = config(&dirs.src, &dirs.mnt, 128 << 20, None);
    c.prefetch_sets = false;
    let m = Mounted::spawn(c).expect("mount");
    peek(&dirs.mnt.join(shard(1, 3)));
    thread::sleep(Duration::from_millis(500));
    let s = m.stats();
    assert_eq!(
        (s.sets_found, s.set_members_queued, s.set_prefetch_bytes),
        (0, 0, 0),
        "{s:?}"
    );
    m.unmount().expect("unmount");
}

/// Part 4: the daemon's log says what a set prefetch did (found, members, bytes, time).
#[test]
fn the_log_says_what_a_set_prefetch_did() {
    let _turn = serial();
    let dirs = Dirs::new();
    make_shards(&dirs.src, 3, 4 << 20);
    let mut d = Daemon::start(&dirs.src, &dirs.mnt, &["--pool", "128M", "--store", "off"]);
    peek(&dirs.mnt.join(shard(1, 3)));
    let deadline = Instant::now() + WAIT;
    while !d.stderr().contains("SET x-*-of-00003.gguf done") {
        assert!(
            Instant::now() < deadline,
            "no SET done line:\n{}",
            d.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(1500)); // one heartbeat
    let log = d.stderr();
    assert!(
        log.contains("SET x-*-of-00003.gguf: 3 members, 8 MiB queued, 0 skipped"),
        "{log}"
    );
    assert!(
        log.contains("SET x-*-of-00003.gguf done: 2 members, 8 MiB in "),
        "{log}"
    );
    assert!(log.contains("GB/s)"), "{log}");
    assert!(
        log.contains("SETS 1 found, 2 member(s) queued, 8 MiB prefetched"),
        "{log}"
    );
    d.signal(libc::SIGTERM);
    assert!(
        d.finish(Duration::from_secs(60))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn a_bad_prefetch_sets_value_is_one_line() {
    let out = run_cli(
        &[
            "mount".as_ref(),
            "/nonexistent-src".as_ref(),
            "/nonexistent-mnt".as_ref(),
            "--prefetch-sets".as_ref(),
            "maybe".as_ref(),
        ],
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("expected on or off"), "{err}");
}
