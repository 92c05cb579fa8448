//! Reading through `mmap`, as llama.cpp reads GGUF files: page faults, not `read(2)`, bring the
//! bytes in, so these rows measure what a mapped model costs through the mount.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Clock, Ctx, FileRef, Measurement, Progress, Rng, elapsed_ns, new_hist};
use crate::sys::PAGE;

/// A read-only shared mapping of a whole file, unmapped on drop.
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

/// MemFree before the file is mapped, minus MemFree while it is mapped and every page touched: the
/// RAM an mmap load adds (a file already resident in the page cache or a passthrough store costs
/// none; a FUSE mount in direct mode costs the file's size while mapped).
pub fn mmap_memfree_drop(f: &FileRef) -> Result<i64> {
    let free = || crate::sys::proc_meminfo_bytes("MemFree").map_or(0, |b| b as i64);
    let before = free();
    let (_file, map) = Mapping::new(f)?;
    let sum = map
        .bytes()
        .iter()
        .step_by(PAGE)
        .fold(0u64, |a, &b| a.wrapping_add(u64::from(b)));
    std::hint::black_box(sum);
    Ok(before - free())
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
