//! What the read path measures for `stats` and `/metrics` beyond the engine's counters: service
//! times of hits and misses, and the bytes served. Recorded by FUSE workers (hits) and by the
//! engine thread through a miss's reply; every record is a few relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::hist::Hist;

#[derive(Default)]
pub struct Telemetry {
    /// From the read request's arrival to its reply handed to the kernel.
    pub hit_time: Hist,
    pub miss_time: Hist,
    pub hit_bytes: AtomicU64,
    pub miss_bytes: AtomicU64,
}

impl Telemetry {
    pub fn hit(&self, start: Instant, bytes: usize) {
        self.hit_time.record(elapsed_ns(start));
        self.hit_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn miss(&self, start: Instant, bytes: usize) {
        self.miss_time.record(elapsed_ns(start));
        self.miss_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

fn elapsed_ns(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
