//! Service-time histograms the read path records into without allocating or locking.
//!
//! Why not the `hdrhistogram` crate on the hit path: its recorder needs `&mut`, so FUSE workers
//! would share it behind a lock (or each keep one and merge). A fixed array of atomic counters in
//! HdrHistogram's log-linear layout (16 sub-buckets per power of two: ≤ 6.25% relative error) is
//! one `fetch_add` per sample, made once at mount, and never grows. Readers (stats, Prometheus)
//! copy the counters out and compute percentiles from the copy.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two (a power of two itself).
const SUB: usize = 16;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// Powers of two covered above the linear range: up to 2^(SUB_BITS + OCTAVES) ns (≈ 4.9 h).
const OCTAVES: usize = 40;
pub const BUCKETS: usize = SUB * (OCTAVES + 1);

/// Nanosecond samples in log-linear buckets; recording is wait-free.
pub struct Hist {
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// The bucket of a value: values below `SUB` have one each; above, each power of two is split in
/// `SUB` equal parts.
pub fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let octave = (63 - ns.leading_zeros()) - SUB_BITS; // ns >= SUB, so >= 0
    let sub = (ns >> octave) as usize - SUB; // the SUB_BITS bits below the leading one
    (SUB * (octave as usize + 1) + sub).min(BUCKETS - 1)
}

/// The smallest value that falls in bucket `i` (so bucket i holds [low(i), low(i + 1))).
pub fn bucket_low(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let octave = (i / SUB - 1) as u32;
    ((SUB + i % SUB) as u64) << octave
}

impl Hist {
    pub fn record(&self, ns: u64) {
        self.counts[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A copy of the counters, to compute from while recording goes on.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

pub struct Snapshot {
    pub counts: Vec<u64>,
    pub sum_ns: u64,
}

impl Snapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The value at quantile `q` (0..=1): the upper edge of the bucket holding that sample (an
    /// overestimate by at most one bucket's width, as HdrHistogram reports). 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_low(i + 1).saturating_sub(1).max(bucket_low(i));
            }
        }
        bucket_low(BUCKETS)
    }

    /// Samples below `bound_ns` (exact when `bound_ns` is a bucket edge, as powers of two are).
    pub fn count_below(&self, bound_ns: u64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .take_while(|&(i, _)| bucket_low(i) < bound_ns)
            .map(|(_, c)| c)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        for i in 0..BUCKETS - 1 {
            assert!(bucket_low(i) < bucket_low(i + 1), "bucket {i}");
            assert_eq!(bucket_of(bucket_low(i)), i, "low edge of {i}");
            assert_eq!(bucket_of(bucket_low(i + 1) - 1), i, "high edge of {i}");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_bounded() {
        for v in [
            17u64,
            100,
            1_000,
            12_345,
            1_000_000,
            123_456_789,
            9_999_999_999,
        ] {
            let i = bucket_of(v);
            let width = bucket_low(i + 1) - bucket_low(i);
            assert!(width as f64 / v as f64 <= 1.0 / SUB as f64 + 1e-9, "{v}");
        }
    }

    #[test]
    fn quantiles_follow_the_samples() {
        let h = Hist::default();
        for v in 1..=1000u64 {
            h.record(v * 1000); // 1 µs .. 1 ms
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        let p50 = s.quantile_ns(0.5) as f64;
        let p99 = s.quantile_ns(0.99) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.07, "p50 {p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.07, "p99 {p99}");
        assert_eq!(s.count_below(1 << 10), 1); // 1000 ns < 1024
        assert_eq!(s.sum_ns, 1000 * 1001 / 2 * 1000);
        assert_eq!(Hist::default().snapshot().quantile_ns(0.5), 0);
    }
}
