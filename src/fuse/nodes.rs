//! The inode table: what each mount inode number stands for, and for how long.
//!
//! Why each node holds an `O_PATH` descriptor (as libfuse's `passthrough_hp` does): identity by
//! path breaks twice. A path can be re-pointed (a symlink or a parent directory swapped in by a user
//! who can write the source), and a source inode number can be reused by another file once the
//! first is deleted. A held descriptor pins the object: its inode cannot be freed, so while the node
//! lives no other file can carry its (dev, ino), and that pair is a safe key to share one node
//! between hardlinks.
//!
//! Why mount inode numbers are the source's, with generations: `st_ino` then stays the same when
//! the kernel forgets and looks an inode up again (tools that compare inode numbers over time, like
//! git's index, keep working). A number comes back only after the kernel forgot the node that had
//! it, and then with a new generation, so the kernel can never take the new object for the old.
//! Objects on other devices under the source (mount points) get numbers from a range of their own.
//!
//! Why lookup counts: the kernel tells us with FORGET when it has dropped an inode; only then may
//! the node and its descriptor go. Every reply that hands the kernel an entry (lookup, and each
//! readdirplus entry but `.` and `..`) counts one.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use fuser::INodeNo;
use parking_lot::{Mutex, RwLock};
use rustix::fs::Statx;

use super::sys;
use super::versions::Versions;

pub struct Node {
    /// `O_PATH | O_NOFOLLOW` descriptor of the source object.
    pub fd: OwnedFd,
    /// The name it was first looked up by, for log lines and the compressor's name hints.
    pub name: Arc<str>,
    pub is_file: bool,
    pub is_dir: bool,
    /// The open-file versions of a regular file (unused for others).
    pub versions: Mutex<Versions>,
}

struct Entry {
    node: Arc<Node>,
    identity: (u64, u64),
    generation: u64,
    lookups: u64,
    /// Where the kernel last found it (parent inode, name): what to tell it once it is deleted.
    parent: u64,
    name: Box<OsStr>,
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Entry>,
    by_identity: HashMap<(u64, u64), u64>,
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
    warned_emfile: Mutex<bool>,
}

impl Nodes {
    /// The table with the root node, holding `root_fd` (an `O_PATH` descriptor of the source).
    pub fn new(root_fd: OwnedFd, name: Arc<str>) -> io::Result<Nodes> {
        let st = sys::statx(root_fd.as_fd())?;
        let root = Arc::new(Node {
            fd: root_fd,
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
        let identity = (sys::dev_of(&st), st.stx_ino);
        t.by_ino.insert(
            INodeNo::ROOT.0,
            Entry {
                node: root.clone(),
                identity,
                generation: 1,
                lookups: 1,
                parent: INodeNo::ROOT.0,
                name: OsStr::new("").into(),
            },
        );
        t.by_identity.insert(identity, INodeNo::ROOT.0);
        Ok(Nodes {
            table: RwLock::new(t),
            root_dev: identity.0,
            root,
            warned_emfile: Mutex::new(false),
        })
    }

    pub fn get(&self, ino: INodeNo) -> Option<Arc<Node>> {
        if ino == INodeNo::ROOT {
            return Some(self.root.clone());
        }
        self.table.read().by_ino.get(&ino.0).map(|e| e.node.clone())
    }

    /// Looks `name` up in `parent` and counts one kernel reference to the result: (mount inode,
    /// generation, attributes).
    pub fn lookup(
        &self,
        parent_ino: u64,
        parent: &Node,
        name: &OsStr,
    ) -> io::Result<(u64, u64, Statx)> {
        let fd = match sys::open_child(parent.fd.as_fd(), name) {
            Ok(fd) => fd,
            Err(e) => {
                if e.raw_os_error() == Some(libc::EMFILE) {
                    let mut warned = self.warned_emfile.lock();
                    if !*warned {
                        *warned = true;
                        tracing::warn!(
                            "out of file descriptors ({} inodes held by the kernel): lookups fail with EMFILE",
                            self.count()
                        );
                    }
                }
                return Err(e);
            }
        };
        let st = sys::statx(fd.as_fd())?;
        let identity = (sys::dev_of(&st), st.stx_ino);
        let mut t = self.table.write();
        if let Some(&ino) = t.by_identity.get(&identity)
            && let Some(e) = t.by_ino.get_mut(&ino)
        {
            // The same live object (its descriptor pins it): a hardlink or a repeated lookup.
            e.lookups += 1;
            if e.parent != parent_ino || *e.name != *name {
                e.parent = parent_ino;
                e.name = name.into();
            }
            return Ok((ino, e.generation, st));
        }
        let own = self.preferred_ino(identity);
        let ino = if own.is_some_and(|i| !t.by_ino.contains_key(&i)) {
            own.unwrap_or_default()
        } else {
            loop {
                t.next_spare += 1;
                if !t.by_ino.contains_key(&t.next_spare) {
                    break t.next_spare;
                }
            }
        };
        let generation = t.next_generation;
        t.next_generation += 1;
        let kind = u32::from(st.stx_mode) & libc::S_IFMT;
        t.by_ino.insert(
            ino,
            Entry {
                node: Arc::new(Node {
                    fd,
                    name: name.to_string_lossy().into(),
                    is_file: kind == libc::S_IFREG,
                    is_dir: kind == libc::S_IFDIR,
                    versions: Mutex::new(Versions::default()),
                }),
                identity,
                generation,
                lookups: 1,
                parent: parent_ino,
                name: name.into(),
            },
        );
        t.by_identity.insert(identity, ino);
        Ok((ino, generation, st))
    }

    /// The kernel dropped `n` references; the node goes with the last one. Handles still open on
    /// it keep their own `Arc`, so its descriptor closes only after them.
    pub fn forget(&self, ino: INodeNo, n: u64) {
        if ino == INodeNo::ROOT {
            return;
        }
        let mut t = self.table.write();
        let Some(e) = t.by_ino.get_mut(&ino.0) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups == 0 {
            let identity = e.identity;
            t.by_ino.remove(&ino.0);
            if t.by_identity.get(&identity) == Some(&ino.0) {
                t.by_identity.remove(&identity);
            }
        }
    }

    /// Entries whose object was deleted from the source while the kernel still remembers them and
    /// no open file holds them: (parent, child, name). Their descriptors keep the deleted object
    /// (and its disk space) alive, and the kernel only forgets an unused inode under memory
    /// pressure unless told it is gone.
    pub fn deleted(&self) -> Vec<(u64, u64, Box<OsStr>)> {
        let t = self.table.read();
        t.by_ino
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.node) == 1 && !e.name.is_empty())
            .filter(|(_, e)| sys::statx(e.node.fd.as_fd()).is_ok_and(|st| st.stx_nlink == 0))
            .map(|(&ino, e)| (e.parent, ino, e.name.clone()))
            .collect()
    }

    /// The mount inode already standing for a source object, if the kernel holds one.
    pub fn ino_of(&self, identity: (u64, u64)) -> Option<u64> {
        self.table.read().by_identity.get(&identity).copied()
    }

    /// The number an object would get: its own, on the source's device (1 is the root's).
    fn preferred_ino(&self, identity: (u64, u64)) -> Option<u64> {
        (identity.0 == self.root_dev && identity.1 > INodeNo::ROOT.0).then_some(identity.1)
    }

    /// The number to list for an entry of a plain readdir (which makes no node): the node's if the
    /// kernel holds one, else the one a lookup would most likely give.
    pub fn listed_ino(&self, identity: (u64, u64)) -> u64 {
        self.ino_of(identity)
            .or_else(|| self.preferred_ino(identity))
            .unwrap_or(SPARE_BASE)
    }

    /// Nodes in the table (each holds one descriptor).
    pub fn count(&self) -> usize {
        self.table.read().by_ino.len()
    }
}
