//! The system's mount table: is a path a mount of ours, and taking one down (also a dead one).
//!
//! Why /proc/self/mountinfo and not a `statfs` of the path: a dead FUSE mount answers nothing
//! (ENOTCONN), while its mountinfo line still says what it is, so a stale mount can be recognised
//! and removed before a new one is made there.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::FSTYPE;

/// The mountinfo fields (major:minor, fstype) of the mount at `path` (the topmost, when several
/// are stacked there), if it is a mount point.
pub fn mount_entry(path: &Path) -> Option<(String, String)> {
    // A dead FUSE mount cannot be canonicalized itself (stat fails); its parent can.
    let want = std::fs::canonicalize(path)
        .ok()
        .or_else(|| {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            Some(std::fs::canonicalize(parent).ok()?.join(path.file_name()?))
        })
        .unwrap_or_else(|| path.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 10 {
            continue;
        }
        let mp = unescape(f[4]);
        if Path::new(&mp) == want || Path::new(&mp) == path {
            let Some(dash) = f.iter().position(|x| *x == "-") else {
                continue;
            };
            if let Some(fstype) = f.get(dash + 1) {
                found = Some((f[2].to_string(), fstype.to_string()));
            }
        }
    }
    found
}

/// `nitro-uring umount PATH`: unmounts PATH only when it is a nitro-uring mount, so a typo or a
/// wrong path never unmounts someone else's filesystem.
pub fn umount_nitro(path: &Path) -> Result<()> {
    match mount_entry(path) {
        Some((_, fstype)) if fstype == FSTYPE => {
            // A file closed a moment ago can keep the mount busy briefly (the last reference of
            // an open file is dropped after close returns in some paths): retry for a second
            // before reporting EBUSY.
            let mut tries = 0;
            loop {
                match umount(path, false) {
                    Err(e)
                        if tries < 10
                            && e.root_cause()
                                .downcast_ref::<std::io::Error>()
                                .and_then(std::io::Error::raw_os_error)
                                == Some(libc::EBUSY) =>
                    {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    r => return r,
                }
            }
        }
        Some((_, fstype)) => bail!("{} is not a nitro-uring mount ({fstype})", path.display()),
        None => bail!(
            "{} is not a nitro-uring mount (not a mount point)",
            path.display()
        ),
    }
}

pub(super) fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub(super) fn is_mounted(path: &Path) -> bool {
    mount_entry(path).is_some()
}

/// A mount left by a killed daemon answers ENOTCONN; detach it so the path can be reused.
pub fn recover_stale(mountpoint: &Path) -> Result<bool> {
    // stat may be answered from the kernel's attribute cache even on a dead connection; listing the
    // directory always asks the daemon, so probe with that when a FUSE mount is there.
    let probe = match std::fs::metadata(mountpoint) {
        Err(e) => Err(e),
        Ok(_) if mount_entry(mountpoint).is_some_and(|(_, t)| t.starts_with("fuse")) => {
            std::fs::read_dir(mountpoint).map(|_| ())
        }
        Ok(_) => Ok(()),
    };
    match probe {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            umount(mountpoint, true).with_context(|| {
                format!(
                    "mountpoint {} is a dead FUSE mount and could not be detached",
                    mountpoint.display()
                )
            })?;
            eprintln!(
                "nitro-uring: recovered stale mount at {} (transport endpoint was not connected)",
                mountpoint.display()
            );
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Unmounts `path`: umount2 as root, else fusermount3 -u.
pub fn umount(path: &Path, lazy: bool) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: valid C string; umount2 takes no other memory.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EPERM) {
        let mut cmd = std::process::Command::new("fusermount3");
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        let status = cmd.arg(path).status().context("running fusermount3")?;
        if status.success() {
            return Ok(());
        }
        bail!("fusermount3 -u {} failed", path.display());
    }
    if err.raw_os_error() == Some(libc::EINVAL) {
        bail!("{} is not a mount point", path.display());
    }
    Err(anyhow::Error::new(err).context(format!("unmount {}", path.display())))
}
