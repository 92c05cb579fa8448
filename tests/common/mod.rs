//! Shared helpers for the mount integration tests: spawning the `nitro-uring` daemon, waiting for
//! its mount to appear in /proc/self/mountinfo, and tearing everything down on every exit path
//! (including panics) so that one failing test never leaves a mount behind for the next one.
//!
//! Nothing here depends on the `nitro_uring` library, so every test binary can use it.

#![allow(dead_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a test waits for a mount to appear (or disappear).
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the daemon binary cargo built for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nitro-uring")
}

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// mountinfo

/// One line of /proc/self/mountinfo, the fields the tests care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    /// st_dev of the mounted filesystem, as (major, minor).
    pub dev: (u32, u32),
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undo the octal escapes (`\040` etc.) the kernel uses in mountinfo.
fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from(std::ffi::OsStr::from_bytes(&out))
}

pub fn mountinfo() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let mut v = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 2 {
            continue;
        }
        v.push(MountEntry {
            id: pre[0].parse().unwrap_or(0),
            dev: pre[2]
                .split_once(':')
                .map(|(a, b)| (a.parse().unwrap_or(0), b.parse().unwrap_or(0)))
                .unwrap_or((0, 0)),
            mount_point: PathBuf::from(unescape(pre[4])),
            fstype: post[0].to_string(),
            source: unescape(post[1]).to_string_lossy().into_owned(),
        });
    }
    v
}

/// All mountinfo entries whose mount point is `mp`.
pub fn mounts_at(mp: &Path) -> Vec<MountEntry> {
    mountinfo()
        .into_iter()
        .filter(|e| e.mount_point == mp)
        .collect()
}

pub fn is_mounted(mp: &Path) -> bool {
    !mounts_at(mp).is_empty()
}

/// statfs f_type of every FUSE filesystem.
pub const FUSE_SUPER_MAGIC: libc::__fsword_t = 0x6573_5546;

/// `statfs(mp)` on a helper thread, bounded by `timeout` (a hung daemon must not hang the test).
/// statfs is always answered by the FUSE daemon (never from a kernel cache), so Ok — which also
/// requires the FUSE f_type — means a live FUSE mount is at `mp`; a mount left by a dead daemon
/// answers ENOTCONN, and the bare directory has another f_type.
pub fn probe_statfs(mp: &Path, timeout: Duration) -> io::Result<()> {
    let c = CString::new(mp.as_os_str().as_bytes()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        let _ = tx.send(if rc != 0 {
            Err(io::Error::last_os_error())
        } else if st.f_type != FUSE_SUPER_MAGIC {
            // e.g. the bare directory, between a stale mount's detach and the new mount
            Err(io::Error::other(format!(
                "statfs: f_type {:#x} is not FUSE",
                st.f_type
            )))
        } else {
            Ok(())
        });
    });
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "statfs on the mount did not return",
        ))
    })
}

/// Wait until a live `fuse.nitro-uring` mount is at `mp`: listed in mountinfo, and answering
/// statfs (so a stale mount of a killed daemon at the same path does not count; mount ids are
/// reused by the kernel, so they cannot tell the two apart).
pub fn wait_for_mount(mp: &Path, timeout: Duration) -> Option<MountEntry> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = mounts_at(mp)
            .into_iter()
            .find(|e| e.fstype == "fuse.nitro-uring")
        {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            if probe_statfs(mp, left).is_ok() {
                return Some(e);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until nothing is mounted at `mp`.
pub fn wait_unmounted(mp: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_mounted(mp) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `umount2(mp, MNT_DETACH)` until nothing is mounted there (bounded). Errors are ignored: this is
/// cleanup, and it must work even when the daemon is dead ("Transport endpoint is not connected").
pub fn force_unmount(mp: &Path) {
    let Ok(c) = CString::new(mp.as_os_str().as_bytes()) else {
        return;
    };
    for _ in 0..8 {
        if !is_mounted(mp) {
            return;
        }
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Belt and braces for in-process mounts: detaches whatever is still mounted at the path on drop.
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

/// Abort a FUSE connection (through fusectl, mounting it if needed): every request in flight
/// fails with ENOTCONN, which frees anything blocked on the daemon — even a daemon thread stuck
/// in the kernel.
pub fn abort_fuse_connection(dev: (u32, u32), what: &Path) {
    let ctl = Path::new("/sys/fs/fuse/connections");
    let id = (dev.0 << 20) | dev.1;
    let abort = ctl.join(id.to_string()).join("abort");
    if !abort.exists() {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(ctl)
            .stderr(Stdio::null())
            .status();
    }
    match fs::write(&abort, "1") {
        Ok(()) => eprintln!(
            "test cleanup: aborted FUSE connection {id} ({})",
            what.display()
        ),
        Err(err) => eprintln!("test cleanup: cannot abort {}: {err}", abort.display()),
    }
}

/// `abort_fuse_connection` for every mount at `mp`.
pub fn abort_fuse_connections(mp: &Path) {
    for e in mounts_at(mp) {
        abort_fuse_connection(e.dev, mp);
    }
}

/// Set once any watchdog of this test binary has fired.
pub static WATCHDOG_FIRED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Describe an I/O error on a mount, noting when it comes from a watchdog abort (i.e. the
/// operation hung).
pub fn io_context(e: &io::Error) -> String {
    if WATCHDOG_FIRED.load(std::sync::atomic::Ordering::SeqCst) && errno(e) == libc::ENOTCONN {
        format!("{e} — the operation HUNG and the test watchdog aborted the FUSE connection")
    } else {
        e.to_string()
    }
}

/// `fs::read` that panics with the path and a readable cause.
#[track_caller]
pub fn read_or_panic(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {}", p.display(), io_context(&e)))
}

/// Turns a hang into a failure: if not dropped within `limit`, aborts the FUSE connection of the
/// mount at the path (so blocked reads fail with ENOTCONN and the test fails instead of hanging
/// the suite) and SIGKILLs `pid`, if given.
pub struct Watchdog {
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    /// 90 s, or `NITRO_TEST_WATCHDOG_SECS`.
    pub fn default_limit() -> Duration {
        let secs = std::env::var("NITRO_TEST_WATCHDOG_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(90);
        Duration::from_secs(secs)
    }

    pub fn arm(mp: &Path, limit: Duration, pid: Option<i32>) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mp = mp.to_path_buf();
        thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                WATCHDOG_FIRED.store(true, std::sync::atomic::Ordering::SeqCst);
                eprintln!(
                    "watchdog: the test using {} is still running after {limit:?}; aborting its mount",
                    mp.display()
                );
                abort_fuse_connections(&mp);
                if let Some(pid) = pid {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        });
        Watchdog { stop: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// Collects a child's pipe into a shared string on a background thread.
fn collect(mut r: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// A running `nitro-uring mount` in the foreground. On drop (also during a panic): unmounts the
/// mountpoint lazily, gives the daemon a moment to exit, SIGKILLs it if it is still there, and
/// detaches anything still mounted.
pub struct Daemon {
    child: Option<Child>,
    pub mountpoint: PathBuf,
    pub source: PathBuf,
    pub mount: Option<MountEntry>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    _watchdog: Watchdog,
}

impl Daemon {
    /// Start `nitro-uring mount SOURCE MOUNTPOINT ARGS...` and wait until the mount is live.
    /// Panics with the daemon's stderr if it exits early or the mount does not show up.
    pub fn start(source: &Path, mountpoint: &Path, args: &[&str]) -> Daemon {
        match Daemon::try_start(source, mountpoint, args) {
            Ok(d) => d,
            Err(msg) => panic!("{msg}"),
        }
    }

    /// Like `start`, but returns the failure as a message instead of panicking.
    pub fn try_start(source: &Path, mountpoint: &Path, args: &[&str]) -> Result<Daemon, String> {
        Daemon::try_start_env(source, mountpoint, args, &[])
    }

    /// Like `try_start`, with extra environment variables for the daemon.
    pub fn try_start_env(
        source: &Path,
        mountpoint: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, String> {
        let mut d = Daemon::spawn_env(source, mountpoint, args, env);
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Some(e) = wait_for_mount(mountpoint, Duration::ZERO) {
                d.mount = Some(e);
                return Ok(d);
            }
            if let Some(st) = d.try_wait() {
                return Err(format!(
                    "nitro-uring mount {} {} {:?} exited with {st} before mounting; stderr:\n{}",
                    source.display(),
                    mountpoint.display(),
                    args,
                    d.stderr()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nitro-uring mount {} {} {:?}: no live fuse.nitro-uring mount at the mountpoint after {:?}; \
                     mountinfo entries there: {:?}; statfs there: {:?}; stderr:\n{}",
                    source.display(),
                    mountpoint.display(),
                    args,
                    MOUNT_TIMEOUT,
                    mounts_at(mountpoint),
                    probe_statfs(mountpoint, Duration::from_secs(1)),
                    d.stderr()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the daemon without waiting for anything.
    pub fn spawn(source: &Path, mountpoint: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn_env(source, mountpoint, args, &[])
    }

    /// Like `spawn`, with extra environment variables for the daemon.
    pub fn spawn_env(
        source: &Path,
        mountpoint: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut cmd = Command::new(bin());
        cmd.arg("mount").arg(source).arg(mountpoint).args(args);
        cmd.envs(env.iter().copied());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn nitro-uring");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stderr.take().unwrap(), stderr.clone()),
            collect(child.stdout.take().unwrap(), stdout.clone()),
        ];
        let _watchdog = Watchdog::arm(
            mountpoint,
            Watchdog::default_limit(),
            Some(child.id() as i32),
        );
        Daemon {
            _watchdog,
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            source: source.to_path_buf(),
            mount: None,
            stderr,
            stdout,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Exit status if the daemon has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.status = Some(st);
        }
        self.status
    }

    pub fn is_alive(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Wait up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the daemon to exit and for its pipes to be drained (so `stderr()` is complete).
    pub fn finish(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let st = self.wait_exit(timeout)?;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Some(st)
    }

    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}) failed: {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    fn cleanup(&mut self) {
        // remembered before detaching, in case the connection has to be aborted
        let entries = mounts_at(&self.mountpoint);
        if self.try_wait().is_none() {
            // Ask nicely first: a lazy unmount makes a healthy daemon exit on its own.
            force_unmount(&self.mountpoint);
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                }
                // A daemon thread stuck in the kernel keeps even a SIGKILLed daemon from dying
                // until its connection is aborted.
                if self.wait_exit(Duration::from_secs(3)).is_none() {
                    for e in &entries {
                        abort_fuse_connection(e.dev, &self.mountpoint);
                    }
                    let _ = self.wait_exit(Duration::from_secs(5));
                }
            }
        }
        force_unmount(&self.mountpoint);
        // The reader threads end once the child (and anything that inherited its pipes) is gone;
        // do not block the drop on them.
        self.readers.clear();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A temp dir with `src/` and `mnt/` inside; the fields drop in order, so a daemon stored in a
/// struct declared *before* the `Dirs` is torn down before the directories are removed.
pub struct Dirs {
    pub src: PathBuf,
    pub mnt: PathBuf,
    pub root: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        let root = tempfile::Builder::new()
            .prefix("nitro-mt-")
            .tempdir()
            .expect("tempdir");
        // canonical, so paths compare equal to what the kernel shows in mountinfo
        let base = root.path().canonicalize().unwrap();
        let src = base.join("src");
        let mnt = base.join("mnt");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&mnt).unwrap();
        Dirs { src, mnt, root }
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        // never let TempDir's recursive delete walk into a live mount
        force_unmount(&self.mnt);
        force_unmount(&self.src);
    }
}

/// Run `nitro-uring ARGS...` to completion (bounded by `timeout`; killed after that).
/// Returns the output, or panics if it did not finish in time.
pub fn run_cli(args: &[&OsStr], timeout: Duration) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nitro-uring");
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let r1 = collect(child.stdout.take().unwrap(), out.clone());
    let r2 = collect(child.stderr.take().unwrap(), err.clone());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = r1.join();
            let _ = r2.join();
            panic!(
                "`nitro-uring {:?}` did not exit within {timeout:?}; stderr so far:\n{}",
                args,
                String::from_utf8_lossy(&err.lock().unwrap())
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = r1.join();
    let _ = r2.join();
    let stdout = std::mem::take(&mut *out.lock().unwrap());
    let stderr = std::mem::take(&mut *err.lock().unwrap());
    Output {
        status,
        stdout,
        stderr,
    }
}

// ---------------------------------------------------------------------------------------------
// data

/// Deterministic pseudo-random bytes (splitmix64), different for every seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(seed, &mut v);
    v
}

pub fn fill_pattern(seed: u64, buf: &mut [u8]) {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for c in buf.chunks_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let b = z.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

/// Small PRNG for choosing offsets and sizes.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x2545_F491_4F6C_DD1D)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Read exactly `buf.len()` bytes at `off`, or fewer only at EOF. Returns how many were read.
pub fn pread_full(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Describe the first difference between two byte strings (for assertion messages).
pub fn first_diff(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        let common = a.len().min(b.len());
        match (0..common).find(|&i| a[i] != b[i]) {
            Some(i) => format!(
                "lengths {} vs {}; first differing byte at {i}",
                a.len(),
                b.len()
            ),
            None => format!("lengths {} vs {} (equal prefix)", a.len(), b.len()),
        }
    } else {
        match (0..a.len()).find(|&i| a[i] != b[i]) {
            Some(i) => {
                let n = a[i..].iter().zip(&b[i..]).filter(|(x, y)| x != y).count();
                format!(
                    "first differing byte at {i} of {} (got {:#04x}, want {:#04x}; {n} bytes differ from there)",
                    a.len(),
                    a[i],
                    b[i]
                )
            }
            None => "equal".to_string(),
        }
    }
}

/// Assert byte equality without dumping megabytes into the failure message.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        panic!("{what}: bytes differ: {}", first_diff(got, want));
    }
}

/// Write `data` to `path` (create/truncate) and fsync it.
pub fn write_file(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The path a mirror file has under the mountpoint.
pub fn under(mnt: &Path, rel: &str) -> PathBuf {
    mnt.join(rel)
}

/// errno of an io::Error, for assertion messages.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

pub fn errno_name(n: i32) -> String {
    let s = unsafe { std::ffi::CStr::from_ptr(libc::strerror(n)) };
    format!("{n} ({})", s.to_string_lossy())
}

// ---------------------------------------------------------------------------------------------
// hostile-input and stress tests

/// How long the hostile and stress tests wait for a mount: a fresh VM can take many seconds to set
/// up even a small pool.
pub const SLOW_MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

impl Daemon {
    /// Like `start`, but waits up to `SLOW_MOUNT_TIMEOUT` for the mount, arms the watchdog with
    /// `watchdog` instead of the default, and lets `configure` adjust the daemon's `Command` before
    /// it is spawned (e.g. a `pre_exec` hook that lowers its RLIMIT_NOFILE).
    pub fn start_with(
        source: &Path,
        mountpoint: &Path,
        args: &[&str],
        watchdog: Duration,
        configure: impl FnOnce(&mut Command),
    ) -> Daemon {
        let mut cmd = Command::new(bin());
        cmd.arg("mount").arg(source).arg(mountpoint).args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn nitro-uring");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stderr.take().unwrap(), stderr.clone()),
            collect(child.stdout.take().unwrap(), stdout.clone()),
        ];
        let _watchdog = Watchdog::arm(mountpoint, watchdog, Some(child.id() as i32));
        let mut d = Daemon {
            _watchdog,
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            source: source.to_path_buf(),
            mount: None,
            stderr,
            stdout,
            readers,
            status: None,
        };
        let deadline = Instant::now() + SLOW_MOUNT_TIMEOUT;
        loop {
            if let Some(e) = wait_for_mount(mountpoint, Duration::ZERO) {
                d.mount = Some(e);
                return d;
            }
            if let Some(st) = d.try_wait() {
                panic!(
                    "nitro-uring mount {} {} {args:?} exited with {st} before mounting; stderr:\n{}",
                    source.display(),
                    mountpoint.display(),
                    d.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "nitro-uring mount {} {} {args:?}: no live mount after {SLOW_MOUNT_TIMEOUT:?}; \
                     mountinfo entries there: {:?}; stderr:\n{}",
                    source.display(),
                    mountpoint.display(),
                    mounts_at(mountpoint),
                    d.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's VmRSS in kB, from /proc/PID/status.
    pub fn rss_kb(&self) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("read /proc/{}/status: {e}", self.pid()));
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid()))
    }

    /// Panics if the daemon died or reported a panic on stderr.
    #[track_caller]
    pub fn assert_healthy(&mut self, when: &str) {
        let alive = self.is_alive();
        let err = self.stderr();
        assert!(
            alive && !err.contains("panicked"),
            "{when}: daemon {} (stderr:\n{err})",
            if alive { "logged a panic" } else { "died" }
        );
    }
}

/// Run `f` on a helper thread and wait at most `limit` for it: a read that blocks on a hung daemon
/// fails the test (the `Daemon`'s teardown then aborts the connection, which frees the thread)
/// instead of hanging the suite.
#[track_caller]
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: did not finish within {limit:?} (hung?)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{what}: panicked on its helper thread")
        }
    }
}

/// `mount -t tmpfs none DIR`, lazily unmounted on drop (declare it before the `Daemon`, after the
/// `Dirs`).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1G,mode=0777", "none"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs on {}: {st}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}
