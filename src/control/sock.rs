//! Where a mount's control socket lives, and who may talk to it.
//!
//! Why the name comes from the mount's device number: the kernel gives every live FUSE mount its
//! own anonymous device (`0:57`), which anyone can read from /proc/self/mountinfo without asking
//! the daemon (a hung daemon cannot hang the lookup). So a client needs only the mountpoint. The
//! number is reused after the mount goes, so a socket left by a SIGKILLed daemon may carry the
//! name of a later mount: the new daemon replaces it at start, and a client that finds a socket
//! nobody accepts on says "daemon not answering".
//!
//! Why a 0700 directory of the mounting user and a peer-credential check: the daemon often runs
//! as root and acts on what it is told; only the user who mounted (or root) may tell it.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Root's sockets: /run/nitro-uring/ctl/<major>-<minor>.sock.
pub const ROOT_DIR: &str = "/run/nitro-uring/ctl";

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// The socket directory of the user with id `uid` (the one who mounted).
pub fn dir_for(uid: u32) -> PathBuf {
    if uid == 0 {
        return PathBuf::from(ROOT_DIR);
    }
    let runtime = PathBuf::from(format!("/run/user/{uid}"));
    if runtime.is_dir() {
        runtime.join("nitro-uring-ctl")
    } else {
        PathBuf::from(format!("/tmp/nitro-uring-{uid}-ctl"))
    }
}

/// The socket path of the mount whose device is `dev` ("0:57").
pub fn path_for(uid: u32, dev: &str) -> PathBuf {
    dir_for(uid).join(format!("{}.sock", dev.replace(':', "-")))
}

/// A mount as /proc/self/mountinfo lists it.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub dev: String,
    pub fstype: String,
    /// FUSE mounts: the `user_id=` of the mounting user.
    pub user_id: Option<u32>,
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn parse_line(line: &str) -> Option<MountInfo> {
    let (pre, post) = line.split_once(" - ")?;
    let pre: Vec<&str> = pre.split(' ').collect();
    let post: Vec<&str> = post.split(' ').collect();
    let user_id = post
        .get(2)?
        .split(',')
        .find_map(|o| o.strip_prefix("user_id=")?.parse().ok());
    Some(MountInfo {
        mountpoint: PathBuf::from(unescape(pre.get(4)?)),
        dev: pre.get(2)?.to_string(),
        fstype: post.first()?.to_string(),
        user_id,
    })
}

/// The mount holding `path` (already absolute and free of symlinks): the last-mounted one whose
/// mountpoint is the longest prefix of it.
pub fn containing_mount(path: &Path) -> Option<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<MountInfo> = None;
    for m in text.lines().filter_map(parse_line) {
        if path.starts_with(&m.mountpoint)
            && best.as_ref().is_none_or(|b| {
                m.mountpoint.components().count() >= b.mountpoint.components().count()
            })
        {
            best = Some(m);
        }
    }
    best
}

/// Creates `path` (0700, ours) if missing and checks it (the store's rule: see `store::own_dir`).
fn own_dir(path: &Path) -> io::Result<()> {
    crate::store::own_dir(path).map(drop)
}

/// A bound control socket: removed again on drop (if it is still the one we bound).
pub struct Bound {
    pub listener: UnixListener,
    pub path: PathBuf,
    ino: u64,
}

/// Binds the socket of the mount with device `dev`, replacing a stale one of a dead daemon.
pub fn bind(dev: &str) -> io::Result<Bound> {
    let uid = rustix::process::geteuid().as_raw();
    let dir = dir_for(uid);
    if let Some(parent) = dir.parent()
        && uid == 0
    {
        own_dir(parent)?;
    }
    own_dir(&dir)?;
    let path = path_for(uid, dev);
    // The device is ours while we are mounted, so anything under its name is a dead daemon's.
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::debug!("removed a stale control socket {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let ino = std::fs::symlink_metadata(&path)?.ino();
    Ok(Bound {
        listener,
        path,
        ino,
    })
}

impl Drop for Bound {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The uid of the process at the other end.
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    rustix::net::sockopt::socket_peercred(stream)
        .map(|c| c.uid.as_raw())
        .map_err(io_err)
}

/// Whether a peer may control a daemon running as `owner`: that user, or root.
pub fn allowed(peer: u32, owner: u32) -> bool {
    peer == owner || peer == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_device_type_and_owner() {
        let l = "57 30 0:52 / /mnt/m\\040x rw,nosuid - fuse.nitro-uring nitro-uring:/src ro,user_id=1000,group_id=1000";
        let m = parse_line(l).expect("parsed");
        assert_eq!(m.mountpoint, PathBuf::from("/mnt/m x"));
        assert_eq!(
            (m.dev.as_str(), m.fstype.as_str()),
            ("0:52", "fuse.nitro-uring")
        );
        assert_eq!(m.user_id, Some(1000));
        assert_eq!(
            path_for(0, "0:52"),
            PathBuf::from("/run/nitro-uring/ctl/0-52.sock")
        );
        assert!(allowed(0, 1000) && allowed(1000, 1000) && !allowed(1001, 1000));
    }
}
