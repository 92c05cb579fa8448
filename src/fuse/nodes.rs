//! The inode table: what each mount inode number stands for, and for how long.
//!
//! Why a node names its source object by file handle (or, where the filesystem has none, by an
//! `O_PATH` descriptor, as libfuse's `passthrough_hp` does) and never by path: a path can be
//! re-pointed (a symlink or a parent directory swapped in by a user who can write the source), and a
//! source inode number is reused by another file once the first is deleted. A file handle carries
//! the inode's generation, so it opens exactly the object looked up or fails (ESTALE); a held
//! descriptor pins its object, so while the node lives no other file can carry its (dev, ino).
//! Either is the key that lets hardlinks share one node; neither can alias a reused number.
//!
//! Why mount inode numbers are the source's, with generations: `st_ino` then stays the same when
//! the kernel forgets and looks an inode up again (tools that compare inode numbers over time, like
//! git's index, keep working). A number is handed out again only when no node has it (the kernel
//! forgot the old one), and then with a new generation, so the kernel can never take the new
//! object for the old. Objects on other devices under the source, and a deleted file's successor
//! while the kernel still remembers the deleted one, get numbers from a range of their own.
//!
//! Why lookup counts: the kernel tells us with FORGET when it has dropped an inode; only then may
//! the node go. Every reply that hands the kernel an entry (lookup, and each readdirplus entry but
//! `.` and `..`) counts one.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use fuser::INodeNo;
use parking_lot::{Mutex, RwLock};
use rustix::fs::{OFlags, Statx};

use super::sys::{self, FileHandleId, Reopener};
use super::versions::Versions;
use crate::engine::{Origin, Source};

/// How a node reaches its source object.
enum Ident {
    /// A file handle, and a descriptor on its filesystem to open it through.
    Handle {
        id: FileHandleId,
        mount: Arc<OwnedFd>,
    },
    /// The filesystem has no file handles: the object's `O_PATH` descriptor, held.
    Fd(OwnedFd),
}

pub struct Node {
    ident: Ident,
    /// The name it was first looked up by, for log lines and the compressor's name hints.
    pub name: Arc<str>,
    pub is_file: bool,
    pub is_dir: bool,
    /// The open-file versions of a regular file (unused for others).
    pub versions: Mutex<Versions>,
}

/// A descriptor of a node's object for the length of one operation.
pub enum Held<'a> {
    Own(OwnedFd),
    Borrowed(BorrowedFd<'a>),
    /// The object can no longer be opened by handle (deleted), but an open version holds it.
    Version(Arc<Source>),
}

impl AsFd for Held<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Held::Own(fd) => fd.as_fd(),
            Held::Borrowed(fd) => *fd,
            Held::Version(src) => match &src.origin {
                Origin::Local { fd, .. } => fd.as_fd(),
                // `path_fd` makes a `Version` of local sources only.
                Origin::Remote(_) => unreachable!("a node held a remote version"),
            },
        }
    }
}

impl Node {
    /// A node of an object the control channel resolved (see `catalog`): not in the table, never
    /// handed to the kernel; it lets a warm open a version exactly as an open does.
    pub fn detached(fd: OwnedFd, name: Arc<str>) -> Node {
        Node {
            ident: Ident::Fd(fd),
            name,
            is_file: true,
            is_dir: false,
            versions: Mutex::new(Versions::default()),
        }
    }

    /// An `O_PATH` descriptor of the object (stat, listing, readlink, lookups below it).
    pub fn path_fd(&self) -> io::Result<Held<'_>> {
        match &self.ident {
            Ident::Fd(fd) => Ok(Held::Borrowed(fd.as_fd())),
            Ident::Handle { id, mount } => {
                match sys::open_handle(mount.as_fd(), id, OFlags::PATH) {
                    Ok(fd) => Ok(Held::Own(fd)),
                    Err(e) => match self.versions.lock().live_source() {
                        Some(src) if src.local_fd().is_some() => Ok(Held::Version(src)),
                        _ if e.raw_os_error() == Some(libc::ESTALE) => {
                            Err(io::Error::from_raw_os_error(libc::ENOENT))
                        }
                        _ => Err(e),
                    },
                }
            }
        }
    }

    /// The object opened for reading (O_DIRECT when `direct`); a regular file only.
    pub fn open_read(&self, reopener: &Reopener, direct: bool) -> io::Result<OwnedFd> {
        match &self.ident {
            Ident::Fd(fd) => reopener.open_read(fd.as_fd(), direct),
            Ident::Handle { id, mount } => {
                let mut flags = OFlags::RDONLY | OFlags::NOATIME;
                if direct {
                    flags |= OFlags::DIRECT;
                }
                match sys::open_handle(mount.as_fd(), id, flags) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        sys::open_handle(mount.as_fd(), id, flags - OFlags::NOATIME)
                    }
                    r => r,
                }
            }
        }
    }
}

/// What makes two lookups the same object.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Handle(FileHandleId),
    /// Only for objects whose node holds a descriptor (which keeps the inode number taken).
    Ino(u64, u64),
}

struct Entry {
    node: Arc<Node>,
    key: Key,
    generation: u64,
    lookups: u64,
    /// Where the kernel last found it (parent inode, name): what to tell it once it is deleted.
    parent: u64,
    name: Box<OsStr>,
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Entry>,
    by_key: HashMap<Key, u64>,
    /// Numbers for objects that can't use their own (other devices, collisions).
    next_spare: u64,
    next_generation: u64,
}

/// Spare inode numbers start here, far above what filesystems hand out.
const SPARE_BASE: u64 = 1 << 62;

pub struct Nodes {
    table: RwLock<Table>,
    root_dev: u64,
    root: Arc<Node>,
    /// A descriptor per source filesystem (by mount id), to open file handles through. Not
    /// `O_PATH`: `open_by_handle_at` refuses those (EBADF).
    mounts: Mutex<HashMap<i32, Arc<OwnedFd>>>,
    use_handles: bool,
    reopener: Reopener,
    warned_emfile: Mutex<bool>,
}

impl Nodes {
    /// The table with the root node: `root` is the source directory, opened once here.
    pub fn new(root: &Path) -> io::Result<Nodes> {
        let root_fd = sys::open_dir_path(root)?;
        let st = sys::statx(root_fd.as_fd())?;
        let reopener = Reopener::new()?;
        let mut mounts = HashMap::new();
        // Handles are used only if they can be opened again here (CAP_DAC_READ_SEARCH: a daemon
        // not run as root falls back to holding descriptors).
        if let Ok(h) = sys::file_handle(root_fd.as_fd())
            && let Ok(fd) = reopener.open(root_fd.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY)
            && sys::open_handle(fd.as_fd(), &h, OFlags::PATH).is_ok()
        {
            mounts.insert(h.mount_id, Arc::new(fd));
        } else {
            tracing::info!(
                "file handles unavailable: each inode the kernel holds keeps a descriptor"
            );
        }
        let use_handles = !mounts.is_empty();
        let name: Arc<str> = root
            .file_name()
            .map_or_else(|| "/".into(), |n| n.to_string_lossy().into());
        let root_node = Arc::new(Node {
            ident: Ident::Fd(root_fd),
            name,
            is_file: false,
            is_dir: true,
            versions: Mutex::new(Versions::default()),
        });
        let mut t = Table {
            next_spare: SPARE_BASE,
            next_generation: 2,
            ..Table::default()
        };
        let key = Key::Ino(sys::dev_of(&st), st.stx_ino);
        t.by_ino.insert(
            INodeNo::ROOT.0,
            Entry {
                node: root_node.clone(),
                key: key.clone(),
                generation: 1,
                lookups: 1,
                parent: INodeNo::ROOT.0,
                name: OsStr::new("").into(),
            },
        );
        t.by_key.insert(key, INodeNo::ROOT.0);
        Ok(Nodes {
            table: RwLock::new(t),
            root_dev: sys::dev_of(&st),
            root: root_node,
            mounts: Mutex::new(mounts),
            use_handles,
            reopener,
            warned_emfile: Mutex::new(false),
        })
    }

    /// The source root's node (its descriptor is where the control channel resolves paths).
    pub fn root(&self) -> &Arc<Node> {
        &self.root
    }

    pub fn get(&self, ino: INodeNo) -> Option<Arc<Node>> {
        if ino == INodeNo::ROOT {
            return Some(self.root.clone());
        }
        self.table.read().by_ino.get(&ino.0).map(|e| e.node.clone())
    }

    fn note_emfile(&self, e: &io::Error) {
        if e.raw_os_error() == Some(libc::EMFILE) {
            let mut warned = self.warned_emfile.lock();
            if !*warned {
                *warned = true;
                tracing::warn!(
                    "out of file descriptors ({} inodes known): opens and lookups fail with EMFILE",
                    self.count()
                );
            }
        }
    }

    /// How a new node will reach the object behind `fd` (an `O_PATH` descriptor of it): by file
    /// handle where the filesystem has them and we hold a descriptor on it, else by `fd` itself.
    fn ident_for(&self, fd: OwnedFd, st: &Statx) -> (Ident, Key) {
        let by_fd = |fd| (Ident::Fd(fd), Key::Ino(sys::dev_of(st), st.stx_ino));
        if !self.use_handles {
            return by_fd(fd);
        }
        if u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR {
            // Directories keep their descriptor: every lookup below one starts from it, and there
            // are few of them next to files. The first directory seen on a filesystem is where a
            // lookup crossed into it: it is also opened for reading, so handles of the files
            // below can be opened through it.
            if let Ok(id) = sys::file_handle(fd.as_fd()) {
                let mut mounts = self.mounts.lock();
                if !mounts.contains_key(&id.mount_id)
                    && let Ok(m) = self
                        .reopener
                        .open(fd.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY)
                {
                    mounts.insert(id.mount_id, Arc::new(m));
                }
            }
            return by_fd(fd);
        }
        let Ok(id) = sys::file_handle(fd.as_fd()) else {
            return by_fd(fd);
        };
        let mount = {
            let mounts = self.mounts.lock();
            match mounts.get(&id.mount_id) {
                Some(m) => m.clone(),
                // A file on a filesystem whose root directory we never crossed: keep its
                // descriptor.
                None => return by_fd(fd),
            }
        };
        (
            Ident::Handle {
                id: id.clone(),
                mount,
            },
            Key::Handle(id),
        )
    }

    /// Looks `name` up in `parent` and counts one kernel reference to the result: (mount inode,
    /// generation, attributes).
    pub fn lookup(
        &self,
        parent_ino: u64,
        parent: &Node,
        name: &OsStr,
    ) -> io::Result<(u64, u64, Statx)> {
        let dir = parent.path_fd()?;
        self.lookup_in(parent_ino, dir.as_fd(), name)
    }

    /// `lookup` with the parent already open (`dir`), as a directory listing has it.
    pub fn lookup_in(
        &self,
        parent_ino: u64,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<(u64, u64, Statx)> {
        let fd = sys::open_child(dir, name).inspect_err(|e| self.note_emfile(e))?;
        let st = sys::statx(fd.as_fd())?;
        let (ident, key) = self.ident_for(fd, &st);
        let mut t = self.table.write();
        if let Some(&ino) = t.by_key.get(&key)
            && let Some(e) = t.by_ino.get_mut(&ino)
        {
            // The same object: a hardlink or a repeated lookup.
            e.lookups += 1;
            if e.parent != parent_ino || *e.name != *name {
                e.parent = parent_ino;
                e.name = name.into();
            }
            return Ok((ino, e.generation, st));
        }
        let own = (sys::dev_of(&st) == self.root_dev && st.stx_ino > INodeNo::ROOT.0)
            .then_some(st.stx_ino);
        let ino = match own {
            Some(i) if !t.by_ino.contains_key(&i) => i,
            _ => loop {
                t.next_spare += 1;
                if !t.by_ino.contains_key(&t.next_spare) {
                    break t.next_spare;
                }
            },
        };
        let generation = t.next_generation;
        t.next_generation += 1;
        let kind = u32::from(st.stx_mode) & libc::S_IFMT;
        t.by_ino.insert(
            ino,
            Entry {
                node: Arc::new(Node {
                    ident,
                    name: name.to_string_lossy().into(),
                    is_file: kind == libc::S_IFREG,
                    is_dir: kind == libc::S_IFDIR,
                    versions: Mutex::new(Versions::default()),
                }),
                key: key.clone(),
                generation,
                lookups: 1,
                parent: parent_ino,
                name: name.into(),
            },
        );
        t.by_key.insert(key, ino);
        Ok((ino, generation, st))
    }

    /// The kernel dropped `n` references; the node goes with the last one. Handles still open on
    /// it keep their own `Arc`.
    pub fn forget(&self, ino: INodeNo, n: u64) {
        if ino == INodeNo::ROOT {
            return;
        }
        let mut t = self.table.write();
        let Some(e) = t.by_ino.get_mut(&ino.0) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups == 0
            && let Some(e) = t.by_ino.remove(&ino.0)
            && t.by_key.get(&e.key) == Some(&ino.0)
        {
            t.by_key.remove(&e.key);
        }
    }

    /// Entries held by descriptor whose object was deleted from the source while the kernel still
    /// remembers them and no open file holds them: (parent, child, name). Their descriptors keep
    /// the deleted object (and its disk space) alive, and the kernel only forgets an unused inode
    /// under memory pressure unless told it is gone. (Nodes held by file handle hold nothing.)
    pub fn deleted(&self) -> Vec<(u64, u64, Box<OsStr>)> {
        let t = self.table.read();
        t.by_ino
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.node) == 1 && !e.name.is_empty())
            .filter(|(_, e)| match &e.node.ident {
                Ident::Fd(fd) => sys::statx(fd.as_fd()).is_ok_and(|st| st.stx_nlink == 0),
                Ident::Handle { .. } => false,
            })
            .map(|(&ino, e)| (e.parent, ino, e.name.clone()))
            .collect()
    }

    /// The number to list for an entry of a plain readdir (which makes no node): the number a
    /// lookup would most likely give.
    pub fn listed_ino(&self, identity: (u64, u64)) -> u64 {
        if identity.0 == self.root_dev && identity.1 > INodeNo::ROOT.0 {
            identity.1
        } else {
            SPARE_BASE
        }
    }

    /// The directory the kernel last found `ino` in (None for the root, or a node it forgot).
    pub fn parent_of(&self, ino: u64) -> Option<u64> {
        if ino == INodeNo::ROOT.0 {
            return None;
        }
        self.table.read().by_ino.get(&ino).map(|e| e.parent)
    }

    /// Nodes in the table.
    pub fn count(&self) -> usize {
        self.table.read().by_ino.len()
    }
}
