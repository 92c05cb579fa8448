//! The control commands and model-set prefetch on S3 mounts, against a real S3-protocol server
//! (moto, a separate process: tests/support/s3_server.rs), counted from both ends: the daemon's
//! fill counters (`stats --json`) and the server's own log of every GET and its range.
//!
//! What is checked, and why:
//! - `warm` of a directory of objects (one of 80 MiB) reports progress while it runs, ends 100%
//!   resident, and `warm --check` agrees; what it fetched is the objects' bytes once (fill bytes
//!   and GET bytes ≈ their size; an object outside the directory is not touched). Reading the
//!   objects afterwards fetches nothing more, byte-exact. `evict` of one object shows it 0% and a
//!   read fetches it again, byte-exact; `pin` of an evicted object fetches it and holds it (the
//!   pinned bytes in `stats`), `evict` refuses it while pinned and takes it after `unpin`. Both
//!   ways a warm fills: the store (`--store none`) and the arena (`--store off`).
//! - Opening one of four numbered shards (`x-0000k-of-00004.gguf`) and reading 1 MiB prefetches
//!   the other three from the bucket (the daemon's SET lines and SETS counters say so, the
//!   server's log shows their GETs), so reading them whole afterwards fetches < 5% of their bytes;
//!   the same for a safetensors index naming three files (through the arena, `--store off`), and
//!   a file next to the set that is not a member is never fetched. With `--prefetch-sets off`
//!   nothing but the opened shard is fetched and the set counters never move.
//!
//! Why the warm pauses the server (SIGSTOP) for 4 s: the command prints a progress line
//! every 2 s when its stderr is not a terminal, and an 80 MiB warm from a local server can end
//! sooner; a warm that lasts longer than that must report progress.
//!
//! The set counters (sets_found, set_members_queued, set_prefetch_bytes) reach a daemon's user
//! through its log only: the `SET LABEL: …` line whenever a set is found (it counts sets_found),
//! `SET LABEL done: …` when it is filled, and the heartbeat's `SETS n found, m member(s) queued,
//! x MiB prefetched` totals. The tests read those lines.
//!
//! One S3 test at a time, across test binaries too (`serial()`, tests/support/s3_mount.rs).

mod common;
#[path = "support/s3_mount.rs"]
mod s3_mount;
#[path = "support/s3_server.rs"]
mod s3_server;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use s3_mount::*;
use s3_server::*;

const PREFIX: &str = "models";
/// Bound on a daemon of these tests (a hang fails the test instead of the suite).
const WATCHDOG: Duration = Duration::from_secs(600);
/// Bound on one command, and on a wait for the daemon.
const WAIT: Duration = Duration::from_secs(120);

fn key(rel: &str) -> String {
    format!("{PREFIX}/{rel}")
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn cli(args: &[&OsStr]) -> Output {
    run_cli(args, WAIT)
}

#[track_caller]
fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One row of `warm --check`.
#[derive(Clone, Debug)]
struct Row {
    path: String,
    resident_pct: f64,
    pinned: bool,
    stored: bool,
}

/// `warm --check PATH`: one row per file, in the order printed.
fn residency(path: &Path) -> Vec<Row> {
    let out = cli(&[os("warm"), os("--check"), path.as_os_str()]);
    let text = ok(&out, "warm --check");
    text.lines()
        .skip(1)
        .filter(|l| l.contains('%') && !l.contains("file(s)"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 7, "warm --check row {l:?}");
            Row {
                path: f.last().expect("path").to_string(),
                resident_pct: f[0].trim_end_matches('%').parse().expect("resident %"),
                pinned: f[2] == "yes",
                stored: f[3] == "yes",
            }
        })
        .collect()
}

#[track_caller]
fn row<'a>(rows: &'a [Row], rel: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.path == rel)
        .unwrap_or_else(|| panic!("{rel} not listed by warm --check: {rows:?}"))
}

/// GETs of `objs` in `reads` (a slice of the server's log), and the bytes they asked for.
fn gets_of(reads: &[ObjectRead], objs: &[Obj]) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for r in reads {
        for o in objs {
            let target = format!("/{BUCKET}/{}", key(o.rel));
            if r.target == target || r.target.starts_with(&format!("{target}?")) {
                n += 1;
                bytes += r.range.map_or(o.len, |(a, b)| b + 1 - a);
            }
        }
    }
    (n, bytes)
}

fn upload(c: &S3Client, objs: &[Obj]) {
    for o in objs {
        if o.len >= 32 * MIB {
            c.put_pattern_multipart(&key(o.rel), o.seed, o.len, 16 * MIB as usize);
        } else {
            c.put(&key(o.rel), pattern(o.seed, o.len as usize));
        }
    }
}

/// Waits until the daemon's stderr satisfies `done`; returns it.
#[track_caller]
fn wait_log(d: &Daemon, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = d.stderr();
        if done(&log) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not in the daemon's log after {WAIT:?}:\n{log}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the first MiB of `o` through the mount (a loader's first look at a shard), checking it.
fn peek(mnt: &Path, o: Obj) {
    let p = mnt.join(o.rel);
    let mut f = File::open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut b = vec![0u8; MIB as usize];
    f.read_exact(&mut b)
        .unwrap_or_else(|e| panic!("read 1 MiB of {}: {}", p.display(), io_context(&e)));
    assert_bytes_eq(&b, &pattern_at(o.seed, 0, b.len()), o.rel);
}

/// `check_sequential`, with the daemon's log in the failure.
#[track_caller]
fn read_back(d: &Daemon, mnt: &Path, o: Obj, when: &str) {
    let p = mnt.join(o.rel);
    if let Err(e) = std::panic::catch_unwind(|| check_sequential(&p, o)) {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("{when}: {why}\ndaemon log:\n{}", d.stderr());
    }
}

// ---------------------------------------------------------------------------------------------
// warm, pin, evict, stats

const A: Obj = Obj {
    rel: "w/a.bin",
    seed: 41,
    len: 80 * MIB + 4321,
};
const B: Obj = Obj {
    rel: "w/b.bin",
    seed: 42,
    len: 5 * MIB + 3,
};
const C: Obj = Obj {
    rel: "w/c.json",
    seed: 43,
    len: 1234,
};
/// Under the prefix, outside the warmed directory: never fetched by these commands.
const Z: Obj = Obj {
    rel: "z.bin",
    seed: 44,
    len: 3 * MIB,
};

/// Progress lines of the warm command (`  12.5% 10.0 MiB / 85.0 MiB  0.52 GB/s  ETA 3s  [1/3]
/// w/a.bin`): their percentages, checked to be in order and within 0..=100.
fn progress_pcts(stderr: &str) -> Vec<f64> {
    let pcts: Vec<f64> = stderr
        .lines()
        .filter(|l| l.contains("ETA") && l.contains('%'))
        .map(|l| {
            let pct: f64 = l
                .trim_start()
                .split('%')
                .next()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("progress line {l:?}"));
            assert!(l.contains("/3]"), "progress line without [file/3]: {l:?}");
            pct
        })
        .collect();
    for w in pcts.windows(2) {
        assert!(w[0] <= w[1], "progress went back: {pcts:?}");
    }
    assert!(pcts.iter().all(|p| (0.0..=100.0).contains(p)), "{pcts:?}");
    pcts
}

/// `nitro-uring warm MNT/w`, with the server paused for 4 s once the first GET of the warm
/// arrived (so the warm lasts longer than the command's 2 s between progress lines).
fn warm_with_a_pause(server: &S3Server, mnt: &Path, log_from: usize) -> (Output, Duration) {
    let t = Instant::now();
    let child = Command::new(bin())
        .arg("warm")
        .arg(mnt.join("w"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nitro-uring warm");
    let waiter = thread::spawn(move || child.wait_with_output());
    let deadline = Instant::now() + WAIT;
    while gets_of(&server.object_reads()[log_from..], &[A, B, C]).0 == 0 {
        assert!(
            Instant::now() < deadline && !waiter.is_finished(),
            "the warm sent no GET (finished: {}); server log:\n{}",
            waiter.is_finished(),
            server.log_tail(20)
        );
        thread::sleep(Duration::from_millis(5));
    }
    server.pause();
    thread::sleep(Duration::from_secs(4));
    server.resume();
    let out = within(WAIT, "nitro-uring warm", move || {
        waiter.join().expect("waiter").expect("wait for warm")
    });
    (out, t.elapsed())
}

#[test]
fn warm_check_evict_pin_and_stats_on_a_bucket() {
    let _serial = serial();
    let (server, c) = server_with_bucket();
    upload(&c, &[A, B, C, Z]);
    let total = A.len + B.len + C.len;
    for store in ["none", "off"] {
        let dirs = Dirs::new();
        let mut d = mount_s3(
            &server,
            &dirs,
            PREFIX,
            &["--pool", "512M", "--store", store],
            WATCHDOG,
        );
        let w = dirs.mnt.join("w");

        // Nothing resident yet; the files in loader order.
        let r0 = residency(&w);
        let names: Vec<&str> = r0.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(names, ["w/a.bin", "w/b.bin", "w/c.json"], "{store}: {r0:?}");
        assert!(r0.iter().all(|r| r.resident_pct == 0.0), "{store}: {r0:?}");

        let s0 = stats(&dirs.mnt);
        let log0 = server.object_reads().len();
        let (out, took) = warm_with_a_pause(&server, &dirs.mnt, log0);
        let text = ok(&out, "warm");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{store}: warm took {took:?}\nstdout: {text}stderr:\n{err}");
        assert!(
            text.contains("warmed 3 file(s)") && text.contains("(100.0%)"),
            "{store}: {text}"
        );
        let pcts = progress_pcts(&err);
        assert!(
            !pcts.is_empty(),
            "{store}: a warm of {took:?} printed no progress line:\n{err}"
        );
        let r1 = residency(&w);
        assert!(
            r1.iter().all(|r| r.resident_pct == 100.0 && !r.pinned),
            "{store}: after the warm: {r1:?}"
        );
        if store == "none" {
            assert!(row(&r1, A.rel).stored, "{store}: a.bin not stored: {r1:?}");
        } else {
            assert!(r1.iter().all(|r| !r.stored), "{store}: {r1:?}");
        }

        // What the warm cost: the objects' bytes, once, from both ends.
        let s1 = stats(&dirs.mnt);
        let filled = num(&s1, "fill_bytes") - num(&s0, "fill_bytes");
        let reads = server.object_reads();
        let (gets, got) = gets_of(&reads[log0..], &[A, B, C]);
        eprintln!(
            "{store}: warm of {total} bytes: {filled} fill bytes, {gets} GETs of {got} bytes"
        );
        assert!(
            filled >= total && filled <= total + total / 20,
            "{store}: the warm filled {filled} bytes for {total}: {s1}"
        );
        assert!(
            got >= total && got <= total + total / 20,
            "{store}: the warm GOT {got} bytes ({gets} GETs) for {total}"
        );
        assert_eq!(
            gets_of(&reads, &[Z]).0,
            0,
            "{store}: z.bin (outside w/) was fetched"
        );
        assert!(num(&s1, "pool.used_bytes") >= total, "{store}: {s1}");
        assert!(
            num(&s1, "pool.used_bytes") <= num(&s1, "pool.pool_bytes"),
            "{store}: {s1}"
        );
        if store == "none" {
            assert!(num(&s1, "pool.store_bytes") >= A.len, "{store}: {s1}");
            assert!(num(&s1, "store_complete_files") >= 1, "{store}: {s1}");
        } else {
            assert_eq!(num(&s1, "pool.store_bytes"), 0, "{store}: {s1}");
        }
        assert_eq!(num(&s1, "fill_errors"), 0, "{store}: {s1}");
        // the biggest resident file is a.bin, whole
        let top = &s1["top"][0];
        assert!(
            top["name"].as_str().is_some_and(|n| n.ends_with(A.rel))
                && top["resident_bytes"].as_u64() == Some(A.len)
                && top["stored"].as_bool() == Some(store == "none"),
            "{store}: top file: {s1}"
        );

        // Reading them now fetches nothing.
        let log1 = server.object_reads().len();
        let req1 = server.requests().len();
        for o in [A, B, C] {
            read_back(&d, &dirs.mnt, o, &format!("{store}: after the warm"));
        }
        thread::sleep(Duration::from_millis(500)); // the server logs a request after answering
        let s2 = stats(&dirs.mnt);
        let refilled = num(&s2, "fill_bytes") - num(&s1, "fill_bytes");
        let (gets, got) = gets_of(&server.object_reads()[log1..], &[A, B, C]);
        let other: Vec<Request> = server.requests()[req1..].to_vec();
        eprintln!(
            "{store}: reads after the warm: {refilled} fill bytes, {gets} GETs of {got} bytes; \
             requests: {other:?}"
        );
        assert!(
            refilled <= total / 100 && got <= total / 100,
            "{store}: reading warmed objects filled {refilled} bytes and GOT {got} ({gets} GETs): {s2}"
        );
        assert!(
            other.len() <= 6,
            "{store}: reading 3 warmed objects made {} requests: {other:?}",
            other.len()
        );
        if store == "off" {
            assert!(
                num(&s2, "reads.hits") > num(&s1, "reads.hits"),
                "{store}: {s2}"
            );
            assert_eq!(
                num(&s2, "reads.misses"),
                num(&s1, "reads.misses"),
                "{store}: {s2}"
            );
        }

        // evict a.bin: 0% resident, and a read fetches it again.
        let msg = ok(
            &cli(&[os("evict"), dirs.mnt.join(A.rel).as_os_str()]),
            "evict a.bin",
        );
        eprintln!("{store}: evict: {msg}");
        let r2 = residency(&w);
        assert_eq!(row(&r2, A.rel).resident_pct, 0.0, "{store}: {r2:?}");
        assert_eq!(row(&r2, B.rel).resident_pct, 100.0, "{store}: {r2:?}");
        assert_eq!(row(&r2, C.rel).resident_pct, 100.0, "{store}: {r2:?}");
        let s3 = stats(&dirs.mnt);
        assert!(
            num(&s3, "pool.used_bytes") + A.len * 9 / 10 <= num(&s2, "pool.used_bytes"),
            "{store}: evict freed too little: {s2} -> {s3}"
        );
        let log3 = server.object_reads().len();
        read_back(&d, &dirs.mnt, A, &format!("{store}: a.bin after evict"));
        let (gets, got) = gets_of(&server.object_reads()[log3..], &[A]);
        let s4 = stats(&dirs.mnt);
        let refilled = num(&s4, "fill_bytes") - num(&s3, "fill_bytes");
        eprintln!("{store}: a.bin read after evict: {gets} GETs of {got} bytes, {refilled} filled");
        assert!(
            got >= A.len && refilled >= A.len,
            "{store}: a.bin evicted, then read: GOT {got} bytes, filled {refilled}, of {}",
            A.len
        );

        // pin of an evicted object fetches it and holds it; evict refuses it until unpin.
        ok(
            &cli(&[os("evict"), dirs.mnt.join(B.rel).as_os_str()]),
            "evict b.bin",
        );
        assert_eq!(
            row(&residency(&w), B.rel).resident_pct,
            0.0,
            "{store}: b.bin after evict"
        );
        let log5 = server.object_reads().len();
        let text = ok(
            &cli(&[os("pin"), dirs.mnt.join(B.rel).as_os_str()]),
            "pin b.bin",
        );
        assert!(
            text.contains("pinned 1 file(s)") && text.contains("(100.0%)"),
            "{store}: {text}"
        );
        let (gets, got) = gets_of(&server.object_reads()[log5..], &[B]);
        assert!(
            got >= B.len,
            "{store}: pin of evicted b.bin GOT {got} bytes ({gets} GETs) of {}",
            B.len
        );
        let r5 = residency(&w);
        let b = row(&r5, B.rel);
        assert!(
            b.pinned && b.resident_pct == 100.0,
            "{store}: after pin: {r5:?}"
        );
        assert!(!row(&r5, A.rel).pinned, "{store}: {r5:?}");
        let s5 = stats(&dirs.mnt);
        assert_eq!(num(&s5, "pool.pinned_bytes"), B.len, "{store}: {s5}");
        assert_eq!(num(&s5, "pinned_files"), 1, "{store}: {s5}");
        let refused = cli(&[os("evict"), dirs.mnt.join(B.rel).as_os_str()]);
        let why = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert!(
            !refused.status.success() && why.contains("pinned"),
            "{store}: evict of pinned b.bin: {:?} {why}",
            refused.status
        );
        assert_eq!(
            row(&residency(&w), B.rel).resident_pct,
            100.0,
            "{store}: a refused evict dropped b.bin"
        );
        read_back(&d, &dirs.mnt, B, &format!("{store}: b.bin pinned"));
        ok(
            &cli(&[os("unpin"), dirs.mnt.join(B.rel).as_os_str()]),
            "unpin b.bin",
        );
        let s6 = stats(&dirs.mnt);
        assert_eq!(num(&s6, "pool.pinned_bytes"), 0, "{store}: {s6}");
        assert_eq!(num(&s6, "pinned_files"), 0, "{store}: {s6}");
        ok(
            &cli(&[os("evict"), dirs.mnt.join(B.rel).as_os_str()]),
            "evict b.bin after unpin",
        );
        let r6 = residency(&w);
        assert!(
            row(&r6, B.rel).resident_pct == 0.0 && !row(&r6, B.rel).pinned,
            "{store}: {r6:?}"
        );
        read_back(
            &d,
            &dirs.mnt,
            B,
            &format!("{store}: b.bin after unpin and evict"),
        );
        assert_eq!(
            gets_of(&server.object_reads(), &[Z]).0,
            0,
            "{store}: z.bin was fetched"
        );
        d.assert_healthy(store);
    }
}

// ---------------------------------------------------------------------------------------------
// model sets from the bucket

const SHARD_LEN: u64 = 40 * MIB;

fn shards() -> [Obj; 4] {
    const NAMES: [&str; 4] = [
        "gguf/x-00001-of-00004.gguf",
        "gguf/x-00002-of-00004.gguf",
        "gguf/x-00003-of-00004.gguf",
        "gguf/x-00004-of-00004.gguf",
    ];
    std::array::from_fn(|i| Obj {
        rel: NAMES[i],
        seed: 60 + i as u64,
        len: SHARD_LEN + 4097 * i as u64,
    })
}

/// In the shards' directory, not a member.
const NOT_MEMBER: Obj = Obj {
    rel: "gguf/notes.bin",
    seed: 70,
    len: 4 * MIB,
};

/// The heartbeat's last `SETS n found, m member(s) queued, x MiB prefetched`, as numbers.
fn sets_totals(log: &str) -> Option<(u64, u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains("SETS "))?;
    let rest = &line[line.find("SETS ")? + 5..];
    let nums: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums.len() >= 3).then(|| (nums[0], nums[1], nums[2]))
}

/// After the set prefetch: the members' bytes came from the server once, a later read of them
/// whole fetches < 5% of them, byte-exact.
fn members_come_from_ram(server: &S3Server, d: &Daemon, mnt: &Path, members: &[Obj], store: &str) {
    let rest: u64 = members.iter().map(|o| o.len).sum();
    let (gets, got) = gets_of(&server.object_reads(), members);
    eprintln!("{store}: the set prefetch GOT {got} bytes of the members' {rest} in {gets} GETs");
    assert!(
        got >= rest,
        "{store}: the set prefetch GOT {got} bytes of the members' {rest}; daemon log:\n{}",
        d.stderr()
    );
    let log0 = server.object_reads().len();
    let s0 = stats(mnt);
    let t = Instant::now();
    for o in members {
        read_back(d, mnt, *o, store);
    }
    let took = t.elapsed();
    let s1 = stats(mnt);
    let filled = num(&s1, "fill_bytes") - num(&s0, "fill_bytes");
    let (gets, got) = gets_of(&server.object_reads()[log0..], members);
    eprintln!(
        "{store}: members read whole ({} MiB) in {took:?} after the prefetch: {gets} GETs of \
         {got} bytes, {filled} bytes filled",
        rest >> 20
    );
    assert!(
        got < rest / 20 && filled < rest / 20,
        "{store}: reading the prefetched members GOT {got} bytes ({gets} GETs) and filled \
         {filled}, of {rest} (limit 5%): {s1}\ndaemon log:\n{}",
        d.stderr()
    );
}

#[test]
fn opening_one_shard_in_the_bucket_prefetches_the_other_three() {
    let _serial = serial();
    let (server, c) = server_with_bucket();
    let set = shards();
    upload(&c, &set);
    upload(&c, &[NOT_MEMBER]);
    let dirs = Dirs::new();
    let mut d = mount_s3(
        &server,
        &dirs,
        PREFIX,
        &["--pool", "512M", "--store", "none"],
        WATCHDOG,
    );
    let t = Instant::now();
    peek(&dirs.mnt, set[0]);
    let label = "SET x-*-of-00004.gguf";
    let log = wait_log(&d, "the set prefetch done", |l| {
        l.contains(&format!("{label} done"))
    });
    eprintln!("set prefetch done {:?} after the first open", t.elapsed());
    let rest: u64 = set[1..].iter().map(|o| o.len).sum();
    assert!(
        log.contains(&format!(
            "{label}: 4 members, {} MiB queued, 0 skipped",
            rest >> 20
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("{label} done: 3 members, {} MiB in ", rest >> 20)),
        "{log}"
    );
    // The counters, as the heartbeat reports them (once a second while they move).
    let log = wait_log(&d, "SETS totals", |l| {
        sets_totals(l).is_some_and(|(_, _, mib)| mib >= rest >> 20)
    });
    assert_eq!(
        sets_totals(&log),
        Some((1, 3, rest >> 20)),
        "sets_found, set_members_queued, set_prefetch MiB:\n{log}"
    );
    members_come_from_ram(&server, &d, &dirs.mnt, &set[1..], "gguf");
    read_back(&d, &dirs.mnt, set[0], "shard 1");
    assert_eq!(
        gets_of(&server.object_reads(), &[NOT_MEMBER]).0,
        0,
        "notes.bin is not a member, and was fetched"
    );
    d.assert_healthy("end");
}

#[test]
fn a_safetensors_index_in_the_bucket_is_a_set() {
    let _serial = serial();
    let (server, c) = server_with_bucket();
    let files = [
        Obj {
            rel: "st/text.safetensors",
            seed: 81,
            len: 32 * MIB + 11,
        },
        Obj {
            rel: "st/vision.safetensors",
            seed: 82,
            len: 36 * MIB + 7,
        },
        Obj {
            rel: "st/audio.safetensors",
            seed: 83,
            len: 33 * MIB + 5,
        },
    ];
    let not_member = Obj {
        rel: "st/extra.safetensors",
        seed: 84,
        len: 6 * MIB,
    };
    upload(&c, &files);
    upload(&c, &[not_member]);
    c.put(
        &key("st/model.safetensors.index.json"),
        br#"{"metadata":{"total_size":1},"weight_map":{
            "embed.weight":"text.safetensors","layers.0.w":"text.safetensors",
            "vision.proj":"vision.safetensors","audio.conv":"audio.safetensors"}}"#
            .to_vec(),
    );
    let dirs = Dirs::new();
    // through the arena: --store off
    let mut d = mount_s3(
        &server,
        &dirs,
        PREFIX,
        &["--pool", "512M", "--store", "off"],
        WATCHDOG,
    );
    peek(&dirs.mnt, files[0]);
    let label = "SET model.safetensors.index.json";
    let log = wait_log(&d, "the set prefetch done", |l| {
        l.contains(&format!("{label} done"))
    });
    let rest: u64 = files[1..].iter().map(|o| o.len).sum();
    assert!(
        log.contains(&format!(
            "{label}: 3 members, {} MiB queued, 0 skipped",
            rest >> 20
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("{label} done: 2 members, {} MiB in ", rest >> 20)),
        "{log}"
    );
    members_come_from_ram(&server, &d, &dirs.mnt, &files[1..], "safetensors");
    read_back(&d, &dirs.mnt, files[0], "text.safetensors");
    assert_eq!(
        gets_of(&server.object_reads(), &[not_member]).0,
        0,
        "extra.safetensors is not in the index, and was fetched"
    );
    d.assert_healthy("end");
}

#[test]
fn with_prefetch_sets_off_no_other_shard_is_fetched() {
    let _serial = serial();
    let (server, c) = server_with_bucket();
    let set = shards();
    upload(&c, &set);
    let dirs = Dirs::new();
    let mut d = mount_s3(
        &server,
        &dirs,
        PREFIX,
        &[
            "--pool",
            "512M",
            "--store",
            "none",
            "--prefetch-sets",
            "off",
        ],
        WATCHDOG,
    );
    peek(&dirs.mnt, set[0]);
    // A set prefetch starts right after the open and the heartbeat logs once a second: give both
    // time to show up.
    thread::sleep(Duration::from_secs(3));
    let s = stats(&dirs.mnt);
    let log = d.stderr();
    let (gets, got) = gets_of(&server.object_reads(), &set[1..]);
    eprintln!(
        "prefetch-sets off: {gets} GETs of shards 2-4, fill bytes {}",
        num(&s, "fill_bytes")
    );
    assert!(
        !log.lines()
            .any(|l| l.split_whitespace().any(|w| w == "SET" || w == "SETS")),
        "--prefetch-sets off, and the set counters moved:\n{log}"
    );
    assert_eq!(
        (gets, got),
        (0, 0),
        "--prefetch-sets off, and shards 2-4 were fetched"
    );
    assert!(
        num(&s, "fill_bytes") <= set[0].len,
        "--prefetch-sets off: filled more than shard 1: {s}"
    );
    // The shards themselves read as usual.
    read_back(&d, &dirs.mnt, set[1], "shard 2, sets off");
    d.assert_healthy("end");
}
