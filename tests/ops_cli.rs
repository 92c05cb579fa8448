//! The operating commands that need no mount: shell completions and man pages, the systemd unit
//! (checked by `systemd-analyze verify` where it exists), `tune --check/--apply` (on a fake
//! /proc/sys and /sys tree, and once on the real one), `install-helper`; each with bad inputs:
//! one line on stderr and a non-zero exit.

mod common;
#[path = "support/proc.rs"]
mod proc;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use proc::text;

const T: Duration = Duration::from_secs(60);

fn cli(args: &[&str]) -> Output {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    run_cli(&a, T)
}

#[track_caller]
fn ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "nitro-uring {args:?}: {}; stderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Fails with exactly one line on stderr that contains `want`; returns the line.
#[track_caller]
fn one_line_error(args: &[&str], want: &str) -> String {
    let out = cli(args);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "nitro-uring {args:?} succeeded; stdout:\n{}",
        text(&out.stdout)
    );
    assert_eq!(
        err.lines().count(),
        1,
        "nitro-uring {args:?}: want one line on stderr, got:\n{err}"
    );
    assert!(
        err.starts_with("nitro-uring: ") && err.contains(want),
        "nitro-uring {args:?}: stderr {err:?} does not say {want:?}"
    );
    err
}

const SUBCOMMANDS: &[&str] = &[
    "mount",
    "umount",
    "bench",
    "tune",
    "completions",
    "man",
    "systemd-unit",
    "install-helper",
];

#[test]
fn bash_completion_names_every_subcommand_and_loads_in_bash() {
    let script = ok(&["completions", "bash"]);
    for sub in SUBCOMMANDS {
        assert!(script.contains(sub), "bash completion lacks {sub}");
    }
    // mount's flags are offered too
    assert!(script.contains("--pool") && script.contains("--cache-mode"));
    if Command::new("bash").arg("--version").output().is_err() {
        eprintln!("skipping the bash load check: no bash here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nitro-uring.bash");
    fs::write(&file, &script).unwrap();
    // Load it, find the function it registered, and ask it for the completions of
    // `nitro-uring t`.
    let probe = format!(
        "source {}; f=$(complete -p nitro-uring | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p'); \
         COMP_WORDS=(nitro-uring t); COMP_CWORD=1; COMP_LINE='nitro-uring t'; \
         COMP_POINT=${{#COMP_LINE}}; \"$f\" nitro-uring t nitro-uring; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = Command::new("bash").arg("-c").arg(&probe).output().unwrap();
    let got = text(&out.stdout);
    assert!(
        out.status.success() && got.lines().any(|l| l == "tune"),
        "bash completion of `nitro-uring t` gave {got:?}; stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn zsh_and_fish_completions_generate() {
    let zsh = ok(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef nitro-uring"), "{}", &zsh[..80]);
    assert!(zsh.contains("systemd-unit"));
    let fish = ok(&["completions", "fish"]);
    assert!(fish.contains("complete -c nitro-uring"));
    assert!(fish.contains("install-helper"));
}

#[test]
fn completions_for_an_unknown_shell_is_one_line_error() {
    let out = cli(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("tcsh"), "{err}");
}

#[test]
fn man_page_renders_with_the_operating_sections() {
    let page = ok(&["man"]);
    assert!(page.contains(".TH nitro-uring 1"), "{}", &page[..200]);
    for s in [
        ".SH FSTAB",
        ".SH SYSTEMD",
        ".SH TUNING",
        "tune",
        "systemd\\-unit",
    ] {
        assert!(page.contains(s), "man page lacks {s:?}");
    }
    // groff/man, where present, reads it without errors
    if let Ok(out) = Command::new("man")
        .env("MANWIDTH", "100")
        .args(["-l", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(page.as_bytes())?;
            c.wait_with_output()
        })
    {
        let shown = text(&out.stdout);
        assert!(out.status.success(), "man -l: {}", text(&out.stderr));
        assert!(shown.contains("fuse.nitro-uring"), "{shown}");
    } else {
        eprintln!("skipping the man -l check: no man here");
    }
}

#[test]
fn man_dir_writes_a_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let said = ok(&["man", "--dir", d]);
    assert!(said.contains("man pages into"), "{said}");
    for page in [
        "nitro-uring.1",
        "nitro-uring-mount.1",
        "nitro-uring-tune.1",
        "nitro-uring-systemd-unit.1",
    ] {
        let p = dir.path().join(page);
        let body = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(body.contains(".TH"), "{page}");
    }
    one_line_error(&["man", "--dir", "/nonexistent/man"], "does not exist");
}

// ---------------------------------------------------------------------------------------------
// systemd

fn unit_for(src: &Path, mnt: &Path, flags: &[&str]) -> String {
    let mut args = vec!["systemd-unit", src.to_str().unwrap(), mnt.to_str().unwrap()];
    args.extend_from_slice(flags);
    ok(&args)
}

fn systemd_analyze_verify(unit_text: &str, name: &str) -> Option<Output> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping systemd-analyze verify: systemd-analyze is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    fs::write(&file, unit_text).unwrap();
    // --man=no: the unit's Documentation=man:nitro-uring(1) is not installed on a test machine.
    Some(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&file)
            .output()
            .unwrap(),
    )
}

#[test]
fn systemd_unit_is_a_notify_service_that_verifies() {
    let dirs = Dirs::new();
    let unit = unit_for(&dirs.src, &dirs.mnt, &["--pool", "64M", "--allow-other"]);
    let bin = fs::canonicalize(bin()).unwrap();
    let want = [
        "Type=notify".to_string(),
        "Restart=on-failure".to_string(),
        format!(
            "ExecStart={} mount {} {} --pool 64M --allow-other",
            bin.display(),
            dirs.src.display(),
            dirs.mnt.display()
        ),
        format!("ExecStop=-{} umount {}", bin.display(), dirs.mnt.display()),
        format!(
            "RequiresMountsFor={} {}",
            dirs.src.display(),
            dirs.mnt.display()
        ),
        "DeviceAllow=/dev/fuse rw".to_string(),
        "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_DAC_READ_SEARCH CAP_IPC_LOCK".to_string(),
        "WantedBy=multi-user.target".to_string(),
    ];
    for line in &want {
        assert!(
            unit.lines().any(|l| l == line),
            "unit lacks the line {line:?}:\n{unit}"
        );
    }
    // Nothing that would give the daemon a private mount namespace (its mount would be invisible).
    for bad in [
        "PrivateMounts=",
        "PrivateTmp=",
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateDevices=",
        "PrivateUsers=",
        "ProtectKernelTunables=",
    ] {
        assert!(
            !unit.lines().any(|l| l.starts_with(bad)),
            "unit sets {bad}:\n{unit}"
        );
    }
    if let Some(out) = systemd_analyze_verify(&unit, "nitro-uring-test.service") {
        assert!(
            out.status.success(),
            "systemd-analyze verify failed ({}):\n{}{}\nunit:\n{unit}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        let said = text(&out.stderr);
        assert!(
            !said.contains("nitro-uring-test.service"),
            "systemd-analyze warns about the unit:\n{said}"
        );
    }
}

#[test]
fn systemd_unit_quotes_awkward_paths_and_they_verify() {
    let dirs = Dirs::new();
    let mnt = dirs
        .root
        .path()
        .canonicalize()
        .unwrap()
        .join("my 100% $models");
    fs::create_dir(&mnt).unwrap();
    let unit = unit_for(&dirs.src, &mnt, &["--pool", "64M"]);
    let quoted = format!("\"{}\"", mnt.display())
        .replace('%', "%%")
        .replace('$', "$$");
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(exec.contains(&quoted), "{exec}");
    let req = unit
        .lines()
        .find(|l| l.starts_with("RequiresMountsFor="))
        .unwrap();
    assert!(req.contains("100%% $models\""), "{req}");
    if let Some(out) = systemd_analyze_verify(&unit, "nitro-uring-awkward.service") {
        assert!(
            out.status.success() && !text(&out.stderr).contains("nitro-uring-awkward"),
            "systemd-analyze verify: {}{}\nunit:\n{unit}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn systemd_unit_bad_inputs_are_one_line_errors() {
    let dirs = Dirs::new();
    let (s, m) = (dirs.src.to_str().unwrap(), dirs.mnt.to_str().unwrap());
    one_line_error(
        &["systemd-unit", "/nonexistent/models", m],
        "source /nonexistent/models: does not exist",
    );
    one_line_error(
        &["systemd-unit", s, "/nonexistent/mnt"],
        "mountpoint /nonexistent/mnt: does not exist",
    );
    one_line_error(
        &["systemd-unit", s, m, "--pool", "lots"],
        "mount flags: invalid value 'lots'",
    );
    one_line_error(&["systemd-unit", s, m, "--frobnicate"], "--frobnicate");
    one_line_error(&["systemd-unit", s], "MOUNTPOINT");
    let file = dirs.src.join("f");
    fs::write(&file, b"x").unwrap();
    one_line_error(
        &["systemd-unit", file.to_str().unwrap(), m],
        "is not a directory",
    );
}

// ---------------------------------------------------------------------------------------------
// tune

const KNOBS: &[&str] = &[
    "fs.fuse.max_pages_limit",
    "FUSE passthrough",
    "io_uring",
    "transparent_hugepage/enabled",
    "transparent_hugepage/shmem_enabled",
    "RLIMIT_MEMLOCK",
    "vm.swappiness",
];

#[test]
fn tune_check_reports_every_setting_with_a_reason() {
    let out = ok(&["tune"]);
    for k in KNOBS {
        let line = out
            .lines()
            .position(|l| l.split("  ").any(|f| f.trim() == *k))
            .unwrap_or_else(|| panic!("tune --check does not list {k}:\n{out}"));
        let first = out.lines().nth(line).unwrap();
        assert!(
            ["ok ", "change ", "info "]
                .iter()
                .any(|s| first.starts_with(s)),
            "{first}"
        );
        assert!(first.contains("recommended: "), "{first}");
        let why = out.lines().nth(line + 1).unwrap_or("");
        assert!(
            why.starts_with("        ") && why.trim().len() > 20,
            "no reason under {k}: {why:?}"
        );
    }
    assert_eq!(ok(&["tune", "--check"]), out);
}

#[test]
fn tune_bad_inputs_are_one_line_errors() {
    one_line_error(&["tune", "--check", "--apply"], "cannot be used with");
    one_line_error(&["tune", "--chunk", "3K"], "--chunk must be a power of two");
    one_line_error(&["tune", "--pool", "lots"], "invalid value 'lots'");
    one_line_error(
        &["tune", "--mountpoint", "/nonexistent/mnt"],
        "is not a mount point",
    );
    // / is a mount point, but not ours
    one_line_error(&["tune", "--mountpoint", "/"], "is not a nitro-uring mount");
    let dir = tempfile::tempdir().unwrap();
    let root = fake_sysroot(dir.path(), 256, 60);
    one_line_error(
        &[
            "tune",
            "--apply",
            "--chunk",
            "4MiB",
            "--sysroot",
            root.to_str().unwrap(),
            "--sysctl-file",
            "/nonexistent/dir/60-nitro-uring.conf",
        ],
        "cannot write /nonexistent/dir/60-nitro-uring.conf",
    );
}

/// A /proc/sys, /sys and /proc/swaps tree for `tune --sysroot`.
fn fake_sysroot(base: &Path, max_pages: u64, swappiness: u64) -> std::path::PathBuf {
    let root = base.join("root");
    let w = |rel: &str, body: &str| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    };
    w(
        "proc/sys/fs/fuse/max_pages_limit",
        &format!("{max_pages}\n"),
    );
    w("proc/sys/vm/swappiness", &format!("{swappiness}\n"));
    w("proc/sys/kernel/io_uring_disabled", "0\n");
    w("proc/sys/kernel/osrelease", "6.18.0-test\n");
    w(
        "proc/swaps",
        "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1048572 0 -2\n",
    );
    w(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "always madvise [never]\n",
    );
    w(
        "sys/kernel/mm/transparent_hugepage/shmem_enabled",
        "always within_size advise [never] deny force\n",
    );
    root
}

#[test]
fn tune_apply_writes_the_sysctl_file_sets_sysctls_and_says_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_sysroot(dir.path(), 256, 60);
    let file = dir.path().join("60-nitro-uring.conf");
    let args = [
        "tune",
        "--apply",
        "--chunk",
        "4MiB",
        "--sysroot",
        root.to_str().unwrap(),
        "--sysctl-file",
        file.to_str().unwrap(),
    ];
    // --check first: three settings to change, nothing written
    let check: Vec<&str> = args
        .iter()
        .map(|a| if *a == "--apply" { "--check" } else { a })
        .collect();
    let out = ok(&check);
    assert!(out.contains("3 settings differ"), "{out}");
    assert!(!file.exists());

    let out = ok(&args);
    for line in [
        "Set fs.fuse.max_pages_limit: 256 -> 1024.",
        "Set vm.swappiness: 60 -> 10.",
        "Not changed (not a sysctl): transparent_hugepage/enabled: echo madvise > /sys/kernel/mm/transparent_hugepage/enabled",
    ] {
        assert!(out.contains(line), "--apply output lacks {line:?}:\n{out}");
    }
    assert!(out.contains(&format!("Wrote {}", file.display())), "{out}");
    let written = fs::read_to_string(&file).unwrap();
    assert!(
        written.contains("\n-fs.fuse.max_pages_limit = 1024\n"),
        "{written}"
    );
    assert!(written.contains("\nvm.swappiness = 10\n"), "{written}");
    let read = |rel: &str| fs::read_to_string(root.join(rel)).unwrap();
    assert_eq!(read("proc/sys/fs/fuse/max_pages_limit"), "1024");
    assert_eq!(read("proc/sys/vm/swappiness"), "10");

    // Idempotent: the file keeps its lines, nothing is set again.
    let again = ok(&args);
    assert!(again.contains("is up to date"), "{again}");
    assert!(
        again.contains("fs.fuse.max_pages_limit is already 1024."),
        "{again}"
    );
    assert!(!again.contains("Set "), "{again}");
    assert_eq!(fs::read_to_string(&file).unwrap(), written);
    let check = ok(&check);
    assert!(check.contains("1 setting differs"), "{check}");
}

/// Once on the real /proc/sys (root only): raising fs.fuse.max_pages_limit for 4 MiB chunks, then
/// putting the old value back.
#[test]
fn tune_apply_sets_the_real_max_pages_limit() {
    let path = Path::new("/proc/sys/fs/fuse/max_pages_limit");
    let Some(before) = fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        eprintln!("skipping: {} is not there", path.display());
        return;
    };
    if before >= 1024 || fs::OpenOptions::new().write(true).open(path).is_err() {
        eprintln!("skipping: max_pages_limit is {before} or not writable here");
        return;
    }
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = fs::write("/proc/sys/fs/fuse/max_pages_limit", self.0.to_string());
        }
    }
    let _restore = Restore(before);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("60-nitro-uring.conf");
    let out = ok(&[
        "tune",
        "--apply",
        "--chunk",
        "4MiB",
        "--sysctl-file",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.contains(&format!("Set fs.fuse.max_pages_limit: {before} -> 1024.")),
        "{out}"
    );
    assert_eq!(fs::read_to_string(path).unwrap().trim(), "1024");
    assert!(
        fs::read_to_string(&file)
            .unwrap()
            .contains("-fs.fuse.max_pages_limit = 1024")
    );
}

// ---------------------------------------------------------------------------------------------
// install-helper

#[test]
fn install_helper_links_this_binary_and_removes_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let link = dir.path().join("mount.fuse.nitro-uring");
    let said = ok(&["install-helper", "--dir", d]);
    assert!(said.starts_with("linked "), "{said}");
    assert_eq!(
        fs::read_link(&link).unwrap(),
        fs::canonicalize(bin()).unwrap()
    );
    let said = ok(&["install-helper", "--dir", d]);
    assert!(said.contains("already there"), "{said}");
    // The link runs the helper: it speaks mount(8)'s language.
    let out = Command::new(&link).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("usage: mount.fuse.nitro-uring SOURCE MOUNTPOINT"));
    let said = ok(&["install-helper", "--dir", d, "--remove"]);
    assert!(said.starts_with("removed "), "{said}");
    assert!(fs::symlink_metadata(&link).is_err());
    let said = ok(&["install-helper", "--dir", d, "--remove"]);
    assert!(said.contains("nothing to remove"), "{said}");

    fs::write(&link, b"#!/bin/sh\n").unwrap();
    one_line_error(
        &["install-helper", "--dir", d],
        "already exists and is not a symlink",
    );
    one_line_error(
        &["install-helper", "--dir", d, "--remove"],
        "is not a symlink",
    );
    one_line_error(
        &["install-helper", "--dir", "/nonexistent/sbin"],
        "does not exist",
    );
}
