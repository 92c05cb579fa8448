//! Log lines that read like a heartbeat: one summary a second while something happens, nothing while
//! idle. Per-request lines would cost more than the requests at 100k hits/s and drown the signal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

use crate::engine::Shared;

/// Starts the heartbeat; dropping the returned sender stops it.
pub fn spawn(shared: Arc<Shared>) -> Option<(Sender<()>, JoinHandle<()>)> {
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let handle = std::thread::Builder::new()
        .name("nitro-heartbeat".into())
        .spawn(move || {
            let s = &shared.stats;
            let read = || {
                [
                    s.hits.load(Ordering::Relaxed),
                    s.misses.load(Ordering::Relaxed),
                    s.fill_bytes.load(Ordering::Relaxed),
                    s.evictions.load(Ordering::Relaxed),
                    s.fill_errors.load(Ordering::Relaxed),
                    s.passthrough_opens.load(Ordering::Relaxed),
                    s.set_members_queued.load(Ordering::Relaxed),
                    s.set_prefetch_bytes.load(Ordering::Relaxed),
                ]
            };
            let mut last = read();
            loop {
                match stop_rx.recv_timeout(Duration::from_secs(1)) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let now = read();
                // No allocation here: this runs while readers are being served.
                let d: [u64; 8] = std::array::from_fn(|i| now[i] - last[i]);
                last = now;
                if d.iter().all(|&x| x == 0) {
                    continue;
                }
                let pool = shared.arena.usage();
                let store = shared
                    .store
                    .as_ref()
                    .map(crate::store::Store::usage)
                    .unwrap_or_default();
                let used = pool.used_bytes + store.resident_bytes;
                let pool_pct = 100.0 * used as f64 / pool.pool_bytes.max(1) as f64;
                if d[5] > 0 {
                    // Reads of these opens go kernel -> store file: no HIT lines for them.
                    tracing::info!(
                        "PASSTHROUGH {} open(s); store {} file(s), {} MiB",
                        d[5],
                        store.complete_files,
                        store.resident_bytes >> 20
                    );
                }
                if d[6] > 0 || d[7] > 0 {
                    // Set prefetch (fuse/set_prefetch.rs): totals so far.
                    tracing::info!(
                        "SETS {} found, {} member(s) queued, {} MiB prefetched",
                        s.sets_found.load(Ordering::Relaxed),
                        now[6],
                        now[7] >> 20
                    );
                }
                if d[2] > 0 {
                    let name = shared
                        .last_fill
                        .lock()
                        .clone()
                        .unwrap_or_else(|| "?".into());
                    tracing::info!(
                        "POOL-FILL {name} +{:.1} MiB/s pool {pool_pct:.1}%",
                        d[2] as f64 / (1 << 20) as f64
                    );
                }
                if d[4] > 0 {
                    tracing::info!(
                        "HIT {}/s MISS {}/s EVICT {}/s ERRORS {} pool {pool_pct:.1}%",
                        d[0],
                        d[1],
                        d[3],
                        d[4]
                    );
                } else {
                    tracing::info!(
                        "HIT {}/s MISS {}/s EVICT {}/s pool {pool_pct:.1}%",
                        d[0],
                        d[1],
                        d[3]
                    );
                }
            }
        })
        .ok()?;
    Some((stop_tx, handle))
}
