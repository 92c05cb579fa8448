//! Longer runs against a changing source: daemon RSS stays flat over repeated create/list/delete
//! of many files (FUSE forget), and concurrent readers never see bytes of another file, a mix of
//! versions, or a wrong offset while a writer renames, truncates, appends, deletes and recreates.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const WATCHDOG: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// RSS over create/list/delete rounds

fn drop_caches() {
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "2").expect("write /proc/sys/vm/drop_caches");
}

/// 6 rounds of: create 20k small files on a tmpfs source, readdir + stat each through the mount, delete them. The
/// kernel forgets the inodes (drop_caches), so the daemon's RSS must level off (reported: 71 →
/// 150 MB without end).
#[test]
fn rss_stays_flat_over_create_list_delete_rounds() {
    const FILES: usize = 20_000;
    const ROUNDS: usize = 6;
    let dirs = Dirs::new();
    // tmpfs: fresh inode numbers for every file (ext4 would hand the deleted ones out again)
    let _t = Tmpfs::mount(&dirs.src);
    let sub = dirs.src.join("sub");
    fs::create_dir(&sub).unwrap();
    let d = Daemon::start_with(&dirs.src, &dirs.mnt, &["--pool", "64M"], WATCHDOG, |_| {});
    let msub = dirs.mnt.join("sub");
    let mut rss = Vec::new();
    for round in 0..ROUNDS {
        let t = Instant::now();
        for i in 0..FILES {
            write_file(&sub.join(format!("r{round}-f{i:05}")), b"small file\n");
        }
        let m = msub.clone();
        let listed = within(
            Duration::from_secs(120),
            "list + stat 20k files",
            move || {
                let mut n = 0;
                for e in fs::read_dir(&m).expect("readdir through the mount") {
                    let e = e.expect("readdir entry");
                    fs::metadata(e.path()).expect("stat through the mount");
                    n += 1;
                }
                n
            },
        );
        assert_eq!(
            listed, FILES,
            "round {round}: entries listed through the mount"
        );
        for i in 0..FILES {
            fs::remove_file(sub.join(format!("r{round}-f{i:05}"))).unwrap();
        }
        let m = msub.clone();
        within(Duration::from_secs(60), "list after delete", move || {
            fs::read_dir(&m).unwrap().count()
        });
        drop_caches();
        thread::sleep(Duration::from_secs(1));
        let kb = d.rss_kb();
        eprintln!("round {round}: daemon VmRSS {kb} kB ({:?})", t.elapsed());
        rss.push(kb);
    }
    assert!(
        rss[ROUNDS - 1] <= rss[1] + 10 * 1024,
        "daemon RSS keeps growing over create/list/delete rounds of {FILES} files: {rss:?} kB \
         (round {ROUNDS} must be at most round 2 + 10 MB)"
    );
}

// ---------------------------------------------------------------------------------------------
// concurrency stress

const FILES: u64 = 24;
/// Largest file: 4 MiB.
const MAX_WORDS: u64 = 512 << 10;

/// Every 8-byte word names its file, version and own offset.
fn word(fid: u64, ver: u64, idx: u64) -> u64 {
    (fid << 56) | ((ver & 0xFF_FFFF) << 32) | (idx & 0xFFFF_FFFF)
}

fn words(fid: u64, ver: u64, from: u64, to: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(((to - from) * 8) as usize);
    for i in from..to {
        v.extend_from_slice(&word(fid, ver, i).to_le_bytes());
    }
    v
}

#[derive(Default)]
struct Tally {
    opens: AtomicU64,
    reads: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    examples: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, what: &str, e: &std::io::Error) {
        let key = format!("{what}: {}", errno_name(errno(e)));
        *self.errors.lock().unwrap().entry(key).or_default() += 1;
    }
    fn fail(&self, msg: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut ex = self.examples.lock().unwrap();
        if ex.len() < 12 {
            ex.push(msg);
        }
    }
}

/// Check one reply: every word of file `fid`, at its own offset, all of one version (and of the
/// version this handle saw before, if any).
fn check_reply(
    t: &Tally,
    name: &str,
    fid: u64,
    off: u64,
    data: &[u8],
    handle_ver: &mut Option<u64>,
) {
    let mut reply_ver = None;
    for (j, c) in data.chunks_exact(8).enumerate() {
        let w = u64::from_le_bytes(c.try_into().unwrap());
        let (f, v, idx) = (w >> 56, (w >> 32) & 0xFF_FFFF, w & 0xFFFF_FFFF);
        let at = off + 8 * j as u64;
        if f != fid {
            return t.fail(format!(
                "{name}: read of {} bytes at {off}: word at {at} belongs to file {f} (version {v}, \
                 offset {}), not to file {fid}",
                data.len(),
                idx * 8
            ));
        }
        if idx != at / 8 {
            return t.fail(format!(
                "{name}: read of {} bytes at {off}: word at {at} holds offset {} (version {v})",
                data.len(),
                idx * 8
            ));
        }
        match reply_ver {
            None => reply_ver = Some(v),
            Some(rv) if rv != v => {
                return t.fail(format!(
                    "{name}: read of {} bytes at {off}: mixes versions {rv} and {v} (at {at})",
                    data.len()
                ));
            }
            _ => {}
        }
    }
    if !data.len().is_multiple_of(8) {
        t.fail(format!(
            "{name}: read at {off} returned {} bytes, not a whole number of words (all sizes are)",
            data.len()
        ));
    }
    if let Some(v) = reply_ver {
        match *handle_ver {
            None => *handle_ver = Some(v),
            Some(hv) if hv != v => t.fail(format!(
                "{name}: one open handle read version {hv}, then version {v} (at {off})"
            )),
            _ => {}
        }
    }
}

fn reader(mnt: PathBuf, seed: u64, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::Relaxed) {
        let k = rng.below(FILES);
        let name = format!("f{k:02}");
        let f = match File::open(mnt.join(&name)) {
            Ok(f) => f,
            Err(e) => {
                t.error("open", &e);
                continue;
            }
        };
        t.opens.fetch_add(1, Ordering::Relaxed);
        let mut hv = None;
        if rng.below(4) == 0 {
            // sequential, to the end
            let mut off = 0u64;
            loop {
                match f.read_at(&mut buf, off) {
                    Ok(0) => break,
                    Ok(n) => {
                        t.reads.fetch_add(1, Ordering::Relaxed);
                        t.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        check_reply(&t, &name, k + 1, off, &buf[..n], &mut hv);
                        off += n as u64;
                    }
                    Err(e) => {
                        t.error("read", &e);
                        break;
                    }
                }
                if off > 8 * MAX_WORDS + (1 << 22) {
                    t.fail(format!("{name}: sequential read ran past {off} bytes"));
                    break;
                }
            }
        } else {
            for _ in 0..1 + rng.below(6) {
                let off = 8 * rng.below(MAX_WORDS + MAX_WORDS / 8);
                let len = 8 * (1 + rng.below(64 << 10)) as usize;
                match f.read_at(&mut buf[..len], off) {
                    Ok(n) => {
                        t.reads.fetch_add(1, Ordering::Relaxed);
                        t.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        check_reply(&t, &name, k + 1, off, &buf[..n], &mut hv);
                    }
                    Err(e) => t.error("read", &e),
                }
            }
        }
    }
}

/// The writer: only whole-version replacements, truncations and appends of the same version, and
/// deletions/recreations, so every byte of the source is always some (file, version, offset) word.
fn writer(
    src: &Path,
    dur: Duration,
    ready: std::sync::mpsc::Sender<()>,
) -> BTreeMap<&'static str, u64> {
    let mut rng = Rng::new(99);
    let mut state: Vec<Option<(u64, u64)>> = vec![None; FILES as usize]; // (version, words)
    let mut ver = 1u64;
    let mut ops = BTreeMap::new();
    let path = |k: u64| src.join(format!("f{k:02}"));
    for k in 0..FILES {
        let n = rng.below(MAX_WORDS);
        write_file(&path(k), &words(k + 1, ver, 0, n));
        state[k as usize] = Some((ver, n));
        ver += 1;
    }
    let _ = ready.send(());
    let deadline = Instant::now() + dur;
    while Instant::now() < deadline {
        let k = rng.below(FILES);
        let p = path(k);
        let cur = state[k as usize];
        let op = rng.below(100);
        let what = match (op, cur) {
            (0..35, _) | (_, None) => {
                let n = rng.below(MAX_WORDS);
                let tmp = src.join(format!(".tmp-{k:02}"));
                write_file(&tmp, &words(k + 1, ver, 0, n));
                fs::rename(&tmp, &p).unwrap();
                state[k as usize] = Some((ver, n));
                ver += 1;
                "rename new version over"
            }
            (35..55, Some((v, n))) => {
                let m = if n == 0 { 0 } else { rng.below(n) };
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(8 * m)
                    .unwrap();
                state[k as usize] = Some((v, m));
                "truncate shorter"
            }
            (55..75, Some((v, n))) => {
                let m = (n + 1 + rng.below(MAX_WORDS / 4)).min(MAX_WORDS);
                let mut f = OpenOptions::new().append(true).open(&p).unwrap();
                f.write_all(&words(k + 1, v, n, m)).unwrap();
                state[k as usize] = Some((v, m));
                "append same version"
            }
            (75..90, Some(_)) => {
                fs::remove_file(&p).unwrap();
                let n = rng.below(MAX_WORDS);
                write_file(&p, &words(k + 1, ver, 0, n));
                state[k as usize] = Some((ver, n));
                ver += 1;
                "delete and recreate"
            }
            (_, Some(_)) => {
                fs::remove_file(&p).unwrap();
                state[k as usize] = None;
                "delete"
            }
        };
        *ops.entry(what).or_default() += 1;
    }
    ops
}

fn stress(mode: &str, dur: Duration) {
    let dirs = Dirs::new();
    let mut d = Daemon::start_with(
        &dirs.src,
        &dirs.mnt,
        &["--pool", "64M", "--chunk", "64KiB", "--cache-mode", mode],
        WATCHDOG,
        |_| {},
    );
    let stop = Arc::new(AtomicBool::new(false));
    let t = Arc::new(Tally::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let wsrc = dirs.src.clone();
    // the writer creates every file, signals, then churns
    let w = thread::spawn(move || writer(&wsrc, dur, ready_tx));
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("writer set-up");
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (mnt, stop, t) = (dirs.mnt.clone(), stop.clone(), t.clone());
            thread::spawn(move || reader(mnt, 1000 + i, stop, t))
        })
        .collect();
    let ops = within(dur + Duration::from_secs(120), "writer", move || {
        w.join().expect("writer thread")
    });
    stop.store(true, Ordering::Relaxed);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for r in readers {
            let _ = r.join();
        }
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        // (no lock held while panicking: the freed readers still record into the tally)
        let first_bad = t.examples.lock().unwrap().first().cloned();
        // Readers blocked in the mount: say why (the daemon's stderr), then let the Daemon's
        // teardown abort the connection, which frees them.
        panic!(
            "{mode}: reader threads still blocked in the mount 30 s after the writer stopped ({} reads done; {} bad so far: {:?}); daemon alive: {}; daemon stderr:\n{}",
            t.reads.load(Ordering::Relaxed),
            t.failures.load(Ordering::Relaxed),
            first_bad,
            d.is_alive(),
            d.stderr()
        );
    }
    eprintln!(
        "{mode}: writer ops {ops:?}; {} opens, {} reads, {} MiB read; errors (allowed): {:?}",
        t.opens.load(Ordering::Relaxed),
        t.reads.load(Ordering::Relaxed),
        t.bytes.load(Ordering::Relaxed) >> 20,
        t.errors.lock().unwrap()
    );
    let alive = d.is_alive();
    let err = d.stderr();
    let failures = t.failures.load(Ordering::Relaxed);
    assert!(
        failures == 0 && alive && !err.contains("panicked"),
        "{mode}: {failures} reads got bytes of another file, mixed versions or wrong offsets \
         (of {} reads); first ones:\n{}\ndaemon alive: {alive}; daemon stderr:\n{err}",
        t.reads.load(Ordering::Relaxed),
        t.examples.lock().unwrap().join("\n")
    );
    assert!(
        t.reads.load(Ordering::Relaxed) > 100,
        "{mode}: too few successful reads to mean anything; errors: {:?}",
        t.errors.lock().unwrap()
    );
}

/// Default (direct) mode, 20 s.
#[test]
fn concurrent_readers_see_one_file_one_version_direct_mode() {
    stress("direct", Duration::from_secs(20));
}

/// Keep mode (the kernel's page cache in play), 10 s.
#[test]
fn concurrent_readers_see_one_file_one_version_keep_mode() {
    stress("keep", Duration::from_secs(10));
}
