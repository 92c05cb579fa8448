//! The engine's side of the control channel (`control/`): warm admissions, pins and evictions,
//! done here because this thread alone inserts, evicts and frees.
//!
//! Why a pinned file's chunks leave the policy instead of being refused at eviction: the policy
//! would offer them again and again (each refusal costs a lap of its queues), and a pool mostly
//! pinned would make every eviction a scan. Out of the policy, they are simply never offered;
//! unpinning puts them back in the main queue (they were wanted).

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::{Engine, Source, Stamp};
use crate::arena::PAGE_BYTES;
use crate::index::Form;

pub enum Control {
    /// Keep this version whole in the store and fill it, as a reused open would.
    Admit {
        src: Arc<Source>,
        reply: Sender<Admitted>,
    },
    /// Stop filling a version whole (a cancelled warm that started the fill).
    StopStore { file_id: u64 },
    /// Keep (or stop keeping) every chunk of this cache id out of eviction.
    Pin { file_id: u64, pinned: bool },
    /// Drop a version's chunks and its store file, unless something holds them.
    Evict {
        file_id: Option<u64>,
        stamp: Stamp,
        reply: Sender<Evicted>,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Admitted {
    /// The version is in the store now (complete, or being filled).
    pub stored: bool,
    /// This admission started (or resumed) its fill.
    pub started: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Evicted {
    /// Arena chunks dropped, and those a reader held at that moment (left).
    pub chunks: u64,
    pub held_chunks: u64,
    /// Its store file was removed / is held by an open handle or a fill.
    pub store_removed: bool,
    pub store_held: bool,
}

impl Engine {
    pub(super) fn control(&mut self, c: Control) {
        match c {
            Control::Admit { src, reply } => {
                let jobs = self.store_jobs.len();
                self.admit(src.clone(), true);
                let _ = reply.send(Admitted {
                    stored: src.store.get().is_some(),
                    started: self.store_jobs.len() > jobs,
                });
            }
            Control::StopStore { file_id } => {
                self.store_jobs.retain(|(s, _)| s.file_id != file_id);
            }
            Control::Pin { file_id, pinned } => self.pin(file_id, pinned),
            Control::Evict {
                file_id,
                stamp,
                reply,
            } => {
                let _ = reply.send(self.evict(file_id, stamp));
            }
        }
    }

    fn pin(&mut self, file_id: u64, pinned: bool) {
        let slots = self.file_slots.of(file_id).to_vec();
        if pinned {
            if self.pinned.insert(file_id) {
                for slot in slots {
                    self.policy.remove(slot);
                }
            }
            return;
        }
        if !self.pinned.remove(&file_id) {
            return;
        }
        let index = &self.shared.index;
        for slot in slots {
            let key = index.key_of(slot);
            if key.file != file_id || self.policy.is_queued(slot) {
                continue;
            }
            let view = index.view_of(slot);
            let bytes = match view.form {
                Form::Raw => view.block.pages as usize * PAGE_BYTES,
                Form::Encoded => view.stored_bytes(),
            };
            self.policy.insert_main(slot, key.hash64(), bytes as u32);
        }
    }

    /// Whether chunks of this cache id are kept out of the policy.
    pub(super) fn is_pinned(&self, file_id: u64) -> bool {
        !self.pinned.is_empty() && self.pinned.contains(&file_id)
    }

    fn evict(&mut self, file_id: Option<u64>, stamp: Stamp) -> Evicted {
        let mut out = Evicted::default();
        if let Some(id) = file_id {
            let before = self.file_slots.of(id).len() as u64;
            self.purge(id);
            out.held_chunks = self.file_slots.of(id).len() as u64;
            out.chunks = before - out.held_chunks;
        }
        let shared = self.shared.clone();
        if let Some(store) = shared.store.as_ref() {
            match store.remove_if_idle(&stamp) {
                Some(slabs) => {
                    shared.arena.give_back(slabs);
                    out.store_removed = true;
                }
                None => out.store_held = store.peek(&stamp).is_some(),
            }
        }
        out
    }
}
