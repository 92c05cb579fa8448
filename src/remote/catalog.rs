//! The control channel's view of a bucket: paths a user names under the mountpoint, mapped to
//! objects (one listing per directory walked) and to the versions an open would read.
//!
//! Why a warm opens through `Core::version`, as a FUSE open does: a warmed object must be the
//! very version (cache id, store file) the next open shares, or the warm fills bytes nobody reads.

use std::sync::Arc;

use super::fs::Core;
use super::tree::Kind;
use crate::engine::Stamp;
use crate::fuse::catalog::{Found, Opened, RemoteCatalog, Target, natural_cmp};

/// A walk stops here (a typo'd `/` should not pin the daemon for minutes).
const MAX_FILES: usize = 100_000;
const MAX_DEPTH: usize = 64;

impl Core {
    /// A found object. A listing without ETags (some S3-compatible servers) does not name a
    /// version: a HEAD does, so the target's stamp is the one an open will see.
    fn target(&self, rel: &str, listed: &super::Object) -> Target {
        let headed = match listed.etag {
            Some(_) => None,
            None => self.client.head(&listed.key).ok(),
        };
        let object = headed.as_ref().unwrap_or(listed);
        Target {
            path: rel.to_string(),
            fd: None,
            size: object.size,
            stamp: object.stamp(self.client.id.0),
        }
    }

    fn walk(&self, rel: &str, out: &mut Found, depth: usize) -> Result<(), String> {
        let shown = if rel.is_empty() { "." } else { rel };
        let listing = self
            .tree
            .list(&self.client, rel)
            .map_err(|e| format!("{shown}/: {e}"))?;
        for e in listing.iter() {
            let path = super::join(rel, &e.name);
            match (&e.kind, &e.object) {
                (Kind::File, Some(o)) => {
                    if out.files.len() >= MAX_FILES {
                        return Err(format!("more than {MAX_FILES} files named; name fewer"));
                    }
                    out.files.push(self.target(&path, o));
                }
                (Kind::Dir, _) if depth < MAX_DEPTH => self.walk(&path, out, depth + 1)?,
                _ => out.skipped.push((path, "too deep".into())),
            }
        }
        Ok(())
    }
}

impl RemoteCatalog for Core {
    fn find(&self, paths: &[String]) -> Result<Found, String> {
        let mut found = Found::default();
        for p in paths {
            let rel = p.trim_start_matches("./").trim_matches('/');
            let rel = if rel == "." { "" } else { rel };
            if rel.split('/').any(|c| c == ".." || c == ".") {
                return Err(format!("{p}: outside the mount"));
            }
            if rel.is_empty() {
                self.walk("", &mut found, 0)?;
                continue;
            }
            let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
            let listing = self
                .tree
                .list(&self.client, parent)
                .map_err(|e| format!("{p}: {e}"))?;
            let entry = listing
                .binary_search_by(|e| e.name.as_str().cmp(name))
                .map(|i| &listing[i])
                .map_err(|_| format!("{p}: does not exist"))?;
            match (&entry.kind, &entry.object) {
                (Kind::File, Some(o)) => found.files.push(self.target(rel, o)),
                _ => self.walk(rel, &mut found, 1)?,
            }
        }
        found.files.sort_by(|a, b| natural_cmp(&a.path, &b.path));
        found.files.dedup_by(|a, b| a.path == b.path);
        Ok(found)
    }

    fn open(&self, t: &Target) -> Result<Opened, String> {
        let object = self.current_object(&t.path).map_err(|e| {
            let io = std::io::Error::from_raw_os_error(e.code());
            format!("{}: {io}", t.path)
        })?;
        // A changed object is purged by `version` itself.
        let (src, _, _) = self.version(&t.path, None, object);
        Ok(Opened {
            src,
            stable: true,
            purge: Vec::new(),
        })
    }

    fn file_id_of(&self, stamp: Stamp) -> Option<u64> {
        self.known()
            .into_iter()
            .find(|(_, s, _)| *s == stamp)
            .map(|(id, _, _)| id)
    }

    fn versions(&self) -> Vec<(u64, Stamp, Arc<str>)> {
        self.known()
    }
}
