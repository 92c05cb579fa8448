//! A version of a source file, and the checks that keep cached bytes that version's own.
//!
//! Why a version is checked with `fstat` after each read rather than trusted from its open: the
//! source can be truncated, extended or rewritten under open handles, and the daemon serves other
//! users; a size or timestamp from the source is a claim, re-checked before bytes are published.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::codec::{DtypeHint, formats::Layout};
use crate::store::Entry;

/// (dev, ino, size, mtime ns, ctime ns): what must not change for cached bytes to stay a version's.
pub type Stamp = (u64, u64, u64, i64, i64);

/// The stamp of an open descriptor.
pub fn fd_stamp(fd: &OwnedFd) -> std::io::Result<Stamp> {
    fd_stat(fd).map(|(stamp, _)| stamp)
}

/// The stamp and link count of an open descriptor (`statx`, so every field has one fixed type).
fn fd_stat(fd: &OwnedFd) -> std::io::Result<(Stamp, u64)> {
    use rustix::fs::{AtFlags, StatxFlags};
    let st = rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
        .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))?;
    let ns = |t: &rustix::fs::StatxTimestamp| {
        t.tv_sec
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.tv_nsec))
    };
    Ok((
        (
            rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            st.stx_ino,
            st.stx_size,
            ns(&st.stx_mtime),
            ns(&st.stx_ctime),
        ),
        u64::from(st.stx_nlink),
    ))
}

/// One version of one source file. A rewrite or replacement of the source gets a new `Source` with a
/// new `file_id`, so chunks of the old version can never be served for the new one.
///
/// The source can still change under a `Source` that open handles hold (truncated, extended,
/// rewritten in place). The engine never trusts it: a fill is published only when every byte landed
/// and `fstat` afterwards still shows `stamp` (writers update mtime/ctime before the data, so an
/// unchanged stamp after the read means the bytes are this version's). Anything else marks the
/// version `stale`: its misses fail with EIO from then on; its chunks already cached stay
/// servable (they are this version's bytes), and the next open gets a new version.
pub struct Source {
    pub file_id: u64,
    /// Where the bytes come from: a local descriptor or an object in a bucket.
    pub origin: Origin,
    pub size: u64,
    /// File name for log lines.
    pub name: Arc<str>,
    /// Kernel inode number of the mount, for page-cache invalidation.
    pub fuse_ino: u64,
    /// Tensor dtypes by byte range, from a safetensors or GGUF header: picks the codec per chunk.
    /// Shared by every `Source` of one version, so a reopen does not read the header again.
    pub layout: Option<Arc<Layout>>,
    /// Hint for chunks the layout does not cover (text files, or Unknown).
    pub default_hint: DtypeHint,
    /// Logical and stored bytes of this file's chunks compressed so far (for reports).
    pub compressed_logical_bytes: AtomicU64,
    pub compressed_stored_bytes: AtomicU64,
    /// Shared by every `Source` of one version, so the COMPRESS line is logged once per version.
    pub compression_logged: Arc<AtomicBool>,
    /// The stamp this version was opened with.
    pub stamp: Stamp,
    /// The source no longer holds this version: misses fail with EIO, nothing more is read.
    pub stale: AtomicBool,
    /// Set when the store kept this version out because its loop fits the pool only compressed:
    /// the loop's bytes, which its chunks are inserted with as their reuse distance (they have no
    /// ghost-queue history, having been read from the store before). 0: not known.
    pub loop_bytes: AtomicU64,
    /// This version's store file, once admitted (see `store`): its chunks are filled there, not
    /// in the arena, and a complete one is read by the kernel through passthrough.
    pub store: std::sync::OnceLock<Arc<Entry>>,
}

/// Where a version's bytes are read from.
pub enum Origin {
    Local {
        /// The descriptor the version was opened with: O_DIRECT when `direct` (keeps the source
        /// out of the page cache, so the bytes are cached once, in the arena), else buffered. One
        /// per open version: with a descriptor limit the daemon cannot raise, an open file costs
        /// just this.
        fd: OwnedFd,
        direct: bool,
        /// A buffered descriptor, opened on first need (reads O_DIRECT can't do) when `direct`.
        buffered: std::sync::OnceLock<OwnedFd>,
    },
    /// One version (ETag) of an object, read with ranged GETs (see `remote`).
    Remote(Arc<crate::remote::Object>),
}

impl Origin {
    pub fn local(fd: OwnedFd, direct: bool) -> Origin {
        Origin::Local {
            fd,
            direct,
            buffered: std::sync::OnceLock::new(),
        }
    }
}

impl Source {
    /// The local descriptor this version was opened with (None: a remote object).
    pub fn local_fd(&self) -> Option<&OwnedFd> {
        match &self.origin {
            Origin::Local { fd, .. } => Some(fd),
            Origin::Remote(_) => None,
        }
    }

    /// Whether fills read with O_DIRECT.
    pub fn direct(&self) -> bool {
        matches!(self.origin, Origin::Local { direct: true, .. })
    }

    /// The object, for a remote version.
    pub fn remote(&self) -> Option<&Arc<crate::remote::Object>> {
        match &self.origin {
            Origin::Remote(o) => Some(o),
            Origin::Local { .. } => None,
        }
    }

    /// A buffered descriptor of this version: `fd` itself, or a second one opened through
    /// `/proc/self/fd` (the same open object, no name resolved) the first time it is needed.
    pub fn buffered_fd(&self) -> std::io::Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        let Origin::Local {
            fd,
            direct,
            buffered,
        } = &self.origin
        else {
            return Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        };
        if !direct {
            return Ok(fd.as_fd());
        }
        if buffered.get().is_none() {
            let mut name = itoa::Buffer::new();
            let path = format!("/proc/self/fd/{}", name.format(fd.as_raw_fd()));
            let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC;
            let opened = rustix::fs::open(path.as_str(), flags, rustix::fs::Mode::empty())
                .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))?;
            let _ = buffered.set(opened);
        }
        Ok(buffered.get().map_or(fd.as_fd(), AsFd::as_fd))
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Marks this version stale; logs once per version.
    pub fn mark_stale(&self, why: &str) {
        if !self.stale.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "source changed under open handles: {} ({why}); misses now fail with EIO until reopened",
                self.name
            );
        }
    }

    /// Whether the source file still is this version (by `fstat` of its descriptor); marks it
    /// stale when not.
    pub fn still_holds(&self) -> bool {
        if self.is_stale() {
            return false;
        }
        let fd = match &self.origin {
            Origin::Local { fd, .. } => fd,
            // A remote fill's GET carried If-Match: the server vouched for the version.
            Origin::Remote(_) => return true,
        };
        match fd_stat(fd) {
            Ok((now, _)) if now == self.stamp => true,
            // Deleted, or replaced by a rename over it (how model files are updated): the unlink
            // moved ctime, but size and mtime say the data did not change, and no path leads to
            // the inode any more. Open handles keep reading the version they opened.
            Ok(((dev, ino, size, mtime, _), 0))
                if (dev, ino, size, mtime)
                    == (self.stamp.0, self.stamp.1, self.stamp.2, self.stamp.3) =>
            {
                true
            }
            Ok((now, _)) if now.2 != self.stamp.2 => {
                self.mark_stale(&format!("size {} -> {}", self.stamp.2, now.2));
                false
            }
            Ok(_) => {
                self.mark_stale("modified");
                false
            }
            Err(e) => {
                self.mark_stale(&format!("fstat failed: {e}"));
                false
            }
        }
    }

    /// Bytes this version is expected to take in the arena's compressed tier (its size where its
    /// format says nothing): what the store weighs a loop of files by (`engine::store_fill`).
    pub fn expected_stored_bytes(&self) -> u64 {
        match &self.layout {
            Some(l) if l.file_len() == self.size => l.expected_stored_bytes(self.default_hint),
            _ => (self.size as f64 * self.default_hint.expected_ratio()).ceil() as u64,
        }
    }

    pub fn hint_for(&self, start: u64, end: u64) -> DtypeHint {
        match &self.layout {
            Some(l) => match l.hint_for(start, end) {
                DtypeHint::Unknown => self.default_hint,
                h => h,
            },
            None => self.default_hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn source_of(path: &std::path::Path) -> Arc<Source> {
        super::super::tests::source_at(path, 1, "t", None)
    }

    #[test]
    fn fd_stamp_matches_the_path_metadata() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").expect("write");
        let m = std::fs::metadata(&p).expect("stat");
        let src = source_of(&p);
        assert_eq!(
            src.stamp,
            (
                m.dev(),
                m.ino(),
                5,
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            )
        );
    }

    #[test]
    fn an_unchanged_file_still_holds_its_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10_000]).expect("write");
        let src = source_of(&p);
        assert!(src.still_holds());
        assert!(src.still_holds());
        assert!(!src.is_stale());
    }

    #[test]
    fn truncation_makes_the_version_stale_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10_000]).expect("write");
        let src = source_of(&p);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(100))
            .expect("truncate");
        assert!(!src.still_holds());
        assert!(src.is_stale());
        // Growing back to the old size does not make it this version again.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(10_000))
            .expect("extend");
        assert!(!src.still_holds());
    }

    #[test]
    fn an_in_place_write_of_the_same_size_makes_the_version_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10_000]).expect("write");
        let src = source_of(&p);
        // Same size: only mtime/ctime tell. Wait out coarse timestamp granularity first.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open for write");
        f.write_all(&[9u8; 100]).expect("write");
        drop(f);
        assert_eq!(std::fs::metadata(&p).expect("stat").len(), 10_000);
        assert!(!src.still_holds());
        assert!(src.is_stale());
    }

    #[test]
    fn a_file_replaced_by_rename_keeps_the_version_of_open_handles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10_000]).expect("write");
        let src = source_of(&p);
        // Rename over it: the path now names another inode; the held fd still reads the old one,
        // whose data did not change (only its ctime, by the unlink).
        let q = dir.path().join("g");
        std::fs::write(&q, vec![8u8; 10_000]).expect("write");
        std::fs::rename(&q, &p).expect("rename");
        assert!(
            src.still_holds(),
            "the held descriptor still reads the old inode"
        );
        std::fs::remove_file(&p).expect("unlink");
        assert!(
            src.still_holds(),
            "deleted: the held descriptor still reads the old inode"
        );
    }

    #[test]
    fn mark_stale_is_sticky() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").expect("write");
        let src = source_of(&p);
        src.mark_stale("test");
        src.mark_stale("again");
        assert!(src.is_stale());
        assert!(!src.still_holds());
    }
}
