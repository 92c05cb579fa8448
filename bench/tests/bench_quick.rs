//! `nitro-uring bench --quick`: the JSON is complete and sane (every workload on every target, finite
//! positive numbers, non-empty histograms, min ≤ median ≤ max over at least 3 runs per row, the
//! cold source baseline at the mount engine's queue depth), the SVG is written, and nothing is left behind — no
//! mount, no temporary directory — after a normal run or a Ctrl+C. Speed is not checked.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The two tests mount and drop caches; running them one at a time keeps both quick.
static SERIAL: Mutex<()> = Mutex::new(());

const WORKLOADS: [&str; 11] = [
    "cold-seq",
    "arena-seq",
    "pagecache-seq",
    "rand-4k-1t",
    "rand-4k-nt",
    "rand-1m-1t",
    "rand-1m-nt",
    "mmap-seq",
    "mmap-rand",
    "load-cold",
    "load-warm",
];
const TARGETS: [&str; 3] = ["source", "mount", "ceiling"];

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nitro-uring-bench")
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mount points at or below `dir` (the bench's mounts live in its work directory).
fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = dir.to_string_lossy().into_owned();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4).map(|m| m.replace("\\040", " ")))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

fn leftovers(work: &Path) -> Vec<String> {
    std::fs::read_dir(work)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("missing number '{key}' in {v}"))
}

fn positive(v: &Value, key: &str, what: &str) {
    let x = num(v, key);
    assert!(
        x.is_finite() && x > 0.0,
        "{what}: {key} = {x} is not finite and positive"
    );
}

/// A measured row's runs: at least 3, each GB/s positive, min ≤ median ≤ max matching the list.
fn check_runs(row: &Value, what: &str) {
    let runs = &row["runs"];
    let n = runs["n"].as_u64().unwrap_or(0);
    assert!(n >= 3, "{what}: {n} runs, want at least 3");
    let gbps: Vec<f64> = runs["gbps"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: runs.gbps"))
        .iter()
        .map(|v| v.as_f64().expect("run GB/s"))
        .collect();
    assert_eq!(gbps.len() as u64, n, "{what}: runs.gbps length");
    assert!(
        gbps.iter().all(|g| g.is_finite() && *g > 0.0),
        "{what}: run GB/s {gbps:?}"
    );
    let (lo, mid, hi) = (
        num(runs, "min_gbps"),
        num(runs, "median_gbps"),
        num(runs, "max_gbps"),
    );
    assert!(
        lo <= mid && mid <= hi,
        "{what}: min/median/max {lo} {mid} {hi}"
    );
    let min = gbps.iter().copied().fold(f64::INFINITY, f64::min);
    let max = gbps.iter().copied().fold(0.0, f64::max);
    assert_eq!((lo, hi), (min, max), "{what}: min/max of runs.gbps");
}

#[test]
fn quick_json_has_every_workload_on_every_target() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::Builder::new()
        .prefix("nitro-bench-test")
        .tempdir()
        .expect("tempdir");
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).expect("mkdir work");
    let json = tmp.path().join("out.json");
    let svg = tmp.path().join("out.svg");
    let t0 = Instant::now();
    let mut child = Command::new(bin())
        .args(["-q", "--quick", "--json"])
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
    let status = wait_timeout(&mut child, Duration::from_secs(180));
    // Shown when the test fails (or with --nocapture).
    for f in ["stderr", "stdout"] {
        eprintln!(
            "--- {f}\n{}",
            std::fs::read_to_string(tmp.path().join(f)).unwrap_or_default()
        );
    }
    let status = status.expect("bench --quick did not finish in 180 s");
    eprintln!("bench --quick took {:.1}s", t0.elapsed().as_secs_f64());
    assert!(status.success(), "bench --quick failed: {status}");
    assert!(
        mounts_under(tmp.path()).is_empty(),
        "left mounted: {:?}",
        mounts_under(tmp.path())
    );
    assert!(
        leftovers(&work).is_empty(),
        "left behind: {:?}",
        leftovers(&work)
    );

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
        .expect("valid JSON");
    let can_drop = doc["flags"]["drop_caches"]
        .as_bool()
        .expect("flags.drop_caches");
    assert!(
        doc["machine"]["cores"].as_u64().unwrap_or(0) > 0,
        "machine.cores"
    );
    assert!(
        !doc["machine"]["kernel"].as_str().unwrap_or("").is_empty(),
        "machine.kernel"
    );
    assert!(
        doc["files"].as_array().is_some_and(|f| !f.is_empty()),
        "files"
    );
    positive(&doc, "total_bytes", "report");
    positive(&doc["memory"], "peak_rss_bytes", "memory");
    positive(&doc["memory"], "pool_bytes", "memory");
    let rows = doc["rows"].as_array().expect("rows");
    for w in WORKLOADS {
        for t in TARGETS {
            let what = format!("{w}/{t}");
            let row = rows
                .iter()
                .find(|r| r["workload"] == w && r["target"] == t)
                .unwrap_or_else(|| panic!("no row for {what}"));
            if let Some(why) = row["skipped"].as_str() {
                assert!(
                    w.starts_with("cold") || w == "load-cold",
                    "{what} skipped ({why}); only cold rows may be"
                );
                assert!(
                    !can_drop,
                    "{what} skipped ({why}) although caches could be dropped"
                );
                continue;
            }
            for k in ["bytes", "ops", "seconds", "gbps", "ops_per_sec"] {
                positive(row, k, &what);
            }
            check_runs(row, &what);
            for k in ["cpu_s", "cpu_user_s", "cpu_sys_s"] {
                let x = num(row, k);
                assert!(x.is_finite() && x >= 0.0, "{what}: {k} = {x}");
            }
            let lat = &row["latency_ns"];
            for k in ["count", "min", "p50", "p90", "p99", "p999", "max", "mean"] {
                positive(lat, k, &what);
            }
            let p: Vec<f64> = ["min", "p50", "p90", "p99", "p999", "max"]
                .iter()
                .map(|k| num(lat, k))
                .collect();
            assert!(
                p.windows(2).all(|w| w[0] <= w[1]),
                "{what}: percentiles out of order {p:?}"
            );
            let hist = row["histogram_ns"].as_array().expect("histogram_ns");
            assert!(!hist.is_empty(), "{what}: empty histogram");
            let total: u64 = hist
                .iter()
                .map(|b| b[1].as_u64().expect("bucket count"))
                .sum();
            assert_eq!(
                total,
                lat["count"].as_u64().unwrap(),
                "{what}: histogram total != count"
            );
            assert!(
                !row["cache_mode"].as_str().unwrap_or("").is_empty(),
                "{what}: cache_mode"
            );
            if t == "mount" {
                assert!(row["mount_stats"].is_object(), "{what}: mount_stats");
            }
        }
        let ratio = doc["ratios"]
            .as_array()
            .expect("ratios")
            .iter()
            .find(|r| r["workload"] == w)
            .unwrap_or_else(|| panic!("no ratio for {w}"));
        for k in ["mount_over_source", "mount_over_ceiling"] {
            if ratio[k].is_null() {
                assert!(
                    !can_drop && (w == "cold-seq" || w == "load-cold"),
                    "{w}: {k} missing"
                );
            } else {
                positive(ratio, k, w);
            }
        }
    }
    // The cold source baseline at the mount engine's depth: its own row in cold-seq only, O_DIRECT
    // through io_uring with 1 MiB reads, and its ratio next to the buffered one.
    let qd: Vec<&Value> = rows.iter().filter(|r| r["target"] == "source-qd").collect();
    assert_eq!(qd.len(), 1, "exactly one source-qd row (cold-seq)");
    let qd = qd[0];
    assert_eq!(qd["workload"], "cold-seq");
    let cold_ratio = doc["ratios"]
        .as_array()
        .expect("ratios")
        .iter()
        .find(|r| r["workload"] == "cold-seq")
        .expect("cold-seq ratio");
    if let Some(why) = qd["skipped"].as_str() {
        assert!(
            !can_drop,
            "source-qd skipped ({why}) although caches could be dropped"
        );
        assert!(cold_ratio["mount_over_source_same_depth"].is_null());
    } else {
        let access = qd["access"].as_str().unwrap_or("");
        assert!(
            access.contains("io_uring") && access.contains("64 ×"),
            "source-qd access: {access}"
        );
        assert_eq!(
            qd["block_bytes"].as_u64(),
            doc["flags"]["chunk_bytes"].as_u64(),
            "source-qd reads in the mount's chunk size"
        );
        for k in ["bytes", "ops", "seconds", "gbps"] {
            positive(qd, k, "cold-seq/source-qd");
        }
        check_runs(qd, "cold-seq/source-qd");
        assert_eq!(
            num(qd, "bytes"),
            num(&doc, "total_bytes") * num(&qd["runs"], "n"),
            "source-qd reads every byte once per run"
        );
        positive(cold_ratio, "mount_over_source_same_depth", "cold-seq");
    }
    for r in doc["ratios"].as_array().expect("ratios") {
        if r["workload"] != "cold-seq" {
            assert!(
                r["mount_over_source_same_depth"].is_null(),
                "{}: same-depth ratio outside cold-seq",
                r["workload"]
            );
        }
    }

    // The repeat rows (a file larger than the pool, read again and again): a source and a mount
    // row per pass, and per pass what the device and the daemon read in every round.
    let repeat: Vec<&Value> = rows
        .iter()
        .filter(|r| r["workload"].as_str().unwrap_or("").starts_with("repeat"))
        .collect();
    if !can_drop {
        assert!(
            repeat.iter().all(|r| r["skipped"].is_string()),
            "repeat rows ran without dropped caches"
        );
    } else {
        let rp = &doc["repeat"];
        let passes = rp["passes"].as_u64().expect("repeat.passes") as usize;
        let rounds = rp["rounds"].as_u64().expect("repeat.rounds") as usize;
        let size = num(rp, "size_bytes");
        assert!(passes >= 3 && rounds >= 3, "{rp}");
        assert!(
            num(rp, "pool_bytes") < size,
            "the pool must be smaller than the file: {rp}"
        );
        for k in 1..=passes {
            for t in ["source", "mount"] {
                let what = format!("repeat-pass{k}/{t}");
                let row = repeat
                    .iter()
                    .find(|r| r["workload"] == format!("repeat-pass{k}") && r["target"] == t)
                    .unwrap_or_else(|| panic!("no row for {what}"));
                check_runs(row, &what);
                assert_eq!(num(row, "bytes"), size * rounds as f64, "{what} bytes");
                if t == "mount" {
                    assert!(row["mount_stats"].is_object(), "{what}: mount_stats");
                }
            }
            let p = &rp["per_pass"][k - 1];
            assert_eq!(p["pass"].as_u64(), Some(k as u64), "{p}");
            for key in ["fill_bytes", "seconds", "expected_seconds", "over_expected"] {
                let v = p[key].as_array().unwrap_or_else(|| panic!("{key}: {p}"));
                assert_eq!(v.len(), rounds, "{key}: {p}");
                assert!(
                    v.iter()
                        .all(|x| x.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0)),
                    "{key}: {p}"
                );
            }
            let dev = p["device_read_bytes"]
                .as_array()
                .expect("device_read_bytes");
            assert!(dev.is_empty() || dev.len() == rounds, "{p}");
        }
        // The first pass of a fresh mount misses everything: the daemon fills the whole file.
        for f in rp["per_pass"][0]["fill_bytes"].as_array().expect("fills") {
            assert!(
                f.as_f64().unwrap_or(0.0) >= size,
                "pass 1 filled {f} of {size}"
            );
        }
        for which in ["cold", "warm"] {
            check_runs(
                rows.iter()
                    .find(|r| r["workload"] == format!("repeat-rate-{which}"))
                    .unwrap_or_else(|| panic!("no repeat-rate-{which} row")),
                which,
            );
            positive(&rp[format!("{which}_gbps")], "median_gbps", which);
        }
    }

    // The pagecache row runs the mount in keep mode, every other FUSE row in direct mode.
    let mode = |w: &str| {
        rows.iter()
            .find(|r| r["workload"] == w && r["target"] == "mount")
            .and_then(|r| r["cache_mode"].as_str())
            .map(str::to_string)
    };
    assert_eq!(mode("pagecache-seq").as_deref(), Some("keep"));
    assert_eq!(mode("arena-seq").as_deref(), Some("direct"));

    let plot = std::fs::read_to_string(&svg).expect("svg written");
    assert!(plot.starts_with("<svg"), "svg header");
    assert!(plot.contains("<polyline"), "svg has lines");
    assert!(plot.trim_end().ends_with("</svg>"), "svg closed");
}

#[test]
fn ctrl_c_unmounts_and_removes_the_temporary_directory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::Builder::new()
        .prefix("nitro-bench-int")
        .tempdir()
        .expect("tempdir");
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).expect("mkdir work");
    // Long timed rows, so the interrupt lands while the mounts are up.
    let mut child = Command::new(bin())
        .args(["-q", "--quick", "--seconds", "5", "--dir"])
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn nitro-uring bench");
    let t0 = Instant::now();
    while mounts_under(&work).len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the bench never mounted anything"
        );
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "bench exited before mounting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status =
        wait_timeout(&mut child, Duration::from_secs(60)).expect("bench did not exit after SIGINT");
    assert!(!status.success(), "an interrupted bench must not exit 0");
    assert!(
        mounts_under(&work).is_empty(),
        "left mounted: {:?}",
        mounts_under(&work)
    );
    assert!(
        leftovers(&work).is_empty(),
        "left behind: {:?}",
        leftovers(&work)
    );
}
