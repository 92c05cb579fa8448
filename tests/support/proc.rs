//! Running a program to completion in a test when it may leave a detached daemon behind (the mount
//! helper): bounded waits for the exit *and* for its stdout/stderr to close (a daemon that kept
//! them open would otherwise hang the test), and a guard for the daemon's pid.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` with stdin closed; panics if it does not exit within `timeout`, or if its stdout or
/// stderr are still open 10 s after it exited.
pub fn run_prog(mut cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel::<(bool, Vec<u8>)>();
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t1 = tx.clone();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        let _ = t1.send((true, v));
    });
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        let _ = tx.send((false, v));
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not exit within {timeout:?}");
            }
        }
    };
    let (mut stdout, mut stderr) = (None, None);
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((true, v)) => stdout = Some(v),
            Ok((false, v)) => stderr = Some(v),
            Err(_) => panic!(
                "{what} exited ({status}) but its stdout/stderr stayed open: a process it started \
                 kept them (a daemon that did not detach its stdio)"
            ),
        }
    }
    Output {
        status,
        stdout: stdout.unwrap_or_default(),
        stderr: stderr.unwrap_or_default(),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// (ppid, session id) of `pid`.
pub fn ppid_and_sid(pid: i32) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let f: Vec<&str> = rest.split(' ').collect();
    // state ppid pgrp session ...
    Some((f.get(1)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// Pids whose command line mentions `needle` (e.g. a test's unique mountpoint).
pub fn pids_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || !alive(pid) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && cmd.windows(needle.len()).any(|w| w == needle)
        {
            v.push(pid);
        }
    }
    v
}

pub fn wait_dead(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A detached daemon found by pid: on drop, anything still at `mountpoint` is detached and the
/// daemon, if it does not exit by itself, is killed.
pub struct DaemonPid {
    pub pid: i32,
    pub mountpoint: PathBuf,
}

impl Drop for DaemonPid {
    fn drop(&mut self) {
        if alive(self.pid) {
            let c = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
                .unwrap_or_default();
            // SAFETY: test cleanup with a valid C string; a failure only means nothing was there.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if !wait_dead(self.pid, Duration::from_secs(5)) {
                // SAFETY: signalling a pid we started.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
        }
    }
}

/// The pid in "... (daemon pid N)" that the helper prints with -v.
pub fn daemon_pid_in(stdout: &str) -> Option<i32> {
    let rest = stdout.split("(daemon pid ").nth(1)?;
    rest.split(')').next()?.parse().ok()
}
