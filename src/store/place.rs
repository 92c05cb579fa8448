//! Where store files live and what they are called: the tmpfs directory (`--store`), per-source
//! directories, names made of a version's stamp, and the clean-up of directories whose source is
//! gone.
//!
//! Why names carry the whole stamp: a new daemon must know, without trusting anything it reads
//! from the store, which source version a file holds (see the module above).

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::{DEFAULT_DIR, FALLBACK_DIR, TMPFS_MAGIC, io_err};
use crate::engine::Stamp;

/// Where the store goes, from `--store`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreMode {
    /// `DEFAULT_DIR` (a tmpfs with huge pages mounted there if needed), kept across restarts.
    Default,
    /// A directory on a tmpfs the user chose, kept across restarts.
    Dir(PathBuf),
    /// Store files that vanish with the daemon (`--store none`).
    Ephemeral,
    /// No store: the arena alone, no passthrough (`--store off`).
    Off,
}

impl StoreMode {
    pub fn parse(s: &str) -> Result<StoreMode, String> {
        match s {
            "" => Err("--store needs a directory, `none` or `off`".into()),
            "none" => Ok(StoreMode::Ephemeral),
            "off" => Ok(StoreMode::Off),
            "default" => Ok(StoreMode::Default),
            p => Ok(StoreMode::Dir(PathBuf::from(p))),
        }
    }

    /// Checks a user-chosen directory before anything is mounted: it must exist on a tmpfs.
    pub fn validate(&self) -> Result<(), String> {
        let StoreMode::Dir(p) = self else {
            return Ok(());
        };
        let fs = rustix::fs::statfs(p.as_path())
            .map_err(|e| format!("--store {}: {}", p.display(), io_err(e)))?;
        if fs.f_type as i64 != TMPFS_MAGIC {
            return Err(format!(
                "--store {}: not on a tmpfs (the store must be RAM; mount one or use `none`)",
                p.display()
            ));
        }
        Ok(())
    }
}

/// Creates `path` as a 0700 directory owned by us if it is missing, and opens it without
/// following a symlink; refuses one that someone else owns or others can enter (a shared
/// /dev/shm lets any user create the name first).
pub(crate) fn own_dir(path: &Path) -> io::Result<OwnedFd> {
    match rustix::fs::mkdir(path, Mode::RWXU) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(io_err(e)),
    }
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)?;
    let st = rustix::fs::fstat(&fd).map_err(io_err)?;
    if st.st_uid != rustix::process::geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} is owned by uid {}, not us",
            path.display(),
            st.st_uid
        )));
    }
    if st.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&fd, Mode::RWXU).map_err(io_err)?;
    }
    Ok(fd)
}

/// The default store directory: a tmpfs with huge pages mounted at `DEFAULT_DIR` (it stays
/// mounted after the daemon exits: it is the warm cache), or `FALLBACK_DIR` when that fails.
pub(super) fn default_dir() -> io::Result<PathBuf> {
    let path = Path::new(DEFAULT_DIR);
    let prepared = (|| -> io::Result<()> {
        if let Some(parent) = path.parent() {
            own_dir(parent)?;
        }
        own_dir(path)?;
        let here = rustix::fs::stat(path).map_err(io_err)?;
        let up = rustix::fs::stat(path.join("..").as_path()).map_err(io_err)?;
        if here.st_dev != up.st_dev {
            return Ok(()); // already a mount point (ours, from an earlier run)
        }
        let data = CString::new("mode=0700,huge=within_size").map_err(io::Error::other)?;
        rustix::mount::mount(
            "nitro-uring-store",
            path,
            "tmpfs",
            rustix::mount::MountFlags::NOSUID
                | rustix::mount::MountFlags::NODEV
                | rustix::mount::MountFlags::NOEXEC,
            data.as_c_str(),
        )
        .map_err(io_err)
    })();
    match prepared {
        Ok(()) => Ok(path.to_path_buf()),
        Err(e) => {
            tracing::warn!(
                "store: could not mount a huge-page tmpfs at {DEFAULT_DIR} ({e}); using {FALLBACK_DIR} (4 KiB pages: mmap loads are slower)"
            );
            Ok(PathBuf::from(FALLBACK_DIR))
        }
    }
}

/// The file in each source's store directory that names the source (for `collect_orphans`).
pub(super) const SOURCE_RECORD: &str = "source";

/// Removes the store directories of sources that are gone (deleted, or a different directory
/// now at that path) and that no daemon holds, so their RAM does not stay taken forever. A
/// directory whose source still exists is kept: mounting it again finds its files warm.
pub(super) fn collect_orphans(base: &OwnedFd, ours: &str) {
    let Ok(list) = rustix::fs::Dir::read_from(base) else {
        return;
    };
    for ent in list.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("src-") else {
            continue;
        };
        if name == ours {
            continue;
        }
        let Ok(dir) = rustix::fs::openat(
            base,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        if rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // a live daemon's
        }
        let recorded = rustix::fs::openat(
            &dir,
            SOURCE_RECORD,
            OFlags::RDONLY | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .ok()
        .and_then(|fd| {
            let mut buf = vec![0u8; 4096];
            let n = rustix::io::read(&fd, &mut buf).ok()?;
            buf.truncate(n);
            Some(buf)
        });
        let alive = recorded.is_some_and(|r| {
            let text = String::from_utf8_lossy(r.strip_suffix(b"\n").unwrap_or(&r)).into_owned();
            // A bucket cannot be checked from here: its files stay until a mount of it evicts
            // them, as a local source's stay while it exists.
            text.starts_with("s3://")
                || std::fs::metadata(&text).is_ok_and(|m| {
                    use std::os::unix::fs::MetadataExt;
                    format!("{:x}-{:x}", m.dev(), m.ino()) == id
                })
        });
        if alive {
            continue;
        }
        if let Ok(files) = rustix::fs::Dir::read_from(&dir) {
            for f in files.flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if n != "." && n != ".." {
                    let _ = rustix::fs::unlinkat(&dir, n.as_str(), AtFlags::empty());
                }
            }
        }
        let _ = rustix::fs::unlinkat(base, name.as_str(), AtFlags::REMOVEDIR);
        tracing::debug!("store: removed {name} (its source is gone)");
    }
}

/// Parses a store file name back into the stamp it was written for.
pub(super) fn parse_name(name: &str) -> Option<Stamp> {
    let parts: Vec<u64> = name
        .split('-')
        .map(|p| u64::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    match parts[..] {
        [dev, ino, size, mtime, ctime] => Some((dev, ino, size, mtime as i64, ctime as i64)),
        _ => None,
    }
}

pub(super) fn name_of(stamp: &Stamp) -> String {
    format!(
        "{:x}-{:x}-{:x}-{:x}-{:x}",
        stamp.0, stamp.1, stamp.2, stamp.3 as u64, stamp.4 as u64
    )
}
