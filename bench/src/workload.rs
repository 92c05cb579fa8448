//! The access patterns, each run against a list of files (the source's, the mount's or the null
//! filesystem's copies of the same names and sizes). Every call returns one [`Measurement`]: bytes,
//! wall time, per-operation latency in an HDR histogram, and the process's CPU time over the run.
//!
//! Latency is timed around each system call (or each page-touching copy for mmap), so a histogram
//! holds what one reader waited for, and throughput is total bytes over the wall time of the whole
//! run (first call to last byte), which includes opens and closes.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::sys::{AlignedBuf, AnonMap, PAGE, cpu_seconds};

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
    fn check(&self) -> Result<()> {
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

/// A progress bar fed from a shared byte counter by its own thread, so hot loops only add to a
/// counter now and then. With `total` it shows bytes/s and ETA; without, bytes/s and elapsed time.
pub struct Progress {
    pub bytes: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(ctx: &Ctx<'_>, total: Option<u64>, time_budget: Option<Duration>) -> Progress {
        let bytes = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        if !ctx.show_progress {
            return Progress {
                bytes,
                done,
                thread: None,
            };
        }
        let pb = match (total, time_budget) {
            (Some(t), _) => {
                let pb = ProgressBar::new(t);
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix:<34} [{bar:28}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                pb
            }
            (None, Some(budget)) => {
                let pb = ProgressBar::new(budget.as_millis() as u64);
                pb.set_style(
                    ProgressStyle::with_template("{prefix:<34} [{bar:28}] {msg} eta {eta}")
                        .expect("template")
                        .progress_chars("=> "),
                );
                pb
            }
            (None, None) => ProgressBar::new_spinner(),
        };
        pb.set_prefix(ctx.label.clone());
        let (b, d) = (bytes.clone(), done.clone());
        let timed = total.is_none() && time_budget.is_some();
        let thread = std::thread::Builder::new()
            .name("bench-progress".into())
            .spawn(move || {
                let t0 = Instant::now();
                while !d.load(Ordering::Relaxed) {
                    let n = b.load(Ordering::Relaxed);
                    if timed {
                        pb.set_position(t0.elapsed().as_millis() as u64);
                        let rate = n as f64 / t0.elapsed().as_secs_f64().max(1e-3);
                        pb.set_message(format!("{:>10} {:>8.2} GB/s", human_bytes(n), rate / 1e9));
                    } else {
                        pb.set_position(n);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                pb.finish_and_clear();
            })
            .ok();
        Progress {
            bytes,
            done,
            thread,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

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

/// Reads every file front to back with `block`-sized `read(2)` calls (buffered), one file after the
/// other, as `cat` or `dd bs=1M` would.
pub fn seq_read(files: &[FileRef], block: usize, ctx: &Ctx<'_>) -> Result<Measurement> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    let progress = Progress::start(ctx, Some(total), None);
    let mut buf = AlignedBuf::new(block);
    let buf = &mut buf.as_mut_slice()[..block];
    let mut hist = new_hist();
    let (mut bytes, mut ops) = (0u64, 0u64);
    let clock = Clock::start();
    for f in files {
        let (mut file, _) = open(&f.path, false)?;
        loop {
            ctx.check()?;
            let t = Instant::now();
            let n = file
                .read(buf)
                .with_context(|| format!("read {}", f.path.display()))?;
            if n == 0 {
                // The end-of-file read is part of the wall time, not a sample: it moves no data.
                break;
            }
            hist.saturating_record(elapsed_ns(t));
            ops += 1;
            bytes += n as u64;
            progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(clock.finish(bytes, ops, hist, "buffered".into()))
}

/// The cold-source baseline at the mount's own queue depth: reads every file front to back, one
/// file after the other, in `chunk`-sized O_DIRECT reads through an io_uring ([`nitro_ring::Ring`],
/// as the mount's engine reads), keeping up to `depth` reads in flight, into an anonymous mapping
/// made as the engine's arena is (huge pages advised, registered with the ring for `READ_FIXED`). Reads are page-rounded
/// at the end of a file (the kernel stops at EOF), as the engine's are. Latency is per read, from
/// submission to completion, so it includes the queueing behind the other reads in flight.
pub fn ring_seq_read(
    files: &[FileRef],
    chunk: usize,
    depth: usize,
    ctx: &Ctx<'_>,
) -> Result<Measurement> {
    let chunk = chunk.max(PAGE).next_multiple_of(PAGE);
    let depth = depth.max(1);
    let total: u64 = files.iter().map(|f| f.size).sum();
    let buf = AnonMap::new(chunk * depth).context("mapping the read buffers")?;
    let mut ring = nitro_ring::Ring::new((depth as u32 + 2).next_power_of_two())
        .context("io_uring unavailable")?;
    // SAFETY: `buf` outlives `ring` (dropped after it: `ring` is declared later) and is never
    // remapped; reads are drained below before either goes.
    let registered = unsafe { ring.register_region(buf.as_ptr(), buf.len()) }.is_ok();
    let progress = Progress::start(ctx, Some(total), None);
    let mut hist = new_hist();
    let (mut bytes, mut ops) = (0u64, 0u64);
    let mut all_direct = true;
    let clock = Clock::start();
    let mut run = || -> Result<()> {
        for f in files {
            let (file, direct) = open(&f.path, true)?;
            all_direct &= direct;
            let fd = file.as_raw_fd();
            // Per buffer slot: the read in flight into it and when it was submitted.
            let mut slots: Vec<Option<(RingRead, Instant)>> = (0..depth).map(|_| None).collect();
            let mut free: Vec<usize> = (0..depth).rev().collect();
            let mut next = 0u64;
            let mut done = Vec::with_capacity(depth);
            loop {
                ctx.check()?;
                while next < f.size {
                    let Some(slot) = free.pop() else { break };
                    let want = (f.size - next).min(chunk as u64);
                    let r = RingRead {
                        slot,
                        off: next,
                        want,
                        skip: 0,
                    };
                    if !submit(&mut ring, fd, &r, chunk, direct, &buf) {
                        free.push(slot);
                        break;
                    }
                    slots[slot] = Some((r, Instant::now()));
                    next += want;
                }
                if ring.in_flight() == 0 {
                    break;
                }
                done.clear();
                ring.wait(true, &mut done)
                    .with_context(|| format!("io_uring wait reading {}", f.path.display()))?;
                for c in &done {
                    let Some((r, t)) = slots.get_mut(c.user_data as usize).and_then(Option::take)
                    else {
                        bail!("completion for an unknown read ({})", c.user_data);
                    };
                    if c.result < 0 {
                        return Err(std::io::Error::from_raw_os_error(-c.result))
                            .with_context(|| format!("read {} at {}", f.path.display(), r.off));
                    }
                    let n = (c.result as u64).min(r.want);
                    if n == 0 {
                        bail!(
                            "{} ended at {}, before its size {}",
                            f.path.display(),
                            r.off,
                            f.size
                        );
                    }
                    hist.saturating_record(elapsed_ns(t));
                    ops += 1;
                    bytes += n;
                    progress.bytes.fetch_add(n, Ordering::Relaxed);
                    if n == r.want {
                        free.push(r.slot);
                        continue;
                    }
                    // A short read before the end: read the rest into the same slot.
                    let rest = RingRead {
                        slot: r.slot,
                        off: r.off + n,
                        want: r.want - n,
                        skip: r.skip + n as usize,
                    };
                    if direct && !rest.skip.is_multiple_of(PAGE) {
                        bail!(
                            "{}: short O_DIRECT read ended unaligned at {}",
                            f.path.display(),
                            rest.off
                        );
                    }
                    if !submit(&mut ring, fd, &rest, chunk, direct, &buf) {
                        bail!("io_uring submission queue full");
                    }
                    let slot = rest.slot;
                    slots[slot] = Some((rest, Instant::now()));
                }
            }
            // `file` is closed here, after its last read completed.
        }
        Ok(())
    };
    let result = run();
    // Never leave reads in flight into memory about to be unmapped (error or Ctrl+C above).
    let mut sink = Vec::new();
    while ring.in_flight() > 0 {
        sink.clear();
        if ring.wait(true, &mut sink).is_err() {
            break;
        }
    }
    result?;
    let access = format!(
        "{}, io_uring{}, {} × {} reads in flight",
        if all_direct {
            "O_DIRECT"
        } else {
            "buffered (O_DIRECT refused)"
        },
        if registered { " READ_FIXED" } else { "" },
        depth,
        human_bytes(chunk as u64)
    );
    Ok(clock.finish(bytes, ops, hist, access))
}

/// One read of [`ring_seq_read`]: `want` bytes at `off` of the file into buffer slot `slot`,
/// `skip` bytes into the slot (after a short read).
struct RingRead {
    slot: usize,
    off: u64,
    want: u64,
    skip: usize,
}

/// Queues `r`; false when the submission queue is full.
fn submit(
    ring: &mut nitro_ring::Ring,
    fd: std::os::fd::RawFd,
    r: &RingRead,
    chunk: usize,
    direct: bool,
    buf: &AnonMap,
) -> bool {
    let room = chunk - r.skip;
    let len = if direct {
        (r.want as usize).next_multiple_of(PAGE)
    } else {
        r.want as usize
    }
    .min(room);
    // SAFETY: slot * chunk + skip + len <= depth * chunk = the mapping's usable length; the slot
    // is this read's alone until its completion is reaped, and the caller keeps `fd` open and the
    // mapping alive until every read is reaped.
    unsafe {
        let ptr = buf.as_ptr().add(r.slot * chunk + r.skip);
        ring.push_read(fd, r.off, ptr, len as u32, r.slot as u64)
    }
}

/// A model loader: opens each file in order; for a safetensors file reads the 8-byte header length
/// and the JSON header first (two small reads), then the rest of the file in `block` reads. Time to
/// last byte is the measurement's `seconds`.
pub fn model_load(files: &[FileRef], block: usize, ctx: &Ctx<'_>) -> Result<Measurement> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    let progress = Progress::start(ctx, Some(total), None);
    let mut buf = AlignedBuf::new(block);
    let buf = buf.as_mut_slice();
    let mut hist = new_hist();
    let (mut bytes, mut ops) = (0u64, 0u64);
    let clock = Clock::start();
    for f in files {
        let (mut file, _) = open(&f.path, false)?;
        let mut timed_read = |file: &mut File, want: usize, buf: &mut [u8]| -> Result<usize> {
            let t = Instant::now();
            let n = file
                .read(&mut buf[..want])
                .with_context(|| format!("read {}", f.path.display()))?;
            if n > 0 {
                hist.saturating_record(elapsed_ns(t));
                ops += 1;
                bytes += n as u64;
                progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(n)
        };
        if f.path.extension().is_some_and(|e| e == "safetensors") && f.size >= 8 {
            let n = timed_read(&mut file, 8, buf)?;
            if n == 8 {
                let header = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                let mut left = header.min(f.size - 8) as usize;
                while left > 0 {
                    ctx.check()?;
                    let n = timed_read(&mut file, left.min(buf.len()), buf)?;
                    if n == 0 {
                        break;
                    }
                    left -= n;
                }
            }
        }
        loop {
            ctx.check()?;
            if timed_read(&mut file, buf.len(), buf)? == 0 {
                break;
            }
        }
    }
    Ok(clock.finish(bytes, ops, hist, "buffered".into()))
}

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
    let RandomSpec {
        block,
        threads,
        budget,
        max_ops,
        direct,
        seed,
    } = *spec;
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
    let progress = Progress::start(ctx, None, Some(budget));
    let got_direct = AtomicBool::new(direct);
    let clock = Clock::start();
    let deadline = Instant::now() + budget;
    let results: Vec<Result<(Histogram<u64>, u64, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let usable = &usable;
                let progress = &progress;
                let got_direct = &got_direct;
                s.spawn(move || -> Result<(Histogram<u64>, u64, u64)> {
                    let mut fds = Vec::with_capacity(files.len());
                    for f in files {
                        let (file, d) = open(&f.path, direct)?;
                        if direct && !d {
                            got_direct.store(false, Ordering::Relaxed);
                        }
                        fds.push(file);
                    }
                    let mut buf = AlignedBuf::new(block);
                    let buf = &mut buf.as_mut_slice()[..block];
                    let mut rng = Rng::new(seed.wrapping_mul(1000).wrapping_add(t as u64));
                    let mut hist = new_hist();
                    let (mut bytes, mut ops, mut unreported) = (0u64, 0u64, 0u64);
                    while ops < max_ops {
                        if ops % 16 == 0 {
                            if Instant::now() >= deadline {
                                break;
                            }
                            ctx.check()?;
                        }
                        let mut p = rng.below(positions);
                        let mut which = usable[0].0;
                        for &(i, n) in usable {
                            if p < n {
                                which = i;
                                break;
                            }
                            p -= n;
                        }
                        let offset = p * PAGE as u64;
                        let t = Instant::now();
                        let n = fds[which].read_at(buf, offset).with_context(|| {
                            format!("read {} at {offset}", files[which].path.display())
                        })?;
                        hist.saturating_record(elapsed_ns(t));
                        ops += 1;
                        bytes += n as u64;
                        unreported += n as u64;
                        if ops % 64 == 0 {
                            progress.bytes.fetch_add(unreported, Ordering::Relaxed);
                            unreported = 0;
                        }
                    }
                    Ok((hist, bytes, ops))
                })
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
    let access = access_name(direct, got_direct.load(Ordering::Relaxed));
    Ok(clock.finish(bytes, ops, hist, access))
}

struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(f: &FileRef) -> Result<(File, Mapping)> {
        let file = File::open(&f.path).with_context(|| format!("open {}", f.path.display()))?;
        let len = f.size as usize;
        // SAFETY: read-only shared mapping of an open file; checked for MAP_FAILED.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mmap {}", f.path.display()));
        }
        Ok((file, Mapping { addr, len }))
    }
    fn advise(&self, advice: libc::c_int) {
        // SAFETY: advisory, on our own mapping.
        unsafe { libc::madvise(self.addr, self.len, advice) };
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// As llama.cpp loads a GGUF: map each file (MAP_SHARED, read-only), advise WILLNEED over the whole
/// mapping (its prefetch), then copy the tensors out front to back, here in 1 MiB pieces. Each
/// piece's copy is one latency sample (it includes the page faults it takes).
pub fn mmap_seq(files: &[FileRef], piece: usize, ctx: &Ctx<'_>) -> Result<Measurement> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    let progress = Progress::start(ctx, Some(total), None);
    let mut out = vec![0u8; piece];
    let mut hist = new_hist();
    let (mut bytes, mut ops) = (0u64, 0u64);
    let clock = Clock::start();
    for f in files.iter().filter(|f| f.size > 0) {
        let (_file, map) = Mapping::new(f)?;
        map.advise(libc::MADV_WILLNEED);
        for chunk in map.bytes().chunks(piece) {
            ctx.check()?;
            let t = Instant::now();
            out[..chunk.len()].copy_from_slice(chunk);
            std::hint::black_box(&out);
            hist.saturating_record(elapsed_ns(t));
            ops += 1;
            bytes += chunk.len() as u64;
            progress
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(clock.finish(bytes, ops, hist, "mmap, MADV_WILLNEED".into()))
}

/// Random page touches through mappings of every file (MADV_RANDOM, so each fault brings in only
/// what it touches): each sample copies one 4 KiB page never touched before in this run, so every
/// sample is a fault, as a sparse reader of a mapped model would take. Runs for `budget` or until a
/// quarter of the pages were touched.
pub fn mmap_rand(
    files: &[FileRef],
    budget: Duration,
    seed: u64,
    ctx: &Ctx<'_>,
) -> Result<Measurement> {
    let maps: Vec<(File, Mapping)> = files
        .iter()
        .filter(|f| f.size >= PAGE as u64)
        .map(Mapping::new)
        .collect::<Result<_>>()?;
    for (_, m) in &maps {
        m.advise(libc::MADV_RANDOM);
    }
    // Every (file, page) once, in a random order; a quarter of them at most.
    let mut pages: Vec<(u32, u32)> = maps
        .iter()
        .enumerate()
        .flat_map(|(i, (_, m))| (0..(m.len / PAGE) as u32).map(move |p| (i as u32, p)))
        .collect();
    let mut rng = Rng::new(seed);
    let want = (pages.len() / 4).max(1);
    for i in 0..want.min(pages.len()) {
        let j = i + rng.below((pages.len() - i) as u64) as usize;
        pages.swap(i, j);
    }
    pages.truncate(want);
    let progress = Progress::start(ctx, None, Some(budget));
    let mut out = vec![0u8; PAGE];
    let mut hist = new_hist();
    let (mut bytes, mut ops) = (0u64, 0u64);
    let clock = Clock::start();
    let deadline = Instant::now() + budget;
    for (n, &(i, p)) in pages.iter().enumerate() {
        if n % 16 == 0 {
            if Instant::now() >= deadline {
                break;
            }
            ctx.check()?;
        }
        let src = &maps[i as usize].1.bytes()[p as usize * PAGE..][..PAGE];
        let t = Instant::now();
        out.copy_from_slice(src);
        std::hint::black_box(&out);
        hist.saturating_record(elapsed_ns(t));
        ops += 1;
        bytes += PAGE as u64;
        if ops % 64 == 0 {
            progress
                .bytes
                .fetch_add(64 * PAGE as u64, Ordering::Relaxed);
        }
    }
    Ok(clock.finish(bytes, ops, hist, "mmap, MADV_RANDOM".into()))
}
