//! Telling whoever started the daemon that the mount is ready: systemd through `sd_notify`
//! (when `NOTIFY_SOCKET` is set, as for a `Type=notify` service), and the parent of the mount
//! helper through a pipe (`helper.rs`). Ready means the mount *answers*: a statfs on the
//! mountpoint returns the FUSE magic, and only the daemon's own session can answer that.
//!
//! sd_notify is the datagram protocol of sd_notify(3), written here over std's `UnixDatagram`
//! (path or abstract `@` socket) rather than taken from a crate: it is one `sendto` of a few
//! `KEY=VALUE` lines, the crate would add a dependency for ten lines, and doing it ourselves keeps
//! the environment untouched (no `unsetenv` in a threaded process).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Result, anyhow};
use nitro_uring::mount::Mounted;

/// statfs `f_type` of every FUSE filesystem.
const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;

/// How long the mount may take to answer its first statfs before start-up counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

struct State {
    /// The helper's parent waits on the other end for `OK` or `ERR <message>`.
    pipe: Option<std::io::PipeWriter>,
    /// Off in a daemon the helper forked: its NOTIFY_SOCKET (if any) belongs to whoever ran
    /// mount(8), not to this process.
    sd_notify: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    pipe: None,
    sd_notify: true,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Report readiness (or the failure) to `pipe` instead of systemd.
pub fn report_to_pipe(pipe: std::io::PipeWriter) {
    let mut s = state();
    s.pipe = Some(pipe);
    s.sd_notify = false;
}

/// Called once `Mounted::spawn` has returned: waits until the mount answers, then tells systemd
/// and/or the helper's parent. An error here fails the start-up (the caller unmounts).
pub fn mounted(m: &Mounted) -> Result<()> {
    let mp = m.mountpoint();
    wait_answers(mp, ANSWER_TIMEOUT)?;
    let mut s = state();
    if s.sd_notify {
        let msg = format!(
            "READY=1\nMAINPID={}\nSTATUS=serving {}",
            std::process::id(),
            mp.display()
        );
        match sd_notify(&msg) {
            Ok(true) => tracing::debug!("told systemd READY=1"),
            Ok(false) => {}
            Err(e) => tracing::warn!("sd_notify READY=1 failed: {e}"),
        }
    }
    if let Some(mut p) = s.pipe.take() {
        // The parent may have been killed; the mount serves regardless.
        let _ = p.write_all(b"OK\n");
    }
    Ok(())
}

/// Start-up failed before `mounted`: hand the one-line reason to the helper's parent. Returns
/// whether there was a parent waiting.
pub fn failed(message: &str) -> bool {
    let Some(mut p) = state().pipe.take() else {
        return false;
    };
    let line = message.lines().next().unwrap_or("failed").trim();
    let _ = writeln!(p, "ERR {line}");
    true
}

/// Sends `state` to the socket in `NOTIFY_SOCKET`. Ok(false) when the variable is not set.
pub fn sd_notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let bytes = path.as_encoded_bytes();
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else if bytes.starts_with(b"/") {
        sock.send_to(state.as_bytes(), Path::new(&path))?;
    } else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("NOTIFY_SOCKET={} is not a unix socket path", path.display()),
        ));
    }
    Ok(true)
}

/// Waits (bounded) until a statfs of `mp` returns the FUSE magic. The statfs runs on its own
/// thread: a wedged session must fail the start-up, not hang it.
fn wait_answers(mp: &Path, timeout: Duration) -> Result<()> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let path = mp.to_path_buf();
    std::thread::Builder::new()
        .name("nitro-ready".into())
        .spawn(move || {
            let _ = tx.send(rustix::fs::statfs(&path));
        })?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(st)) if st.f_type as u64 == FUSE_SUPER_MAGIC => Ok(()),
        Ok(Ok(st)) => Err(anyhow!(
            "{} is not a FUSE mount after mounting (f_type {:#x})",
            mp.display(),
            st.f_type
        )),
        Ok(Err(e)) => Err(anyhow!(
            "the mount at {} does not answer: {e}",
            mp.display()
        )),
        Err(_) => Err(anyhow!(
            "the mount at {} did not answer within {} s",
            mp.display(),
            timeout.as_secs()
        )),
    }
}
