//! The control channel on real mounts (issue 11): `warm` fills inside the daemon so later reads
//! cost no fills, `warm --check` reports residency, `pin` keeps a file through a working set
//! larger than the pool and is capped, `evict` drops residency, `stats --json` numbers move with
//! reads (and say what a set prefetch did), a directory that is not a nitro-uring mount and a
//! SIGKILLed daemon each get one clear line, and `--metrics` is scraped over HTTP and parsed with a
//! Prometheus text parser.

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(120);
/// Source files younger than this are private to one open and are not warmed (RACY_WINDOW).
const RACY: Duration = Duration::from_millis(2300);

fn cli(args: &[&OsStr]) -> Output {
    run_cli(args, WAIT)
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
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

/// A failure with exactly one line on stderr; returns it.
#[track_caller]
fn one_line_failure(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what}: succeeded; stderr: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "{what}: not one line:\n{err}"
    );
    err.trim().to_string()
}

fn stats(mnt: &Path) -> serde_json::Value {
    let out = cli(&[os("stats"), mnt.as_os_str(), os("--json")]);
    let text = ok(&out, "stats --json");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("stats --json: {e}: {text}"))
}

fn num(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

/// `warm --check` of `path`: resident % per file name.
fn residency(path: &Path) -> Vec<(String, f64, bool)> {
    let out = cli(&[os("warm"), os("--check"), path.as_os_str()]);
    let text = ok(&out, "warm --check");
    text.lines()
        .skip(1)
        .filter(|l| l.contains('%') && !l.contains("file(s)"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let pct: f64 = f[0].trim_end_matches('%').parse().expect("resident %");
            let name = f.last().expect("path").to_string();
            (name, pct, f[2] == "yes")
        })
        .collect()
}

fn resident_of(path: &Path, name: &str) -> f64 {
    residency(path)
        .into_iter()
        .find(|(n, _, _)| n.ends_with(name))
        .unwrap_or_else(|| panic!("{name} not listed"))
        .1
}

#[test]
fn warm_fills_inside_the_daemon_so_reads_need_no_fills() {
    // Both ways a warm goes: the store (whole files, passthrough) and the arena (--store off).
    for store in ["none", "off"] {
        let dirs = Dirs::new();
        let big = pattern(1, 12 * MIB as usize + 777);
        let small = pattern(2, 300 * KIB as usize);
        std::fs::create_dir(dirs.src.join("m")).expect("mkdir");
        write_file(&dirs.src.join("m/model-2-of-2.bin"), &big);
        write_file(&dirs.src.join("m/model-1-of-2.bin"), &small);
        thread::sleep(RACY);
        let d = Daemon::start(&dirs.src, &dirs.mnt, &["--pool", "64M", "--store", store]);
        let before = residency(&dirs.mnt);
        assert_eq!(before.len(), 2, "{before:?}");
        assert!(
            before.iter().all(|(_, p, _)| *p == 0.0),
            "{store}: {before:?}"
        );
        // Loader order: shard 1 before shard 2.
        assert!(before[0].0.ends_with("model-1-of-2.bin"), "{before:?}");
        let s0 = stats(&dirs.mnt);
        let out = cli(&[os("warm"), dirs.mnt.join("m").as_os_str()]);
        let text = ok(&out, "warm");
        assert!(text.contains("warmed 2 file(s)"), "{text}");
        let after = residency(&dirs.mnt);
        assert!(
            after.iter().all(|(_, p, _)| *p == 100.0),
            "{store}: {after:?}"
        );
        let s1 = stats(&dirs.mnt);
        let filled = num(&s1, "fill_bytes") - num(&s0, "fill_bytes");
        assert!(
            filled >= (big.len() + small.len()) as f64,
            "{store}: filled {filled}"
        );
        assert_bytes_eq(
            &read_or_panic(&dirs.mnt.join("m/model-2-of-2.bin")),
            &big,
            "big",
        );
        assert_bytes_eq(
            &read_or_panic(&dirs.mnt.join("m/model-1-of-2.bin")),
            &small,
            "small",
        );
        let s2 = stats(&dirs.mnt);
        let more = num(&s2, "fill_bytes") - num(&s1, "fill_bytes");
        assert_eq!(
            more, 0.0,
            "{store}: reads after the warm filled {more} bytes"
        );
        assert_eq!(
            num(&s2, "reads.misses"),
            num(&s1, "reads.misses"),
            "{store}"
        );
        if store == "off" {
            // Every read went through the daemon, and hit.
            assert!(
                num(&s2, "reads.hits") > num(&s1, "reads.hits"),
                "{store}: {s2}"
            );
            assert!(num(&s2, "latency_us.hit.count") > 0.0, "{s2}");
        }
        drop(d);
    }
}

#[test]
fn pin_keeps_a_file_through_a_larger_working_set_and_is_capped() {
    let dirs = Dirs::new();
    let pinned = pattern(3, 4 * MIB as usize);
    write_file(&dirs.src.join("pinned.bin"), &pinned);
    for i in 0..4 {
        write_file(
            &dirs.src.join(format!("scan{i}.bin")),
            &pattern(10 + i, 8 * MIB as usize),
        );
    }
    write_file(&dirs.src.join("huge.bin"), &pattern(20, 13 * MIB as usize));
    thread::sleep(RACY);
    // 16 MiB of pool, arena only: the 32 MiB scan must evict.
    let _d = Daemon::start(&dirs.src, &dirs.mnt, &["--pool", "16M", "--store", "off"]);
    ok(
        &cli(&[os("pin"), dirs.mnt.join("pinned.bin").as_os_str()]),
        "pin",
    );
    // 4 MiB pinned + 13 MiB > 12 MiB (3/4 of the pool): refused, with the numbers.
    let refused = cli(&[os("pin"), dirs.mnt.join("huge.bin").as_os_str()]);
    let line = one_line_failure(&refused, "pin beyond the cap");
    assert!(
        line.contains("cap") && line.contains("12.0 MiB") && line.contains("13.0 MiB"),
        "{line}"
    );
    for round in 0..2 {
        for i in 0..4 {
            let p = dirs.mnt.join(format!("scan{i}.bin"));
            assert_eq!(read_or_panic(&p).len(), 8 * MIB as usize, "round {round}");
        }
    }
    let r = residency(&dirs.mnt);
    let get = |n: &str| r.iter().find(|(x, _, _)| x == n).cloned().expect(n);
    assert_eq!(get("pinned.bin").1, 100.0, "{r:?}");
    assert!(get("pinned.bin").2, "listed as pinned: {r:?}");
    assert!(
        get("scan0.bin").1 < 100.0,
        "the scan did not evict anything: {r:?}"
    );
    let s = stats(&dirs.mnt);
    assert!(num(&s, "evictions") > 0.0, "{s}");
    assert_eq!(num(&s, "pool.pinned_bytes"), pinned.len() as f64, "{s}");
    assert_bytes_eq(
        &read_or_panic(&dirs.mnt.join("pinned.bin")),
        &pinned,
        "pinned",
    );
    // Pinned, it cannot be evicted by hand either; unpinned, it can.
    assert!(
        !cli(&[os("evict"), dirs.mnt.join("pinned.bin").as_os_str()])
            .status
            .success()
    );
    ok(
        &cli(&[os("unpin"), dirs.mnt.join("pinned.bin").as_os_str()]),
        "unpin",
    );
    ok(
        &cli(&[os("evict"), dirs.mnt.join("pinned.bin").as_os_str()]),
        "evict",
    );
    assert_eq!(resident_of(&dirs.mnt, "pinned.bin"), 0.0);
    assert_eq!(num(&stats(&dirs.mnt), "pool.pinned_bytes"), 0.0);
}

#[test]
fn evict_drops_residency_unless_pinned() {
    let dirs = Dirs::new();
    write_file(&dirs.src.join("stored.bin"), &pattern(4, 8 * MIB as usize));
    write_file(&dirs.src.join("small.bin"), &pattern(5, 100 * KIB as usize));
    thread::sleep(RACY);
    let _d = Daemon::start(&dirs.src, &dirs.mnt, &["--pool", "64M", "--store", "none"]);
    ok(&cli(&[os("warm"), dirs.mnt.as_os_str()]), "warm");
    assert!(residency(&dirs.mnt).iter().all(|(_, p, _)| *p == 100.0));
    ok(
        &cli(&[os("pin"), dirs.mnt.join("small.bin").as_os_str()]),
        "pin",
    );
    let refused = cli(&[os("evict"), dirs.mnt.join("small.bin").as_os_str()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pinned"));
    ok(
        &cli(&[os("unpin"), dirs.mnt.join("small.bin").as_os_str()]),
        "unpin",
    );
    let text = ok(&cli(&[os("evict"), dirs.mnt.as_os_str()]), "evict");
    assert!(text.contains("store file removed"), "{text}");
    let r = residency(&dirs.mnt);
    assert!(r.iter().all(|(_, p, _)| *p == 0.0), "{r:?}");
    let s = stats(&dirs.mnt);
    assert_eq!(num(&s, "pool.store_bytes"), 0.0, "{s}");
}

#[test]
fn bad_targets_get_one_clear_line() {
    let dirs = Dirs::new();
    std::fs::create_dir(dirs.src.join("d")).expect("mkdir");
    write_file(&dirs.src.join("d/f.bin"), &pattern(6, 1000));
    std::os::unix::fs::symlink("d", dirs.src.join("dirlink")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", dirs.src.join("out")).expect("symlink");
    let plain = tempfile::tempdir().expect("tempdir");
    let line = one_line_failure(
        &cli(&[os("stats"), plain.path().as_os_str()]),
        "stats on a plain dir",
    );
    assert!(line.contains("not a nitro-uring mount"), "{line}");
    let mut d = Daemon::start(&dirs.src, &dirs.mnt, &["--pool", "16M"]);
    // The client's own path is resolved by the kernel for it: a link out of the mount leads out.
    let line = one_line_failure(
        &cli(&[os("warm"), dirs.mnt.join("out").as_os_str()]),
        "link out",
    );
    assert!(line.contains("not a nitro-uring mount"), "{line}");
    // The daemon itself follows no symlink and leaves no root: asked on the socket directly.
    let dev = d.mount.as_ref().expect("mounted").dev;
    let sock = format!("/run/nitro-uring/ctl/{}-{}.sock", dev.0, dev.1);
    for (req, want) in [
        (
            r#"{"v":1,"cmd":"warm","paths":["dirlink/f.bin"],"check":true}"#,
            "symlink",
        ),
        (
            r#"{"v":1,"cmd":"evict","paths":["../src"]}"#,
            "outside the mount",
        ),
        (r#"{"v":2,"cmd":"hello"}"#, "protocol 2"),
        (r#"{"v":1,"cmd":"frobnicate"}"#, "bad request"),
    ] {
        let reply = raw_request(&sock, req);
        assert!(
            reply.contains(r#""event":"error""#) && reply.contains(want),
            "{req}: {reply}"
        );
    }
    let hello = raw_request(&sock, r#"{"v":1,"cmd":"hello"}"#);
    assert!(
        hello.contains(r#""v":1"#) && hello.contains(r#""event":"hello""#),
        "{hello}"
    );
    let line = one_line_failure(
        &cli(&[os("warm"), dirs.mnt.join("nope").as_os_str()]),
        "missing",
    );
    assert!(line.contains("does not exist"), "{line}");
    let outside = dirs.mnt.join("..").join("src");
    let line = one_line_failure(&cli(&[os("evict"), outside.as_os_str()]), "outside");
    assert!(line.contains("not a nitro-uring mount"), "{line}");
    ok(&cli(&[os("stats"), dirs.mnt.as_os_str()]), "stats live");
    // SIGKILL: its socket stays behind, the mount is dead.
    d.signal(libc::SIGKILL);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    let line = one_line_failure(
        &cli(&[os("stats"), dirs.mnt.as_os_str()]),
        "stats, dead daemon",
    );
    assert!(line.contains("daemon not answering"), "{line}");
    drop(d);
    // A new mount there replaces the stale socket and answers.
    let _d = Daemon::start(&dirs.src, &dirs.mnt, &["--pool", "16M"]);
    let s = stats(&dirs.mnt);
    assert_eq!(num(&s, "reads.hits"), 0.0, "{s}");
}

/// One request line on the control socket at `path`, and the first reply line.
fn raw_request(path: &str, line: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    writeln!(s, "{line}").expect("send");
    let mut r = std::io::BufReader::new(s);
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut r, &mut reply).expect("reply");
    reply
}

/// The address the daemon's `METRICS http://ADDR/metrics` line names (waits for it).
fn metrics_addr(d: &Daemon) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let err = d.stderr();
        if let Some(rest) = err.split("METRICS http://").nth(1) {
            return rest.split('/').next().expect("address").to_string();
        }
        assert!(Instant::now() < deadline, "no METRICS line:\n{err}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// GET http://ADDR/metrics, the body.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    assert!(head.to_ascii_lowercase().contains("text/plain"), "{head}");
    body.to_string()
}

fn parse(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    use prometheus_parse::Value;
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("{name} {label:?} missing"));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
        Value::Summary(_) => panic!("{name} is a summary"),
    }
}

#[test]
fn metrics_are_prometheus_text_and_move_with_reads() {
    let dirs = Dirs::new();
    let data = pattern(7, 3 * MIB as usize);
    write_file(&dirs.src.join("f.bin"), &data);
    thread::sleep(RACY);
    let d = Daemon::start(
        &dirs.src,
        &dirs.mnt,
        &[
            "--pool",
            "32M",
            "--store",
            "off",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let addr = metrics_addr(&d);
    let m0 = parse(&scrape(&addr));
    let hit = Some(("result", "hit"));
    let kinds: f64 = ["raw", "compressed", "pinned", "free"]
        .iter()
        .map(|k| value(&m0, "nitro_uring_pool_bytes", Some(("kind", k))))
        .sum();
    assert_eq!(kinds, value(&m0, "nitro_uring_pool_capacity_bytes", None));
    assert_bytes_eq(&read_or_panic(&dirs.mnt.join("f.bin")), &data, "cold");
    assert_bytes_eq(&read_or_panic(&dirs.mnt.join("f.bin")), &data, "warm");
    let m1 = parse(&scrape(&addr));
    assert!(
        value(&m1, "nitro_uring_reads_total", hit) > value(&m0, "nitro_uring_reads_total", hit)
    );
    let filled = value(&m1, "nitro_uring_fill_bytes_total", None);
    assert!(filled >= data.len() as f64, "fill bytes {filled}");
    // The histogram's largest bucket (+Inf) counts every hit the counter counts.
    assert_eq!(
        value(&m1, "nitro_uring_read_duration_seconds", hit),
        value(&m1, "nitro_uring_reads_total", hit)
    );
    assert!(m1.docs.contains_key("nitro_uring_read_duration_seconds"));
}

#[test]
fn stats_and_metrics_say_what_a_set_prefetch_did() {
    // Three numbered shards: opening the first queues the other two (issue 10, part 4).
    let dirs = Dirs::new();
    let len = 3 * MIB as usize + 123;
    for k in 1..=3u64 {
        write_file(
            &dirs.src.join(format!("m-0000{k}-of-00003.gguf")),
            &pattern(k, len),
        );
    }
    thread::sleep(RACY);
    let d = Daemon::start(
        &dirs.src,
        &dirs.mnt,
        &[
            "--pool",
            "64M",
            "--store",
            "none",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let before = stats(&dirs.mnt);
    assert_eq!(num(&before, "sets.found"), 0.0, "{before}");
    let mut f = std::fs::File::open(dirs.mnt.join("m-00001-of-00003.gguf")).expect("open shard 1");
    let mut head = [0u8; 4096];
    f.read_exact(&mut head).expect("read shard 1");
    let deadline = Instant::now() + WAIT;
    let s = loop {
        let s = stats(&dirs.mnt);
        if num(&s, "sets.done") >= 1.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "set prefetch not done: {s}");
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(num(&s, "sets.found"), 1.0, "{s}");
    assert_eq!(num(&s, "sets.members_queued"), 2.0, "{s}");
    assert_eq!(num(&s, "sets.prefetched_bytes"), (2 * len) as f64, "{s}");
    assert!(num(&s, "sets.seconds") > 0.0, "{s}");
    let text = ok(&cli(&[os("stats"), dirs.mnt.as_os_str()]), "stats");
    assert!(
        text.lines()
            .any(|l| l.starts_with("sets") && l.contains("1 found, 2 member(s) queued")),
        "{text}"
    );
    let addr = metrics_addr(&d);
    let m = parse(&scrape(&addr));
    assert_eq!(value(&m, "nitro_uring_sets_found_total", None), 1.0);
    assert_eq!(value(&m, "nitro_uring_set_members_queued_total", None), 2.0);
    assert_eq!(
        value(&m, "nitro_uring_set_prefetch_bytes_total", None),
        (2 * len) as f64
    );
    assert_eq!(
        value(&m, "nitro_uring_set_prefetches_done_total", None),
        1.0
    );
    assert!(value(&m, "nitro_uring_set_prefetch_seconds_total", None) > 0.0);
    drop(f);
}

#[test]
fn a_bad_or_busy_metrics_address_mounts_nothing() {
    let dirs = Dirs::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    for bad in ["not-an-address", addr.as_str()] {
        let out = cli(&[
            os("mount"),
            dirs.src.as_os_str(),
            dirs.mnt.as_os_str(),
            os("--metrics"),
            os(bad),
        ]);
        let line = one_line_failure(&out, bad);
        assert!(
            line.contains("--metrics") || line.contains("metrics"),
            "{line}"
        );
        assert!(!is_mounted(&dirs.mnt), "{bad}: mounted anyway");
    }
}

/// Another user who can read files through the mount (`--allow-other`) still cannot drive it: the
/// control socket is 0600 in a 0700 directory and the daemon checks its peer's uid, so `stats`,
/// `warm` and `evict` from that user fail with one line and change nothing.
#[test]
fn another_user_cannot_use_the_control_socket() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let dirs = Dirs::new();
    let data = pattern(11, 8 << 20);
    write_file(&dirs.src.join("f.bin"), &data);
    for p in [dirs.root.path(), dirs.src.as_path(), dirs.mnt.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(
        dirs.src.join("f.bin"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    // A copy of the program other users may run, wherever the build tree is.
    let prog = dirs.root.path().join("nitro-uring");
    std::fs::copy(bin(), &prog).expect("copy the program");
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    thread::sleep(RACY);
    let _d = Daemon::start(&dirs.src, &dirs.mnt, &["--pool", "64M", "--allow-other"]);
    let file = dirs.mnt.join("f.bin");
    let run = |args: &[&OsStr]| -> Output {
        std::process::Command::new(&prog)
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .current_dir("/")
            .output()
            .expect("run as nobody")
    };
    // The other user can read the file itself (so the refusals below are the socket's).
    let cat = std::process::Command::new("cat")
        .arg(&file)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("cat as nobody");
    assert!(
        cat.status.success() && cat.stdout == data,
        "nobody reads the file"
    );
    // The read above admitted the file to the store: let that fill finish, so nothing moves below
    // unless the other user's commands moved it.
    let t = Instant::now();
    while num(&stats(&dirs.mnt), "fill_bytes") < data.len() as f64 {
        assert!(t.elapsed() < WAIT, "the file was never filled");
        thread::sleep(Duration::from_millis(50));
    }
    let before = stats(&dirs.mnt);
    for (args, what) in [
        (vec![os("stats"), dirs.mnt.as_os_str()], "stats"),
        (vec![os("warm"), file.as_os_str()], "warm"),
        (vec![os("evict"), file.as_os_str()], "evict"),
        (vec![os("pin"), file.as_os_str()], "pin"),
    ] {
        let line = one_line_failure(&run(&args), what);
        eprintln!("{what} as nobody: {line}");
        assert!(
            line.contains("permission denied")
                || line.contains("not allowed")
                || line.contains("refused"),
            "{what} as nobody: {line}"
        );
    }
    let after = stats(&dirs.mnt);
    for key in ["pool.pinned_bytes", "pool.store_bytes", "fill_bytes"] {
        assert_eq!(num(&before, key), num(&after, key), "{key} moved");
    }
}
