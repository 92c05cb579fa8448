//! The access patterns, each run against a list of files (the source's, the mount's or the null
//! filesystem's copies of the same names and sizes). Every call returns one [`Measurement`]: bytes,
//! wall time, per-operation latency in an HDR histogram, and the process's CPU time over the run.
//!
//! Latency is timed around each system call (or each page-touching copy for mmap), so a histogram
//! holds what one reader waited for, and throughput is total bytes over the wall time of the whole
//! run (first call to last byte), which includes opens and closes.

mod mmap;
mod progress;
mod random;
mod ring;
mod s3get;
mod seq;

pub use mmap::{mmap_memfree_drop, mmap_rand, mmap_seq};
pub use progress::{Progress, human_bytes};
pub use random::{RandomSpec, random_read};
pub use ring::ring_seq_read;
pub use s3get::{Keep, S3Object, s3_get_read};
pub use seq::{model_load, seq_read};

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

use crate::sys::cpu_seconds;

/// Latencies are recorded in nanoseconds, 1 ns .. 100 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

pub struct Measurement {
    pub bytes: u64,
    pub ops: u64,
    pub seconds: f64,
    pub cpu_user: f64,
    pub cpu_sys: f64,
    /// CPU seconds the rest of the machine (other processes) used meanwhile: disturbance.
    pub others_cpu: f64,
    pub hist: Histogram<u64>,
    /// How the files were opened, as actually done ("O_DIRECT", or "buffered (O_DIRECT refused)").
    pub access: String,
}

impl Measurement {
    /// Adds another run of the same workload (another pass).
    pub fn merge(mut self, other: Measurement) -> Measurement {
        self.bytes += other.bytes;
        self.ops += other.ops;
        self.seconds += other.seconds;
        self.cpu_user += other.cpu_user;
        self.cpu_sys += other.cpu_sys;
        self.others_cpu += other.others_cpu;
        self.hist.add(&other.hist).expect("same bounds");
        self
    }
}

/// Runs `pass` again and again until the passes add up to `min_seconds` (at least once), calling
/// `between` before each pass, outside the timing (to drop a page cache, say). One pass over an
/// in-memory gigabyte takes a tenth of a second, too short to rise above scheduling noise.
pub fn repeat(
    min_seconds: f64,
    ctx: &Ctx<'_>,
    mut between: impl FnMut(),
    mut pass: impl FnMut(&Ctx<'_>) -> Result<Measurement>,
) -> Result<Measurement> {
    let mut total: Option<Measurement> = None;
    loop {
        ctx.check()?;
        between();
        let m = pass(ctx)?;
        let t = match total.take() {
            None => m,
            Some(t) => t.merge(m),
        };
        if t.seconds >= min_seconds || t.bytes == 0 {
            return Ok(t);
        }
        total = Some(t);
    }
}

/// One file of a target: its path there and its size.
#[derive(Clone, Debug)]
pub struct FileRef {
    pub path: PathBuf,
    pub size: u64,
}

impl AsRef<std::path::Path> for FileRef {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

/// What every workload shares: the interrupt flag and the progress display.
pub struct Ctx<'a> {
    pub stop: &'a AtomicBool,
    pub label: String,
    pub show_progress: bool,
}

impl Ctx<'_> {
    pub(crate) fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            bail!(Interrupted);
        }
        Ok(())
    }
}

/// The error a workload returns when Ctrl+C was pressed.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// A small, fast PRNG (splitmix64): the benchmark needs reproducible offsets, not quality.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

fn open(path: &PathBuf, direct: bool) -> Result<(File, bool)> {
    if direct {
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        }
    }
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    Ok((f, false))
}

fn access_name(wanted_direct: bool, got_direct: bool) -> String {
    match (wanted_direct, got_direct) {
        (true, true) => "O_DIRECT".into(),
        (true, false) => "buffered (O_DIRECT refused)".into(),
        _ => "buffered".into(),
    }
}

struct Clock {
    t0: Instant,
    cpu0: (f64, f64),
    busy0: f64,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            cpu0: cpu_seconds(),
            busy0: crate::sys::machine_busy_seconds(),
            t0: Instant::now(),
        }
    }
    fn finish(self, bytes: u64, ops: u64, hist: Histogram<u64>, access: String) -> Measurement {
        let seconds = self.t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds();
        let busy = crate::sys::machine_busy_seconds() - self.busy0;
        let (cpu_user, cpu_sys) = (cpu.0 - self.cpu0.0, cpu.1 - self.cpu0.1);
        Measurement {
            bytes,
            ops,
            seconds,
            cpu_user,
            cpu_sys,
            // /proc/stat counts in 10 ms ticks and getrusage in µs: clamp the rounding below zero.
            others_cpu: (busy - cpu_user - cpu_sys).max(0.0),
            hist,
            access,
        }
    }
}

#[inline]
fn elapsed_ns(t: Instant) -> u64 {
    t.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}
