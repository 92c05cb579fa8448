//! The client side of the control socket: from a path under a mountpoint to a connection with
//! that mount's daemon, and the request/reply exchange (protocol in `nitro_uring::control`).
//!
//! Why the kernel's mount table decides what is a nitro-uring mount: the client must not ask the
//! daemon (a dead or hung one cannot answer), and the table names each mount's device, which
//! names its socket.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use nitro_uring::control::proto::{self, Envelope, Reply, Request};
use nitro_uring::control::sock::{self, MountInfo};

/// `path` made absolute with symlinks resolved by the kernel for this user; the part under a
/// dead mount (which cannot be resolved) is kept as written.
fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut head = abs.clone();
    let mut tail = Vec::new();
    loop {
        match std::fs::canonicalize(&head) {
            Ok(c) => return Ok(tail.iter().rev().fold(c, |p, n| p.join(n))),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
            Err(e) => bail!("{}: {}", path.display(), super::plain(&e)),
        }
        let (Some(name), Some(parent)) = (head.file_name(), head.parent()) else {
            bail!("{}: cannot be resolved", path.display());
        };
        tail.push(name.to_os_string());
        head = parent.to_path_buf();
    }
}

/// The nitro-uring mount holding `path`, and the path relative to its root.
pub fn locate(path: &Path) -> Result<(MountInfo, String)> {
    let abs = resolve(path)?;
    let m = sock::containing_mount(&abs)
        .ok_or_else(|| anyhow!("{}: not a nitro-uring mount", path.display()))?;
    if m.fstype != nitro_uring::mount::FSTYPE {
        bail!(
            "{}: not a nitro-uring mount ({} is {})",
            path.display(),
            m.mountpoint.display(),
            m.fstype
        );
    }
    let rel = abs.strip_prefix(&m.mountpoint).unwrap_or(Path::new(""));
    let rel = rel
        .to_str()
        .ok_or_else(|| {
            anyhow!(
                "{}: the control protocol takes UTF-8 paths only",
                path.display()
            )
        })?
        .to_string();
    Ok((m, rel))
}

/// Paths grouped by the mount they are on (in the order first named).
pub fn group(paths: &[PathBuf]) -> Result<Vec<(MountInfo, Vec<String>)>> {
    let mut order = Vec::new();
    let mut by: BTreeMap<PathBuf, (MountInfo, Vec<String>)> = BTreeMap::new();
    for p in paths {
        let (m, rel) = locate(p)?;
        let key = m.mountpoint.clone();
        if !by.contains_key(&key) {
            order.push(key.clone());
        }
        by.entry(key).or_insert_with(|| (m, Vec::new())).1.push(rel);
    }
    Ok(order.into_iter().filter_map(|k| by.remove(&k)).collect())
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    mountpoint: PathBuf,
    /// A reply line read in part before a timeout.
    line: String,
}

impl Client {
    /// Connects to the daemon of mount `m`, checking it is the one serving that mount.
    pub fn connect(m: &MountInfo) -> Result<Client> {
        let mp = m.mountpoint.display();
        let path = sock::path_for(m.user_id.unwrap_or(0), &m.dev);
        let stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => anyhow!(
                "{mp}: permission denied on its control socket (only the user who mounted it, or root)"
            ),
            _ => anyhow!("{mp}: daemon not answering (control socket {}: {e})", path.display()),
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let writer = stream.try_clone()?;
        let mut c = Client {
            reader: BufReader::new(stream),
            writer,
            mountpoint: m.mountpoint.clone(),
            line: String::new(),
        };
        c.send(Request::Hello)?;
        match c.next()? {
            Reply::Hello { mountpoint, .. } if Path::new(&mountpoint) == m.mountpoint => Ok(c),
            Reply::Hello { mountpoint, .. } => bail!(
                "{mp}: daemon not answering (its socket is served by the daemon of {mountpoint})"
            ),
            other => bail!("{mp}: unexpected reply {other:?}"),
        }
    }

    pub fn send(&mut self, req: Request) -> Result<()> {
        let mut text = serde_json::to_string(&Envelope {
            v: proto::VERSION,
            req,
        })?;
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| anyhow!("{}: daemon not answering ({e})", self.mountpoint.display()))
    }

    /// The next reply; an `error` reply becomes the error.
    pub fn next(&mut self) -> Result<Reply> {
        match self.next_raw()? {
            Some(Reply::Error { error }) => bail!("{}: {error}", self.mountpoint.display()),
            Some(r) => Ok(r),
            None => bail!(
                "{}: daemon not answering (it closed the connection)",
                self.mountpoint.display()
            ),
        }
    }

    /// The next reply, or None at end of file; a read timeout is `Err` of kind WouldBlock /
    /// TimedOut, for callers polling with a short timeout.
    pub fn next_raw(&mut self) -> Result<Option<Reply>> {
        loop {
            match self.reader.read_line(&mut self.line) {
                Ok(0) => return Ok(None),
                Ok(_) if self.line.ends_with('\n') => break,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let line = std::mem::take(&mut self.line);
        proto::parse_reply(line.trim())
            .map(Some)
            .map_err(|e| anyhow!("{}: {e}", self.mountpoint.display()))
    }

    pub fn set_timeout(&self, t: Duration) -> Result<()> {
        Ok(self.reader.get_ref().set_read_timeout(Some(t))?)
    }
}

/// Whether an error is a read timeout (poll again).
pub fn is_timeout(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    })
}
