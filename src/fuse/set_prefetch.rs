//! Shard-aware prefetch: an open of one member of a model set queues the others.
//!
//! Why a thread of its own: finding a set can list a directory and read JSON files, and the
//! members are opened one by one; none of that may delay the open that found the set (a FUSE
//! worker) or block the ring thread. Opens send a trigger over a small bounded channel (dropped
//! when full: a prefetch is a hint); this worker finds the set (`set_members`), cuts it to the
//! free budget, and hands the members to the engine in loader order, keeping only `WINDOW` of them
//! — and so their descriptors — in flight. The engine fills each one at full depth through the
//! store (first-time admission) or into free arena room (`engine/prefetch_set.rs`), never
//! evicting what was reused.
//!
//! Why the finished members' store entries are held until the whole set is done: a later member's
//! first-time admission may evict idle store files opened at most once, and members fetched but
//! not opened yet are exactly that; holding them keeps a set from eating itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use nitro_ring::Waker;

use super::nodes::Nodes;
use super::set_members::{self, At, Found, Kind, Member, Opener};
use super::sys::Reopener;
use super::versions::{self, Registry};
use crate::engine::{Msg, SetTicket, Shared, Source};
use crate::store::Entry;

/// Members the engine works on at once (the next starts while the last one finishes).
const WINDOW: usize = 2;
/// A set prefetched (or found wholly resident) is not looked at again for this long.
const REPEAT_AFTER: Duration = Duration::from_secs(60);
/// A member whose prefetch makes no progress for this long ends the set's prefetch.
const STALL: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);

/// An open that may have found a set.
struct Trigger {
    dir: Dir,
    name: Arc<str>,
    kind: Kind,
    who: Opener,
    opened: Arc<Source>,
}

/// The FUSE front's handle on the worker; dropping it stops the worker.
pub struct SetPrefetch {
    tx: Sender<Trigger>,
    stop: Arc<AtomicBool>,
}

impl Drop for SetPrefetch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The directory of the opened file.
enum Dir {
    /// A local directory, by mount inode.
    Ino(u64),
    /// A directory of a bucket, by path below the mount's root.
    Rel(String),
}

/// What the worker needs from the filesystem.
pub struct Deps {
    pub shared: Arc<Shared>,
    pub tx: Sender<Msg>,
    pub waker: Waker,
    pub source: SetSource,
}

/// Where members are found and opened.
pub enum SetSource {
    Local {
        nodes: Arc<Nodes>,
        registry: Arc<Registry>,
        next_file_id: Arc<AtomicU64>,
    },
    Remote(Arc<dyn RemoteSets>),
}

/// A bucket's side of set prefetch (see `remote::sets`).
pub trait RemoteSets: Send + Sync {
    /// The set `opened` (in directory `dir`, a path below the mount's root) belongs to, if any.
    fn find(&self, dir: &str, opened: &str, kind: &Kind) -> Option<Found>;
    /// The version a later open of the member will share.
    fn open(&self, rel: &str, object: &crate::remote::Object) -> Option<Arc<Source>>;
}

impl SetPrefetch {
    pub fn start(deps: Deps) -> std::io::Result<SetPrefetch> {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            reopener: Reopener::new()?,
            deps,
            stop: stop.clone(),
            recent: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("nitro-sets".into())
            .spawn(move || worker.run(&rx))?;
        Ok(SetPrefetch { tx, stop })
    }

    /// An open of `name` (mount inode `ino`) by `who`: queues a look for its set unless the file
    /// cannot be a member or its version is already whole in the store.
    pub fn opened(&self, nodes: &Nodes, ino: u64, name: &Arc<str>, who: Opener, src: &Arc<Source>) {
        if src.store.get().is_some_and(|e| e.is_complete()) {
            return;
        }
        let Some(kind) = set_members::kind_of(name) else {
            return;
        };
        let Some(dir_ino) = nodes.parent_of(ino) else {
            return;
        };
        self.trigger(Trigger {
            dir: Dir::Ino(dir_ino),
            name: name.clone(),
            kind,
            who,
            opened: src.clone(),
        });
    }

    /// An open of `name` in bucket directory `dir` (see `opened`).
    pub fn opened_remote(&self, dir: &str, name: &Arc<str>, src: &Arc<Source>) {
        if src.store.get().is_some_and(|e| e.is_complete()) {
            return;
        }
        let Some(kind) = set_members::kind_of(name) else {
            return;
        };
        self.trigger(Trigger {
            dir: Dir::Rel(dir.to_string()),
            name: name.clone(),
            kind,
            // Objects of a bucket are readable by every user of the mount (0444).
            who: Opener { uid: 0, gid: 0 },
            opened: src.clone(),
        });
    }

    fn trigger(&self, t: Trigger) {
        let name = t.name.clone();
        let t = Trigger {
            dir: t.dir,
            name: t.name,
            kind: t.kind,
            who: t.who,
            opened: t.opened,
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(t) {
            tracing::debug!("set: trigger for {name} dropped (worker busy)");
        }
    }
}

struct Worker {
    deps: Deps,
    reopener: Reopener,
    stop: Arc<AtomicBool>,
    /// Set keys and when they were last handled.
    recent: HashMap<String, Instant>,
}

/// A member the engine is working on.
struct Active {
    src: Arc<Source>,
    ticket: Arc<SetTicket>,
    /// Store bytes it had when sent (a store fill counts what it adds).
    before: u64,
    progress: (u64, Instant),
}

/// What a set's prefetch did.
#[derive(Default)]
struct Outcome {
    members: usize,
    bytes: u64,
    skipped: usize,
    short: usize,
}

impl Worker {
    fn run(&mut self, rx: &Receiver<Trigger>) {
        while !self.stopped() {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(t) => self.handle(t),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.deps.shared.dead.load(Ordering::Relaxed)
    }

    fn handle(&mut self, t: Trigger) {
        let now = Instant::now();
        if self.recent.len() > 1024 {
            self.recent
                .retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
        }
        // A file found in no set is not looked at again for a while either (a directory of
        // `.safetensors` files without an index would be listed at every open).
        let dir = match &t.dir {
            Dir::Ino(ino) => ino.to_string(),
            Dir::Rel(rel) => rel.clone(),
        };
        let alone = format!("{dir}/{}", t.name);
        if self.seen_lately(&alone, now) {
            return;
        }
        let found = match (&t.dir, &self.deps.source) {
            (Dir::Ino(ino), SetSource::Local { nodes, .. }) => {
                let ctx = set_members::Ctx {
                    nodes,
                    reopener: &self.reopener,
                    who: t.who,
                };
                set_members::find(&ctx, *ino, &t.name, &t.kind)
            }
            (Dir::Rel(rel), SetSource::Remote(r)) => r.find(rel, &t.name, &t.kind),
            _ => None,
        };
        let Some(found) = found else {
            self.recent.insert(alone, now);
            return;
        };
        let key = format!("{dir}/{}", found.label);
        if self.seen_lately(&key, now) {
            return;
        }
        self.recent.insert(key.clone(), now);
        let reserve = if t.opened.store.get().is_some() {
            0 // its room is taken already
        } else {
            t.opened.size
        };
        drop(t);
        self.prefetch(found, reserve);
        self.recent.insert(key, Instant::now());
    }

    fn seen_lately(&self, key: &str, now: Instant) -> bool {
        self.recent
            .get(key)
            .is_some_and(|at| now.duration_since(*at) < REPEAT_AFTER)
    }

    /// Bytes a first-time admission may take now: free arena slabs and idle store files opened
    /// at most once.
    fn free_budget(&self) -> u64 {
        let shared = &self.deps.shared;
        let free = u64::from(shared.arena.free_slab_count()) * shared.arena.slab_bytes() as u64;
        free + shared.store.as_ref().map_or(0, |s| s.reclaimable_bytes(1))
    }

    /// Cuts the set to what is not resident and fits the budget; logs the SET line.
    fn plan(&self, found: Found, reserve: u64) -> (String, Vec<Member>, usize) {
        let shared = &self.deps.shared;
        let mut skipped = found.skipped.len();
        for (name, why) in &found.skipped {
            tracing::debug!("SET {}: {name} skipped ({why})", found.label);
        }
        let resident = |m: &Member| {
            shared
                .store
                .as_ref()
                .and_then(|s| s.peek(&m.stamp))
                .is_some_and(|e| e.is_complete())
        };
        let (resident, todo): (Vec<Member>, Vec<Member>) =
            found.members.into_iter().partition(resident);
        let budget = self.free_budget().saturating_sub(reserve);
        let wanted: u64 = todo.iter().map(Member::size).sum();
        // Loaders read in order: the set is cut after the last member that fits.
        let mut take = 0u64;
        let mut queued = Vec::new();
        let mut full = false;
        for m in todo {
            full = full || take + m.size() > budget;
            if full {
                skipped += 1;
                continue;
            }
            take += m.size();
            queued.push(m);
        }
        let cut = wanted - take;
        tracing::info!(
            "SET {}: {} members, {} MiB queued, {} skipped{}",
            found.label,
            found.total,
            take >> 20,
            skipped,
            if resident.is_empty() {
                String::new()
            } else {
                format!(", {} already stored", resident.len())
            }
        );
        if cut > 0 {
            tracing::info!(
                "SET {}: {} MiB of {} MiB left out: {} MiB free in the pool for a prefetch",
                found.label,
                cut >> 20,
                wanted >> 20,
                budget >> 20
            );
        }
        let s = &shared.stats;
        s.sets_found.fetch_add(1, Ordering::Relaxed);
        s.set_members_queued
            .fetch_add(queued.len() as u64, Ordering::Relaxed);
        (found.label, queued, skipped)
    }

    fn prefetch(&mut self, found: Found, reserve: u64) {
        let start = Instant::now();
        let (label, members, skipped) = self.plan(found, reserve);
        if members.is_empty() {
            return;
        }
        let mut out = Outcome {
            skipped,
            ..Outcome::default()
        };
        let mut queue: VecDeque<Member> = members.into();
        let mut active: Vec<Active> = Vec::new();
        let mut held: Vec<Arc<Entry>> = Vec::new();
        loop {
            while active.len() < WINDOW
                && let Some(m) = queue.pop_front()
            {
                match self.send(&m) {
                    Some(a) => active.push(a),
                    None => out.skipped += 1,
                }
            }
            if active.is_empty() || self.stopped() {
                break;
            }
            std::thread::sleep(POLL);
            if !self.reap(&mut active, &mut held, &mut out) {
                tracing::warn!("SET {label}: prefetch stalled for {STALL:?}; giving up");
                break;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        tracing::info!(
            "SET {label} done: {} members, {} MiB in {secs:.2} s ({:.2} GB/s){}{}",
            out.members,
            out.bytes >> 20,
            out.bytes as f64 / secs.max(1e-9) / 1e9,
            if out.skipped > 0 {
                format!(", {} skipped", out.skipped)
            } else {
                String::new()
            },
            if out.short > 0 {
                format!(", {} cut short (no free room)", out.short)
            } else {
                String::new()
            }
        );
        let stats = &self.deps.shared.stats;
        stats.sets_done.fetch_add(1, Ordering::Relaxed);
        stats
            .set_prefetch_ms
            .fetch_add(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        drop(held);
    }

    /// Makes the member's version and hands it to the engine.
    fn send(&self, m: &Member) -> Option<Active> {
        use std::os::fd::AsFd;
        let src = match (&m.at, &self.deps.source) {
            (
                At::Fd(fd),
                SetSource::Local {
                    registry,
                    next_file_id,
                    ..
                },
            ) => {
                let ctx = versions::Ctx {
                    reopener: &self.reopener,
                    registry,
                    next_file_id,
                    fuse_ino: 0,
                };
                match versions::open_member(fd.as_fd(), &m.name, m.stamp, &ctx) {
                    Ok(src) => src,
                    Err(why) => {
                        tracing::debug!("set: {} not prefetched ({why:?})", m.name);
                        return None;
                    }
                }
            }
            (At::Remote { rel, object }, SetSource::Remote(r)) => r.open(rel, object)?,
            _ => return None,
        };
        let ticket = Arc::new(SetTicket::default());
        let before = src.store.get().map_or(0, |e| e.filled_bytes());
        let msg = Msg::SetMember {
            src: src.clone(),
            ticket: ticket.clone(),
        };
        if self.deps.tx.send(msg).is_err() {
            return None;
        }
        self.deps.waker.wake();
        Some(Active {
            src,
            ticket,
            before,
            progress: (0, Instant::now()),
        })
    }

    /// Takes the finished members out of `active`; false when one made no progress for `STALL`.
    fn reap(
        &self,
        active: &mut Vec<Active>,
        held: &mut Vec<Arc<Entry>>,
        out: &mut Outcome,
    ) -> bool {
        let stats = &self.deps.shared.stats;
        let mut alive = true;
        active.retain_mut(|a| {
            let (done, bytes) = member_state(a);
            if done {
                out.members += 1;
                out.bytes += bytes;
                out.short += usize::from(a.ticket.was_short());
                stats.set_prefetch_bytes.fetch_add(bytes, Ordering::Relaxed);
                if let Some(e) = a.src.store.get() {
                    held.push(e.clone());
                }
                return false;
            }
            if bytes != a.progress.0 {
                a.progress = (bytes, Instant::now());
            } else if a.progress.1.elapsed() > STALL {
                alive = false;
            }
            true
        });
        alive
    }
}

/// Whether the engine is done with a member, and the bytes its prefetch added so far.
fn member_state(a: &Active) -> (bool, u64) {
    if a.ticket.is_stored()
        && let Some(e) = a.src.store.get()
    {
        let bytes = e.filled_bytes().saturating_sub(a.before);
        let done = e.is_complete() || e.is_broken() || a.src.is_stale();
        return (done, bytes);
    }
    (a.ticket.is_done(), a.ticket.arena_bytes())
}
