//! The daemon's life cycle: clean exit on SIGTERM/SIGINT and on unmount from outside
//! (`nitro-uring umount`, umount(2)), rejection of bad input with one line on stderr and nothing
//! mounted, recovery of a stale mount left by a killed daemon, and the SIZE syntax.

mod common;
#[path = "support/faulty_fs.rs"]
mod faulty_fs;

use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use common::*;

const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn populate(src: &Path) -> Vec<u8> {
    let data = pattern(42, 300_000);
    write_file(&src.join("data.bin"), &data);
    data
}

#[track_caller]
fn assert_serves(mnt: &Path, want: &[u8]) {
    let got = fs::read(mnt.join("data.bin"))
        .unwrap_or_else(|e| panic!("read data.bin through the mount: {e}"));
    assert_bytes_eq(&got, want, "data.bin through the mount");
}

#[track_caller]
fn assert_clean_exit(d: &mut Daemon, how: &str) {
    let st = d.finish(EXIT_TIMEOUT);
    let Some(st) = st else {
        panic!(
            "{how}: the daemon did not exit within {EXIT_TIMEOUT:?}; stderr:\n{}",
            d.stderr()
        )
    };
    assert_eq!(
        st.code(),
        Some(0),
        "{how}: daemon exit status {st}; stderr:\n{}",
        d.stderr()
    );
    assert!(
        wait_unmounted(&d.mountpoint, Duration::from_secs(2)),
        "{how}: the mountpoint is still in mountinfo after the daemon exited: {:?}",
        mounts_at(&d.mountpoint)
    );
}

fn signal_test(sig: i32, name: &str, hold_open: bool) {
    let dirs = Dirs::new();
    let data = populate(&dirs.src);
    let mut d = Daemon::start(&dirs.src, &dirs.mnt, &["--chunk", "64KiB", "--pool", "16M"]);
    assert_serves(&dirs.mnt, &data);
    // optionally keep a file in the mount open (as a model server with an mmap would)
    let held = hold_open.then(|| File::open(dirs.mnt.join("data.bin")).unwrap());
    d.signal(sig);
    assert_clean_exit(&mut d, name);
    drop(held);
}

#[test]
fn sigterm_unmounts_and_exits_0() {
    signal_test(libc::SIGTERM, "SIGTERM", false);
}

#[test]
fn sigint_unmounts_and_exits_0() {
    signal_test(libc::SIGINT, "SIGINT", false);
}

#[test]
fn sigterm_with_a_file_held_open_unmounts_and_exits_0() {
    signal_test(libc::SIGTERM, "SIGTERM with an open file", true);
}

#[test]
fn umount_subcommand_makes_the_daemon_exit_0() {
    let dirs = Dirs::new();
    let data = populate(&dirs.src);
    let mut d = Daemon::start(&dirs.src, &dirs.mnt, &["--chunk", "64KiB", "--pool", "16M"]);
    assert_serves(&dirs.mnt, &data);
    let out = run_cli(
        &[OsStr::new("umount"), dirs.mnt.as_os_str()],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "`nitro-uring umount MP` exited with {}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean_exit(&mut d, "nitro-uring umount");
}

#[test]
fn umount_syscall_from_outside_makes_the_daemon_exit_0() {
    let dirs = Dirs::new();
    let data = populate(&dirs.src);
    let mut d = Daemon::start(&dirs.src, &dirs.mnt, &["--chunk", "64KiB", "--pool", "16M"]);
    assert_serves(&dirs.mnt, &data);
    let c = CString::new(dirs.mnt.as_os_str().as_bytes()).unwrap();
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    assert_eq!(rc, 0, "umount(2): {}", std::io::Error::last_os_error());
    assert_clean_exit(&mut d, "umount(2) from outside");
}

/// Accepted spellings of SIZE mount and serve.
#[test]
fn size_syntax_variants_are_accepted() {
    for (pool, chunk) in [
        ("96M", "64KiB"),
        ("0.125", "64KiB"),
        ("0.25GiB", "128KiB"),
        ("131072KiB", "1MiB"),
        ("64MiB", "1M"),
    ] {
        let dirs = Dirs::new();
        let data = populate(&dirs.src);
        let d = Daemon::try_start(&dirs.src, &dirs.mnt, &["--pool", pool, "--chunk", chunk])
            .unwrap_or_else(|e| panic!("--pool {pool} --chunk {chunk}: {e}"));
        assert_serves(&dirs.mnt, &data);
        drop(d);
    }
}

/// The defaults and every documented mount flag are accepted, and the mount serves correct bytes.
#[test]
fn all_documented_flags_are_accepted() {
    for args in [
        // no flags at all: the defaults (--pool 1G --chunk 1MiB)
        &[][..],
        &[
            "--pool",
            "32M",
            "--chunk",
            "128KiB",
            "--threads",
            "1",
            "--readahead",
            "0",
            "--allow-other",
            "--lock",
            "--cache-mode",
            "keep",
            "-q",
        ][..],
        &[
            "--pool",
            "0.03125",
            "--chunk",
            "64KiB",
            "--threads",
            "3",
            "--readahead",
            "4MiB",
            "--cache-mode",
            "direct",
            "-v",
        ][..],
    ] {
        let dirs = Dirs::new();
        let data = populate(&dirs.src);
        let mut d = Daemon::try_start(&dirs.src, &dirs.mnt, args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_serves(&dirs.mnt, &data);
        d.signal(libc::SIGTERM);
        assert_clean_exit(&mut d, &format!("SIGTERM with {args:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// bad input

/// Run `nitro-uring mount SRC MNT ARGS...` expecting a refusal: non-zero exit, exactly one
/// non-empty line on stderr that contains one of `mentions` (case-insensitive), nothing mounted.
fn expect_refusal(what: &str, src: &Path, mnt: &Path, args: &[&str], mentions: &[&str]) {
    let mut argv: Vec<&OsStr> = vec![OsStr::new("mount"), src.as_os_str(), mnt.as_os_str()];
    argv.extend(args.iter().map(OsStr::new));
    let out = run_cli(&argv, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // whatever happened, leave nothing behind for the other tests
    let leftover = mounts_at(mnt);
    force_unmount(mnt);
    assert!(
        !out.status.success(),
        "{what}: expected a non-zero exit, got {}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        leftover.is_empty(),
        "{what}: something is mounted at the mountpoint afterwards: {leftover:?}"
    );
    let ours: Vec<MountEntry> = mountinfo()
        .into_iter()
        .filter(|e| {
            e.fstype == "fuse.nitro-uring" && e.source == format!("nitro-uring:{}", src.display())
        })
        .collect();
    assert!(
        ours.is_empty(),
        "{what}: a nitro-uring mount of this source is left: {ours:?}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line on stderr, got {}:\n{stderr}",
        lines.len()
    );
    let l = lines[0].to_lowercase();
    assert!(
        mentions.iter().any(|m| l.contains(&m.to_lowercase())),
        "{what}: the stderr line does not mention any of {mentions:?}:\n{}",
        lines[0]
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn refuses_missing_source() {
    let dirs = Dirs::new();
    let src = dirs.root.path().join("no_such_source");
    expect_refusal("missing SOURCE", &src, &dirs.mnt, &[], &[&s(&src)]);
}

#[test]
fn refuses_source_that_is_not_a_directory() {
    let dirs = Dirs::new();
    let src = dirs.src.join("a_file");
    write_file(&src, b"x");
    expect_refusal("SOURCE is a file", &src, &dirs.mnt, &[], &[&s(&src)]);
}

#[test]
fn refuses_unreadable_source() {
    // Root reads any mode-000 directory on a normal filesystem, so the unreadable directory comes
    // from a test FUSE filesystem whose `locked/` refuses opendir/readdir/access with EACCES.
    let dirs = Dirs::new();
    let faulty = faulty_fs::FaultyMount::mount(&dirs.src);
    let src = dirs.src.join("locked");
    assert!(
        fs::read_dir(&src).is_err(),
        "test setup: locked/ should be unreadable"
    );
    expect_refusal("unreadable SOURCE", &src, &dirs.mnt, &[], &[&s(&src)]);
    drop(faulty);
}

#[test]
fn refuses_missing_mountpoint() {
    let dirs = Dirs::new();
    populate(&dirs.src);
    let mnt = dirs.root.path().join("no_such_mountpoint");
    expect_refusal("missing MOUNTPOINT", &dirs.src, &mnt, &[], &[&s(&mnt)]);
}

#[test]
fn refuses_mountpoint_that_is_not_a_directory() {
    let dirs = Dirs::new();
    populate(&dirs.src);
    let mnt = dirs.root.path().join("mnt_file");
    write_file(&mnt, b"x");
    expect_refusal("MOUNTPOINT is a file", &dirs.src, &mnt, &[], &[&s(&mnt)]);
}

#[test]
fn refuses_mountpoint_that_is_not_empty() {
    let dirs = Dirs::new();
    populate(&dirs.src);
    write_file(&dirs.mnt.join("occupant"), b"x");
    expect_refusal(
        "MOUNTPOINT not empty",
        &dirs.src,
        &dirs.mnt,
        &[],
        &[&s(&dirs.mnt), "empty"],
    );
    assert!(dirs.mnt.join("occupant").exists());
}

#[test]
fn refuses_source_equal_to_mountpoint() {
    let dirs = Dirs::new();
    expect_refusal(
        "SOURCE == MOUNTPOINT",
        &dirs.mnt,
        &dirs.mnt,
        &[],
        &[&s(&dirs.mnt), "same"],
    );
}

#[test]
fn refuses_mountpoint_inside_source() {
    let dirs = Dirs::new();
    populate(&dirs.src);
    let inner = dirs.src.join("inner");
    fs::create_dir(&inner).unwrap();
    expect_refusal(
        "MOUNTPOINT inside SOURCE",
        &dirs.src,
        &inner,
        &[],
        &[&s(&dirs.src), &s(&inner)],
    );
}

#[test]
fn refuses_source_inside_mountpoint() {
    // MOUNTPOINT/inner is the source; MOUNTPOINT is then not empty either, and either complaint
    // is a fine reason to refuse.
    let dirs = Dirs::new();
    let inner = dirs.mnt.join("inner");
    fs::create_dir(&inner).unwrap();
    populate(&inner);
    expect_refusal(
        "SOURCE inside MOUNTPOINT",
        &inner,
        &dirs.mnt,
        &[],
        &[&s(&dirs.mnt), &s(&inner)],
    );
}

#[test]
fn refuses_unparsable_pool() {
    let dirs = Dirs::new();
    populate(&dirs.src);
    expect_refusal(
        "--pool banana",
        &dirs.src,
        &dirs.mnt,
        &["--pool", "banana"],
        &["pool", "banana"],
    );
}

#[test]
fn refuses_pool_smaller_than_a_chunk() {
    let dirs = Dirs::new();
    populate(&dirs.src);
    expect_refusal(
        "--pool 512KiB --chunk 1MiB",
        &dirs.src,
        &dirs.mnt,
        &["--pool", "512KiB", "--chunk", "1MiB"],
        &["pool"],
    );
}

#[test]
fn refuses_pool_larger_than_memory() {
    let dirs = Dirs::new();
    populate(&dirs.src);
    expect_refusal(
        "--pool 100000G",
        &dirs.src,
        &dirs.mnt,
        &["--pool", "100000G"],
        &["pool", "memory"],
    );
}

#[test]
fn refuses_unknown_flag() {
    let dirs = Dirs::new();
    populate(&dirs.src);
    expect_refusal(
        "unknown flag --bogus",
        &dirs.src,
        &dirs.mnt,
        &["--bogus"],
        &["--bogus"],
    );
}

// ---------------------------------------------------------------------------------------------
// stale mount

#[test]
fn stale_mount_after_kill_9_is_recovered() {
    let dirs = Dirs::new();
    let data = populate(&dirs.src);
    let mut a = Daemon::start(&dirs.src, &dirs.mnt, &["--chunk", "64KiB", "--pool", "16M"]);
    assert_serves(&dirs.mnt, &data);
    let stale_id = a.mount.as_ref().unwrap().id;
    a.signal(libc::SIGKILL);
    assert!(
        a.wait_exit(EXIT_TIMEOUT).is_some(),
        "SIGKILLed daemon did not die"
    );
    // precondition: the mount is left behind, disconnected
    // (stat may still be answered from the kernel's attribute cache; opendir needs the daemon)
    let e =
        fs::read_dir(&dirs.mnt).expect_err("opendir of the mountpoint after kill -9 should fail");
    assert_eq!(
        errno(&e),
        libc::ENOTCONN,
        "opendir of the mountpoint after kill -9: {e}"
    );
    assert!(mounts_at(&dirs.mnt).iter().any(|m| m.id == stale_id));
    // `a` stays alive (as an object) until the end so its drop does not clean the stale mount up

    let b = Daemon::try_start(&dirs.src, &dirs.mnt, &["--chunk", "64KiB", "--pool", "16M"])
        .unwrap_or_else(|e| panic!("mount over a stale mount: {e}"));
    assert_serves(&dirs.mnt, &data);
    // exactly one mount there now (mount ids are reused, so the stale one is told apart by count)
    assert_eq!(
        mounts_at(&dirs.mnt).len(),
        1,
        "mounts at the mountpoint after recovery: {:?}",
        mounts_at(&dirs.mnt)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !b.stderr().to_lowercase().contains("stale") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        b.stderr().to_lowercase().contains("stale"),
        "no message about the stale mount on stderr:\n{}",
        b.stderr()
    );
    // the recovered mount is a normal one: it unmounts cleanly
    let mut b = b;
    b.signal(libc::SIGTERM);
    assert_clean_exit(&mut b, "SIGTERM after stale recovery");
    drop(a);
}

/// `--chunk` and `--readahead` take a bare number as bytes (it used to mean GiB: `--readahead 4096`
/// was 4 TiB).
#[test]
fn bare_chunk_and_readahead_numbers_are_bytes() {
    let dirs = Dirs::new();
    let data = populate(&dirs.src);
    let mut d = Daemon::start(
        &dirs.src,
        &dirs.mnt,
        &["--pool", "64M", "--chunk", "1048576", "--readahead", "4096"],
    );
    assert_serves(&dirs.mnt, &data);
    let stderr = d.stderr();
    assert!(
        stderr.contains("chunk 1024 KiB") && stderr.contains("readahead 4 KiB"),
        "expected a 1 MiB chunk and 4 KiB readahead in the MOUNT line; stderr:\n{stderr}"
    );
    d.signal(libc::SIGTERM);
    assert_clean_exit(&mut d, "SIGTERM");
    // a bare fractional number of bytes is refused with one line
    let out = run_cli(
        &[
            OsStr::new("mount"),
            dirs.src.as_os_str(),
            dirs.mnt.as_os_str(),
            OsStr::new("--chunk"),
            OsStr::new("1.5"),
        ],
        EXIT_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(!is_mounted(&dirs.mnt));
}

/// A tmpfs mounted by this test, unmounted on drop (also when the test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "none"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs none {}: {st}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

#[track_caller]
fn assert_umount_refused(dir: &Path, why: &str) {
    let out = run_cli(&[OsStr::new("umount"), dir.as_os_str()], EXIT_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "`nitro-uring umount {}` succeeded; stderr:\n{stderr}",
        dir.display()
    );
    assert_eq!(
        stderr.trim_end(),
        format!(
            "nitro-uring: {} is not a nitro-uring mount ({why})",
            dir.display()
        ),
        "stderr of `nitro-uring umount {}`",
        dir.display()
    );
}

#[test]
fn umount_refuses_a_mount_that_is_not_nitro_uring() {
    let dirs = Dirs::new();
    let tmpfs = Tmpfs::mount(&dirs.mnt);
    fs::write(dirs.mnt.join("marker"), b"x").unwrap();
    assert_umount_refused(&dirs.mnt, "tmpfs");
    assert!(
        mounts_at(&dirs.mnt).iter().any(|e| e.fstype == "tmpfs"),
        "the tmpfs was unmounted"
    );
    assert!(dirs.mnt.join("marker").exists());
    drop(tmpfs);
    assert!(!is_mounted(&dirs.mnt));
}

#[test]
fn umount_refuses_a_plain_directory() {
    let dirs = Dirs::new();
    assert_umount_refused(&dirs.mnt, "not a mount point");
    assert!(dirs.mnt.is_dir());
}
