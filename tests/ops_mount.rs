//! Operating the daemon on real mounts: the `mount.fuse.nitro-uring` helper run directly and
//! through mount(8)/umount(8) with an fstab line (detaches once the mount answers, errors reach
//! the exit status, umount stops the daemon), bad mount options (one line, non-zero, nothing
//! mounted, no daemon left), READY=1 over a real NOTIFY_SOCKET, and `tune --mountpoint`.

mod common;
#[path = "support/proc.rs"]
mod proc;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use proc::*;

/// A first mount on a fresh VM can take many seconds.
const SLOW: Duration = Duration::from_secs(60);

fn populate(src: &Path) -> Vec<u8> {
    let data = pattern(11, 700_000);
    write_file(&src.join("model.bin"), &data);
    data
}

/// `DIR/mount.fuse.nitro-uring -> the test binary`, as `install-helper` makes it.
fn helper_link(dir: &Path) -> PathBuf {
    let link = dir.join("mount.fuse.nitro-uring");
    std::os::unix::fs::symlink(bin(), &link).unwrap();
    link
}

fn run_helper(link: &Path, args: &[&OsStr]) -> Output {
    let mut cmd = Command::new(link);
    cmd.args(args);
    run_prog(cmd, SLOW)
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The helper exited 0 with the mount already answering; returns the detached daemon.
#[track_caller]
fn assert_mounted_and_detached(out: &Output, helper_pid_hint: &str, mnt: &Path) -> DaemonPid {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{helper_pid_hint}: {}; stderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    let pid = daemon_pid_in(&stdout)
        .unwrap_or_else(|| panic!("{helper_pid_hint}: no daemon pid in stdout {stdout:?}"));
    let guard = DaemonPid {
        pid,
        mountpoint: mnt.to_path_buf(),
    };
    // Ready means ready: no waiting after the helper returned.
    assert!(
        mounts_at(mnt)
            .iter()
            .any(|e| e.fstype == "fuse.nitro-uring"),
        "{helper_pid_hint} returned but nothing is mounted at {}",
        mnt.display()
    );
    probe_statfs(mnt, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{helper_pid_hint}: the mount does not answer: {e}"));
    assert!(alive(pid), "daemon {pid} is not running");
    let (_, sid) = ppid_and_sid(pid).expect("daemon stat");
    assert_eq!(
        sid, pid,
        "the daemon did not start its own session (setsid)"
    );
    guard
}

#[track_caller]
fn assert_daemon_exits_after_umount(d: &DaemonPid, log: &Path) {
    assert!(
        wait_unmounted(&d.mountpoint, Duration::from_secs(10)),
        "still mounted: {:?}",
        mounts_at(&d.mountpoint)
    );
    assert!(
        wait_dead(d.pid, Duration::from_secs(20)),
        "daemon {} still running after the unmount; log:\n{}",
        d.pid,
        fs::read_to_string(log).unwrap_or_default()
    );
    let log_text = fs::read_to_string(log).unwrap_or_default();
    assert!(log_text.contains("MOUNT "), "log:\n{log_text}");
    assert!(log_text.contains("UNMOUNT "), "log:\n{log_text}");
}

#[test]
fn helper_mounts_detaches_serves_and_exits_on_umount() {
    let dirs = Dirs::new();
    let data = populate(&dirs.src);
    let link = helper_link(dirs.root.path());
    let log = dirs.root.path().join("daemon.log");
    let opts = format!(
        "rw,pool=64M,chunk=64KiB,readahead=1MiB,allow_other,_netdev,nofail,x-systemd.requires=a.mount,log={}",
        log.display()
    );
    let started = Instant::now();
    let out = run_helper(
        &link,
        &[
            dirs.src.as_os_str(),
            dirs.mnt.as_os_str(),
            os("-v"),
            os("-o"),
            os(&opts),
        ],
    );
    let d = assert_mounted_and_detached(&out, "mount.fuse.nitro-uring", &dirs.mnt);
    eprintln!("helper returned a ready mount in {:?}", started.elapsed());
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    let entry = mounts_at(&dirs.mnt).pop().unwrap();
    assert_eq!(entry.source, format!("nitro-uring:{}", dirs.src.display()));
    assert_bytes_eq(
        &read_or_panic(&dirs.mnt.join("model.bin")),
        &data,
        "model.bin through the helper's mount",
    );
    // umount(2) from outside, as umount(8) does: the daemon notices and exits.
    let out = run_prog(
        {
            let mut c = Command::new("umount");
            c.arg(&dirs.mnt);
            c
        },
        SLOW,
    );
    assert!(out.status.success(), "umount: {}", text(&out.stderr));
    assert_daemon_exits_after_umount(&d, &log);
}

/// Removes a socket this test bound at /dev/log.
struct DevLog(PathBuf);

impl Drop for DevLog {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Without log=, the daemon logs to syslog: datagrams to /dev/log, `<PRI>nitro-uring[PID]: line`.
/// Runs only where nothing listens on /dev/log (it binds its own socket there for the test).
#[test]
fn helper_logs_to_syslog_by_default() {
    let dev_log = Path::new("/dev/log");
    if fs::symlink_metadata(dev_log).is_ok() {
        eprintln!("skipping: /dev/log exists here (a real syslog); not taking it over");
        return;
    }
    let sock = match UnixDatagram::bind(dev_log) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipping: cannot bind /dev/log: {e}");
            return;
        }
    };
    let _cleanup = DevLog(dev_log.to_path_buf());
    sock.set_read_timeout(Some(SLOW)).unwrap();
    let dirs = Dirs::new();
    let data = populate(&dirs.src);
    let link = helper_link(dirs.root.path());
    let out = run_helper(
        &link,
        &[
            dirs.src.as_os_str(),
            dirs.mnt.as_os_str(),
            os("-v"),
            os("-o"),
            os("pool=64M,chunk=64KiB"),
        ],
    );
    let d = assert_mounted_and_detached(&out, "mount.fuse.nitro-uring (syslog)", &dirs.mnt);
    assert_eq!(read_or_panic(&dirs.mnt.join("model.bin")).len(), data.len());
    let prefix = format!("<30>nitro-uring[{}]: ", d.pid);
    let mut seen = Vec::new();
    let recv_until = |want: &str, seen: &mut Vec<String>| {
        let mut buf = [0u8; 8192];
        while !seen.iter().any(|l| l.contains(want)) {
            let n = sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {want:?} on /dev/log ({e}); got {seen:?}"));
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    recv_until("MOUNT ", &mut seen);
    assert!(
        seen.iter().all(|l| l.starts_with(&prefix)),
        "syslog lines not in the form {prefix:?}: {seen:?}"
    );
    let out = run_cli(&[os("umount"), dirs.mnt.as_os_str()], SLOW);
    assert!(out.status.success(), "{}", text(&out.stderr));
    recv_until("UNMOUNT ", &mut seen);
    assert!(
        wait_dead(d.pid, Duration::from_secs(20)),
        "daemon still running"
    );
}

/// Every bad input: non-zero exit, one line on stderr, nothing mounted, no daemon left.
#[test]
fn helper_bad_inputs_fail_with_one_line_and_leave_nothing() {
    let dirs = Dirs::new();
    populate(&dirs.src);
    let link = helper_link(dirs.root.path());
    let busy = dirs.root.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("x"), b"x").unwrap();
    let (src, mnt) = (dirs.src.as_os_str(), dirs.mnt.as_os_str());
    // Failures after the fork are also logged by the daemon: keep that log in the test's dir.
    let log = dirs.root.path().join("daemon.log");
    let with_log = |opts: &str| format!("{opts},log={}", log.display());
    let (bad_chunk, huge_pool, pool) = (
        with_log("pool=64M,chunk=3K"),
        with_log("pool=100000G"),
        with_log("pool=64M"),
    );
    let cases: Vec<(Vec<&OsStr>, &str, i32)> = vec![
        (
            vec![src, mnt, os("-o"), os("pool=64M,frobnicate")],
            "unknown mount option frobnicate",
            1,
        ),
        (
            vec![src, mnt, os("-o"), os("pool=lots")],
            "bad value pool=lots",
            1,
        ),
        (
            vec![src, mnt, os("-o"), os("cache_mode=sometimes")],
            "bad value cache_mode=sometimes (possible values: direct, keep)",
            1,
        ),
        (
            vec![src, mnt, os("-o"), os("allow_other=yes")],
            "mount option allow_other takes no value",
            1,
        ),
        (
            vec![src, mnt, os("-o"), os("pool=64M,pool=128M")],
            "mount option pool is given more than once",
            1,
        ),
        (vec![src], "SOURCE and MOUNTPOINT are needed", 1),
        (
            vec![src, mnt, os("-t"), os("ext4")],
            "fuse.nitro-uring only",
            1,
        ),
        (
            vec![
                src,
                mnt,
                os("-o"),
                os("pool=64M,log=/nonexistent/dir/n.log"),
            ],
            "log=/nonexistent/dir/n.log: does not exist",
            32,
        ),
        // Checked by the daemon after the fork; the parent reports them.
        (
            vec![src, mnt, os("-o"), os(&bad_chunk)],
            "chunk must be a power of two",
            32,
        ),
        (
            vec![src, mnt, os("-o"), os(&huge_pool)],
            "is larger than available memory",
            32,
        ),
        (
            vec![os("/nonexistent/models"), mnt, os("-o"), os(&pool)],
            "source /nonexistent/models: does not exist",
            32,
        ),
        (
            vec![src, busy.as_os_str(), os("-o"), os(&pool)],
            "is not empty",
            32,
        ),
    ];
    for (args, want, code) in &cases {
        let out = run_helper(&link, args);
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{args:?}: exit {}; stderr {err:?}",
            out.status
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: stderr:\n{err}");
        assert!(
            err.starts_with("nitro-uring: ") && err.contains(want),
            "{args:?}: stderr {err:?} does not say {want:?}"
        );
        assert!(text(&out.stdout).is_empty(), "{args:?}");
        for m in [&dirs.mnt, &busy] {
            assert!(!is_mounted(m), "{args:?} left a mount at {}", m.display());
            let left = pids_mentioning(m);
            assert!(left.is_empty(), "{args:?} left processes {left:?}");
        }
    }
    // -f (fake): everything but the mount
    let out = run_helper(&link, &[src, mnt, os("-f"), os("-o"), os("pool=64M")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!is_mounted(&dirs.mnt));
}

/// Removes the /sbin helper link on drop, if this test made it.
struct SbinLink(Option<PathBuf>);

impl Drop for SbinLink {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// `mount /mnt` with a `fuse.nitro-uring` fstab line, `umount /mnt`, and a bad option through
/// `mount -t fuse.nitro-uring`, with the helper linked into /sbin for the test.
#[test]
fn mount_8_with_an_fstab_line_and_umount_8() {
    let sbin = Path::new("/sbin");
    let link = sbin.join("mount.fuse.nitro-uring");
    if Command::new("mount").arg("--version").output().is_err() {
        eprintln!("skipping: mount(8) is not installed");
        return;
    }
    let our_bin = fs::canonicalize(bin()).unwrap();
    let _cleanup = match fs::read_link(&link) {
        Ok(t) if t == our_bin => SbinLink(None),
        Ok(_) | Err(_) if fs::symlink_metadata(&link).is_ok() => {
            eprintln!(
                "skipping: {} exists and is not this build's helper",
                link.display()
            );
            return;
        }
        _ => match std::os::unix::fs::symlink(&our_bin, &link) {
            Ok(()) => SbinLink(Some(link.clone())),
            Err(e) => {
                eprintln!("skipping: cannot link {}: {e}", link.display());
                return;
            }
        },
    };
    let dirs = Dirs::new();
    let data = populate(&dirs.src);
    let log = dirs.root.path().join("daemon.log");
    let fstab = dirs.root.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\n{} {} fuse.nitro-uring pool=64M,chunk=64KiB,allow_other,_netdev,log={} 0 0\n",
            dirs.src.display(),
            dirs.mnt.display(),
            log.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("mount");
    cmd.arg("-v").arg("--fstab").arg(&fstab).arg(&dirs.mnt);
    let out = run_prog(cmd, SLOW);
    let d = assert_mounted_and_detached(&out, "mount --fstab", &dirs.mnt);
    assert_bytes_eq(
        &read_or_panic(&dirs.mnt.join("model.bin")),
        &data,
        "model.bin through mount(8)",
    );
    let mut cmd = Command::new("umount");
    cmd.arg(&dirs.mnt);
    let out = run_prog(cmd, SLOW);
    assert!(out.status.success(), "umount: {}", text(&out.stderr));
    assert_daemon_exits_after_umount(&d, &log);

    // A bad option: mount(8) fails with the helper's one line, nothing mounted.
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "fuse.nitro-uring"])
        .arg(&dirs.src)
        .arg(&dirs.mnt)
        .args(["-o", "pool=64M,frobnicate"]);
    let out = run_prog(cmd, SLOW);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "mount with a bad option succeeded");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown mount option frobnicate"), "{err}");
    assert!(!is_mounted(&dirs.mnt));
    // A missing source: the daemon's reason reaches mount(8)'s caller.
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "fuse.nitro-uring", "/nonexistent/models"])
        .arg(&dirs.mnt)
        .arg("-o")
        .arg(format!("pool=64M,log={}", log.display()));
    let out = run_prog(cmd, SLOW);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(32), "{err}");
    assert!(
        err.contains("source /nonexistent/models: does not exist"),
        "{err}"
    );
    assert!(!is_mounted(&dirs.mnt));
}

// ---------------------------------------------------------------------------------------------
// systemd's READY=1

/// Starts `nitro-uring mount` with NOTIFY_SOCKET=`addr`, receives on `sock`, and checks that
/// READY=1 came from the daemon's pid once the mount answered.
fn ready_over(sock: &UnixDatagram, addr: &str) {
    let dirs = Dirs::new();
    let data = populate(&dirs.src);
    let mut d = Daemon::spawn_env(
        &dirs.src,
        &dirs.mnt,
        &["--pool", "64M", "--chunk", "64KiB"],
        &[("NOTIFY_SOCKET", addr)],
    );
    sock.set_read_timeout(Some(SLOW)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no notification on {addr} within {SLOW:?} ({e}); daemon stderr:\n{}",
            d.stderr()
        )
    });
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // At the moment READY=1 arrives the mount must already answer.
    probe_statfs(&dirs.mnt, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("READY=1 came but the mount does not answer: {e}"));
    let lines: Vec<&str> = msg.lines().collect();
    assert!(lines.contains(&"READY=1"), "{msg:?}");
    assert!(
        lines.contains(&format!("MAINPID={}", d.pid()).as_str()),
        "{msg:?} (daemon pid {})",
        d.pid()
    );
    assert!(
        lines.iter().any(|l| l.starts_with("STATUS=serving ")),
        "{msg:?}"
    );
    assert_bytes_eq(
        &read_or_panic(&dirs.mnt.join("model.bin")),
        &data,
        "model.bin",
    );
    d.signal(libc::SIGTERM);
    let st = d.finish(SLOW).expect("daemon exits on SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", d.stderr());
}

#[test]
fn ready_notification_on_a_path_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    ready_over(&sock, path.to_str().unwrap());
}

#[test]
fn ready_notification_on_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("nitro-uring-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    ready_over(&sock, &format!("@{name}"));
}

#[test]
fn no_ready_notification_for_a_bad_mount() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let dirs = Dirs::new();
    let mut d = Daemon::spawn_env(
        &dirs.src,
        &dirs.mnt,
        &["--pool", "64M", "--chunk", "3K"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let st = d.finish(SLOW).expect("a bad mount exits");
    assert!(!st.success());
    assert_eq!(d.stderr().lines().count(), 1, "{}", d.stderr());
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    assert!(
        sock.recv(&mut buf).is_err(),
        "a failed start sent a notification"
    );
}

// ---------------------------------------------------------------------------------------------
// tune on a live mount

#[test]
fn tune_reports_the_read_ahead_of_a_live_mount() {
    let dirs = Dirs::new();
    populate(&dirs.src);
    let mut d = Daemon::spawn(
        &dirs.src,
        &dirs.mnt,
        &["--pool", "64M", "--chunk", "64KiB", "--readahead", "4MiB"],
    );
    assert!(
        wait_for_mount(&dirs.mnt, SLOW).is_some(),
        "no mount; stderr:\n{}",
        d.stderr()
    );
    let out = run_cli(
        &[
            os("tune"),
            os("--mountpoint"),
            dirs.mnt.as_os_str(),
            os("--readahead"),
            os("4MiB"),
        ],
        SLOW,
    );
    let text_out = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text_out
        .lines()
        .find(|l| l.contains("read_ahead_kb of "))
        .unwrap_or_else(|| panic!("no read_ahead_kb line:\n{text_out}"));
    assert!(
        line.starts_with("ok ") && line.contains(" 4096 ") && line.contains(">= 4096"),
        "{line}"
    );
    // Asking for more than the mount was given: a change, with the command that makes it.
    let out = run_cli(
        &[
            os("tune"),
            os("--mountpoint"),
            dirs.mnt.as_os_str(),
            os("--readahead"),
            os("64MiB"),
        ],
        SLOW,
    );
    let text_out = text(&out.stdout);
    let line = text_out
        .lines()
        .find(|l| l.contains("read_ahead_kb of "))
        .unwrap();
    assert!(line.starts_with("change "), "{line}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.finish(SLOW).and_then(|s| s.code()), Some(0));
}

// ---------------------------------------------------------------------------------------------
// the systemd unit's system call filter against a real daemon

/// `systemd-analyze syscall-filter` groups, expanded: the system calls `tokens` allow.
fn allowed_syscalls(tokens: &[&str]) -> Option<std::collections::BTreeSet<String>> {
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .ok()?;
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut cur = None;
    for line in text(&out.stdout).lines() {
        if line.starts_with('@') {
            let name = line.split_whitespace().next()?.to_string();
            groups.insert(name.clone(), Vec::new());
            cur = Some(name);
        } else if let (Some(g), Some(word)) = (&cur, line.strip_prefix("    ")) {
            let word = word.trim();
            if !word.is_empty() && !word.starts_with('#') {
                groups.get_mut(g)?.push(word.to_string());
            }
        }
    }
    fn expand(
        name: &str,
        groups: &std::collections::HashMap<String, Vec<String>>,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        if let Some(members) = groups.get(name) {
            for m in members {
                expand(m, groups, out);
            }
        } else if !name.starts_with('@') {
            out.insert(name.to_string());
        }
    }
    let mut set = std::collections::BTreeSet::new();
    for t in tokens {
        expand(t, &groups, &mut set);
    }
    Some(set)
}

#[test]
fn systemd_unit_syscall_filter_allows_what_the_daemon_calls() {
    let have = |p: &str| Command::new(p).arg("--version").output().is_ok();
    if !have("strace") || !have("systemd-analyze") {
        eprintln!("skipping: needs strace and systemd-analyze");
        return;
    }
    let dirs = Dirs::new();
    let data = populate(&dirs.src);
    fs::create_dir(dirs.src.join("sub")).unwrap();
    std::os::unix::fs::symlink("model.bin", dirs.src.join("link")).unwrap();
    let unit = text(
        &run_cli(
            &[
                os("systemd-unit"),
                dirs.src.as_os_str(),
                dirs.mnt.as_os_str(),
            ],
            SLOW,
        )
        .stdout,
    );
    let filter = unit
        .lines()
        .find_map(|l| l.strip_prefix("SystemCallFilter="))
        .expect("the unit has a SystemCallFilter=");
    let tokens: Vec<&str> = filter.split_whitespace().collect();
    let Some(allowed) = allowed_syscalls(&tokens) else {
        eprintln!("skipping: systemd-analyze syscall-filter gave nothing");
        return;
    };
    let trace = dirs.root.path().join("trace");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-ff", "-o"])
        .arg(&trace)
        .arg(bin())
        .args(["mount"])
        .arg(&dirs.src)
        .arg(&dirs.mnt)
        .args(["--pool", "64M", "--chunk", "64KiB", "--lock"])
        .env("NOTIFY_SOCKET", dirs.root.path().join("no-listener.sock"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn strace");
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    assert!(
        wait_for_mount(&dirs.mnt, SLOW).is_some(),
        "no mount under strace"
    );
    // What a model server does: stat, list, read, follow a link, xattrs, statfs.
    assert_bytes_eq(
        &read_or_panic(&dirs.mnt.join("model.bin")),
        &data,
        "model.bin",
    );
    assert_eq!(fs::read_dir(&dirs.mnt).unwrap().count(), 3);
    fs::metadata(dirs.mnt.join("sub")).unwrap();
    assert_eq!(fs::read(dirs.mnt.join("link")).unwrap().len(), data.len());
    let c =
        std::ffi::CString::new(dirs.mnt.join("model.bin").as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: valid C string and a buffer of the length passed; the result is only a count.
    unsafe {
        libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        libc::getxattr(
            c.as_ptr(),
            c"user.none".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
    }
    probe_statfs(&dirs.mnt, Duration::from_secs(10)).unwrap();
    let out = run_cli(&[os("umount"), dirs.mnt.as_os_str()], SLOW);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + SLOW;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the traced daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut used = std::collections::BTreeSet::new();
    for e in fs::read_dir(dirs.root.path()).unwrap().flatten() {
        if !e.file_name().to_string_lossy().starts_with("trace.") {
            continue;
        }
        for line in fs::read_to_string(e.path()).unwrap().lines() {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && line[name.len()..].starts_with('(') {
                used.insert(name);
            }
        }
    }
    assert!(
        used.contains("io_uring_enter") && used.contains("mount"),
        "{used:?}"
    );
    let missing: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        missing.is_empty(),
        "the unit's SystemCallFilter= ({filter}) lacks system calls the daemon made: {missing:?}"
    );
}
