//! Random reads from several threads: the access pattern where a RAM cache should beat a disk by
//! the most, and where FUSE's per-request cost shows the most (small reads, many requests).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

use super::{
    Clock, Ctx, FileRef, Measurement, Progress, Rng, access_name, elapsed_ns, new_hist, open,
};
use crate::sys::{AlignedBuf, PAGE};

#[derive(Clone, Copy, Debug)]
pub struct RandomSpec {
    pub block: usize,
    pub threads: usize,
    pub budget: Duration,
    /// Reads per thread at most.
    pub max_ops: u64,
    pub direct: bool,
    pub seed: u64,
}

/// Random `block`-sized reads at 4 KiB-aligned offsets (uniform over all bytes of all files big
/// enough), from `threads` threads each with its own descriptors, for `budget` or `max_ops` reads
/// per thread, whichever comes first. `direct` opens with O_DIRECT where the filesystem allows it.
pub fn random_read(files: &[FileRef], spec: &RandomSpec, ctx: &Ctx<'_>) -> Result<Measurement> {
    let block = spec.block;
    // Candidate start offsets per file: 0, 4K, ... up to size - block.
    let usable: Vec<(usize, u64)> = files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.size >= block as u64)
        .map(|(i, f)| (i, (f.size - block as u64) / PAGE as u64 + 1))
        .collect();
    if usable.is_empty() {
        bail!(
            "no file is at least {} bytes for random {}-byte reads",
            block,
            block
        );
    }
    let positions: u64 = usable.iter().map(|u| u.1).sum();
    let progress = Progress::start(ctx, None, Some(spec.budget));
    let got_direct = AtomicBool::new(spec.direct);
    let clock = Clock::start();
    let readers = Readers {
        files,
        positions,
        usable: &usable,
        spec: *spec,
        deadline: Instant::now() + spec.budget,
        progress: &progress,
        got_direct: &got_direct,
        ctx,
    };
    let results: Vec<Result<(Histogram<u64>, u64, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..spec.threads)
            .map(|t| {
                let readers = &readers;
                s.spawn(move || readers.run(t))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader thread panicked"))
            .collect()
    });
    let mut hist = new_hist();
    let (mut bytes, mut ops) = (0, 0);
    for r in results {
        let (h, b, o) = r?;
        hist.add(&h).expect("same bounds");
        bytes += b;
        ops += o;
    }
    let access = access_name(spec.direct, got_direct.load(Ordering::Relaxed));
    Ok(clock.finish(bytes, ops, hist, access))
}

/// What the reader threads share.
struct Readers<'a> {
    files: &'a [FileRef],
    /// (file index, start offsets in it) of the files big enough for a read.
    usable: &'a [(usize, u64)],
    /// All start offsets of all usable files.
    positions: u64,
    spec: RandomSpec,
    deadline: Instant,
    progress: &'a Progress,
    /// Cleared when a file refused O_DIRECT.
    got_direct: &'a AtomicBool,
    ctx: &'a Ctx<'a>,
}

impl Readers<'_> {
    /// Reader thread `t`: its own descriptors and offsets; returns its latencies, bytes and reads.
    fn run(&self, t: usize) -> Result<(Histogram<u64>, u64, u64)> {
        let RandomSpec {
            block,
            max_ops,
            seed,
            ..
        } = self.spec;
        let fds = self.open_all()?;
        let mut buf = AlignedBuf::new(block);
        let buf = &mut buf.as_mut_slice()[..block];
        let mut rng = Rng::new(seed.wrapping_mul(1000).wrapping_add(t as u64));
        let mut hist = new_hist();
        let (mut bytes, mut ops, mut unreported) = (0u64, 0u64, 0u64);
        while ops < max_ops {
            if ops % 16 == 0 {
                if Instant::now() >= self.deadline {
                    break;
                }
                self.ctx.check()?;
            }
            let (which, offset) = self.pick(&mut rng);
            let t = Instant::now();
            let n = fds[which].read_at(buf, offset).with_context(|| {
                format!("read {} at {offset}", self.files[which].path.display())
            })?;
            hist.saturating_record(elapsed_ns(t));
            ops += 1;
            bytes += n as u64;
            unreported += n as u64;
            if ops % 64 == 0 {
                self.progress.bytes.fetch_add(unreported, Ordering::Relaxed);
                unreported = 0;
            }
        }
        Ok((hist, bytes, ops))
    }

    /// One descriptor per file (O_DIRECT when asked and allowed).
    fn open_all(&self) -> Result<Vec<File>> {
        let direct = self.spec.direct;
        let mut fds = Vec::with_capacity(self.files.len());
        for f in self.files {
            let (file, d) = open(&f.path, direct)?;
            if direct && !d {
                self.got_direct.store(false, Ordering::Relaxed);
            }
            fds.push(file);
        }
        Ok(fds)
    }

    /// A file and a 4 KiB-aligned offset in it, uniform over every start offset of every file.
    fn pick(&self, rng: &mut Rng) -> (usize, u64) {
        let mut p = rng.below(self.positions);
        let mut which = self.usable[0].0;
        for &(i, n) in self.usable {
            if p < n {
                which = i;
                break;
            }
            p -= n;
        }
        (which, p * PAGE as u64)
    }
}
