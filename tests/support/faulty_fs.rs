//! A tiny FUSE filesystem (fuser 0.18), mounted by the test process itself, used as a nitro-uring
//! SOURCE that fails on demand:
//!
//! ```text
//! /good.bin     GOOD_LEN bytes of pattern(GOOD_SEED), always readable
//! /bad.bin      BAD_LEN bytes; every read fails with EIO while `fail_bad` is set (it is by default)
//! /partial.bin  PARTIAL_LEN bytes of pattern(PARTIAL_SEED); a read that touches [PARTIAL_BAD_FROM, ..)
//!               fails with EIO, reads entirely below it succeed
//! /locked/      a directory nobody (not even root) can open or list: opendir/readdir/access -> EACCES
//! ```
//!
//! Files are opened with FOPEN_DIRECT_IO, so the kernel passes every read of the nitro-uring daemon
//! straight to us (no page cache, no readahead on this side that could blur which range failed).
//!
//! Expects the including crate to have `mod common;` (for `pattern` and `force_unmount`).

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};

use crate::common::{force_unmount, pattern};

pub const GOOD_SEED: u64 = 0x600d;
pub const GOOD_LEN: usize = 300_000;
pub const BAD_LEN: usize = 300_000;
pub const PARTIAL_SEED: u64 = 0xba2d;
pub const PARTIAL_LEN: usize = 512 * 1024;
pub const PARTIAL_BAD_FROM: u64 = 256 * 1024;

const ROOT: u64 = 1;
const GOOD: u64 = 2;
const BAD: u64 = 3;
const PARTIAL: u64 = 4;
const LOCKED: u64 = 5;

const TTL: Duration = Duration::from_secs(1);

struct FaultyFs {
    good: Vec<u8>,
    partial: Vec<u8>,
    fail_bad: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    failed_reads: Arc<AtomicU64>,
    mtime: SystemTime,
}

impl FaultyFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            ROOT => (FileType::Directory, 0o755, 0, 3),
            GOOD => (FileType::RegularFile, 0o644, GOOD_LEN as u64, 1),
            BAD => (FileType::RegularFile, 0o644, BAD_LEN as u64, 1),
            PARTIAL => (FileType::RegularFile, 0o644, PARTIAL_LEN as u64, 1),
            LOCKED => (FileType::Directory, 0o000, 0, 2),
            _ => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entries(ino: u64) -> &'static [(u64, FileType, &'static str)] {
        match ino {
            ROOT => &[
                (ROOT, FileType::Directory, "."),
                (ROOT, FileType::Directory, ".."),
                (GOOD, FileType::RegularFile, "good.bin"),
                (BAD, FileType::RegularFile, "bad.bin"),
                (PARTIAL, FileType::RegularFile, "partial.bin"),
                (LOCKED, FileType::Directory, "locked"),
            ],
            _ => &[],
        }
    }
}

impl Filesystem for FaultyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT {
            return reply.error(Errno::ENOENT);
        }
        let found = Self::entries(ROOT)
            .iter()
            .skip(2)
            .find(|(_, _, n)| OsStr::new(n) == name);
        match found.and_then(|(ino, _, _)| self.attr(*ino)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino.0 {
            GOOD | BAD | PARTIAL => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            ROOT | LOCKED => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let slice = |data: &[u8]| -> Vec<u8> {
            let start = (offset as usize).min(data.len());
            let end = (offset as usize)
                .saturating_add(size as usize)
                .min(data.len());
            data[start..end].to_vec()
        };
        match ino.0 {
            GOOD => reply.data(&slice(&self.good)),
            BAD => {
                if self.fail_bad.load(Ordering::SeqCst) {
                    self.failed_reads.fetch_add(1, Ordering::Relaxed);
                    reply.error(Errno::EIO)
                } else {
                    reply.data(&slice(&pattern(GOOD_SEED ^ 0xffff, BAD_LEN)))
                }
            }
            PARTIAL => {
                let end = offset.saturating_add(size as u64).min(PARTIAL_LEN as u64);
                if end > PARTIAL_BAD_FROM {
                    self.failed_reads.fetch_add(1, Ordering::Relaxed);
                    reply.error(Errno::EIO)
                } else {
                    reply.data(&slice(&self.partial))
                }
            }
            _ => reply.error(Errno::EISDIR),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino.0 {
            ROOT => reply.opened(FileHandle(0), FopenFlags::empty()),
            LOCKED => reply.error(Errno::EACCES),
            _ => reply.error(Errno::ENOTDIR),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match ino.0 {
            ROOT => {
                for (i, (ino, kind, name)) in
                    Self::entries(ROOT).iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            LOCKED => reply.error(Errno::EACCES),
            _ => reply.error(Errno::ENOTDIR),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        if ino.0 == LOCKED {
            reply.error(Errno::EACCES)
        } else {
            reply.ok()
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 100, 50, 4096, 255, 4096);
    }
}

/// The mounted faulty filesystem. Drop detaches it (lazily, so a daemon that still holds files
/// open on it cannot make the drop hang) and lets the session thread wind down.
pub struct FaultyMount {
    session: Option<BackgroundSession>,
    pub path: PathBuf,
    /// While true (the default), every read of bad.bin fails with EIO.
    pub fail_bad: Arc<AtomicBool>,
    /// How many FUSE reads reached this filesystem.
    pub reads: Arc<AtomicU64>,
    /// How many of them were answered with EIO.
    pub failed_reads: Arc<AtomicU64>,
}

impl FaultyMount {
    pub fn mount(path: &Path) -> FaultyMount {
        let fail_bad = Arc::new(AtomicBool::new(true));
        let reads = Arc::new(AtomicU64::new(0));
        let failed_reads = Arc::new(AtomicU64::new(0));
        let fs = FaultyFs {
            good: pattern(GOOD_SEED, GOOD_LEN),
            partial: pattern(PARTIAL_SEED, PARTIAL_LEN),
            fail_bad: fail_bad.clone(),
            reads: reads.clone(),
            failed_reads: failed_reads.clone(),
            mtime: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let mut cfg = Config::default();
        cfg.mount_options = vec![
            MountOption::RO,
            MountOption::FSName("faulty-test-src".into()),
        ];
        cfg.n_threads = Some(2);
        let session = fuser::spawn_mount(fs, path, &cfg).unwrap_or_else(|e| {
            panic!(
                "mounting the faulty test filesystem at {}: {e}",
                path.display()
            )
        });
        // The kernel answers requests only once INIT is through; a stat proves the mount is live.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(path.join("good.bin")).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "faulty test filesystem did not come up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        FaultyMount {
            session: Some(session),
            path: path.to_path_buf(),
            fail_bad,
            reads,
            failed_reads,
        }
    }
}

impl Drop for FaultyMount {
    fn drop(&mut self) {
        force_unmount(&self.path);
        // Already unmounted, so dropping the session does not try to unmount again; the session
        // thread ends when the kernel closes the connection.
        drop(self.session.take());
    }
}
