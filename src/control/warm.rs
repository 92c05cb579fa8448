//! `warm` and `pin`: fill a set of files inside the daemon, at the engine's depth, in the order a
//! loader reads them, reporting progress to the client until done or cancelled.
//!
//! Why through the store when it can: a file kept whole is filled by the engine at readahead depth
//! straight into its tmpfs file, and the next open is passthrough. What the store does not take
//! (small files, `--store off`, no room) is prefetched into the arena in windows of
//! `WINDOW` chunks, so a set larger than the pool does not queue more than the engine can hold.
//! Two files are in progress at a time, so the ring stays full across a file boundary.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proto::{FileInfo, Plan, Reply, Skipped};
use super::server::Conn;
use super::{Ctx, report};
use crate::engine::{Admitted, Control, Msg, Source};
use crate::fuse::catalog::Target;
use crate::index::Key;
use crate::size::human;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Warm,
    /// Residency only: nothing changes.
    Check,
    Pin,
}

/// Arena chunks requested ahead of the first missing one.
const WINDOW: u64 = 64;
/// The next file starts when the current one has this many chunks left.
const LOOKAHEAD: u64 = 48;
const POLL: Duration = Duration::from_millis(5);
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// A file that makes no progress for this long is given up (its source fails, or it went stale).
const STALL: Duration = Duration::from_secs(30);

/// One file being filled.
struct Job {
    idx: usize,
    src: Arc<Source>,
    /// In the store (filled there by the engine); else prefetched into the arena.
    stored: bool,
    /// This warm started the store fill (stopped again on cancel).
    started: bool,
    /// Arena: the first chunk not yet seen resident (never moves back).
    low: u64,
    seen: (u64, Instant),
}

impl Job {
    fn chunks(&self, chunk: u64) -> u64 {
        self.src.size.div_ceil(chunk)
    }
}

pub(super) fn run(ctx: &Ctx, conn: &mut Conn, paths: &[String], mode: Mode) -> Reply {
    let found = match ctx.catalog().and_then(|c| c.find(paths)) {
        Ok(f) => f,
        Err(error) => return Reply::Error { error },
    };
    let skipped: Vec<Skipped> = found
        .skipped
        .iter()
        .map(|(path, why)| Skipped {
            path: path.clone(),
            why: why.clone(),
        })
        .collect();
    let infos = |ctx: &Ctx| -> Vec<FileInfo> {
        found
            .files
            .iter()
            .map(|t| report::file_info(ctx, &t.path, t.stamp, t.size))
            .collect()
    };
    if mode == Mode::Check {
        return Reply::Done {
            files: infos(ctx),
            skipped,
            cancelled: false,
        };
    }
    if mode == Mode::Pin {
        let want: Vec<_> = found
            .files
            .iter()
            .map(|t| ((t.stamp.0, t.stamp.1), t.path.clone(), t.size))
            .collect();
        if let Err(error) = ctx.pins.lock().reserve(&want) {
            return Reply::Error { error };
        }
    }
    let plan = plan(ctx, infos(ctx), skipped);
    if !conn.send(&Reply::Plan(plan.clone())) {
        return Reply::Error {
            error: "client gone".into(),
        };
    }
    let mut skipped = plan.skipped;
    let cancelled = drive(
        ctx,
        conn,
        &found.files,
        mode,
        plan.total_bytes,
        &mut skipped,
    );
    Reply::Done {
        files: infos(ctx),
        skipped,
        cancelled,
    }
}

/// The set's numbers, and a warning when it does not fit.
fn plan(ctx: &Ctx, files: Vec<FileInfo>, skipped: Vec<Skipped>) -> Plan {
    let snap = crate::mount::snapshot(&ctx.shared);
    let total: u64 = files.iter().map(|f| f.size).sum();
    let resident: u64 = files.iter().map(|f| f.resident_bytes).sum();
    let pinned_in_set: u64 = files.iter().filter(|f| f.pinned).map(|f| f.size).sum();
    let pinned = ctx.pins.lock().total_bytes();
    let free = snap.pool_bytes.saturating_sub(snap.pool_used_bytes);
    let room = snap
        .pool_bytes
        .saturating_sub(pinned.saturating_sub(pinned_in_set));
    let warning = if total > room {
        Some(format!(
            "the set ({}) does not fit the pool ({}, {} free, {} pinned by other files): files warmed last will push out the first ones",
            human(total),
            human(snap.pool_bytes),
            human(free),
            human(pinned.saturating_sub(pinned_in_set))
        ))
    } else if total.saturating_sub(resident) > free {
        Some(format!(
            "the set needs {} more and the pool has {} free: {} of other cached data will be evicted",
            human(total - resident),
            human(free),
            human(total - resident - free)
        ))
    } else {
        None
    };
    Plan {
        files,
        skipped,
        total_bytes: total,
        resident_bytes: resident,
        pool_bytes: snap.pool_bytes,
        pool_free_bytes: free,
        pinned_bytes: pinned,
        warning,
    }
}

/// Fills the files in order, two at a time; true when cancelled.
fn drive(
    ctx: &Ctx,
    conn: &mut Conn,
    files: &[Target],
    mode: Mode,
    total: u64,
    skipped: &mut Vec<Skipped>,
) -> bool {
    let chunk = ctx.shared.chunk_bytes;
    let mut held: Vec<Arc<Source>> = Vec::new();
    let mut active: VecDeque<Job> = VecDeque::new();
    let mut next = 0;
    let mut last_progress = Instant::now();
    let mut cancelled = false;
    loop {
        if conn.cancelled() || ctx.stopping() {
            cancelled = true;
            break;
        }
        while next < files.len()
            && active.len() < 2
            && active
                .back()
                .is_none_or(|j| left(ctx, j) <= LOOKAHEAD * chunk)
        {
            let t = &files[next];
            match start(ctx, t, next, mode) {
                Ok(job) => {
                    held.push(job.src.clone());
                    active.push_back(job);
                }
                Err(why) => skipped.push(Skipped {
                    path: t.path.clone(),
                    why,
                }),
            }
            next += 1;
        }
        if active.is_empty() && next >= files.len() {
            break;
        }
        step(ctx, &mut active, files, skipped);
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let resident = held
                .iter()
                .map(|s| report::resident_src(&ctx.shared, s))
                .sum();
            let file = active.front().map_or(next, |j| j.idx);
            if !conn.send(&Reply::Progress {
                resident_bytes: resident,
                total_bytes: total,
                file,
            }) {
                cancelled = true;
                break;
            }
        }
        std::thread::sleep(POLL);
    }
    if cancelled {
        for j in active.iter().filter(|j| j.started) {
            ctx.send(Msg::Control(Control::StopStore {
                file_id: j.src.file_id,
            }));
        }
    }
    cancelled
}

/// Bytes of a job's file not resident yet.
fn left(ctx: &Ctx, j: &Job) -> u64 {
    j.src
        .size
        .saturating_sub(report::resident_src(&ctx.shared, &j.src))
}

/// Opens the version a later open will share and starts its fill.
fn start(ctx: &Ctx, t: &Target, idx: usize, mode: Mode) -> Result<Job, String> {
    let opened = ctx.catalog()?.open(t)?;
    let src = opened.src;
    for file_id in opened.purge {
        ctx.send(Msg::Purge { file_id });
    }
    let object = (t.stamp.0, t.stamp.1);
    if !opened.stable {
        if mode == Mode::Pin {
            ctx.pins.lock().remove(object);
        }
        return Err(format!(
            "changed less than {} s ago (it may still be written): not warmed",
            crate::fuse::RACY_WINDOW.as_secs()
        ));
    }
    if mode == Mode::Pin {
        let old = ctx.pins.lock().hold(object, src.clone());
        if let Some(old) = old {
            ctx.send(Msg::Control(Control::Pin {
                file_id: old.file_id,
                pinned: false,
            }));
        }
        ctx.send(Msg::Control(Control::Pin {
            file_id: src.file_id,
            pinned: true,
        }));
    }
    let mut admitted = Admitted {
        stored: false,
        started: false,
    };
    let fits_store = ctx
        .shared
        .store
        .as_ref()
        .is_some_and(|s| src.size >= s.min_bytes());
    if fits_store {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if ctx.send(Msg::Control(Control::Admit {
            src: src.clone(),
            reply: tx,
        })) {
            admitted = rx.recv_timeout(Duration::from_secs(30)).unwrap_or(admitted);
        }
    }
    Ok(Job {
        idx,
        src,
        stored: admitted.stored,
        started: admitted.started,
        low: 0,
        seen: (0, Instant::now()),
    })
}

/// Moves the jobs on: finished ones leave the front; the first arena job asks for its window.
fn step(ctx: &Ctx, active: &mut VecDeque<Job>, files: &[Target], skipped: &mut Vec<Skipped>) {
    let chunk = ctx.shared.chunk_bytes;
    let mut asked = false;
    let mut i = 0;
    while i < active.len() {
        let j = &mut active[i];
        if j.stored && j.src.store.get().is_some_and(|e| e.is_broken()) {
            j.stored = false; // the store's tmpfs refused it: on in the arena
        }
        let n = j.chunks(chunk);
        let done = if j.stored {
            j.src.store.get().is_some_and(|e| e.is_complete())
        } else {
            while j.low < n
                && ctx.shared.index.contains(Key {
                    file: j.src.file_id,
                    chunk: j.low,
                })
            {
                j.low += 1;
            }
            if j.low < n && !asked && !j.src.is_stale() {
                asked = true;
                ctx.send(Msg::Prefetch {
                    src: j.src.clone(),
                    fh: 0,
                    first: j.low,
                    last: (j.low + WINDOW).min(n) - 1,
                });
            }
            j.low >= n
        };
        let now = report::resident_src(&ctx.shared, &j.src);
        if now != j.seen.0 {
            j.seen = (now, Instant::now());
        }
        let why = if j.src.is_stale() {
            Some("the source changed during the warm")
        } else if !done && j.seen.1.elapsed() > STALL {
            Some("no progress for 30 s (see the daemon's log)")
        } else {
            None
        };
        if let Some(why) = why {
            skipped.push(Skipped {
                path: files[j.idx].path.clone(),
                why: why.into(),
            });
        }
        if done || why.is_some() {
            active.remove(i);
        } else {
            i += 1;
        }
    }
}
