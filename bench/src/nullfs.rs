//! The FUSE ceiling: an in-process filesystem with the same fuser setup as the real mount (same
//! `Config`, worker threads, `clone_fd`, INIT capabilities, max request and readahead, open flags),
//! whose `read` replies with a slice of a static zero buffer and does no cache work at all. Whatever
//! the real mount achieves, it cannot beat this one by more than noise: the gap between them is
//! what the cache itself costs.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEntry, ReplyOpen, Request, SessionACL, SessionUnmounter,
};

use nitro_uring::mount::CacheMode;

const TTL: Duration = Duration::from_secs(1);

/// A file the null filesystem pretends to hold (it reads as zeros).
#[derive(Clone, Debug)]
pub struct NullFile {
    pub name: String,
    pub size: u64,
}

/// One inode of the tree: inode number = index + 1 (the root is inode 1).
struct Node {
    name: String,
    parent: u64,
    /// None for a directory.
    size: Option<u64>,
    children: Vec<u64>,
}

/// Builds the tree of directories and files from relative paths like `sub/dir/file.bin`.
fn build_tree(files: &[NullFile]) -> Vec<Node> {
    let mut nodes = vec![Node {
        name: String::new(),
        parent: 1,
        size: None,
        children: Vec::new(),
    }];
    for f in files {
        let parts: Vec<&str> = f.name.split('/').filter(|p| !p.is_empty()).collect();
        let mut dir = 1u64;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let found = nodes[dir as usize - 1]
                .children
                .iter()
                .copied()
                .find(|&c| nodes[c as usize - 1].name == *part);
            dir = match found {
                Some(c) => c,
                None => {
                    nodes.push(Node {
                        name: (*part).to_string(),
                        parent: dir,
                        size: last.then_some(f.size),
                        children: Vec::new(),
                    });
                    let ino = nodes.len() as u64;
                    nodes[dir as usize - 1].children.push(ino);
                    ino
                }
            };
        }
    }
    nodes
}

struct NullFs {
    nodes: Vec<Node>,
    mode: CacheMode,
    max_request_bytes: usize,
    zeros: Box<[u8]>,
    created: SystemTime,
    uid: u32,
    gid: u32,
}

impl NullFs {
    fn node(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.node(ino)?;
        let (kind, size, perm, nlink) = match n.size {
            None => (FileType::Directory, 0, 0o555, 2),
            Some(size) => (FileType::RegularFile, size, 0o444, 1),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The mount's own negotiation (flags, request sizes), so both run the same session; the
        // mount adds passthrough only when it has a store.
        nitro_uring::fuse::negotiate(
            config,
            self.max_request_bytes,
            nitro_uring::fuse::LOCAL_INIT_FLAGS,
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(dir) = self.node(parent.0) else {
            return reply.error(Errno::ENOENT);
        };
        let found = dir.children.iter().copied().find(|&c| {
            self.node(c)
                .is_some_and(|n| n.name.as_bytes() == name.as_bytes())
        });
        match found.and_then(|c| self.attr(c)) {
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

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.node(ino.0) {
            None => return reply.error(Errno::ENOENT),
            Some(n) if n.size.is_none() => return reply.error(Errno::EISDIR),
            Some(_) => {}
        }
        let open_flags = match self.mode {
            CacheMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
            CacheMode::Keep => FopenFlags::FOPEN_KEEP_CACHE,
        };
        reply.opened(FileHandle(ino.0), open_flags);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file_size) = self.node(ino.0).and_then(|n| n.size) else {
            return reply.error(Errno::EBADF);
        };
        let n = (u64::from(size)).min(file_size.saturating_sub(offset)) as usize;
        reply.data(&self.zeros[..n.min(self.zeros.len())]);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino.0) {
            Some(n) if n.size.is_none() => reply.opened(FileHandle(0), FopenFlags::empty()),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
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
        let Some(dir) = self.node(ino.0).filter(|n| n.size.is_none()) else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut entries: Vec<(u64, FileType, &OsStr)> = vec![
            (ino.0, FileType::Directory, OsStr::new(".")),
            (dir.parent, FileType::Directory, OsStr::new("..")),
        ];
        for &c in &dir.children {
            if let Some(n) = self.node(c) {
                let kind = if n.size.is_some() {
                    FileType::RegularFile
                } else {
                    FileType::Directory
                };
                entries.push((c, kind, OsStr::new(&n.name)));
            }
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A zero buffer backed by real, written pages (like the arena's), not by the shared zero page a
/// fresh allocation maps: copying out of the zero page takes other kernel paths, and the ceiling
/// should cost what a cache hit costs minus the cache work.
fn touched_zeros(len: usize) -> Box<[u8]> {
    let mut v = vec![1u8; len];
    std::hint::black_box(&mut v);
    v.fill(0);
    std::hint::black_box(&mut v);
    v.into_boxed_slice()
}

/// A mounted null filesystem. Dropping it unmounts.
pub struct NullMount {
    mountpoint: PathBuf,
    unmounter: Option<SessionUnmounter>,
    session: Option<JoinHandle<std::io::Result<()>>>,
}

/// What the real mount uses per request: the chunk, capped by the kernel's max_pages_limit.
pub fn max_request_bytes(chunk_bytes: u64) -> usize {
    let limit: u64 = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(256);
    (limit * 4096).min(chunk_bytes) as usize
}

impl NullMount {
    /// Mounts the null filesystem at `mountpoint` (an empty directory) and returns once it is live.
    pub fn spawn(
        mountpoint: &Path,
        files: Vec<NullFile>,
        mode: CacheMode,
        threads: usize,
        chunk_bytes: u64,
        readahead_bytes: u64,
    ) -> Result<NullMount> {
        let max_request = max_request_bytes(chunk_bytes);
        let fs = NullFs {
            nodes: build_tree(&files),
            mode,
            max_request_bytes: max_request,
            zeros: touched_zeros(max_request.max(1 << 20)),
            created: SystemTime::now(),
            // SAFETY: getuid/getgid have no preconditions.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
        };
        // The same options as `Mounted::spawn` (src/mount.rs), bar the names.
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("nitro-null".into()),
            MountOption::Subtype("nitro-null".into()),
            MountOption::RO,
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoAtime,
        ];
        config.acl = SessionACL::Owner;
        config.n_threads = Some(threads);
        config.clone_fd = true;
        let mut session = fuser::Session::new(fs, mountpoint, &config).map_err(|e| {
            anyhow!(
                "null filesystem mount at {} failed: {e}",
                mountpoint.display()
            )
        })?;
        let unmounter = session.unmount_callable();
        let session = std::thread::Builder::new()
            .name("nitro-null".into())
            .spawn(move || session.run())?;
        // Same bdi readahead as the real mount gets.
        if let Some(dev) = crate::sys::mount_dev(mountpoint) {
            let kb = (readahead_bytes.max(chunk_bytes) / 1024).max(128);
            let _ = std::fs::write(
                format!("/sys/class/bdi/{dev}/read_ahead_kb"),
                kb.to_string(),
            );
        }
        Ok(NullMount {
            mountpoint: mountpoint.to_path_buf(),
            unmounter: Some(unmounter),
            session: Some(session),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut result = Ok(());
        if let Some(mut u) = self.unmounter.take()
            && let Err(e) = u.unmount()
        {
            // Busy: detach so the session still ends.
            if let Err(e2) = nitro_uring::mount::umount(&self.mountpoint, true) {
                result = Err(anyhow!(
                    "unmount {}: {e}; detach: {e2}",
                    self.mountpoint.display()
                ));
            }
        }
        if let Some(s) = self.session.take() {
            let _ = s.join();
        }
        result
    }
}

impl Drop for NullMount {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = self.teardown();
        }
    }
}
