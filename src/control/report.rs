//! What `stats` and `/metrics` report, gathered from the engine's counters, the telemetry, the
//! store and the index; and per-file residency for `warm --check`.
//!
//! Why rates come from a sampler rather than from each caller: `stats` without `--watch` asks
//! once, and a rate needs two points; the control thread samples the counters every second, so
//! any request gets the rates of the last full second.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Ctx;
use super::hist::Snapshot;
use super::proto::FileInfo;
use super::telemetry::Telemetry;
use crate::engine::{Shared, Source, Stamp};
use crate::index::{Form, Key};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub pool: PoolUse,
    pub reads: Reads,
    pub rates: Rates,
    /// Service times since mount, in microseconds.
    pub latency_us: Latency,
    pub fills: u64,
    pub fill_bytes: u64,
    pub prefetch_fills: u64,
    pub fill_errors: u64,
    pub uncached_reads: u64,
    pub evictions: u64,
    pub compressions: u64,
    /// Logical bytes the resident compressed chunks stand for, per arena byte they take.
    pub compression_ratio: f64,
    pub store_files: u64,
    pub store_complete_files: u64,
    pub passthrough_opens: u64,
    pub pinned_files: u64,
    pub pin_cap_bytes: u64,
    /// Model-set prefetch since mount (`fuse::set_prefetch`).
    #[serde(default)]
    pub sets: Sets,
    pub top: Vec<TopFile>,
}

/// What set prefetch did: sets found on an open, members queued, bytes their prefetch put in the
/// cache, prefetches finished and their wall time summed (from the open that found the set to the
/// last member done).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sets {
    pub found: u64,
    pub members_queued: u64,
    pub prefetched_bytes: u64,
    pub done: u64,
    pub seconds: f64,
}

/// The pool by kind: raw + compressed + pinned + free = pool; metadata is outside the pool.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PoolUse {
    pub pool_bytes: u64,
    pub used_bytes: u64,
    /// Unpinned raw bytes (arena chunks and store files).
    pub raw_bytes: u64,
    /// Arena bytes holding compressed chunks.
    pub compressed_bytes: u64,
    pub pinned_bytes: u64,
    pub free_bytes: u64,
    /// Part of the above held as whole files in the store (tmpfs).
    pub store_bytes: u64,
    /// Index and bookkeeping, outside the pool.
    pub metadata_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reads {
    pub hits: u64,
    pub misses: u64,
    pub hit_ratio: f64,
    pub hit_bytes: u64,
    pub miss_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Rates {
    pub interval_s: f64,
    pub fills_per_s: f64,
    /// Into the pool from the source.
    pub fill_gb_per_s: f64,
    pub hits_per_s: f64,
    pub misses_per_s: f64,
    /// Out to readers (hits and misses).
    pub read_gb_per_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub hit: Percentiles,
    pub miss: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopFile {
    pub name: String,
    pub resident_bytes: u64,
    pub compressed_bytes: u64,
    pub stored: bool,
    pub pinned: bool,
}

/// Counters the rates are computed from.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    fills: u64,
    fill_bytes: u64,
    hits: u64,
    misses: u64,
    read_bytes: u64,
}

pub struct Sampler {
    prev: Sample,
    cur: Sample,
}

fn sample(shared: &Shared, t: &Telemetry) -> Sample {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &shared.stats;
    Sample {
        at: Instant::now(),
        fills: s.fills.load(Relaxed),
        fill_bytes: s.fill_bytes.load(Relaxed),
        hits: s.hits.load(Relaxed),
        misses: s.misses.load(Relaxed),
        read_bytes: t.hit_bytes.load(Relaxed) + t.miss_bytes.load(Relaxed),
    }
}

impl Sampler {
    pub fn new(shared: &Shared, t: &Telemetry) -> Sampler {
        let s = sample(shared, t);
        Sampler { prev: s, cur: s }
    }

    /// Takes a new sample once a second has passed since the last.
    pub fn tick(&mut self, shared: &Shared, t: &Telemetry) {
        if self.cur.at.elapsed().as_secs_f64() >= 1.0 {
            self.prev = self.cur;
            self.cur = sample(shared, t);
        }
    }

    fn rates(&self) -> Rates {
        let dt = (self.cur.at - self.prev.at).as_secs_f64();
        if dt <= 0.0 {
            return Rates::default();
        }
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        let (c, p) = (&self.cur, &self.prev);
        Rates {
            interval_s: dt,
            fills_per_s: per(c.fills, p.fills),
            fill_gb_per_s: per(c.fill_bytes, p.fill_bytes) / 1e9,
            hits_per_s: per(c.hits, p.hits),
            misses_per_s: per(c.misses, p.misses),
            read_gb_per_s: per(c.read_bytes, p.read_bytes) / 1e9,
        }
    }
}

pub fn percentiles(s: &Snapshot) -> Percentiles {
    let us = |q| s.quantile_ns(q) as f64 / 1e3;
    Percentiles {
        count: s.count(),
        p50: us(0.5),
        p90: us(0.9),
        p99: us(0.99),
        p999: us(0.999),
    }
}

/// Logical bytes of a version resident now, and of those compressed: its store file's filled
/// chunks, else its arena chunks (`file_id`).
pub fn resident(
    shared: &Shared,
    file_id: Option<u64>,
    stamp: Stamp,
    size: u64,
) -> (u64, u64, bool) {
    if let Some(e) = shared.store.as_ref().and_then(|s| s.peek(&stamp)) {
        return (e.filled_bytes(), 0, e.is_complete());
    }
    let Some(file) = file_id else {
        return (0, 0, false);
    };
    let (mut raw, mut compressed) = (0, 0);
    for chunk in 0..size.div_ceil(shared.chunk_bytes) {
        if let Some(pin) = shared.index.pin(Key { file, chunk }, 0) {
            let v = pin.view();
            raw += v.logical_len as u64;
            if v.form == Form::Encoded {
                compressed += v.logical_len as u64;
            }
        }
    }
    (raw, compressed, false)
}

/// Residency of an opened version (a warm in progress).
pub fn resident_src(shared: &Shared, src: &Source) -> u64 {
    match src.store.get() {
        Some(e) => e.filled_bytes(),
        None => resident(shared, Some(src.file_id), src.stamp, src.size).0,
    }
}

pub fn file_info(ctx: &Ctx, path: &str, stamp: Stamp, size: u64) -> FileInfo {
    let id = ctx.catalog().ok().and_then(|c| c.file_id_of(stamp));
    let (resident_bytes, compressed_bytes, stored) = resident(&ctx.shared, id, stamp, size);
    FileInfo {
        path: path.to_string(),
        size,
        resident_bytes,
        compressed_bytes,
        stored,
        pinned: ctx.pins.lock().is_pinned((stamp.0, stamp.1)),
    }
}

pub fn gather(ctx: &Ctx, top: usize) -> Report {
    let snap = crate::mount::snapshot(&ctx.shared);
    let t = &ctx.telemetry;
    use std::sync::atomic::Ordering::Relaxed;
    let (pinned_bytes, pinned_files, cap) = {
        let pins = ctx.pins.lock();
        let held = pins.held();
        let bytes = held
            .iter()
            .map(|(_, s)| resident_src(&ctx.shared, s))
            .sum::<u64>();
        (bytes, pins.count() as u64, pins.cap_bytes)
    };
    let compressed = snap.encoded_stored_bytes;
    let reads = snap.hits + snap.misses;
    Report {
        pool: PoolUse {
            pool_bytes: snap.pool_bytes,
            used_bytes: snap.pool_used_bytes,
            raw_bytes: snap
                .pool_used_bytes
                .saturating_sub(compressed)
                .saturating_sub(pinned_bytes),
            compressed_bytes: compressed,
            pinned_bytes,
            free_bytes: snap.pool_bytes.saturating_sub(snap.pool_used_bytes),
            store_bytes: snap.store_bytes,
            metadata_bytes: snap.index_overhead_bytes,
        },
        reads: Reads {
            hits: snap.hits,
            misses: snap.misses,
            hit_ratio: if reads == 0 {
                0.0
            } else {
                snap.hits as f64 / reads as f64
            },
            hit_bytes: t.hit_bytes.load(Relaxed),
            miss_bytes: t.miss_bytes.load(Relaxed),
        },
        rates: ctx.rates.lock().rates(),
        latency_us: Latency {
            hit: percentiles(&t.hit_time.snapshot()),
            miss: percentiles(&t.miss_time.snapshot()),
        },
        fills: snap.fills,
        fill_bytes: snap.fill_bytes,
        prefetch_fills: snap.prefetch_fills,
        fill_errors: snap.fill_errors,
        uncached_reads: snap.uncached_reads,
        evictions: snap.evictions,
        compressions: snap.compressions,
        compression_ratio: if compressed == 0 {
            0.0
        } else {
            snap.encoded_logical_bytes as f64 / compressed as f64
        },
        store_files: snap.store_files,
        store_complete_files: snap.store_complete_files,
        passthrough_opens: snap.passthrough_opens,
        pinned_files,
        pin_cap_bytes: cap,
        sets: Sets {
            found: snap.sets_found,
            members_queued: snap.set_members_queued,
            prefetched_bytes: snap.set_prefetch_bytes,
            done: snap.sets_done,
            seconds: snap.set_prefetch_ms as f64 / 1e3,
        },
        top: top_files(ctx, top),
    }
}

/// The `n` versions with the most bytes resident (store files and arena chunks).
fn top_files(ctx: &Ctx, n: usize) -> Vec<TopFile> {
    if n == 0 {
        return Vec::new();
    }
    let versions = ctx.catalog().map(|c| c.versions()).unwrap_or_default();
    let by_stamp: HashMap<Stamp, &str> = versions.iter().map(|(_, s, n)| (*s, &**n)).collect();
    let by_id: HashMap<u64, &str> = versions.iter().map(|(i, _, n)| (*i, &**n)).collect();
    let pinned: std::collections::HashSet<u64> = ctx
        .pins
        .lock()
        .held()
        .iter()
        .map(|(_, s)| s.file_id)
        .collect();
    let pinned_id = |stamp: Stamp| {
        versions
            .iter()
            .any(|(i, s, _)| *s == stamp && pinned.contains(i))
    };
    let mut rows = Vec::new();
    if let Some(store) = ctx.shared.store.as_ref() {
        for (stamp, filled, complete) in store.list() {
            rows.push(TopFile {
                name: by_stamp.get(&stamp).map_or_else(
                    || format!("(stored, not opened: {:x}:{:x})", stamp.0, stamp.1),
                    |n| n.to_string(),
                ),
                resident_bytes: filled,
                compressed_bytes: 0,
                stored: complete,
                pinned: pinned_id(stamp),
            });
        }
    }
    for (id, (bytes, compressed)) in ctx.shared.index.resident_by_file() {
        rows.push(TopFile {
            name: by_id
                .get(&id)
                .map_or_else(|| format!("(cache id {id})"), |n| n.to_string()),
            resident_bytes: bytes,
            compressed_bytes: compressed,
            stored: false,
            pinned: pinned.contains(&id),
        });
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.resident_bytes));
    rows.truncate(n);
    rows
}
