//! Model sets in a bucket: numbered shards and safetensors indexes, found from the listing of the
//! opened object's directory, and handed to the set prefetch worker (`fuse/set_prefetch.rs`),
//! which fills them in loader order into free room exactly as it does for a local directory.
//!
//! Why members are HEADed when the listing carries no ETag (some S3-compatible servers): the
//! member's version must be the one its own open will see, or the first open would replace the
//! prefetched version and purge what was fetched.

use std::sync::Arc;

use super::Object;
use super::fs::Core;
use super::tree::Kind as EntryKind;
use crate::engine::Source;
use crate::fuse::set_members::{At, Found, Kind, Member};
use crate::fuse::set_prefetch::RemoteSets;
use crate::sets;

impl Core {
    /// The version `listed` names: the listing's own when it has an ETag, else a HEAD's.
    pub(super) fn exact(&self, listed: &Object) -> Object {
        match listed.etag {
            Some(_) => listed.clone(),
            None => self
                .client
                .head(&listed.key)
                .unwrap_or_else(|_| listed.clone()),
        }
    }

    /// A `*.safetensors.index.json` in `dir` that names `opened`: (its name, the files it names).
    fn safetensors_index(
        &self,
        listing: &[super::tree::Entry],
        opened: &str,
    ) -> Option<(String, Vec<String>)> {
        const MAX_INDEXES: usize = 16;
        let indexes = listing
            .iter()
            .filter(|e| e.kind == EntryKind::File && sets::is_safetensors_index(&e.name))
            .take(MAX_INDEXES);
        for e in indexes {
            let o = e.object.as_ref()?;
            if o.size > sets::MAX_JSON_BYTES {
                continue;
            }
            let json = self
                .client
                .block_on(async {
                    use object_store::ObjectStoreExt;
                    self.client.store.get(&o.key).await?.bytes().await
                })
                .ok()?;
            if json.len() as u64 > sets::MAX_JSON_BYTES {
                continue;
            }
            match sets::index_members(&json) {
                Ok((names, _)) if names.iter().any(|n| n == opened) => {
                    return Some((e.name.clone(), names));
                }
                Ok(_) => {}
                Err(err) => tracing::debug!("set: {} is not a usable index: {err}", e.name),
            }
        }
        None
    }
}

impl RemoteSets for Core {
    fn find(&self, dir: &str, opened: &str, kind: &Kind) -> Option<Found> {
        let listing = self.tree.list(&self.client, dir).ok()?;
        let (label, names) = match kind {
            Kind::Shards(s) => (s.label(), s.members()),
            Kind::SafetensorsIndexed => self.safetensors_index(&listing, opened)?,
            // ollama's layout (manifests naming blobs) is a local-store layout.
            Kind::OllamaBlob => return None,
        };
        if !names.iter().any(|n| n == opened) {
            return None;
        }
        let mut found = Found {
            label,
            total: names.len(),
            members: Vec::new(),
            skipped: Vec::new(),
        };
        for name in names.into_iter().filter(|n| n != opened) {
            let entry = listing
                .binary_search_by(|e| e.name.as_str().cmp(&name))
                .ok()
                .map(|i| &listing[i]);
            match entry.and_then(|e| e.object.as_ref().filter(|_| e.kind == EntryKind::File)) {
                Some(o) if o.size > 0 => {
                    let object = self.exact(o);
                    found.members.push(Member {
                        name: name.as_str().into(),
                        stamp: object.stamp(self.client.id.0),
                        at: At::Remote {
                            rel: super::join(dir, &name),
                            object,
                        },
                    });
                }
                Some(_) => found.skipped.push((name, "empty")),
                None => found.skipped.push((name, "missing")),
            }
        }
        Some(found)
    }

    fn open(&self, rel: &str, object: &Object) -> Option<Arc<Source>> {
        let (src, _, _) = self.version(rel, None, object.clone());
        self.mark_prefetched(rel, src.file_id);
        Some(src)
    }
}
