//! `nitro-uring bench ARGS` runs the `nitro-uring-bench` next to it with the same arguments (and
//! `-v` / `-q` given before `bench`), and says in one line how to build it when it is missing.
//! The benchmark itself is tested in its own package (`bench/tests/`); here a stand-in script
//! records what it was given, so nothing is mounted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory holding a copy of `nitro-uring` (alone, or with a stand-in benchmark).
fn lone_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("nitro-launch")
        .tempdir()
        .expect("tempdir");
    let bin = dir.path().join("nitro-uring");
    std::fs::copy(env!("CARGO_BIN_EXE_nitro-uring"), &bin).expect("copy nitro-uring");
    (dir, bin)
}

/// Runs `bin` as a user would: not under Cargo, so it does not try to build the benchmark.
/// ETXTBSY is retried: a test thread forking while another one still has its fresh copy of the
/// program open for writing makes the exec fail until that child execs or exits.
fn run(bin: &Path, args: &[&str]) -> Output {
    let mut tries = 0;
    loop {
        let out = Command::new(bin)
            .args(args)
            .env_remove("CARGO")
            .env_remove("CARGO_PKG_NAME")
            .env_remove("CARGO_MANIFEST_DIR")
            .output();
        match out {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.expect("run nitro-uring"),
        }
    }
}

#[test]
fn arguments_reach_the_benchmark_unchanged() {
    let (dir, bin) = lone_copy();
    let log = dir.path().join("args");
    let stand_in = dir.path().join("nitro-uring-bench");
    std::fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\nexit 7\n",
            log.display()
        ),
    )
    .expect("write stand-in");
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cases: [(&[&str], &[&str]); 4] = [
        (&["bench"], &[]),
        (&["bench", "--help"], &["--help"]),
        (
            &["-v", "-v", "bench", "--quick", "--only", "a b", "-q"],
            &["-v", "-v", "--quick", "--only", "a b", "-q"],
        ),
        (
            &["-q", "bench", "codec", "x.gguf", "--json", "o.json"],
            &["-q", "codec", "x.gguf", "--json", "o.json"],
        ),
    ];
    for (args, expected) in cases {
        let out = run(&bin, args);
        assert_eq!(
            out.status.code(),
            Some(7),
            "{args:?}: the benchmark's exit status; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read_to_string(&log).expect("stand-in ran");
        let got: Vec<&str> = got.lines().collect();
        assert_eq!(got, expected, "{args:?}");
    }
}

#[test]
fn a_missing_benchmark_is_one_line_that_says_how_to_build_it() {
    let (_dir, bin) = lone_copy();
    let out = run(&bin, &["bench", "--quick"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("nitro-uring: nitro-uring-bench not found next to ")
            && err.contains("cargo build --release --workspace"),
        "{err}"
    );
}
