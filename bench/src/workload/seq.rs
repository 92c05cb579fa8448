//! Plain sequential reading through `read(2)`: a file copied or loaded front to back, the way
//! `cat`, `dd` or a model loader reads, so the kernel's readahead decides how much is in flight.

use std::fs::File;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Clock, Ctx, FileRef, Measurement, Progress, elapsed_ns, new_hist, open};
use crate::sys::AlignedBuf;

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
