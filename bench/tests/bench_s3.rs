//! `nitro-uring bench --only s3`: against an s3s-fs the bench starts itself, the JSON has the cold
//! rows (the object_store baseline, the mount with `--store none` and with `--store off`) and the
//! warm rows of every read shape, each with its runs, the byte checks pass, and nothing is left
//! behind — no mount, no temporary directory, no server process. Speed is not checked.
//!
//! Needs s3s-fs (`cargo install s3s-fs --version 0.14.1 --features binary --locked --root
//! /opt/s3s`, which `.ci/run` does); without it the test fails and says how to install it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nitro-uring-bench")
}

/// s3s-fs where the bench looks for it: on PATH, else /opt/s3s/bin.
fn s3s_fs() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/opt/s3s/bin/s3s-fs")).filter(|p| p.is_file()))
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = dir.to_string_lossy().into_owned();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4).map(|m| m.replace("\\040", " ")))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

/// Processes whose command line names `dir` (the server's root is below it).
fn processes_naming(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&dir))
        .collect()
}

fn runs(row: &Value, what: &str) -> u64 {
    let n = row["runs"]["n"].as_u64().unwrap_or(0);
    assert!(n >= 3, "{what}: {n} runs, want at least 3");
    let g = row["runs"]["median_gbps"].as_f64().unwrap_or(0.0);
    assert!(g.is_finite() && g > 0.0, "{what}: median GB/s {g}");
    n
}

#[test]
fn s3_rows_against_a_server_the_bench_starts() {
    let Some(server) = s3s_fs() else {
        panic!(
            "s3s-fs is not installed (not on PATH, not /opt/s3s/bin/s3s-fs): run .ci/run, or \
             `cargo install s3s-fs --version 0.14.1 --features binary --locked --root /opt/s3s`"
        );
    };
    let tmp = tempfile::Builder::new()
        .prefix("nitro-bench-s3")
        .tempdir()
        .expect("tempdir");
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).expect("mkdir work");
    let json = tmp.path().join("out.json");
    let svg = tmp.path().join("out.svg");
    let t0 = Instant::now();
    let mut child = Command::new(bin())
        .args(["-q", "--only", "s3", "--s3-sizes", "16MiB", "--rounds", "3"])
        .args(["--seconds", "0.3", "--s3-server"])
        .arg(&server)
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .arg("--dir")
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(tmp.path().join("stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(tmp.path().join("stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn nitro-uring bench");
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if t0.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for f in ["stderr", "stdout"] {
        eprintln!(
            "--- {f}\n{}",
            std::fs::read_to_string(tmp.path().join(f)).unwrap_or_default()
        );
    }
    let status = status.expect("bench --only s3 did not finish in 180 s");
    assert!(status.success(), "bench --only s3 failed: {status}");
    assert!(mounts_under(tmp.path()).is_empty(), "left mounted");
    let left: Vec<_> = std::fs::read_dir(&work)
        .expect("work dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        processes_naming(&work).is_empty(),
        "server still running: {:?}",
        processes_naming(&work)
    );

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
        .expect("valid JSON");
    let s3 = &doc["s3"];
    assert!(s3.is_object(), "no s3 section");
    assert!(
        s3["endpoint"]
            .as_str()
            .unwrap_or("")
            .starts_with("http://127.0.0.1:"),
        "endpoint {}",
        s3["endpoint"]
    );
    assert_eq!(s3["concurrency"].as_u64(), Some(32), "the mount's default");
    assert_eq!(
        s3["part_bytes"].as_u64(),
        Some(8 << 20),
        "the mount's default"
    );
    let size = &s3["sizes"][0];
    assert_eq!(size["size_bytes"].as_u64(), Some(16 << 20));
    assert_eq!(
        size["byte_exact_first_read"], true,
        "bytes through the mount"
    );
    assert_eq!(
        size["byte_exact_passthrough"], true,
        "bytes through passthrough"
    );
    assert!(
        size["passthrough_opens"].as_u64().unwrap_or(0) > 0,
        "warm rows re-open with passthrough"
    );
    for k in [
        "cold_mount_over_get",
        "cold_arena_over_get",
        "cold_mount_over_get_in_memory",
        "cold_arena_over_get_in_memory",
    ] {
        let r = size[k].as_f64().unwrap_or(0.0);
        assert!(r.is_finite() && r > 0.0, "{k} = {r}");
    }
    let rows = doc["rows"].as_array().expect("rows");
    let row = |w: &str, t: &str| {
        rows.iter()
            .find(|r| r["workload"] == w && r["target"] == t)
            .unwrap_or_else(|| panic!("no row {w}/{t}"))
    };
    let get = row("s3-16MiB-cold", "source");
    runs(get, "cold/source");
    assert!(
        get["access"]
            .as_str()
            .unwrap_or("")
            .contains("32 × 8.0 MiB"),
        "baseline at the mount's concurrency and part size: {}",
        get["access"]
    );
    assert_eq!(
        get["bytes"].as_u64(),
        Some(3 * (16 << 20)),
        "the baseline fetches every byte once per run"
    );
    let kept = row("s3-16MiB-cold", "source-ram");
    let n = runs(kept, "cold/source-ram");
    assert_eq!(
        kept["bytes"].as_u64(),
        Some(n * (16 << 20)),
        "source-ram bytes"
    );
    for t in ["mount", "mount-arena"] {
        let r = row("s3-16MiB-cold", t);
        let n = runs(r, t);
        assert_eq!(r["bytes"].as_u64(), Some(n * (16 << 20)), "{t} bytes");
        assert!(r["mount_stats"].is_object(), "{t}: mount_stats");
    }
    for shape in ["seq-1m", "seq-128k", "mmap"] {
        for t in ["source", "mount"] {
            runs(row(&format!("s3-16MiB-warm-{shape}"), t), shape);
        }
        let v = size["warm_mount_over_local"][shape].as_f64().unwrap_or(0.0);
        assert!(v.is_finite() && v > 0.0, "warm ratio {shape} = {v}");
    }
    // Nothing but S3 rows: the default rows need no data here.
    assert!(
        rows.iter()
            .all(|r| r["workload"].as_str().unwrap_or("").starts_with("s3-")),
        "only S3 rows"
    );
    let plot = std::fs::read_to_string(&svg).expect("svg written");
    assert!(plot.contains("<polyline"), "svg has lines");
}
