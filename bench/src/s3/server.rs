//! The S3-protocol server the S3 rows measure against when the user names none: s3s-fs (a
//! file-backed S3 implementation in Rust), started on a free port of 127.0.0.1 with a root
//! directory in the bench's temporary directory and the keys of this process's environment.
//!
//! Why a guard that kills it: the server is a child process, and every way out of the bench (an
//! error, Ctrl+C, a panic unwinding) must stop it; `PR_SET_PDEATHSIG` stops it even when the
//! bench itself is killed with SIGKILL.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Where s3s-fs is looked for when `--s3-server` is not given, after `PATH`.
pub(crate) const FALLBACK: &str = "/opt/s3s/bin/s3s-fs";

/// How to install it, for the error that says it is missing.
pub(crate) const INSTALL: &str =
    "cargo install s3s-fs --version 0.14.1 --features binary --locked --root /opt/s3s";

/// `--s3-server`, else `s3s-fs` on `PATH`, else [`FALLBACK`]; None when none of them exists.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from(FALLBACK)).filter(|p| p.is_file()))
}

/// A running s3s-fs; stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) endpoint: String,
    pub(crate) program: PathBuf,
    pub(crate) version: String,
    log: PathBuf,
}

impl Server {
    /// Starts `program` on a free port with `root` as its data directory and `bucket` made in it;
    /// returns once it accepts connections.
    pub(crate) fn start(
        program: &Path,
        root: &Path,
        bucket: &str,
        keys: (&str, &str),
    ) -> Result<Server> {
        std::fs::create_dir_all(root.join(bucket))
            .with_context(|| format!("creating {}", root.join(bucket).display()))?;
        let version = Command::new(program)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let log = root.with_extension("log");
        let out = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let err = out.try_clone()?;
        // A port the kernel just handed out and took back: free unless someone races for it.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut cmd = Command::new(program);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", keys.0, "--secret-key", keys.1])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut server = Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            program: program.to_path_buf(),
            version,
            log,
        };
        server.wait_ready(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        Ok(server)
    }

    /// Waits (10 s at most) until the port accepts a connection; fails with the server's own
    /// last lines if it exited.
    fn wait_ready(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited at start ({status}): {}",
                    self.program.display(),
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "{} did not listen on {addr} within 10 s: {}",
                    self.program.display(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's CPU time so far (user + system, seconds), from /proc.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        let stat = PathBuf::from(format!("/proc/{}/stat", self.child.id()));
        crate::sys::stat_cpu_seconds(&stat).map(|(_, s)| s)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" / ")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
