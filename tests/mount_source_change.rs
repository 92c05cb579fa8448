//! The source changes under an open handle (issue 7): truncated, shrunk to nothing, extended,
//! rewritten in place. A read on the handle that opened the old version must return that version's
//! bytes or fail with EIO — never the new version's bytes, never garbage, never hang — and the daemon
//! must go on serving every other file, and a fresh open must see the source as it is now.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

const F_LEN: usize = 3 * MIB as usize;
const G_LEN: usize = 2 * MIB as usize + 12345;
const F_SEED: u64 = 71;
const G_SEED: u64 = 72;
const NEW_SEED: u64 = 73;
/// Longer than the mount's attribute TTL (1 s), so a fresh open re-stats the source.
const ATTR_TTL: Duration = Duration::from_millis(1100);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `pread(f, len, off)` (looping to `len` or EOF) on a helper thread; `None` if it hangs.
fn pread_bounded(f: &Arc<File>, len: usize, off: u64) -> Option<io::Result<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let f = f.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; len];
        let r = pread_full(&f, &mut buf, off).map(|n| {
            buf.truncate(n);
            buf
        });
        let _ = tx.send(r);
    });
    rx.recv_timeout(READ_TIMEOUT).ok()
}

/// `fs::read(p)` on a helper thread, bounded.
fn read_bounded(p: &Path) -> Option<io::Result<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = p.to_path_buf();
    thread::spawn(move || {
        let _ = tx.send(fs::read(p));
    });
    rx.recv_timeout(READ_TIMEOUT).ok()
}

/// A read on the handle of the old version: its bytes (`old[off..off+len]`, whole), or EIO.
#[track_caller]
fn assert_old_bytes_or_eio(f: &Arc<File>, old: &[u8], off: u64, len: usize, what: &str) {
    let r = pread_bounded(f, len, off)
        .unwrap_or_else(|| panic!("{what}: pread({off}, {len}) hung for {READ_TIMEOUT:?}"));
    match r {
        Ok(got) => {
            let end = (off as usize + len).min(old.len());
            assert_bytes_eq(
                &got,
                &old[off as usize..end],
                &format!("{what}: pread({off}, {len}) on the handle of the old version"),
            );
        }
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "{what}: pread({off}, {len}) on the old handle failed with {e}, expected EIO or the old bytes"
        ),
    }
}

/// The daemon is alive, serves an uncached file byte-exact, and a fresh open of `f` reads what
/// the source holds now.
#[track_caller]
fn assert_still_serving(d: &mut Daemon, dirs: &Dirs, what: &str) {
    assert!(
        d.is_alive(),
        "{what}: the daemon died; stderr:\n{}",
        d.stderr()
    );
    let g = read_bounded(&dirs.mnt.join("g"))
        .unwrap_or_else(|| panic!("{what}: reading g (uncached) hung; stderr:\n{}", d.stderr()))
        .unwrap_or_else(|e| panic!("{what}: reading g (uncached): {e}; stderr:\n{}", d.stderr()));
    assert_bytes_eq(&g, &pattern(G_SEED, G_LEN), &format!("{what}: g"));
    thread::sleep(ATTR_TTL);
    let now = fs::read(dirs.src.join("f")).unwrap();
    let got = read_bounded(&dirs.mnt.join("f"))
        .unwrap_or_else(|| panic!("{what}: a fresh read of f hung"))
        .unwrap_or_else(|e| panic!("{what}: a fresh read of f: {e}; stderr:\n{}", d.stderr()));
    assert_bytes_eq(&got, &now, &format!("{what}: fresh open of f"));
    assert!(
        d.is_alive(),
        "{what}: the daemon died; stderr:\n{}",
        d.stderr()
    );
    eprintln!("{what}: daemon stderr:\n{}", d.stderr());
    assert!(
        !d.stderr().contains("panicked"),
        "{what}: a thread panicked; stderr:\n{}",
        d.stderr()
    );
}

/// Mounts a source with f (3 MiB) and g (uncached bystander), opens f and reads its first page.
fn setup(dirs: &Dirs) -> (Daemon, Arc<File>, Vec<u8>) {
    let old = pattern(F_SEED, F_LEN);
    write_file(&dirs.src.join("f"), &old);
    write_file(&dirs.src.join("g"), &pattern(G_SEED, G_LEN));
    let d = Daemon::start(&dirs.src, &dirs.mnt, &["--chunk", "1MiB", "--pool", "64M"]);
    let f = Arc::new(File::open(dirs.mnt.join("f")).unwrap());
    assert_old_bytes_or_eio(&f, &old, 0, 4096, "before the change");
    (d, f, old)
}

fn truncate_source(dirs: &Dirs, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(dirs.src.join("f"))
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn truncated_under_an_open_handle() {
    let dirs = Dirs::new();
    let (mut d, f, old) = setup(&dirs);
    truncate_source(&dirs, MIB + 100);
    assert_old_bytes_or_eio(&f, &old, MIB, 4096, "truncated to 1 MiB + 100");
    // the cached first chunk is still that version's bytes
    assert_old_bytes_or_eio(&f, &old, 0, 4096, "truncated, cached chunk");
    assert_old_bytes_or_eio(&f, &old, 2 * MIB, 4096, "truncated, past the new EOF");
    assert_still_serving(&mut d, &dirs, "truncated to 1 MiB + 100");
}

#[test]
fn shrunk_to_zero_under_an_open_handle() {
    let dirs = Dirs::new();
    let (mut d, f, old) = setup(&dirs);
    truncate_source(&dirs, 0);
    assert_old_bytes_or_eio(&f, &old, MIB, 4096, "shrunk to 0");
    assert_old_bytes_or_eio(&f, &old, MIB + 5000, 70_000, "shrunk to 0, again");
    assert_still_serving(&mut d, &dirs, "shrunk to 0");
}

#[test]
fn read_straddling_the_new_eof() {
    let dirs = Dirs::new();
    let (mut d, f, old) = setup(&dirs);
    truncate_source(&dirs, MIB + 100);
    assert_old_bytes_or_eio(&f, &old, MIB + 100 - 4096, 8192, "straddling the new EOF");
    assert_still_serving(&mut d, &dirs, "straddling the new EOF");
}

#[test]
fn extended_under_an_open_handle() {
    let dirs = Dirs::new();
    let (mut d, f, old) = setup(&dirs);
    let src = OpenOptions::new()
        .write(true)
        .open(dirs.src.join("f"))
        .unwrap();
    src.write_all_at(&pattern(NEW_SEED, 2 * MIB as usize), F_LEN as u64)
        .unwrap();
    drop(src);
    assert_old_bytes_or_eio(&f, &old, 2 * MIB, 4096, "extended");
    // the old version ends at 3 MiB: a read across it is short or fails
    assert_old_bytes_or_eio(
        &f,
        &old,
        3 * MIB - 4096,
        8192,
        "extended, across the old EOF",
    );
    assert_still_serving(&mut d, &dirs, "extended");
}

/// Same inode, new content, larger: the old handle must never see the new bytes.
#[test]
fn rewritten_in_place_under_an_open_handle() {
    let dirs = Dirs::new();
    let (mut d, f, old) = setup(&dirs);
    write_file(
        &dirs.src.join("f"),
        &pattern(NEW_SEED, F_LEN + MIB as usize),
    );
    assert_old_bytes_or_eio(&f, &old, MIB, 4096, "rewritten");
    assert_old_bytes_or_eio(&f, &old, 2 * MIB - 100, 8192, "rewritten, spanning");
    assert_still_serving(&mut d, &dirs, "rewritten");
}

/// Replaced by a rename over it (how model files are updated): the old handle still reads the old
/// inode, unchanged, so it keeps getting exactly the old bytes; a fresh open gets the new file.
#[test]
fn replaced_by_rename_under_an_open_handle() {
    let dirs = Dirs::new();
    let (mut d, f, old) = setup(&dirs);
    let tmp = dirs.root.path().join("f.new");
    write_file(&tmp, &pattern(NEW_SEED, F_LEN + MIB as usize));
    fs::rename(&tmp, dirs.src.join("f")).unwrap();
    for (off, len) in [(MIB, 4096), (2 * MIB - 100, 8192), (3 * MIB - 4096, 4096)] {
        let got = pread_bounded(&f, len, off)
            .unwrap_or_else(|| panic!("replaced: pread({off}, {len}) hung"))
            .unwrap_or_else(|e| panic!("replaced: pread({off}, {len}) on the old handle: {e}"));
        assert_bytes_eq(
            &got,
            &old[off as usize..off as usize + len],
            &format!("replaced: pread({off}, {len}) on the old handle"),
        );
    }
    assert_still_serving(&mut d, &dirs, "replaced by rename");
}
