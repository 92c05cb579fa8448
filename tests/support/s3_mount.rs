//! The daemon's side of the S3 tests (tests/mount_s3.rs, tests/ops_s3.rs): mounting a bucket of
//! a moto server (tests/support/s3_server.rs) with a hermetic environment, the objects' bytes
//! (`pattern` bytes, checked per range), `stats --json`, the server's GETs per key, and the lock
//! that keeps S3 tests one at a time.
//!
//! Why one lock for every S3 test binary (a file lock, not a mutex): each test starts its own
//! moto, which holds every object in RAM (the 1 GiB uploads of mount_s3 peak at several GiB), and
//! the daemons' pools come on top. `cargo test` runs test binaries one after another, but a runner
//! that runs binaries or tests as separate processes at once (nextest, two `cargo test`s) would
//! run them together; `flock` on one file serialises them across processes and threads alike.
//!
//! Expects the including crate to have `mod common;` and `mod s3_server;`.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use crate::s3_server::*;

pub const BUCKET: &str = "nitro-test";

/// Held for the whole of one S3 test: an exclusive `flock` on a file shared by every test binary
/// (see the module's doc). Released when dropped (also when the test panics), or when the
/// process dies.
pub struct Serial(File);

/// Waits for the S3 tests' lock.
pub fn serial() -> Serial {
    let path = std::env::temp_dir().join("nitro-uring-s3-tests.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Serial(f);
        }
        let e = io::Error::last_os_error();
        assert_eq!(
            e.kind(),
            io::ErrorKind::Interrupted,
            "flock {}: {e}",
            path.display()
        );
    }
}

pub fn url(bucket: &str, prefix: &str) -> PathBuf {
    if prefix.is_empty() {
        PathBuf::from(format!("s3://{bucket}"))
    } else {
        PathBuf::from(format!("s3://{bucket}/{prefix}"))
    }
}

/// The daemon's environment: nothing AWS-related from the host (no proxy for 127.0.0.1 either),
/// `HOME` an empty directory of the test, then `vars`.
pub fn hermetic_env(cmd: &mut Command, home: &Path, vars: &[(&str, &str)]) {
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("AWS_") || name.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("HOME", home)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in vars {
        cmd.env(k, v);
    }
}

pub fn test_keys() -> [(&'static str, &'static str); 2] {
    [
        ("AWS_ACCESS_KEY_ID", TEST_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", TEST_SECRET),
    ]
}

/// An empty HOME for the daemon, inside the test's directory.
pub fn home(dirs: &Dirs) -> PathBuf {
    let h = dirs.root.path().join("home");
    fs::create_dir_all(&h).expect("mkdir home");
    h
}

/// `nitro-uring mount s3://BUCKET/PREFIX MNT --endpoint E --region us-east-1 ARGS`, with the
/// test keys in the environment; waits up to 60 s for the mount.
pub fn mount_s3(
    server: &S3Server,
    dirs: &Dirs,
    prefix: &str,
    args: &[&str],
    watchdog: Duration,
) -> Daemon {
    let endpoint = server.endpoint();
    let mut all = vec!["--endpoint", endpoint.as_str(), "--region", REGION];
    all.extend_from_slice(args);
    let home = home(dirs);
    Daemon::start_with(&url(BUCKET, prefix), &dirs.mnt, &all, watchdog, |cmd| {
        hermetic_env(cmd, &home, &test_keys())
    })
}

/// A server with `BUCKET` created, and the test's client for it.
pub fn server_with_bucket() -> (S3Server, S3Client) {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let client = S3Client::new(&server.endpoint(), BUCKET);
    (server, client)
}

// ---------------------------------------------------------------------------------------------
// objects and their bytes

/// One object of a test: key relative to the mount's prefix, pattern seed, length.
#[derive(Clone, Copy, Debug)]
pub struct Obj {
    pub rel: &'static str,
    pub seed: u64,
    pub len: u64,
}

/// Reads `path` sequentially in 8 MiB reads and compares every piece with the object's bytes.
pub fn check_sequential(path: &Path, o: Obj) {
    let mut f =
        File::open(path).unwrap_or_else(|e| panic!("open {}: {}", path.display(), io_context(&e)));
    let mut buf = vec![0u8; 8 * MIB as usize];
    let mut want = vec![0u8; buf.len()];
    let mut off = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf)
            .unwrap_or_else(|e| panic!("read {} at {off}: {}", path.display(), io_context(&e)));
        if n == 0 {
            break;
        }
        assert!(
            off + n as u64 <= o.len,
            "{}: read past the object's {} bytes (at {off}, {n} more)",
            path.display(),
            o.len
        );
        fill_pattern_at(o.seed, off, &mut want[..n]);
        if buf[..n] != want[..n] {
            panic!(
                "{} at {off}: {}",
                path.display(),
                first_diff(&buf[..n], &want[..n])
            );
        }
        off += n as u64;
    }
    assert_eq!(off, o.len, "{}: length read", path.display());
}

/// `read` until `buf` is full or EOF.
pub fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `pread` of `len` at `off` must return exactly the object's bytes there (short only at EOF).
#[track_caller]
pub fn check_pread(f: &File, o: Obj, off: u64, len: usize, what: &str) {
    let mut buf = vec![0u8; len];
    let n = pread_full(f, &mut buf, off)
        .unwrap_or_else(|e| panic!("{what}: pread {len} at {off}: {}", io_context(&e)));
    let want_n = o.len.saturating_sub(off).min(len as u64) as usize;
    assert_eq!(n, want_n, "{what}: pread {len} at {off} of {} bytes", o.len);
    let want = pattern_at(o.seed, off, n);
    if buf[..n] != want[..] {
        panic!(
            "{what}: pread {len} at {off}: {}",
            first_diff(&buf[..n], &want)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// what the daemon and the server say

/// `nitro-uring stats MNT --json`, parsed.
pub fn stats(mnt: &Path) -> serde_json::Value {
    let out = run_cli(
        &[OsStr::new("stats"), mnt.as_os_str(), OsStr::new("--json")],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "stats --json: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stats --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The number at `path` (`a.b.c`) of a `stats --json` value.
pub fn num(v: &serde_json::Value, path: &str) -> u64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

/// GETs of `key` in the server's log, and the bytes they asked for (a GET without a range
/// counts as `whole` bytes).
pub fn object_gets(server: &S3Server, key: &str, whole: u64) -> (usize, u64) {
    let target = format!("/{BUCKET}/{key}");
    let reads: Vec<ObjectRead> = server
        .object_reads()
        .into_iter()
        .filter(|r| r.target == target || r.target.starts_with(&format!("{target}?")))
        .collect();
    let bytes = reads
        .iter()
        .map(|r| r.range.map(|(a, b)| b + 1 - a).unwrap_or(whole))
        .sum();
    (reads.len(), bytes)
}
