//! The bucket as a directory tree: inode numbers for keys, and listings kept for a TTL.
//!
//! Why inode numbers are never reused: a number the kernel may still remember must never name
//! another object (the local source's generation tags solve the same problem). Numbers only grow;
//! a node the kernel forgets is dropped, and a later lookup of the same key gets a new number.
//!
//! Why a name that is both a "directory" (a common prefix) and an object is the directory: a
//! path can name only one thing, and the prefix holds everything below it (mountpoint-s3 does the
//! same).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use super::{Client, Object};
use crate::fuse::versions::Versions;
use object_store::ObjectStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// One name of a listing.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    /// The object as listed (files).
    pub object: Option<Object>,
}

/// A directory's names, sorted.
pub type Listing = Arc<Vec<Entry>>;

pub struct Inode {
    pub ino: u64,
    /// Path below the mount's prefix ("" for the root).
    pub rel: String,
    pub name: Arc<str>,
    pub kind: Kind,
    /// The object as last listed or opened (files).
    pub object: Mutex<Option<Object>>,
    lookups: AtomicU64,
    /// Open-file routing (passthrough, keep mode), as local nodes have.
    pub versions: Mutex<Versions>,
}

pub struct Tree {
    inodes: RwLock<HashMap<u64, Arc<Inode>>>,
    by_rel: Mutex<HashMap<String, u64>>,
    next_ino: AtomicU64,
    listings: Mutex<HashMap<String, (Instant, Listing)>>,
}

pub const ROOT_INO: u64 = 1;

impl Tree {
    pub fn new() -> Tree {
        let root = Arc::new(Inode {
            ino: ROOT_INO,
            rel: String::new(),
            name: "".into(),
            kind: Kind::Dir,
            object: Mutex::new(None),
            lookups: AtomicU64::new(1),
            versions: Mutex::new(Versions::default()),
        });
        Tree {
            inodes: RwLock::new(HashMap::from([(ROOT_INO, root)])),
            by_rel: Mutex::new(HashMap::from([(String::new(), ROOT_INO)])),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            listings: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.inodes.read().get(&ino).cloned()
    }

    /// The listing of directory `rel`, from the cache while younger than the TTL, else a LIST.
    pub fn list(&self, client: &Client, rel: &str) -> std::io::Result<Listing> {
        if let Some((at, l)) = self.listings.lock().get(rel)
            && at.elapsed() < client.opts.list_ttl
        {
            return Ok(l.clone());
        }
        let prefix = client.dir_key(rel);
        let listed = client
            .block_on(client.store.list_with_delimiter(prefix.as_ref()))
            .map_err(|e| {
                tracing::warn!(
                    "LIST {}: {}",
                    client.loc.display(),
                    super::short(&e.to_string())
                );
                std::io::Error::from_raw_os_error(libc::EIO)
            })?;
        let mut entries: Vec<Entry> = Vec::with_capacity(listed.objects.len() + 8);
        let mut dirs = std::collections::HashSet::new();
        for p in &listed.common_prefixes {
            if let Some(name) = p.filename().filter(|n| usable(n)) {
                dirs.insert(name.to_string());
                entries.push(Entry {
                    name: name.to_string(),
                    kind: Kind::Dir,
                    object: None,
                });
            }
        }
        for m in &listed.objects {
            let Some(name) = m.location.filename().filter(|n| usable(n)) else {
                continue;
            };
            // A "directory marker" (the prefix itself) and names a directory shadows.
            if Some(&m.location) == prefix.as_ref() || dirs.contains(name) {
                continue;
            }
            entries.push(Entry {
                name: name.to_string(),
                kind: Kind::File,
                object: Some(Object::of(m)),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let l = Arc::new(entries);
        self.listings
            .lock()
            .insert(rel.to_string(), (Instant::now(), l.clone()));
        Ok(l)
    }

    /// Forgets directory `rel`'s listing (an open found an object gone).
    pub fn drop_listing(&self, rel: &str) {
        self.listings.lock().remove(rel);
    }

    /// Looks `name` up in directory `parent`, counting one kernel reference.
    pub fn lookup(
        &self,
        client: &Client,
        parent: &Inode,
        name: &str,
    ) -> std::io::Result<Arc<Inode>> {
        let enoent = || std::io::Error::from_raw_os_error(libc::ENOENT);
        if parent.kind != Kind::Dir {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let listing = self.list(client, &parent.rel)?;
        let i = listing
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .map_err(|_| enoent())?;
        Ok(self.node_for(&parent.rel, &listing[i], 1))
    }

    /// The inode of a listed entry (made on first sight), with `refs` more kernel references.
    pub fn node_for(&self, parent_rel: &str, e: &Entry, refs: u64) -> Arc<Inode> {
        let rel = super::join(parent_rel, &e.name);
        let mut by_rel = self.by_rel.lock();
        if let Some(ino) = by_rel.get(&rel).copied()
            && let Some(n) = self.get(ino)
            && n.kind == e.kind
        {
            n.lookups.fetch_add(refs, Ordering::Relaxed);
            if let Some(o) = &e.object {
                let mut cur = n.object.lock();
                // A listing older than what an open saw does not roll the size back.
                if cur.as_ref().is_none_or(|c| c.mtime_ns <= o.mtime_ns) {
                    *cur = Some(o.clone());
                }
            }
            return n;
        }
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let n = Arc::new(Inode {
            ino,
            rel: rel.clone(),
            name: e.name.as_str().into(),
            kind: e.kind,
            object: Mutex::new(e.object.clone()),
            lookups: AtomicU64::new(refs),
            versions: Mutex::new(Versions::default()),
        });
        by_rel.insert(rel, ino);
        self.inodes.write().insert(ino, n.clone());
        n
    }

    /// The kernel dropped `n` references to `ino`; at zero the node goes (never the root).
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut by_rel = self.by_rel.lock();
        let Some(node) = self.get(ino) else { return };
        let before = node.lookups.fetch_sub(
            n.min(node.lookups.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if before <= n {
            if by_rel.get(&node.rel) == Some(&ino) {
                by_rel.remove(&node.rel);
            }
            self.inodes.write().remove(&ino);
        }
    }

    /// A number for a name listed by plain readdir (no reference taken): the node's if it has
    /// one, else one from the upper half, which lookups never hand out.
    pub fn listed_ino(&self, parent_rel: &str, name: &str) -> u64 {
        let rel = super::join(parent_rel, name);
        match self.by_rel.lock().get(&rel) {
            Some(&ino) => ino,
            None => xxhash_rust::xxh3::xxh3_64(rel.as_bytes()) | 1 << 63,
        }
    }
}

/// Whether a key part can be a file name.
fn usable(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('\0')
}
