//! The few system calls the front end makes on source objects, all through descriptors.
//!
//! Why descriptors and never paths: the daemon runs as root and serves other users. A path is
//! resolved anew at every use, so a user who can write in the source tree can swap a component for
//! a symlink between the kernel's permission check (on the attributes we reported) and our use of
//! the path. A descriptor names one object for good. Lookups are `openat(parent, name, O_PATH |
//! O_NOFOLLOW)` of a single component; everything after that (stat, open for reading, listing,
//! readlink, xattrs) goes through the object's own descriptor, and re-opening one goes through
//! `/proc/self/fd/N`, which jumps to the object without resolving any name.
//!
//! Why nodes hold file handles rather than descriptors where the filesystem has them: the kernel
//! may remember millions of inodes, and a descriptor each would run into RLIMIT_NOFILE (which a
//! daemon without CAP_SYS_RESOURCE cannot raise) and keep deleted files' space allocated.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, Mode, OFlags, Statx, StatxFlags};

use crate::engine::Stamp;

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// `O_PATH | O_NOFOLLOW` descriptor of `name` in `dir`: the object itself, a symlink included.
/// `name` must be one component: the kernel never sends `/`, and `.`/`..` would leave the object
/// the kernel asked about (`..` of the root would leave the source), so they are refused.
pub fn open_child(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// `O_PATH` descriptor of a directory the daemon was given (the source root, `/proc/self/fd`).
pub fn open_dir_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// Attributes of the object behind `fd` (never of a symlink's target).
pub fn statx(fd: BorrowedFd<'_>) -> io::Result<Statx> {
    rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .map_err(io_err)
}

pub fn dev_of(st: &Statx) -> u64 {
    rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor)
}

pub fn ns(t: &rustix::fs::StatxTimestamp) -> i64 {
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(t.tv_nsec))
}

/// (dev, ino, size, mtime, ctime): what must not change for cached bytes to stay this version's.
pub fn stamp(st: &Statx) -> Stamp {
    (
        dev_of(st),
        st.stx_ino,
        st.stx_size,
        ns(&st.stx_mtime),
        ns(&st.stx_ctime),
    )
}

pub fn is_reg(st: &Statx) -> bool {
    u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFREG
}

pub fn is_dir(st: &Statx) -> bool {
    u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR
}

/// Re-opens the object behind an `O_PATH` descriptor for I/O, through `/proc/self/fd/N`: the
/// kernel jumps straight to the object, so no name is resolved and no symlink followed.
pub struct Reopener {
    proc_fd: OwnedFd,
}

impl Reopener {
    pub fn new() -> io::Result<Reopener> {
        Ok(Reopener {
            proc_fd: open_dir_path(std::path::Path::new("/proc/self/fd"))?,
        })
    }

    pub fn open(&self, fd: BorrowedFd<'_>, flags: OFlags) -> io::Result<OwnedFd> {
        let mut buf = itoa::Buffer::new();
        let name = buf.format(fd.as_raw_fd());
        let flags = flags | OFlags::CLOEXEC;
        match rustix::fs::openat(&self.proc_fd, name, flags, Mode::empty()) {
            // O_NOATIME needs ownership of the file (or CAP_FOWNER): retry without it.
            Err(rustix::io::Errno::PERM) if flags.contains(OFlags::NOATIME) => {
                rustix::fs::openat(&self.proc_fd, name, flags - OFlags::NOATIME, Mode::empty())
            }
            r => r,
        }
        .map_err(io_err)
    }

    /// A file for reading: buffered, or O_DIRECT (None when the filesystem refuses it).
    pub fn open_read(&self, fd: BorrowedFd<'_>, direct: bool) -> io::Result<OwnedFd> {
        let mut flags = OFlags::RDONLY | OFlags::NOATIME | OFlags::NONBLOCK;
        if direct {
            flags |= OFlags::DIRECT;
        }
        let file = self.open(fd, flags)?;
        // NONBLOCK only guarded the open itself (a FIFO can't get here, but cheap insurance);
        // reads of regular files ignore it, clear it anyway so nothing depends on that.
        let fl = rustix::fs::fcntl_getfl(&file).map_err(io_err)?;
        rustix::fs::fcntl_setfl(&file, fl - OFlags::NONBLOCK).map_err(io_err)?;
        Ok(file)
    }

    /// The `/proc/self/fd/N` path of `fd`, for the calls that only take paths (xattrs).
    pub fn proc_path(fd: BorrowedFd<'_>) -> String {
        format!("/proc/self/fd/{}", fd.as_raw_fd())
    }

    /// Every entry of a directory, `.` and `..` excluded: (name, source inode, d_type).
    pub fn list(
        &self,
        fd: BorrowedFd<'_>,
    ) -> io::Result<Vec<(OsString, u64, rustix::fs::FileType)>> {
        let dir = self.open(fd, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::new(dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push((
                OsStr::from_bytes(name).to_os_string(),
                entry.ino(),
                entry.file_type(),
            ));
        }
        Ok(out)
    }
}

pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    rustix::fs::readlinkat(fd, c"", Vec::new())
        .map(|c| c.into_bytes())
        .map_err(io_err)
}

pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<rustix::fs::StatVfs> {
    rustix::fs::fstatvfs(fd).map_err(io_err)
}

/// `getxattr`/`listxattr` of the object behind `fd` (a regular file or directory), sized by a
/// first call. Symlinks have none here: their `/proc/self/fd` link can't name them without
/// following.
pub fn xattr(fd: BorrowedFd<'_>, name: Option<&OsStr>) -> io::Result<Vec<u8>> {
    let path = Reopener::proc_path(fd);
    loop {
        let want = match name {
            Some(n) => rustix::fs::getxattr_query(path.as_str(), n),
            None => rustix::fs::listxattr_query(path.as_str()),
        }
        .map_err(io_err)?;
        let mut v = vec![0u8; want];
        let got = match name {
            Some(n) => rustix::fs::getxattr(path.as_str(), n, &mut v[..]),
            None => rustix::fs::listxattr(path.as_str(), &mut v[..]),
        };
        match got {
            Ok(n) => {
                v.truncate(n);
                return Ok(v);
            }
            Err(rustix::io::Errno::RANGE) => continue, // grew between the calls
            Err(e) => return Err(io_err(e)),
        }
    }
}

/// Raises this process's descriptor limit as far as it may go: every inode the kernel holds keeps
/// one descriptor here, every open version two. Returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    // Root may raise the hard limit up to fs.nr_open; anyone may raise the soft one to the hard.
    if let Some(max) = nr_open
        && cur.maximum.is_some_and(|m| m < max)
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        )
        .is_ok()
    {
        return max;
    }
    let hard = cur.maximum;
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: hard,
            maximum: hard,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A file handle (`name_to_handle_at`): names one inode of one filesystem for good, generation
/// included, without holding it open. A deleted file's handle fails with ESTALE instead of
/// reaching a file that later reuses its inode number.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FileHandleId {
    pub mount_id: i32,
    handle_type: i32,
    bytes: Box<[u8]>,
}

const MAX_HANDLE_BYTES: usize = libc::MAX_HANDLE_SZ as usize;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_BYTES],
}

/// The handle of the object behind `fd`; Err where the filesystem has none (EOPNOTSUPP).
pub fn file_handle(fd: BorrowedFd<'_>) -> io::Result<FileHandleId> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_BYTES as libc::c_uint,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_BYTES],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` is a file_handle header followed by the `handle_bytes` writable bytes it
    // announces; the path is a valid empty C string (AT_EMPTY_PATH: the object of `fd`);
    // `mount_id` is a valid int; the result is checked.
    let rc = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&raw mut raw).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (raw.handle_bytes as usize).min(MAX_HANDLE_BYTES);
    Ok(FileHandleId {
        mount_id,
        handle_type: raw.handle_type,
        bytes: raw.f_handle[..n].into(),
    })
}

/// Opens the object a handle names (needs CAP_DAC_READ_SEARCH). `mount_fd` is any descriptor on
/// the handle's filesystem.
pub fn open_handle(
    mount_fd: BorrowedFd<'_>,
    h: &FileHandleId,
    flags: OFlags,
) -> io::Result<OwnedFd> {
    let mut raw = RawHandle {
        handle_bytes: h.bytes.len() as libc::c_uint,
        handle_type: h.handle_type,
        f_handle: [0; MAX_HANDLE_BYTES],
    };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    let flags = (flags | OFlags::CLOEXEC).bits() as libc::c_int;
    // SAFETY: `raw` is a valid file_handle of `handle_bytes` bytes; the result is checked.
    let fd = unsafe { libc::open_by_handle_at(mount_fd.as_raw_fd(), (&raw mut raw).cast(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}
