//! Finding the members of a model set on the source, below descriptors the daemon already holds.
//!
//! Why like this: the daemon runs as root and may serve other users, so a set prefetch must act
//! only on objects the opener could reach and read itself. Every member, index and manifest is
//! one `openat(dir, name, O_PATH | O_NOFOLLOW)` below the descriptor of a directory the kernel
//! looked up (a name from a JSON file is a single component, checked in `sets`), so no path is
//! joined, no symlink followed (a symlinked member is an `S_IFLNK` here and is skipped), and only
//! regular files whose mode lets the opener read them are taken. The mode check is the one the
//! kernel makes on this mount (`default_permissions` uses the attributes we report, not ACLs);
//! supplementary groups are not known from a FUSE request, so a file readable only through one
//! is skipped (prefetch only warms the cache: reads still pass the kernel's checks).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::Statx;

use super::nodes::Nodes;
use super::sys::{self, Reopener};
use crate::engine::{Stamp, pread_full};
use crate::sets::{self, ShardName};

/// Who opened the file that found the set (from the FUSE request).
#[derive(Clone, Copy, Debug)]
pub struct Opener {
    pub uid: u32,
    pub gid: u32,
}

impl Opener {
    /// Whether the mode of `st` grants all of `want` (4 read, 1 search) to this opener.
    pub fn may(&self, st: &Statx, want: u32) -> bool {
        let mode = u32::from(st.stx_mode);
        if self.uid == 0 {
            return true; // root reads and searches everything (CAP_DAC_READ_SEARCH)
        }
        let bits = if self.uid == st.stx_uid {
            mode >> 6
        } else if self.gid == st.stx_gid {
            mode >> 3
        } else {
            mode
        };
        bits & want == want
    }
}

/// What kind of set a file name may belong to (a cheap test made at every open).
#[derive(Clone, Debug)]
pub enum Kind {
    Shards(ShardName),
    /// A `.safetensors` file: a `*.safetensors.index.json` beside it may name it.
    SafetensorsIndexed,
    /// An ollama blob: a manifest may list it.
    OllamaBlob,
}

pub fn kind_of(name: &str) -> Option<Kind> {
    if let Some(s) = ShardName::parse(name) {
        return Some(Kind::Shards(s));
    }
    if name.ends_with(".safetensors") && sets::valid_member_name(name) {
        return Some(Kind::SafetensorsIndexed);
    }
    sets::is_blob_name(name).then_some(Kind::OllamaBlob)
}

/// One member to prefetch: where it is, and its stamp when checked.
pub struct Member {
    pub name: Arc<str>,
    pub at: At,
    pub stamp: Stamp,
}

/// Where a member is: a local object (its `O_PATH` descriptor) or an object in a bucket.
pub enum At {
    Fd(OwnedFd),
    Remote {
        /// Path below the mount's root.
        rel: String,
        object: crate::remote::Object,
    },
}

impl Member {
    pub fn size(&self) -> u64 {
        self.stamp.2
    }
}

/// A set found from an open: the other members in loader order, and what was left out.
pub struct Found {
    pub label: String,
    /// Members of the set, the opened one included.
    pub total: usize,
    pub members: Vec<Member>,
    /// (name, why) of members not taken.
    pub skipped: Vec<(String, &'static str)>,
}

/// Where to look: the opened file's directory (mount inode) and name.
pub struct Ctx<'a> {
    pub nodes: &'a Nodes,
    pub reopener: &'a Reopener,
    pub who: Opener,
}

/// The set `opened` (in directory `dir_ino`) belongs to, if any.
pub fn find(ctx: &Ctx<'_>, dir_ino: u64, opened: &str, kind: &Kind) -> Option<Found> {
    let dir_node = ctx.nodes.get(fuser::INodeNo(dir_ino))?;
    let dir = dir_node.path_fd().ok()?;
    let (label, names) = match kind {
        Kind::Shards(s) => (s.label(), s.members()),
        Kind::SafetensorsIndexed => safetensors_index(ctx, dir.as_fd(), opened)?,
        Kind::OllamaBlob => {
            // Members are blobs beside the opened one; manifests are under the models root.
            if &*dir_node.name != "blobs" {
                return None;
            }
            let root = ctx
                .nodes
                .get(fuser::INodeNo(ctx.nodes.parent_of(dir_ino)?))?;
            let root_fd = root.path_fd().ok()?;
            ollama_manifest(ctx, root_fd.as_fd(), opened)?
        }
    };
    if !names.iter().any(|n| n == opened) {
        return None;
    }
    let dir = dir.as_fd();
    let mut found = Found {
        label,
        total: names.len(),
        members: Vec::new(),
        skipped: Vec::new(),
    };
    for name in names.into_iter().filter(|n| n != opened) {
        match resolve(ctx.who, dir, &name) {
            Ok(m) => found.members.push(m),
            Err(why) => found.skipped.push((name, why)),
        }
    }
    Some(found)
}

/// One member below `dir`: a regular file the opener may read.
fn resolve(who: Opener, dir: BorrowedFd<'_>, name: &str) -> Result<Member, &'static str> {
    let fd = sys::open_child(dir, std::ffi::OsStr::new(name)).map_err(|_| "missing")?;
    let st = sys::statx(fd.as_fd()).map_err(|_| "missing")?;
    if !sys::is_reg(&st) {
        return Err("not a regular file");
    }
    if !who.may(&st, 4) {
        return Err("not readable by the opener");
    }
    if st.stx_size == 0 {
        return Err("empty");
    }
    Ok(Member {
        name: name.into(),
        at: At::Fd(fd),
        stamp: sys::stamp(&st),
    })
}

/// The bytes of a small JSON file below `dir`, if it is a regular file the opener may read and
/// no larger than `cap`.
fn read_json(
    who: Opener,
    reopener: &Reopener,
    dir: BorrowedFd<'_>,
    name: &str,
    cap: u64,
) -> Option<Vec<u8>> {
    let fd = sys::open_child(dir, std::ffi::OsStr::new(name)).ok()?;
    let st = sys::statx(fd.as_fd()).ok()?;
    read_json_fd(who, reopener, &fd, &st, cap)
}

fn read_json_fd(
    who: Opener,
    reopener: &Reopener,
    fd: &OwnedFd,
    st: &Statx,
    cap: u64,
) -> Option<Vec<u8>> {
    if !sys::is_reg(st) || !who.may(st, 4) || st.stx_size > cap {
        return None;
    }
    let file = reopener.open_read(fd.as_fd(), false).ok()?;
    // One byte more than the size said: a file that grew past the cap since is refused.
    let mut buf = vec![0u8; st.stx_size as usize + 1];
    let n = pread_full(&file, &mut buf, 0).ok()?;
    if n as u64 > cap {
        return None;
    }
    buf.truncate(n);
    Some(buf)
}

/// A `*.safetensors.index.json` in `dir` that names `opened`: (its name, the files it names).
fn safetensors_index(
    ctx: &Ctx<'_>,
    dir: BorrowedFd<'_>,
    opened: &str,
) -> Option<(String, Vec<String>)> {
    const MAX_INDEXES: usize = 16;
    let list = ctx.reopener.list(dir).ok()?;
    let indexes = list
        .iter()
        .filter_map(|(n, _, _)| n.to_str())
        .filter(|n| sets::is_safetensors_index(n))
        .take(MAX_INDEXES);
    for index in indexes {
        let Some(json) = read_json(ctx.who, ctx.reopener, dir, index, sets::MAX_JSON_BYTES) else {
            continue;
        };
        match sets::index_members(&json) {
            Ok((names, rejected)) if names.iter().any(|n| n == opened) => {
                if rejected > 0 {
                    tracing::warn!(
                        "SET {index}: {rejected} file name(s) in weight_map ignored (not a plain file name)"
                    );
                }
                return Some((index.to_string(), names));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("set: {index} is not a usable index: {e}"),
        }
    }
    None
}

/// An ollama manifest under `root/manifests/` listing blob `opened`: (its path there, the blobs).
/// Manifests live four levels down (`registry/namespace/model/tag`); the walk is bounded.
fn ollama_manifest(
    ctx: &Ctx<'_>,
    root: BorrowedFd<'_>,
    opened: &str,
) -> Option<(String, Vec<String>)> {
    const MAX_DEPTH: usize = 4;
    const MAX_VISITS: usize = 4096;
    const MAX_MANIFEST_BYTES: u64 = 1 << 20;
    let top = sys::open_child(root, std::ffi::OsStr::new("manifests")).ok()?;
    // (descriptor, relative path, depth)
    let mut stack = vec![(top, String::from("manifests"), 0usize)];
    let mut visits = 0;
    while let Some((dir, rel, depth)) = stack.pop() {
        let st = sys::statx(dir.as_fd()).ok()?;
        if !sys::is_dir(&st) || !ctx.who.may(&st, 5) {
            continue;
        }
        let Ok(list) = ctx.reopener.list(dir.as_fd()) else {
            continue;
        };
        for (name, _, _) in list {
            visits += 1;
            if visits > MAX_VISITS {
                return None;
            }
            let Some(name) = name.to_str().filter(|n| sets::valid_member_name(n)) else {
                continue;
            };
            // d_type may be unknown: each entry is looked at through its own descriptor.
            let Ok(fd) = sys::open_child(dir.as_fd(), std::ffi::OsStr::new(name)) else {
                continue;
            };
            let Ok(st) = sys::statx(fd.as_fd()) else {
                continue;
            };
            let path = format!("{rel}/{name}");
            if sys::is_dir(&st) {
                if depth < MAX_DEPTH {
                    stack.push((fd, path, depth + 1));
                }
                continue;
            }
            let Some(json) = read_json_fd(ctx.who, ctx.reopener, &fd, &st, MAX_MANIFEST_BYTES)
            else {
                continue;
            };
            if let Ok((blobs, _)) = sets::manifest_blobs(&json)
                && blobs.iter().any(|b| b == opened)
                && sets::manifest_has_model(&json)
            {
                return Some((path, blobs));
            }
        }
    }
    None
}
