//! The control channel's view of the source tree: paths a user names under the mountpoint, mapped
//! to source objects and to the versions an open would read.
//!
//! Why `openat2` beneath the root's own descriptor, with no symlinks: the daemon may be root and
//! the path comes from a command line. The kernel resolved nothing for us here (no lookup came
//! through FUSE), so the path is walked once, inside the source (`RESOLVE_BENEATH`), and a symlink
//! anywhere on it is refused rather than followed; directories are walked one component at a time
//! from their own descriptors, as lookups are. After that only descriptors are used.
//!
//! Why versions are opened through `versions::open_version` on a detached node: a warmed file must
//! be the very version (cache id, store file) a later open of the same stamp shares, or the warm
//! would fill bytes nobody reads.

use std::cmp::Ordering as CmpOrdering;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use rustix::fs::{OFlags, ResolveFlags};

use super::nodes::{Node, Nodes};
use super::sys::{self, Reopener};
use super::versions::{self, Registry};
use crate::engine::{Source, Stamp};

/// A walk stops here (a typo'd `/` should not pin the daemon for minutes).
const MAX_FILES: usize = 100_000;
const MAX_DEPTH: usize = 64;

/// The control channel's view of the source: a local tree walked by descriptors, or a bucket.
pub enum Catalog {
    Local(Local),
    Remote(Arc<dyn RemoteCatalog>),
}

/// What a remote source offers the control channel (see `remote::catalog`).
pub trait RemoteCatalog: Send + Sync {
    fn find(&self, paths: &[String]) -> Result<Found, String>;
    fn open(&self, t: &Target) -> Result<Opened, String>;
    fn file_id_of(&self, stamp: Stamp) -> Option<u64>;
    fn versions(&self) -> Vec<(u64, Stamp, Arc<str>)>;
}

impl Catalog {
    /// The files `paths` (relative to the mount's root) name, directories walked, in the order a
    /// loader reads them (numbered shards by number, then by name). Err: the first path that does
    /// not resolve, in words.
    pub fn find(&self, paths: &[String]) -> Result<Found, String> {
        match self {
            Catalog::Local(l) => l.find(paths),
            Catalog::Remote(r) => r.find(paths),
        }
    }

    /// The version an open of `t` would read now, opened as an open does (shared with the opens
    /// of the same version).
    pub fn open(&self, t: &Target) -> Result<Opened, String> {
        match self {
            Catalog::Local(l) => l.open(t),
            Catalog::Remote(r) => r.open(t),
        }
    }

    /// The cache id the chunks of the version with this stamp are kept under, if it was opened.
    pub fn file_id_of(&self, stamp: Stamp) -> Option<u64> {
        match self {
            Catalog::Local(l) => l.registry.file_id_of(stamp),
            Catalog::Remote(r) => r.file_id_of(stamp),
        }
    }

    /// Every version opened so far: (cache id, stamp, name).
    pub fn versions(&self) -> Vec<(u64, Stamp, Arc<str>)> {
        match self {
            Catalog::Local(l) => l.registry.list(),
            Catalog::Remote(r) => r.versions(),
        }
    }
}

pub struct Local {
    nodes: Arc<Nodes>,
    reopener: Reopener,
    registry: Arc<Registry>,
    next_file_id: Arc<AtomicU64>,
}

/// A regular file found under a named path.
pub struct Target {
    /// Relative to the mount's root, for messages.
    pub path: String,
    /// `O_PATH` descriptor of the object (None: an object in a bucket, found by `path`).
    pub fd: Option<OwnedFd>,
    pub size: u64,
    pub stamp: Stamp,
}

/// What a set of paths named: files in loader order, and what was left out and why.
#[derive(Default)]
pub struct Found {
    pub files: Vec<Target>,
    pub skipped: Vec<(String, String)>,
}

/// A version opened for the control channel.
pub struct Opened {
    pub src: Arc<Source>,
    /// Quiet long enough to be shared with later opens (see `versions::RACY_WINDOW`).
    pub stable: bool,
    /// Cache ids of superseded versions, to purge.
    pub purge: Vec<u64>,
}

fn why(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => "a symlink is on the path (not followed)".into(),
        Some(libc::EXDEV) => "outside the mount".into(),
        Some(libc::ENOENT) => "does not exist".into(),
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied".into(),
        _ => e.to_string(),
    }
}

impl Local {
    pub(super) fn catalog(
        nodes: Arc<Nodes>,
        registry: Arc<Registry>,
        next_file_id: Arc<AtomicU64>,
    ) -> std::io::Result<Catalog> {
        Ok(Catalog::Local(Local {
            nodes,
            reopener: Reopener::new()?,
            registry,
            next_file_id,
        }))
    }

    fn find(&self, paths: &[String]) -> Result<Found, String> {
        let root = self
            .nodes
            .root()
            .path_fd()
            .map_err(|e| format!("source root: {e}"))?;
        let mut found = Found::default();
        for p in paths {
            let rel = p.trim_start_matches("./").trim_end_matches('/');
            let rel = if rel.is_empty() { "." } else { rel };
            if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
                return Err(format!("{p}: outside the mount"));
            }
            let fd = rustix::fs::openat2(
                root.as_fd(),
                rel,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
            .map_err(|e| format!("{p}: {}", why(&std::io::Error::from(e))))?;
            let shown = if rel == "." { "" } else { rel };
            self.add(fd, shown.to_string(), &mut found, 0)?;
        }
        found.files.sort_by(|a, b| natural_cmp(&a.path, &b.path));
        let mut seen = std::collections::HashSet::new();
        found.files.retain(|t| seen.insert((t.stamp.0, t.stamp.1)));
        Ok(found)
    }

    fn add(&self, fd: OwnedFd, path: String, out: &mut Found, depth: usize) -> Result<(), String> {
        let st = sys::statx(fd.as_fd()).map_err(|e| format!("{path}: {}", why(&e)))?;
        let kind = u32::from(st.stx_mode) & libc::S_IFMT;
        if kind == libc::S_IFREG {
            if out.files.len() >= MAX_FILES {
                return Err(format!("more than {MAX_FILES} files named; name fewer"));
            }
            out.files.push(Target {
                path,
                fd: Some(fd),
                size: st.stx_size,
                stamp: sys::stamp(&st),
            });
        } else if kind == libc::S_IFDIR && depth < MAX_DEPTH {
            self.walk(fd.as_fd(), &path, out, depth + 1)?;
        } else if kind == libc::S_IFLNK {
            out.skipped.push((path, "symlink (not followed)".into()));
        } else {
            out.skipped.push((path, "not a regular file".into()));
        }
        Ok(())
    }

    fn walk(
        &self,
        dir: BorrowedFd<'_>,
        prefix: &str,
        out: &mut Found,
        depth: usize,
    ) -> Result<(), String> {
        let entries = self
            .reopener
            .list(dir)
            .map_err(|e| format!("{prefix}/: {}", why(&e)))?;
        for (name, _, _) in entries {
            let shown = name.to_string_lossy();
            let path = if prefix.is_empty() {
                shown.into_owned()
            } else {
                format!("{prefix}/{shown}")
            };
            match sys::open_child(dir, &name) {
                Ok(fd) => self.add(fd, path, out, depth)?,
                Err(e) => out.skipped.push((path, why(&e))),
            }
        }
        Ok(())
    }

    fn open(&self, t: &Target) -> Result<Opened, String> {
        let fd =
            t.fd.as_ref()
                .ok_or_else(|| format!("{}: not a local file", t.path))?
                .try_clone()
                .map_err(|e| format!("{}: {e}", t.path))?;
        let name: Arc<str> = t.path.rsplit('/').next().unwrap_or(&t.path).into();
        let node = Node::detached(fd, name);
        let ctx = versions::Ctx {
            reopener: &self.reopener,
            registry: &self.registry,
            next_file_id: &self.next_file_id,
            fuse_ino: 0,
        };
        let (opened, purge) = versions::open_version(&node, &ctx).map_err(|e| {
            format!(
                "{}: {}",
                t.path,
                why(&std::io::Error::from_raw_os_error(e.code()))
            )
        })?;
        Ok(Opened {
            src: opened.src,
            stable: opened.stable,
            purge,
        })
    }
}

/// Orders names as a loader reads shards: runs of digits compare by value
/// (`model-2-of-10` before `model-10-of-10`), the rest byte by byte.
pub fn natural_cmp(a: &str, b: &str) -> CmpOrdering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return CmpOrdering::Equal,
            (None, _) => return CmpOrdering::Less,
            (_, None) => return CmpOrdering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (strip_zeros(&a[..da]), strip_zeros(&b[..db]));
                let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if ord != CmpOrdering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => {
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn strip_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n.min(d.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sort_by_number_then_name() {
        let mut v = vec![
            "m/model-10-of-12.safetensors",
            "m/model-2-of-12.safetensors",
            "m/config.json",
            "m/model-1-of-12.safetensors",
            "a.bin",
            "m/model-002-of-12.x",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "a.bin",
                "m/config.json",
                "m/model-1-of-12.safetensors",
                "m/model-2-of-12.safetensors",
                "m/model-002-of-12.x",
                "m/model-10-of-12.safetensors",
            ]
        );
    }
}
