//! The S3 object-store source (`nitro-uring mount s3://BUCKET/PREFIX MNT --endpoint ...`) on
//! real mounts, against a real S3-protocol server: moto's server, a separate process on
//! 127.0.0.1 that the tests start, kill and restart (tests/support/s3_server.rs). The daemon is
//! never given a mock: everything it does goes over HTTP to that server, signed, and the server
//! checks the signatures where a test turns authentication on.
//!
//! What is checked, and why:
//! - A tree of objects (nested "directories", an empty object, sizes that are not multiples of
//!   4 KiB, names with spaces and non-ASCII, and a 1 GiB multipart object) reads byte-exact,
//!   sequentially and at random offsets: the ranged GETs, their stitching and the end of file are
//!   right. The bytes are `pattern()` bytes generated per range, so 1 GiB is never held whole.
//! - The tree through the mount (names, file/dir types, sizes, modes 0444/0555, mtimes) is the
//!   bucket's listing under the prefix, and nothing outside it; a key added or deleted in the
//!   bucket shows in the directory after `--list-ttl`.
//! - An object overwritten in the bucket (other size, other bytes) is the new version on the next
//!   open (close-to-open by ETag); a handle opened before reads only its own version's bytes or
//!   gets EIO, never a mix of the two.
//! - The server going away mid-read, hung (SIGSTOP) and then killed: reads that need the network
//!   fail with EIO within a bound set by `--s3-retries`/`--s3-timeout`, cached bytes and an object
//!   read whole before stay readable (open included); when the server answers again (after a
//!   restart on the same port, with the same bytes re-uploaded: same ETags) the same mount reads
//!   the big object byte-exact again.
//! - `--store DIR` on a tmpfs: an object read whole is kept, and the next mount with the same store
//!   reads it without fetching it again (fill counters of `stats --json`, and the server's own
//!   request log: no GET of it).
//! - A mount that cannot work fails before mounting, with one line on stderr that names the
//!   problem and a non-zero exit, leaving the mountpoint an empty plain directory: a missing
//!   bucket, an endpoint where nothing listens, one that never answers, an unknown access key and
//!   a wrong secret (moto with authentication on). Credentials and endpoint come from the
//!   environment, a shared credentials file with a profile, or ~/.aws/credentials.
//!
//! The tests run one at a time (`serial()`, a lock shared with the other S3 test binaries, see
//! tests/support/s3_mount.rs): each has its own server, and the 1 GiB uploads make moto's memory
//! peak at several GiB.

mod common;
#[path = "support/s3_mount.rs"]
mod s3_mount;
#[path = "support/s3_server.rs"]
mod s3_server;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use s3_mount::*;
use s3_server::*;

const PREFIX: &str = "models";

/// Watchdog for a daemon reading the 1 GiB object (several passes over it, at moto's speed).
const BIG_WATCHDOG: Duration = Duration::from_secs(900);
/// Watchdog for the other daemons.
const WATCHDOG: Duration = Duration::from_secs(300);

/// With `--s3-retries 1 --s3-timeout 5`, how long a read or an open that needs an absent server
/// may take to fail: two tries of at most 5 s plus backoff, and slack for a loaded machine. A
/// daemon that uses a client's default retry policy (minutes) or waits forever fails this.
const FAIL_BOUND: Duration = Duration::from_secs(45);
const FAIL_ARGS: [&str; 4] = ["--s3-retries", "1", "--s3-timeout", "5"];

// ---------------------------------------------------------------------------------------------
// the tree

const TREE: &[Obj] = &[
    Obj {
        rel: "config.json",
        seed: 1,
        len: 1234,
    },
    Obj {
        rel: "empty",
        seed: 2,
        len: 0,
    },
    Obj {
        rel: "weights/shard 1 of 2.bin",
        seed: 3,
        len: 3 * MIB + 17,
    },
    Obj {
        rel: "weights/shard 2 of 2.bin",
        seed: 4,
        len: 5 * MIB - 3,
    },
    Obj {
        rel: "weights/nested/deeper/tiny.txt",
        seed: 5,
        len: 1,
    },
    Obj {
        rel: "weights/nested/odd.bin",
        seed: 6,
        len: 123_457,
    },
    Obj {
        rel: "my dir/read me.txt",
        seed: 7,
        len: 4097,
    },
    Obj {
        rel: "ünïcödé.txt",
        seed: 8,
        len: 8191,
    },
    // characters a URL or object_store's `Path::from` would escape: the key is what it is
    Obj {
        rel: "weights/a+b [1] #2 %41 ~.bin",
        seed: 9,
        len: 65_537,
    },
];

/// Keys that must not show under the mount of `PREFIX`.
const OUTSIDE: &[&str] = &["outside/x.bin", "models-sibling.bin", "modelsx/y.bin"];

const BIG: Obj = Obj {
    rel: "big.bin",
    seed: 99,
    len: GIB,
};
/// Part size of the big object's multipart upload (the same on every upload, so the same ETag).
const BIG_PART: usize = 16 * MIB as usize;

fn key(rel: &str) -> String {
    format!("{PREFIX}/{rel}")
}

fn upload_tree(c: &S3Client) {
    for o in TREE {
        c.put(&key(o.rel), pattern(o.seed, o.len as usize));
    }
    for k in OUTSIDE {
        c.put(k, b"not under the prefix".to_vec());
    }
}

fn upload_big(c: &S3Client) -> String {
    let t = Instant::now();
    let etag = c.put_pattern_multipart(&key(BIG.rel), BIG.seed, BIG.len, BIG_PART);
    eprintln!(
        "uploaded {} (1 GiB, multipart) in {:?}",
        BIG.rel,
        t.elapsed()
    );
    etag
}

#[test]
fn a_tree_and_a_1gib_multipart_object_read_byte_exact() {
    let _serial = serial();
    let dirs = Dirs::new();
    let (server, c) = server_with_bucket();
    upload_tree(&c);
    upload_big(&c);
    let _d = mount_s3(
        &server,
        &dirs,
        PREFIX,
        &["--pool", "2G", "--store", "none"],
        BIG_WATCHDOG,
    );

    // Random reads first, on a cold cache: every one needs ranged GETs.
    let big_path = dirs.mnt.join(BIG.rel);
    let f = File::open(&big_path).expect("open big.bin");
    assert_eq!(f.metadata().expect("fstat").len(), BIG.len, "fstat size");
    let mut rng = Rng::new(0x5eed);
    let t = Instant::now();
    for i in 0..200 {
        let off = rng.below(BIG.len);
        let len = 1 + rng.below(4 * MIB) as usize;
        check_pread(&f, BIG, off, len, &format!("random read {i}"));
    }
    for (off, len) in [
        (0, 1),
        (BIG.len - 1, 10),
        (BIG.len - 4096, 4096),
        (BIG.len, 1),
        (BIG.len + MIB, 7),
        (BIG_PART as u64 - 3, 6), // across a part boundary of the upload
    ] {
        check_pread(&f, BIG, off, len as usize, "edge read");
    }
    eprintln!("random reads of big.bin: {:?}", t.elapsed());

    let t = Instant::now();
    check_sequential(&big_path, BIG);
    eprintln!("sequential read of big.bin: {:?}", t.elapsed());

    for o in TREE {
        let p = dirs.mnt.join(o.rel);
        check_sequential(&p, *o);
        let f = File::open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        for _ in 0..20 {
            let off = rng.below(o.len + 10);
            let len = 1 + rng.below(o.len.max(1) + 100) as usize;
            check_pread(&f, *o, off, len, o.rel);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the listing

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { size: u64 },
}

/// The tree under `root`: relative path -> node, with every file's mtime (seconds).
fn walk(root: &Path) -> (BTreeMap<String, Node>, BTreeMap<String, i64>) {
    let mut nodes = BTreeMap::new();
    let mut mtimes = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("readdir {}: {}", dir.display(), io_context(&e)));
        for e in rd {
            let e = e.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
            let r = rel.join(e.file_name());
            let name = r.to_str().expect("utf-8 name").to_string();
            let md = fs::symlink_metadata(e.path())
                .unwrap_or_else(|err| panic!("lstat {name}: {}", io_context(&err)));
            let ft_entry = e.file_type().expect("d_type");
            let perm = md.mode() & 0o7777;
            if md.is_dir() {
                assert!(ft_entry.is_dir(), "{name}: readdir type vs lstat");
                assert_eq!(perm, 0o555, "{name}: directory mode {perm:o}");
                nodes.insert(name, Node::Dir);
                stack.push(r);
            } else {
                assert!(md.is_file(), "{name}: neither file nor directory: {md:?}");
                assert!(ft_entry.is_file(), "{name}: readdir type vs lstat");
                assert_eq!(perm, 0o444, "{name}: file mode {perm:o}");
                mtimes.insert(name.clone(), md.mtime());
                nodes.insert(name, Node::File { size: md.len() });
            }
        }
    }
    (nodes, mtimes)
}

/// What the mount of `prefix` should show, from the bucket's own listing.
fn expected_tree(c: &S3Client, prefix: &str) -> (BTreeMap<String, Node>, BTreeMap<String, i64>) {
    let mut nodes = BTreeMap::new();
    let mut mtimes = BTreeMap::new();
    let strip = format!("{prefix}/");
    for o in c.list(Some(prefix)) {
        let rel = o
            .key
            .strip_prefix(&strip)
            .unwrap_or_else(|| panic!("listed {} under {prefix}", o.key));
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 1..parts.len() {
            nodes.insert(parts[..i].join("/"), Node::Dir);
        }
        nodes.insert(rel.to_string(), Node::File { size: o.size });
        mtimes.insert(rel.to_string(), o.mtime_s);
    }
    (nodes, mtimes)
}

#[test]
fn the_tree_through_the_mount_is_the_buckets_listing() {
    let _serial = serial();
    let dirs = Dirs::new();
    let (server, c) = server_with_bucket();
    upload_tree(&c);
    c.put(&key("weights/large.bin"), pattern(11, 9 * MIB as usize + 1));
    let (want, want_mtimes) = expected_tree(&c, PREFIX);
    // the test's own expectation is sane: the tree is there, nothing from outside the prefix
    assert!(want.contains_key("my dir/read me.txt") && want.contains_key("weights/nested/deeper"));
    assert!(
        want.keys()
            .all(|k| !k.contains("sibling") && !k.contains("x.bin"))
    );
    assert_eq!(want.get("empty"), Some(&Node::File { size: 0 }));

    let _d = mount_s3(&server, &dirs, PREFIX, &["--pool", "256M"], WATCHDOG);
    let (got, got_mtimes) = walk(&dirs.mnt);
    assert_eq!(got, want, "the mount's tree vs the bucket's listing");
    // every path looked up by its name (not through readdir), and every file read whole
    for (name, node) in &want {
        let p = dirs.mnt.join(name);
        let md = fs::metadata(&p)
            .unwrap_or_else(|e| panic!("stat {name} by its path: {}", io_context(&e)));
        match node {
            Node::Dir => assert!(md.is_dir(), "{name}: not a directory by its path"),
            Node::File { size } => {
                assert_eq!(md.len(), *size, "{name}: size by its path");
                let got =
                    fs::read(&p).unwrap_or_else(|e| panic!("read {name}: {}", io_context(&e)));
                let want_bytes = if *size == 0 {
                    Vec::new()
                } else {
                    c.get_range(&key(name), 0..*size)
                };
                assert_bytes_eq(&got, &want_bytes, name);
            }
        }
    }
    for (name, m) in &want_mtimes {
        let g = got_mtimes[name];
        assert!((g - m).abs() <= 1, "{name}: mtime {g} vs LastModified {m}");
    }
    // and the whole bucket at its root, prefix included as a directory
    drop(_d);
    let _d = mount_s3(&server, &dirs, "", &["--pool", "256M"], WATCHDOG);
    let (got, _) = walk(&dirs.mnt);
    let mut want_all = BTreeMap::new();
    for o in c.list(None) {
        let parts: Vec<&str> = o.key.split('/').collect();
        for i in 1..parts.len() {
            want_all.insert(parts[..i].join("/"), Node::Dir);
        }
        want_all.insert(o.key.clone(), Node::File { size: o.size });
    }
    assert_eq!(got, want_all, "the whole bucket through the mount");
}

/// A key added to the bucket shows in its directory, and a deleted one goes, once the listing
/// is older than `--list-ttl`; the new object reads exact.
#[test]
fn keys_added_and_deleted_in_the_bucket_show_after_the_list_ttl() {
    let _serial = serial();
    let dirs = Dirs::new();
    let (server, c) = server_with_bucket();
    upload_tree(&c);
    let _d = mount_s3(
        &server,
        &dirs,
        PREFIX,
        &["--pool", "256M", "--list-ttl", "2"],
        WATCHDOG,
    );
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("readdir {}: {}", dir.display(), io_context(&e)))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert!(names(&dirs.mnt).contains(&"config.json".to_string()));
    let added = Obj {
        rel: "weights/added later.bin",
        seed: 21,
        len: 2 * MIB + 5,
    };
    c.put(&key(added.rel), pattern(added.seed, added.len as usize));
    c.put(&key("fresh/dir/x.bin"), pattern(22, 100));
    c.delete(&key("config.json"));
    let t = Instant::now();
    let limit = Duration::from_secs(2 + 20);
    loop {
        let top = names(&dirs.mnt);
        let weights = names(&dirs.mnt.join("weights"));
        if !top.contains(&"config.json".to_string())
            && top.contains(&"fresh".to_string())
            && weights.contains(&"added later.bin".to_string())
        {
            break;
        }
        assert!(
            t.elapsed() < limit,
            "after {limit:?} with --list-ttl 2: top {top:?}, weights {weights:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!("listing changes showed after {:?}", t.elapsed());
    check_sequential(&dirs.mnt.join(added.rel), added);
    assert!(dirs.mnt.join("fresh/dir").is_dir());
    assert_eq!(
        fs::metadata(dirs.mnt.join("weights/added later.bin"))
            .expect("stat added")
            .len(),
        added.len
    );
}

/// The kernel sends reads as large as the connection's max_pages allows (`fs.fuse.max_pages_limit`,
/// at least 256 pages: 1 MiB), which is larger than a small `--chunk`. Every read must still be
/// served whole and byte-exact on a cold cache, through the arena (`--store off`): the daemon
/// must bound its requests to what its buffers hold, or a miss overruns them.
#[test]
fn reads_larger_than_the_chunk_are_served_on_a_cold_cache() {
    let _serial = serial();
    let dirs = Dirs::new();
    let (server, c) = server_with_bucket();
    let o = Obj {
        rel: "r.bin",
        seed: 71,
        len: 12 * MIB + 4321,
    };
    c.put(&key(o.rel), pattern(o.seed, o.len as usize));
    let mut d = mount_s3(
        &server,
        &dirs,
        PREFIX,
        &["--chunk", "64KiB", "--pool", "64M", "--store", "off"],
        WATCHDOG,
    );
    let f = Arc::new(File::open(dirs.mnt.join(o.rel)).expect("open r.bin"));
    // cold, at offsets nothing read ahead of: 1 MiB and 4 MiB reads, aligned and not
    for (off, len) in [
        (0, MIB),
        (5 * MIB + 12_345, 4 * MIB),
        (3 * MIB, MIB),
        (10 * MIB, 2 * MIB + 4321),
    ] {
        let (got, _) = timed_pread(&f, off, len as usize);
        let got = got.unwrap_or_else(|e| {
            panic!(
                "cold pread {len} at {off}: {}; daemon {}, stderr:\n{}",
                io_context(&e),
                match d.try_wait() {
                    Some(st) => format!("exited: {st}"),
                    None => "alive".into(),
                },
                d.stderr()
            )
        });
        let want = (o.len - off).min(len) as usize;
        assert_eq!(got.len(), want, "cold pread {len} at {off}: length");
        assert_bytes_eq(
            &got,
            &pattern_at(o.seed, off, want),
            &format!("cold pread {len} at {off}"),
        );
    }
    check_sequential(&dirs.mnt.join(o.rel), o);
    d.assert_healthy("after reads larger than the chunk");
}

/// Waits until the mount's store holds `n` complete files.
fn wait_stored(mnt: &Path, n: u64) {
    let t = Instant::now();
    loop {
        let s = stats(mnt);
        if num(&s, "store_complete_files") >= n {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the store never held {n} file(s): {s}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A whole-object fill writes chunk after chunk into one store file, so its GETs are merged into
/// parts of `--s3-part-size` (8 MiB by default), not one GET per 1 MiB chunk; with
/// `--s3-part-size 1MiB` each chunk is its own GET. Bytes stay exact either way.
#[test]
fn a_whole_object_fill_asks_for_parts_not_chunks() {
    let _serial = serial();
    let (server, c) = server_with_bucket();
    let o = Obj {
        rel: "p.bin",
        seed: 81,
        len: 48 * MIB + 4321,
    };
    c.put(&key(o.rel), pattern(o.seed, o.len as usize));
    let mut seen = (0usize, 0u64);
    for (part, most, least) in [(None, 6 + 4, 0), (Some("1MiB"), usize::MAX, 49)] {
        let dirs = Dirs::new();
        let mut args = vec!["--pool", "256M", "--store", "none"];
        if let Some(p) = part {
            args.extend(["--s3-part-size", p]);
        }
        let mut d = mount_s3(&server, &dirs, PREFIX, &args, WATCHDOG);
        check_sequential(&dirs.mnt.join(o.rel), o);
        wait_stored(&dirs.mnt, 1);
        // The store's file, read through passthrough, is the object too.
        check_sequential(&dirs.mnt.join(o.rel), o);
        thread::sleep(Duration::from_millis(500)); // the server logs a request after answering
        let all = object_gets(&server, &key(o.rel), o.len);
        let (gets, bytes) = (all.0 - seen.0, all.1 - seen.1);
        seen = all;
        eprintln!("--s3-part-size {part:?}: {gets} GETs of {bytes} bytes");
        assert!(
            bytes >= o.len && bytes < o.len + o.len / 4,
            "--s3-part-size {part:?}: GOT {bytes} bytes for {} ({gets} GETs)",
            o.len
        );
        assert!(
            gets <= most && gets >= least,
            "--s3-part-size {part:?}: {gets} GETs for a {} byte object; log:\n{}",
            o.len,
            server.log_tail(80)
        );
        d.assert_healthy("after a whole-object fill");
    }
}

// ---------------------------------------------------------------------------------------------
// overwrites

/// Reads `f` from offset 0 to EOF in 256 KiB preads. The bytes must be a prefix of `old`; an
/// error must be EIO. Returns the bytes and whether it ended in EIO.
fn read_own_version(f: &File, old: &[u8], limit: usize, what: &str) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 * KIB as usize];
    loop {
        match f.read_at(&mut buf, got.len() as u64) {
            Ok(0) => return (got, false),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                let common = got.len().min(old.len());
                if got.len() > old.len() || got[..common] != old[..common] {
                    panic!(
                        "{what}: a handle opened before the overwrite read other bytes than its \
                         version's: {}",
                        first_diff(&got[..common.min(got.len())], &old[..common])
                    );
                }
                assert!(got.len() <= limit, "{what}: read on past {limit} bytes");
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                assert_eq!(
                    errno(&e),
                    libc::EIO,
                    "{what}: error other than EIO at {}: {}",
                    got.len(),
                    io_context(&e)
                );
                return (got, true);
            }
        }
    }
}

/// A new open of an overwritten object must see the new version, whole: size by fstat, bytes.
#[track_caller]
fn check_new_version(path: &Path, o: Obj) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    assert_eq!(
        f.metadata().expect("fstat").len(),
        o.len,
        "{}: fstat size after the overwrite",
        path.display()
    );
    check_sequential(path, o);
    // and pread through the handle opened after the overwrite
    check_pread(&f, o, 0, o.len as usize + 100, "new handle");
}

#[test]
fn an_overwritten_object_is_the_new_version_on_the_next_open() {
    let _serial = serial();
    let dirs = Dirs::new();
    let (server, c) = server_with_bucket();
    let a_old = Obj {
        rel: "a.bin",
        seed: 31,
        len: 3 * MIB + 5,
    };
    let a_new = Obj {
        rel: "a.bin",
        seed: 32,
        len: 5 * MIB + 77,
    };
    let b_old = Obj {
        rel: "b.bin",
        seed: 33,
        len: 6 * MIB + 1,
    };
    let b_new = Obj {
        rel: "b.bin",
        seed: 34,
        len: MIB + 3,
    };
    // bigger than the readahead, so its tail is not fetched by reading its head
    let c_old = Obj {
        rel: "c.bin",
        seed: 35,
        len: 48 * MIB,
    };
    let c_new = Obj {
        rel: "c.bin",
        seed: 36,
        len: 48 * MIB,
    };
    for o in [a_old, b_old, c_old] {
        c.put(&key(o.rel), pattern(o.seed, o.len as usize));
    }
    let etag_a = c.head(&key("a.bin")).etag;
    // --store off: only what is read is cached, so the old handle of c.bin has uncached parts
    let _d = mount_s3(
        &server,
        &dirs,
        PREFIX,
        &["--pool", "512M", "--store", "off"],
        WATCHDOG,
    );
    let pa = dirs.mnt.join("a.bin");
    let pb = dirs.mnt.join("b.bin");
    let pc = dirs.mnt.join("c.bin");
    check_sequential(&pa, a_old);
    check_sequential(&pb, b_old);
    let ha = File::open(&pa).expect("open a.bin (old)");
    let a_old_bytes = pattern(a_old.seed, a_old.len as usize);
    check_pread(
        &ha,
        a_old,
        0,
        a_old.len as usize,
        "old handle of a.bin, before",
    );
    let hc = File::open(&pc).expect("open c.bin (old)");
    check_pread(&hc, c_old, 0, MIB as usize, "old handle of c.bin, before");

    for o in [a_new, b_new, c_new] {
        c.put(&key(o.rel), pattern(o.seed, o.len as usize));
    }
    assert_ne!(
        c.head(&key("a.bin")).etag,
        etag_a,
        "the overwrite changed the ETag"
    );

    // A handle from before that read its whole version keeps it: every byte is cached (the pool
    // is far larger than all these objects), so nothing needs the server. Before any new open,
    // and after the new version was opened and read.
    let old_handle_reads = |when: &str| {
        let what = format!("old handle of a.bin, fully read before the overwrite, {when}");
        let (got, eio) = read_own_version(&ha, &a_old_bytes, a_old.len as usize, &what);
        assert!(
            !eio && got.len() == a_old_bytes.len(),
            "{what}: {} of its {} bytes, then {}",
            got.len(),
            a_old_bytes.len(),
            if eio { "EIO" } else { "EOF" }
        );
    };
    old_handle_reads("before the next open");

    check_new_version(&pa, a_new);
    check_new_version(&pb, b_new);
    check_new_version(&pc, c_new);

    old_handle_reads("after the new version was opened");
    // A part the old handle never read: its version's bytes (if the server still had them) or
    // EIO, never the new version's.
    let c_old_tail = {
        let mut v = vec![0u8; MIB as usize];
        match pread_full(&hc, &mut v, 40 * MIB) {
            Ok(n) => {
                assert_eq!(n, v.len(), "old handle of c.bin: short read at 40 MiB");
                Some(v)
            }
            Err(e) => {
                assert_eq!(
                    errno(&e),
                    libc::EIO,
                    "old handle of c.bin: {}",
                    io_context(&e)
                );
                None
            }
        }
    };
    eprintln!(
        "old handle of c.bin at 40 MiB after the overwrite: {}",
        if c_old_tail.is_some() {
            "old bytes"
        } else {
            "EIO"
        }
    );
    if let Some(v) = c_old_tail {
        assert_bytes_eq(
            &v,
            &pattern_at(c_old.seed, 40 * MIB, MIB as usize),
            "old handle of c.bin at 40 MiB (never the new version's bytes)",
        );
    }
    // a fresh open still sees the new version after all that
    check_new_version(&pa, a_new);
}

// ---------------------------------------------------------------------------------------------
// the server going away

/// Runs a pread of `len` at `off` on a helper thread (bounded by `FAIL_BOUND` + 60 s so a hang
/// fails the test); returns the result and how long it took.
fn timed_pread(f: &Arc<File>, off: u64, len: usize) -> (io::Result<Vec<u8>>, Duration) {
    let f = f.clone();
    within(
        FAIL_BOUND + Duration::from_secs(60),
        &format!("pread {len} at {off}"),
        move || {
            let t = Instant::now();
            let mut buf = vec![0u8; len];
            let r = pread_full(&f, &mut buf, off).map(|n| {
                buf.truncate(n);
                buf
            });
            (r, t.elapsed())
        },
    )
}

/// A pread that needs the network while the server is away: EIO within `FAIL_BOUND`.
#[track_caller]
fn expect_eio(f: &Arc<File>, off: u64, len: usize, when: &str) {
    let (r, took) = timed_pread(f, off, len);
    match r {
        Ok(b) => panic!(
            "{when}: pread {len} at {off} returned {} bytes, want EIO",
            b.len()
        ),
        Err(e) => assert_eq!(
            errno(&e),
            libc::EIO,
            "{when}: pread {len} at {off}: {}",
            io_context(&e)
        ),
    }
    assert!(
        took <= FAIL_BOUND,
        "{when}: EIO after {took:?}, more than {FAIL_BOUND:?} with {FAIL_ARGS:?}"
    );
    eprintln!("{when}: EIO at {off} after {took:?}");
}

/// Opens and reads `o` whole through the mount (bounded), byte-exact.
#[track_caller]
fn expect_whole(mnt: &Path, o: Obj, when: &str) {
    let p = mnt.join(o.rel);
    let t = Instant::now();
    let got = within(
        FAIL_BOUND + Duration::from_secs(60),
        &format!("{when}: open+read {}", o.rel),
        move || fs::read(&p),
    )
    .unwrap_or_else(|e| panic!("{when}: open+read {}: {}", o.rel, io_context(&e)));
    assert_bytes_eq(&got, &pattern(o.seed, o.len as usize), when);
    assert!(
        t.elapsed() <= FAIL_BOUND,
        "{when}: open+read of {} took {:?}",
        o.rel,
        t.elapsed()
    );
}

#[test]
fn reads_fail_with_eio_while_the_server_is_away_and_work_again_when_it_returns() {
    let _serial = serial();
    let dirs = Dirs::new();
    let (mut server, c) = server_with_bucket();
    let small = Obj {
        rel: "small.bin",
        seed: 41,
        len: 2 * MIB + 3,
    };
    c.put(&key(small.rel), pattern(small.seed, small.len as usize));
    let small_etag = c.head(&key(small.rel)).etag;
    let big_etag = upload_big(&c);
    let mut args = vec!["--pool", "512M", "--store", "off"];
    args.extend_from_slice(&FAIL_ARGS);
    let mut d = mount_s3(&server, &dirs, PREFIX, &args, BIG_WATCHDOG);

    expect_whole(&dirs.mnt, small, "server up");
    let big = Arc::new(File::open(dirs.mnt.join(BIG.rel)).expect("open big.bin"));
    let head = 32 * MIB;
    check_pread(&big, BIG, 0, head as usize, "head of big.bin, server up");

    // 1. Hung: the port accepts connections, nothing answers (--s3-timeout is what ends a try).
    server.pause();
    expect_eio(&big, 700 * MIB, MIB as usize, "server hung");
    check_pread(
        &big,
        BIG,
        MIB,
        MIB as usize,
        "cached part of big.bin, server hung",
    );
    expect_whole(&dirs.mnt, small, "server hung");
    server.resume();
    // the same range that failed, now fetched
    let t = Instant::now();
    loop {
        match timed_pread(&big, 700 * MIB, MIB as usize).0 {
            Ok(b) => {
                assert_bytes_eq(
                    &b,
                    &pattern_at(BIG.seed, 700 * MIB, MIB as usize),
                    "the range that failed, after the server came back",
                );
                break;
            }
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(30),
                "reads still fail 30 s after the server answers again: {}",
                io_context(&e)
            ),
        }
        thread::sleep(Duration::from_millis(500));
    }
    d.assert_healthy("after the hung server came back");

    // 2. Killed: connections refused.
    server.stop();
    expect_eio(&big, BIG.len - 3 * MIB, MIB as usize, "server down");
    expect_eio(&big, 512 * MIB, 4096, "server down");
    check_pread(
        &big,
        BIG,
        0,
        head as usize,
        "cached part of big.bin, server down",
    );
    check_pread(
        &big,
        BIG,
        700 * MIB,
        MIB as usize,
        "range fetched before, server down",
    );
    expect_whole(&dirs.mnt, small, "server down");
    d.assert_healthy("with the server down");

    // 3. Back on the same port, same bytes (same ETags: the same versions).
    server.restart();
    server.create_bucket(BUCKET);
    c.put(&key(small.rel), pattern(small.seed, small.len as usize));
    assert_eq!(
        c.head(&key(small.rel)).etag,
        small_etag,
        "re-uploaded small.bin's ETag"
    );
    assert_eq!(upload_big(&c), big_etag, "re-uploaded big.bin's ETag");
    let t = Instant::now();
    loop {
        match timed_pread(&big, BIG.len - 3 * MIB, MIB as usize).0 {
            Ok(_) => break,
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(30),
                "reads still fail 30 s after the server is back: {}",
                io_context(&e)
            ),
        }
        thread::sleep(Duration::from_millis(500));
    }
    eprintln!("reads work again {:?} after the re-upload", t.elapsed());
    check_pread(&big, BIG, BIG.len - 3 * MIB, MIB as usize, "server back");
    check_pread(&big, BIG, 512 * MIB, 4096, "server back");
    let mut rng = Rng::new(7);
    for i in 0..30 {
        let off = rng.below(BIG.len);
        check_pread(
            &big,
            BIG,
            off,
            1 + rng.below(2 * MIB) as usize,
            &format!("server back {i}"),
        );
    }
    let fresh = File::open(dirs.mnt.join(BIG.rel)).expect("open big.bin again");
    for i in 0..10 {
        let off = rng.below(BIG.len);
        check_pread(
            &fresh,
            BIG,
            off,
            MIB as usize,
            &format!("new handle, server back {i}"),
        );
    }
    expect_whole(&dirs.mnt, small, "server back");
    d.assert_healthy("at the end");
}

// ---------------------------------------------------------------------------------------------
// the store across restarts

const TMPFS_MAGIC: i64 = 0x0102_1994;

fn is_tmpfs(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == TMPFS_MAGIC }
}

#[test]
fn a_store_on_tmpfs_survives_a_restart_without_fetching_again() {
    let _serial = serial();
    let dirs = Dirs::new();
    // the store must be RAM: /dev/shm if it is a tmpfs, else a tmpfs of our own
    let shm = Path::new("/dev/shm");
    let (_in_shm, _own_tmpfs, store) = if is_tmpfs(shm) {
        let t = tempfile::Builder::new()
            .prefix("nitro-s3-store-")
            .tempdir_in(shm)
            .expect("tempdir in /dev/shm");
        let p = t.path().to_path_buf();
        (Some(t), None, p)
    } else {
        let p = dirs.root.path().join("store");
        fs::create_dir(&p).expect("mkdir store");
        (None, Some(Tmpfs::mount(&p)), p)
    };
    assert!(is_tmpfs(&store), "{} is not on a tmpfs", store.display());
    let (server, c) = server_with_bucket();
    let w = Obj {
        rel: "w.bin",
        seed: 51,
        len: 64 * MIB + 1234,
    };
    c.put(&key(w.rel), pattern(w.seed, w.len as usize));
    let store_arg = store.to_str().expect("utf-8").to_string();
    let args = ["--pool", "512M", "--store", store_arg.as_str()];

    let mut a = mount_s3(&server, &dirs, PREFIX, &args, WATCHDOG);
    check_sequential(&dirs.mnt.join(w.rel), w);
    wait_stored(&dirs.mnt, 1);
    let (gets_first, bytes_first) = object_gets(&server, &key(w.rel), w.len);
    assert!(
        bytes_first >= w.len,
        "the first mount GOT {bytes_first} bytes of w.bin in {gets_first} GETs? log:\n{}",
        server.log_tail(20)
    );
    a.signal(libc::SIGTERM);
    assert!(
        a.finish(Duration::from_secs(30)).is_some(),
        "the first daemon did not exit on SIGTERM; stderr:\n{}",
        a.stderr()
    );
    drop(a);
    assert!(
        !is_mounted(&dirs.mnt),
        "still mounted after the first daemon"
    );

    let b = mount_s3(&server, &dirs, PREFIX, &args, WATCHDOG);
    check_sequential(&dirs.mnt.join(w.rel), w);
    thread::sleep(Duration::from_millis(500)); // the server logs a request after answering it
    let s = stats(&dirs.mnt);
    let filled = num(&s, "fill_bytes");
    assert!(
        filled < w.len / 100,
        "the second mount filled {filled} bytes of a {} byte object it had in its store: {s}\nstderr:\n{}",
        w.len,
        b.stderr()
    );
    let (gets, bytes) = object_gets(&server, &key(w.rel), w.len);
    let (gets, bytes) = (gets - gets_first, bytes - bytes_first);
    eprintln!("second mount: {gets} GET(s) of w.bin, {bytes} bytes");
    assert!(
        bytes < w.len / 100,
        "the second mount GOT {bytes} bytes of w.bin ({gets} GETs) it had in its store; log:\n{}",
        server.log_tail(20)
    );
}

// ---------------------------------------------------------------------------------------------
// mounts that must fail

struct Failed {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// Runs `nitro-uring mount URL MNT ARGS` with `env` (after `hermetic_env`) and expects it to
/// exit without mounting within `limit`. A daemon that mounts is torn down and fails the test.
fn mount_must_fail(
    server: Option<&S3Server>,
    dirs: &Dirs,
    url: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> Failed {
    let home = home(dirs);
    let mut cmd = Command::new(bin());
    cmd.arg("mount").arg(url).arg(&dirs.mnt).args(args);
    hermetic_env(&mut cmd, &home, env);
    let t = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nitro-uring");
    let _unmount = UnmountOnDrop(dirs.mnt.clone());
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(out) => {
                let out = out.expect("wait for nitro-uring");
                return Failed {
                    code: out.status.code(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    took: t.elapsed(),
                };
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("waiting for nitro-uring: {e}"),
        }
        let mounted = is_mounted(&dirs.mnt);
        if mounted || t.elapsed() > limit {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            force_unmount(&dirs.mnt);
            let out = rx.recv_timeout(Duration::from_secs(10));
            let err = out
                .ok()
                .and_then(|o| o.ok())
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            panic!(
                "nitro-uring mount {} {args:?}: {} (stderr:\n{err})\nserver log:\n{}",
                url.display(),
                if mounted {
                    "mounted, but it must fail".to_string()
                } else {
                    format!("still running after {limit:?}")
                },
                server.map(|s| s.log_tail(15)).unwrap_or_default()
            );
        }
    }
}

/// Non-zero exit, one line on stderr (`nitro-uring: ...`) containing one of `any_of` (compared
/// in lower case), nothing mounted and the mountpoint still an empty plain directory.
#[track_caller]
fn assert_failed_cleanly(f: &Failed, dirs: &Dirs, what: &str, any_of: &[&str]) -> String {
    assert!(
        f.code.is_some_and(|c| c != 0),
        "{what}: exit {:?}; stderr:\n{}",
        f.code,
        f.stderr
    );
    let lines: Vec<&str> = f.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr is not one line:\n{}",
        f.stderr
    );
    let line = lines[0];
    assert!(line.starts_with("nitro-uring: "), "{what}: {line:?}");
    let lower = line.to_lowercase();
    assert!(
        any_of.iter().any(|w| lower.contains(&w.to_lowercase())),
        "{what}: {line:?} does not name the problem (none of {any_of:?})"
    );
    assert!(!is_mounted(&dirs.mnt), "{what}: left a mount");
    let md = fs::symlink_metadata(&dirs.mnt).expect("lstat mountpoint");
    assert!(
        md.is_dir(),
        "{what}: the mountpoint is no longer a directory"
    );
    assert!(
        probe_statfs(&dirs.mnt, Duration::from_secs(5)).is_err(),
        "{what}: a FUSE filesystem answers at the mountpoint"
    );
    let left: Vec<_> = fs::read_dir(&dirs.mnt)
        .expect("readdir mountpoint")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "{what}: the mountpoint is not empty: {left:?}"
    );
    eprintln!("{what}: {line} (after {:?})", f.took);
    line.to_string()
}

const NETWORK_WORDS: &[&str] = &[
    "unreachable",
    "connect",
    "refused",
    "timed out",
    "timeout",
    "network",
];
const CREDENTIAL_WORDS: &[&str] = &[
    "credential",
    "access key",
    "accesskey",
    "signature",
    "denied",
    "forbidden",
    "unauthorized",
    "authenticat",
    "403",
];

#[test]
fn a_missing_bucket_or_an_unreachable_endpoint_fails_the_mount_with_one_line() {
    let _serial = serial();
    let dirs = Dirs::new();
    let (server, c) = server_with_bucket();
    upload_tree(&c);
    let endpoint = server.endpoint();
    let base = |ep: &str| -> Vec<String> {
        let mut v: Vec<String> = ["--endpoint", ep, "--region", REGION, "--pool", "64M"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(FAIL_ARGS.iter().map(|s| s.to_string()));
        v
    };
    let limit = FAIL_BOUND + Duration::from_secs(30);

    // a bucket the server does not have
    let args = base(&endpoint);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = mount_must_fail(
        Some(&server),
        &dirs,
        &url("no-such-bucket-here", PREFIX),
        &args,
        &test_keys(),
        limit,
    );
    let line = assert_failed_cleanly(
        &f,
        &dirs,
        "missing bucket",
        &[
            "no such bucket",
            "nosuchbucket",
            "not found",
            "does not exist",
        ],
    );
    assert!(
        line.contains("no-such-bucket-here"),
        "missing bucket: {line:?} does not name it"
    );

    // nothing listens on the port
    let closed = free_port();
    let ep = format!("http://127.0.0.1:{closed}");
    let args = base(&ep);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = mount_must_fail(
        Some(&server),
        &dirs,
        &url(BUCKET, PREFIX),
        &args,
        &test_keys(),
        limit,
    );
    assert_failed_cleanly(&f, &dirs, "closed port", NETWORK_WORDS);

    // a listener that never answers (connections wait in its backlog)
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_port = hung.local_addr().expect("addr").port();
    let ep = format!("http://127.0.0.1:{hung_port}");
    let args = base(&ep);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = mount_must_fail(
        Some(&server),
        &dirs,
        &url(BUCKET, PREFIX),
        &args,
        &test_keys(),
        limit,
    );
    assert_failed_cleanly(&f, &dirs, "endpoint that never answers", NETWORK_WORDS);
    drop(hung);

    // and the same mount works against the real server (the failures above are not the flags')
    let args = base(&endpoint);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let home = home(&dirs);
    let _d = Daemon::start_with(&url(BUCKET, PREFIX), &dirs.mnt, &args, WATCHDOG, |cmd| {
        hermetic_env(cmd, &home, &test_keys())
    });
    check_sequential(&dirs.mnt.join(TREE[0].rel), TREE[0]);
}

#[test]
fn bad_credentials_fail_the_mount_and_good_ones_work_from_env_or_credentials_file() {
    let _serial = serial();
    let dirs = Dirs::new();
    let (server, c) = server_with_bucket();
    upload_tree(&c);
    let (id, secret) = server.enforce_auth();
    // moto now checks signatures: the test's own keys are refused, the IAM key works
    assert!(
        c.try_put(&key("x"), b"x".to_vec()).is_err(),
        "moto accepted an unknown access key after enforce_auth"
    );
    let good = S3Client::with_keys(&server.endpoint(), BUCKET, &id, &secret);
    assert_eq!(good.list(Some(PREFIX)).len(), TREE.len());
    let o = TREE[2];
    let endpoint = server.endpoint();
    let mut args = vec![
        "--endpoint",
        endpoint.as_str(),
        "--region",
        REGION,
        "--pool",
        "64M",
    ];
    args.extend_from_slice(&FAIL_ARGS);
    let limit = FAIL_BOUND + Duration::from_secs(30);

    // an access key the server does not know
    let f = mount_must_fail(
        Some(&server),
        &dirs,
        &url(BUCKET, PREFIX),
        &args,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000"),
            ("AWS_SECRET_ACCESS_KEY", &secret),
        ],
        limit,
    );
    assert_failed_cleanly(&f, &dirs, "unknown access key", CREDENTIAL_WORDS);
    // the right key with a wrong secret (the signature does not match)
    let wrong: String = secret.chars().rev().collect();
    assert_ne!(wrong, secret);
    let f = mount_must_fail(
        Some(&server),
        &dirs,
        &url(BUCKET, PREFIX),
        &args,
        &[
            ("AWS_ACCESS_KEY_ID", &id),
            ("AWS_SECRET_ACCESS_KEY", &wrong),
        ],
        limit,
    );
    assert_failed_cleanly(&f, &dirs, "wrong secret", CREDENTIAL_WORDS);

    let home = home(&dirs);
    // keys in the environment
    {
        let env = [
            ("AWS_ACCESS_KEY_ID", id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ];
        let _d = Daemon::start_with(&url(BUCKET, PREFIX), &dirs.mnt, &args, WATCHDOG, |cmd| {
            hermetic_env(cmd, &home, &env)
        });
        check_sequential(&dirs.mnt.join(o.rel), o);
    }
    // a shared credentials file and a profile; endpoint and region from the environment too
    let creds = dirs.root.path().join("credentials");
    write_credentials_file(
        &creds,
        &format!(
            "[default]\naws_access_key_id = AKIANOSUCHKEY0000000\naws_secret_access_key = nope\n\n\
             [nitro]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"
        ),
    );
    let creds_s = creds.to_str().expect("utf-8").to_string();
    {
        let env = [
            ("AWS_SHARED_CREDENTIALS_FILE", creds_s.as_str()),
            ("AWS_PROFILE", "nitro"),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_REGION", REGION),
        ];
        let mut plain = vec!["--pool", "64M"];
        plain.extend_from_slice(&FAIL_ARGS);
        let _d = Daemon::start_with(&url(BUCKET, PREFIX), &dirs.mnt, &plain, WATCHDOG, |cmd| {
            hermetic_env(cmd, &home, &env)
        });
        check_sequential(&dirs.mnt.join(o.rel), o);
    }
    // the same file without AWS_PROFILE: [default], whose keys are refused
    let f = mount_must_fail(
        Some(&server),
        &dirs,
        &url(BUCKET, PREFIX),
        &args,
        &[("AWS_SHARED_CREDENTIALS_FILE", &creds_s)],
        limit,
    );
    assert_failed_cleanly(
        &f,
        &dirs,
        "[default] profile with bad keys",
        CREDENTIAL_WORDS,
    );
    // ~/.aws/credentials
    fs::create_dir_all(home.join(".aws")).expect("mkdir ~/.aws");
    write_credentials_file(
        &home.join(".aws/credentials"),
        &format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    );
    {
        let _d = Daemon::start_with(&url(BUCKET, PREFIX), &dirs.mnt, &args, WATCHDOG, |cmd| {
            hermetic_env(cmd, &home, &[])
        });
        check_sequential(&dirs.mnt.join(o.rel), o);
    }
}

// ---------------------------------------------------------------------------------------------
// the harness itself (these pass without the S3 source: they check the test server and client)

#[test]
fn harness_pattern_at_is_pattern() {
    let whole = pattern(77, 100_003);
    let mut rng = Rng::new(3);
    for _ in 0..500 {
        let off = rng.below(whole.len() as u64) as usize;
        let len = rng.below((whole.len() - off) as u64 + 1) as usize;
        assert_eq!(
            pattern_at(77, off as u64, len),
            &whole[off..off + len],
            "{off}+{len}"
        );
    }
}

#[test]
fn harness_moto_serves_ranges_and_etags_and_restarts_on_the_same_port() {
    let (mut server, c) = server_with_bucket();
    assert!(
        server.log().contains(LAUNCHER_BANNER),
        "moto did not start through the launcher; log:\n{}",
        server.log_tail(20)
    );
    eprintln!("moto {} on {}", server.version, server.endpoint());
    let small = pattern(1, 100_000);
    let e1 = c.put("d/small.bin", small.clone());
    let len = 40 * MIB + 12_345;
    let e2 = c.put_pattern_multipart("d/multi.bin", 5, len, 8 * MIB as usize);
    assert!(e2.ends_with("-6\""), "multipart ETag {e2}");
    let listed = c.list(Some("d"));
    assert_eq!(
        listed
            .iter()
            .map(|o| (o.key.as_str(), o.size))
            .collect::<Vec<_>>(),
        vec![("d/multi.bin", len), ("d/small.bin", small.len() as u64)]
    );
    assert_eq!(c.head("d/multi.bin").etag.as_deref(), Some(e2.as_str()));
    for (off, n) in [(0, 10), (8 * MIB - 5, 10), (len - 7, 7), (123, 3 * MIB)] {
        assert_bytes_eq(
            &c.get_range("d/multi.bin", off..off + n),
            &pattern_at(5, off, n as usize),
            "ranged GET",
        );
    }
    assert_bytes_eq(&c.get_range("d/small.bin", 10..20), &small[10..20], "small");
    // conditional ranged GETs (how a daemon reads a version it knows): moto checks If-Match
    assert_bytes_eq(
        &c.try_get_range("d/multi.bin", 100..200, Some(&e2))
            .expect("If-Match with the ETag"),
        &pattern_at(5, 100, 100),
        "If-Match",
    );
    match c.try_get_range("d/multi.bin", 100..200, Some("\"0123\"")) {
        Err(object_store::Error::Precondition { .. }) => {}
        other => panic!("If-Match with another ETag: {other:?}"),
    }
    thread::sleep(Duration::from_millis(300));
    let reqs = server.requests();
    assert!(
        reqs.iter()
            .any(|r| r.method == "GET" && r.target == "/nitro-test/d/multi.bin" && r.status == 206),
        "no ranged GET in the log: {reqs:?}"
    );

    // hung: connections are accepted, nothing answers
    server.pause();
    let r = http_request(
        server.addr(),
        "GET",
        "/nitro-test",
        b"",
        Duration::from_secs(1),
    );
    assert!(r.is_err(), "a paused moto answered: {r:?}");
    server.resume();
    assert_eq!(
        server
            .http("GET", "/nitro-test", b"")
            .expect("after resume")
            .0,
        200
    );

    let port = server.port();
    server.stop();
    assert!(!server.is_running());
    assert!(
        c.try_put("d/x", b"x".to_vec()).is_err(),
        "PUT to a stopped server"
    );
    server.restart();
    assert_eq!(server.port(), port, "restarted on another port");
    assert!(
        c.try_head("d/small.bin").is_err(),
        "a restarted moto kept objects"
    );
    server.create_bucket(BUCKET);
    assert_eq!(c.put("d/small.bin", small), e1, "same bytes, same ETag");
    assert_eq!(
        c.put_pattern_multipart("d/multi.bin", 5, len, 8 * MIB as usize),
        e2,
        "same bytes and part size, same multipart ETag"
    );
}

/// Concurrent ranged GETs (a daemon's fills) each leave one whole `nitro-get` line and one whole
/// access-log line: the tests count a daemon's GETs and bytes from them.
#[test]
fn harness_moto_logs_every_one_of_many_concurrent_gets() {
    let (server, c) = server_with_bucket();
    let len = 8 * MIB;
    c.put("d/c.bin", pattern(3, len as usize));
    let (threads, each) = (8u64, 32u64);
    let piece = len / (threads * each);
    let mut want: Vec<(u64, u64)> = (0..threads * each)
        .map(|i| (i * piece, (i + 1) * piece - 1))
        .collect();
    thread::scope(|s| {
        for t in 0..threads {
            let c = &c;
            s.spawn(move || {
                for i in 0..each {
                    let off = (t * each + i) * piece;
                    assert_bytes_eq(
                        &c.get_range("d/c.bin", off..off + piece),
                        &pattern_at(3, off, piece as usize),
                        "ranged GET",
                    );
                }
            });
        }
    });
    thread::sleep(Duration::from_millis(500)); // the access log line follows the answer
    let mut got: Vec<(u64, u64)> = server
        .object_reads()
        .iter()
        .filter(|r| r.target == "/nitro-test/d/c.bin")
        .map(|r| r.range.expect("a GET of this test without its range"))
        .collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(
        got.len(),
        want.len(),
        "GETs in the launcher's log; log:\n{}",
        server.log_tail(20)
    );
    assert_eq!(got, want, "the ranges of the GETs");
    let logged = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.target == "/nitro-test/d/c.bin" && r.status == 206)
        .count();
    assert_eq!(
        logged as u64,
        threads * each,
        "GETs in the access log; log:\n{}",
        server.log_tail(20)
    );
}

#[test]
fn harness_moto_with_auth_refuses_unknown_keys_and_wrong_secrets() {
    let (server, c) = server_with_bucket();
    c.put("k", b"before".to_vec());
    let (id, secret) = server.enforce_auth();
    let good = S3Client::with_keys(&server.endpoint(), BUCKET, &id, &secret);
    good.put("k2", b"with the IAM key".to_vec());
    assert_eq!(good.list(None).len(), 2);
    assert!(c.try_head("k").is_err(), "the unknown test key still works");
    let wrong = S3Client::with_keys(&server.endpoint(), BUCKET, &id, "not-the-secret");
    assert!(wrong.try_head("k").is_err(), "a wrong secret works");
    // escaped characters in the path and the query verify (the launcher's second change)
    good.put("a dir/ü x.bin", b"spaces and more".to_vec());
    let listed = good.list(Some("a dir"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].key, "a dir/ü x.bin");
    assert_eq!(good.get_range("a dir/ü x.bin", 4..10), b"es and");
    assert!(wrong.try_head("a dir/ü x.bin").is_err());
    let r = wrong.try_list(Some("a dir"));
    assert!(r.is_err(), "LIST with a wrong secret: {r:?}");
    let r = wrong.try_get_range("a dir/ü x.bin", 0..3, None);
    assert!(r.is_err(), "GET with a wrong secret: {r:?}");
}
